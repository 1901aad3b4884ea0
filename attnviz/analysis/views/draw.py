"""Drawing a feature-resolution map over an analysis's image: the one overlay every view uses."""

from __future__ import annotations

import numpy as np

from ... import render
from ..session import Analysis, Style


def overlay_map(a: Analysis, m: np.ndarray, style: Style, point: tuple[float, float] | None = None, peak: tuple[float, float] | None = None,
                unit: str = "weight", side_by_side: bool = True, vrange: tuple[float, float] | None = None) -> np.ndarray:
    """A feature-resolution map drawn over the image: marks, threshold note and colour bar; original beside it."""
    k = a.display_scale
    base = a.display_image()
    shown = np.asarray(m, dtype=np.float32)
    lo, hi = vrange if vrange is not None else (float(shown.min()), float(shown.max()))
    if style.shared and vrange is None:
        lo = 0.0
    if style.threshold > 0:
        shown = np.where(shown >= style.threshold * float(shown.max()), shown, lo)
    over = render.overlay(base, shown, style.cmap, style.alpha, lo, hi)
    if point is not None:
        over = render.draw_point(over, point[0] * k, point[1] * k)
    if peak is not None:
        over = render.draw_peak(over, peak[0] * k, peak[1] * k)
    if style.threshold > 0:
        over = render.caption(over, f"weights below {style.threshold:.0%} of the maximum are not drawn")
        base = render.caption(base, "original")
    out = render.with_colorbar(over, style.cmap, lo, hi, unit)
    if side_by_side:
        out = render.side_by_side([base, out], height=out.shape[0])
    return out
