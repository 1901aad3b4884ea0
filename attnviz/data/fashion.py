"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (IDX files, read offline)."""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "ATTNVIZ_FASHION_MNIST"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetMissing(FileNotFoundError):
    """Fashion-MNIST is not installed where we look."""


def data_dir() -> Path:
    """Folder of the IDX files: ``$ATTNVIZ_FASHION_MNIST`` or Debian's location."""
    return Path(os.environ.get(ENV_VAR, DEFAULT_DIR))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: {arr.size} values for shape {dims}")
    return arr.reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).exists():
            return folder / name
    raise DatasetMissing(
        f"Fashion-MNIST file {stem}(.gz) not found in {folder}. Install it with "
        f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or point ${ENV_VAR} at a folder with the IDX files."
    )


@functools.lru_cache(maxsize=2)
def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` of ``"train"`` (60k) or ``"test"`` (t10k, 10k)."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = data_dir()
    images, labels = (_read_idx(_find(folder, stem)) for stem in _FILES[split])
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels
