"""The Gradio app: every view of :class:`~attnviz.ui.engine.Engine` as a tab and a named endpoint.

Each user action is an endpoint with plain arguments (``api_name``), so ``gradio_client`` can do
everything the page does, e.g. ``client.predict(handle_file("cat.png"), 120, 80, api_name="/attention_at")``.
Errors the user can fix become ``gr.Error`` messages; anything else is logged on the server and
reported in one line, never as a stack trace.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from torch import nn

from .. import render
from ..maps import ClickLayer, click_layers
from ..models.inputs import pick_device
from .engine import Analysis, Catalog, Engine, Style, UserError, work_dir

log = logging.getLogger("attnviz")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HEADER = """# attnviz — look inside CNN attention modules
Upload an image (or pick an example), choose a model, and see what its attention modules do:
channel gates, spatial masks, Non-Local / DANet / BotNet rows and CCNet criss-cross reach for any
pixel you click, STN sampling grids, ablations, and captum attributions beside the native maps.
"""

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
    """A gr.File / gradio_client value → what :func:`load_image` takes."""
    if image is None:
        raise UserError("No image yet: upload one or pick an example.")
    if isinstance(image, dict):
        image = image.get("path") or image.get("name")
    return getattr(image, "name", image)


def _style(cmap: str, alpha: float, scale: str) -> Style:
    return Style(cmap or "inferno", float(alpha if alpha is not None else 0.55), scale == "shared")


def _head(head: Any) -> int | None:
    if head in (None, "", "mean"):
        return None
    try:
        return int(head)
    except (TypeError, ValueError):
        raise UserError(f"Head must be 'mean' or a head number, got {head!r}.") from None


def _examples(cat: Catalog) -> list[list[str]]:
    """Example rows (image, model): zoo scenes with zoo models, photos with an available ImageNet model."""
    rows: list[list[str]] = []
    if not EXAMPLES.is_dir():
        return rows
    ok = {n for n, e in cat.entries.items() if e.available}
    zoo = [n for n in ("cbam_resnet", "nonlocal_resnet", "ccnet_resnet", "stn_resnet", "danet_resnet", "scse_resnet") if n in ok] or [cat.default()]
    for i, p in enumerate(sorted(EXAMPLES.glob("scene_*.png"))):
        rows.append([str(p), zoo[i % len(zoo)]])
    imagenet = [n for n, e in cat.entries.items() if e.available and e.source in ("timm", "torchvision")]
    for p in sorted(EXAMPLES.glob("photo_*.png")):
        rows.append([str(p), imagenet[0] if imagenet else cat.default()])
    return rows


def _view_head(cl: ClickLayer | None) -> tuple[Any, Any]:
    """Dropdown updates for a click layer's views (default selected) and heads ("mean" + each head)."""
    if cl is None:
        return gr.update(choices=[], value=None), gr.update(choices=["mean"], value="mean")
    heads = ["mean"] + ([str(i) for i in range(cl.heads)] if cl.heads > 1 else [])
    return gr.update(choices=list(cl.views), value=cl.default_view), gr.update(choices=heads, value="mean")


def build_demo(models: Mapping[str, nn.Module | Callable[[], nn.Module]] | None = None, include_registry: bool = True, engine: Engine | None = None) -> gr.Blocks:
    """The attnviz app.

    Args:
        models: Extra models by name (modules or factories); their attention is found by capture
            without any registration. A ``model.card`` dict may give ``input_size``, ``mean``, ``std``
            and ``class_names`` (defaults: ImageNet preprocessing at 224²).
        include_registry: Also offer the attnviz zoo and the ImageNet models of the registry.
        engine: Use this engine instead of building one (tests).
    """
    eng = engine or Engine(Catalog.from_registry(pick_device(), models, include_registry))
    cat = eng.catalog

    def get(image: Any, model_name: str) -> Analysis:
        return gpu(eng.analyze)(_path(image), model_name)

    # ------------------------------------------------------------------ endpoints (plain arguments)
    @_guard
    def analyze(image: Any, model_name: str) -> tuple[dict[str, float], dict[str, Any]]:
        """Run the model once with capture on: top-5 prediction and a summary of every captured layer."""
        a = get(image, model_name)
        return a.top(5), eng.summary(a)

    @_guard
    def attention_at(image: Any, x: float, y: float, layer: str | None = None, view: str | None = None, head: Any = "mean", model_name: str | None = None, cmap: str = "inferno", alpha: float = 0.55, scale: str = "per map") -> tuple[np.ndarray, dict[str, Any]]:
        """The attention of the pixel (x, y) (displayed-image pixels) in a click layer, overlaid on the image."""
        if x is None or y is None:
            raise UserError("Click on the image to choose a pixel.")
        a = get(image, model_name or cat.default())
        rgb, info, _ = eng.attention_at(a, float(x), float(y), layer or None, view or None, _head(head), _style(cmap, alpha, scale))
        return rgb, info

    @_guard
    def spatial_masks(image: Any, model_name: str, cmap: str = "inferno", alpha: float = 0.55, scale: str = "per map") -> list[tuple[np.ndarray, str]]:
        """Every spatial mask (CBAM, scSE, GC, generic) overlaid on the image."""
        return eng.spatial_gallery(get(image, model_name), _style(cmap, alpha, scale))

    @_guard
    def channel_gates(image: Any, model_name: str, block: str | None = None, sort: bool = True, image2: Any = None) -> tuple[Any, Any]:
        """Blocks × channels gate heatmap, and one block's gate bars (beside a second image's, if given)."""
        a = get(image, model_name)
        other = get(image2, model_name) if image2 is not None else None
        return eng.gates_heatmap(a), eng.gate_bars(a, block or None, bool(sort), other)

    @_guard
    def other_maps(image: Any, model_name: str) -> list[tuple[np.ndarray, str]]:
        """SK branch weights and DANet channel affinity, as images."""
        a = get(image, model_name)
        figs = eng.branch_figures(a) + eng.channel_affinity_figures(a)
        return [(render.figure_to_rgb(f), f.axes[-1].get_title() or "") for f in figs]

    @_guard
    def stn(image: Any, model_name: str) -> tuple[np.ndarray | None, str]:
        """STN: warped lattice and sampled quadrilateral on the input, the rectified output beside it, θ."""
        return eng.stn_view(get(image, model_name))

    @_guard
    def modules(image: Any, model_name: str) -> list[list[Any]]:
        """Every captured layer: kind, module, source, shape, contribution ‖out−x‖/‖x‖ and a note."""
        return eng.modules_table(get(image, model_name))

    @_guard
    def ablation(image: Any, model_name: str, layer: str) -> tuple[Any, dict[str, Any]]:
        """Bypass one layer (gate = 1 / γ = 0) and show the change in logits."""
        if not layer:
            raise UserError("Choose a layer to ablate.")
        return eng.ablate(get(image, model_name), layer)

    @_guard
    def compare(image: Any, model_name: str, method: str = "Grad-CAM", native: str | None = None, cmap: str = "inferno", alpha: float = 0.55, scale: str = "per map") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """A captum attribution beside a native map, with Spearman and top-10% IoU agreement."""
        return eng.compare(get(image, model_name), method, native or None, _style(cmap, alpha, scale))

    @_guard
    def export(image: Any, model_name: str, x: float | None = None, y: float | None = None, layer: str | None = None, cmap: str = "inferno", alpha: float = 0.55, scale: str = "per map") -> str:
        """A zip: PNG overlays, NPZ of every raw map at feature resolution, JSON metadata."""
        a = get(image, model_name)
        click = (float(x), float(y)) if x is not None and y is not None else None
        return str(eng.export(a, click, layer or None, _style(cmap, alpha, scale)))

    @_guard
    def analyze_video(video: Any, model_name: str, kind: str = "spatial", layer: str | None = None, x: float | None = None, y: float | None = None, stride: int = 1, max_frames: int = 300, progress: gr.Progress = gr.Progress()) -> tuple[str, Any, Any, str, str, dict[str, Any]]:
        """Render one attention map over every frame: H.264 MP4, plots over time, NPZ and CSV."""
        from ..video import MAX_FRAMES, VideoError
        from ..video import analyze_video as run_video

        path = _path(video)
        model = cat.get(model_name or cat.default())
        cap_frames = int(min(max(1, int(max_frames or MAX_FRAMES)), MAX_FRAMES))
        out = work_dir("videos") / f"attnviz_{model_name}_{kind}_{abs(hash((str(path), model_name, kind, layer, x, y, stride))) % 10**10}.mp4"
        query = (float(x), float(y)) if x is not None and y is not None and kind == "query" else None

        def report(done: int, total: int, stage: str) -> None:
            progress((done, total or None), desc=stage, unit="frames")

        lock = eng.model_lock(model_name)
        try:
            with lock:
                res = gpu(run_video)(path, model, kind=kind or "spatial", layer=layer or None, query=query, out=out,
                                     stride=int(stride or 1), max_frames=cap_frames, progress=report)
        except VideoError as e:
            raise UserError(str(e)) from None
        maps = np.load(res.npz)["maps"]
        times = np.array([r["time"] for r in res.rows])
        conf = render.timeline(times, {"confidence": np.array([r["confidence"] for r in res.rows])}, "top-1 probability", "Prediction confidence")
        if kind == "channel":
            over = render.series_heatmap(maps.T, times, "channel", f"{res.layer}: gates over time")
        elif kind == "grid":
            over = render.timeline(times, {k: np.array([r[k] for r in res.rows]) for k in ("box_x0", "box_y0", "box_x1", "box_y1")}, "pixels", f"{res.layer}: STN box over time")
        else:
            over = render.timeline(times, {k: np.array([r[k] for r in res.rows]) for k in ("peak_x", "peak_y")}, "pixels", f"{res.layer}: peak of the map over time")
        info = {"frames": res.frames, "fps": round(res.fps, 3), "layer": res.layer, "kind": kind, "colour_scale": res.vrange, "notes": res.notes,
                "first_rows": res.rows[:3]}
        return str(res.video), over, conf, str(res.npz), str(res.csv), info

    @_guard
    def video_frame(video: Any, index: int = 0) -> np.ndarray:
        """One frame of a clip (to click the query point on)."""
        from ..video import VideoError, iter_frames

        try:
            for i, (_, _, f) in enumerate(iter_frames(_path(video), 1, max_frames=10**6)):
                if i >= int(index or 0):
                    return f
        except VideoError as e:
            raise UserError(str(e)) from None
        raise UserError(f"The clip has fewer than {int(index) + 1} frames.")

    def video_info(video: Any) -> Any:
        from ..video import VideoError, probe

        if video is None:
            return gr.update()
        try:
            _, n, _, _ = probe(_path(video))
        except VideoError:
            return gr.update()
        return gr.update(maximum=max(1, n - 1) if n else 300, value=0)

    # ------------------------------------------------------------------ UI-only glue
    @_guard
    def fill(image: Any, model_name: str, cmap: str, alpha: float, scale: str) -> tuple[Any, ...]:
        a = get(image, model_name)
        layers = eng.click_choices(a)
        gates = [g.name for g in eng.gate_records(a)]
        natives = eng.native_map_names(a)
        view_update, head_update = _view_head(click_layers(a.records)[layers[-1]] if layers else None)
        notes = " · ".join(a.notes)
        kinds = ", ".join(f"{v} {k}" for k, v in eng.summary(a)["kinds"].items()) or "no attention layers"
        status = f"**{a.model_name}**: {kinds}." + (f"  \n_{notes}_" if notes else "")
        click_hint = a.image if layers else None
        stn_img, stn_text = eng.stn_view(a)
        figs = eng.branch_figures(a) + eng.channel_affinity_figures(a)
        return (
            status,
            click_hint,
            gr.update(choices=layers, value=layers[-1] if layers else None),
            view_update,
            head_update,
            eng.spatial_gallery(a, _style(cmap, alpha, scale)),
            eng.gates_heatmap(a),
            gr.update(choices=gates, value=gates[-1] if gates else None),
            eng.gate_bars(a, None) if gates else None,
            [(render.figure_to_rgb(f), f.axes[-1].get_title() or "") for f in figs],
            stn_img, stn_text,
            eng.modules_table(a),
            gr.update(choices=list(a.records), value=list(a.records)[-1] if a.records else None),
            gr.update(choices=natives, value=natives[-1] if natives else None),
            None, None,
        )

    def to_xy(evt: gr.SelectData) -> tuple[float, float]:
        x, y = evt.index
        return float(x), float(y)

    def on_view_change(layer: str | None, image: Any, model_name: str) -> Any:
        if not layer or image is None:
            return gr.update(), gr.update()
        try:
            cl = click_layers(get(image, model_name).records)[layer]
        except Exception:
            return gr.update(), gr.update()
        return _view_head(cl)

    # ------------------------------------------------------------------ layout
    with gr.Blocks(title="attnviz", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(HEADER)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.File(label="Image (PNG, JPEG, WebP, GIF, BMP, TIFF)", file_types=["image"], type="filepath", elem_id="upload")
                model = gr.Dropdown(choices=cat.choices(), value=cat.default(), label="Model", elem_id="model")
                run_btn = gr.Button("Analyze", variant="primary", elem_id="analyze")
                with gr.Accordion("Display", open=False):
                    cmap = gr.Dropdown(list(render.CMAPS), value="inferno", label="Colormap")
                    alpha = gr.Slider(0, 1, value=0.55, step=0.05, label="Opacity")
                    scale = gr.Radio(["per map", "shared"], value="per map", label="Colour scale")
                with gr.Accordion("Unavailable models", open=False):
                    gr.Markdown(cat.unavailable_markdown())
            with gr.Column(scale=2):
                status = gr.Markdown("Upload an image or pick an example below, then **Analyze**.", elem_id="status")
                label = gr.Label(num_top_classes=5, label="Prediction (top 5)")
                summary = gr.JSON(label="Captured layers", visible=False)
        with gr.Tabs():
            with gr.Tab("Click attention"):
                gr.Markdown("Click a pixel: its Non-Local / DANet / BotNet row, or its CCNet loop-1 cross, loop-2 cross and two-hop reach. Clicks reuse the cached forward pass.")
                with gr.Row():
                    layer = gr.Dropdown([], label="Layer", elem_id="layer", allow_custom_value=True)
                    view = gr.Dropdown([], label="View", allow_custom_value=True)
                    head = gr.Dropdown(["mean"], value="mean", label="Head", allow_custom_value=True)
                with gr.Row():
                    click_img = gr.Image(label="Click on the image", interactive=False, format="png", type="numpy", elem_id="click_image")
                    click_info = gr.JSON(label="Query", elem_id="click_info")
                cx = gr.Number(label="x", visible=False)
                cy = gr.Number(label="y", visible=False)
            with gr.Tab("Spatial masks"):
                gallery = gr.Gallery(label="Spatial masks by block (CBAM / scSE / GC)", columns=4, format="png", height="auto")
            with gr.Tab("Channel gates"):
                heat = gr.Plot(label="Gates: blocks × channels")
                with gr.Row():
                    block = gr.Dropdown([], label="Block", allow_custom_value=True)
                    sort = gr.Checkbox(True, label="Sort channels by gate")
                    image2 = gr.File(label="Second image to compare (optional)", file_types=["image"], type="filepath")
                bars = gr.Plot(label="Gates of one block")
            with gr.Tab("SK / DANet"):
                others = gr.Gallery(label="SK branch weights and DANet channel affinity", columns=2, format="png", height="auto")
            with gr.Tab("STN"):
                stn_img = gr.Image(label="Input with sampling lattice and sampled region | rectified output", format="png", interactive=False)
                stn_text = gr.Textbox(label="θ", lines=5)
            with gr.Tab("Modules & ablation"):
                table = gr.Dataframe(headers=["layer", "kind", "module", "source", "shape", "contribution", "note"], label="Captured layers", wrap=True)
                with gr.Row():
                    abl_layer = gr.Dropdown([], label="Layer to bypass (gate = 1 / γ = 0)", allow_custom_value=True)
                    abl_btn = gr.Button("Ablate")
                abl_plot = gr.Plot(label="Logits before / after")
                abl_info = gr.JSON(label="Change")
            with gr.Tab("Compare with attributions"):
                with gr.Row():
                    method = gr.Radio(["Grad-CAM", "IntegratedGradients", "Occlusion"], value="Grad-CAM", label="Attribution (captum)")
                    native = gr.Dropdown([], label="Native map", allow_custom_value=True)
                    cmp_btn = gr.Button("Compare")
                with gr.Row():
                    nat_img = gr.Image(label="Native attention", format="png", interactive=False)
                    att_img = gr.Image(label="Attribution", format="png", interactive=False)
                cmp_info = gr.JSON(label="Agreement")
            with gr.Tab("Video"):
                gr.Markdown("Upload a clip (mp4, webm, mov, gif). One colour scale over the whole clip, so brightness means the same in every frame. For `query` maps, pick a frame and click the query point on it.")
                with gr.Row():
                    vid_in = gr.File(label="Clip", file_types=[".mp4", ".webm", ".mov", ".gif", ".mkv", ".avi"], type="filepath", elem_id="video_upload")
                    with gr.Column():
                        vid_kind = gr.Dropdown(["spatial", "channel", "grid", "query"], value="spatial", label="Kind (grid = STN)", elem_id="video_kind")
                        vid_layer = gr.Dropdown([], label="Layer (empty: the deepest of that kind)", allow_custom_value=True)
                        with gr.Row():
                            vid_stride = gr.Number(1, precision=0, label="Frame stride", minimum=1)
                            vid_max = gr.Number(300, precision=0, label="Frame cap", minimum=1, maximum=900)
                with gr.Row():
                    with gr.Column():
                        vid_slider = gr.Slider(0, 300, value=0, step=1, label="Frame for the query point")
                        vid_frame = gr.Image(label="Click the query point", interactive=False, type="numpy", format="png", elem_id="video_frame")
                        with gr.Row():
                            vx = gr.Number(None, label="query x")
                            vy = gr.Number(None, label="query y")
                    vid_out = gr.Video(label="Overlay", elem_id="video_out", autoplay=False)
                vid_btn = gr.Button("Process video", variant="primary", elem_id="video_button")
                with gr.Row():
                    vid_over = gr.Plot(label="Over time")
                    vid_conf = gr.Plot(label="Prediction confidence")
                with gr.Row():
                    vid_npz = gr.File(label="Per-frame maps (NPZ)")
                    vid_csv = gr.File(label="Per-frame table (CSV)")
                vid_info = gr.JSON(label="Run", elem_id="video_info")
            with gr.Tab("Export"):
                gr.Markdown("One zip: PNG overlays, `maps.npz` with every raw map at feature resolution, and `metadata.json` (model, layers, kinds, image size, click).")
                exp_btn = gr.Button("Export")
                exp_file = gr.File(label="Download")
        ex = _examples(cat)
        if ex:
            gr.Examples(ex, inputs=[image, model], label="Examples (scenes for the zoo, photos for ImageNet models)")

        style_in = [cmap, alpha, scale]
        fill_out = [status, click_img, layer, view, head, gallery, heat, block, bars, others, stn_img, stn_text, table, abl_layer, native, click_info, exp_file]
        ev = run_btn.click(analyze, [image, model], [label, summary], api_name="analyze")
        ev.success(fill, [image, model, *style_in], fill_out, api_visibility="private")
        def auto_analyze(img: Any, model_name: str) -> Any:
            if img is None:  # cleared: keep the page as it is
                raise gr.Error("No image yet: upload one or pick an example.", visible=False, print_exception=False)
            return analyze(img, model_name)

        # uploads and example picks analyse at once (the cache makes a repeat free)
        gr.on([image.change, model.change], auto_analyze, [image, model], [label, summary], api_visibility="private").success(
            fill, [image, model, *style_in], fill_out, api_visibility="private")
        click_img.select(to_xy, None, [cx, cy], api_visibility="private").then(
            attention_at, [image, cx, cy, layer, view, head, model, *style_in], [click_img, click_info], api_name="attention_at")
        layer.input(on_view_change, [layer, image, model], [view, head], api_visibility="private")
        gr.on([cmap.change, alpha.release, scale.change], spatial_masks, [image, model, *style_in], [gallery], api_name="spatial_masks")

        def restyle_click(img: Any, x: float | None, y: float | None, lay: str | None, vw: str | None, hd: Any, model_name: str, cm: str, al: float, sc: str) -> Any:
            if img is None or x is None or y is None:  # nothing clicked yet: nothing to redraw
                return gr.update(), gr.update()
            return attention_at(img, x, y, lay, vw, hd, model_name, cm, al, sc)

        gr.on([cmap.change, alpha.release, scale.change, view.input, head.input], restyle_click,
              [image, cx, cy, layer, view, head, model, *style_in], [click_img, click_info], api_visibility="private")
        gr.on([block.input, sort.change, image2.upload], channel_gates, [image, model, block, sort, image2], [heat, bars], api_name="channel_gates")
        abl_btn.click(ablation, [image, model, abl_layer], [abl_plot, abl_info], api_name="ablate")
        cmp_btn.click(compare, [image, model, method, native, *style_in], [nat_img, att_img, cmp_info], api_name="compare")
        exp_btn.click(export, [image, model, cx, cy, layer, *style_in], [exp_file], api_name="export")
        vid_in.upload(video_info, [vid_in], [vid_slider], api_visibility="private").then(video_frame, [vid_in, vid_slider], [vid_frame], api_visibility="private")
        vid_slider.release(video_frame, [vid_in, vid_slider], [vid_frame], api_name="video_frame")
        vid_frame.select(to_xy, None, [vx, vy], api_visibility="private").success(lambda: "query", None, [vid_kind], api_visibility="private")
        vid_btn.click(analyze_video, [vid_in, model, vid_kind, vid_layer, vx, vy, vid_stride, vid_max], [vid_out, vid_over, vid_conf, vid_npz, vid_csv, vid_info], api_name="analyze_video")
        # endpoints without a button of their own (the page fills these views after analyze)
        for fn, ins, outs, name in (
            (other_maps, [image, model], [others], "other_maps"),
            (stn, [image, model], [stn_img, stn_text], "stn"),
            (modules, [image, model], [table], "modules"),
        ):
            hidden = gr.Button(visible=False)
            hidden.click(fn, ins, outs, api_name=name)
    demo.queue(default_concurrency_limit=int(os.environ.get("ATTNVIZ_CONCURRENCY", "2")), max_size=64)
    demo.engine = eng  # type: ignore[attr-defined]
    return demo
