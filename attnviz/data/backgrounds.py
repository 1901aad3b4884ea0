"""Scene backgrounds: named families of photos and procedural textures, all generated offline.

Each family is a function ``(rng, n, size, device) -> (n, 3, size, size)`` float in [0, 1]. Random
parameters are drawn from the CPU generator ``rng`` (so a seed gives the same backgrounds on every
device); the pixels are computed on ``device``. Photos are the ones bundled with scikit-image, split
into a training set and a held-out set of natural colour photos that no model is trained on.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

# scikit-image's bundled photos (no download). The held-out ones are natural colour photos: the
# "photos" evaluation pastes items into them, and no model sees them in training.
TRAIN_PHOTOS = (
    "astronaut", "brick", "camera", "cell", "clock", "coins", "grass", "gravel", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "retina", "text",
)
HELDOUT_PHOTOS = ("chelsea", "coffee", "rocket", "stereo_motorcycle")
PHOTO_SETS = {"train": TRAIN_PHOTOS, "heldout": HELDOUT_PHOTOS}

Family = Callable[[torch.Generator, int, int, torch.device, "BackgroundContext"], torch.Tensor]


def _load(name: str) -> np.ndarray:
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3].astype(np.uint8)


@functools.lru_cache(maxsize=4)
def background_pool(side: int = 128, photos: str = "train") -> torch.Tensor:
    """A photo set, centre-cropped square and resized: ``(P, 3, side, side)`` float in [0, 1]."""
    if photos not in PHOTO_SETS:
        raise ValueError(f"photos must be one of {', '.join(PHOTO_SETS)}, got {photos!r}")
    out = []
    for name in PHOTO_SETS[photos]:
        img = torch.from_numpy(_load(name)).permute(2, 0, 1).float() / 255  # (3, H, W)
        h, w = img.shape[1:]
        s = min(h, w)
        img = img[:, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        out.append(F.interpolate(img[None], size=(side, side), mode="area")[0])
    return torch.stack(out)


class BackgroundContext:
    """What the photo-based families need: the photo pool on the compositing device."""

    def __init__(self, photos: str, device: torch.device, side: int = 160) -> None:
        self.pool = background_pool(side, photos).to(device)


# ---------------------------------------------------------------------------------------------- helpers
def rand(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    """``n`` uniform draws in [lo, hi) from ``g``."""
    return lo + (hi - lo) * torch.rand(n, generator=g)


def random_colours(g: torch.Generator, n: int) -> torch.Tensor:
    """``(n, 3)`` colours uniform in the RGB cube."""
    return torch.rand(n, 3, generator=g)


def _coords(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [-1, 1]: ``(ys, xs)``, each ``(S, S)``."""
    t = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2 - 1
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    return ys, xs


def _lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Blend colours ``a``, ``b`` ``(n, 3)`` by a scalar field ``t`` ``(n, 1, S, S)``."""
    return a[:, :, None, None] * (1 - t) + b[:, :, None, None] * t


def _rotated(g: torch.Generator, n: int, size: int, device: torch.device) -> torch.Tensor:
    """``u = x cos a + y sin a`` for a random angle per scene, ``(n, 1, S, S)``."""
    ys, xs = _coords(size, device)
    a = (torch.rand(n, generator=g) * math.pi).to(device)
    return (xs[None] * a.cos()[:, None, None] + ys[None] * a.sin()[:, None, None])[:, None]


def _smooth_noise(g: torch.Generator, n: int, size: int, device: torch.device, cells: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """Value noise: a random ``cells``×``cells`` grid per scene, bicubically upsampled, ``(n, c, S, S)``."""
    out = torch.empty(n, channels, size, size, device=device)
    for k in cells.unique().tolist():
        idx = (cells == k).nonzero().flatten()
        grid = torch.rand(len(idx), channels, int(k), int(k), generator=g).to(device)
        out[idx.to(device)] = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)
    return out.clamp(0, 1)


def _tint(g: torch.Generator, img: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """With probability ``p``, recolour by luminance between two random colours (duotone)."""
    n = img.shape[0]
    on = (torch.rand(n, generator=g) < p).to(img.device)
    a, b = random_colours(g, n).to(img.device), random_colours(g, n).to(img.device)
    luma = (img * torch.tensor([0.299, 0.587, 0.114], device=img.device)[None, :, None, None]).sum(1, keepdim=True)
    return torch.where(on[:, None, None, None], _lerp(a, b, luma), img)


# ---------------------------------------------------------------------------------------------- families
def photo(g: torch.Generator, n: int, size: int, device: torch.device, ctx: BackgroundContext) -> torch.Tensor:
    """A random crop (25–100% of the side) of a bundled photo, random flip, duotone half of the time."""
    pool = ctx.pool
    idx = torch.randint(len(pool), (n,), generator=g)
    crop = rand(g, n, 0.25, 1.0)
    cx, cy = (rand(g, n, -1, 1) * (1 - crop) for _ in range(2))
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = crop * flip, crop, cx, cy
    grid = F.affine_grid(theta.to(device), [n, 3, size, size], align_corners=False)
    img = F.grid_sample(pool[idx.to(device)], grid, align_corners=False)
    return _tint(g, img, 0.5)


def blur(g: torch.Generator, n: int, size: int, device: torch.device, ctx: BackgroundContext) -> torch.Tensor:
    """A photo crop blurred to soft colour blobs (down to 3–8 cells, then bilinear back up)."""
    img = photo(g, n, size, device, ctx)
    k = torch.randint(3, 9, (n,), generator=g)
    out = torch.empty_like(img)
    for c in k.unique().tolist():
        idx = (k == c).nonzero().flatten().to(device)
        small = F.adaptive_avg_pool2d(img[idx], int(c))
        out[idx] = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return out


def noise(g: torch.Generator, n: int, size: int, device: torch.device, ctx: BackgroundContext) -> torch.Tensor:
    """Multi-scale value noise (2–4 octaves from 2 to 32 cells), coloured between two random colours."""
    total = torch.zeros(n, 1, size, size, device=device)
    weight = 0.0
    base = torch.randint(2, 5, (n,), generator=g)
    for octave in range(4):
        amp = 0.5**octave
        total += amp * _smooth_noise(g, n, size, device, base * 2**octave)
        weight += amp
    t = (total / weight - 0.5) * rand(g, n, 1.5, 3.0).to(device)[:, None, None, None] + 0.5
    img = _lerp(random_colours(g, n).to(device), random_colours(g, n).to(device), t.clamp(0, 1))
    colour_noise = _smooth_noise(g, n, size, device, torch.randint(2, 6, (n,), generator=g), channels=3)
    return (0.8 * img + 0.2 * colour_noise).clamp(0, 1)


def stripes(g: torch.Generator, n: int, size: int, device: torch.device, ctx: BackgroundContext) -> torch.Tensor:
    """Stripes at a random angle, 1.5–10 periods per canvas, soft to hard edges, two colours."""
    u = _rotated(g, n, size, device)
    freq = rand(g, n, 1.5, 10.0).to(device)[:, None, None, None]
    phase = rand(g, n, 0, 2 * math.pi).to(device)[:, None, None, None]
    sharp = rand(g, n, 1.0, 12.0).to(device)[:, None, None, None]
    t = 0.5 + 0.5 * torch.tanh(sharp * torch.sin(math.pi * freq * u + phase))
    return _lerp(random_colours(g, n).to(device), random_colours(g, n).to(device), t)


def checks(g: torch.Generator, n: int, size: int, device: torch.device, ctx: BackgroundContext) -> torch.Tensor:
    """A checkerboard at a random angle, 1.5–8 periods per canvas, two colours."""
    ys, xs = _coords(size, device)
    a = (torch.rand(n, generator=g) * math.pi / 2).to(device)[:, None, None]
    u = (xs[None] * a.cos() + ys[None] * a.sin())[:, None]
    v = (-xs[None] * a.sin() + ys[None] * a.cos())[:, None]
    freq = rand(g, n, 1.5, 8.0).to(device)[:, None, None, None]
    phase = rand(g, n, 0, 2 * math.pi).to(device)[:, None, None, None]
    t = 0.5 + 0.5 * torch.tanh(6 * torch.sin(math.pi * freq * u + phase) * torch.sin(math.pi * freq * v + phase))
    return _lerp(random_colours(g, n).to(device), random_colours(g, n).to(device), t)


def gradient(g: torch.Generator, n: int, size: int, device: torch.device, ctx: BackgroundContext) -> torch.Tensor:
    """A linear (random direction) or radial (random centre) gradient through three random colours."""
    u = _rotated(g, n, size, device)[:, 0] / math.sqrt(2)  # (n, S, S) in [-1, 1]
    ys, xs = _coords(size, device)
    c = (torch.rand(n, 2, generator=g) * 2 - 1).to(device)
    r = ((xs[None] - c[:, 0, None, None]) ** 2 + (ys[None] - c[:, 1, None, None]) ** 2).sqrt() / 2.0 * 2 - 1
    radial = (torch.rand(n, generator=g) < 0.5).to(device)[:, None, None]
    t = ((torch.where(radial, r, u) + 1) / 2).clamp(0, 1)[:, None]  # (n, 1, S, S)
    c0, c1, c2 = (random_colours(g, n).to(device) for _ in range(3))
    lo = _lerp(c0, c1, (2 * t).clamp(0, 1))
    return torch.where(t < 0.5, lo, _lerp(c1, c2, (2 * t - 1).clamp(0, 1)))


def flat(g: torch.Generator, n: int, size: int, device: torch.device, ctx: BackgroundContext) -> torch.Tensor:
    """One random colour with faint low-frequency shading."""
    shade = _smooth_noise(g, n, size, device, torch.full((n,), 3)) - 0.5
    return (random_colours(g, n).to(device)[:, :, None, None] + 0.08 * shade).clamp(0, 1)


def speckle(g: torch.Generator, n: int, size: int, device: torch.device, ctx: BackgroundContext) -> torch.Tensor:
    """A base colour covered with random-coloured specks (1–2 px) at 5–30% density, plus grain."""
    base = random_colours(g, n).to(device)[:, :, None, None].expand(n, 3, size, size)
    density = rand(g, n, 0.05, 0.3).to(device)[:, None, None, None]
    half = torch.rand(n, 1, size // 2, size // 2, generator=g).to(device)
    fine = torch.rand(n, 1, size, size, generator=g).to(device)
    specks = torch.where(torch.rand(n, 1, 1, 1, generator=g).to(device) < 0.5, F.interpolate(half, size=(size, size), mode="nearest"), fine)
    colours = torch.rand(n, 3, size, size, generator=g).to(device)
    img = torch.where(specks < density, colours, base)
    grain = (torch.rand(n, 1, size, size, generator=g).to(device) - 0.5) * rand(g, n, 0.0, 0.2).to(device)[:, None, None, None]
    return (img + grain).clamp(0, 1)


def cells(g: torch.Generator, n: int, size: int, device: torch.device, ctx: BackgroundContext) -> torch.Tensor:
    """Voronoi cells: 6–40 random seeds, each cell one random colour."""
    k_max = 40
    k = torch.randint(6, k_max + 1, (n,), generator=g)
    seeds = (torch.rand(n, k_max, 2, generator=g) * 2 - 1).to(device)
    colours = torch.rand(n, k_max, 3, generator=g).to(device)
    ys, xs = _coords(size, device)
    pts = torch.stack([xs.flatten(), ys.flatten()], 1)  # (S², 2)
    d = torch.cdist(pts[None].expand(n, -1, -1), seeds)  # (n, S², K)
    d = d.masked_fill(torch.arange(k_max, device=device)[None, None] >= k.to(device)[:, None, None], float("inf"))
    nearest = d.argmin(2)  # (n, S²)
    img = torch.gather(colours, 1, nearest[:, :, None].expand(-1, -1, 3))  # (n, S², 3)
    return img.transpose(1, 2).reshape(n, 3, size, size)


def scribble(g: torch.Generator, n: int, size: int, device: torch.device, ctx: BackgroundContext) -> torch.Tensor:
    """A base colour with 3–10 random thick line segments of random colours."""
    lines = 10
    img = random_colours(g, n).to(device)[:, :, None, None].expand(n, 3, size, size).clone()
    count = torch.randint(3, lines + 1, (n,), generator=g)
    ys, xs = _coords(size, device)
    p = torch.stack([xs, ys], -1)[None]  # (1, S, S, 2)
    for j in range(lines):
        a = (torch.rand(n, 2, generator=g) * 2.4 - 1.2).to(device)[:, None, None]
        b = (torch.rand(n, 2, generator=g) * 2.4 - 1.2).to(device)[:, None, None]
        width = rand(g, n, 0.02, 0.12).to(device)[:, None, None]
        colour = random_colours(g, n).to(device)
        ab = b - a
        t = (((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-6)).clamp(0, 1)  # (n, S, S)
        dist = (p - (a + t[..., None] * ab)).norm(dim=-1)
        on = ((dist < width) & (count.to(device) > j)[:, None, None])[:, None]
        img = torch.where(on, colour[:, :, None, None], img)
    return img


FAMILIES: dict[str, Family] = {
    "photo": photo, "blur": blur, "noise": noise, "stripes": stripes, "checks": checks,
    "gradient": gradient, "flat": flat, "speckle": speckle, "cells": cells, "scribble": scribble,
}
# the shipped zoo never sees these; `attnviz evaluate` reports them as held-out families
HELDOUT_FAMILIES = ("checks", "speckle", "cells")
TRAIN_FAMILIES = tuple(f for f in FAMILIES if f not in HELDOUT_FAMILIES)
