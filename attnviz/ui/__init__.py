"""The web app (Gradio); everything it shows comes from :mod:`attnviz.analysis`."""

__all__ = ["build_demo"]


def build_demo(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See :func:`attnviz.ui.app.build_demo` (imported lazily: Gradio is heavy)."""
    from .app import build_demo as _build

    return _build(*args, **kwargs)
