"""Background photos and textures bundled with scikit-image (no download)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch.nn import functional as F

PHOTOS = (
    "astronaut", "brick", "camera", "cat", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
    "immunohistochemistry", "moon", "rocket", "retina", "stereo_motorcycle", "clock", "text", "page",
)


def _load(name: str) -> np.ndarray:
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3].astype(np.uint8)


@functools.lru_cache(maxsize=4)
def background_pool(side: int = 128) -> torch.Tensor:
    """Every bundled photo, centre-cropped square and resized: ``(P, 3, side, side)`` float in [0, 1]."""
    out = []
    for name in PHOTOS:
        img = torch.from_numpy(_load(name)).permute(2, 0, 1).float() / 255  # (3, H, W)
        h, w = img.shape[1:]
        s = min(h, w)
        img = img[:, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        out.append(F.interpolate(img[None], size=(side, side), mode="area")[0])
    return torch.stack(out)
