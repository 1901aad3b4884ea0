"""The web app (Gradio); everything it shows comes from :mod:`attnviz.analysis`."""

import os

__all__ = ["build_demo"]


def build_demo(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See :func:`attnviz.ui.app.build_demo` (imported lazily: Gradio is heavy).

    Unless ``GRADIO_TEMP_DIR`` is set, Gradio's uploads and outputs go to this process's run folder
    (:func:`attnviz.analysis.workdirs.start_run`), which is removed at exit and after a crash at the next start.
    """
    from ..analysis.workdirs import start_run

    os.environ.setdefault("GRADIO_TEMP_DIR", str(start_run() / "gradio"))
    from .app import build_demo as _build

    return _build(*args, **kwargs)
