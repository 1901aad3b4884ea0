"""The spatial transformer view: the warped lattice and sampled region on the input, the rectified output, θ."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ... import render
from ...capture.records import SamplingGrid
from ...maps import sampled_quad
from ...maps.geometry import normalized_to_pixels
from ..session import Analysis


def stn_view(a: Analysis) -> tuple[np.ndarray | None, str]:
    """Input with the warped lattice and sampled quadrilateral, beside the rectified output; θ as text."""
    grids = a.of(SamplingGrid)
    if not grids:
        return None, "This model has no spatial transformer."
    g: SamplingGrid = grids[0]  # type: ignore[assignment]
    k = a.display_scale
    base = a.display_image()
    h, w = base.shape[:2]
    in_hw = g.input_hw or a.hw
    scale = torch.tensor([w / in_hw[1], h / in_hw[0]])
    grid_px = normalized_to_pixels(g.grid[0], in_hw, g.align_corners) * scale  # (Ho, Wo, 2) drawing pixels
    quad = sampled_quad(g, 0) * scale
    img = render.draw_lattice(base, grid_px.numpy(), every=max(1, g.grid.shape[1] // 8))
    img = render.draw_quad(img, quad.numpy())
    src = torch.from_numpy(base).permute(2, 0, 1).float()[None]
    rect = F.grid_sample(src, g.grid[:1], align_corners=g.align_corners)[0].permute(1, 2, 0).clamp(0, 255).byte().numpy()
    both = render.side_by_side([img, rect])
    text = "θ (output → input, normalised coordinates):\n"
    if g.theta is not None:
        t = g.theta[0].numpy()
        text += "\n".join("[" + "  ".join(f"{v:+.3f}" for v in row) + "]" for row in t)
        det = float(np.linalg.det(t[:, :2]))
        text += f"\nscale √det = {np.sqrt(abs(det)):.3f}, translation = ({t[0, 2]:+.3f}, {t[1, 2]:+.3f})"
    else:
        text += "(no θ: the grid did not come from affine_grid)"
    quad_img = quad / k
    text += "\nsampled quadrilateral (x, y image px): " + ", ".join(f"({p[0]:.0f}, {p[1]:.0f})" for p in quad_img.tolist())
    return both, text
