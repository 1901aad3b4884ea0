"""Geometry helpers: STN sampled regions and feature-to-image upsampling."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..capture.records import SamplingGrid


def normalized_to_pixels(xy: torch.Tensor, hw: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Convert ``grid_sample`` normalised (x, y) in [-1, 1] to pixel coordinates of an (H, W) image.

    Args:
        xy: ``(..., 2)`` normalised coordinates.
        hw: Image size (H, W).
        align_corners: The convention the grid was made with.

    Returns:
        ``(..., 2)`` pixel (x, y), with pixel centres at integer + 0.5 for ``align_corners=False``.
    """
    h, w = hw
    size = torch.tensor([w, h], dtype=xy.dtype)
    if align_corners:
        return (xy + 1) / 2 * (size - 1) + 0.5
    return (xy + 1) / 2 * size


def sampled_quad(rec: SamplingGrid, batch: int = 0) -> torch.Tensor:
    """Pixel corners of the region the transformer samples, ``(4, 2)`` as (x, y).

    The corners are the grid's outer sampling positions extended by half an output cell, i.e. the
    image under θ of the output image's corners (top-left, top-right, bottom-right, bottom-left).
    """
    if rec.input_hw is None:
        raise ValueError(f"the input size of {rec.name} is unknown")
    g = rec.grid[batch]  # (Ho, Wo, 2)
    if rec.theta is not None:
        corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
        pts = corners @ rec.theta[batch].T  # (4, 2)
    else:
        pts = torch.stack([g[0, 0], g[0, -1], g[-1, -1], g[-1, 0]])  # outer sample centres
    return normalized_to_pixels(pts, rec.input_hw, rec.align_corners)


def upsample_map(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of an ``(H, W)`` map to ``size`` (H', W')."""
    return F.interpolate(m[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
