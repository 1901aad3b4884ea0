"""Offline scene data: Fashion-MNIST items on domain-randomised backgrounds, with per-pixel ground truth."""

from .backgrounds import (
    FAMILIES,
    HELDOUT_FAMILIES,
    HELDOUT_PHOTOS,
    TRAIN_FAMILIES,
    TRAIN_PHOTOS,
)
from .fashion import CLASSES, DatasetMissing, load_split
from .scenes import (
    MEAN,
    STD,
    SceneBatch,
    SceneConfig,
    SceneGenerator,
    boxes_of,
    centre_in_box,
    normalize,
)

__all__ = [
    "CLASSES", "DatasetMissing", "FAMILIES", "HELDOUT_FAMILIES", "HELDOUT_PHOTOS", "MEAN", "STD", "SceneBatch", "SceneConfig",
    "SceneGenerator", "TRAIN_FAMILIES", "TRAIN_PHOTOS", "boxes_of", "centre_in_box", "load_split", "normalize",
]
