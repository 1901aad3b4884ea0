"""Replay plans: lazy labelling for generic discovery.

Provenance needs the axis labels of every tensor from the model's input to the ops that compute attention.
Following every op of a forward costs 5–25 % at batch 1 (a ``TorchFunctionMode`` alone costs ~5 %), so the
first forward of a model at a given input signature follows everything (*discovery*) and remembers, for each
*region* where ops were fully tracked (a watched module that runs at depth 0, or the parent that held one's
unused gate), the labels its tensor arguments had on entry. Later forwards with the same signature
(*replay*) watch ops only inside those regions, entering each with the remembered labels. Inside a region the
tracker runs exactly as in discovery, so the records are the same; outside, no op is watched.

Labels are a function of the ops a forward runs, never of tensor values. Which ops run can depend on values only
where Python reads one (``if x.mean() > 0``, ``.item()``, ``.tolist()``) or an op's output size does (``nonzero``):
a discovery that sees any of those (:data:`VALUE_READS`), or runs in training mode (stochastic depth), keeps no
plan, so every forward of that model is a discovery. A replay that meets a region it does not know, or arguments
of other shapes, gives those tensors no labels (nothing is drawn from them, never a guess), reports it, and drops
the plan so that the next forward is a discovery again. :func:`forget_plans` drops them by hand (after changing
a model's code path through its attributes).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .provenance import Labels

Path = tuple[Any, ...]
Entry = tuple[Path, tuple[int, ...], Labels | None, bool]  # argument path, shape, labels, made by followed ops


def tensor_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[tuple[Path, torch.Tensor]]:
    """Every tensor argument of a call (also inside a list or tuple argument), with its path."""
    for key, a in (*enumerate(args), *kwargs.items()):
        if isinstance(a, torch.Tensor):
            yield (key,), a
        elif isinstance(a, (list, tuple)):
            for i, t in enumerate(a):
                if isinstance(t, torch.Tensor):
                    yield (key, i), t


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def signature(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], structure: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """What must agree for a forward to follow the same ops: argument shapes, dtypes, devices and plain values, the
    module tree that is hooked, autograd and autocast. None in training mode or when an argument is neither a tensor nor
    a plain value (no plan is kept)."""
    if model.training:
        return None
    parts: list[Any] = [model.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled(), _autocast(), structure]
    for key, a in (*enumerate(args), *sorted(kwargs.items())):
        items = a if isinstance(a, (list, tuple)) else (a,)
        for t in items:
            if isinstance(t, torch.Tensor):
                parts.append((key, tuple(t.shape), t.dtype, t.device.type, t.is_floating_point()))
            elif _plain(t):
                parts.append((key, t))
            else:
                return None
    return tuple(parts)


VALUE_READS = frozenset({"__bool__", "item", "tolist", "__int__", "__float__", "__index__", "__complex__", "numpy", "__array__",
                         "equal", "is_nonzero", "allclose", "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"})
CHANGES_INPUT = frozenset({  # ops whose output is still "the input, changed" when an operand is (residual sums, gating, views)
    "add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__isub__", "mul", "mul_", "__mul__", "__rmul__",
    "__imul__", "div", "div_", "__truediv__", "__itruediv__", "addcmul", "addcmul_", "addcdiv", "addcdiv_", "relu", "relu_",
    "contiguous", "clone", "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "to", "float"})
FUSED = ("scaled_dot_product_attention", "_native_multi_head_attention", "multi_head_attention_forward")


def _autocast() -> tuple[bool, ...]:
    """Autocast on the CPU and on CUDA (a model may branch on it)."""
    return tuple(bool(torch.is_autocast_enabled(d)) for d in ("cpu", "cuda"))


Event = tuple[Labels | None, Labels | None, tuple[int, ...], tuple[int, ...]]  # labels of q and k, their shapes
SDPA = torch._C._nn.scaled_dot_product_attention  # the op itself (what a TorchFunctionMode sees)


@dataclass
class Fast:
    """A region whose only records come from fused attention ops: the ops it runs (by identity) and, at each fused op,
    the labels and shapes its queries and keys had. Its replay labels only those two tensors. Where every fused op is
    ``F.scaled_dot_product_attention`` (``direct``: the events in order), the replay sees just those calls
    (:mod:`~attnviz.capture.intercept`) and checks their number and the shapes of q and k; otherwise it watches the
    region's ops and checks them one by one."""

    ops: tuple[Any, ...]
    events: dict[int, Event]
    reached: int = 0  # fused ops that went through ``F.scaled_dot_product_attention`` looked up at the call
    direct: tuple[Event, ...] | None = None

    def __post_init__(self) -> None:
        if self.events and self.reached == len(self.events) and all(self.ops[i] is SDPA for i in self.events):
            self.direct = tuple(self.events[i] for i in sorted(self.events))


@dataclass
class Plan:
    """The regions of one discovery forward and their entry labels."""

    entries: dict[tuple[str, int], tuple[list[Entry], int | None]] = field(default_factory=dict)  # (name, call) -> (args, batch)
    fast: dict[tuple[str, int], Fast] = field(default_factory=dict)
    residual: dict[tuple[str, int], bool] = field(default_factory=dict)  # call with records -> its output is its input changed


def fused_qk(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The queries and keys of a fused attention call (``query`` / ``key`` for every form in :data:`FUSED`)."""
    return (args[0] if args else kwargs.get("query")), (args[1] if len(args) > 1 else kwargs.get("key"))


@dataclass
class Recording:
    """A discovery forward under way: every hooked call's entry, which calls became regions, and the ops of the open
    watched region (to tell whether it can be replayed fast)."""

    entries: dict[tuple[str, int], tuple[list[Entry], int | None]] = field(default_factory=dict)
    regions: set[tuple[str, int]] = field(default_factory=set)
    valid: bool = True
    fast: dict[tuple[str, int], Fast] = field(default_factory=dict)
    open: tuple[tuple[str, int], list[Any], dict[int, Any], int] | None = None  # key, ops, events, candidates before
    simple: bool = True
    residual: dict[tuple[str, int], bool] = field(default_factory=dict)
    reached: int = 0

    def begin(self, key: tuple[str, int], cands: int) -> None:
        self.open, self.simple, self.reached = (key, [], {}, cands), True, 0

    def op(self, func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], labels: Any, fused: bool) -> None:
        """One op of the open region (``fused``: a fused attention op that the tracker decides on)."""
        if self.open is None:
            return
        if fused:
            q, k = fused_qk(args, kwargs)
            self.open[2][len(self.open[1])] = (labels(q), labels(k), tuple(q.shape), tuple(k.shape))
        elif name in FUSED:
            self.simple = False
        self.open[1].append(func)

    def reach(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """A call of the open region reached ``F.scaled_dot_product_attention`` by name (see :mod:`.intercept`)."""
        self.reached += 1

    def end(self, key: tuple[str, int], cands: int) -> bool:
        """Close the open region if it is ``key`` (True then)."""
        if self.open is None or self.open[0] != key:
            return False
        if self.simple and cands == self.open[3]:
            self.fast[key] = Fast(tuple(self.open[1]), self.open[2], self.reached)
        self.open = None
        return True

    def plan(self) -> Plan | None:
        if not self.valid:
            return None
        return Plan({k: self.entries[k] for k in self.regions if k in self.entries}, {k: f for k, f in self.fast.items() if k in self.regions},
                    dict(self.residual))


class Plans:
    """Plans per model (weakly keyed) and signature; shared by every capture of that model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_model: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], Plan]] = weakref.WeakKeyDictionary()

    def get(self, model: nn.Module, sig: tuple[Any, ...]) -> Plan | None:
        with self._lock:
            return self._by_model.get(model, {}).get(sig)

    def put(self, model: nn.Module, sig: tuple[Any, ...], plan: Plan) -> None:
        with self._lock:
            self._by_model.setdefault(model, {})[sig] = plan

    def drop(self, model: nn.Module, sig: tuple[Any, ...] | None = None) -> None:
        """Forget the plan of one signature, or (``sig`` None) every plan of ``model``."""
        with self._lock:
            if sig is None:
                self._by_model.pop(model, None)
            else:
                self._by_model.get(model, {}).pop(sig, None)


PLANS = Plans()


def forget_plans(model: nn.Module) -> None:
    """Make the next captured forward of ``model`` a discovery (e.g. after changing its code path by hand)."""
    PLANS.drop(model)
