"""What every tab shares: argument checks, the error guard, browser sessions, and the one small state object.

Tabs never close over each other: each gets a :class:`Shared` (the engine, the shared inputs and the
per-browser sessions) and returns its own components, its part of the page for an analysis, its own
events and its named endpoints.
"""

from __future__ import annotations

import abc
import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import numpy as np

from ..analysis import Analysis, Engine, Style, UserError

log = logging.getLogger("attnviz")

try:  # ZeroGPU on Hugging Face Spaces; a no-op everywhere else
    import spaces  # type: ignore[import-not-found]

    gpu = spaces.GPU
except ImportError:
    def gpu(fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn


def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
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


def path_of(image: Any) -> Any:
    """A gr.File / gradio_client value → what the engine takes."""
    if image is None or image == "":
        raise UserError("image is missing: upload one or pick an example.")
    if isinstance(image, dict):
        image = image.get("path") or image.get("name")
    if isinstance(image, (str, os.PathLike, np.ndarray)):
        return image
    return getattr(image, "name", image)  # a tempfile wrapper


def number(name: str, v: Any, lo: float, hi: float) -> float:
    """``v`` as a finite float in [lo, hi], or a clear error naming the argument."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number in [{lo:g}, {hi:g}]; got {v!r}.") from None
    if not (np.isfinite(f) and lo <= f <= hi):
        raise UserError(f"{name} must be a number in [{lo:g}, {hi:g}]; got {v!r}.")
    return f


def style_of(cmap: Any, alpha: Any, scale: Any, threshold: Any = 0.0) -> Style:
    """Display controls from the page's (or an API call's) raw values."""
    if scale not in (None, "", "per map", "shared"):
        raise UserError(f"scale must be 'per map' or 'shared'; got {scale!r}.")
    return Style(cmap or "inferno", number("alpha", 0.55 if alpha is None else alpha, 0, 1), scale == "shared",
                 number("threshold", threshold or 0.0, 0, 0.99))


def head_of(head: Any) -> int | None:
    """'mean' (or empty) → None, else a head index."""
    if head in (None, "", "mean"):
        return None
    try:
        return int(head)
    except (TypeError, ValueError):
        raise UserError(f"head must be 'mean' or a head number; got {head!r}.") from None


@dataclass
class Visit:
    """What the page currently shows for one browser session."""

    latest: float = 0.0  # newest input stamp seen
    path: str | None = None
    model: str | None = None
    pick: str | None = None  # the last example pick handled (the hidden pick box's value)


class Visits:
    """Per-browser :class:`Visit` records (the oldest forgotten past a cap)."""

    def __init__(self, cap: int = 4096) -> None:
        self._visits: dict[str, Visit] = {}
        self._lock = threading.Lock()
        self.cap = cap

    def of(self, request: gr.Request | None) -> Visit:
        key = getattr(request, "session_hash", None) or "anonymous"
        with self._lock:
            if len(self._visits) > self.cap:
                for k in list(self._visits)[: self.cap // 4]:
                    self._visits.pop(k, None)
            return self._visits.setdefault(key, Visit())

    def stamp(self, request: gr.Request | None, stamp: Any) -> tuple[Visit, float]:
        """Record an input's browser stamp; returns the visit and the stamp (compare with ``visit.latest`` later)."""
        visit = self.of(request)
        s = float(stamp or 0)
        visit.latest = max(visit.latest, s)
        return visit, s


@dataclass
class ViewState:
    """What one page fill shows: the click (image pixels), the click layer / view / head, and the display style."""

    click: tuple[float, float] | None
    layer: str | None
    view: str | None
    head: Any
    style: Style
    seg_alpha: float = 0.5


@dataclass
class Shared:
    """The one small state object the tabs share: the engine and the page's shared inputs.

    The sidebar sets ``upload``, ``model``, ``status``, ``label`` and the display controls; the
    segmentation tab sets ``seg_alpha``. ``input_state`` holds ``[path, model]`` of what is shown,
    ``xy_state`` the current click, ``stamp`` the browser timestamp of each input.
    """

    engine: Engine
    visits: Visits = field(default_factory=Visits)
    components: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        comps = self.__dict__.get("components", {})
        if name in comps:
            return comps[name]
        raise AttributeError(name)

    def add(self, **components: Any) -> None:
        """Register shared components by name (``shared.cmap`` …)."""
        self.components.update(components)

    @property
    def style_inputs(self) -> list[Any]:
        """cmap, alpha, scale, threshold, seg_alpha: the display controls every redraw reads."""
        return [self.cmap, self.alpha, self.scale, self.threshold, self.seg_alpha]

    def get(self, image: Any, model_name: Any, progress: Any = None) -> Analysis:
        """The (cached) analysis of an upload with a model (the default model when none is given)."""
        if model_name in (None, ""):
            model_name = self.engine.catalog.default()
        return gpu(self.engine.analyze)(path_of(image), model_name, progress)

    def current(self, state: Any) -> Analysis:
        """The analysis shown now (``input_state``), or a clear error when nothing is loaded."""
        if not state or not state[0]:
            raise UserError("image is missing: upload one or pick an example.")
        return self.get(state[0], state[1])


@dataclass
class Endpoint:
    """A named endpoint with plain arguments: the function, how many leading parameters are inputs, its outputs."""

    fn: Callable[..., Any]
    n_inputs: int
    outputs: Callable[[], list[Any]]
    name: str


class Tab(abc.ABC):
    """A tab: ``build()`` its components (inside ``gr.Tab``), ``fill()`` them for an analysis, ``wire()`` its own events,
    and list its named ``endpoints()``. ``outputs`` are filled for each new analysis, ``click_outputs`` on each click too."""

    title = ""
    id = ""
    outputs: list[Any] = []
    click_outputs: list[Any] = []

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    @abc.abstractmethod
    def build(self) -> None:
        """Create the tab's components (called inside its ``gr.Tab``)."""

    @abc.abstractmethod
    def fill(self, a: Analysis, v: ViewState) -> dict[Any, Any]:
        """The tab's outputs for one analysis (and click)."""

    def wire(self) -> None:  # noqa: B027  (a hook with a default: most tabs have no events of their own)
        """Events of the tab's own (none by default)."""

    def endpoints(self) -> list[Endpoint]:
        return []
