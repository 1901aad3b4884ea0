"""Attention atlas: dataset-level statistics of every attention layer (local by default, on Ray Data at scale).

``attnviz atlas --model M --data DIR --out OUT`` or :func:`run_atlas`; see :mod:`attnviz.atlas.run` for the outputs.
"""

from .data import AtlasError, Item, Source, scan_folder, scene_source
from .run import COLUMNS, ENGINES, STATISTICS, AtlasOptions, run_atlas

__all__ = ["COLUMNS", "ENGINES", "STATISTICS", "AtlasError", "AtlasOptions", "Item", "Source", "run_atlas", "scan_folder", "scene_source"]
