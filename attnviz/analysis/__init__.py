"""The analysis layer (Gradio-free, task-aware): what the app, HTTP API, CLI and video all call."""

from .catalog import Catalog, Entry
from .engine import Analysis, Engine, Style, describe_click
from .errors import UserError
from .export import export_bundle
from .images import ImageError, LoadedImage, load_image
from .outputs import ModelOutput, OutputError, interpret_output
from .workdirs import cleanup, work_dir

__all__ = [
    "Analysis", "Catalog", "Engine", "Entry", "ImageError", "LoadedImage", "ModelOutput", "OutputError", "Style", "UserError",
    "cleanup", "describe_click", "export_bundle", "interpret_output", "load_image", "work_dir",
]
