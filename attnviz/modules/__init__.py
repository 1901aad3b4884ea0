"""Attention modules, one file per family, and the ``create_attn`` factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .cbam import CBAM, ChannelGate, SpatialGate
from .ccnet import CrissCrossAttention, RecurrentCrissCross, criss_cross_logits
from .conv import ConvBNAct
from .danet import ChannelAttention, DualAttention, PositionAttention
from .eca import EfficientChannelAttn
from .gc import GlobalContext
from .non_local import NonLocal2d
from .ocr import ObjectAttention, ObjectContext, SpatialGather
from .scse import SCSE, SpatialSE
from .se import SqueezeExcite
from .sk import SelectiveKernel
from .stn import AffineHead, SpatialTransformer

_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "se": SqueezeExcite,
    "eca": EfficientChannelAttn,
    "cbam": CBAM,
    "scse": SCSE,
    "gc": GlobalContext,
    "sk": SelectiveKernel,
    "nonlocal": NonLocal2d,
    "nonlocal_dot": lambda channels, **kw: NonLocal2d(channels, mode="dot_product", **kw),
    "ccnet": RecurrentCrissCross,
    "danet": DualAttention,
    "pam": PositionAttention,
    "stn": SpatialTransformer,
}


def attn_names() -> list[str]:
    """Names accepted by :func:`create_attn`."""
    return sorted(_FACTORIES)


def create_attn(name: str, channels: int, **kwargs: Any) -> nn.Module:
    """Build an attention module by name.

    Args:
        name: One of :func:`attn_names` (case-insensitive).
        channels: Input channels C of the feature map the module sees.
        **kwargs: Passed to the module's constructor.

    Raises:
        ValueError: ``name`` is unknown; the message lists the valid names.
    """
    key = name.lower()
    if key not in _FACTORIES:
        raise ValueError(f"unknown attention {name!r}; valid names: {', '.join(attn_names())}")
    return _FACTORIES[key](channels, **kwargs)


__all__ = [
    "AffineHead", "CBAM", "ChannelAttention", "ChannelGate", "ConvBNAct", "CrissCrossAttention", "DualAttention",
    "EfficientChannelAttn", "GlobalContext", "NonLocal2d", "ObjectAttention", "ObjectContext", "PositionAttention", "RecurrentCrissCross",
    "SCSE", "SelectiveKernel", "SpatialGate", "SpatialGather", "SpatialSE", "SpatialTransformer", "SqueezeExcite",
    "attn_names", "create_attn", "criss_cross_logits",
]
