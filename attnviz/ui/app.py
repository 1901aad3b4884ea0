"""The Gradio app: composes the sidebar and one module per tab over :mod:`attnviz.analysis`.

Every user action is also an endpoint with plain arguments (``api_name``), so ``gradio_client`` and MCP
clients can do everything the page does, e.g.
``client.predict(handle_file("scene.png"), 30, 40, api_name="/attention_at")``. Each tab module builds its
components, fills them for an analysis, wires its own events and declares its endpoints;
:mod:`attnviz.ui.page` runs the page-wide events (new input, example, click, display change).
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gradio as gr
from torch import nn

from ..analysis import Catalog, Engine
from ..analysis.outputs import Postprocess
from ..analysis.workdirs import keep_clean, work_dir
from ..models.inputs import pick_device
from .common import Shared
from .examples import load_examples
from .page import Page
from .sidebar import Sidebar
from .tabs.atlas import AtlasTab
from .tabs.attributions import AttributionsTab
from .tabs.export import ExportTab
from .tabs.gates import GatesTab, OthersTab
from .tabs.modules import ModulesTab
from .tabs.pixel import PixelTab
from .tabs.segmentation import SegmentationTab
from .tabs.spatial import SpatialTab
from .tabs.stn import StnTab
from .tabs.transformer import TransformerTab
from .tabs.video import VideoTab

HEADER = """# attnviz — look inside attention modules, CNN and transformer
Pick an example or upload an image: click (or hover) any pixel to see where a Non-Local, CCNet, DANet, OCR or transformer
layer looks from there, next to the prediction — plus channel gates, spatial masks, STN grids, captum attributions, and
dataset-level statistics in the Atlas tab.
"""
TABS = (PixelTab, TransformerTab, SegmentationTab, SpatialTab, GatesTab, OthersTab, StnTab, ModulesTab, AttributionsTab, VideoTab, AtlasTab, ExportTab)
CSS = """
#view_image img, .pixelated img, .example-btn img { image-rendering: pixelated; }
.example-btn { flex-direction: column; font-size: 12px; }
.example-btn img { width: 72px !important; height: 72px !important; max-height: 72px !important; object-fit: contain; margin: 0 !important; }
.legend td, .legend th { padding: 2px 8px; }
.note { color: #666; }
#results .top-panel { position: static; margin: 0 0 4px auto; width: fit-content; }  /* image toolbars above the image, never over the colour bar */
#model input { padding-right: 2.2em; text-overflow: ellipsis; }  /* the model name never runs under the dropdown arrow */
#headline h3 { margin: 0; }
/* every tab visible (no "⋯" menu hiding Video and Export at 1400 px): narrower tab padding, and the strip wraps on phones */
#results .tab-container { flex-wrap: wrap; height: auto; overflow: visible; }
#results .tab-container > button { flex-shrink: 0; min-width: auto; height: var(--size-8); padding: 0 var(--size-2); }
/* phones: one column: upload, model, status and prediction, then the result, then the examples and settings;
   nothing wider than the screen (the side-by-side view scales down) */
@media (max-width: 760px) {
  #main_row { flex-direction: column; flex-wrap: nowrap; }
  #sidebar { display: contents; }
  #sidebar > * { order: 3; }
  #sidebar > #upload, #sidebar > .form:has(#model), #sidebar > #status, #sidebar > #headline, #sidebar > #prediction { order: 1; }
  #results { order: 2; min-width: 0 !important; width: 100% !important; max-width: 100%; }
  #main_row > *, #results *:not([role=tab]) { min-width: 0; max-width: 100%; }
  #view_image img, #results img { max-width: 100%; height: auto; }
  #upload { height: auto !important; }
}
"""


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
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX


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
    # our work folders and Gradio's own upload/output cache: TTL + size cap now and every few minutes
    keep_clean(work_dir("exports"), work_dir("videos"), Path(gr.utils.get_upload_folder()))
    shared = Shared(eng)
    sidebar = Sidebar(shared, load_examples(eng.catalog))
    tabs = [cls(shared) for cls in TABS]
    with gr.Blocks(title="attnviz", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(HEADER)
        shared.add(demo=demo, input_state=gr.State(None), xy_state=gr.State(None), stamp=gr.Number(0, visible=False))
        with gr.Row(elem_id="main_row"):
            with gr.Column(scale=1, min_width=280, elem_id="sidebar"):
                sidebar.build()
            with gr.Column(scale=3, elem_id="results"), gr.Tabs():
                for tab in tabs:
                    with gr.Tab(tab.title, id=tab.id):
                        tab.build()
        page = Page(shared, sidebar, tabs)
        page.wire(demo)
        for tab in tabs:
            tab.wire()
        _endpoints([*sidebar.endpoints(), *(e for t in tabs for e in t.endpoints())])
    demo.queue(default_concurrency_limit=int(os.environ.get("ATTNVIZ_CONCURRENCY", "2")), max_size=64)
    demo.engine = eng  # type: ignore[attr-defined]
    demo.attnviz_css = CSS  # type: ignore[attr-defined]
    return demo


def _endpoints(endpoints: list[Any]) -> None:
    """Named endpoints with plain arguments (HTTP API, gradio_client, MCP), on hidden components."""
    with gr.Group(visible=False):
        for ep in endpoints:
            gr.Button(visible=False).click(ep.fn, _api_inputs(ep.fn, ep.n_inputs), ep.outputs(), api_name=ep.name)


def _api_inputs(fn: Callable[..., Any], n: int) -> list[gr.components.Component]:
    """Hidden input components for an endpoint, typed after its parameters (files, numbers, text)."""
    comps: list[gr.components.Component] = []
    for p in list(inspect.signature(fn).parameters.values())[:n]:
        name = p.name
        default = p.default if p.default is not inspect.Parameter.empty else None
        if name in ("image", "image2"):
            comps.append(gr.File(label=name, file_types=["image"], type="filepath"))
        elif name in ("x", "y", "alpha", "threshold", "opacity"):
            comps.append(gr.Number(label=name, value=default))
        elif name == "sort":
            comps.append(gr.Checkbox(label=name, value=True))
        else:
            comps.append(gr.Textbox(label=name, value=default))
    return comps


def launch_kwargs() -> dict[str, Any]:
    """Keyword arguments of ``demo.launch`` shared by ``app.py`` and ``attnviz serve``.

    Also makes SIGTERM (``docker stop``, a Space restart) exit like Ctrl-C, so exit handlers run and the run
    folder with every upload, export and video of this process is removed.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    kw: dict[str, Any] = {"ssr_mode": False}
    try:
        import mcp  # noqa: F401  (gradio[mcp] installed)

        kw["mcp_server"] = True
    except ImportError:
        pass
    return kw


__all__ = ["build_demo", "launch_kwargs"]
