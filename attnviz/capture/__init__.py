"""Capture: the hook manager, record types, adapters and generic discovery."""

from .adapters import AdapterSpec, find_adapter, known_classes, register_adapter
from .manager import Capture, capture, contribution, unwrap
from .records import (
    Affinity,
    BranchWeights,
    ChannelAffinity,
    ChannelGate,
    CrissCross,
    Record,
    RegionAttention,
    SamplingGrid,
    SpatialMask,
    TokenAttention,
)

__all__ = [
    "AdapterSpec", "Affinity", "BranchWeights", "Capture", "ChannelAffinity", "ChannelGate", "CrissCross",
    "Record", "RegionAttention", "SamplingGrid", "SpatialMask", "TokenAttention", "capture", "contribution", "find_adapter", "known_classes",
    "register_adapter", "unwrap",
]
