"""Model input conventions: a card's preprocessing (size, mean, std) applied to RGB images."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pick_device(name: str | None = None) -> torch.device:
    """``name``, else ``$ATTNVIZ_DEVICE``, else CUDA when present, else CPU."""
    name = name or os.environ.get("ATTNVIZ_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def card_of(model: nn.Module) -> dict[str, Any]:
    """The model card, or defaults for a user model without one (ImageNet preprocessing, 224²)."""
    card = dict(getattr(model, "card", None) or {})
    card.setdefault("input_size", [224, 224])
    card.setdefault("mean", list(IMAGENET_MEAN))
    card.setdefault("std", list(IMAGENET_STD))
    return card


def preprocess(rgb: np.ndarray | list[np.ndarray], card: dict[str, Any], device: torch.device) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` (or a list of them) → normalised model input ``(B, 3, h, w)``.

    Images are resized (bilinear, antialiased) to the card's input size.
    """
    frames = rgb if isinstance(rgb, list) else [rgb]
    h, w = (int(v) for v in card["input_size"])
    xs = []
    for f in frames:
        x = torch.from_numpy(np.array(f, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div(255)[None]  # (1, 3, H, W)
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        xs.append(x)
    x = torch.cat(xs)
    mean = torch.tensor(card["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(card["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device)
