"""Scenes v2: Fashion-MNIST items on domain-randomised backgrounds, with per-pixel ground truth.

One generator serves classification (one item per scene) and segmentation (1–6 items of distinct
classes). Everything that is not the item is randomised, so a model cannot learn a shortcut:

- the background comes from a named family (:data:`~attnviz.data.backgrounds.FAMILIES`: photo crops,
  blurred photos, multi-scale noise, stripes, checks, gradients, flat colour, speckle, Voronoi cells,
  scribbles); a config lists the families it may draw, so whole families can be held out;
- each item is 15–50% of the canvas side, rotated, with aspect jitter, and differs from the
  background under it in brightness *or* in hue at equal brightness; it is rendered shaded,
  textured, pattern-filled or as an outline;
- clutter fragments of other items lie behind the items and, sometimes, partly over them;
- the whole image gets contrast / gamma / colour jitter, grain, blur and JPEG-like compression.

Ground truth: a label map (0 = background, 1..10 = item class + 1) of what is visible, instance masks,
and tight boxes. Random draws come from a CPU generator, so a seed gives the same scene on every
device; compositing runs on ``device``. Train scenes use the Fashion-MNIST train split only, test
scenes t10k only (no image is in both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .backgrounds import (
    FAMILIES,
    TRAIN_FAMILIES,
    BackgroundContext,
    rand,
    random_colours,
)
from .fashion import CLASSES, load_split

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
RENDERINGS = ("shaded", "textured", "pattern", "outline")


@dataclass(frozen=True)
class SceneConfig:
    """Scene recipe (fractions are of the canvas side).

    Attributes:
        size: Canvas side in pixels (a multiple of 8).
        items: Range of items per scene (distinct classes); (1, 1) for classification.
        item_frac: Range of an item's side.
        max_rotation_deg: Largest item rotation.
        aspect: Range of the item's width ÷ height stretch.
        families: Background families to draw from (uniformly).
        photos: Photo set of the ``photo`` and ``blur`` families: ``"train"`` or ``"heldout"``.
        clutter: Range of clutter fragments behind the items.
        occlusion: Probability of a fragment in front of the items (it never hides more than 40%
            of the first item).
        hue_contrast: Probability that an item differs from its background by hue at about equal
            brightness instead of by brightness.
        renderings: Probabilities of the item renderings in :data:`RENDERINGS` order.
        photometric: Whether to apply contrast/gamma/colour jitter, grain, blur and JPEG-like noise.
        mask_threshold: Item alpha above which a pixel counts as the item.
    """

    size: int = 64
    items: tuple[int, int] = (1, 1)
    item_frac: tuple[float, float] = (0.15, 0.50)
    max_rotation_deg: float = 30.0
    aspect: tuple[float, float] = (0.8, 1.25)
    families: tuple[str, ...] = TRAIN_FAMILIES
    photos: str = "train"
    clutter: tuple[int, int] = (1, 4)
    occlusion: float = 0.3
    hue_contrast: float = 0.4
    renderings: tuple[float, float, float, float] = (0.45, 0.25, 0.2, 0.1)
    photometric: bool = True
    mask_threshold: float = 0.25

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"unknown background families {unknown}; valid: {', '.join(FAMILIES)}")
        if self.size % 8:
            raise ValueError(f"size must be a multiple of 8, got {self.size}")
        if not 1 <= self.items[0] <= self.items[1] <= len(CLASSES):
            raise ValueError(f"items must satisfy 1 <= lo <= hi <= {len(CLASSES)}, got {self.items}")


@dataclass
class SceneBatch:
    """A batch of scenes; K is the most items a scene of the config can hold.

    Attributes:
        images: ``(N, 3, S, S)`` float in [0, 1].
        labels: ``(N,)`` class of the first item (the classification label).
        boxes: ``(N, 4)`` box (x0, y0, x1, y1) of the first item's visible pixels, x1/y1 exclusive.
        masks: ``(N, S, S)`` visible pixels of the first item.
        label_map: ``(N, S, S)`` long: 0 = background, c + 1 = a visible pixel of class c.
        item_labels: ``(N, K)`` class of each item, -1 where a scene has fewer items.
        item_boxes: ``(N, K, 4)`` visible box of each item (zeros when it is not visible).
        instance_masks: ``(N, K, S, S)`` visible pixels of each item.
        item_index: ``(N, K)`` index of each item in its Fashion-MNIST split, -1 where absent.
        family: ``(N,)`` index into ``families`` of the background.
        families: Names of the config's families.
        split: ``"train"`` or ``"test"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor
    label_map: torch.Tensor
    item_labels: torch.Tensor
    item_boxes: torch.Tensor
    instance_masks: torch.Tensor
    item_index: torch.Tensor
    family: torch.Tensor
    families: tuple[str, ...]
    split: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def family_names(self) -> list[str]:
        """The background family of each scene."""
        return [self.families[int(i)] for i in self.family]


# ---------------------------------------------------------------------------------------------- colour
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma of colours ``(..., 3)``."""
    return (rgb * _LUMA.to(rgb.device)).sum(-1)


def _hsv(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV (h in [0, 1)) → RGB ``(n, 3)``."""
    h6 = (h % 1.0) * 6
    i = h6.floor()
    f = h6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack([
        torch.stack([v, t, p], 1), torch.stack([q, v, p], 1), torch.stack([p, v, t], 1),
        torch.stack([p, q, v], 1), torch.stack([t, p, v], 1), torch.stack([v, p, q], 1),
    ], 0)  # (6, n, 3)
    return table[i.long().clamp(0, 5), torch.arange(h.shape[0])]


def _hue(rgb: torch.Tensor) -> torch.Tensor:
    """Hue in [0, 1) of colours ``(n, 3)`` (0 for greys)."""
    r, g, b = rgb.unbind(-1)
    mx, mn = rgb.amax(-1), rgb.amin(-1)
    d = (mx - mn).clamp_min(1e-6)
    h = torch.where(mx == r, ((g - b) / d) % 6, torch.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return h / 6


def _with_luma(col: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scale colours towards a target luma, lifting towards white when scaling alone cannot reach it."""
    scaled = col * (target / luma(col).clamp_min(1e-3))[:, None]
    scaled = scaled / scaled.amax(1, keepdim=True).clamp_min(1.0)
    lift = ((target - luma(scaled)) / (1 - luma(scaled)).clamp_min(1e-3)).clamp(0, 1)
    return (scaled + (1 - scaled) * lift[:, None]).clamp(0, 1)


def item_colours(g: torch.Generator, under: torch.Tensor, hue_contrast: float) -> torch.Tensor:
    """Colours ``(n, 3)`` that stand out from the background colour ``under`` ``(n, 3)``.

    Brightness mode: luma at least 0.3 away from the background's. Hue mode: about the background's
    luma (±0.1), saturated, with a hue at least 120° away; it falls back to brightness when the
    result would not differ from the background by at least 0.4 in RGB distance.
    """
    n = under.shape[0]
    bl = luma(under)
    # brightness mode
    col = _hsv(torch.rand(n, generator=g), rand(g, n, 0.0, 1.0), torch.ones(n))
    dark = bl > 0.5
    target = torch.where(dark, rand(g, n, 0.0, 1.0) * (bl - 0.3).clamp_min(0.02), bl + 0.3 + rand(g, n, 0.0, 1.0) * (0.7 - bl).clamp_min(0.0))
    bright = _with_luma(col, target.clamp(0, 1))
    # hue mode
    hue = _hue(under) + rand(g, n, 1 / 3, 2 / 3)
    hued = _with_luma(_hsv(hue, rand(g, n, 0.7, 1.0), torch.ones(n)), (bl + rand(g, n, -0.1, 0.1)).clamp(0.15, 0.85))
    # shaded renderings darken an item by up to a quarter: it must still differ when darkened
    ok = ((hued - under).norm(dim=1) >= 0.4) & ((0.75 * hued - under).norm(dim=1) >= 0.3)
    use_hue = (torch.rand(n, generator=g) < hue_contrast) & ok
    return torch.where(use_hue[:, None], hued, bright)


# ---------------------------------------------------------------------------------------------- geometry
def _paste_theta(center: torch.Tensor, side: torch.Tensor, aspect: torch.Tensor, angle: torch.Tensor, size: int) -> torch.Tensor:
    """θ mapping canvas coordinates to those of a sprite of ``side`` px (stretched by ``aspect``) at ``center``."""
    cn = center / size * 2 - 1  # (n, 2) normalised centre
    sx = size / (side * aspect.sqrt())  # wider sprite for aspect > 1
    sy = size / (side / aspect.sqrt())
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], 1)  # (n, 2, 2)
    a = torch.stack([sx, sy], 1)[:, :, None] * rot
    t = -(a @ cn[:, :, None])[:, :, 0]
    return torch.cat([a, t[:, :, None]], 2)  # (n, 2, 3)


def _extent(any_along: torch.Tensor) -> torch.Tensor:
    """First and one-past-last True index along the last axis, ``(n, 2)`` (zeros when none)."""
    s = any_along.shape[-1]
    idx = torch.arange(s, device=any_along.device)
    lo = torch.where(any_along, idx, s).amin(-1)
    hi = torch.where(any_along, idx + 1, 0).amax(-1)
    empty = ~any_along.any(-1)
    return torch.stack([lo.masked_fill(empty, 0), hi], -1)


def boxes_of(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes ``(..., 4)`` (x0, y0, x1, y1) of masks ``(..., S, S)``; zeros for empty masks."""
    xs = _extent(masks.any(-2))
    ys = _extent(masks.any(-1))
    return torch.stack([xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]], -1)


# ---------------------------------------------------------------------------------------------- photometric
def _dct_matrix(k: int = 8) -> torch.Tensor:
    i = torch.arange(k, dtype=torch.float32)
    m = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * k)) * math.sqrt(2 / k)
    m[0] /= math.sqrt(2)
    return m  # orthonormal DCT-II


_JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
_JPEG_CHROMA = torch.full((8, 8), 99.0)
_JPEG_CHROMA[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]], dtype=torch.float32)


def jpeg_like(img: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Quantise 8×8 DCT blocks of YCbCr with the JPEG tables at ``quality`` (n,) in [1, 100]."""
    n, _, s, _ = img.shape
    dev = img.device
    to_ycc = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], device=dev)
    ycc = torch.einsum("ij,njhw->nihw", to_ycc, img * 255) - torch.tensor([128.0, 0, 0], device=dev)[None, :, None, None]
    q = quality.to(dev).clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)[:, None, None, None, None, None] / 100  # libjpeg's scaling
    tables = torch.stack([_JPEG_LUMA, _JPEG_CHROMA, _JPEG_CHROMA]).to(dev)[None, :, None, None]  # (1, 3, 1, 1, 8, 8)
    qt = (tables * scale).clamp_min(1)
    d = _dct_matrix().to(dev)
    blocks = ycc.reshape(n, 3, s // 8, 8, s // 8, 8).permute(0, 1, 2, 4, 3, 5)  # (n, 3, by, bx, 8, 8)
    coef = d @ blocks @ d.T
    coef = torch.round(coef / qt) * qt
    blocks = d.T @ coef @ d
    ycc = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, 3, s, s) + torch.tensor([128.0, 0, 0], device=dev)[None, :, None, None]
    to_rgb = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]], device=dev)
    return (torch.einsum("ij,njhw->nihw", to_rgb, ycc) / 255).clamp(0, 1)


def photometric(g: torch.Generator, img: torch.Tensor) -> torch.Tensor:
    """Contrast, gamma, per-channel gain, brightness, grain, blur and JPEG-like noise, per image."""
    n, dev = img.shape[0], img.device

    def col(t: torch.Tensor) -> torch.Tensor:
        return t.to(dev)[:, None, None, None]

    mean = img.mean((1, 2, 3), keepdim=True)
    img = (img - mean) * col(rand(g, n, 0.6, 1.3)) + mean + col(rand(g, n, -0.1, 0.1))
    img = img * torch.rand(n, 3, generator=g).mul(0.3).add(0.85).to(dev)[:, :, None, None]
    img = img.clamp(0, 1) ** col(torch.exp(rand(g, n, math.log(0.7), math.log(1.5))))
    grain = col((torch.rand(n, generator=g) < 0.5).float() * rand(g, n, 0.0, 0.05))
    img = img + grain * torch.randn(n, 1, *img.shape[2:], generator=g).to(dev)
    blurred = F.avg_pool2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), 3, 1)
    img = torch.where(col(torch.rand(n, generator=g) < 0.15).bool(), blurred, img).clamp(0, 1)
    jpeg = torch.rand(n, generator=g) < 0.3
    quality = rand(g, n, 15, 70)
    if jpeg.any():
        idx = jpeg.nonzero().flatten()
        img[idx.to(dev)] = jpeg_like(img[idx.to(dev)], quality[idx])
    return img


# ---------------------------------------------------------------------------------------------- generator
class SceneGenerator:
    """Deterministic generator of v2 scenes from one Fashion-MNIST split.

    Args:
        split: ``"train"`` or ``"test"`` (items from t10k only).
        config: Scene recipe.
        device: Where scenes are composited (default CPU); random draws always use the CPU.
    """

    def __init__(self, split: str = "train", config: SceneConfig | None = None, device: torch.device | str | None = None) -> None:
        self.split = split
        self.config = config or SceneConfig()
        self.device = torch.device(device or "cpu")
        images, labels = load_split(split)
        self.items = torch.from_numpy(np.array(images)).float().div_(255)[:, None].to(self.device)  # (N, 1, 28, 28)
        self.item_labels = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        by_class = [np.flatnonzero(labels == c) for c in range(len(CLASSES))]
        self._per_class = max(len(b) for b in by_class)
        # (10, P) item indices per class, cycled to equal length, for class-first sampling
        self._by_class = torch.from_numpy(np.stack([np.resize(b, self._per_class) for b in by_class]).astype(np.int64))
        self._bg = BackgroundContext(self.config.photos, self.device)
        self.classes = CLASSES

    # ---- pieces
    def _background(self, g: torch.Generator, fam: torch.Tensor) -> torch.Tensor:
        cfg, s, dev = self.config, self.config.size, self.device
        canvas = torch.empty(len(fam), 3, s, s, device=dev)
        for i, name in enumerate(cfg.families):  # fixed order: the same draws for the same seed
            idx = (fam == i).nonzero().flatten()
            if len(idx):
                canvas[idx.to(dev)] = FAMILIES[name](g, len(idx), s, dev, self._bg)
        return canvas

    def _sprite_alpha(self, g: torch.Generator, idx: torch.Tensor, centre: torch.Tensor, side: torch.Tensor, window: bool = False) -> torch.Tensor:
        """Alpha ``(n, 1, S, S)`` of items ``idx`` placed at ``centre`` with a random angle and aspect."""
        n, s = len(idx), self.config.size
        sprite = self.items[idx.to(self.device)]
        if window:
            sprite = sprite * self._window(g, n).to(self.device)
        angle = rand(g, n, -1, 1) * math.radians(self.config.max_rotation_deg if not window else 180.0)
        aspect = torch.exp(rand(g, n, math.log(self.config.aspect[0]), math.log(self.config.aspect[1])))
        theta = _paste_theta(centre, side, aspect, angle, s).to(self.device)
        grid = F.affine_grid(theta, [n, 1, s, s], align_corners=False)
        return F.grid_sample(sprite, grid, align_corners=False, padding_mode="zeros")

    @staticmethod
    def _window(g: torch.Generator, n: int) -> torch.Tensor:
        """A random rectangular window (fragment) of a 28×28 sprite, ``(n, 1, 28, 28)``."""
        w = torch.randint(10, 18, (n, 2), generator=g)
        o = (torch.rand(n, 2, generator=g) * (28 - w)).long()
        r = torch.arange(28)
        ys = (r[None] >= o[:, :1]) & (r[None] < o[:, :1] + w[:, :1])
        xs = (r[None] >= o[:, 1:]) & (r[None] < o[:, 1:] + w[:, 1:])
        return (ys[:, :, None] & xs[:, None, :]).float()[:, None]

    def _fragments(self, g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One clutter fragment per scene: alpha ``(n, 1, S, S)`` and colour ``(n, 3)``."""
        s = self.config.size
        idx = torch.randint(len(self.items), (n,), generator=g)
        side = rand(g, n, 0.25, 0.45) * s
        centre = torch.rand(n, 2, generator=g) * s
        alpha = self._sprite_alpha(g, idx, centre, side, window=True)
        return alpha, random_colours(g, n).to(self.device)

    def _render(self, g: torch.Generator, alpha: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        """Item appearance ``(n, 3, S, S)`` for alpha (the item's own intensity) and base colour."""
        n, dev, s = alpha.shape[0], self.device, self.config.size
        mode = torch.multinomial(torch.tensor(self.config.renderings, dtype=torch.float32), n, replacement=True, generator=g)
        ang = torch.rand(n, generator=g) * math.pi  # pattern stripes: angle and period
        period = rand(g, n, 3.0, 8.0)
        c = colour[:, :, None, None]
        look = c * (0.75 + 0.25 * alpha)  # shaded: the item's own texture, faintly
        textured = (mode == 1).to(dev)[:, None, None, None]
        look = torch.where(textured, c * (0.35 + 0.65 * alpha), look)
        idx = (mode == 2).nonzero().flatten()
        if len(idx):  # pattern: stripes of the colour and a brighter/darker variant across the item
            r = torch.arange(s, device=dev, dtype=torch.float32)
            a, p, col = ang[idx].to(dev), period[idx].to(dev), colour[idx.to(dev)]
            u = r[None, None, :] * a.cos()[:, None, None] + r[None, :, None] * a.sin()[:, None, None]
            stripe = (torch.sin(2 * math.pi * u / p[:, None, None]) > 0).float()[:, None]
            other = torch.where(luma(col)[:, None] > 0.5, col * 0.6, col + (1 - col) * 0.4)[:, :, None, None]
            look[idx.to(dev)] = col[:, :, None, None] * (1 - stripe) + other * stripe
        idx = (mode == 3).nonzero().flatten().to(dev)
        if len(idx):  # outline: strong colour on the rim, a faint fill inside
            al = alpha[idx]
            rim = (al - (-F.max_pool2d(-al, 5, 1, 2))).clamp(0, 1)
            look[idx] = c[idx] * torch.where(rim > 0.2, 1.0, 0.5)
        return look

    # ---- scenes
    def generate(self, n: int, seed: int, clutter: bool = True) -> SceneBatch:
        """``n`` scenes; the same ``(n, seed, clutter)`` and config give the same scenes.

        Args:
            n: Number of scenes.
            seed: Seed of the CPU generator.
            clutter: Whether to add clutter fragments and occluders (False gives clean scenes).
        """
        cfg, s, dev = self.config, self.config.size, self.device
        g = torch.Generator().manual_seed(int(seed))
        k_max = cfg.items[1]
        fam = torch.randint(len(cfg.families), (n,), generator=g)
        canvas = self._background(g, fam)

        if clutter:  # fragments of other items behind everything
            count = torch.randint(cfg.clutter[0], cfg.clutter[1] + 1, (n,), generator=g)
            for j in range(cfg.clutter[1]):
                alpha, colour = self._fragments(g, n)
                a = alpha * (count > j).float().to(dev)[:, None, None, None]
                canvas = canvas * (1 - a) + colour[:, :, None, None] * a

        # items: distinct classes per scene, class first then an item of that class
        k = torch.randint(cfg.items[0], cfg.items[1] + 1, (n,), generator=g)
        classes = torch.argsort(torch.rand(n, len(CLASSES), generator=g), dim=1)[:, :k_max]  # (n, K)
        pick = torch.randint(self._per_class, (n, k_max), generator=g)
        item_idx = self._by_class[classes, pick]  # (n, K)
        present = torch.arange(k_max)[None] < k[:, None]  # (n, K)
        owner = torch.full((n, s, s), -1, dtype=torch.long, device=dev)  # which item is on top at each pixel
        lo, hi = cfg.item_frac
        for j in range(k_max):
            side = rand(g, n, lo, hi) * s
            margin = side * 0.45
            centre = margin[:, None] + torch.rand(n, 2, generator=g) * (s - 2 * margin)[:, None]
            alpha = self._sprite_alpha(g, item_idx[:, j], centre, side) * present[:, j].float().to(dev)[:, None, None, None]
            under = (canvas * alpha).sum((2, 3)) / alpha.sum((2, 3)).clamp_min(1e-6)
            colour = item_colours(g, under.cpu(), cfg.hue_contrast).to(dev)
            look = self._render(g, alpha, colour)
            opacity = (3 * alpha).clamp(max=1.0)  # faint parts of a garment are still cloth, not glass
            canvas = canvas * (1 - opacity) + look * opacity
            owner = torch.where(alpha[:, 0] > cfg.mask_threshold, j, owner)

        if clutter and cfg.occlusion > 0:  # a fragment over the items, hiding at most 40% of item 0
            alpha, colour = self._fragments(g, n)
            on = torch.rand(n, generator=g) < cfg.occlusion
            first = owner == 0
            covered = ((alpha[:, 0] > cfg.mask_threshold) & first).sum((1, 2)).float() / first.sum((1, 2)).clamp_min(1).float()
            on = on.to(dev) & (covered <= 0.4)
            a = alpha * on.float()[:, None, None, None]
            canvas = canvas * (1 - a) + colour[:, :, None, None] * a
            owner = torch.where(a[:, 0] > cfg.mask_threshold, -1, owner)

        if cfg.photometric:
            canvas = photometric(g, canvas.clamp(0, 1))
        canvas = canvas.clamp(0, 1)

        inst = owner[:, None] == torch.arange(k_max, device=dev)[None, :, None, None]  # (n, K, S, S)
        labels_k = torch.where(present, classes, -1).to(dev)  # (n, K)
        label_map = torch.where(owner >= 0, torch.gather(labels_k, 1, owner.clamp_min(0).flatten(1)).view(n, s, s) + 1, 0)
        boxes = boxes_of(inst)  # (n, K, 4)
        return SceneBatch(
            images=canvas, labels=labels_k[:, 0], boxes=boxes[:, 0], masks=inst[:, 0], label_map=label_map,
            item_labels=labels_k, item_boxes=boxes, instance_masks=inst,
            item_index=torch.where(present, item_idx, -1).to(dev), family=fam.to(dev), families=tuple(cfg.families), split=self.split,
        )


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Scene images in [0, 1] → network input (per-channel mean/std of the zoo)."""
    m = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    sd = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images - m) / sd


def centre_in_box(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Whether the canvas centre lies inside each box ``(N,)`` (the centre-point baseline)."""
    c = size / 2
    return (boxes[:, 0] <= c) & (c < boxes[:, 2]) & (boxes[:, 1] <= c) & (c < boxes[:, 3])
