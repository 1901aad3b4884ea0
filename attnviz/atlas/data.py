"""What an atlas runs over: an image folder (class sub-folders give labels, as torchvision's ImageFolder), optional
per-pixel label maps with the images' stems, or generated scenes with their truth. Shards are fixed runs of
``batch_size`` items in sorted order, so every engine and every resumed run sees the same batches.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.nn import functional as F

from ..analysis.images import ImageError, load_image
from ..models.inputs import preprocess

IGNORE = 255  # label-map value that counts as neither object nor background (VOC's boundary)
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif", ".pgm")


class AtlasError(ValueError):
    """An atlas that cannot run as asked; the message names the file or option and what to do."""


@dataclass(frozen=True)
class Item:
    """One input: a file (``path``) or a generated scene (``path`` = ``scene:FAMILY:SHARD:INDEX``); ``label`` −1 = none."""

    path: str
    label: int = -1
    mask: str | None = None


@dataclass
class Source:
    """The items of a run and how to read them.

    Attributes:
        items: Every item, in the run's order.
        classes: Label names (folder names, or the scene classes); empty when there are no labels.
        skipped: Files left out before the run (not images by name), each ``{"path", "reason"}``.
        description: What the data is, for ``atlas.json``.
        scenes: For generated scenes: ``{"families", "seed", "task", "size"}``.
        decoder: ``decoder(items, shard) -> Decoded``: how a caller's own source makes a shard (``attnviz evaluate``'s
            seeded scene chunks); must be picklable for worker processes and Ray.
    """

    items: list[Item]
    classes: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    description: str = ""
    scenes: dict[str, object] | None = None
    decoder: Callable[[list[Item], int], Decoded] | None = None

    def shards(self, batch_size: int) -> list[list[Item]]:
        """The items in fixed runs of ``batch_size``."""
        return [self.items[i : i + batch_size] for i in range(0, len(self.items), batch_size)]


def _find_mask(masks: Path, stem: str) -> Path | None:
    for suffix in MASK_SUFFIXES:
        p = masks / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def scan_folder(data: str | os.PathLike[str], masks: str | os.PathLike[str] | None = None) -> Source:
    """The image files under ``data``: with sub-folders, each sub-folder is a class (files at the top have no label).

    Raises:
        AtlasError: The folder is missing or holds no files.
    """
    root = Path(data)
    if not root.is_dir():
        raise AtlasError(f"--data {data}: no such folder")
    mroot = Path(masks) if masks else None
    if mroot is not None and not mroot.is_dir():
        raise AtlasError(f"--masks {masks}: no such folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise AtlasError(f"--data {data} is empty: put images in it (class sub-folders give labels)")
    items: list[Item] = []
    skipped: list[dict[str, str]] = []
    for p in files:
        rel = p.relative_to(root).parts
        label = classes.index(rel[0]) if len(rel) > 1 and rel[0] in classes else -1
        mask = _find_mask(mroot, p.stem) if mroot is not None else None
        if mroot is not None and mask is None:
            skipped.append({"path": str(p), "reason": f"no label map named {p.stem}.png in {mroot}"})
            continue
        items.append(Item(str(p), label, str(mask) if mask else None))
    return Source(items, classes if any(i.label >= 0 for i in items) else [], skipped, f"image folder {root}")


def scene_source(n: int, families: list[str] | None = None, task: str = "classification", seed: int = 0, size: int | None = None) -> Source:
    """``n`` generated test scenes (t10k items) over ``families`` (default: all), with their classes and label maps."""
    from ..data import CLASSES, FAMILIES  # noqa: PLC0415

    families = list(families or FAMILIES)
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise AtlasError(f"unknown scene families {bad}; choose from {', '.join(FAMILIES)}")
    if n <= 0:
        raise AtlasError("--scenes must be at least 1")
    items = [Item(f"scene:{i}") for i in range(n)]
    return Source(items, list(CLASSES), [], f"{n} generated test scenes ({', '.join(families)})",
                  {"families": list(families), "seed": seed, "task": task, "size": size})


@dataclass
class Decoded:
    """One shard, decoded and preprocessed (done in a worker process).

    Attributes:
        x: ``(B, 3, h, w)`` model input (normalised).
        labels: ``(B,)`` image labels (−1 = none).
        masks: ``(B, h, w)`` long label maps at the input size (nearest), or None.
        paths: The items' paths.
        skipped: Items that could not be read, each ``{"path", "reason"}``.
        extra: What a caller's decoder adds for its own scorer (e.g. the scenes' boxes).
    """

    x: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    paths: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def read_mask(path: str, size: tuple[int, int], image: str) -> np.ndarray:
    """A label map ``(H, W)`` int64 (palette indices or grey values); its size must be the image's ``size`` (W, H)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "1"):
                raise AtlasError(f"{path}: a label map has one channel (palette or grey values), not {im.mode}")
            if im.size != size:
                raise AtlasError(f"{path}: label map is {im.size[0]}×{im.size[1]} but its image {image} is {size[0]}×{size[1]}")
            return np.asarray(im, dtype=np.int64)
    except (UnidentifiedImageError, OSError) as e:
        raise AtlasError(f"{path}: not a readable label map ({e})") from None


def decode_files(items: list[Item], card: dict[str, object]) -> Decoded:
    """Read, orient, convert and resize a shard of files; unreadable ones are skipped with the reason."""
    h, w = (int(v) for v in card["input_size"])  # type: ignore[union-attr]
    rgbs, labels, masks, paths, skipped = [], [], [], [], []
    for it in items:
        try:
            img = load_image(it.path)
        except (ImageError, OSError) as e:
            skipped.append({"path": it.path, "reason": str(e)})
            continue
        if it.mask is not None:
            m = torch.from_numpy(read_mask(it.mask, img.original_size, it.path))
            if m.shape != img.rgb.shape[:2]:  # the image was downscaled or turned upright when read: follow it
                m = F.interpolate(m[None, None].float(), size=img.rgb.shape[:2], mode="nearest")[0, 0].long()
            masks.append(F.interpolate(m[None, None].float(), size=(h, w), mode="nearest")[0, 0].long())
        rgbs.append(img.rgb)
        labels.append(it.label)
        paths.append(it.path)
    x = preprocess(rgbs, card, torch.device("cpu")) if rgbs else torch.zeros(0, 3, h, w)  # type: ignore[arg-type]
    return Decoded(x, torch.tensor(labels, dtype=torch.long), torch.stack(masks) if masks else None, paths, skipped)


def decode_scenes(items: list[Item], shard: int, scenes: dict[str, object], card: dict[str, object]) -> Decoded:
    """Generate a shard of scenes (seeded by the run's seed and the shard's index)."""
    from ..data import SceneConfig, SceneGenerator  # noqa: PLC0415

    size = int(scenes.get("size") or card["input_size"][0])  # type: ignore[index]
    seg = scenes.get("task") == "segmentation"
    cfg = SceneConfig(size=size, items=(1, 6) if seg else (1, 1), families=tuple(scenes["families"]), photos="heldout")  # type: ignore[arg-type]
    batch = SceneGenerator("test", cfg).generate(len(items), seed=int(scenes.get("seed", 0)) * 1_000_003 + shard)  # type: ignore[arg-type]
    rgb = [(batch.images[i].permute(1, 2, 0) * 255).round().byte().numpy() for i in range(len(items))]
    x = preprocess(rgb, card, torch.device("cpu"))
    h, w = x.shape[-2:]
    masks = F.interpolate(batch.label_map[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    return Decoded(x, batch.labels.long(), masks, [it.path for it in items])


def seed_of(path: str, layer: str, seed: int = 0) -> int:
    """The random seed of one image and layer: the same in every engine, batch and worker."""
    return zlib.crc32(f"{seed}|{path}|{layer}".encode())
