"""The Gradio app: a thin layer over :mod:`attnviz.analysis` — layout, events and named endpoints.

Every user action is also an endpoint with plain arguments (``api_name``), so ``gradio_client`` and MCP
clients can do everything the page does, e.g.
``client.predict(handle_file("scene.png"), 30, 40, api_name="/attention_at")``.

Results can never be stale: each input event carries a browser timestamp; a result is written only if
no newer input of the same session has been seen (else every output is skipped). Errors the user can
fix stay in the status line until the next action; nothing shows a stack trace.
"""

from __future__ import annotations

import ctypes
import functools
import html
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from torch import nn

from .. import render
from ..analysis import Analysis, Catalog, Engine, Style, UserError, export_bundle
from ..analysis.outputs import Postprocess
from ..analysis.workdirs import keep_clean, work_dir
from ..maps import click_layers
from ..models.inputs import pick_device
from . import hover
from .examples import Example, load_examples

log = logging.getLogger("attnviz")
HEADER = """# attnviz — look inside CNN attention modules
Pick an example or upload an image: click (or hover) any pixel to see where a Non-Local, CCNet, DANet or OCR layer
looks from there, next to the prediction — plus channel gates, spatial masks, STN grids and captum attributions.
"""
STAMP_JS = "(...args) => { args[args.length - 1] = Date.now() + Math.random(); return args; }"
HINTS = {
    "click": "Click needs a Non-Local, CCNet, DANet, BotNet or OCR layer. Try `ccnet_resnet`, `nonlocal_resnet` or a `*_seg` model.",
    "segmentation": "This model is a classifier: it predicts one label per image. The segmentation models (`fcn_seg`, `ccnet_seg`, `nonlocal_seg`, `danet_seg`, `gc_seg`, `ocr_seg`) predict a class per pixel.",
    "spatial": "No spatial masks in this model. CBAM, scSE and GC blocks have them: try `cbam_resnet`, `scse_resnet`, `gc_resnet` or `gc_seg`.",
    "gates": "No channel gates in this model. SE, ECA and CBAM blocks have them: try `se_resnet`, `eca_resnet` or `cbam_resnet`.",
    "others": "No SK branch weights or DANet channel affinity in this model: try `sk_resnet`, `danet_resnet`, `danet_seg` or `skresnet18` (ImageNet).",
    "stn": "No spatial transformer in this model: try `stn_resnet`.",
    "compare": "Compare needs a spatial mask or a click layer; for segmentation models the click view already shows Grad-CAM of the clicked class.",
}

try:  # ZeroGPU on Hugging Face Spaces; a no-op everywhere else
    import spaces  # type: ignore[import-not-found]

    gpu = spaces.GPU
except ImportError:
    def gpu(fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn UserError into gr.Error and any other failure into a one-line gr.Error (logged in full)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # never show a stack trace in the page
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error(f"Something went wrong ({type(e).__name__}: {e}). The server log has the details.", print_exception=False) from None

    return wrapper


def _path(image: Any) -> Any:
    """A gr.File / gradio_client value → what the engine takes."""
    if image is None or image == "":
        raise UserError("image is missing: upload one or pick an example.")
    if isinstance(image, dict):
        image = image.get("path") or image.get("name")
    if isinstance(image, (str, os.PathLike, np.ndarray)):
        return image
    return getattr(image, "name", image)  # a tempfile wrapper


def _number(name: str, v: Any, lo: float, hi: float) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number in [{lo:g}, {hi:g}]; got {v!r}.") from None
    if not (np.isfinite(f) and lo <= f <= hi):
        raise UserError(f"{name} must be a number in [{lo:g}, {hi:g}]; got {v!r}.")
    return f


def _style(cmap: Any, alpha: Any, scale: Any, threshold: Any = 0.0) -> Style:
    if scale not in (None, "", "per map", "shared"):
        raise UserError(f"scale must be 'per map' or 'shared'; got {scale!r}.")
    return Style(cmap or "inferno", _number("alpha", 0.55 if alpha is None else alpha, 0, 1), scale == "shared",
                 _number("threshold", threshold or 0.0, 0, 0.99))


def _head(head: Any) -> int | None:
    if head in (None, "", "mean"):
        return None
    try:
        return int(head)
    except (TypeError, ValueError):
        raise UserError(f"head must be 'mean' or a head number; got {head!r}.") from None


def _legend_html(rows: list[dict[str, object]]) -> str:
    items = "".join(
        f"<tr><td><span style='display:inline-block;width:14px;height:14px;background:{r['colour']};border:1px solid #444'></span></td>"
        f"<td>{html.escape(str(r['name']))}</td><td style='text-align:right'>{float(r['area']):.1%}</td></tr>"  # type: ignore[arg-type]
        for r in rows)
    return f"<table class='legend'><tr><th></th><th>class</th><th>area</th></tr>{items}</table>"


@dataclass
class Session:
    """What the page currently shows for one browser session."""

    latest: float = 0.0  # newest input stamp seen
    path: str | None = None
    model: str | None = None


def _long_running_server_settings() -> None:
    """Settings that keep a busy server's memory flat (measured by ``bench/soak.py``); the environment can override them.

    - Gradio keeps analytics for its last ``GRADIO_ANALYTICS_MAX_EVENTS`` events (default 10,000) and rebuilds
      a pandas summary of all of them after every event; we keep 500 and summarise every 100 events.
    - glibc gives each thread its own malloc arena (up to 8 per core); with the server's thread pool the
      freed memory of many arenas stays mapped. ``ATTNVIZ_MALLOC_ARENA_MAX`` (default 2, 0 = leave alone)
      caps them through ``mallopt`` — Linux/glibc only, ignored elsewhere.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "500")
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")
    arenas = int(os.environ.get("ATTNVIZ_MALLOC_ARENA_MAX", "2") or 0)
    if arenas > 0 and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
        except (OSError, AttributeError):  # not glibc
            pass


def build_demo(models: Mapping[str, nn.Module | Callable[[], nn.Module]] | None = None, include_registry: bool = True,
               engine: Engine | None = None, postprocess: Mapping[str, Postprocess] | None = None) -> gr.Blocks:
    """The attnviz app.

    Args:
        models: Extra models by name (modules or factories); their attention is found by capture without
            any registration. A ``model.card`` dict may give ``input_size``, ``mean``, ``std``,
            ``class_names`` and ``palette`` (defaults: ImageNet preprocessing at 224²).
        include_registry: Also offer the attnviz zoo and the registry's pretrained models.
        engine: Use this engine instead of building one (tests).
        postprocess: Per user model, a function turning its output into logits.
    """
    _long_running_server_settings()
    eng = engine or Engine(Catalog.from_registry(pick_device(), models, include_registry, postprocess))
    cat = eng.catalog
    # our work folders and Gradio's own upload/output cache: TTL + size cap now and every few minutes
    keep_clean(work_dir("exports"), work_dir("videos"), Path(gr.utils.get_upload_folder()))
    examples = load_examples(cat)
    sessions: dict[str, Session] = {}
    sessions_lock = threading.Lock()

    def session(request: gr.Request | None) -> Session:
        key = getattr(request, "session_hash", None) or "anonymous"
        with sessions_lock:
            if len(sessions) > 4096:  # forget the oldest sessions
                for k in list(sessions)[:1024]:
                    sessions.pop(k, None)
            return sessions.setdefault(key, Session())

    def get(image: Any, model_name: Any, progress: Any = None) -> Analysis:
        if model_name in (None, ""):
            model_name = cat.default()
        return gpu(eng.analyze)(_path(image), model_name, progress)

    # ================================================================== endpoints (plain arguments)
    @_guard
    def analyze(image: Any, model_name: str) -> tuple[dict[str, float], dict[str, Any]]:
        """Run a model on an image (one forward with capture, cached): the prediction and a summary of every captured layer.

        Args:
            image: The image file.
            model_name: A model name from the app's list (classification or segmentation).

        Returns:
            Top classes (classification: probabilities; segmentation: area shares) and a JSON summary:
            task, image size, device, forward time, layers and their kinds, click layers with views.
        """
        if model_name in (None, ""):
            raise UserError(f"model is missing: choose one of {', '.join(cat.available_names())}.")
        a = get(image, model_name)
        return a.top(5), eng.summary(a)

    @_guard
    def attention_at(image: Any, x: float, y: float, layer: str | None = None, view: str | None = None, head: Any = "mean",
                     model_name: str | None = None, cmap: str = "inferno", alpha: float = 0.55, scale: str = "per map",
                     threshold: float = 0.0) -> tuple[np.ndarray, dict[str, Any]]:
        """Where one pixel looks: the attention map of the pixel (x, y) in a Non-Local / CCNet / DANet / BotNet / OCR layer.

        Args:
            image: The image file.
            x: Column of the pixel, in the image's own pixels (0 = left).
            y: Row of the pixel, in the image's own pixels (0 = top).
            layer: A click layer (default: the deepest); see analyze's ``click_layers``.
            view: row / loop1 / loop2 / reach (CCNet two-hop) / regions (OCR); default reach for CCNet, else row.
            head: 'mean' or a head index.
            model_name: The model (default: the app's default model).
            cmap: Colormap.
            alpha: Overlay opacity in [0, 1].
            scale: 'per map' or 'shared'.
            threshold: Hide weights below this fraction of the maximum (0 = show all).

        Returns:
            An image (original | overlay with the pixel and the peak marked, colour bar attached) and the
            facts: feature cell, peak, value range, concentration, a readable ``text``, and for
            segmentation the pixel's class, top-3 probabilities and same-class mass ratio.
        """
        a = get(image, model_name)
        rgb, info, _ = eng.attention_at(a, x, y, layer or None, view or None, _head(head), _style(cmap, alpha, scale, threshold))
        return rgb, info

    @_guard
    def click_grid(image: Any, x: float, y: float, model_name: str | None = None, cmap: str = "inferno") -> list[tuple[np.ndarray, str]]:
        """The same click in every attention layer, view and head (one tile each, each with its own colour scale).

        Args:
            image: The image file.
            x: Column of the pixel (image pixels).
            y: Row of the pixel (image pixels).
            model_name: The model.
            cmap: Colormap.
        """
        return eng.click_grid(get(image, model_name), x, y, _style(cmap, 0.55, "per map"))

    @_guard
    def query_dependence(image: Any, model_name: str, layer: str | None = None) -> dict[str, Any]:
        """Does a layer's attention depend on the query pixel? (GCNet's question.) Mean JS divergence and same-peak share of random query pairs.

        Args:
            image: The image file.
            model_name: The model.
            layer: A click layer (default: the deepest).
        """
        return eng.query_dependence(get(image, model_name), layer or None)

    @_guard
    def segmentation(image: Any, model_name: str, opacity: float = 0.5) -> tuple[np.ndarray, list[dict[str, object]]]:
        """The predicted segmentation over the image and the legend (classes present, their colour and area share).

        Args:
            image: The image file.
            model_name: A segmentation model.
            opacity: Overlay opacity in [0, 1].
        """
        return eng.segmentation_view(get(image, model_name), _number("opacity", opacity, 0, 1))

    @_guard
    def segment_gradcam(image: Any, x: float, y: float, model_name: str, cmap: str = "inferno") -> tuple[np.ndarray, dict[str, Any]]:
        """captum Grad-CAM of the clicked pixel's class, summed over that class's predicted segment (segmentation models).

        Args:
            image: The image file.
            x: Column of the pixel (image pixels).
            y: Row of the pixel (image pixels).
            model_name: A segmentation model.
            cmap: Colormap.
        """
        return eng.segment_gradcam(get(image, model_name), x, y, _style(cmap, 0.55, "per map"))

    @_guard
    def spatial_masks(image: Any, model_name: str, cmap: str = "inferno", alpha: float = 0.55, scale: str = "per map") -> list[tuple[np.ndarray, str]]:
        """Every spatial mask (CBAM, scSE, GC, generic) over the image, each with a colour bar.

        Args:
            image: The image file.
            model_name: The model.
            cmap: Colormap.
            alpha: Overlay opacity.
            scale: 'per map' or 'shared'.
        """
        return eng.spatial_gallery(get(image, model_name), _style(cmap, alpha, scale))

    @_guard
    def channel_gates(image: Any, model_name: str, block: str | None = None, sort: bool = True, image2: Any = None) -> tuple[Any, Any]:
        """Blocks × channels gate heatmap, and one block's gate bars (beside a second image's, if given).

        Args:
            image: The image file.
            model_name: The model.
            block: A gated block (default: the deepest).
            sort: Sort channels by gate.
            image2: An optional second image to compare gates with.
        """
        a = get(image, model_name)
        other = get(image2, model_name) if image2 not in (None, "") else None
        return eng.gates_heatmap(a), eng.gate_bars(a, block or None, bool(sort), other)

    @_guard
    def other_maps(image: Any, model_name: str) -> list[tuple[np.ndarray, str]]:
        """SK branch weights and DANet channel affinity, as images.

        Args:
            image: The image file.
            model_name: The model.
        """
        a = get(image, model_name)
        figs = eng.branch_figures(a) + eng.channel_affinity_figures(a)
        return [(render.figure_to_rgb(f), f.axes[0].get_title() or "") for f in figs]

    @_guard
    def stn(image: Any, model_name: str) -> tuple[np.ndarray | None, str]:
        """STN: warped lattice and sampled quadrilateral on the input, the rectified output beside it, and θ.

        Args:
            image: The image file.
            model_name: The model.
        """
        return eng.stn_view(get(image, model_name))

    @_guard
    def modules(image: Any, model_name: str) -> list[list[Any]]:
        """Every captured layer: kind, module, source, shape, contribution ‖out−x‖/‖x‖ and a note.

        Args:
            image: The image file.
            model_name: The model.
        """
        return eng.modules_table(get(image, model_name))

    @_guard
    def ablation(image: Any, model_name: str, layer: str) -> tuple[Any, dict[str, Any]]:
        """Bypass one layer (gate = 1 / γ = 0) and show how the output changes.

        Args:
            image: The image file.
            model_name: The model.
            layer: A captured layer name.
        """
        if not layer:
            raise UserError("layer is missing: choose a layer to ablate.")
        return eng.ablate(get(image, model_name), layer)

    @_guard
    def compare(image: Any, model_name: str, method: str = "Grad-CAM", native: str | None = None, cmap: str = "inferno", alpha: float = 0.55,
                scale: str = "per map") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """A captum attribution (Grad-CAM, IntegratedGradients, Occlusion) beside a native attention map, with Spearman and top-10% IoU.

        Args:
            image: The image file.
            model_name: A classification model.
            method: Grad-CAM, IntegratedGradients or Occlusion.
            native: A native map name (default: the deepest).
            cmap: Colormap.
            alpha: Overlay opacity.
            scale: 'per map' or 'shared'.
        """
        return eng.compare(get(image, model_name), method, native or None, _style(cmap, alpha, scale))

    @_guard
    def export(image: Any, model_name: str, x: float | None = None, y: float | None = None, layer: str | None = None, cmap: str = "inferno",
               alpha: float = 0.55, scale: str = "per map") -> str:
        """A zip: PNG overlays, NPZ of every raw map at feature resolution, the segmentation (label PNG + logits) and JSON metadata.

        Args:
            image: The image file.
            model_name: The model.
            x: Optional clicked column (image pixels).
            y: Optional clicked row (image pixels).
            layer: Click layer for the clicked map.
            cmap: Colormap.
            alpha: Overlay opacity.
            scale: 'per map' or 'shared'.
        """
        a = get(image, model_name)
        click = (x, y) if x not in (None, "") and y not in (None, "") else None
        return str(export_bundle(eng, a, click, layer or None, _style(cmap, alpha, scale)))

    # ------------------------------------------------------------------ video
    def analyze_video(video: Any, model_name: str, kind: str = "", layer: str | None = None, x: float | None = None, y: float | None = None,
                      stride: int = 1, max_frames: int = 300, progress: gr.Progress = gr.Progress()) -> Any:
        """Render one attention map over every frame of a clip: H.264 MP4 with a colour bar, plots over time, NPZ and CSV.

        Args:
            video: The clip (mp4, webm, mov, gif).
            model_name: The model.
            kind: spatial / channel / grid (STN) / query (click layers) / segmentation; empty = the first kind the model has.
            layer: A layer of that kind (default: the deepest).
            x: Query column (source-frame pixels) for kind=query.
            y: Query row (source-frame pixels) for kind=query.
            stride: Use every n-th frame (≥ 1).
            max_frames: Refuse clips that would use more frames (1–900).
        """
        from . import video_tab

        yield from video_tab.run(eng, gpu, video, model_name or cat.default(), kind, layer, x, y, stride, max_frames, progress)

    # ================================================================== UI-only glue
    def fill(a: Analysis, click: tuple[float, float] | None, layer: str | None, view: str | None, head: Any, st: Style, seg_alpha: float) -> dict[Any, Any]:
        """Every output of the page for one analysis (and one click)."""
        layers = click_layers(a.records)
        names = list(layers)
        out: dict[Any, Any] = {}
        out[status] = (f"**{html.escape(a.model_name)}** · {html.escape(a.task)} · " + html.escape(eng.status_line(a).split(" · ", 2)[2])
                       + ("" if not a.notes else "  \n_" + html.escape(" · ".join(a.notes)) + "_")
                       + (f"  \n⚠️ {html.escape(a.model_name)} was trained on {html.escape(a.trained_on)}: on other images its output is not meaningful."
                          if a.trained_on and not a.trained_on.startswith("ImageNet") and "Cityscapes" not in a.trained_on and "ADE20K" not in a.trained_on and _is_photo(a) else ""))
        out[label] = a.top(5) if a.task == "classification" else {f"{k} (area)": v for k, v in a.top(5).items()}
        cur_layer = layer if layer in layers else (names[-1] if names else None)
        cl = layers.get(cur_layer) if cur_layer else None
        views = list(cl.views) if cl else []
        cur_view = view if view in views else (cl.default_view if cl else None)
        heads = ["mean"] + ([str(i) for i in range(cl.heads)] if cl and cl.heads > 1 else [])
        out[layer_dd] = gr.update(choices=names, value=cur_layer, visible=bool(names))
        out[view_dd] = gr.update(choices=views, value=cur_view, visible=bool(names))
        out[head_dd] = gr.update(choices=heads, value=head if str(head) in heads else "mean", visible=len(heads) > 1)
        out[click_note] = "" if names else HINTS["click"]
        if names:
            if click is None:
                click = _default_click(a)
            img, info, _ = eng.attention_at(a, click[0], click[1], cur_layer, cur_view, _head(head) if str(head) in heads else None, st)
            out[view_img] = img
            out[answer] = info["text"]
            out[details] = info
            out[grid] = eng.click_grid(a, click[0], click[1], st)
            qd = eng.query_dependence(a, cur_layer)
            out[qd_md] = (f"**Query dependence of {html.escape(qd['layer'])}** ({qd['view']}): mean JS {qd['mean_js']:.3f}, "
                          f"same peak in {qd['same_peak_share']:.0%} of {qd['pairs']} random query pairs — {qd['verdict']}.  \n_{qd['explanation']}._")
            out[hover_html] = hover.payload(a, cur_layer, cur_view, st.cmap)
        else:
            out[view_img] = a.display_image()
            out[answer] = ""
            out[details] = {}
            out[grid] = []
            out[qd_md] = ""
            out[hover_html] = hover.empty("This model has no click layer.")
        out[xy_state] = list(click) if click is not None else None
        # segmentation tab
        if a.task == "segmentation":
            seg_img, leg = eng.segmentation_view(a, seg_alpha)
            out[seg_view], out[seg_legend], out[seg_note] = seg_img, _legend_html(leg), ""
            if click is not None:
                cam, cinfo = eng.segment_gradcam(a, click[0], click[1], st)
                out[cam_img], out[cam_note] = cam, f"Grad-CAM of **{html.escape(cinfo['class'])}** over its segment ({cinfo['segment_area_share']:.1%} of the image), layer `{cinfo['layer']}`."
            else:
                out[cam_img], out[cam_note] = None, ""
        else:
            out[seg_view], out[seg_legend], out[seg_note] = None, "", HINTS["segmentation"]
            out[cam_img], out[cam_note] = None, ""
        sg = eng.spatial_gallery(a, st)
        out[gallery], out[spatial_note] = sg, "" if sg else HINTS["spatial"]
        gates = [g.name for g in eng.gate_records(a)]
        out[heat] = eng.gates_heatmap(a)
        out[block] = gr.update(choices=gates, value=gates[-1] if gates else None)
        out[bars] = eng.gate_bars(a, None) if gates else None
        out[gates_note] = "" if gates else HINTS["gates"]
        figs = eng.branch_figures(a) + eng.channel_affinity_figures(a)
        out[others] = [(render.figure_to_rgb(f), f.axes[0].get_title() or "") for f in figs]
        out[others_note] = "" if figs else HINTS["others"]
        stn_im, stn_tx = eng.stn_view(a)
        out[stn_img], out[stn_text], out[stn_note] = stn_im, stn_tx if stn_im is not None else "", "" if stn_im is not None else HINTS["stn"]
        out[table] = eng.modules_table(a)
        out[abl_layer] = gr.update(choices=list(a.records), value=list(a.records)[-1] if a.records else None)
        natives = eng.native_map_names(a) if a.task == "classification" else []
        out[native] = gr.update(choices=natives, value=natives[-1] if natives else None)
        out[cmp_note] = "" if natives else HINTS["compare"]
        out[nat_img] = out[att_img] = out[cmp_info] = None
        if natives and a.forward_ms < 300:  # cheap models: the default comparison is ready when the tab opens
            try:
                out[nat_img], out[att_img], out[cmp_info] = eng.compare(a, "Grad-CAM", natives[-1], st)
            except UserError as e:
                out[cmp_note] = str(e)
        elif natives:
            out[cmp_note] = f"Press **Compare**: an attribution needs a backward pass (the forward took {a.forward_ms:.0f} ms)."
        out[exp_file] = None
        return out

    def error_outputs(message: str) -> dict[Any, Any]:
        return {status: f"❌ {html.escape(message)}"}

    def current(sess: Session) -> tuple[str, str]:
        if sess.path is None or sess.model is None:
            raise UserError("image is missing: upload one or pick an example.")
        return sess.path, sess.model

    def on_input(file: Any, model_name: str, cmap_v: str, alpha_v: float, scale_v: str, thr: float, seg_a: float, stamp: float,
                 request: gr.Request, progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
        sess = session(request)
        stamp = float(stamp or 0)
        sess.latest = max(sess.latest, stamp)

        def downloading(done: int, total: int) -> None:
            progress((done, total or None), desc=f"downloading {model_name}", unit="B")

        try:
            path = _path(file if file is not None else sess.path)  # a model change re-analyses the current image
            a = get(path, model_name, downloading)
            out = fill(a, None, None, None, "mean", _style(cmap_v, alpha_v, scale_v, thr), seg_a)
        except UserError as e:
            out = error_outputs(str(e))
            path = None
        except Exception as e:  # logged; one line on the page
            log.exception("analysis failed")
            out = error_outputs(f"Something went wrong ({type(e).__name__}: {e}).")
            path = None
        if stamp < sess.latest:  # a newer input arrived meanwhile: this result is stale
            return {c: gr.skip() for c in all_outputs + [upload]}
        if path is not None:
            sess.path, sess.model = str(path), model_name
        out[input_state] = [sess.path, sess.model]
        if file is not None:
            out[upload] = None  # keep the drop zone ready; the image itself is shown in the view
            out[status] = f"{out.get(status, '')}  \nImage: `{html.escape(os.path.basename(str(path or file)))}`"
        return {c: out.get(c, gr.skip()) for c in all_outputs + [upload]}

    def pick_example(ex: Example) -> Callable[..., dict[Any, Any]]:
        """The click handler of one example button (a closure, so Gradio sees its real inputs and the request)."""

        def picked(cmap_v: str, alpha_v: float, scale_v: str, thr: float, seg_a: float, stamp: float, request: gr.Request) -> dict[Any, Any]:
            return show_example(ex, cmap_v, alpha_v, scale_v, thr, seg_a, stamp, request)

        return picked

    def show_example(ex: Example, cmap_v: str, alpha_v: float, scale_v: str, thr: float, seg_a: float, stamp: float, request: gr.Request | None) -> dict[Any, Any]:
        sess = session(request)
        stamp = float(stamp or 0)
        sess.latest = max(sess.latest, stamp)
        try:
            a = get(ex.path, ex.model)
            out = fill(a, ex.click, None, None, "mean", _style(cmap_v, alpha_v, scale_v, thr), seg_a)
        except UserError as e:
            out = error_outputs(str(e))
        if stamp < sess.latest:
            return {c: gr.skip() for c in all_outputs + [upload, model]}
        sess.path, sess.model = str(ex.path), ex.model
        out[input_state] = [sess.path, sess.model]
        out[upload] = None  # the drop zone stays ready for the visitor's own image
        out[model] = ex.model
        return {c: out.get(c, gr.skip()) for c in all_outputs + [upload, model]}

    def on_load(request: gr.Request) -> dict[Any, Any]:
        if not examples:
            return {c: gr.skip() for c in all_outputs + [upload, model]}
        return show_example(examples[0], "inferno", 0.55, "per map", 0.0, 0.5, 0.0, request)

    def on_click(evt: gr.SelectData, state: Any, lay: str, vw: str, hd: Any, cmap_v: str, alpha_v: float, scale_v: str, thr: float, seg_a: float,
                 stamp: float, request: gr.Request) -> dict[Any, Any]:
        sess = session(request)
        stamp = float(stamp or 0)
        sess.latest = max(sess.latest, stamp)
        try:
            xy = _click_xy(evt, state)
        except UserError as e:
            return {status: f"❌ {html.escape(str(e))}"}
        out = redraw(state, xy, lay, vw, hd, cmap_v, alpha_v, scale_v, thr, seg_a, request)
        if stamp < sess.latest:  # a newer click or input arrived meanwhile
            return {c: gr.skip() for c in click_outputs}
        return out

    def _click_xy(evt: gr.SelectData, state: Any) -> tuple[float, float] | None:
        if not state or not state[0]:
            return None
        a = get(state[0], state[1])
        x, y = evt.index
        # the view image is original | overlay | colour bar; a click on either image picks the same pixel
        k = a.display_scale
        w = a.hw[1] * k
        gap = 6
        if x >= w + gap:
            x = x - w - gap
        x, y = min(max(0.0, x / k), a.hw[1] - 1e-3), min(max(0.0, y / k), a.hw[0] - 1e-3)
        return float(x), float(y)

    def redraw(state: Any, xy: Any, lay: str, vw: str, hd: Any, cmap_v: str, alpha_v: float, scale_v: str, thr: float, seg_a: float,
               request: gr.Request | None = None) -> dict[Any, Any]:
        try:
            if not state or not state[0]:
                raise UserError("image is missing: upload one or pick an example.")
            a = get(state[0], state[1])
            click = tuple(xy) if xy else None
            out = fill(a, click, lay, vw, hd, _style(cmap_v, alpha_v, scale_v, thr), seg_a)  # type: ignore[arg-type]
        except UserError as e:
            out = error_outputs(str(e))
        return {c: out.get(c, gr.skip()) for c in click_outputs}

    # ================================================================== layout
    css = """
    #view_image img, .pixelated img, .example-btn img { image-rendering: pixelated; }
    .example-btn { flex-direction: column; font-size: 12px; }
    .example-btn img { width: 72px !important; height: 72px !important; max-height: 72px !important; object-fit: contain; margin: 0 !important; }
    .legend td, .legend th { padding: 2px 8px; }
    .note { color: #666; }
    @media (max-width: 760px) { #main_row { flex-direction: column-reverse; } }  /* phones: the result first, inputs below */
    """
    with gr.Blocks(title="attnviz", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(HEADER)
        input_state = gr.State(None)
        xy_state = gr.State(None)
        stamp = gr.Number(0, visible=False)
        with gr.Row(elem_id="main_row"):
            with gr.Column(scale=1, min_width=280):
                upload = gr.File(label="Upload an image (PNG, JPEG, WebP, GIF, BMP, TIFF)", file_types=["image"], type="filepath", elem_id="upload", height=110)
                model = gr.Dropdown(choices=cat.choices(), value=cat.default(), label="Model", elem_id="model")
                status = gr.Markdown("Loading the first example…", elem_id="status")
                label = gr.Label(num_top_classes=5, label="Prediction", elem_id="prediction")
                example_buttons: list[tuple[Any, Example]] = []
                for group in ("Zoo scenes (classification)", "Zoo scenes (segmentation)", "Photos", "Street and indoor scenes"):
                    items = [e for e in examples if e.group == group]
                    if not items:
                        continue
                    gid = "ex_" + "".join(c for c in group.lower() if c.isalnum())[:24]
                    with gr.Group(elem_id=gid, elem_classes=["examples"]):
                        gr.Markdown(f"**Examples: {group}**", elem_classes=["examples-title"])
                        for start in range(0, len(items), 3):
                            with gr.Row(equal_height=True):
                                for e in items[start : start + 3]:
                                    b = gr.Button(f"{e.title} · {e.model}", icon=str(e.path), size="sm", elem_classes=["example-btn"], min_width=80)
                                    example_buttons.append((b, e))
                with gr.Accordion("Display", open=False):
                    cmap = gr.Dropdown(list(render.CMAPS), value="inferno", label="Colormap")
                    alpha = gr.Slider(0, 1, value=0.55, step=0.05, label="Opacity of the attention overlay")
                    scale = gr.Radio(["per map", "shared"], value="per map", label="Colour scale")
                    threshold = gr.Slider(0, 0.95, value=0.0, step=0.05, label="Hide weights below this fraction of the maximum")
                with gr.Accordion("Models that are not available here", open=False):
                    gr.Markdown(cat.unavailable_markdown())
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Pixel attention", id="click"):
                        click_note = gr.Markdown("", elem_classes=["note"])
                        with gr.Row():
                            layer_dd = gr.Dropdown([], label="Layer", elem_id="layer", allow_custom_value=True)
                            view_dd = gr.Dropdown([], label="View", elem_id="view", allow_custom_value=True)
                            head_dd = gr.Dropdown(["mean"], value="mean", label="Head", visible=False, allow_custom_value=True)
                        view_img = gr.Image(label="Original | attention of the clicked pixel (click either image)", interactive=False, format="png",
                                            type="numpy", elem_id="view_image", buttons=["download", "fullscreen"])
                        answer = gr.Markdown("", elem_id="answer")
                        with gr.Accordion("Hover to explore (maps drawn in the browser)", open=False):
                            hover_html = hover.component()
                        qd_md = gr.Markdown("", elem_id="query_dependence")
                        with gr.Accordion("Every layer and head for this click", open=False):
                            grid = gr.Gallery(label="Same click, every layer / view / head", columns=3, height="auto", format="png", elem_id="click_grid")
                        with gr.Accordion("Raw numbers (JSON)", open=False):
                            details = gr.JSON(label="Click", elem_id="click_info")
                    with gr.Tab("Segmentation", id="segmentation"):
                        seg_note = gr.Markdown("", elem_classes=["note"])
                        seg_alpha = gr.Slider(0, 1, value=0.5, step=0.05, label="Opacity of the segmentation")
                        with gr.Row():
                            seg_view = gr.Image(label="Predicted segmentation", interactive=False, format="png", elem_id="seg_view")
                            seg_legend = gr.HTML("", elem_id="seg_legend")
                        cam_note = gr.Markdown("")
                        cam_img = gr.Image(label="Grad-CAM of the clicked pixel's class (captum)", interactive=False, format="png", elem_id="seg_cam")
                    with gr.Tab("Spatial masks", id="spatial"):
                        spatial_note = gr.Markdown("", elem_classes=["note"])
                        gallery = gr.Gallery(label="Spatial masks by block (CBAM / scSE / GC)", columns=3, format="png", height="auto")
                    with gr.Tab("Channel gates", id="gates"):
                        gates_note = gr.Markdown("", elem_classes=["note"])
                        heat = gr.Plot(label="Gates: blocks × channels")
                        with gr.Row():
                            block = gr.Dropdown([], label="Block", allow_custom_value=True)
                            sort = gr.Checkbox(True, label="Sort channels by gate")
                            image2 = gr.File(label="Second image to compare (optional)", file_types=["image"], type="filepath", height=90)
                        bars = gr.Plot(label="Gates of one block")
                    with gr.Tab("SK / DANet", id="others"):
                        others_note = gr.Markdown("", elem_classes=["note"])
                        others = gr.Gallery(label="SK branch weights and DANet channel affinity", columns=2, format="png", height="auto")
                    with gr.Tab("STN", id="stn"):
                        stn_note = gr.Markdown("", elem_classes=["note"])
                        stn_img = gr.Image(label="Input with sampling lattice and sampled region | rectified output", format="png", interactive=False)
                        stn_text = gr.Textbox(label="θ", lines=5)
                    with gr.Tab("Modules", id="modules"):
                        table = gr.Dataframe(headers=["layer", "kind", "module", "source", "shape", "contribution", "note"], label="Captured layers", wrap=True)
                        with gr.Row():
                            abl_layer = gr.Dropdown([], label="Layer to bypass (gate = 1 / γ = 0)", allow_custom_value=True)
                            abl_btn = gr.Button("Ablate")
                        abl_plot = gr.Plot(label="Logits before / after")
                        abl_info = gr.JSON(label="Change")
                    with gr.Tab("Attributions", id="compare"):
                        cmp_note = gr.Markdown("", elem_classes=["note"])
                        with gr.Row():
                            method = gr.Radio(["Grad-CAM", "IntegratedGradients", "Occlusion"], value="Grad-CAM", label="Attribution (captum)")
                            native = gr.Dropdown([], label="Native map", allow_custom_value=True)
                            cmp_btn = gr.Button("Compare")
                        with gr.Row():
                            nat_img = gr.Image(label="Native attention", format="png", interactive=False)
                            att_img = gr.Image(label="Attribution", format="png", interactive=False)
                        cmp_info = gr.JSON(label="Agreement")
                    with gr.Tab("Video", id="video"):
                        from . import video_tab

                        vt = video_tab.layout(cat, examples)
                    with gr.Tab("Export", id="export"):
                        gr.Markdown("One zip: PNG overlays, `maps.npz` with every raw map at feature resolution (and the segmentation: "
                                    "`segmentation.png` with class ids, logits), and `metadata.json` (model, layers, kinds, image size, click).")
                        exp_btn = gr.Button("Export")
                        exp_file = gr.File(label="Download")

        style_in = [cmap, alpha, scale, threshold, seg_alpha]
        all_outputs = [status, label, layer_dd, view_dd, head_dd, click_note, view_img, answer, details, grid, qd_md, hover_html, xy_state, seg_view,
                       seg_legend, seg_note, cam_img, cam_note, gallery, spatial_note, heat, block, bars, gates_note, others, others_note, stn_img,
                       stn_text, stn_note, table, abl_layer, native, cmp_note, nat_img, att_img, cmp_info, exp_file, input_state]
        click_outputs = [status, layer_dd, view_dd, head_dd, click_note, view_img, answer, details, grid, qd_md, hover_html, xy_state, cam_img, cam_note,
                         seg_view, seg_legend, seg_note, gallery]

        gr.on([upload.upload, model.input], on_input, [upload, model, *style_in, stamp], all_outputs + [upload], js=STAMP_JS,
              api_visibility="private", trigger_mode="always_last")
        for btn, ex in example_buttons:
            # one event per example (no shared selection state); always_last: a pick made while another runs is
            # never dropped, and the stamps drop whichever result is older
            btn.click(pick_example(ex), [*style_in, stamp], all_outputs + [upload, model], js=STAMP_JS,
                      api_visibility="private", trigger_mode="always_last")
        demo.load(on_load, None, all_outputs + [upload, model], api_visibility="private")
        # every click runs with its own coordinates ("multiple"); the stamps drop results overtaken by a newer click
        view_img.select(on_click, [input_state, layer_dd, view_dd, head_dd, *style_in, stamp], click_outputs, js=STAMP_JS,
                        api_visibility="private", trigger_mode="multiple")
        gr.on([layer_dd.input, view_dd.input, head_dd.input, cmap.change, alpha.release, scale.change, threshold.release, seg_alpha.release],
              redraw, [input_state, xy_state, layer_dd, view_dd, head_dd, *style_in], click_outputs, api_visibility="private")
        gr.on([block.input, sort.change, image2.upload], lambda st, *a: channel_gates(*(st or [None, None]), *a), [input_state, block, sort, image2],
              [heat, bars], api_visibility="private")
        abl_btn.click(lambda st, lay: ablation(*(st or [None, None]), lay), [input_state, abl_layer], [abl_plot, abl_info], api_visibility="private")
        cmp_btn.click(lambda st, m, n, c, a_, s: compare(*(st or [None, None]), m, n, c, a_, s), [input_state, method, native, cmap, alpha, scale],
                      [nat_img, att_img, cmp_info], api_visibility="private")

        def export_ui(st: Any, xy: Any, lay: str, c: str, a_: float, s: str) -> str:
            x, y = (xy or [None, None])[:2]
            return export(*(st or [None, None]), x, y, lay, c, a_, s)

        exp_btn.click(export_ui, [input_state, xy_state, layer_dd, cmap, alpha, scale], [exp_file], api_visibility="private")
        video_tab.wire(demo, vt, analyze_video, eng, cat)

        # named endpoints with plain arguments (HTTP API, gradio_client, MCP)
        api = gr.Group(visible=False)
        with api:
            for fn, n_in, outs, name in (
                (analyze, 2, [gr.Label(), gr.JSON()], "analyze"),
                (attention_at, 11, [gr.Image(format="png"), gr.JSON()], "attention_at"),
                (click_grid, 5, [gr.Gallery(format="png")], "click_grid"),
                (query_dependence, 3, [gr.JSON()], "query_dependence"),
                (segmentation, 3, [gr.Image(format="png"), gr.JSON()], "segmentation"),
                (segment_gradcam, 5, [gr.Image(format="png"), gr.JSON()], "segment_gradcam"),
                (spatial_masks, 5, [gr.Gallery(format="png")], "spatial_masks"),
                (channel_gates, 5, [gr.Plot(), gr.Plot()], "channel_gates"),
                (other_maps, 2, [gr.Gallery(format="png")], "other_maps"),
                (stn, 2, [gr.Image(format="png"), gr.Textbox()], "stn"),
                (modules, 2, [gr.Dataframe()], "modules"),
                (ablation, 3, [gr.Plot(), gr.JSON()], "ablate"),
                (compare, 7, [gr.Image(format="png"), gr.Image(format="png"), gr.JSON()], "compare"),
                (export, 8, [gr.File()], "export"),
            ):
                ins = _api_inputs(fn, n_in)
                gr.Button(visible=False).click(fn, ins, outs, api_name=name)
    demo.queue(default_concurrency_limit=int(os.environ.get("ATTNVIZ_CONCURRENCY", "2")), max_size=64)
    demo.engine = eng  # type: ignore[attr-defined]
    demo.attnviz_css = css  # type: ignore[attr-defined]
    return demo


def _api_inputs(fn: Callable[..., Any], n: int) -> list[gr.components.Component]:
    """Hidden input components for an endpoint, typed after its parameters (files, numbers, text)."""
    import inspect

    comps: list[gr.components.Component] = []
    for p in list(inspect.signature(fn).parameters.values())[:n]:
        name = p.name
        if name in ("image", "image2"):
            comps.append(gr.File(label=name, file_types=["image"], type="filepath"))
        elif name in ("x", "y", "alpha", "threshold", "opacity"):
            comps.append(gr.Number(label=name, value=p.default if p.default is not inspect.Parameter.empty else None))
        elif name == "sort":
            comps.append(gr.Checkbox(label=name, value=True))
        else:
            default = p.default if p.default is not inspect.Parameter.empty else None
            comps.append(gr.Textbox(label=name, value=default))
    return comps


def _default_click(a: Analysis) -> tuple[float, float]:
    """The most telling first click: the centre of the largest predicted object (segmentation), else the image centre."""
    h, w = a.hw
    if a.task == "segmentation":
        labels = a.labels()
        fg = labels > 0
        if fg.any():
            counts = np.bincount(labels[fg].ravel())
            cls = int(counts.argmax())
            ys, xs = np.nonzero(labels == cls)
            i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
            return float(xs[i]) + 0.5, float(ys[i]) + 0.5
    return w / 2, h / 2


def _is_photo(a: Analysis) -> bool:
    """Whether the image looks unlike our synthetic scenes (larger than them), to warn about zoo models on photos."""
    return max(a.hw) > 160


def launch_kwargs() -> dict[str, Any]:
    """Keyword arguments of ``demo.launch`` shared by ``app.py`` and ``attnviz serve``."""
    kw: dict[str, Any] = {"ssr_mode": False}
    try:
        import mcp  # noqa: F401  (gradio[mcp] installed)

        kw["mcp_server"] = True
    except ImportError:
        pass
    return kw


__all__ = ["build_demo", "launch_kwargs"]
