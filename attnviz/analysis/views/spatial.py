"""Spatial masks (CBAM, scSE, GC, BAM, generic): every mask over the image."""

from __future__ import annotations

import numpy as np

from ... import render
from ...capture.records import ElementGate, SpatialMask
from ..session import Analysis, Style
from .draw import overlay_map


def spatial_gallery(a: Analysis, style: Style | None = None) -> list[tuple[np.ndarray, str]]:
    """Every spatial mask overlaid on the image (colour bar attached), with its layer and contribution."""
    style = (style or Style()).check()
    masks = [r for r in a.of(SpatialMask)]
    if not masks:
        return []
    vr = render.map_range([r.mask[0].numpy() for r in masks]) if style.shared else None  # type: ignore[attr-defined]
    out = []
    for r in masks:
        c = "" if r.contribution is None or r.contribution[0].isnan() else f", contribution {float(r.contribution[0]):.3f}"
        m = r.mask[0].numpy()  # type: ignore[attr-defined]
        element = isinstance(r, ElementGate)  # a gate over channels × positions: what is drawn is its channel mean, said so
        img = overlay_map(a, m, style, unit="channel mean of the gate" if element else "gate / pooling weight", side_by_side=False, vrange=vr)
        what = f"channel mean of a per-element gate over {r.gate.shape[1]} channels, " if element else ""  # type: ignore[attr-defined]
        out.append((img, f"{r.name} ({r.module_type}, {what}mean {float(m.mean()):.2f}{c})"))
    return out
