"""Seeing ``F.scaled_dot_product_attention`` without watching every op (replays of fused-attention regions).

A replayed region whose only records come from fused attention (a transformer's attention module: see
:class:`~attnviz.capture.plan.Fast`) needs one thing per call: the fused op's queries and keys. Watching every op of
the region with a ``TorchFunctionMode`` costs 2–8 % of a forward (every reshape and shape read goes through Python);
instead, while such a region runs, ``torch.nn.functional.scaled_dot_product_attention`` is the thin wrapper below,
which calls the function that was there and hands its arguments and output to the thread's handler.

Only callers that look the function up when they call it (``F.scaled_dot_product_attention(...)``, as timm,
torchvision and ``transformers`` do) reach the wrapper; a module that bound the name at import does not, and the
region then sees fewer calls than its plan: the replay says so and the next forward traces the model again
(:meth:`~attnviz.capture.manager.Capture`), so a call is never missed silently. The wrapper is installed while at
least one region on any thread holds it, calls the function that was in place when it was installed (a user's own
patch keeps working), and is removed only if it is still the one in place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from torch.nn import functional as F

Handler = Callable[[tuple[Any, ...], dict[str, Any], Any], None]

_LOCAL = threading.local()
_LOCK = threading.Lock()
_state: dict[str, Any] = {"users": 0, "inner": None}


def _sdpa(*args: Any, **kwargs: Any) -> Any:
    out = _state["inner"](*args, **kwargs)
    handler: Handler | None = getattr(_LOCAL, "handler", None)
    if handler is not None:
        _LOCAL.handler = None  # the handler's own work never re-enters it
        try:
            handler(args, kwargs, out)
        finally:
            _LOCAL.handler = handler
    return out


def hold(handler: Handler) -> None:
    """Route this thread's ``F.scaled_dot_product_attention`` calls (after they ran) to ``handler`` until :func:`release`."""
    with _LOCK:
        if _state["users"] == 0 and F.scaled_dot_product_attention is not _sdpa:
            _state["inner"] = F.scaled_dot_product_attention
            F.scaled_dot_product_attention = _sdpa
        _state["users"] += 1
    _LOCAL.handler = handler


def release() -> None:
    """End this thread's :func:`hold`; the last one out puts the original function back."""
    _LOCAL.handler = None
    with _LOCK:
        _state["users"] = max(0, _state["users"] - 1)
        if _state["users"] == 0 and F.scaled_dot_product_attention is _sdpa:
            F.scaled_dot_product_attention = _state["inner"]
