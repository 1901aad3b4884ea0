"""Heatmap overlays and geometric marks on RGB images (numpy in, ``(H, W, 3) uint8`` out)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import numpy as np
from matplotlib import colormaps

CMAPS = ("inferno", "viridis", "magma", "plasma", "turbo", "jet", "gray")


def map_range(maps: Sequence[np.ndarray]) -> tuple[float, float]:
    """A shared (vmin, vmax) over several maps (finite values only)."""
    vals = [np.asarray(m, dtype=np.float64) for m in maps]
    lo = min(float(np.nanmin(v)) for v in vals)
    hi = max(float(np.nanmax(v)) for v in vals)
    return lo, hi


def to_unit(m: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Scale a map to [0, 1] with (vmin, vmax), defaulting to its own range; a flat map gives 0."""
    m = np.asarray(m, dtype=np.float32)
    lo = float(np.nanmin(m)) if vmin is None else float(vmin)
    hi = float(np.nanmax(m)) if vmax is None else float(vmax)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros_like(m)
    return np.clip((m - lo) / (hi - lo), 0.0, 1.0)


@functools.lru_cache(maxsize=32)
def lut(cmap: str) -> np.ndarray:
    """256-entry RGB lookup table of a matplotlib colormap, ``(256, 3) uint8``."""
    return (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def colorize(m: np.ndarray, cmap: str = "inferno", vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """A 2-D map as an RGB image ``(h, w, 3) uint8`` through a matplotlib colormap (8-bit lookup table)."""
    if cmap not in colormaps:
        raise ValueError(f"unknown colormap {cmap!r}; try one of {', '.join(CMAPS)}")
    idx = (to_unit(m, vmin, vmax) * 255 + 0.5).astype(np.uint8)  # (h, w)
    return cv2.LUT(cv2.merge([idx, idx, idx]), lut(cmap)[:, None, :])  # (h, w, 3)


def resize_map(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to (H, W) (pixel centres aligned, like ``align_corners=False``)."""
    m = np.asarray(m, dtype=np.float32)
    if m.shape == tuple(hw):
        return m
    return cv2.resize(m, (int(hw[1]), int(hw[0])), interpolation=cv2.INTER_LINEAR)


def overlay(
    image: np.ndarray,
    m: np.ndarray,
    cmap: str = "inferno",
    alpha: float = 0.55,
    vmin: float | None = None,
    vmax: float | None = None,
    point: tuple[float, float] | None = None,
) -> np.ndarray:
    """Blend a colour-mapped map (any resolution, resized bilinearly) over an RGB image.

    Args:
        image: ``(H, W, 3) uint8``.
        m: ``(h, w)`` map.
        cmap: Matplotlib colormap name.
        alpha: Opacity of the map (0 = image only, 1 = map only).
        vmin: Lower end of the colour scale (default: the map's minimum).
        vmax: Upper end of the colour scale (default: the map's maximum).
        point: Optional (x, y) in image pixels to mark with a crosshair.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {alpha}")
    m = np.asarray(m, dtype=np.float32)
    lo = float(np.nanmin(m)) if vmin is None else vmin  # from the small map: bilinear stays within its range
    hi = float(np.nanmax(m)) if vmax is None else vmax
    heat = colorize(resize_map(m, image.shape[:2]), cmap, lo, hi)
    out = cv2.addWeighted(image.astype(np.uint8), 1.0 - alpha, heat, alpha, 0.0)
    if point is not None:
        out = draw_point(out, *point)
    return out


def draw_point(image: np.ndarray, x: float, y: float, radius: int | None = None) -> np.ndarray:
    """A crosshair with a dark outline at (x, y) so it shows on any background."""
    out = image.copy()
    r = radius or max(4, min(image.shape[:2]) // 40)
    c = (int(round(x)), int(round(y)))
    t = max(1, r // 4)
    for colour, thick in (((0, 0, 0), t + 2), ((0, 255, 255), t)):
        cv2.circle(out, c, r, colour, thick, cv2.LINE_AA)
        cv2.line(out, (c[0] - 2 * r, c[1]), (c[0] - r, c[1]), colour, thick, cv2.LINE_AA)
        cv2.line(out, (c[0] + r, c[1]), (c[0] + 2 * r, c[1]), colour, thick, cv2.LINE_AA)
        cv2.line(out, (c[0], c[1] - 2 * r), (c[0], c[1] - r), colour, thick, cv2.LINE_AA)
        cv2.line(out, (c[0], c[1] + r), (c[0], c[1] + 2 * r), colour, thick, cv2.LINE_AA)
    return out


def draw_quad(image: np.ndarray, quad: np.ndarray, colour: tuple[int, int, int] = (255, 64, 64), thickness: int = 2) -> np.ndarray:
    """The closed quadrilateral ``(4, 2)`` (x, y pixels) drawn on a copy of the image."""
    out = image.copy()
    pts = np.round(np.asarray(quad, dtype=np.float64) - 0.5).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(out, [pts], True, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.polylines(out, [pts], True, colour, thickness, cv2.LINE_AA)
    return out


def draw_lattice(image: np.ndarray, grid_px: np.ndarray, every: int = 4, colour: tuple[int, int, int] = (80, 220, 255)) -> np.ndarray:
    """Every ``every``-th row and column of a sampling grid ``(Ho, Wo, 2)`` (x, y pixels) as polylines."""
    out = image.copy()
    g = np.asarray(grid_px, dtype=np.float64) - 0.5
    ho, wo = g.shape[:2]
    lines = [g[i] for i in range(0, ho, every)] + [g[ho - 1]] + [g[:, j] for j in range(0, wo, every)] + [g[:, wo - 1]]
    pts = [np.round(line).astype(np.int32).reshape(-1, 1, 2) for line in lines]
    cv2.polylines(out, pts, False, colour, 1, cv2.LINE_AA)
    return out


def side_by_side(images: Sequence[np.ndarray], gap: int = 6, height: int | None = None) -> np.ndarray:
    """Images resized to one height and placed left to right on a white strip."""
    h = height or max(im.shape[0] for im in images)
    parts = []
    for im in images:
        w = max(1, int(round(im.shape[1] * h / im.shape[0])))
        interp = cv2.INTER_NEAREST if im.shape[0] < h / 2 else cv2.INTER_AREA
        parts.append(cv2.resize(im, (w, h), interpolation=interp) if im.shape[0] != h else im)
        parts.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(parts[:-1], axis=1)


def draw_peak(image: np.ndarray, x: float, y: float, radius: int | None = None) -> np.ndarray:
    """A diamond with a dark outline at (x, y): the peak of a map (the crosshair marks the query)."""
    out = image.copy()
    r = radius or max(5, min(image.shape[:2]) // 32)
    cx, cy = int(round(x)), int(round(y))
    pts = np.array([[cx, cy - r], [cx + r, cy], [cx, cy + r], [cx - r, cy]], np.int32).reshape(-1, 1, 2)
    t = max(1, r // 4)
    cv2.polylines(out, [pts], True, (0, 0, 0), t + 2, cv2.LINE_AA)
    cv2.polylines(out, [pts], True, (80, 255, 120), t, cv2.LINE_AA)
    return out


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float, colour: tuple[int, int, int] = (20, 20, 20), thick: int = 1) -> None:
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def fmt_value(v: float, span: float | None = None) -> str:
    """A short tick label, with enough significant digits to tell ticks ``span`` apart."""
    if v == 0:
        return "0"
    digits = 3
    if span is not None and span > 0 and abs(v) > 0:
        digits = int(min(8, max(3, np.ceil(np.log10(abs(v) / span)) + 2)))
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def colorbar(cmap: str, vmin: float, vmax: float, height: int, label: str = "", width: int = 96, k: float = 1.0) -> np.ndarray:
    """A vertical colour bar ``(height, width·k, 3)``: min / mid / max ticks, the caption written upwards beside it.

    ``k`` scales the bar and its text, for images that the page shows shrunk (wide photos), so ticks stay readable.
    """
    height = max(60, int(height))
    s = lambda v: int(round(v * k))  # noqa: E731
    bar = np.full((height, s(width), 3), 255, np.uint8)
    top, bottom = s(10), height - s(10)
    ramp = np.linspace(1.0, 0.0, max(2, bottom - top))[:, None]
    strip = colorize(ramp, cmap, 0.0, 1.0)  # (n, 1, 3)
    x0 = s(18) if label else s(4)
    bar[top:bottom, x0 : x0 + s(14)] = cv2.resize(strip, (s(14), bottom - top), interpolation=cv2.INTER_NEAREST)
    cv2.rectangle(bar, (x0, top), (x0 + s(14) - 1, bottom - 1), (60, 60, 60), max(1, s(1)))
    for frac in (0.0, 0.5, 1.0):
        y = int(round(bottom - 1 - frac * (bottom - top - 1)))
        cv2.line(bar, (x0 + s(14), y), (x0 + s(18), y), (60, 60, 60), max(1, s(1)))
        _text(bar, fmt_value(vmin + frac * (vmax - vmin), (vmax - vmin) / 2), (x0 + s(20), min(height - 2, max(s(9), y + s(4)))), 0.36 * k,
              thick=max(1, s(1)))
    if label:  # written along the bar, bottom to top
        side = np.full((s(16), height, 3), 255, np.uint8)
        scale = 0.36 * k
        while scale > 0.2 and cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > height - 8:
            scale -= 0.02
        _text(side, label, (4, s(11)), scale, (80, 80, 80))
        bar[:, : s(16)] = np.rot90(side)[:height, : s(16)]
    return bar


READABLE_WIDTH = 420  # overlays wider than this are shown shrunk: their colour bar is drawn larger in proportion


def with_colorbar(image: np.ndarray, cmap: str, vmin: float, vmax: float, label: str = "") -> np.ndarray:
    """The image with a colour bar (its value range and meaning) attached on the right; the bar's text grows with wide images."""
    bar = colorbar(cmap, vmin, vmax, image.shape[0], label, k=max(1.0, image.shape[1] / READABLE_WIDTH))
    if bar.shape[0] != image.shape[0]:  # tiny images: the bar is drawn at its minimum height, then shrunk
        bar = cv2.resize(bar, (bar.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)
    return np.concatenate([image, np.full((image.shape[0], 4, 3), 255, np.uint8), bar], axis=1)


def caption(image: np.ndarray, text: str, height: int = 18) -> np.ndarray:
    """The image with a one-line caption strip above it (e.g. a threshold that was applied)."""
    strip = np.full((height, image.shape[1], 3), 255, np.uint8)
    _text(strip, text, (4, height - 5), 0.4)
    return np.concatenate([strip, image], axis=0)
