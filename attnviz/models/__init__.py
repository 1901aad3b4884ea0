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
from .zoo import ZOO, ZooNet, build

__all__ = [
    "ChecksumMismatch", "ModelInfo", "WeightsUnavailable", "ZOO", "ZooNet", "available", "build", "build_imagenet",
    "imagenet_classes", "load_pretrained",
]
