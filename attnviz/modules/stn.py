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


class SpatialTransformer(nn.Module):
    """Affine spatial transformer: localisation net → θ → ``affine_grid`` → ``grid_sample``.

    Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015. https://arxiv.org/abs/1506.02025

    θ comes from the named ``head`` submodule (identity at initialisation); the sampling grid is
    ``F.affine_grid(θ, (B, C, *out_size), align_corners=False)``.

    Args:
        channels: Input channels C.
        out_size: Output (H, W); the input size when ``None``.
        hidden: Width of the localisation features.
        bounded: Use the bounded zoom/shift/rotation parameterisation (see ``AffineHead``).
    """

    def __init__(self, channels: int, out_size: tuple[int, int] | None = None, hidden: int = 32, bounded: bool = False) -> None:
        super().__init__()
        self.out_size = out_size
        self.align_corners = False
        self.localization = nn.Sequential(
            nn.Conv2d(channels, 16, 5, stride=2, padding=2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(32 * 16, hidden), nn.ReLU(),
        )
        self.head = AffineHead(hidden, bounded=bounded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        theta = self.head(self.localization(x))  # (B, 2, 3)
        oh, ow = self.out_size or (h, w)
        grid = F.affine_grid(theta, [b, c, oh, ow], align_corners=self.align_corners)  # (B, Ho, Wo, 2)
        return F.grid_sample(x, grid, align_corners=self.align_corners)
