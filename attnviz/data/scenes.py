"""Cluttered scenes: one Fashion-MNIST item on a natural photo crop, with box and mask ground truth.

A scene is an RGB canvas (64×64 by default) whose background is a random crop of a photo or texture
bundled with scikit-image. One item, scaled to 20–45% of the canvas side, rotated up to ±30° and
coloured so that it contrasts with the background under it, is alpha-composited at a random position
over 2–4 clutter fragments of other items. Everything is generated in batches with ``affine_grid`` /
``grid_sample`` and is deterministic given the seed. Train scenes use items from the train split
only, test scenes from t10k only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .backgrounds import background_pool
from .fashion import CLASSES, load_split

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class SceneConfig:
    """Scene recipe (all fractions relative to the canvas side)."""

    size: int = 64
    item_frac: tuple[float, float] = (0.20, 0.45)
    max_rotation_deg: float = 30.0
    clutter: tuple[int, int] = (2, 4)
    clutter_frac: tuple[float, float] = (0.25, 0.4)
    fragment_frac: tuple[float, float] = (0.35, 0.6)
    min_contrast: float = 0.35
    mask_threshold: float = 0.25


@dataclass
class SceneBatch:
    """A batch of scenes.

    Attributes:
        images: ``(N, 3, S, S)`` float in [0, 1].
        labels: ``(N,)`` class index of the item.
        boxes: ``(N, 4)`` item box (x0, y0, x1, y1) in pixels, x1/y1 exclusive.
        masks: ``(N, S, S)`` bool item mask (alpha > threshold, not covered by anything).
        item_index: ``(N,)`` index of the item in its Fashion-MNIST split.
        split: ``"train"`` or ``"test"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor
    item_index: torch.Tensor
    split: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _rand(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _paste_theta(center: torch.Tensor, side: torch.Tensor, angle: torch.Tensor, size: int) -> torch.Tensor:
    """θ mapping canvas coords to the coords of a square sprite of ``side`` px centred at ``center`` px."""
    cn = center / size * 2 - 1  # (n, 2) normalised centre
    k = size / side  # (n,)
    cos, sin = torch.cos(angle), torch.sin(angle)
    a = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], 1) * k[:, None, None]  # (n, 2, 2)
    t = -(a @ cn[:, :, None])[:, :, 0]
    return torch.cat([a, t[:, :, None]], 2)  # (n, 2, 3)


def _random_colour(g: torch.Generator, n: int) -> torch.Tensor:
    """Saturated random colours ``(n, 3)`` in [0, 1] (HSV with s, v high)."""
    h = torch.rand(n, generator=g) * 6
    s = _rand(g, n, 0.5, 1.0)
    i = h.floor()
    f = h - i
    p, q, t = 1 - s, 1 - s * f, 1 - s * (1 - f)
    v = torch.ones(n)
    table = torch.stack([
        torch.stack([v, t, p], 1), torch.stack([q, v, p], 1), torch.stack([p, v, t], 1),
        torch.stack([p, q, v], 1), torch.stack([t, p, v], 1), torch.stack([v, p, q], 1),
    ], 0)  # (6, n, 3)
    return table[i.long().clamp(max=5), torch.arange(n)]


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb * torch.tensor([0.299, 0.587, 0.114])).sum(-1)


def _contrasting(g: torch.Generator, bg_mean: torch.Tensor, min_contrast: float) -> torch.Tensor:
    """A random hue whose luma differs from ``bg_mean`` (n, 3) luma by at least ``min_contrast``."""
    n = bg_mean.shape[0]
    col = _random_colour(g, n)
    bl = _luma(bg_mean)
    dark = bl > 0.5
    target = torch.where(dark, _rand(g, n, 0.02, max(0.03, 0.5 - min_contrast)), _rand(g, n, min(0.97, 0.5 + min_contrast), 1.0))
    target = torch.where(dark, torch.minimum(target, bl - min_contrast), torch.maximum(target, bl + min_contrast)).clamp(0, 1)
    cl = _luma(col).clamp_min(1e-3)
    scaled = col * (target / cl)[:, None]
    over = scaled.amax(1, keepdim=True).clamp_min(1.0)
    scaled = scaled / over  # keep in gamut; then lift towards white if still too dark for a bright target
    lift = ((target - _luma(scaled)) / (1 - _luma(scaled)).clamp_min(1e-3)).clamp(0, 1)
    return (scaled + (1 - scaled) * lift[:, None]).clamp(0, 1)


class SceneGenerator:
    """Deterministic generator of cluttered scenes from one Fashion-MNIST split.

    Random draws always come from a CPU generator, so a seed gives the same scene parameters on every
    device; the compositing (``grid_sample``) runs on ``device``, which makes GPU training data-bound
    no more. Returned tensors live on ``device``.

    Args:
        split: ``"train"`` or ``"test"`` (items from t10k only).
        config: Scene recipe.
        device: Where the images are composited (default CPU).
    """

    def __init__(self, split: str = "train", config: SceneConfig | None = None, device: torch.device | str | None = None) -> None:
        self.split = split
        self.config = config or SceneConfig()
        self.device = torch.device(device or "cpu")
        images, labels = load_split(split)
        self.items = torch.from_numpy(np.array(images)).float().div_(255)[:, None].to(self.device)  # (N, 1, 28, 28)
        self.item_labels = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        self.backgrounds = background_pool(128).to(self.device)
        self.classes = CLASSES

    def generate(self, n: int, seed: int, clutter: bool = True) -> SceneBatch:
        """``n`` scenes; the same ``(n, seed, clutter)`` gives the same scenes."""
        cfg, s, dev = self.config, self.config.size, self.device
        g = torch.Generator().manual_seed(int(seed))
        # background: random crop (25-100% of the photo side), random flip
        bg_idx = torch.randint(len(self.backgrounds), (n,), generator=g)
        crop = _rand(g, n, 0.25, 1.0)
        cx, cy = (_rand(g, n, -1, 1) * (1 - crop) for _ in range(2))
        flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        theta_bg = torch.zeros(n, 2, 3)
        theta_bg[:, 0, 0], theta_bg[:, 1, 1], theta_bg[:, 0, 2], theta_bg[:, 1, 2] = crop * flip, crop, cx, cy
        grid = F.affine_grid(theta_bg.to(dev), [n, 3, s, s], align_corners=False)
        canvas = F.grid_sample(self.backgrounds[bg_idx.to(dev)], grid, align_corners=False)  # (n, 3, S, S)

        # clutter fragments of other items, behind the object
        if clutter:
            k = torch.randint(cfg.clutter[0], cfg.clutter[1] + 1, (n,), generator=g)
            for j in range(cfg.clutter[1]):
                active = (k > j).float()[:, None, None, None].to(dev)
                idx = torch.randint(len(self.items), (n,), generator=g)
                sprite = self.items[idx.to(dev)] * self._window(g, n).to(dev)
                side = _rand(g, n, *cfg.clutter_frac) * s
                centre = torch.rand(n, 2, generator=g) * s
                alpha = self._place(sprite, centre, side, _rand(g, n, -math.pi, math.pi))
                colour = (_random_colour(g, n) * _rand(g, n, 0.3, 1.0)[:, None]).to(dev)
                a = alpha * active
                canvas = canvas * (1 - a) + colour[:, :, None, None] * a

        # the object
        item_idx = torch.randint(len(self.items), (n,), generator=g)
        side = _rand(g, n, *cfg.item_frac) * s
        half_diag = side / 2
        centre = half_diag[:, None] + torch.rand(n, 2, generator=g) * (s - 2 * half_diag)[:, None]
        angle = _rand(g, n, -1, 1) * math.radians(cfg.max_rotation_deg)
        item_idx = item_idx.to(dev)
        alpha = self._place(self.items[item_idx], centre, side, angle)  # (n, 1, S, S)
        under = (canvas * alpha).sum((2, 3)) / alpha.sum((2, 3)).clamp_min(1e-6)  # background colour under it
        colour = _contrasting(g, under.cpu(), cfg.min_contrast).to(dev)
        shade = 0.75 + 0.25 * alpha  # keep some of the item's own texture
        canvas = canvas * (1 - alpha) + (colour[:, :, None, None] * shade) * alpha

        masks = alpha[:, 0] > cfg.mask_threshold
        boxes = torch.stack([self._extent(masks.any(1)), self._extent(masks.any(2))], 1)  # (n, 2, 2)
        boxes = boxes[:, [0, 1, 0, 1], [0, 0, 1, 1]]  # x0, y0, x1, y1
        return SceneBatch(canvas.clamp(0, 1), self.item_labels[item_idx], boxes, masks, item_idx, self.split)

    @staticmethod
    def _window(g: torch.Generator, n: int) -> torch.Tensor:
        """A random rectangular window (fragment) of a 28×28 sprite, ``(n, 1, 28, 28)``."""
        w = torch.randint(10, 18, (n, 2), generator=g)
        o = (torch.rand(n, 2, generator=g) * (28 - w)).long()
        r = torch.arange(28)
        ys = (r[None] >= o[:, :1]) & (r[None] < o[:, :1] + w[:, :1])
        xs = (r[None] >= o[:, 1:]) & (r[None] < o[:, 1:] + w[:, 1:])
        return (ys[:, :, None] & xs[:, None, :]).float()[:, None]

    def _place(self, sprite: torch.Tensor, centre: torch.Tensor, side: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        s = self.config.size
        theta = _paste_theta(centre, side, angle, s).to(self.device)
        grid = F.affine_grid(theta, [sprite.shape[0], 1, s, s], align_corners=False)
        return F.grid_sample(sprite, grid, align_corners=False, padding_mode="zeros")  # (n, 1, S, S)

    @staticmethod
    def _extent(any_along: torch.Tensor) -> torch.Tensor:
        """First and one-past-last True index along the last axis, ``(n, 2)``."""
        s = any_along.shape[1]
        idx = torch.arange(s, device=any_along.device)
        lo = torch.where(any_along, idx, s).amin(1)
        hi = torch.where(any_along, idx + 1, 0).amax(1)
        return torch.stack([lo, hi], 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Scene images in [0, 1] → network input (per-channel mean/std of the zoo)."""
    m = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    sd = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images - m) / sd


def centre_in_box(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Whether the canvas centre lies inside each box ``(N,)`` (the centre-point baseline)."""
    c = size / 2
    return (boxes[:, 0] <= c) & (c < boxes[:, 2]) & (boxes[:, 1] <= c) & (c < boxes[:, 3])
