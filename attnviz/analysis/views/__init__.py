"""Views of an :class:`~attnviz.analysis.session.Analysis`, one module per view family.

Each is a few plain functions of an analysis (and, where the model must run again, of the session that
holds it) that return arrays, Figures or dicts: ``click`` (pixel attention), ``segmentation``, ``gates``,
``spatial``, ``stn``, ``modules`` (table, summary, ablation), ``attributions``, ``transformer`` (head grid, rollout, attention
distance), ``export`` and ``frames``
(batches of video frames). A new view family is a new module here.
"""

from . import (
    attributions,
    click,
    export,
    frames,
    gates,
    modules,
    segmentation,
    spatial,
    stn,
    transformer,
)

__all__ = ["attributions", "click", "export", "frames", "gates", "modules", "segmentation", "spatial", "stn", "transformer"]
