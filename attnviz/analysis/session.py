"""The analysis session: the catalogue, the cache, and one captured forward per (model, upload) → :class:`Analysis`.

Task-aware (classification or segmentation, inferred from the model's output) and free of Gradio. The views
of an analysis live in :mod:`attnviz.analysis.views` (one module per view family); the web app, the HTTP
API, the CLI and the video pipeline all call these two instead of re-implementing them. Coordinates are
always in the image's own pixels (the image as loaded, at most :data:`~attnviz.analysis.images.MAX_SIDE`);
tiny images are *drawn* enlarged (``display_scale``), never re-addressed. The cache key is the sha256 of
the uploaded bytes plus the model name, never the decoded pixels.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import render
from ..capture import capture
from ..capture.records import Record
from ..models.inputs import card_of, preprocess
from .catalog import Catalog
from .errors import UserError
from .images import ImageError, LoadedImage, array_digest, file_digest, load_image
from .outputs import OutputError, interpret_output, logits_at, resized_labels

DISPLAY_MIN = 384  # tiny images (zoo scenes are 64×64) are drawn enlarged, pixel-exact, to at least this


@dataclass
class Analysis:
    """The cached result of one forward pass of one model on one upload.

    Attributes:
        key: Cache key (upload digest + model).
        model_name: The model.
        task: ``"classification"``, ``"segmentation"`` or ``"features"`` (a backbone without classes).
        image: ``(H, W, 3) uint8`` the image as loaded; every coordinate refers to its pixels.
        x: ``(1, 3, h, w)`` the model input.
        logits: ``(K,)`` or ``(K, h', w')`` (segmentation, at the model's output resolution).
        records: The captured records, in forward order.
        class_names: Class names (index 0 is the background for our segmentation models).
        palette: ``(K, 3) uint8`` class colours (segmentation).
        notes: What was done to the upload and what the user should know.
        source_size: (W, H) of the upload as stored.
        source_mode: PIL mode of the upload.
        forward_ms: Time of the captured forward.
        device: Where it ran.
        trained_on: What the model was trained on (shown beside its results).
        seen: Attention-like ops that were seen but not drawn, each with the reason ("seen, not drawn").
    """

    key: str
    model_name: str
    task: str
    image: np.ndarray
    x: torch.Tensor
    logits: torch.Tensor
    records: dict[str, Record]
    class_names: list[str]
    palette: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    source_size: tuple[int, int] = (0, 0)
    source_mode: str = ""
    forward_ms: float = 0.0
    device: str = "cpu"
    trained_on: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)
    _labels: np.ndarray | None = None
    _qd: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def hw(self) -> tuple[int, int]:
        """Image size (H, W): the coordinate frame of every click."""
        return self.image.shape[0], self.image.shape[1]

    @property
    def display_scale(self) -> int:
        """Integer enlargement used when drawing (tiny images only)."""
        side = max(self.hw)
        return int(np.ceil(DISPLAY_MIN / side)) if side < DISPLAY_MIN else 1

    def display_image(self) -> np.ndarray:
        """The image as drawn: enlarged pixel-exact when tiny."""
        k = self.display_scale
        return self.image if k == 1 else np.repeat(np.repeat(self.image, k, axis=0), k, axis=1)

    def label(self, i: int) -> str:
        """Class name of index ``i``."""
        return self.class_names[i] if 0 <= i < len(self.class_names) else f"class {i}"

    def top(self, k: int = 5) -> dict[str, float]:
        """Classification: top-k labels and probabilities. Segmentation: classes by predicted area. A backbone: none."""
        if self.task == "features":
            return {}
        if self.task == "segmentation":
            return {r["name"]: round(float(r["area"]), 4) for r in self.legend()[:k]}  # type: ignore[index]
        p = self.logits.softmax(0)
        vals, idx = p.topk(min(k, p.numel()))
        return {self.label(int(i)): float(v) for v, i in zip(vals, idx)}

    def labels(self) -> np.ndarray:
        """Segmentation: predicted class per image pixel ``(H, W)`` (logits resized bilinearly, then argmax)."""
        if self._labels is None:
            self._labels = resized_labels(self.logits, self.hw).numpy().astype(np.int32)
        return self._labels

    def probs_at(self, x: float, y: float, k: int = 3) -> list[tuple[str, float]]:
        """Segmentation: top-k class probabilities at image pixel (x, y)."""
        lg = logits_at(self.logits, self.hw, torch.tensor([int(y)]), torch.tensor([int(x)]))[0]
        p = lg.softmax(0)
        vals, idx = p.topk(min(k, p.numel()))
        return [(self.label(int(i)), float(v)) for v, i in zip(vals, idx)]

    def legend(self) -> list[dict[str, object]]:
        """Segmentation: classes present in the prediction, largest first (name, area share, colour)."""
        rows = render.legend(self.labels(), self.class_names)
        pal = self.palette if self.palette is not None else render.default_palette(max(len(self.class_names), 2))
        for r in rows:
            r["colour"] = "#" + "".join(f"{int(c):02x}" for c in pal[int(r["index"]) % len(pal)])
        return rows

    def of(self, cls: type[Record]) -> list[Record]:
        """Records of one type, in forward order."""
        return [r for r in self.records.values() if isinstance(r, cls)]


@dataclass
class Style:
    """Display controls: colormap, opacity, shared colour scale, and a threshold that hides weak weights."""

    cmap: str = "inferno"
    alpha: float = 0.55
    shared: bool = False
    threshold: float = 0.0  # fraction of the map's maximum below which weights are not drawn

    def check(self) -> Style:
        if self.cmap not in render.CMAPS:
            raise UserError(f"cmap must be one of {', '.join(render.CMAPS)}; got {self.cmap!r}.")
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha <= 1):
            raise UserError(f"alpha (opacity) must lie between 0 and 1; got {self.alpha!r}.")
        if not (isinstance(self.threshold, (int, float)) and 0 <= self.threshold < 1):
            raise UserError(f"threshold must lie in [0, 1) (a fraction of the map's maximum); got {self.threshold!r}.")
        return self


class Engine:
    """Analyses uploads with the catalogue's models and renders every view.

    Args:
        catalog: The models.
        max_entries: Cached analyses kept (LRU), across all sessions.
        ttl: Seconds an unused analysis is kept.
        max_image_bytes: Decoded uploads kept for reuse (the image is decoded once per upload).
    """

    def __init__(self, catalog: Catalog, max_entries: int = 16, ttl: float = 1800.0, max_image_bytes: int = 256 * 2**20) -> None:
        self.catalog = catalog
        self.max_entries = max_entries
        self.ttl = ttl
        self.max_image_bytes = max_image_bytes
        self._cache: OrderedDict[str, Analysis] = OrderedDict()
        self._images: OrderedDict[str, LoadedImage] = OrderedDict()
        self._lock = threading.Lock()
        self._model_locks: dict[str, threading.Lock] = {}
        self._key_locks: dict[str, threading.Lock] = {}
        self.cam_layers: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()  # Grad-CAM layer per loaded model

    def model_lock(self, model_name: str) -> threading.Lock:
        """The lock that serialises runs of one model (hooks and in-place state are per model)."""
        with self._lock:
            return self._model_locks.setdefault(model_name, threading.Lock())

    # ---------------------------------------------------------------- images and cache
    def _evict(self) -> None:
        now = time.monotonic()
        for k in [k for k, a in self._cache.items() if now - a.last_used > self.ttl]:
            del self._cache[k]
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        total = sum(i.rgb.nbytes for i in self._images.values())
        while self._images and total > self.max_image_bytes:
            total -= self._images.popitem(last=False)[1].rgb.nbytes

    def cached(self) -> int:
        """Number of analyses held."""
        return len(self._cache)

    def load(self, source: Any) -> LoadedImage:
        """Decode an upload once: later calls with the same file (same bytes) reuse the decoded image."""
        try:
            if isinstance(source, np.ndarray):
                digest = array_digest(source)
            elif isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
                path = os.fspath(source)
                digest = file_digest(path) if os.path.isfile(path) else ""
            else:
                digest = ""
            if digest:
                with self._lock:
                    hit = self._images.get(digest)
                    if hit is not None:
                        self._images.move_to_end(digest)
                        return hit
            img = load_image(source)
        except (ImageError, OSError) as e:
            raise UserError(str(e)) from None
        if img.digest:
            with self._lock:
                self._images[img.digest] = img
                self._evict()
        return img

    def analyze(self, source: Any, model_name: str, progress: Any = None) -> Analysis:
        """Load the upload, run the model once with capture on, and cache the result.

        Args:
            source: A file path or an image array.
            model_name: A catalogue name.
            progress: ``progress(done, total)`` for a model whose weights are downloaded first.
        """
        entry = self.catalog.entry(model_name)
        model_name = entry.name  # aliases share the cache and the lock of the entry they name
        img = self.load(source)
        key = f"{img.digest}:{model_name}"
        with self._lock:
            self._evict()
            hit = self._cache.get(key)
            if hit is not None:
                hit.last_used = time.monotonic()
                self._cache.move_to_end(key)
                return hit
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # concurrent requests for the same upload and model run the model once
            with self._lock:
                hit = self._cache.get(key)
            if hit is not None:
                return hit
            a = self._run(img, model_name, entry, key, progress)
            with self._lock:
                self._cache[key] = a
                self._key_locks.pop(key, None)
                self._evict()
            return a


    def _run(self, img: LoadedImage, model_name: str, entry: Any, key: str, progress: Any = None) -> Analysis:
        model = self.catalog.get(model_name, progress)
        card = card_of(model)
        device = self.catalog.device
        x = preprocess(img.rgb, card, device)
        lock = self.model_lock(model_name)
        try:
            with lock, torch.inference_mode(), capture(model) as cap:
                t0 = time.perf_counter()
                raw = model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) * 1000
        except Exception as e:
            raise UserError(f"{model_name} failed on this image: {type(e).__name__}: {e}") from e
        try:
            out = interpret_output(raw, entry.postprocess, features=card.get("task") == "features")
        except OutputError as e:
            raise UserError(f"{model_name}: {e}") from None
        names = list(card.get("class_names") or [])
        notes = list(img.notes)
        h, w = (int(v) for v in card["input_size"])
        if (img.rgb.shape[0], img.rgb.shape[1]) != (h, w):
            notes.append(f"resized to the model's {w}×{h} input (aspect ratio not kept)")
        seen = cap.seen_not_drawn()
        if not cap.records:
            notes.append(f"{model_name} has no attention map attnviz can draw exactly; only the prediction is shown"
                         + (f" ({len(seen)} attention-like ops seen, not drawn: see Modules)." if seen else "."))
        trained_on = entry.trained_on or str(card.get("trained_on", ""))
        palette = np.asarray(card["palette"], np.uint8) if card.get("palette") is not None else None
        logits = out.logits[0].detach().float().cpu()
        if out.task == "segmentation" and palette is None:
            palette = render.default_palette(max(2, logits.shape[0]))
        return Analysis(key, model_name, out.task, img.rgb, x.detach().clone(), logits, dict(cap.records), names, palette, notes,
                        img.original_size, img.mode, ms, str(device), trained_on, seen)

    # ---------------------------------------------------------------- summaries
