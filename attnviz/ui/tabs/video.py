"""The Video tab: its own model choice, kinds valid for that model, a query picked on a frame, cancel.

The job runs in a worker thread; the event handler is a generator that reports progress and keeps the
worker alive only while Gradio keeps pulling it. Cancel (the button, or a closed tab) stops pulling;
the worker notices before its next frame, deletes its partial files, and the queue slot is free at once.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import Any

import gradio as gr
import numpy as np

from ... import render
from ...analysis import Catalog, Engine, UserError, frames
from ...analysis.workdirs import unique_path, work_dir
from ...video import MAX_FRAMES, VideoCancelled, VideoError, iter_frames, probe
from ...video import analyze_video as run_video
from ..common import Endpoint, Tab, ViewState, gpu
from ..examples import EXAMPLES

STALE_S = 3.0  # the worker stops when nobody pulled progress for this long (cancelled, or the client is gone)


class VideoTab(Tab):
    """A clip, its own model choice, the kinds valid for that model, a query picked on a frame, run and cancel."""

    title, id = "Video", "video"

    def build(self) -> None:
        cat = self.shared.engine.catalog
        clips = sorted(EXAMPLES.glob("clip_*.mp4"))
        gr.Markdown("Pick an example clip or upload one (mp4, webm, mov, gif). The whole clip shares **one colour scale** (burned in as a "
                    "colour bar), so brightness means the same in every frame. For a query map, pick a frame with the slider and click the query point.")
        with gr.Row():
            with gr.Column():
                self.clip = gr.File(label="Clip", file_types=[".mp4", ".webm", ".mov", ".gif", ".mkv", ".avi"], type="filepath", elem_id="video_upload",
                                    height=110)
                if clips:
                    gr.Examples([[str(c)] for c in clips], inputs=[self.clip], label="Example clips")
                self.model = gr.Dropdown(choices=cat.choices(), value=_video_default(cat), label="Model for the video", elem_id="video_model")
                self.kind = gr.Dropdown([], label="Map", elem_id="video_kind", allow_custom_value=True)
                self.layer = gr.Dropdown([], label="Layer (empty: the deepest of that kind)", allow_custom_value=True)
                with gr.Row():
                    # not precision=0: Gradio's integer rounding would turn a NaN from an API client into an unreadable error
                    self.stride = gr.Number(1, step=1, label="Frame stride (≥ 1)")
                    self.max_frames = gr.Number(300, step=1, label="Frame cap (1–900)")
                self.note = gr.Markdown("", elem_id="video_note")
            with gr.Column():
                self.slider = gr.Slider(0, 300, value=0, step=1, label="Frame for the query point")
                self.frame = gr.Image(label="Click the query point", interactive=False, type="numpy", format="png", elem_id="video_frame")
                with gr.Row():
                    self.x = gr.Number(None, label="query x (frame pixels)", elem_id="video_x")
                    self.y = gr.Number(None, label="query y (frame pixels)", elem_id="video_y")
        self._results_layout()

    def _results_layout(self) -> None:
        with gr.Row():
            self.run_btn = gr.Button("Process video", variant="primary", elem_id="video_button")
            self.cancel_btn = gr.Button("Cancel", elem_id="video_cancel")
        self.video = gr.Video(label="Overlay (with colour bar)", elem_id="video_out", autoplay=False)
        with gr.Row():
            self.over = gr.Plot(label="Over time")
            self.conf = gr.Plot(label="Prediction over time")
        with gr.Row():
            self.npz = gr.File(label="Per-frame maps (NPZ)")
            self.csv = gr.File(label="Per-frame table (CSV)")
        self.info = gr.Markdown("", elem_id="video_info")
        with gr.Accordion("Raw numbers (JSON)", open=False):
            self.details = gr.JSON(label="Video", elem_id="video_details")

    outputs: list[Any] = []  # the tab keeps its own state: a new image does not touch it
    def fill(self, a: Any, v: ViewState) -> dict[Any, Any]:
        return {}

    def endpoints(self) -> list[Endpoint]:
        return []  # analyze_video and video_frame are registered by wire() (analyze_video streams progress)

    def on_model(self, name: str) -> tuple[Any, Any]:
        try:
            have, note = frames.kinds_for(self.shared.engine, name)
        except UserError as e:
            return gr.update(choices=[], value=None), f"**Error:** {html.escape(str(e))}"
        return gr.update(choices=have, value=have[0] if have else None), note

    @staticmethod
    def probe_clip(clip: Any) -> tuple[Any, Any, Any, Any]:
        if not clip:
            return gr.update(), None, None, None
        try:
            _, n, w, h = probe(_clip_path(clip))
        except VideoError as e:
            return gr.update(), None, None, f"**Error:** {html.escape(str(e))}"
        return (gr.update(maximum=max(1, n - 1) if n else 300, value=0), w / 2, h / 2,
                f"Clip: {w}×{h}, about {n} frames. The query starts at the centre; click the frame to move it.")

    @staticmethod
    def show_frame(clip: Any, index: int, x: float | None, y: float | None) -> Any:
        if not clip:
            return None
        try:
            for i, (_, _, f) in enumerate(iter_frames(_clip_path(clip), 1, max_frames=10**6)):
                if i >= int(index or 0):
                    return render.draw_point(f, x, y) if x is not None and y is not None else f
        except VideoError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return None

    def wire(self) -> None:
        """Events of the tab, and its two endpoints (``analyze_video`` streams progress, ``video_frame``)."""
        frame_in = [self.clip, self.slider, self.x, self.y]
        self.model.change(self.on_model, [self.model], [self.kind, self.note], api_visibility="private")
        self.shared.demo.load(self.on_model, [self.model], [self.kind, self.note], api_visibility="private")
        self.clip.change(self.probe_clip, [self.clip], [self.slider, self.x, self.y, self.note], api_visibility="private").then(
            self.show_frame, frame_in, [self.frame], api_visibility="private")
        self.slider.release(self.show_frame, frame_in, [self.frame], api_visibility="private")
        self.frame.select(_to_xy, None, [self.x, self.y], api_visibility="private").then(self.show_frame, frame_in, [self.frame],
                                                                                          api_visibility="private")
        ev = self.run_btn.click(self.analyze_video, [self.clip, self.model, self.kind, self.layer, self.x, self.y, self.stride, self.max_frames],
                                [self.video, self.over, self.conf, self.npz, self.csv, self.info, self.details], api_name="analyze_video")
        self.cancel_btn.click(lambda: "Cancelled.", None, [self.info], cancels=[ev], api_visibility="private")
        gr.Button(visible=False).click(self.video_frame, [gr.File(visible=False), gr.Number(visible=False)], [gr.Image(visible=False, format="png")],
                                       api_name="video_frame")

    def video_frame(self, video: Any, index: int = 0) -> np.ndarray:
        """One frame of a clip (to pick the query point on).

        Args:
            video: The clip.
            index: Frame index (0 = first).
        """
        i = _whole(index, 0)
        if i is None or i < 0:
            raise gr.Error(f"index must be a whole number ≥ 0; got {index!r}.", print_exception=False)
        out = self.show_frame(video, i, None, None)
        if out is None:
            raise gr.Error("video is missing: upload a clip.", print_exception=False)
        return out

    def analyze_video(self, video: Any, model_name: str, kind: str = "", layer: str | None = None, x: float | None = None, y: float | None = None,
                      stride: int = 1, max_frames: int = 300, progress: gr.Progress = gr.Progress()) -> Any:
        """Render one attention map over every frame of a clip: H.264 MP4 with a colour bar, plots over time, NPZ and CSV.

        Args:
            video: The clip (mp4, webm, mov, gif).
            model_name: The model.
            kind: spatial / channel / grid (STN) / query (click layers) / segmentation / cls (class token) / rollout; empty = the
                first kind the model has.
            layer: A layer of that kind (default: the deepest).
            x: Query column (source-frame pixels) for kind=query.
            y: Query row (source-frame pixels) for kind=query.
            stride: Use every n-th frame (≥ 1).
            max_frames: Refuse clips that would use more frames (1–900).
        """
        yield from run(self.shared.engine, gpu, video, model_name or self.shared.engine.catalog.default(), kind, layer, x, y, stride, max_frames, progress)


def _to_xy(evt: gr.SelectData) -> tuple[float, float]:
    px, py = evt.index
    return float(px), float(py)


def _video_default(cat: Catalog) -> str:
    ok = cat.available_names()
    for name in ("ccnet_seg", "cbam_resnet", "ccnet_resnet"):
        if name in ok:
            return name
    return cat.default()


def _clip_path(clip: Any) -> str:
    if isinstance(clip, dict):
        clip = clip.get("path") or clip.get("name")
    return str(getattr(clip, "name", clip))


def _job_args(stride: Any, max_frames: Any, x: Any, y: Any) -> tuple[int, int, tuple[float, float] | None]:
    """The endpoint's raw stride, frame cap and query as checked values (a one-line gr.Error otherwise)."""

    def fail(msg: str) -> Any:
        raise gr.Error(msg, print_exception=False)

    stride_i, cap_i = _whole(stride, 1), _whole(max_frames, 300)
    if stride_i is None or cap_i is None:
        fail(f"stride and max_frames must be whole numbers; got stride={stride!r}, max_frames={max_frames!r}.")
    if stride_i < 1:
        fail(f"stride must be ≥ 1; got {stride!r}.")
    if not 1 <= cap_i <= MAX_FRAMES:
        fail(f"max_frames must be in [1, {MAX_FRAMES}]; got {max_frames!r}.")
    query = None
    if x not in (None, "") and y not in (None, ""):
        try:
            query = (float(x), float(y))
        except (TypeError, ValueError):
            fail(f"x and y must be numbers (frame pixels); got x={x!r}, y={y!r}.")
        if not all(np.isfinite(query)):
            fail(f"x and y must be finite; got x={x!r}, y={y!r}.")
    return stride_i, cap_i, query


def _whole(v: Any, default: int) -> int | None:
    """A whole number from a page or API value (None for NaN, ±inf, fractions and text)."""
    if v in (None, ""):
        return default
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if np.isfinite(f) and f == int(f) else None


def run(eng: Engine, gpu: Callable[..., Any], video: Any, model_name: str, kind: str, layer: str | None, x: Any, y: Any, stride: Any,
        max_frames: Any, progress: Any) -> Any:
    """The ``analyze_video`` endpoint as a generator: progress while the worker runs; stops it when no longer pulled."""
    def fail(msg: str) -> Any:
        raise gr.Error(msg, print_exception=False)

    if not video:
        fail("video is missing: upload a clip or pick an example clip.")
    try:
        model = eng.catalog.get(model_name)
        entry = eng.catalog.entry(model_name)
    except UserError as e:
        fail(str(e))
    stride_i, cap_i, query = _job_args(stride, max_frames, x, y)
    out = unique_path(work_dir("videos"), f"attnviz_{model_name}_{kind or 'auto'}", ".mp4")
    state: dict[str, Any] = {"done": 0, "total": 0, "stage": "starting"}
    pulled = [time.monotonic()]
    stop = threading.Event()

    def report(done: int, total: int, stage: str) -> None:
        state.update(done=done, total=total, stage=stage)

    def should_stop() -> bool:
        return stop.is_set() or time.monotonic() - pulled[0] > STALE_S

    def work() -> None:
        try:
            with eng.model_lock(model_name):
                state["result"] = gpu(run_video)(_clip_path(video), model, kind=kind or None, layer=layer or None, query=query, out=out,
                                                  stride=stride_i, max_frames=cap_i, progress=report, should_stop=should_stop,
                                                  postprocess=entry.postprocess)
        except BaseException as e:  # handed to the generator
            state["error"] = e

    worker = threading.Thread(target=work, daemon=True, name="attnviz-video")
    worker.start()
    try:
        while worker.is_alive():
            pulled[0] = time.monotonic()
            worker.join(0.3)
            total = state["total"] or None
            progress((state["done"], total), desc=state["stage"], unit="frames")
            yield (gr.skip(),) * 7
    finally:
        stop.set()  # cancelled, disconnected or finished: the worker stops before its next frame
    err = state.get("error")
    if isinstance(err, VideoCancelled):
        fail("The video job was cancelled.")
    if isinstance(err, (VideoError, UserError)):
        fail(str(err))
    if err is not None:
        fail(f"Something went wrong ({type(err).__name__}: {err}).")
    res = state["result"]
    yield _results(res)


def _results(res: Any) -> tuple[Any, ...]:
    maps = np.load(res.npz)["maps"]
    times = np.array([r["time"] for r in res.rows])
    if res.task == "features":  # a backbone without classes predicts nothing
        conf = None
    else:
        conf_label = "top-1 probability" if res.task == "classification" else "area share of the largest class"
        conf = render.timeline(times, {"confidence": np.array([r["confidence"] for r in res.rows])}, conf_label, "Prediction over time")
    if res.kind == "channel":
        over = render.series_heatmap(maps.T, times, "channel", f"{res.layer}: gates over time")
    elif res.kind == "grid":
        box = {k: np.array([r[k] for r in res.rows]) for k in ("box_x0", "box_y0", "box_x1", "box_y1")}
        over = render.timeline(times, box, "pixels", f"{res.layer}: STN box over time")
    elif res.rows and "peak_x" in res.rows[0]:
        peak = {k: np.array([r[k] for r in res.rows]) for k in ("peak_x", "peak_y")}
        over = render.timeline(times, peak, "pixels", f"{res.layer}: peak of the map over time")
    else:
        over = None
    scale = f"{res.vrange[0]:.4g} … {res.vrange[1]:.4g}" if res.vrange else "—"
    notes = "".join(f"  \n_{html.escape(n)}_" for n in res.notes)
    info = (f"**{res.frames} frames** at {res.fps:.2f} fps · map **{res.kind}** of `{html.escape(res.layer or '—')}` · one colour scale for the clip: {scale}"
            + notes)
    details = {"frames": res.frames, "fps": round(res.fps, 4), "kind": res.kind, "layer": res.layer, "task": res.task, "notes": res.notes,
               "vrange": list(res.vrange) if res.vrange else None, "rows": len(res.rows)}
    return str(res.video), over, conf, str(res.npz), str(res.csv), info, details

