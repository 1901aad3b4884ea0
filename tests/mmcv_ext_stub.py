"""A stand-in for mmcv's compiled extension ``mmcv._ext`` (absent from the pure-Python mmcv-lite wheel).

``import mmcv.ops`` loads ``mmcv._ext`` and checks that it has each compiled function; this module
answers every such lookup with a function that raises when called. The ops attnviz's tests use
(criss-cross attention, ...) are pure PyTorch in mmcv and never reach it. Tests only.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _Ext(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError(f"mmcv._ext.{name} is a compiled op that mmcv-lite does not ship")

        return missing


def install() -> None:
    """Register the stand-in as ``mmcv._ext`` (idempotent)."""
    if "mmcv._ext" not in sys.modules:
        sys.modules["mmcv._ext"] = _Ext("mmcv._ext")
