"""Generic discovery: find gates and attention maps in code we have never seen.

Candidates are found statically: a module whose class methods (or module-level helpers they call)
name a gate or attention function (``sigmoid``, ``sigmoid_``, ``softmax``, ``hardsigmoid``, ``matmul``,
``bmm``, ``einsum``, ``scaled_dot_product_attention``, ``affine_grid``, ``grid_sample``, ...). Only when a
model has candidates outside adapted modules is a ``TorchFunctionMode`` pushed; what each watched op's
output *is* is then decided by provenance (:mod:`attnviz.capture.tracker`): where it goes and where its
axes come from. Spatial transformers are recorded from ``affine_grid`` / ``grid_sample``.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .records import SamplingGrid, keep

TRIGGER_NAMES = frozenset(
    {"sigmoid", "sigmoid_", "Sigmoid", "hardsigmoid", "Hardsigmoid", "expit", "softmax", "Softmax", "affine_grid", "grid_sample",
     "scaled_dot_product_attention", "matmul", "bmm", "einsum", "baddbmm", "multi_head_attention_forward", "_native_multi_head_attention"}
)

_GRIDS: set[Callable[..., Any]] = {F.affine_grid, F.grid_sample}
WATCHED = _GRIDS


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


@functools.cache
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


class GateMode(TorchFunctionMode):
    """Sees every torch call while active; reports gate-like outputs to ``on_op``."""

    def __init__(self, on_op: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any], Any], None]) -> None:
        super().__init__()
        self._on_op = on_op

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
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
