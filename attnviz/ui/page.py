"""The page-wide events: a new image or model, an example, a click, a display change — each fills every tab.

The last input always wins. Uploads, model changes and example picks are *one* event (an example button only
writes its id into a hidden box, in the browser), so Gradio's ``always_last`` runs them one after another and
delivers their results in order; a pick made while another runs waits for it, and only the newest waiting one
runs. (Separate events per button raced: our handler checked the stamps, but Gradio post-processes and sends
the outputs after the handler returns, and a slower first result could arrive after the second.) Clicks on
the view are one ``always_last`` event too. Each input also carries a browser timestamp; a result is written
only if no newer input of the same session has been seen. Errors the user can fix stay in the status line
until the next action; nothing shows a stack trace.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from typing import Any

import gradio as gr
import numpy as np

from ..analysis import Analysis, UserError
from ..maps import click_layers
from . import hover
from .common import Shared, ViewState, log, path_of, style_of
from .examples import Example
from .sidebar import Sidebar


def error_text(message: str) -> str:
    """An error for the status line (words, not an emoji that renders as a box without an emoji font)."""
    return f"**Error:** {html.escape(message)}"


STAMP_JS = "(...args) => { args[args.length - 1] = Date.now() + Math.random(); return args; }"


def default_click(a: Analysis) -> tuple[float, float]:
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


class Page:
    """The sidebar and the tabs, filled together for one analysis (and one click)."""

    def __init__(self, shared: Shared, sidebar: Sidebar, tabs: Sequence[Any]) -> None:
        self.shared = shared
        self.sidebar = sidebar
        self.tabs = list(tabs)
        s = shared
        self.all_outputs = [*sidebar.outputs, *(c for t in self.tabs for c in t.outputs), s.xy_state, s.input_state]
        self.click_outputs = [s.status, *(c for t in self.tabs for c in t.click_outputs), s.xy_state]

    def fill(self, a: Analysis, v: ViewState) -> dict[Any, Any]:
        """Every output of the page for one analysis; the click defaults to :func:`default_click` where a click layer exists."""
        if v.click is None and click_layers(a.records):
            v.click = default_click(a)
        out = self.sidebar.fill(a, v)
        for tab in self.tabs:
            out.update(tab.fill(a, v))
        out[self.shared.xy_state] = list(v.click) if v.click is not None else None
        return out

    def error(self, message: str) -> dict[Any, Any]:
        return {self.shared.status: error_text(message)}

    def cleared(self, message: str) -> dict[Any, Any]:
        """Every output emptied (nothing of the previous image stays under a new file name), the error in the status line."""
        out: dict[Any, Any] = {c: None for c in self.all_outputs}
        out[self.pixel.hover] = hover.empty("No image.")
        out[self.shared.status] = error_text(message) + "  \n_Nothing is shown until an image can be analysed._"
        out[self.shared.input_state] = None
        return out

    def _view(self, click: Any, layer: Any, view: Any, head: Any, cmap: str, alpha: float, scale: str, thr: float, seg_a: float) -> ViewState:
        return ViewState(tuple(click) if click else None, layer, view, head, style_of(cmap, alpha, scale, thr), seg_a)

    # ------------------------------------------------------------------ handlers
    def on_page_input(self, file: Any, model_name: str, pick: Any, cmap: str, alpha: float, scale: str, thr: float, seg_a: float, stamp: float,
                      request: gr.Request, progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
        """One handler for an upload, a model change and an example pick (a new value in the hidden pick box)."""
        visit = self.shared.visits.of(request)
        if pick and pick != visit.pick:
            visit.pick = pick
            idx = int(str(pick).split(":", 1)[0])
            return self.show_example(self.sidebar.examples[idx], cmap, alpha, scale, thr, seg_a, stamp, request)
        return self.on_input(file, model_name, cmap, alpha, scale, thr, seg_a, stamp, request, progress)

    def on_input(self, file: Any, model_name: str, cmap: str, alpha: float, scale: str, thr: float, seg_a: float, stamp: float,
                 request: gr.Request | None, progress: Any = None) -> dict[Any, Any]:
        s = self.shared
        visit, stamp = s.visits.stamp(request, stamp)

        def downloading(done: int, total: int) -> None:
            if progress is not None:
                progress((done, total or None), desc=f"downloading {model_name}", unit="B")

        try:
            path = path_of(file if file is not None else visit.path)  # a model change re-analyses the current image
            a = s.get(path, model_name, downloading)
            out = self.fill(a, self._view(None, None, None, "mean", cmap, alpha, scale, thr, seg_a))
        except UserError as e:
            out, path = self.cleared(str(e)), None
        except Exception as e:  # logged; one line on the page
            log.exception("analysis failed")
            out, path = self.cleared(f"Something went wrong ({type(e).__name__}: {e})."), None
        targets = self.all_outputs + [s.upload, s.model]
        if stamp < visit.latest:  # a newer input arrived meanwhile: this result is stale
            return {c: gr.skip() for c in targets}
        if path is not None:
            visit.path, visit.model = str(path), model_name
            out[s.input_state] = [visit.path, visit.model]
        else:  # nothing is shown now; a model change waits for a new image
            visit.path = None
        if file is not None:
            out[s.upload] = None  # keep the drop zone ready; the image itself is shown in the view
            out[s.status] = f"{out.get(s.status, '')}  \nImage: `{html.escape(os.path.basename(str(path or file)))}`"
        return {c: out.get(c, gr.skip()) for c in targets}

    def show_example(self, ex: Example, cmap: str, alpha: float, scale: str, thr: float, seg_a: float, stamp: float,
                     request: gr.Request | None) -> dict[Any, Any]:
        s = self.shared
        visit, stamp = s.visits.stamp(request, stamp)
        try:
            a = s.get(ex.path, ex.model)
            out = self.fill(a, self._view(ex.click, None, None, "mean", cmap, alpha, scale, thr, seg_a))
        except UserError as e:
            out = self.error(str(e))
        targets = self.all_outputs + [s.upload, s.model]
        if stamp < visit.latest:
            return {c: gr.skip() for c in targets}
        visit.path, visit.model = str(ex.path), ex.model
        out[s.input_state] = [visit.path, visit.model]
        out[s.upload] = None  # the drop zone stays ready for the visitor's own image
        out[s.model] = ex.model
        return {c: out.get(c, gr.skip()) for c in targets}

    def on_load(self, request: gr.Request) -> dict[Any, Any]:
        if not self.sidebar.examples:
            return {c: gr.skip() for c in self.all_outputs + [self.shared.upload, self.shared.model]}
        return self.show_example(self.sidebar.examples[0], "inferno", 0.55, "per map", 0.0, 0.5, 0.0, request)

    def on_click(self, evt: gr.SelectData, state: Any, layer: str, view: str, head: Any, cmap: str, alpha: float, scale: str, thr: float,
                 seg_a: float, stamp: float, request: gr.Request) -> dict[Any, Any]:
        visit, stamp = self.shared.visits.stamp(request, stamp)
        try:
            xy = self.pixel.click_xy(evt, state)
        except UserError as e:
            return {self.shared.status: error_text(str(e))}
        out = self.redraw(state, xy, layer, view, head, cmap, alpha, scale, thr, seg_a)
        if stamp < visit.latest:  # a newer click or input arrived meanwhile
            return {c: gr.skip() for c in self.click_outputs}
        return out

    def redraw(self, state: Any, xy: Any, layer: str, view: str, head: Any, cmap: str, alpha: float, scale: str, thr: float,
               seg_a: float) -> dict[Any, Any]:
        try:
            a = self.shared.current(state)
            out = self.fill(a, self._view(xy, layer, view, head, cmap, alpha, scale, thr, seg_a))
        except UserError as e:
            out = self.error(str(e))
        return {c: out.get(c, gr.skip()) for c in self.click_outputs}

    @property
    def pixel(self) -> Any:
        return next(t for t in self.tabs if t.id == "click")

    # ------------------------------------------------------------------ events
    def wire(self, demo: gr.Blocks) -> None:
        s = self.shared
        style_in = s.style_inputs
        for btn, idx in self.sidebar.example_buttons:  # in the browser only: the pick box's new value starts the page event
            btn.click(None, None, [self.sidebar.pick], js=f"() => '{idx}:' + Date.now() + ':' + Math.random()", api_visibility="private")
        gr.on([s.upload.upload, s.model.input, self.sidebar.pick.change], self.on_page_input, [s.upload, s.model, self.sidebar.pick, *style_in, s.stamp],
              self.all_outputs + [s.upload, s.model], js=STAMP_JS, api_visibility="private", trigger_mode="always_last")
        demo.load(self.on_load, None, self.all_outputs + [s.upload, s.model], api_visibility="private")
        # a click made while one runs waits for it (results arrive in order); only the newest waiting click runs
        s.view_img.select(self.on_click, [s.input_state, s.layer_dd, s.view_dd, s.head_dd, *style_in, s.stamp], self.click_outputs, js=STAMP_JS,
                          api_visibility="private", trigger_mode="always_last")
        gr.on([s.layer_dd.input, s.view_dd.input, s.head_dd.input, s.cmap.change, s.alpha.release, s.scale.change, s.threshold.release,
               s.seg_alpha.release], self.redraw, [s.input_state, s.xy_state, s.layer_dd, s.view_dd, s.head_dd, *style_in], self.click_outputs,
              api_visibility="private")
