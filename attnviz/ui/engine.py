"""The app's engine, free of Gradio: model catalogue, cached analyses, and every view as arrays/Figures.

One forward pass per (model, image) is cached in a bounded LRU with a time-to-live, shared by all
sessions; clicks, re-colouring, exports and comparisons read the cached records and never run the
model again (ablation and attributions run it by definition).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn
from torch.nn import functional as F

from .. import render
from ..capture import capture
from ..capture.records import (
    BranchWeights,
    ChannelAffinity,
    ChannelGate,
    Record,
    SamplingGrid,
    SpatialMask,
)
from ..maps import (
    ablate,
    click_layers,
    click_map,
    feature_cell,
    grad_cam,
    integrated_gradients,
    occlusion,
    sampled_quad,
    spearman,
    topk_iou,
)
from ..maps.geometry import normalized_to_pixels
from ..models.inputs import card_of, preprocess
from .images import LoadedImage, load_image

DISPLAY_MAX = 768  # longest side of the displayed image
DISPLAY_MIN = 384  # small images (zoo scenes are 64×64) are enlarged, pixel-exact, to at least this
NEAR_IDENTITY = 0.01  # contribution below which a block "barely changes its input"


class UserError(ValueError):
    """A problem the user can fix; the message is shown as is."""


@dataclass
class Entry:
    """One model the app offers.

    Attributes:
        name: Key and dropdown value.
        available: Whether it can be loaded here.
        reason: Why not (and how to get it) when unavailable.
        loader: Builds the model (eval mode; ``model.card`` optional).
        source: Where it comes from (attnviz zoo, timm, torchvision, user).
    """

    name: str
    available: bool
    reason: str = ""
    loader: Callable[[], nn.Module] | None = None
    source: str = "user"


class Catalog:
    """Models by name, loaded lazily and kept (at most ``max_loaded`` at a time)."""

    def __init__(self, entries: list[Entry], device: torch.device, max_loaded: int = 4) -> None:
        if not entries:
            raise ValueError("the app needs at least one model")
        self.entries = {e.name: e for e in entries}
        self.device = device
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_registry(cls, device: torch.device, extra: Mapping[str, nn.Module | Callable[[], nn.Module]] | None = None, include_registry: bool = True) -> Catalog:
        """The zoo and ImageNet models of :func:`attnviz.models.available`, plus ``extra`` user models."""
        entries: list[Entry] = []
        for name, obj in (extra or {}).items():
            loader = (lambda o=obj: o) if isinstance(obj, nn.Module) else obj
            entries.append(Entry(name, True, loader=loader, source="user"))
        if include_registry:
            from ..models import available, load_pretrained

            for info in available():
                entries.append(Entry(info.name, info.available, info.reason, (lambda n=info.name: load_pretrained(n)), info.source))
        return cls(entries, device)

    def choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a dropdown; unavailable models say so."""
        out = []
        for e in self.entries.values():
            label = f"{e.name} ({e.source})" if e.available else f"{e.name} ({e.source}, unavailable)"
            out.append((label, e.name))
        return out

    def default(self) -> str:
        """The first available user model, else CCNet / Non-Local from the zoo, else the first available."""
        ok = [e.name for e in self.entries.values() if e.available]
        for e in self.entries.values():
            if e.available and e.source == "user":
                return e.name
        for name in ("ccnet_resnet", "nonlocal_resnet"):
            if name in ok:
                return name
        return ok[0] if ok else next(iter(self.entries))

    def unavailable_markdown(self) -> str:
        """A list of the models that cannot be loaded, with the reason and how to get them."""
        lines = [f"- **{e.name}**: {e.reason}" for e in self.entries.values() if not e.available]
        return "\n".join(lines) if lines else "All listed models are available."

    def get(self, name: str) -> nn.Module:
        """The loaded model (eval mode, on the device)."""
        e = self.entries.get(name)
        if e is None:
            raise UserError(f"Unknown model {name!r}. Choose one of: {', '.join(self.entries)}.")
        if not e.available or e.loader is None:
            raise UserError(f"{name} is not available here: {e.reason}")
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            try:
                model = e.loader().eval().to(self.device)
            except Exception as err:  # a broken checkpoint must not take the app down
                raise UserError(f"{name} could not be loaded: {err}") from err
            self._loaded[name] = model
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return model


def display_image(img: LoadedImage) -> np.ndarray:
    """The image as shown: enlarged pixel-exact when tiny, else as loaded (already ≤ DISPLAY_MAX)."""
    rgb = img.rgb
    h, w = rgb.shape[:2]
    if max(h, w) < DISPLAY_MIN:
        k = int(np.ceil(DISPLAY_MIN / max(h, w)))
        rgb = np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)
        img.notes.append(f"shown enlarged {k}× ({w}×{h} pixels)")
    return rgb


@dataclass
class Analysis:
    """The cached result of one forward pass of one model on one image."""

    key: str
    model_name: str
    image: np.ndarray  # (H, W, 3) uint8 as displayed
    x: torch.Tensor  # (1, 3, h, w) model input
    logits: torch.Tensor  # (classes,)
    records: dict[str, Record]
    class_names: list[str]
    notes: list[str] = field(default_factory=list)
    source_size: tuple[int, int] = (0, 0)  # (W, H) of the image as loaded, before display enlargement
    last_used: float = field(default_factory=time.monotonic)

    @property
    def hw(self) -> tuple[int, int]:
        """Displayed image size (H, W)."""
        return self.image.shape[0], self.image.shape[1]

    def top(self, k: int = 5) -> dict[str, float]:
        """Top-k labels and probabilities."""
        p = self.logits.softmax(0)
        vals, idx = p.topk(min(k, p.numel()))
        return {self.label(int(i)): float(v) for v, i in zip(vals, idx)}

    def label(self, i: int) -> str:
        """Class name of index ``i``."""
        return self.class_names[i] if i < len(self.class_names) else f"class {i}"

    def of(self, cls: type[Record]) -> list[Record]:
        """Records of one type, in forward order."""
        return [r for r in self.records.values() if isinstance(r, cls)]


@dataclass
class Style:
    """Display controls: colormap, opacity, and whether maps of one view share a colour scale."""

    cmap: str = "inferno"
    alpha: float = 0.55
    shared: bool = False

    def check(self) -> Style:
        if self.cmap not in render.CMAPS:
            raise UserError(f"Unknown colormap {self.cmap!r}; choose one of {', '.join(render.CMAPS)}.")
        if not 0 <= self.alpha <= 1:
            raise UserError(f"Opacity must lie between 0 and 1, got {self.alpha}.")
        return self


class Engine:
    """Analyses images with the catalogue's models and renders every view.

    Args:
        catalog: The models.
        max_entries: Cached analyses kept (LRU), across all sessions.
        ttl: Seconds an unused analysis is kept.
    """

    def __init__(self, catalog: Catalog, max_entries: int = 16, ttl: float = 1800.0) -> None:
        self.catalog = catalog
        self.max_entries = max_entries
        self.ttl = ttl
        self._cache: OrderedDict[str, Analysis] = OrderedDict()
        self._lock = threading.Lock()
        self._model_locks: dict[str, threading.Lock] = {}

    def model_lock(self, model_name: str) -> threading.Lock:
        """The lock that serialises runs of one model (hooks and in-place state are per model)."""
        with self._lock:
            return self._model_locks.setdefault(model_name, threading.Lock())

    # ---------------------------------------------------------------- analysis and cache
    def _evict(self) -> None:
        now = time.monotonic()
        for k in [k for k, a in self._cache.items() if now - a.last_used > self.ttl]:
            del self._cache[k]
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    def cached(self) -> int:
        """Number of analyses held."""
        return len(self._cache)

    def analyze(self, source: Any, model_name: str) -> Analysis:
        """Load the image, run the model once with capture on, and cache the result."""
        try:
            img = load_image(source, max_side=DISPLAY_MAX)
        except ValueError as e:
            raise UserError(str(e)) from None
        shown = display_image(img)
        key = hashlib.sha1(model_name.encode() + b"\0" + shown.tobytes() + str(shown.shape).encode()).hexdigest()
        with self._lock:
            self._evict()
            hit = self._cache.get(key)
            if hit is not None:
                hit.last_used = time.monotonic()
                self._cache.move_to_end(key)
                return hit
        model = self.catalog.get(model_name)
        card = card_of(model)
        x = preprocess(img.rgb, card, self.catalog.device)
        lock = self.model_lock(model_name)
        try:
            with lock, torch.inference_mode(), capture(model) as cap:
                logits = model(x)
        except Exception as e:
            raise UserError(f"{model_name} failed on this image: {type(e).__name__}: {e}") from e
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise UserError(f"{model_name} returned {type(logits).__name__}, not a (1, classes) tensor of logits.")
        names = list(card.get("class_names") or [])
        notes = list(img.notes)
        if not cap.records:
            notes.append(f"{model_name} has no attention modules that attnviz can see; only the prediction is shown.")
        a = Analysis(key, model_name, shown, x.detach().clone(), logits[0].detach().float().cpu(), dict(cap.records), names, notes,
                     (img.rgb.shape[1], img.rgb.shape[0]))
        with self._lock:
            self._cache[key] = a
            self._evict()
        return a

    # ---------------------------------------------------------------- summaries
    @staticmethod
    def modules_table(a: Analysis) -> list[list[Any]]:
        """Rows: layer, kind, module, source, shape, contribution, note."""
        rows = []
        for name, r in a.records.items():
            c = None if r.contribution is None else float(r.contribution[0])
            note = ""
            if c is not None and c < NEAR_IDENTITY:
                note = f"barely changes its input (‖out−x‖/‖x‖ = {c:.4f}; γ≈0 or gate≈1)"
            main = [v for k, v in r.arrays().items() if k != "contribution"]
            shape = "×".join(str(s) for s in main[0].shape[1:]) if main else ""
            rows.append([name, r.kind, r.module_type, r.source, shape, None if c is None else round(c, 4), note])
        return rows

    @staticmethod
    def summary(a: Analysis) -> dict[str, Any]:
        """JSON-able description of an analysis (what the API's analyze returns)."""
        kinds: dict[str, int] = {}
        for r in a.records.values():
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        return {
            "model": a.model_name, "image_size": [a.hw[1], a.hw[0]], "source_size": list(a.source_size), "top5": a.top(5), "notes": a.notes,
            "layers": {n: r.kind for n, r in a.records.items()}, "kinds": kinds,
            "click_layers": {n: {"views": list(l.views), "heads": l.heads} for n, l in click_layers(a.records).items()},
        }

    # ---------------------------------------------------------------- click views
    @staticmethod
    def click_choices(a: Analysis) -> list[str]:
        """Names of query-dependent layers."""
        return list(click_layers(a.records))

    def attention_at(self, a: Analysis, x: float, y: float, layer: str | None = None, view: str | None = None, head: int | None = None, style: Style | None = None) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
        """Overlay of the map of the query at image pixel (x, y); also its info and the raw map.

        Args:
            a: The analysis.
            x: Column in displayed-image pixels.
            y: Row in displayed-image pixels.
            layer: A click layer (default: the deepest).
            view: ``row`` / ``loop1`` / ``loop2`` / ``reach`` (default: reach for CCNet, else row).
            head: Head index, or None for the head average.
            style: Display controls.
        """
        style = (style or Style()).check()
        layers = click_layers(a.records)
        if not layers:
            raise UserError(f"{a.model_name} has no Non-Local, DANet, BotNet or CCNet layer, so a click has nothing to show.")
        name = layer or list(layers)[-1]
        if name not in layers:
            raise UserError(f"{name!r} is not a clickable layer; choose one of: {', '.join(layers)}.")
        cl = layers[name]
        view = view or cl.default_view
        h, w = a.hw
        if not (0 <= x < w and 0 <= y < h):
            raise UserError(f"Pixel ({x:g}, {y:g}) lies outside the {w}×{h} image.")
        try:
            m = click_map(cl, x, y, a.hw, view=view, head=head)
        except ValueError as e:
            raise UserError(str(e)) from None
        m_np = m.numpy()
        rgb = render.overlay(a.image, m_np, style.cmap, style.alpha, 0.0 if style.shared else None, 1.0 if style.shared else None, point=(x, y))
        fy, fx = feature_cell(x, y, a.hw, tuple(m.shape))
        peak = int(m.argmax())
        info = {
            "layer": name, "view": view, "head": "mean" if head is None else head, "x": x, "y": y,
            "feature_cell": [fy, fx], "feature_hw": list(m.shape),
            "peak_cell": [peak // m.shape[1], peak % m.shape[1]], "max": float(m.max()), "sum": float(m.sum()),
        }
        return rgb, info, m_np

    # ---------------------------------------------------------------- spatial, gates, branches, STN
    def spatial_gallery(self, a: Analysis, style: Style | None = None) -> list[tuple[np.ndarray, str]]:
        """Every spatial mask overlaid on the image, with its layer and contribution as caption."""
        style = (style or Style()).check()
        masks = [r for r in a.of(SpatialMask)]
        if not masks:
            return []
        vmin, vmax = render.map_range([r.mask[0].numpy() for r in masks]) if style.shared else (None, None)
        out = []
        for r in masks:
            c = "" if r.contribution is None else f", contribution {float(r.contribution[0]):.3f}"
            mean = float(r.mask[0].mean())
            out.append((render.overlay(a.image, r.mask[0].numpy(), style.cmap, style.alpha, vmin, vmax), f"{r.name} ({r.module_type}, mean {mean:.2f}{c})"))
        return out

    @staticmethod
    def gate_records(a: Analysis) -> list[ChannelGate]:
        """Channel gates in forward order."""
        return [r for r in a.of(ChannelGate)]  # type: ignore[misc]

    def gates_heatmap(self, a: Analysis, cmap: str = "viridis") -> Figure | None:
        """Blocks × channels heatmap of every channel gate."""
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
            raise UserError(f"{name!r} has no channel gate; choose one of: {', '.join(gates)}.")
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
        h, w = a.hw
        in_hw = g.input_hw or (h, w)
        sy, sx = h / in_hw[0], w / in_hw[1]
        scale = torch.tensor([sx, sy])
        grid_px = normalized_to_pixels(g.grid[0], in_hw, g.align_corners) * scale  # (Ho, Wo, 2) display pixels
        quad = sampled_quad(g, 0) * scale
        img = render.draw_lattice(a.image, grid_px.numpy(), every=max(1, g.grid.shape[1] // 8))
        img = render.draw_quad(img, quad.numpy())
        src = torch.from_numpy(a.image).permute(2, 0, 1).float()[None]
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
        text += "\nsampled quadrilateral (x, y px): " + ", ".join(f"({p[0]:.0f}, {p[1]:.0f})" for p in quad.tolist())
        return both, text

    # ---------------------------------------------------------------- ablation and attributions
    def ablate(self, a: Analysis, record_name: str) -> tuple[Figure, dict[str, Any]]:
        """Bypass one module (gate = 1 / γ = 0) and show how the logits change."""
        if record_name not in a.records:
            raise UserError(f"{record_name!r} is not a captured layer; choose one of: {', '.join(a.records)}.")
        model = self.catalog.get(a.model_name)
        lock = self.model_lock(a.model_name)
        try:
            with lock:
                before, after, what = ablate(model, a.x, record_name)
        except ValueError as e:
            raise UserError(str(e)) from None
        b, af = before[0].float().cpu(), after[0].float().cpu()
        names = a.class_names or [f"class {i}" for i in range(b.numel())]
        fig = render.logit_change(names, b.numpy(), af.numpy(), title=what)
        pb, pa = b.softmax(0), af.softmax(0)
        top = int(pb.argmax())
        info = {
            "layer": record_name, "change": what, "top_class": a.label(top),
            "top_prob_before": round(float(pb[top]), 4), "top_prob_after": round(float(pa[top]), 4),
            "prediction_after": a.label(int(pa.argmax())), "max_abs_logit_change": round(float((af - b).abs().max()), 4),
        }
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

    def compare(self, a: Analysis, method: str = "Grad-CAM", native: str | None = None, style: Style | None = None, topk: float = 0.1) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """An attribution (captum) beside a native map, with Spearman and top-k% IoU agreement."""
        style = (style or Style()).check()
        maps = self.native_maps(a)
        if not maps:
            raise UserError(f"{a.model_name} has no spatial or click-dependent attention map to compare with.")
        name = native or list(maps)[-1]
        if name not in maps:
            raise UserError(f"{name!r} is not a native map; choose one of: {', '.join(maps)}.")
        model = self.catalog.get(a.model_name)
        target = int(a.logits.argmax())
        x = a.x.clone()
        lock = self.model_lock(a.model_name)
        with lock, torch.enable_grad():
            if method == "Grad-CAM":
                layer = getattr(model, "last_conv_stage", None) or _last_conv_stage(model, a.records)
                attr = grad_cam(model, layer, x, target)[0]
            elif method == "IntegratedGradients":
                attr = integrated_gradients(model, x, target)[0]
            elif method == "Occlusion":
                attr = occlusion(model, x, target)[0]
            else:
                raise UserError(f"Unknown attribution {method!r}; choose Grad-CAM, IntegratedGradients or Occlusion.")
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
            nat_img = render.overlay(a.image, render.to_unit(nat), style.cmap, style.alpha, 0, 1)
            att_img = render.overlay(a.image, render.to_unit(attr_np), style.cmap, style.alpha, 0, 1)
        else:
            nat_img = render.overlay(a.image, nat, style.cmap, style.alpha)
            att_img = render.overlay(a.image, attr_np, style.cmap, style.alpha)
        return nat_img, att_img, scores

    # ---------------------------------------------------------------- export
    def export(self, a: Analysis, click: tuple[float, float] | None = None, layer: str | None = None, style: Style | None = None, folder: str | os.PathLike[str] | None = None) -> Path:
        """A zip with PNG overlays, an NPZ of every raw record tensor (feature resolution) and JSON metadata."""
        style = (style or Style()).check()
        pngs: dict[str, np.ndarray] = {"image.png": a.image}
        for i, (rgb, cap) in enumerate(self.spatial_gallery(a, style)):
            pngs[f"spatial_{i:02d}_{_safe(cap.split(' ')[0])}.png"] = rgb
        arrays: dict[str, np.ndarray] = {}
        for name, r in a.records.items():
            for k, v in r.arrays().items():
                arrays[f"{name}/{k}"] = v[0].numpy() if v.ndim and v.shape[0] == a.x.shape[0] else v.numpy()
        meta: dict[str, Any] = self.summary(a)
        meta["modules"] = [dict(zip(["layer", "kind", "module", "source", "shape", "contribution", "note"], row)) for row in self.modules_table(a)]
        meta["style"] = vars(style)
        meta["model_input_size"] = list(a.x.shape[-2:])
        if click is not None and click_layers(a.records):
            rgb, info, m = self.attention_at(a, click[0], click[1], layer, style=style)
            pngs[f"click_{_safe(info['layer'])}_{info['view']}.png"] = rgb
            arrays[f"click/{info['layer']}/{info['view']}"] = m
            meta["click"] = info
        grids = a.of(SamplingGrid)
        if grids:
            stn, _ = self.stn_view(a)
            if stn is not None:
                pngs["stn.png"] = stn
        folder = Path(folder) if folder else work_dir("exports")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"attnviz_{a.model_name}_{a.key[:10]}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for fname, rgb in pngs.items():
                buf = io.BytesIO()
                Image.fromarray(rgb).save(buf, format="PNG")
                z.writestr(f"overlays/{fname}", buf.getvalue())
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            z.writestr("maps.npz", buf.getvalue())
            z.writestr("metadata.json", json.dumps(meta, indent=2, default=str))
        return path


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in s)[:80]


def work_dir(name: str) -> Path:
    """A folder for files the app hands to the user (exports, videos), under the system temp dir."""
    import tempfile

    d = Path(tempfile.gettempdir()) / f"attnviz_{name}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _last_conv_stage(model: nn.Module, records: Mapping[str, Record]) -> nn.Module:
    """Grad-CAM target for a model without ``last_conv_stage``: its last Conv2d outside attention modules."""
    inside = tuple(r.name.split("#")[0].rsplit(".", 1)[0] + "." for r in records.values()) + tuple(r.name.split("#")[0] + "." for r in records.values())
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and not (name + ".").startswith(inside):
            last = m
    if last is None:
        raise UserError("Grad-CAM needs a convolutional layer; this model has none.")
    return last
