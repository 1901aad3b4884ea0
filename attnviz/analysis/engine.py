"""The analysis layer: one forward per (model, upload), cached; every view of it as arrays, Figures or text.

Task-aware (classification or segmentation, inferred from the model's output) and free of Gradio: the
web app, the HTTP API, the CLI and the video pipeline all call this module. Coordinates are always in
the image's own pixels (the image as loaded, at most :data:`~attnviz.analysis.images.MAX_SIDE`); tiny
images are *drawn* enlarged (``display_scale``), never re-addressed. The cache key is the sha256 of the
uploaded bytes plus the model name, never the decoded pixels.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.nn import functional as F

from .. import render
from ..capture import capture
from ..capture.records import (
    BranchWeights,
    ChannelAffinity,
    ChannelGate,
    CrissCross,
    Record,
    RegionAttention,
    SamplingGrid,
    SpatialMask,
)
from ..maps import (
    ClickLayer,
    ablate,
    click_layers,
    click_map,
    feature_cell,
    grad_cam,
    integrated_gradients,
    occlusion,
    query_dependence,
    same_class_mass,
    sampled_quad,
    spearman,
    top_share,
    topk_iou,
    uniform_reach,
)
from ..maps.geometry import normalized_to_pixels
from ..models.inputs import card_of, preprocess
from .catalog import Catalog
from .errors import UserError
from .images import ImageError, LoadedImage, load_image
from .outputs import OutputError, interpret_output, logits_at, resized_labels

DISPLAY_MIN = 384  # tiny images (zoo scenes are 64×64) are drawn enlarged, pixel-exact, to at least this
NEAR_IDENTITY = 0.01  # contribution below which a block "barely changes its input"
VIEW_MEANING = {
    "row": "attention weight of the clicked query over every key position; the row sums to 1",
    "loop1": "CCNet loop-1 weight, non-zero only on the query's row and column; sums to 1",
    "loop2": "CCNet loop-2 weight, non-zero only on the query's row and column; sums to 1",
    "reach": "two-hop reach Σ_u A2(p,u)·A1(u,q): where the pixel's information can come from after both loops; sums to 1",
    "regions": "the query's attention carried onto the image through the soft object regions: Σ_k p(k|pixel)·region_k; sums to 1",
}
VIEW_UNIT = {"row": "attention weight", "loop1": "loop-1 weight", "loop2": "loop-2 weight", "reach": "two-hop reach", "regions": "region-weighted attention"}


@dataclass
class Analysis:
    """The cached result of one forward pass of one model on one upload.

    Attributes:
        key: Cache key (upload digest + model).
        model_name: The model.
        task: ``"classification"`` or ``"segmentation"``.
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
        """Classification: top-k labels and probabilities. Segmentation: classes by predicted area."""
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
            r["colour"] = "#%02x%02x%02x" % tuple(int(c) for c in pal[int(r["index"]) % len(pal)])  # type: ignore[call-overload]
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
        self._cam_layers: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()

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
        from .images import array_digest, file_digest

        try:
            if isinstance(source, np.ndarray):
                digest = array_digest(source)
            elif isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
                import os

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
            out = interpret_output(raw, entry.postprocess)
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
    @staticmethod
    def modules_table(a: Analysis) -> list[list[Any]]:
        """Rows: layer, kind, module, source, shape, contribution, note."""
        rows = []
        for name, r in a.records.items():
            c = None if r.contribution is None else float(r.contribution[0])
            note = ""
            if c is not None and c < NEAR_IDENTITY:
                note = (f"barely changes its input (‖out−x‖/‖x‖ = {c:.4f}): γ≈0, a zero-initialised last layer "
                        "or a gate ≈ 1 — its maps are real but have almost no effect on the output")
            main = [v for k, v in r.arrays().items() if k != "contribution"]
            shape = "×".join(str(s) for s in main[0].shape[1:]) if main else ""
            rows.append([name, r.kind, r.module_type, r.source, shape, None if c is None else round(c, 4), note])
        for s in a.seen:
            rows.append([s["module"] or "(model)", "seen, not drawn", s["op"], "provenance", "×".join(map(str, s["shape"][1:])), None, s["reason"]])
        return rows

    def summary(self, a: Analysis) -> dict[str, Any]:
        """JSON-able description of an analysis (what the API's ``analyze`` returns)."""
        kinds: dict[str, int] = {}
        for r in a.records.values():
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        out: dict[str, Any] = {
            "model": a.model_name, "task": a.task, "image_size": [a.hw[1], a.hw[0]], "source_size": list(a.source_size),
            "source_mode": a.source_mode, "model_input_size": [int(a.x.shape[-1]), int(a.x.shape[-2])], "device": a.device,
            "forward_ms": round(a.forward_ms, 2), "notes": a.notes, "trained_on": a.trained_on,
            "layers": {n: r.kind for n, r in a.records.items()}, "kinds": kinds, "seen_not_drawn": a.seen,
            "click_layers": {n: {"views": list(cl.views), "heads": cl.heads, "feature_hw": list(cl.feature_hw)} for n, cl in click_layers(a.records).items()},
        }
        if a.task == "segmentation":
            out["classes_present"] = [{"name": r["name"], "area": round(float(r["area"]), 4), "colour": r["colour"]} for r in a.legend()]  # type: ignore[arg-type]
        else:
            out["top5"] = a.top(5)
        return out

    def status_line(self, a: Analysis) -> str:
        """One line: device, forward time, input size and how the image was resized."""
        h, w = a.hw
        ih, iw = int(a.x.shape[-2]), int(a.x.shape[-1])
        resize = "not resized" if (h, w) == (ih, iw) else f"resized {w}×{h} → {iw}×{ih}"
        return f"{a.model_name} · {a.task} · {a.device.upper()} · forward {a.forward_ms:.1f} ms · image {w}×{h}, {resize}"

    # ---------------------------------------------------------------- click views
    @staticmethod
    def click_choices(a: Analysis) -> list[str]:
        """Names of query-dependent layers."""
        return list(click_layers(a.records))

    def _layer(self, a: Analysis, layer: str | None) -> ClickLayer:
        layers = click_layers(a.records)
        if not layers:
            raise UserError(f"{a.model_name} has no Non-Local, DANet, BotNet, CCNet or OCR layer, so a click has nothing to show.")
        name = layer or list(layers)[-1]
        if name not in layers:
            raise UserError(f"layer must be one of: {', '.join(layers)}; got {name!r}.")
        return layers[name]

    @staticmethod
    def _point(a: Analysis, x: Any, y: Any) -> tuple[float, float]:
        h, w = a.hw
        try:
            fx, fy = float(x), float(y)
        except (TypeError, ValueError):
            raise UserError(f"x and y must be numbers (image pixels); got x={x!r}, y={y!r}.") from None
        if not (np.isfinite(fx) and np.isfinite(fy)):
            raise UserError(f"x and y must be finite numbers; got x={x!r}, y={y!r}.")
        if not (0 <= fx < w and 0 <= fy < h):
            raise UserError(f"Pixel ({fx:g}, {fy:g}) lies outside the {w}×{h} image: x must be in [0, {w}), y in [0, {h}).")
        return fx, fy

    def click_raw(self, a: Analysis, x: Any, y: Any, layer: str | None = None, view: str | None = None, head: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """The raw map (feature resolution) of the query at image pixel (x, y) and facts about it."""
        fx, fy = self._point(a, x, y)
        cl = self._layer(a, layer)
        view = view or cl.default_view
        if view not in cl.views:
            raise UserError(f"view must be one of {', '.join(cl.views)} for {cl.name}; got {view!r}.")
        if head is not None and not (cl.heads > 1 and 0 <= head < cl.heads):
            raise UserError("head must be 'mean'" + (f" or 0…{cl.heads - 1}" if cl.heads > 1 else f" ({cl.name} has a single head)") + f"; got {head!r}.")
        try:
            m = click_map(cl, fx, fy, a.hw, view=view, head=head).numpy()
        except ValueError as e:
            raise UserError(str(e)) from None
        cy, cx = feature_cell(fx, fy, a.hw, (m.shape[0], m.shape[1]) if view != "regions" else cl.feature_hw)
        peak = int(m.argmax())
        py, px = divmod(peak, m.shape[1])
        sy, sx = a.hw[0] / m.shape[0], a.hw[1] / m.shape[1]
        info: dict[str, Any] = {
            "layer": cl.name, "view": view, "meaning": VIEW_MEANING.get(view, ""), "head": "mean" if head is None else head,
            "x": round(fx, 2), "y": round(fy, 2), "feature_cell": [cy, cx], "feature_hw": list(m.shape),
            "cell_size_px": [round(sx, 2), round(sy, 2)],
            "peak": {"cell": [py, px], "x": round((px + 0.5) * sx, 1), "y": round((py + 0.5) * sy, 1), "value": float(m.max())},
            "min": float(m.min()), "max": float(m.max()), "sum": float(m.sum()),
            "top5pct_share": round(top_share(torch.from_numpy(m), 0.05), 4),
        }
        rec = cl.records[0]
        if isinstance(rec, RegionAttention):
            p = rec.distribution(cy, cx).numpy()
            names = rec.region_names or [a.label(i) for i in range(len(p))]
            order = np.argsort(-p)[:5]
            info["regions"] = [{"region": names[i] if i < len(names) else f"region {i}", "weight": round(float(p[i]), 4)} for i in order]
        if a.task == "segmentation":
            labels = a.labels()
            cls = int(labels[int(fy), int(fx)])
            info["class"] = a.label(cls)
            info["top3"] = [{"class": n, "p": round(p, 4)} for n, p in a.probs_at(fx, fy)]
            up = torch.from_numpy(render.resize_map(m, a.hw))[None]
            lab = torch.from_numpy(labels.astype(np.int64))[None]
            ratio = float(same_class_mass(up, lab, torch.tensor([cls]))[0])
            info["same_class_mass_ratio"] = round(ratio, 3)
            info["same_class_area_share"] = round(float((labels == cls).mean()), 4)
            if view == "reach" and isinstance(rec, CrissCross):
                uni = uniform_reach(rec.hw, cy, cx).numpy()
                info["same_class_mass_ratio_uniform_geometry"] = round(float(same_class_mass(torch.from_numpy(render.resize_map(uni, a.hw))[None], lab, torch.tensor([cls]))[0]), 3)
        return m, info

    def attention_at(self, a: Analysis, x: Any, y: Any, layer: str | None = None, view: str | None = None, head: int | None = None,
                     style: Style | None = None) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
        """Original | overlay (clicked point and peak marked, colour bar attached), its facts, and the raw map.

        Args:
            a: The analysis.
            x: Column in image pixels.
            y: Row in image pixels.
            layer: A click layer (default: the deepest).
            view: ``row`` / ``loop1`` / ``loop2`` / ``reach`` / ``regions`` (default: reach for CCNet).
            head: Head index, or None for the head average.
            style: Display controls (``threshold`` hides weights below that fraction of the maximum).
        """
        style = (style or Style()).check()
        m, info = self.click_raw(a, x, y, layer, view, head)
        img = self.overlay_map(a, m, style, point=(info["x"], info["y"]), peak=(info["peak"]["x"], info["peak"]["y"]), unit=VIEW_UNIT.get(info["view"], "weight"))
        info["text"] = describe_click(a, info)
        return img, info, m

    def overlay_map(self, a: Analysis, m: np.ndarray, style: Style, point: tuple[float, float] | None = None, peak: tuple[float, float] | None = None,
                    unit: str = "weight", side_by_side: bool = True, vrange: tuple[float, float] | None = None) -> np.ndarray:
        """A feature-resolution map drawn over the image: marks, threshold note and colour bar; original beside it."""
        k = a.display_scale
        base = a.display_image()
        shown = np.asarray(m, dtype=np.float32)
        lo, hi = vrange if vrange is not None else (float(shown.min()), float(shown.max()))
        if style.shared and vrange is None:
            lo = 0.0
        if style.threshold > 0:
            shown = np.where(shown >= style.threshold * float(shown.max()), shown, lo)
        over = render.overlay(base, shown, style.cmap, style.alpha, lo, hi)
        if point is not None:
            over = render.draw_point(over, point[0] * k, point[1] * k)
        if peak is not None:
            over = render.draw_peak(over, peak[0] * k, peak[1] * k)
        if style.threshold > 0:
            over = render.caption(over, f"weights below {style.threshold:.0%} of the maximum are not drawn")
            base = render.caption(base, "original")
        out = render.with_colorbar(over, style.cmap, lo, hi, unit)
        if side_by_side:
            out = render.side_by_side([base, out], height=out.shape[0])
        return out

    def click_grid(self, a: Analysis, x: Any, y: Any, style: Style | None = None, max_tiles: int = 24) -> list[tuple[np.ndarray, str]]:
        """Every click layer, every view and every head for the same click (DINO-style), each tile with its own scale."""
        style = (style or Style()).check()
        tiles: list[tuple[np.ndarray, str]] = []
        for name, cl in click_layers(a.records).items():
            for view in cl.views:
                heads: list[int | None] = [None] + (list(range(cl.heads)) if cl.heads > 1 and view == "row" else [])
                for hd in heads:
                    if len(tiles) >= max_tiles:
                        return tiles
                    m, info = self.click_raw(a, x, y, name, view, hd)
                    img = self.overlay_map(a, m, style, point=(info["x"], info["y"]), peak=(info["peak"]["x"], info["peak"]["y"]),
                                           unit=VIEW_UNIT.get(view, "weight"), side_by_side=False)
                    tag = "mean of heads" if hd is None and cl.heads > 1 else ("" if hd is None else f"head {hd}")
                    tiles.append((img, f"{name} · {view}{' · ' + tag if tag else ''} · scale {m.min():.3g}–{m.max():.3g}"))
        return tiles

    def query_dependence(self, a: Analysis, layer: str | None = None, pairs: int = 64, seed: int = 0) -> dict[str, Any]:
        """GCNet's question for one layer: do different queries attend to different places?"""
        cl = self._layer(a, layer)
        if cl.name in a._qd:
            return a._qd[cl.name]
        h, w = cl.feature_hw
        g = torch.Generator().manual_seed(seed)
        q = torch.randint(0, h * w, (pairs, 2), generator=g)
        rows = []
        for i in range(pairs):
            for j in range(2):
                cy, cx = divmod(int(q[i, j]), w)
                px, py = (cx + 0.5) * a.hw[1] / w, (cy + 0.5) * a.hw[0] / h
                rows.append(click_map(cl, px, py, a.hw, view=cl.default_view).flatten())
        r = torch.stack(rows).view(pairs, 2, -1)
        qd = query_dependence(r[:, 0], r[:, 1])
        js, same = qd["js"], qd["same_peak"]
        if js < 0.05 and same > 0.8:
            verdict = "query-independent: every pixel gets nearly the same map (one global context, as GCNet found)"
        elif js < 0.15:
            verdict = "weakly query-dependent: maps differ a little between pixels"
        else:
            verdict = "query-dependent: different pixels attend to different places"
        res = {"layer": cl.name, "view": cl.default_view, "pairs": pairs, "mean_js": round(js, 4), "same_peak_share": round(same, 3),
               "verdict": verdict, "explanation": "mean Jensen–Shannon divergence between the maps of random query pairs "
               "(0 = identical, ln 2 ≈ 0.69 = disjoint), and the share of pairs whose maps peak at the same place"}
        a._qd[cl.name] = res
        return res

    # ---------------------------------------------------------------- segmentation
    def segmentation_view(self, a: Analysis, alpha: float = 0.5) -> tuple[np.ndarray, list[dict[str, object]]]:
        """Predicted segmentation over the image (drawn enlarged for tiny images) and the legend rows."""
        if a.task != "segmentation":
            raise UserError(f"{a.model_name} is a classifier; it has no segmentation to show.")
        if not 0 <= float(alpha) <= 1:
            raise UserError(f"opacity must lie between 0 and 1; got {alpha!r}.")
        k = a.display_scale
        labels = a.labels()
        if k > 1:
            labels = np.repeat(np.repeat(labels, k, axis=0), k, axis=1)
        assert a.palette is not None
        return render.label_overlay(a.display_image(), labels, a.palette, float(alpha)), a.legend()

    def segment_gradcam(self, a: Analysis, x: Any, y: Any, style: Style | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """captum Grad-CAM for the clicked pixel's class, summed over that class's predicted segment."""
        if a.task != "segmentation":
            raise UserError("Grad-CAM over a segment needs a segmentation model.")
        style = (style or Style()).check()
        fx, fy = self._point(a, x, y)
        labels = a.labels()
        cls = int(labels[int(fy), int(fx)])
        model = self.catalog.get(a.model_name)
        entry = self.catalog.entry(a.model_name)
        xin = a.x.clone()
        with torch.no_grad():
            out = interpret_output(model(xin), entry.postprocess).logits
        mask = torch.from_numpy(resized_labels(out[0].float().cpu(), tuple(out.shape[-2:])).numpy() == cls).to(out.device)  # type: ignore[arg-type]

        class Target(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1): the class's logit summed over its segment
                logits = interpret_output(self.model(t), entry.postprocess).logits
                return (logits[:, cls] * mask).sum((1, 2))[:, None]

        with self.model_lock(a.model_name), torch.enable_grad():
            layer = self._cam_layer(a, model, xin)
            cam = grad_cam(Target(), layer, xin, 0)[0].detach().float().cpu().numpy()
        img = self.overlay_map(a, cam, style, point=(fx, fy), unit="Grad-CAM (ReLU)")
        return img, {"class": a.label(cls), "segment_area_share": round(float((labels == cls).mean()), 4), "layer": _module_name(model, layer),
                     "method": "captum LayerGradCam of the class logit summed over the predicted segment"}

    # ---------------------------------------------------------------- spatial, gates, branches, STN
    def spatial_gallery(self, a: Analysis, style: Style | None = None) -> list[tuple[np.ndarray, str]]:
        """Every spatial mask overlaid on the image (colour bar attached), with its layer and contribution."""
        style = (style or Style()).check()
        masks = [r for r in a.of(SpatialMask)]
        if not masks:
            return []
        vr = render.map_range([r.mask[0].numpy() for r in masks]) if style.shared else None  # type: ignore[attr-defined]
        out = []
        for r in masks:
            c = "" if r.contribution is None else f", contribution {float(r.contribution[0]):.3f}"
            m = r.mask[0].numpy()  # type: ignore[attr-defined]
            img = self.overlay_map(a, m, style, unit="gate / pooling weight", side_by_side=False, vrange=vr)
            out.append((img, f"{r.name} ({r.module_type}, mean {float(m.mean()):.2f}{c})"))
        return out

    @staticmethod
    def gate_records(a: Analysis) -> list[ChannelGate]:
        """Channel gates in forward order."""
        return [r for r in a.of(ChannelGate)]  # type: ignore[misc]

    def gates_heatmap(self, a: Analysis, cmap: str = "viridis") -> Figure | None:
        """Blocks × channels heatmap of every channel gate (with its colour bar)."""
        gates = self.gate_records(a)
        if not gates:
            return None
        return render.gate_heatmap([g.name for g in gates], [g.weights[0].numpy() for g in gates], cmap=cmap)

    def gate_bars(self, a: Analysis, block: str | None, sort: bool = True, other: Analysis | None = None) -> Figure | None:
        """Bars of one block's gates, optionally beside a second image's gates for the same block."""
        gates = {g.name: g for g in self.gate_records(a)}
        if not gates:
            return None
        name = block or list(gates)[-1]
        if name not in gates:
            raise UserError(f"block must be one of: {', '.join(gates)}; got {name!r}.")
        second = None
        if other is not None:
            og = {g.name: g for g in self.gate_records(other)}
            if name not in og:
                raise UserError(f"The second image's analysis has no gate {name!r} (was it analysed with another model?).")
            second = og[name].weights[0].numpy()
        return render.gate_bars(name, gates[name].weights[0].numpy(), sort=sort, other=second)

    def branch_figures(self, a: Analysis) -> list[Figure]:
        """SK branch weights, one Figure per block."""
        return [render.branch_bars(r.name, r.weights[0].numpy()) for r in a.of(BranchWeights)]  # type: ignore[attr-defined]

    def channel_affinity_figures(self, a: Analysis) -> list[Figure]:
        """DANet channel affinity matrices."""
        return [render.affinity_matrix(r.name, r.matrix[0].numpy()) for r in a.of(ChannelAffinity)]  # type: ignore[attr-defined]

    def stn_view(self, a: Analysis) -> tuple[np.ndarray | None, str]:
        """Input with the warped lattice and sampled quadrilateral, beside the rectified output; θ as text."""
        grids = a.of(SamplingGrid)
        if not grids:
            return None, "This model has no spatial transformer."
        g: SamplingGrid = grids[0]  # type: ignore[assignment]
        k = a.display_scale
        base = a.display_image()
        h, w = base.shape[:2]
        in_hw = g.input_hw or a.hw
        scale = torch.tensor([w / in_hw[1], h / in_hw[0]])
        grid_px = normalized_to_pixels(g.grid[0], in_hw, g.align_corners) * scale  # (Ho, Wo, 2) drawing pixels
        quad = sampled_quad(g, 0) * scale
        img = render.draw_lattice(base, grid_px.numpy(), every=max(1, g.grid.shape[1] // 8))
        img = render.draw_quad(img, quad.numpy())
        src = torch.from_numpy(base).permute(2, 0, 1).float()[None]
        rect = F.grid_sample(src, g.grid[:1], align_corners=g.align_corners)[0].permute(1, 2, 0).clamp(0, 255).byte().numpy()
        both = render.side_by_side([img, rect])
        text = "θ (output → input, normalised coordinates):\n"
        if g.theta is not None:
            t = g.theta[0].numpy()
            text += "\n".join("[" + "  ".join(f"{v:+.3f}" for v in row) + "]" for row in t)
            det = float(np.linalg.det(t[:, :2]))
            text += f"\nscale √det = {np.sqrt(abs(det)):.3f}, translation = ({t[0, 2]:+.3f}, {t[1, 2]:+.3f})"
        else:
            text += "(no θ: the grid did not come from affine_grid)"
        quad_img = quad / k
        text += "\nsampled quadrilateral (x, y image px): " + ", ".join(f"({p[0]:.0f}, {p[1]:.0f})" for p in quad_img.tolist())
        return both, text

    # ---------------------------------------------------------------- ablation and attributions
    def ablate(self, a: Analysis, record_name: str) -> tuple[Figure, dict[str, Any]]:
        """Bypass one module (gate = 1 / γ = 0) and show how the output changes."""
        if record_name not in a.records:
            raise UserError(f"layer must be one of: {', '.join(a.records)}; got {record_name!r}.")
        model = self.catalog.get(a.model_name)
        entry = self.catalog.entry(a.model_name)
        lock = self.model_lock(a.model_name)
        try:
            with lock:
                before, after, what = ablate(model, a.x, record_name)
        except ValueError as e:
            raise UserError(str(e)) from None
        b = interpret_output(before, entry.postprocess).logits[0].float().cpu()
        af = interpret_output(after, entry.postprocess).logits[0].float().cpu()
        if a.task == "segmentation":  # compare per-class mean logits and the share of pixels whose class changes
            changed = float((b.argmax(0) != af.argmax(0)).float().mean())
            b, af = b.mean((1, 2)), af.mean((1, 2))
        names = a.class_names or [f"class {i}" for i in range(b.numel())]
        fig = render.logit_change(names, b.numpy(), af.numpy(), title=what + (" (mean logit per class)" if a.task == "segmentation" else ""))
        pb, pa = b.softmax(0), af.softmax(0)
        top = int(pb.argmax())
        info = {"layer": record_name, "change": what, "max_abs_logit_change": round(float((af - b).abs().max()), 4)}
        if a.task == "segmentation":
            info["pixels_changing_class"] = round(changed, 4)
        else:
            info.update(top_class=a.label(top), top_prob_before=round(float(pb[top]), 4), top_prob_after=round(float(pa[top]), 4),
                        prediction_after=a.label(int(pa.argmax())))
        return fig, info

    @staticmethod
    def native_map_names(a: Analysis) -> list[str]:
        """Names of the maps :meth:`native_maps` computes, without computing them."""
        names = [r.name for r in a.of(SpatialMask)]
        return names + [f"{name} (mean {cl.default_view} of 16 queries)" for name, cl in click_layers(a.records).items()]

    def native_maps(self, a: Analysis) -> dict[str, np.ndarray]:
        """Maps to compare with attributions: spatial masks, and for click layers the mean row over queries."""
        maps = [r.mask[0].numpy() for r in a.of(SpatialMask)]  # type: ignore[attr-defined]
        ys, xs = np.meshgrid(np.linspace(0, a.hw[0] - 1, 4), np.linspace(0, a.hw[1] - 1, 4), indexing="ij")
        for cl in click_layers(a.records).values():
            rows = [click_map(cl, float(x), float(y), a.hw, view=cl.default_view).numpy() for x, y in zip(xs.ravel(), ys.ravel())]
            maps.append(np.mean(rows, axis=0))
        return dict(zip(self.native_map_names(a), maps))

    def _cam_layer(self, a: Analysis, model: nn.Module, x: torch.Tensor) -> nn.Module:
        """The model's Grad-CAM layer: ``last_conv_stage`` if it names one, else found once per loaded model
        (finding it costs a forward and a backward). Call with the model's lock held."""
        layer = getattr(model, "last_conv_stage", None) or self._cam_layers.get(model)
        if layer is None:
            post = self.catalog.entry(a.model_name).postprocess
            layer = _grad_cam_layer(model, a.records, int(a.logits.shape[0]), x, lambda o: interpret_output(o, post).logits)
            self._cam_layers[model] = layer
        return layer

    def compare(self, a: Analysis, method: str = "Grad-CAM", native: str | None = None, style: Style | None = None, topk: float = 0.1) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """An attribution (captum) beside a native map, with Spearman and top-k% IoU agreement."""
        style = (style or Style()).check()
        if a.task == "segmentation":
            raise UserError("For a segmentation model, click a pixel: its class's Grad-CAM over the segment is shown beside the native attention.")
        maps = self.native_maps(a)
        if not maps:
            raise UserError(f"{a.model_name} has no spatial or click-dependent attention map to compare with.")
        name = native or list(maps)[-1]
        if name not in maps:
            raise UserError(f"native must be one of: {', '.join(maps)}; got {name!r}.")
        methods = ("Grad-CAM", "IntegratedGradients", "Occlusion")
        if method not in methods:
            raise UserError(f"method must be one of {', '.join(methods)}; got {method!r}.")
        model = self.catalog.get(a.model_name)
        target = int(a.logits.argmax())
        x = a.x.clone()
        lock = self.model_lock(a.model_name)
        with lock, torch.enable_grad():
            if method == "Grad-CAM":
                layer = self._cam_layer(a, model, x)
                attr = grad_cam(model, layer, x, target)[0]
            elif method == "IntegratedGradients":
                attr = integrated_gradients(model, x, target)[0]
            else:
                attr = occlusion(model, x, target)[0]
        attr_np = attr.detach().float().cpu().numpy()
        nat = maps[name]
        nat_t = torch.from_numpy(render.resize_map(nat, attr_np.shape))
        attr_t = torch.from_numpy(attr_np)
        rho = spearman(nat_t, attr_t)
        scores: dict[str, Any] = {
            "native": name, "attribution": method, "target": a.label(target),
            "spearman": None if np.isnan(rho) else round(rho, 4), f"top{int(topk * 100)}%_iou": round(topk_iou(nat_t, attr_t, topk), 4),
        }
        if np.isnan(rho):
            scores["note"] = "Spearman is undefined: one of the two maps is constant (e.g. a Grad-CAM that is zero everywhere)."
        if style.shared:
            nat_img = self.overlay_map(a, render.to_unit(nat), style, unit="native (scaled to 0–1)", side_by_side=False, vrange=(0.0, 1.0))
            att_img = self.overlay_map(a, render.to_unit(attr_np), style, unit=f"{method} (scaled to 0–1)", side_by_side=False, vrange=(0.0, 1.0))
        else:
            nat_img = self.overlay_map(a, nat, style, unit="native map", side_by_side=False)
            att_img = self.overlay_map(a, attr_np, style, unit=method, side_by_side=False)
        return nat_img, att_img, scores


def describe_click(a: Analysis, info: dict[str, Any]) -> str:
    """A readable paragraph of what a click shows: which cell of which grid, where the mass goes, how concentrated."""
    fh, fw = info["feature_hw"]
    cy, cx = info["feature_cell"]
    csx, csy = info["cell_size_px"]
    head = "" if info["head"] == "mean" else f", head {info['head']}"
    parts = [f"Pixel ({info['x']:g}, {info['y']:g}) lies in cell ({cy}, {cx}) of the {fh}×{fw} grid of **{info['layer']}** "
             f"(one cell ≈ {csx:g}×{csy:g} image pixels); shown: {info['view']}{head} — {info['meaning']}."]
    pk = info["peak"]
    parts.append(f"The map peaks at cell ({pk['cell'][0]}, {pk['cell'][1]}) ≈ pixel ({pk['x']:g}, {pk['y']:g}) with {pk['value']:.3g} "
                 f"(range {info['min']:.3g}–{info['max']:.3g}).")
    share = info["top5pct_share"]
    uniform = 0.05
    conc = "highly concentrated" if share > 0.5 else "concentrated" if share > 0.2 else "spread out"
    parts.append(f"The top 5% of positions hold {share:.0%} of the mass ({conc}; a uniform map would give {uniform:.0%}).")
    if "regions" in info:
        top = ", ".join(f"{r['region']} {r['weight']:.0%}" for r in info["regions"][:3])
        parts.append(f"Over the object regions the pixel attends to: {top}.")
    if "class" in info:
        top3 = ", ".join(f"{t['class']} {t['p']:.0%}" for t in info["top3"])
        ratio = info["same_class_mass_ratio"]
        line = (f"The pixel is predicted **{info['class']}** ({top3}). Mass on pixels of that class: {ratio:.2f}× its area share "
                f"({info['same_class_area_share']:.1%} of the image; 1× = no preference)")
        if "same_class_mass_ratio_uniform_geometry" in info:
            u = info["same_class_mass_ratio_uniform_geometry"]
            line += f"; uniform criss-cross weights from the same pixel would already give {u:.2f}× (the cross runs through its own object), so only the excess over {u:.2f}× is attention"
        parts.append(line + ".")
    return " ".join(parts)


def _module_name(model: nn.Module, layer: nn.Module) -> str:
    for n, m in model.named_modules():
        if m is layer:
            return n
    return type(layer).__name__


def _grad_cam_layer(model: nn.Module, records: Mapping[str, Record], num_classes: int, x: torch.Tensor,
                    logits_of: Callable[[Any], torch.Tensor]) -> nn.Module:
    """Grad-CAM target for a model without ``last_conv_stage``: the last Conv2d *the output depends on*, in
    execution order, outside attention modules and other than the 1×1 classifier (an auxiliary head that
    is defined later but not used for the output, as in torchvision's segmentation models, is skipped)."""
    inside = tuple(r.name.split("#")[0].rsplit(".", 1)[0] + "." for r in records.values()) + tuple(r.name.split("#")[0] + "." for r in records.values())
    convs = [m for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and not (name + ".").startswith(inside)]
    if not convs:
        raise UserError("Grad-CAM needs a convolutional layer; this model has none.")
    feature = [m for m in convs if not (m.kernel_size == (1, 1) and m.out_channels == num_classes)] or convs
    order: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: order.append((mod, out)) if isinstance(out, torch.Tensor) else None)
             for m in feature]
    try:
        with torch.enable_grad():
            logits = logits_of(model(x.detach().requires_grad_(True)))
            grads = torch.autograd.grad(logits.float().sum(), [o for _, o in order], allow_unused=True) if order else []
    finally:
        for h in hooks:
            h.remove()
    used = [m for (m, _), g in zip(order, grads) if g is not None]
    if not used:
        raise UserError("Grad-CAM needs a convolutional layer that the output depends on; this model has none.")
    return used[-1]
