"""Segmentation drawing: label maps through a palette, blended over images, with a legend."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def default_palette(n: int) -> np.ndarray:
    """``(n, 3) uint8`` distinct colours; class 0 (background) is dark grey."""
    out = np.zeros((n, 3), np.uint8)
    out[0] = (40, 40, 40)
    for i in range(1, n):  # golden-ratio hues, alternating brightness
        h = int((i * 0.618033988749895 % 1.0) * 179)
        v = 255 if i % 2 else 200
        hsv = np.uint8([[[h, 200, v]]])
        out[i] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return out


def colorize_labels(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """A label map ``(H, W)`` as RGB through ``palette (K, 3)``; labels outside the palette are black."""
    pal = np.concatenate([np.asarray(palette, np.uint8), np.zeros((1, 3), np.uint8)])
    idx = np.clip(np.asarray(labels), -1, len(pal) - 2)
    idx = np.where(idx < 0, len(pal) - 1, idx)
    return pal[idx]


def label_overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5, edges: bool = True) -> np.ndarray:
    """Segmentation blended over the image (labels at image size), with class boundaries drawn."""
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} must match the image {image.shape[:2]}")
    colour = colorize_labels(labels, palette)
    out = cv2.addWeighted(image.astype(np.uint8), 1 - alpha, colour, alpha, 0)
    if edges:
        lab = labels.astype(np.int32)
        edge = np.zeros(lab.shape, bool)
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        out[edge] = (255, 255, 255)
    return out


def legend(labels: np.ndarray, names: Sequence[str]) -> list[dict[str, object]]:
    """Classes present in a label map, largest first: ``{"index", "name", "area"}`` (area share in [0, 1])."""
    counts = np.bincount(np.asarray(labels).ravel().clip(0), minlength=len(names))
    total = max(1, int(counts.sum()))
    rows = [{"index": int(i), "name": names[i] if i < len(names) else f"class {i}", "area": float(c) / total}
            for i, c in enumerate(counts) if c > 0]
    return sorted(rows, key=lambda r: -float(r["area"]))  # type: ignore[arg-type]
