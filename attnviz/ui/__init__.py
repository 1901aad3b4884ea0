"""The web app (Gradio) and its Gradio-free engine."""

from .engine import Catalog, Engine, Entry, Style, UserError
from .images import ImageError, LoadedImage, load_image

__all__ = ["Catalog", "Engine", "Entry", "ImageError", "LoadedImage", "Style", "UserError", "build_demo", "load_image"]


def build_demo(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See :func:`attnviz.ui.app.build_demo` (imported lazily: Gradio is heavy)."""
    from .app import build_demo as _build

    return _build(*args, **kwargs)
