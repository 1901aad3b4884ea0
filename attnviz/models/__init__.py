"""Models: the attnviz zoo and the registry of loadable models."""

from .registry import (
    ChecksumMismatch,
    ModelInfo,
    WeightsUnavailable,
    available,
    build_imagenet,
    imagenet_classes,
    load_pretrained,
)
from .seg_zoo import SEG_CLASSES, SEG_ZOO, build_seg
from .zoo import ZOO, ZooNet, build

__all__ = [
    "ChecksumMismatch", "ModelInfo", "SEG_CLASSES", "SEG_ZOO", "WeightsUnavailable", "ZOO", "ZooNet", "available", "build",
    "build_imagenet", "build_seg",
    "imagenet_classes", "load_pretrained",
]
