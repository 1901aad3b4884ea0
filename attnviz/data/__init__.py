"""Offline scene data: Fashion-MNIST items on natural photos, with box and mask ground truth."""

from .fashion import CLASSES, DatasetMissing, load_split
from .scenes import (
    MEAN,
    STD,
    SceneBatch,
    SceneConfig,
    SceneGenerator,
    centre_in_box,
    normalize,
)

__all__ = ["CLASSES", "DatasetMissing", "MEAN", "STD", "SceneBatch", "SceneConfig", "SceneGenerator", "centre_in_box", "load_split", "normalize"]
