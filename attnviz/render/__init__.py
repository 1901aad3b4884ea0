"""Render: pure functions from arrays to RGB ``uint8`` arrays or matplotlib Figures (no model, no UI)."""

from .overlay import (
    CMAPS,
    colorize,
    draw_lattice,
    draw_point,
    draw_quad,
    map_range,
    overlay,
    resize_map,
    side_by_side,
    to_unit,
)
from .plots import (
    affinity_matrix,
    branch_bars,
    figure_to_rgb,
    gate_bars,
    gate_heatmap,
    logit_change,
    series_heatmap,
    timeline,
)

__all__ = [
    "CMAPS",
    "affinity_matrix",
    "branch_bars",
    "colorize",
    "draw_lattice",
    "draw_point",
    "draw_quad",
    "figure_to_rgb",
    "gate_bars",
    "gate_heatmap",
    "logit_change",
    "map_range",
    "overlay",
    "resize_map",
    "series_heatmap",
    "side_by_side",
    "timeline",
    "to_unit",
]
