"""attnviz: look inside the attention modules of CNNs.

    >>> import attnviz
    >>> with attnviz.capture(model) as cap:
    ...     logits = model(x)
    >>> cap.records  # name -> record, in forward order
"""

from __future__ import annotations

from .capture import (
    Affinity,
    BranchWeights,
    Capture,
    ChannelAffinity,
    ChannelGate,
    CrissCross,
    Record,
    SamplingGrid,
    SpatialMask,
    TokenAttention,
    capture,
)
from .inspect import InspectReport, inspect  # noqa: E402, F401  (eager: the function, not the submodule, is attnviz.inspect)
from .maps import criss_cross_reach
from .modules import create_attn

__version__ = "0.1.0"


def load_pretrained(name: str, device: object = None, weights: object = None):  # type: ignore[no-untyped-def]
    """A model in eval mode with ``model.card``; see :func:`attnviz.models.load_pretrained`."""
    from .models import load_pretrained as _load

    return _load(name, device=device, weights=weights)  # type: ignore[arg-type]


__all__ = [
    "Affinity", "BranchWeights", "Capture", "ChannelAffinity", "ChannelGate", "CrissCross", "Record",
    "SamplingGrid", "SpatialMask", "TokenAttention", "capture", "create_attn", "criss_cross_reach", "inspect", "load_pretrained", "__version__",
]
