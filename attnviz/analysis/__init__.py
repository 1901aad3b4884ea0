"""The analysis layer (Gradio-free, task-aware): what the app, HTTP API, CLI and video all call.

:mod:`.session` runs a model once per upload and caches the :class:`Analysis`; :mod:`.views` turns an
analysis into what each view shows.
"""

from . import views
from .catalog import Catalog, Entry
from .errors import UserError
from .images import ImageError, LoadedImage, load_image
from .outputs import ModelOutput, OutputError, interpret_output
from .session import Analysis, Engine, Style
from .views import *  # noqa: F403  (the view modules: click, segmentation, gates, …)
from .views.click import describe_click
from .views.export import export_bundle
from .workdirs import cleanup, work_dir

__all__ = [
    "Analysis", "Catalog", "Engine", "Entry", "ImageError", "LoadedImage", "ModelOutput", "OutputError", "Style", "UserError",
    "cleanup", "describe_click", "export_bundle", "interpret_output", "load_image", "work_dir", *views.__all__,
]
