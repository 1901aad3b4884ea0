"""Spatial Transformer Network (affine)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class AffineHead(nn.Module):
    """Maps localisation features to θ ``(B, 2, 3)``, starting at the identity transform.

    ``bounded=True`` restricts θ to a zoom/translation/small-rotation family: scale in
    ``[min_scale, 1]``, translation within the image and rotation within ±``max_rotation`` radians.
    It starts at a centred window of scale ≈ 0.92 (not exactly 1, where the sigmoid is flat).
    """

    def __init__(self, in_features: int, bounded: bool = False, min_scale: float = 0.2, max_rotation: float = 0.6) -> None:
        super().__init__()
        self.bounded = bounded
        self.min_scale = min_scale
        self.max_rotation = max_rotation
        self.fc = nn.Linear(in_features, 4 if bounded else 6)
        nn.init.zeros_(self.fc.weight)
        with torch.no_grad():
            if bounded:
                # scale 0.92, centred, no rotation: close to the identity but off the sigmoid's flat
                # tail (a bias of 8 gave scale 0.9997 and gradients ~3e-4: the window never moved)
                self.fc.bias.copy_(torch.tensor([2.2, 0.0, 0.0, 0.0]))
            else:
                self.fc.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        p = self.fc(feats)  # (B, 4) or (B, 6)
        if not self.bounded:
            return p.view(-1, 2, 3)
        s = self.min_scale + (1 - self.min_scale) * torch.sigmoid(p[:, 0])  # (B,)
        tx, ty = torch.tanh(p[:, 1]) * (1 - s), torch.tanh(p[:, 2]) * (1 - s)
        a = torch.tanh(p[:, 3]) * self.max_rotation
        cos, sin = torch.cos(a) * s, torch.sin(a) * s
        return torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)


class HeatmapAffineHead(nn.Module):
    """θ ``(B, 2, 3)`` from a localisation *map*: the window centre by soft-argmax, its width and height bounded.

    The centre is the expectation of the pixel grid under a softmax over one 1×1-conv score per cell (translation
    equivariant, unlike a linear layer on flattened features); the scales ``(s_x, s_y)`` lie in ``[min_scale, 1]``, so
    the window can zoom in but never out. It starts as a centred window of scale ≈ 0.92 (zero scores: uniform softmax).
    """

    def __init__(self, channels: int, min_scale: float = 0.2) -> None:
        super().__init__()
        self.min_scale = min_scale
        self.score = nn.Conv2d(channels, 1, 1)
        self.size = nn.Linear(2 * channels, 2)
        for layer in (self.score, self.size):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        with torch.no_grad():
            self.size.bias.fill_(2.2)  # scale 0.92, off the sigmoid's flat tail (see AffineHead)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # (B, C, h, w)
        b, _, h, w = feats.shape
        p = self.score(feats).flatten(1).softmax(1).view(b, h, w)  # (B, h, w)
        xs = (torch.arange(w, device=feats.device, dtype=p.dtype) + 0.5) / w * 2 - 1  # cell centres in [-1, 1]
        ys = (torch.arange(h, device=feats.device, dtype=p.dtype) + 0.5) / h * 2 - 1
        cx, cy = (p.sum(1) * xs).sum(1), (p.sum(2) * ys).sum(1)  # (B,)
        pooled = torch.cat([feats.mean((2, 3)), feats.amax((2, 3))], 1)  # (B, 2C)
        s = self.min_scale + (1 - self.min_scale) * torch.sigmoid(self.size(pooled))  # (B, 2)
        zero = torch.zeros_like(cx)
        return torch.stack([torch.stack([s[:, 0], zero, cx], 1), torch.stack([zero, s[:, 1], cy], 1)], 1)  # (B, 2, 3)


def _pooled_localizer(channels: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, 16, 5, stride=2, padding=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(32 * 16, hidden), nn.ReLU(),
    )


def _map_localizer(channels: int, hidden: int) -> nn.Sequential:
    """Stride 4, then dilated 3×3 convolutions (dilation 2, 4, 8): each output cell sees ~the whole 64² input."""
    layers: list[nn.Module] = []
    cin = channels
    for cout, stride, dil in ((16, 2, 1), (32, 2, 1), (32, 1, 2), (hidden, 1, 4), (hidden, 1, 8)):
        k = 5 if cin == channels else 3
        layers += [nn.Conv2d(cin, cout, k, stride=stride, padding=dil * (k // 2), dilation=dil), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    return nn.Sequential(*layers)


class SpatialTransformer(nn.Module):
    """Affine spatial transformer: localisation net → θ → ``affine_grid`` → ``grid_sample``.

    Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015. https://arxiv.org/abs/1506.02025

    θ comes from the named ``head`` submodule (identity at initialisation); the sampling grid is
    ``F.affine_grid(θ, (B, C, *out_size), align_corners=False)``.

    Args:
        channels: Input channels C.
        out_size: Output (H, W); the input size when ``None``.
        hidden: Width of the localisation features.
        bounded: Use the bounded zoom/shift/rotation parameterisation (see ``AffineHead``; ``localizer="pooled"`` only).
        localizer: ``"pooled"`` (conv stack → 4×4 pool → linear → ``AffineHead``) or ``"map"`` (dilated conv stack at
            stride 4 → ``HeatmapAffineHead``: soft-argmax centre, bounded anisotropic zoom).
    """

    def __init__(self, channels: int, out_size: tuple[int, int] | None = None, hidden: int = 32, bounded: bool = False,
                 localizer: str = "pooled") -> None:
        super().__init__()
        self.out_size = out_size
        self.align_corners = False
        if localizer == "pooled":
            self.localization = _pooled_localizer(channels, hidden)
            self.head: nn.Module = AffineHead(hidden, bounded=bounded)
        elif localizer == "map":
            self.localization = _map_localizer(channels, hidden)
            self.head = HeatmapAffineHead(hidden)
        else:
            raise ValueError(f"localizer must be 'pooled' or 'map', not {localizer!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        theta = self.head(self.localization(x))  # (B, 2, 3)
        oh, ow = self.out_size or (h, w)
        grid = F.affine_grid(theta, [b, c, oh, ow], align_corners=self.align_corners)  # (B, Ho, Wo, 2)
        return F.grid_sample(x, grid, align_corners=self.align_corners)
