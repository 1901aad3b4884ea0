"""Generic discovery: find gates and attention maps in code we have never seen.

Candidates are found statically: a module whose class methods (or module-level helpers they call)
name a gate function (``sigmoid``, ``softmax``, ``hardsigmoid``, ``affine_grid``, ``grid_sample``,
...). Only when a model has candidates outside adapted modules is a ``TorchFunctionMode`` pushed;
it classifies each gate op by the shape of its output against the input ``(B, C, H, W)`` of the
innermost enclosing module that received a 4-D tensor:

==========================  ================
output shape                kind
==========================  ================
(B, C), (B, C, 1, 1), (B, 1, C)  channel
(B, 1, H, W), (B, 1, H·W)    spatial
(B, [heads,] H·W, M)         affinity
(B, H, W, H + W)             criss_cross
(B, M, C, 1, 1)              branch
(B, C, C)                    channel_affinity
==========================  ================

Anything else (e.g. ``x * sigmoid(x)`` in Swish, a ``(B, C, H, W)`` output) is no gate.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .records import (
    Affinity,
    BranchWeights,
    ChannelAffinity,
    ChannelGate,
    CrissCross,
    Record,
    SamplingGrid,
    SpatialMask,
    keep,
)

TRIGGER_NAMES = frozenset(
    {"sigmoid", "sigmoid_", "Sigmoid", "hardsigmoid", "Hardsigmoid", "expit", "softmax", "Softmax", "affine_grid", "grid_sample"}
)

_SIGMOIDS: set[Callable[..., Any]] = {
    torch.sigmoid, torch.Tensor.sigmoid, torch.Tensor.sigmoid_, F.sigmoid, F.hardsigmoid, torch.special.expit,
}
_SOFTMAXES: set[Callable[..., Any]] = {torch.softmax, torch.Tensor.softmax, F.softmax, torch.special.softmax}
_GRIDS: set[Callable[..., Any]] = {F.affine_grid, F.grid_sample}
WATCHED = _SIGMOIDS | _SOFTMAXES | _GRIDS


def _code_names(code: types.CodeType, globs: dict[str, Any], depth: int, seen: set[int]) -> set[str]:
    """Names used by ``code``, its nested code and module-level functions it calls (to ``depth``)."""
    if id(code) in seen:
        return set()
    seen.add(id(code))
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const, globs, depth, seen)
    if depth > 0:
        for n in code.co_names:
            fn = globs.get(n)
            if isinstance(fn, types.FunctionType):
                names |= _code_names(fn.__code__, fn.__globals__, depth - 1, seen)
    return names


@functools.lru_cache(maxsize=None)
def class_uses_gates(cls: type) -> bool:
    """Whether any method of ``cls`` (below ``nn.Module``) names a gate function."""
    names: set[str] = set()
    seen: set[int] = set()
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            continue
        for attr in vars(klass).values():
            fn = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
            if isinstance(fn, types.FunctionType):
                names |= _code_names(fn.__code__, fn.__globals__, 2, seen)
    return bool(names & TRIGGER_NAMES)


@dataclass
class Frame:
    """One module call on the discovery stack."""

    name: str
    x: torch.Tensor | None  # the call's first tensor input when it is 4-D
    adapted: bool = False
    pending: list[tuple[str, Record]] = field(default_factory=list)
    version: int | None = None


def _infer_key_hw(m: int, h: int, w: int) -> tuple[int, int]:
    """Key grid of ``m`` positions with the aspect ratio of an (h, w) query grid (e.g. sub-sampled)."""
    if m == h * w:
        return h, w
    best = (1, m)
    for hk in range(1, m + 1):
        if m % hk == 0 and abs(hk / (m // hk) - h / w) < abs(best[0] / best[1] - h / w):
            best = (hk, m // hk)
    return best


def classify(func: Callable[..., Any], out: torch.Tensor, x: torch.Tensor) -> Record | None:
    """Record for a sigmoid/softmax output ``out`` produced inside a module with input ``x``, or None."""
    b, c, h, w = x.shape
    s = tuple(out.shape)
    if not s or s[0] != b and not (len(s) == 3 and s[0] % b == 0):
        return None
    is_softmax = func in _SOFTMAXES
    if c > 3 and s in ((b, c), (b, c, 1, 1), (b, 1, c), (b, c, 1)):
        return ChannelGate(weights=keep(out).reshape(b, c))
    if c > 1 and s in ((b, 1, h, w), (b, 1, h * w), (b, h * w, 1)) and h * w > 1:
        return SpatialMask(mask=keep(out).reshape(b, h, w))
    if not is_softmax:
        return None
    if s == (b, h, w, h + w):
        return CrissCross(attention=keep(out))
    if len(s) == 5 and s[0] == b and s[2] == c and s[3:] == (1, 1) and 1 < s[1] <= 8:
        return BranchWeights(weights=keep(out).reshape(b, s[1], c))
    if s == (b, c, c) and c != h * w:
        return ChannelAffinity(matrix=keep(out))
    n = h * w
    if len(s) == 3 and s[1] == n and s[2] > 1:
        heads = s[0] // b
        mat = keep(out).reshape(b, heads, n, s[2])
        return Affinity(matrix=mat, query_hw=(h, w), key_hw=_infer_key_hw(s[2], h, w))
    if len(s) == 4 and s[0] == b and s[2] == n and s[3] > 1:
        return Affinity(matrix=keep(out), query_hw=(h, w), key_hw=_infer_key_hw(s[3], h, w))
    return None


class GateMode(TorchFunctionMode):
    """Sees every torch call while active; reports gate-like outputs to ``on_op``."""

    def __init__(self, on_op: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any], Any], None]) -> None:
        super().__init__()
        self._on_op = on_op

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in WATCHED:
            self._on_op(func, args, kwargs, out)
        return out


def grid_record(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor) -> tuple[str, SamplingGrid | None]:
    """For ``F.affine_grid`` a new grid record; for ``F.grid_sample`` the grid and input size."""
    if func is F.affine_grid:
        theta = args[0] if args else kwargs["theta"]
        ac = bool(kwargs.get("align_corners", args[2] if len(args) > 2 else False))
        return "affine_grid", SamplingGrid(grid=keep(out), theta=keep(theta), align_corners=ac)
    inp = args[0] if args else kwargs["input"]
    grid = args[1] if len(args) > 1 else kwargs["grid"]
    ac = kwargs.get("align_corners", args[4] if len(args) > 4 else False)
    rec = SamplingGrid(grid=keep(grid), input_hw=(int(inp.shape[-2]), int(inp.shape[-1])), align_corners=bool(ac))
    return "grid_sample", rec
