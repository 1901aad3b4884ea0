"""Generic discovery by provenance: follow gate and attention tensors to where they are used.

The :class:`Tracker` sees every torch call of a captured forward (through a ``TorchFunctionMode``), keeps
axis labels (:mod:`attnviz.capture.provenance`) for every tensor, remembers *candidates* (sigmoid,
hard-sigmoid, softmax outputs, and matmul logits normalised by their key count) and decides what each one
is when it is consumed:

- multiplied into a labelled feature map: a channel gate (varies along channels only), a spatial mask
  (along the rows and columns of a grid), an axis gate (channels × rows or channels × columns: coordinate
  attention, Triplet's cross-dimension branches), branch weights (a softmax across stacked branches), or
  — for a gate that varies over channels and positions — its channel mean as a spatial mask;
- contracted against values by a matmul / bmm / einsum: attention of query positions over key positions
  (image-wide or window-local, per head), attention pooling (one query), channel affinity, or
  pixel → region attention when the keys are soft regions pooled by an earlier softmax;
- ``F.scaled_dot_product_attention``: attention with its queries, keys, mask and scale kept (lazy rows).

Whatever cannot be placed exactly is reported as *seen, not drawn* with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import records as _records
from .provenance import (
    _SPLIT,
    BATCH_GRID,
    HALO,
    Atom,
    Axis,
    Candidate,
    Cells,
    Labels,
    Seen,
    func_name,
    grid_steps,
    is_broadcast,
    is_channels,
    merge_atoms,
    nchw,
    new_grid,
    placed,
    positions,
    prefix_names,
    propagate,
    propagate_multi,
    pyramid_regions,
    size_of,
    token_layout,
)
from .records import (
    Affinity,
    AxisGate,
    BranchWeights,
    ChannelAffinity,
    ChannelGate,
    CrissCross,
    ElementGate,
    HaloAffinity,
    Record,
    RegionAttention,
    SpatialMask,
    TokenAttention,
    keep,
    placed_windows,
    spill,
)

MAX_MATRIX = 8_000_000  # largest attention matrix (elements) kept whole when rows cannot be recomputed from Q and K
GATES = {"sigmoid", "sigmoid_", "hardsigmoid", "expit"}
NCHW_MODULES = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.pooling._MaxPoolNd,
                nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.Upsample,
                nn.PixelShuffle, nn.PixelUnshuffle, nn.modules.instancenorm._InstanceNorm)
TOKEN_PARAMS = {"cls_token": "cls", "class_token": "cls", "dist_token": "dist", "reg_token": "reg", "register_tokens": "reg"}
SOFTMAXES = {"softmax"}
PERMUTING = {"permute", "transpose", "movedim", "swapaxes", "mT", "t"}  # shape ops that reorder dims
MULS = {"mul", "__mul__", "__rmul__", "mul_", "__imul__", "multiply"}
MATMULS = {"matmul", "bmm", "__matmul__", "__rmatmul__", "einsum", "baddbmm"}
DIVISIONS = ("div", "__truediv__", "true_divide", "div_", "__itruediv__")
SCALAR_OPS = {"mul", "__mul__", "__rmul__", "div", "__truediv__", "add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "true_divide",
              "mul_", "div_", "add_", "sub_", "__imul__", "__itruediv__", "__iadd__", "__isub__"}
SHAPE_OPS = {"view", "reshape", "permute", "transpose", "contiguous", "expand", "expand_as", "unsqueeze", "squeeze", "flatten", "unflatten",
             "clone", "detach", "to", "float", "half", "broadcast_to", "view_as", "reshape_as", "movedim", "swapaxes", "type_as", "mT", "t"}


_TOKEN_PARAMS: weakref.WeakKeyDictionary[nn.Module, list[tuple[str, nn.Parameter, Labels]]] = weakref.WeakKeyDictionary()


def token_params(model: nn.Module) -> list[tuple[nn.Parameter, Labels]]:
    """The prefix-token parameters of ``model`` with their labels; remembered per model (a walk over every parameter
    costs a millisecond) and checked to still be the model's parameters by their path."""
    found = _TOKEN_PARAMS.get(model)
    if found is not None:
        with contextlib.suppress(AttributeError):
            if all(model.get_parameter(n) is p for n, p, _ in found):
                return [(p, lb) for _, p, lb in found]
    found = []
    for pname, p in model.named_parameters():
        kind = TOKEN_PARAMS.get(pname.rsplit(".", 1)[-1])
        if kind is not None and p.ndim == 3 and p.shape[0] == 1:
            found.append((pname, p, (None, ((0, f"pre:{kind}", int(p.shape[1])),), None)))
    with contextlib.suppress(TypeError):
        _TOKEN_PARAMS[model] = found
    return [(p, lb) for _, p, lb in found]


def _channel_groups(key_axis: Axis, q_axis: Axis, heads: list[tuple[int, str, int]]) -> int | None:
    """Heads of a channel attention that split the very channels it attends over (XCiT's ``c → (heads, c/heads)``): their
    number (1 without heads); None when the heads are anything else (their mean would mix unrelated channels)."""
    if not heads:
        return 1
    if len(heads) != 1 or len(key_axis) != 1 or len(q_axis) != 1:  # type: ignore[arg-type]
        return None
    (gk, kn, ks), (gq, qn, _), (gh, hn, hs) = key_axis[0], q_axis[0], heads[0]  # type: ignore[index]
    parent, inner = kn.rsplit("[", 1)
    same_split = hn.rsplit("[", 1)[0] == parent and inner == f"{ks}i]" and hn.endswith(f"[{hs}o]")
    return hs if gk == gq == gh and kn == qn and same_split else None


def _block_diagonal(m: torch.Tensor) -> torch.Tensor:
    """``(B, G, n, n)`` → ``(B, G·n, G·n)`` with block g on the diagonal."""
    return torch.stack([torch.block_diag(*mb.unbind(0)) for mb in m])


def _base(name: str) -> str:
    return name.split("[")[0]


def _keep_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A fused op's ``attn_mask`` as kept: float masks like every record tensor, boolean ones as they are (on the CPU)."""
    if mask is None:
        return None
    return keep(mask) if mask.dtype != torch.bool else mask.detach().cpu().clone()


def _steps_of(window_atoms: list[Any]) -> tuple[tuple[Any, ...], ...]:
    """The rolls and paddings that made the grid the windows tile from the image grid (see :func:`grid_steps`)."""
    return tuple(grid_steps(window_atoms[0][0])) if window_atoms else ()


def _sort_key(atom: tuple[int, str, int]) -> tuple[Any, ...]:
    """Row-major order of the split parts of one base axis ('o' before 'i' at every level)."""
    parts = atom[1].split("[")[1:]
    return tuple(0 if p.endswith("o]") else 1 for p in parts)


def canonical(t: torch.Tensor, labels: Labels, want: tuple[str, ...]) -> tuple[torch.Tensor, dict[str, int]] | None:
    """Rearrange ``t`` so its dims are the bases in ``want`` (each base's split parts re-joined in row-major order).

    Dims whose atoms are not among ``want`` must be size 1 or broadcast (stride 0); they are dropped.
    Returns the tensor and each base's size, or None when the atoms do not fit together.
    """
    if len(labels) != t.ndim:
        return None
    x = t
    drop = []
    for k in range(t.ndim - 1, -1, -1):
        ax = labels[k]
        if t.shape[k] == 1 or t.stride(k) == 0 or not ax or not any(_base(a[1]) in want for a in ax):
            if t.shape[k] > 1 and t.stride(k) != 0 and ax and not all(a[1] == "bcast" for a in ax):
                return None  # a varying axis we were not asked about
            x = x.select(k, 0)
            drop.append(k)
    kept = [labels[k] for k in range(t.ndim) if k not in drop]
    atoms: list[tuple[int, str, int]] = []
    for ax in kept:
        atoms.extend(ax)  # type: ignore[arg-type]
    x = x.reshape([a[2] for a in atoms]) if atoms else x.reshape(())
    order = []
    for base in want:
        mine = [i for i, a in enumerate(atoms) if _base(a[1]) == base]
        grids: list[int] = []
        for i in mine:  # parts of one grid in row-major split order; different grids in order of appearance
            if atoms[i][0] not in grids:
                grids.append(atoms[i][0])
        order.extend(sorted(mine, key=lambda i: (grids.index(atoms[i][0]), _sort_key(atoms[i]))))
    if len(order) != len(atoms):
        return None
    x = x.permute(order) if order else x
    sizes = {base: math.prod(atoms[i][2] for i in order if _base(atoms[i][1]) == base) for base in want}
    return x.reshape([sizes[b] for b in want]), sizes  # a base without atoms (e.g. a batch of 1) is a dim of size 1


def _token_pooling(m: torch.Tensor, layout: Any, query_names: tuple[str, ...] | None, op: str) -> SpatialMask:
    """One query's weights ``(B, heads, 1, P + M)`` over prefix tokens ⊕ patches, drawn over the patches (heads averaged; the
    prefix tokens' share is not renormalised away and is named in the note)."""
    p = len(layout.prefix)
    w = m.mean(1)[:, 0]  # (B, P + M)
    rec = SpatialMask(mask=keep(w[:, p:].reshape(w.shape[0], *layout.hw)))
    who = f"the {query_names[0]} token's query" if query_names and len(query_names) == 1 else "its one query (e.g. a class token)"
    share = float(w[:, :p].sum(1).mean())
    rec.note = (f"class attention: {op} of {who} over {p} prefix + {layout.hw[0]}×{layout.hw[1]} patch tokens, heads averaged; "
                f"the patch part is drawn, {share:.1%} of the weight (mean over the batch) goes to {', '.join(layout.prefix)}")
    return rec


def _moved(order: tuple[int, ...] | None, name: str, args: tuple[Any, ...], t: torch.Tensor, out: torch.Tensor) -> tuple[int, ...] | None:
    """The source dims behind ``out``'s dims after shape op ``name`` on ``t`` (see ``_Derived.order``)."""
    if name not in PERMUTING:
        if not order:
            return ()
        return order if out.shape == t.shape else None  # (contiguous, clone, a dtype change: the same dims)
    if name == "permute":
        p = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else [int(a) for a in args[1:]]
    else:
        n = t.ndim
        a, b = (int(args[1]), int(args[2])) if len(args) >= 3 else (n - 2, n - 1)  # transpose / swapaxes / mT / t
        if name == "movedim":
            src_d, dst_d = a % n, b % n
            p = [i for i in range(n) if i != src_d]
            p.insert(dst_d, src_d)
        else:
            p = list(range(n))
            p[a % n], p[b % n] = p[b % n], p[a % n]
    base = list(order) if order else list(range(t.ndim))
    new = tuple(base[i % t.ndim] for i in p)
    return () if new == tuple(range(len(new))) else new


def _row_major(t: torch.Tensor, labels: Labels, dim: int) -> tuple[torch.Tensor, Labels]:
    """``t`` with axis ``dim`` put in row-major order when its atoms are the rows and columns of one grid in another order
    (e.g. Hiera's unroll: (h inner, w inner, h outer, w outer)); ``t`` and ``labels`` unchanged otherwise."""
    axis = labels[dim]
    if not axis or len(axis) < 2 or positions(axis) is not None or len({a[0] for a in axis}) != 1 \
            or any(_base(a[1]) not in ("h", "w") for a in axis):
        return t, labels
    order = sorted(range(len(axis)), key=lambda i: (_base(axis[i][1]) == "w", _sort_key(axis[i])))
    atoms = tuple(axis[i] for i in order)
    if positions(atoms) is None:
        return t, labels
    parts = t.unflatten(dim, [a[2] for a in axis])  # (..., *atoms, ...)
    perm = [*range(dim), *(dim + i for i in order), *range(dim + len(axis), parts.ndim)]
    return parts.permute(perm).flatten(dim, dim + len(axis) - 1), (*labels[:dim], atoms, *labels[dim + 1:])


@dataclass
class Frame:
    """One module call on the discovery stack."""

    name: str
    x: torch.Tensor | None  # the call's first tensor input when it is 4-D
    adapted: bool = False
    pending: list[tuple[str, Record]] = field(default_factory=list)
    version: int | None = None
    key: tuple[str, int] | None = None  # (name, n): the n-th call of this module in the forward
    region: bool = False  # a replayed region starts here (see plan)


@dataclass
class _Derived:
    cand: Candidate
    changed: bool  # values changed by scalar affine ops (e.g. 1 + gate): record the source's values
    order: tuple[int, ...] | None = ()  # the source dim behind each dim: () none moved, None unknown (permuted, then reshaped)


class Tracker:
    """Labels, candidates and decisions for one captured forward (single thread)."""

    def __init__(self, emit: Callable[[Frame, str, Record], None], seen: Callable[[Seen], None]) -> None:
        self.emit = emit
        self.report_seen = seen
        self._labels: dict[int, tuple[weakref.ref, Labels]] = {}
        self._derived: dict[int, tuple[weakref.ref, _Derived]] = {}
        self._logits: dict[int, tuple[weakref.ref, torch.Tensor, torch.Tensor, float]] = {}
        self._regions: dict[int, tuple[torch.Tensor, tuple[int, int]]] = {}  # region grid id -> (maps (B, K, H, W), hw)
        self._region_of: dict[int, Candidate] = {}  # region grid id -> the softmax that made it (until a pixel → region attention uses it)
        self.cands: list[Candidate] = []
        self.batch: int | None = None
        self._params: dict[int, tuple[weakref.ref, Labels]] = {}  # token parameters (class / distillation / register tokens)
        self._made: dict[int, weakref.ref] = {}  # 4-D tensors made by ops we followed (this forward)
        self._qk_bytes = 0  # queries and keys kept by this forward (spilled beyond records.SPILL_BYTES)

    def label_token_params(self, model: torch.nn.Module) -> None:
        """Name the prefix-token parameters by their attribute (``cls_token`` → ``cls``, ``reg_token`` → ``reg0…``): a
        sequence that concatenates them with patch tokens gets a token axis whose prefix is named (see provenance)."""
        for p, lb in token_params(model):
            with contextlib.suppress(TypeError):
                self._params[id(p)] = (weakref.ref(p), lb)

    def _keep_qk(self, t: torch.Tensor) -> torch.Tensor:
        """Queries or keys of a lazy-row record: kept in memory up to ``SPILL_BYTES`` per forward, spilled beyond."""
        n = t.numel() * 4
        limit = _records.SPILL_BYTES
        self._qk_bytes += n
        return spill(t) if limit is not None and self._qk_bytes > limit else keep(t)

    # ---- labels
    def get(self, t: Any) -> Labels | None:
        if not isinstance(t, torch.Tensor):
            return None
        hit = self._labels.get(id(t)) or self._params.get(id(t))
        if hit is None or hit[0]() is not t:
            return None
        lb = hit[1]
        return lb if len(lb) == t.ndim else None

    def set(self, t: torch.Tensor, labels: Labels | None) -> None:
        if labels is None or len(labels) != t.ndim:
            return
        with contextlib.suppress(TypeError):  # tensors that cannot be weakly referenced are not labelled
            self._labels[id(t)] = (weakref.ref(t), labels)

    def force(self, t: torch.Tensor, labels: Labels | None, followed: bool) -> None:
        """Give ``t`` exactly these labels (None: none) and followed-ness: the entry of a replayed region (see plan)."""
        self._labels.pop(id(t), None)
        self._made.pop(id(t), None)
        self.set(t, labels)
        if followed:
            with contextlib.suppress(TypeError):
                self._made[id(t)] = weakref.ref(t)

    def followed(self, t: torch.Tensor) -> bool:
        """Whether ``t`` was made by ops this forward followed."""
        return self._followed(t)

    def _produced(self, out: Any) -> None:
        """Remember tensors made by ops we followed: if those lost their labels, their axes are unknown (never guessed)."""
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.ndim == 4:
                with contextlib.suppress(TypeError):
                    self._made[id(t)] = weakref.ref(t)

    def _followed(self, t: torch.Tensor) -> bool:
        ref = self._made.get(id(t))
        return ref is not None and ref() is t

    def label_input(self, x: torch.Tensor, top: bool, module: torch.nn.Module | None = None) -> None:
        """Fresh NCHW labels for a 4-D tensor without labels: the model input, the input of a module that reads NCHW (a
        convolution, norm or pooling), or a feature map made by code we did not follow (outside the hooked modules). A tensor
        made by ops we followed that has no labels (an attention bias, a mask, a channels-last map after an op we cannot
        follow) stays unlabelled: its axes are not known, and a shape is no evidence."""
        if x.ndim != 4 or self.get(x) is not None or not x.is_floating_point():
            return
        if top or isinstance(module, NCHW_MODULES) or not self._followed(x):
            if top or self.batch is None:
                self.batch = int(x.shape[0])
            self.set(x, nchw(x.shape, batch=int(x.shape[0]) == self.batch))

    def label_output(self, x: torch.Tensor | None, out: Any, module: torch.nn.Module | None = None) -> None:
        """A 4-D output without labels of a module that writes NCHW, or of one whose input was an NCHW feature map:
        its input's batch and (if the size agrees) its grid."""
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or self.get(out) is not None or not out.is_floating_point():
            return
        xl = self.get(x) if x is not None else None
        nchw_in = xl is not None and x is not None and x.ndim == 4 and is_channels(xl[1])
        if not nchw_in and not isinstance(module, NCHW_MODULES) and self._followed(out):
            return
        if xl is not None and x is not None and x.ndim == 4 and x.shape[0] == out.shape[0]:
            g = new_grid()
            same = tuple(x.shape[2:]) == tuple(out.shape[2:])
            h = xl[2] if same else (((g, "h", int(out.shape[2])),) if out.shape[2] > 1 else None)
            w = xl[3] if same else (((g, "w", int(out.shape[3])),) if out.shape[3] > 1 else None)
            self.set(out, (xl[0], ((g, "c", int(out.shape[1])),), h, w))
        else:
            self.set(out, nchw(out.shape, batch=int(out.shape[0]) == self.batch))

    def _derive(self, t: Any) -> _Derived | None:
        if not isinstance(t, torch.Tensor):
            return None
        hit = self._derived.get(id(t))
        if hit is None or hit[0]() is not t:
            return None
        return hit[1]

    def _mark(self, t: torch.Tensor, d: _Derived) -> None:
        with contextlib.suppress(TypeError):
            self._derived[id(t)] = (weakref.ref(t), d)

    # ---- the op hook
    def _carry_labels(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """Carry the axis labels through one op (a ``sigmoid_`` in place keeps the labels its output already has)."""
        if isinstance(out, torch.Tensor):
            if name not in ("sigmoid_",) or self.get(out) is None:
                self.set(out, propagate(name, args, kwargs, out, self.get))
        elif isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
            for o, lb in zip(out, propagate_multi(name, args, kwargs, list(out), self.get)):
                self.set(o, lb)

    def propagate_only(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> bool:
        """Outside watched code: carry the axis labels through the op, nothing else. True when the op touched a
        candidate (what it did then is more than labels: a replay that skips this op would differ)."""
        self._produced(out)
        name = func_name(func)
        if name == "stack" and isinstance(out, torch.Tensor):
            return self._stack(args, kwargs, out)
        self._carry_labels(name, args, kwargs, out)
        return False

    def on_op(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, frame: Frame | None, in_adapted: bool
    ) -> None:
        """Inside watched code: labels, then what the op does to a candidate (uses it, or carries it on), the logits it
        tracks (q·kᵀ and its scaling), and the candidates it makes (sigmoids, softmaxes)."""
        name = func_name(func)
        self._produced(out)
        if name in ("scaled_dot_product_attention", "_native_multi_head_attention", "multi_head_attention_forward"):
            if frame is not None and not in_adapted:  # fused attention; nn.MultiheadAttention (torchvision's ViT)
                (self._sdpa if name == "scaled_dot_product_attention" else functools.partial(self._mha, name))(args, kwargs, out, frame)
            return
        if name == "stack" and isinstance(out, torch.Tensor):
            self._stack(args, kwargs, out)
            return
        self._carry_labels(name, args, kwargs, out)
        if frame is None or in_adapted:
            return
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        derived = [(t, d) for t, d in ((t, self._derive(t)) for t in tensors) if d is not None]
        if derived and isinstance(out, torch.Tensor) and self._consumed(name, args, tensors, derived, out, frame):
            return
        self._track_logits(name, args, tensors, out, frame)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            self._new_candidate(name, args, kwargs, out, frame)

    def _consumed(self, name: str, args: tuple[Any, ...], tensors: list[torch.Tensor], derived: list[tuple[torch.Tensor, _Derived]],
                  out: torch.Tensor, frame: Frame) -> bool:
        """What an op does with a candidate: a mix of softmaxes, a gate multiplying, attention contracted, a shape op or
        a scalar op carrying it on, talking heads; else the reason it is no map. True when the op is decided here."""
        if self._mixes_softmaxes(name, args, derived, out, frame):
            return True
        if name in MULS:
            others = [t for t in tensors if self._derive(t) is None or self._derive(t).cand is not derived[0][1].cand]  # type: ignore[union-attr]
            if others:
                self._gate_used(derived[0][0], derived[0][1], others[0], out, name)
                return True
        if name in MATMULS:
            self._attention_used(name, args, derived, out)
            return True
        t, d = derived[0]
        scalar_other = all(not isinstance(a, torch.Tensor) or a.ndim == 0 or a is t for a in args[: 2])
        if name in SHAPE_OPS or (name in SCALAR_OPS and scalar_other):
            self._mark(out, _Derived(d.cand, d.changed or name in SCALAR_OPS, _moved(d.order, name, args, t, out)))
            return True
        if name == "linear" and self._mixes_heads(t, d, args):
            self.set(out, self.get(t))  # the same axes: one weight per (head, query, key), the heads mixed
            self._mark(out, _Derived(d.cand, True, d.order))
            d.cand.note = (f"talking heads: a linear layer mixes the {t.shape[-1]} heads after this {d.cand.op}; "
                           f"each head's row is the {d.cand.op}'s (before the mix)")
            return True
        d.cand.reasons.append(f"reduced by {name} before being used" if name in ("sum", "mean") else f"used by {name}")
        return False

    def _track_logits(self, name: str, args: tuple[Any, ...], tensors: list[torch.Tensor], out: Any, frame: Frame) -> None:
        """Logits tracking: q @ k (times a scalar) feeding a softmax, or divided by the key count (dot-product Non-Local)."""
        if name in ("matmul", "bmm", "__matmul__") and isinstance(out, torch.Tensor) and out.ndim >= 3 and len(tensors) == 2:
            self._logits[id(out)] = (weakref.ref(out), tensors[0], tensors[1], 1.0)
            return
        if name not in SCALAR_OPS or not isinstance(out, torch.Tensor) or not args or not isinstance(args[0], torch.Tensor):
            return
        hit = self._logits.get(id(args[0]))
        other = args[1] if len(args) > 1 else None
        if hit is None and name in DIVISIONS and isinstance(other, (int, float)) and self._pairwise_mean(args[0], float(other)):
            self._candidate("normalized", out, frame, dim=out.ndim - 1)  # f / N over pairs of positions (concatenation Non-Local)
        if hit is None or hit[0]() is not args[0] or not isinstance(other, (int, float)):
            return
        if name in ("mul", "__mul__", "mul_", "__imul__"):
            self._logits[id(out)] = (weakref.ref(out), hit[1], hit[2], hit[3] * float(other))
        elif name in ("div", "__truediv__", "true_divide", "div_", "__itruediv__"):
            n = int(args[0].shape[-1])
            if float(other) == float(n) and hit[3] == 1.0:  # q·k / N: the dot-product Non-Local
                self._candidate("normalized", out, frame, dim=out.ndim - 1, qk=(hit[1], hit[2], 1.0))  # rows: (q·k) / N, once
            else:
                self._logits[id(out)] = (weakref.ref(out), hit[1], hit[2], hit[3] / float(other))

    def _new_candidate(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor, frame: Frame) -> None:
        """A sigmoid-like gate or a softmax becomes a candidate (a criss-cross softmax is decided at once)."""
        if name in GATES:
            self._candidate("sigmoid" if name != "hardsigmoid" else "hardsigmoid", out, frame, arg=args[0] if args else kwargs.get("input"))
            return
        if name not in SOFTMAXES:
            return
        x = args[0] if args else kwargs.get("input")
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if dim is None:  # the legacy implicit dim of F.softmax
            dim = 0 if out.ndim in (0, 1, 3) else 1
        dim = int(dim) % out.ndim
        if self._cross(out, dim, frame):
            return
        qk = None
        hit = self._logits.get(id(x)) if isinstance(x, torch.Tensor) else None
        if hit is not None and hit[0]() is x and dim == out.ndim - 1:
            qk = (hit[1], hit[2], hit[3])
        self._candidate("softmax", out, frame, dim=dim, qk=qk)

    def _mixes_softmaxes(self, name: str, args: tuple[Any, ...], derived: list[tuple[torch.Tensor, _Derived]], out: torch.Tensor,
                         frame: Frame) -> bool:
        """A gated mix of attention maps, renormalised (ConViT's gated positional self-attention: (1 − σ(λ))·softmax(QKᵀ) +
        σ(λ)·softmax(positions), then divided by its row sums). The steps: a softmax times a factor that is constant over
        queries and keys; the sum of two such terms from different softmaxes over the same shape (a new candidate: the mix);
        the mix divided by a tensor constant over keys. True when the op was one of these steps."""
        soft = [(t, d) for t, d in derived if d.cand.op == "softmax" and t.shape == out.shape and d.cand.dim == out.ndim - 1]
        others = [a for a in args[:2] if isinstance(a, torch.Tensor) and all(a is not t for t, _ in soft)]
        if name in MULS and len(soft) == 1 and len(others) == 1 and others[0].ndim == out.ndim and others[0].shape[-2:] == (1, 1):
            self._mark(out, _Derived(soft[0][1].cand, True))  # a weighted term: its values are not the softmax's any more
            return True
        if name in ("add", "__add__", "__radd__") and len(soft) == 2 and soft[0][1].cand is not soft[1][1].cand:
            if not (soft[0][1].changed and soft[1][1].changed):
                return False
            for _, d in soft:
                d.cand.used = True
            c = Candidate("softmax", out, frame, out.ndim - 1, mix=True)
            c.note = "gated mix of two softmaxes (per-head weights), renormalised: the weights that multiply the values"
            self.cands.append(c)
            self._mark(out, _Derived(c, False))
            return True
        t, d = derived[0]
        div = args[1] if len(args) > 1 else None
        if name in DIVISIONS and t is args[0] and d.cand.mix and isinstance(div, torch.Tensor) \
                and div.ndim == out.ndim and div.shape[-1] == 1 and t.shape == out.shape:
            self._mark(out, _Derived(d.cand, False))  # renormalised over the keys: the mix's own values, as used
            return True
        return False

    def _mixes_heads(self, t: torch.Tensor, d: _Derived, args: tuple[Any, ...]) -> bool:
        """Whether ``linear(t)`` mixes attention heads (talking heads, Shazeer et al. 2020): a square weight over ``t``'s
        last axis, which is neither an image position, nor the batch, nor one of the softmax's query / key axes."""
        w = args[1] if len(args) > 1 else None
        lt, src_l = self.get(t), self.get(d.cand.source)
        if not isinstance(w, torch.Tensor) or w.ndim != 2 or w.shape[0] != w.shape[1] or lt is None or src_l is None or d.cand.dim is None:
            return False
        last = lt[-1]
        if last is None or positions(last) is not None or any(_base(a[1]) in ("b", "h", "w") for a in last):
            return False
        return last != src_l[d.cand.dim] and sum(ax is not None and positions(ax) is not None for ax in lt) == 2

    def _pairwise_mean(self, t: torch.Tensor, other: float) -> bool:
        """Whether ``t / other`` normalises pairwise weights by their key count: ``t``'s last two axes are image positions
        and ``other`` is the number of keys (Non-Local's ``f / N`` with f not a product of queries and keys)."""
        lb = self.get(t)
        return (lb is not None and t.ndim >= 3 and other == float(t.shape[-1]) and positions(lb[-1]) is not None
                and positions(lb[-2]) is not None)

    def _cross(self, out: torch.Tensor, dim: int, frame: Frame) -> bool:
        """A softmax over a criss-cross key axis (column ⊕ row of the query's grid): CCNet's attention."""
        lb = self.get(out)
        if lb is None or out.ndim != 4 or dim != 3 or not lb[3] or lb[3][0][1] != "cross":
            return False
        g = lb[3][0][0]
        if not (lb[1] and lb[2] and lb[1][0] == (g, "h", out.shape[1]) and lb[2][0] == (g, "w", out.shape[2])):
            return False
        rec = CrissCross(attention=keep(out))
        rec.source = "generic"
        self.emit(frame, "criss_cross", rec)
        return True

    def _candidate(self, op: str, out: torch.Tensor, frame: Frame, dim: int | None = None, qk: Any = None, arg: Any = None) -> None:
        c = Candidate(op, out, frame, dim, qk, arg=weakref.ref(arg) if isinstance(arg, torch.Tensor) else None)
        self.cands.append(c)
        self._mark(out, _Derived(c, False))

    def _stack(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor) -> bool:
        """``torch.stack`` of branches: a new "branch" axis; other axes keep the first input's labels. True when a
        stacked tensor is a candidate."""
        ts = args[0] if args else kwargs.get("tensors")
        dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.ndim
        first = self.get(ts[0]) if ts else None
        g = new_grid()
        lb: list[Axis] = list(first) if first is not None else [None] * (out.ndim - 1)
        lb.insert(dim, ((g, "branch", int(out.shape[dim])),))
        self.set(out, tuple(lb))
        touched = False
        for t in ts or []:
            d = self._derive(t)
            if d is not None:
                d.cand.reasons.append("stacked into a tensor of several branches")
                touched = True
        return touched

    # ---- decisions: gates
    def _gate_used(self, g: torch.Tensor, d: _Derived, p: torch.Tensor, out: torch.Tensor, op: str) -> None:
        """A sigmoid / softmax candidate ``g`` multiplies ``p``: what it varies along (batch, channels, rows, columns,
        branches) decides the record's kind; an activation, a constant or an untraceable axis is the reason there is none."""
        c = d.cand
        if c.used or c.source is p or (self._derive(p) is not None and self._derive(p).cand is c):  # type: ignore[union-attr]
            return
        if not self._multiplies_a_map(c, p, out):
            return
        gl = self.get(g)
        vary, labels = self._gate_axes(g, gl, self.get(p), p, out)  # type: ignore[arg-type]
        if any(labels[k] is None for k in vary):
            c.reasons.append(f"varies along an axis of the product {tuple(out.shape)} that cannot be traced to channels or positions")
            return
        atoms = [a for k in vary for a in labels[k]]  # type: ignore[union-attr]
        bases = {_base(a[1]) for a in atoms}
        n = out.ndim
        per_sample = "b" in bases if (int(out.shape[0]) if n else 1) > 1 else self.get(c.source) is not None
        if not per_sample:
            c.reasons.append("does not depend on the sample (a learned constant, not a gate)")
            return
        gt = self._values(g, d)
        if gt is None:
            c.reasons.append("its values could not be aligned with the feature map")
            return
        gl_vals = tuple(labels[k] if k in vary else None for k in range(n))
        gl_vals = gl_vals[n - gt.ndim:] if gt.ndim < n else gl_vals
        kind_bases = bases - {"b"}
        branch_axis = self._softmax_axis(c, g, gl, [None] * (n - g.ndim) + list(range(g.ndim)), vary)
        if branch_axis is not None and kind_bases <= {"c", "branch"} and "branch" not in kind_bases \
                and self._branch_record(c, gt, gl_vals, branch_axis - (n - gt.ndim)):
            return
        try:
            self._gate_record(c, kind_bases, gt, gl_vals, atoms)
        except ValueError:
            c.reasons.append("its axes could not be arranged as (batch, channels, rows, columns)")

    def _multiplies_a_map(self, c: Candidate, p: torch.Tensor, out: torch.Tensor) -> bool:
        """Whether the other factor is a traced map of the product's rank (else the reason, or x·σ(x) reported seen)."""
        if c.arg is not None and c.arg() is p:
            c.used = True  # x · σ(x): Swish / SiLU, an activation
            self.report_seen(Seen(c.frame.name, c.op, tuple(c.source.shape),
                                  "x·σ(x) multiplies the very tensor it was computed from: an activation (Swish/SiLU), not a gate"))
            return False
        if self.get(p) is None:
            c.reasons.append(f"multiplies a tensor of shape {tuple(p.shape)} whose axes cannot be traced to the image")
            return False
        if p.ndim != out.ndim:
            c.reasons.append(f"multiplies a tensor of shape {tuple(p.shape)} of a different rank")
            return False
        return True

    @staticmethod
    def _gate_axes(g: torch.Tensor, gl: Labels | None, pl: Labels, p: torch.Tensor, out: torch.Tensor) -> tuple[list[int], list[Axis]]:
        """The product's axes the gate varies along (not broadcast, not expanded before the op), and every product axis'
        labels (the map's where it has the product's size, else the gate's)."""
        n = out.ndim
        g_al = [None] * (n - g.ndim) + list(range(g.ndim))
        vary: list[int] = []
        for k in range(n):
            j = g_al[k]
            constant = gl is not None and j is not None and is_broadcast(gl[j])  # expanded before a (softmax) op
            if j is not None and g.shape[j] > 1 and g.stride(j) != 0 and not constant:
                vary.append(k)
        labels = [pl[k] if int(p.shape[k]) == int(out.shape[k]) else (gl[g_al[k]] if gl is not None and g_al[k] is not None else None)
                  for k in range(n)]
        return vary, labels

    def _branch_record(self, c: Candidate, gt: torch.Tensor, gl_vals: tuple[Axis, ...], j: int) -> bool:
        """A softmax across a split of the channels (ResNeSt's radix, PSA's scales): branch weights (B, M, C/M)."""
        lb = list(gl_vals)
        lb[j] = tuple((g_, "branch", s_) for g_, _, s_ in lb[j])  # type: ignore[union-attr]
        res = canonical(gt, tuple(lb), ("b", "branch", "c"))
        if res is None:
            return False
        w, _ = res
        rec = BranchWeights(weights=keep(w))
        rec.note = f"softmax across {w.shape[1]} channel groups (branches), per channel"
        self._record(c, "branch", rec)
        return True

    def _gate_record(self, c: Candidate, kind_bases: set[str], gt: torch.Tensor, gl_vals: tuple[Axis, ...], atoms: list[Atom]) -> None:
        """The record of a gate by what it varies along: channels, positions, branches, channels × one axis, or every
        element; anything else is no whole-image map. Raises ValueError when the axes cannot be arranged."""

        def arranged(order: tuple[str, ...]) -> tuple[torch.Tensor, dict[str, int]]:
            res = canonical(gt, gl_vals, order)
            if res is None:
                raise ValueError
            return res

        one_grid = len({a[0] for a in atoms if _base(a[1]) in ("h", "w")}) == 1 and self._complete(atoms)
        if kind_bases == {"c"}:
            w, _ = arranged(("b", "c"))
            rec: Record = ChannelGate(weights=keep(w.reshape(w.shape[0], -1)))
            if c.op == "softmax":
                rec.note = "softmax across channel groups (e.g. PSA's scale branches), applied as a per-channel weight"
            self._record(c, "channel", rec)
        elif kind_bases in ({"h", "w"}, {"h"}, {"w"}) and one_grid:
            m, sizes = arranged(("b", "h", "w"))
            self._record(c, "spatial", SpatialMask(mask=keep(m.reshape(m.shape[0], sizes.get("h", 1), sizes.get("w", 1)))))
        elif kind_bases == {"branch", "c"}:
            self._record(c, "branch", BranchWeights(weights=keep(arranged(("b", "branch", "c"))[0])))
        elif kind_bases in ({"c", "h"}, {"c", "w"}) and one_grid:
            axis = "h" if "h" in kind_bases else "w"
            self._record(c, f"gate_c{axis}", AxisGate(weights=keep(arranged(("b", "c", axis))[0]), axes=("c", axis)))
        elif kind_bases == {"c", "h", "w"} and one_grid:
            full, _ = arranged(("b", "c", "h", "w"))
            rec = ElementGate(gate=keep(full), mask=keep(full.mean(1)))
            rec.note = f"a per-element {c.op} gate over {full.shape[1]} channels × positions; drawn: its channel mean"
            self._record(c, "gate", rec)
        else:
            c.reasons.append(f"varies along {', '.join(sorted(kind_bases))} — not a whole-image map (e.g. windows or parts of the rows)")

    def _softmax_axis(self, c: Candidate, g: torch.Tensor, gl: Labels | None, g_al: list[int | None], vary: list[int]) -> int | None:
        """The product axis that the candidate's softmax normalised over, if it is one of the varying ones."""
        if c.op != "softmax" or c.dim is None or gl is None:
            return None
        src = self.get(c.source)
        if src is None or not src[c.dim]:
            return None
        soft = set(src[c.dim])  # type: ignore[arg-type]
        hits = [k for k in vary if g_al[k] is not None and gl[g_al[k]] and set(gl[g_al[k]]) & soft]  # type: ignore[arg-type, index]
        return hits[0] if len(hits) == 1 else None

    def _complete(self, atoms: list[tuple[int, str, int]]) -> bool:
        """Whether the spatial atoms cover each of h and w of their grid entirely (all split parts present)."""
        for base in ("h", "w"):
            parts = [a for a in atoms if _base(a[1]) == base]
            if not parts:
                continue
            names = [a[1] for a in parts]
            if base in names:
                continue
            merged = merge_atoms(sorted(parts, key=_sort_key))
            if not any(a[1] == base for a in merged):
                return False
        return True

    def _values(self, g: torch.Tensor, d: _Derived) -> torch.Tensor | None:
        """The gate's values with ``g``'s shape: ``g`` itself, or its source when scalar ops changed them (1 + gate)."""
        if not d.changed:
            return g
        src = d.cand.source
        if d.order is None:  # permuted and then reshaped: where the source's values went is not followed
            return None
        if d.order:  # permuted (and scaled): the source's values, permuted the same way
            moved = src.permute(d.order)
            return moved if moved.shape == g.shape else None
        if src.shape == g.shape and self.get(src) != self.get(g):  # the same shape, other axes: not placeable
            return None
        try:
            return src.expand_as(g) if src.shape != g.shape else src
        except RuntimeError:
            return None

    def _record(self, c: Candidate, suffix: str, rec: Record) -> None:
        c.used = True
        rec.source = "generic"
        if c.note and not rec.note:
            rec.note = c.note
        self.emit(c.frame, suffix, rec)

    # ---- decisions: attention
    def _attention_used(self, name: str, args: tuple[Any, ...], derived: list[tuple[torch.Tensor, _Derived]], out: torch.Tensor) -> None:
        a, d = derived[0]
        c = d.cand
        if c.used or c.dim is None:
            return
        al = self.get(a)
        src_l = self.get(c.source)
        if src_l is None or al is None:
            c.reasons.append(f"contracted by {name}, but its axes cannot be traced to the image")
            return
        key_axis = src_l[c.dim]
        # which axis of `a` is the normalised one, and is it the contracted one?
        ops = list(args[1:]) if name == "einsum" else list(args[:2])
        if name == "baddbmm":
            ops = list(args[1:3])
        if name == "__rmatmul__":
            ops = ops[::-1]
        pos = next((i for i, t in enumerate(ops) if t is a), None)
        if pos is None:
            return
        if name == "einsum":
            eq = args[0].replace(" ", "")
            lhs, rhs = eq.split("->") if "->" in eq else (eq, "")
            term = lhs.split(",")[pos]
            letters = [ch for ch, ax in zip(term, al) if ax == key_axis]
            contracted = bool(letters) and letters[0] not in rhs
            k_idx = term.index(letters[0]) if letters else -1
        else:
            k_idx = a.ndim - 1 if pos == 0 else a.ndim - 2
            contracted = al[k_idx] == key_axis or (al[k_idx] is not None and key_axis is not None and merge_atoms(al[k_idx]) == merge_atoms(key_axis))
        if not contracted:
            c.reasons.append(f"{c.op} axis is not the one {name} contracts")
            return
        q_idx = (a.ndim - 2 if pos == 0 else a.ndim - 1) if name != "einsum" else next(
            (i for i in range(a.ndim) if i != k_idx and al[i] is not None and _base(al[i][0][1]) != "b"), -1)
        q_axis = al[q_idx] if 0 <= q_idx < a.ndim else None
        lead = [al[i] for i in range(a.ndim) if i not in (k_idx, q_idx)]
        self._decide_attention(c, a, d, al, k_idx, q_idx, key_axis, q_axis, lead, out)

    def _lead_split(self, lead: list[Axis]) -> tuple[list[tuple[int, str, int]], list[tuple[int, str, int]]] | None:
        """Leading atoms: (head-like atoms, spatial window atoms); None if the batch atom is missing."""
        atoms = [a for ax in lead if ax for a in ax]
        if not any(a[1] == "b" for a in atoms) and self.batch != 1:  # (a batch of 1 has no batch atom: size-1 axes carry none)
            return None
        heads = [a for a in atoms if _base(a[1]) not in ("b", "h", "w")]
        spatial = [a for a in atoms if _base(a[1]) in ("h", "w")]
        return heads, spatial

    def _decide_attention(self, c: Candidate, a: torch.Tensor, d: _Derived, al: Labels, k_idx: int, q_idx: int, key_axis: Axis,
                          q_axis: Axis, lead: list[Axis], out: torch.Tensor) -> None:
        split = self._lead_split(lead)
        if split is None:
            c.reasons.append("its leading axes do not hold the batch (e.g. a softmax over the batch axis)")
            return
        heads_atoms, window_atoms = split
        kp, qp = positions(key_axis), positions(q_axis) if q_axis else None
        kpl, qpl = placed(key_axis), placed(q_axis) if q_axis else None  # also grids whose last cells run past the edge
        rid = next((at[0] for at in (key_axis or ()) if at[1] == "region" and at[0] in self._regions), None)
        region = self._regions[rid] if rid is not None else None
        norm = "softmax" if c.op == "softmax" else "mean"
        # one query (attention pooling) only when no other axis of size > 1 is there: an unlabelled one is a query axis we lost
        one_query = size_of(q_axis) == 1 if q_axis is not None else not any(
            al[i] is None and a.shape[i] > 1 for i in range(a.ndim) if i != k_idx)
        if kp is not None and not window_atoms and one_query:  # attention pooling: one query over the image
            m = self._matrix(a, d, al, k_idx, q_idx)
            if m is None:
                c.reasons.append("attention pooling whose axes could not be arranged")
            else:
                self._record(c, "spatial", SpatialMask(mask=keep(m.mean(1)[:, 0].reshape(m.shape[0], kp[1], kp[2]))))  # (B, H, W), heads averaged
            return
        if kp is None and one_query and not window_atoms and self._one_query_over_tokens(c, a, d, al, k_idx, q_idx, key_axis, q_axis):
            return
        if kpl is not None and q_axis is not None and not window_atoms and qpl is None and size_of(q_axis) > 1 and not is_channels(q_axis):
            c.reasons.append("softmax over positions with an untraceable query axis")
            return
        if kp is not None and q_axis is not None and is_channels(q_axis) and not window_atoms and not positions(q_axis):
            self._soft_regions(c, a, d, al, k_idx, q_idx, kp, out)
            return
        if region is not None and qp is not None:  # pixels over the soft regions kept before
            m = self._matrix(a, d, al, k_idx, q_idx)
            if m is not None:
                self._region_of.pop(rid, None)  # type: ignore[arg-type]
                self._record(c, "", RegionAttention(region_maps=region[0], pixel_weights=keep(m.mean(1)), query_hw=(qp[1], qp[2])))  # (B, N, K)
            return
        if qp is not None and not window_atoms and self._pyramid_keys(c, a, d, al, k_idx, q_idx, key_axis, qp):
            return
        if is_channels(key_axis) and one_query and not window_atoms:
            self._channel_pooling(c, self._matrix(a, d, al, k_idx, q_idx))
            return
        if is_channels(key_axis) and q_axis is not None and is_channels(q_axis) and not window_atoms:
            self._channel_affinity(c, a, d, al, k_idx, q_idx, key_axis, q_axis, heads_atoms)
            return
        if kpl is not None and qpl is not None and not window_atoms:
            self._affinity(c, a, d, al, k_idx, q_idx, qpl, kpl, norm)
            return
        if key_axis and q_axis and all(HALO.match(x[1]) for x in key_axis):
            self._halo(c, a, d, al, k_idx, q_idx, key_axis, q_axis, window_atoms)
            return
        if window_atoms and key_axis and q_axis and all(_base(x[1]) in ("h", "w") for x in (*key_axis, *q_axis)):
            self._window(c, a, d, al, k_idx, q_idx, window_atoms, heads_atoms)
            return
        lq, lk = token_layout(q_axis) if q_axis else None, token_layout(key_axis)
        if lq is not None and lk is not None and (lq.prefix or lk.prefix) and not window_atoms and c.op == "softmax":
            self._tokens(c, a, d, al, k_idx, q_idx, lq, lk)
            return
        n = size_of(key_axis) if key_axis else "?"
        c.reasons.append(f"{c.op} over {n} keys that are not image positions" if kp is None else
                         f"{c.op} over {n} image positions, from queries that are not image positions (their grid was not followed)")

    def _channel_pooling(self, c: Candidate, m: torch.Tensor | None) -> None:
        """One query over channels (attention pooling over channels): a channel gate of the weights ``m`` (B, heads, 1, C)."""
        if m is None:
            return
        rec = ChannelGate(weights=keep(m.mean(1)[:, 0]))
        rec.note = f"{c.op} weights over {m.shape[-1]} channels, used to pool them (attention pooling over channels)"
        self._record(c, "channel", rec)

    def _soft_regions(self, c: Candidate, a: torch.Tensor, d: _Derived, al: Labels, k_idx: int, q_idx: int, kp: tuple[int, int, int],
                      out: torch.Tensor) -> None:
        """K soft regions (one softmax over the image per channel of a class / region map, OCR): kept, and the pooled
        features' region axis labelled, for the pixel → region attention that uses them."""
        m = self._matrix(a, d, al, k_idx, q_idx)
        if m is None:
            return
        maps = m.mean(1).reshape(m.shape[0], -1, kp[1], kp[2])  # (B, K, H, W)
        g = new_grid()
        self._regions[g] = (keep(maps), (kp[1], kp[2]))
        self._region_of[g] = c
        ol = list(self.get(out) or (None,) * out.ndim)
        oq = out.ndim - 2 if k_idx == a.ndim - 1 else out.ndim - 1
        if 0 <= oq < out.ndim:  # the pooled features' region axis
            ol[oq] = ((g, "region", int(out.shape[oq])),)
            self.set(out, tuple(ol))
        c.used = True
        c.reasons.append("soft regions (kept for the pixel → region attention that uses them)")

    def _halo(self, c: Candidate, a: torch.Tensor, d: _Derived, al: Labels, k_idx: int, q_idx: int, key_axis: Axis, q_axis: Axis,
              blocks: list[tuple[int, str, int]]) -> None:
        """Query blocks over halo windows of the key grid (HaloNet): keys are ``Tensor.unfold`` windows of a zero-padded grid,
        paired one for one with the queries' blocks (checked where q meets k, see provenance)."""
        wins = [HALO.match(x[1]) for x in key_axis or ()]
        if not blocks and q_axis and [x[1] for x in q_axis] == ["h", "w"]:  # one block: the whole query grid over one window
            q_axis = tuple((g, f"{n}[{s}i]", s) for g, n, s in q_axis)
            blocks = [(q_axis[0][0], "h[1o]", 1), (q_axis[0][0], "w[1o]", 1)]
        inner = [(_SPLIT.match(x[1]), x[2]) for x in q_axis or ()]
        outer = [(_SPLIT.match(x[1]), x[2]) for x in blocks]
        lead = [at for i in range(a.ndim) if i not in (k_idx, q_idx) for at in (al[i] or ()) if at[1] != "b"]
        if not (len(wins) == len(inner) == len(outer) == 2 and [m["kind"] + m["base"] for m in wins] == ["winh", "winw"]  # type: ignore[index]
                and all(m and m["base"] == b and m["part"] == p for (m, _), b, p in zip(inner + outer, "hwhw", "iioo"))
                and (lead[-2:] == blocks or outer[0][1] == outer[1][1] == 1)):
            c.reasons.append("attention over halo windows whose blocks and windows could not be paired row by row")
            return
        m = self._matrix(a, d, al, k_idx, q_idx)
        if m is None:
            c.reasons.append("attention over halo windows whose axes could not be arranged")
            return
        (bh, bw), (nbh, nbw) = (inner[0][1], inner[1][1]), (outer[0][1], outer[1][1])
        kh, kw = int(wins[0]["n"]), int(wins[1]["n"])  # type: ignore[index]
        weights = m.reshape(m.shape[0], -1, nbh, nbw, bh * bw, m.shape[-1])  # (B, heads, blocks_h, blocks_w, Nq, Nk)
        rec = HaloAffinity(weights=keep(weights), query_hw=(nbh * bh, nbw * bw), key_hw=(kh, kw), block=(bh, bw),
                           window=(key_axis[0][2], key_axis[1][2]), step=(kh // nbh, kw // nbw),  # type: ignore[index]
                           pad=(int(wins[0]["b"]), int(wins[1]["b"])))  # type: ignore[index]
        self._record(c, "", rec)

    def _one_query_over_tokens(self, c: Candidate, a: torch.Tensor, d: _Derived, al: Labels, k_idx: int, q_idx: int, key_axis: Axis,
                               q_axis: Axis) -> bool:
        """One query over a token sequence with prefix tokens (CaiT / XCiT / VOLO class attention): drawn over the patch keys."""
        lk = token_layout(key_axis)
        if lk is None or not lk.prefix:
            return False
        m = self._matrix(a, d, al, k_idx, q_idx)
        if m is None:
            c.reasons.append("one query over tokens whose axes could not be arranged")
            return True
        self._record(c, "", _token_pooling(m, lk, prefix_names(q_axis) if q_axis else None, c.op))
        return True

    def _pyramid_keys(self, c: Candidate, a: torch.Tensor, d: _Derived, al: Labels, k_idx: int, q_idx: int, key_axis: Axis,
                      qp: tuple[int, int, int]) -> bool:
        """Pixels over pyramid cells (ANN's APNB / AFNB keys: adaptive average pools of one grid, joined): pixel → region
        attention whose regions are the cells' exact pooling areas. Returns whether the candidate was decided here."""
        pyr = pyramid_regions(key_axis)
        if pyr is None:
            return False
        m = self._matrix(a, d, al, k_idx, q_idx)
        if m is None:
            c.reasons.append("attention over pyramid cells whose axes could not be arranged")
            return True
        maps = pyr[1]  # (K, H, W) on the pooled grid
        rec = RegionAttention(region_maps=maps.expand(m.shape[0], *maps.shape).clone(), pixel_weights=keep(m.mean(1)), query_hw=(qp[1], qp[2]))
        scales = key_axis[0][1].split(":")[2]  # type: ignore[index]
        rec.note = f"{c.op} over {maps.shape[0]} pyramid cells ({scales} adaptive average pools of a {maps.shape[1]}×{maps.shape[2]} grid)"
        self._record(c, "", rec)
        return True

    def _channel_affinity(self, c: Candidate, a: torch.Tensor, d: _Derived, al: Labels, k_idx: int, q_idx: int, key_axis: Axis, q_axis: Axis,
                          heads_atoms: list[Any]) -> None:
        """Channels over channels (DANet CAM; XCiT's heads, each within its own channel group: block diagonal)."""
        groups = _channel_groups(key_axis, q_axis, heads_atoms)
        m = self._matrix(a, d, al, k_idx, q_idx) if groups else None
        if m is None:
            c.reasons.append("channel attention whose heads are not groups of the channels it attends over")
            return
        rec = ChannelAffinity(matrix=keep(_block_diagonal(m)), groups=groups or 1)
        rec.note = f"{c.op} over channels" + (f", per head within its group of {m.shape[-1]} channels (block diagonal)" if m.shape[1] > 1 else "")
        self._record(c, "channel_affinity", rec)

    def _matrix(self, a: torch.Tensor, d: _Derived, al: Labels, k_idx: int, q_idx: int) -> torch.Tensor | None:
        """The weights as ``(B, heads, Nq, Nk)`` (queries 1 when absent), heads = every folded non-batch atom."""
        vals = self._values(a, d)
        if vals is None:
            return None
        lead = [i for i in range(a.ndim) if i not in (k_idx, q_idx)]
        order = lead + ([q_idx] if 0 <= q_idx < a.ndim else []) + [k_idx]
        x = vals.permute(order)
        atoms = [at for i in lead for at in (al[i] or ())]
        bsz = next((at[2] for at in atoms if at[1] == "b"), 1 if self.batch == 1 else None)
        if bsz is None:
            return None
        if any(at[1] == "b" for at in atoms) and atoms[0][1] != "b":  # the batch must be the outermost folded atom
            return None
        nq = int(a.shape[q_idx]) if 0 <= q_idx < a.ndim else 1
        return x.reshape(bsz, -1, nq, int(a.shape[k_idx]))

    def _affinity(self, c: Candidate, a: torch.Tensor, d: _Derived, al: Labels, k_idx: int, q_idx: int, qp: tuple[int, int, int, Cells | None],
                  kp: tuple[int, int, int, Cells | None], norm: str) -> None:
        grids = {"query_hw": (qp[1], qp[2]), "key_hw": (kp[1], kp[2]), "query_cells": qp[3], "key_cells": kp[3]}
        if c.qk is not None and not d.changed:
            q, k, scale = c.qk
            ql, kl = self.get(q), self.get(k)
            qq = self._arrange(q, ql, q.ndim - 2, q.ndim - 1, query=True)
            kk = self._arrange(k, kl, k.ndim - 1, k.ndim - 2, query=False)
            if qq is not None and kk is not None:
                rec = Affinity(queries=self._keep_qk(qq), keys=self._keep_qk(kk), scale=scale, normalize=norm, **grids)
                self._record(c, "", rec)
                return
        m = self._matrix(a, d, al, k_idx, q_idx)
        if m is None:
            c.reasons.append("attention whose axes could not be arranged as (batch, heads, queries, keys)")
            return
        if m.numel() > MAX_MATRIX:
            c.reasons.append(f"its logits are not plain scale·QKᵀ (a bias or mask is added), and the whole matrix "
                             f"({m.numel() / 1e6:.0f} M weights) is over the {MAX_MATRIX / 1e6:.0f} M limit for keeping it")
            return
        self._record(c, "", Affinity(matrix=keep(m), normalize=norm, **grids))

    def _tokens(self, c: Candidate, a: torch.Tensor, d: _Derived, al: Labels, k_idx: int, q_idx: int, lq: Any, lk: Any) -> None:
        """Explicit attention over tokens: lazy rows from q and k when the logits are exactly scale · QKᵀ, else the weights kept."""
        kw: dict[str, Any] = {"query_hw": lq.hw, "key_hw": lk.hw, "query_prefix": lq.prefix, "key_prefix": lk.prefix}
        if c.qk is not None and not d.changed:
            q, k, scale = c.qk
            qq = self._arrange(q, self.get(q), q.ndim - 2, q.ndim - 1, query=True)
            kk = self._arrange(k, self.get(k), k.ndim - 1, k.ndim - 2, query=False)
            if qq is not None and kk is not None:
                self._record(c, "", TokenAttention(queries=self._keep_qk(qq), keys=self._keep_qk(kk), scale=scale, **kw))
                return
        m = self._matrix(a, d, al, k_idx, q_idx)
        if m is None or m.numel() > MAX_MATRIX:
            c.reasons.append("attention over tokens whose weights could not be arranged or kept")
            return
        self._record(c, "", TokenAttention(matrix=keep(m), **kw))

    def _arrange(self, t: torch.Tensor, lb: Labels | None, pos_idx: int, dim_idx: int, query: bool) -> torch.Tensor | None:
        """Queries ``(B, heads, N, d)`` or keys ``(B, heads, d, M)`` from a matmul operand."""
        if lb is None:
            return None
        lead = [i for i in range(t.ndim) if i not in (pos_idx, dim_idx)]
        atoms = [at for i in lead for at in (lb[i] or ())]
        has_b = bool(atoms) and atoms[0][1] == "b"
        if (not has_b and self.batch != 1) or any(at[1] == "b" for at in atoms[1:]) or any(_base(at[1]) in ("h", "w") for at in atoms):
            return None
        order = lead + ([pos_idx, dim_idx] if query else [dim_idx, pos_idx])
        x = t.permute(order)
        return x.reshape(atoms[0][2] if has_b else 1, -1, int(t.shape[order[-2]]), int(t.shape[order[-1]]))

    def _window(self, c: Candidate, a: torch.Tensor, d: _Derived, al: Labels, k_idx: int, q_idx: int, window_atoms: list[Any],
                heads_atoms: list[Any]) -> None:
        vals = self._values(a, d)
        if vals is None:
            return
        lead = [i for i in range(a.ndim) if i not in (k_idx, q_idx)]
        x = vals.permute(lead + [q_idx, k_idx])
        lead_atoms = [at for i in lead for at in (al[i] or ())]
        full = x.reshape([at[2] for at in lead_atoms] + [int(a.shape[q_idx]), int(a.shape[k_idx])])
        if full.numel() > MAX_MATRIX:
            c.reasons.append(f"window-local attention with {full.numel() / 1e6:.0f} M weights, over the keep limit")
            return
        try:
            rec = placed_windows(keep(full), [(a_[1], a_[2]) for a_ in lead_atoms], [(a_[1], a_[2]) for a_ in (al[q_idx] or ())],
                                 [(a_[1], a_[2]) for a_ in (al[k_idx] or ())], _steps_of(window_atoms))
        except ValueError as e:
            c.reasons.append(f"window-local attention whose windows cannot be placed on the image: {e}")
            return
        self._record(c, "", rec)

    # ---- fused attention
    def _sdpa(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, frame: Frame) -> None:
        q = args[0] if args else kwargs["query"]
        k = args[1] if len(args) > 1 else kwargs["key"]
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        causal = bool(args[5] if len(args) > 5 else kwargs.get("is_causal", False))
        scale = args[6] if len(args) > 6 else kwargs.get("scale")
        scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        ql, kl = self.get(q), self.get(k)
        if isinstance(out, torch.Tensor) and ql is not None:  # the output keeps the queries' axes
            self.set(out, (*ql[:-1], None))
        if ql is not None and kl is not None:  # tokens of a grid in another order (Hiera's unrolled tokens): row-major copies
            q, ql = _row_major(q, ql, q.ndim - 2)
            k, kl = _row_major(k, kl, k.ndim - 2)
        qp = positions(ql[-2]) if ql else None
        kp = positions(kl[-2]) if kl else None
        # windows or grids folded into the batch first: their within-window atoms can look like a coarser grid on their own
        if ql is not None and kl is not None and self._sdpa_window(q, k, ql, kl, mask, causal, scale, frame):
            return
        if ql is not None and kl is not None and not causal and q.shape[-2] == 1 and self._sdpa_one_query(q, k, ql, kl, mask, scale, frame):
            return
        if (qp is None or kp is None) and ql is not None and kl is not None and not causal and self._sdpa_tokens(q, k, ql, kl, mask, scale, frame):
            return
        if qp is None or kp is None:
            self.report_seen(Seen(frame.name, "scaled_dot_product_attention", tuple(q.shape),
                                  "queries or keys are not traceable to image positions (e.g. tokens)"))
            return
        qq, kk = self._fused_qk(q, k, ql, kl)
        if qq is None or kk is None:
            self.report_seen(Seen(frame.name, "scaled_dot_product_attention", tuple(q.shape), "batch or heads could not be separated"))
            return
        rec = Affinity(queries=self._keep_qk(qq), keys=self._keep_qk(kk), query_hw=(qp[1], qp[2]), key_hw=(kp[1], kp[2]), scale=scale, mask=_keep_mask(mask),
                       causal=causal)
        self._record_fused(frame, rec)

    def _mha(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, frame: Frame) -> None:
        """``nn.MultiheadAttention``'s functional forms: q and k are the in-projections of its inputs, computed here with the
        op's own weights (the op itself runs unchanged); the rows then follow as for fused attention over tokens."""
        native = name == "_native_multi_head_attention"
        names = (("query", "key", "value", "embed_dim", "num_heads", "in_proj_weight", "in_proj_bias", "proj_weight", "proj_bias", "attn_mask")
                 if native else ("query", "key", "value", "embed_dim", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k", "bias_v",
                                 "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training", "key_padding_mask"))
        a = dict(zip(names, args)) | kwargs
        query, key, heads, e = a["query"], a["key"], int(a["num_heads"]), int(a["embed_dim"])
        seq_first = not native  # the functional form takes (L, B, E); the native op (B, L, E)
        ql, kl = self.get(query), self.get(key)
        first = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(first, torch.Tensor) and ql is not None and first.ndim == query.ndim:
            self.set(first, (*ql[:-1], None))  # the output keeps the queries' batch and tokens
        extras = [a.get(k) for k in ("attn_mask", "key_padding_mask", "bias_k", "bias_v")] + [a.get("add_zero_attn"), a.get("use_separate_proj_weight")]
        if any(v is not None and v is not False for v in extras) or query.ndim != 3 or ql is None or kl is None or a.get("in_proj_weight") is None:
            self.report_seen(Seen(frame.name, "multi_head_attention", tuple(query.shape),
                                  "multi-head attention with a mask, extra keys, separate projections or untraceable tokens"))
            return
        w, b = a["in_proj_weight"], a.get("in_proj_bias")
        hd = e // heads
        with torch.no_grad():
            q = F.linear(query, w[:e], None if b is None else b[:e])
            k = F.linear(key, w[e : 2 * e], None if b is None else b[e : 2 * e])
        order = (1, 2, 0, 3) if seq_first else (0, 2, 1, 3)
        q = q.reshape(*q.shape[:2], heads, hd).permute(order)  # (B, heads, L, hd)
        k = k.reshape(*k.shape[:2], heads, hd).permute(order)
        bi, ti = (1, 0) if seq_first else (0, 1)
        head_axis: Axis = ((new_grid(), "c", heads),)
        if not self._sdpa_tokens(q, k, (ql[bi], head_axis, ql[ti], None), (kl[bi], head_axis, kl[ti], None), None, 1.0 / math.sqrt(hd), frame):
            self.report_seen(Seen(frame.name, "multi_head_attention", tuple(query.shape), "queries or keys are not traceable to image positions"))

    def _fused_qk(self, q: torch.Tensor, k: torch.Tensor, ql: Labels, kl: Labels) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """A fused op's queries ``(B, heads, N, d)`` and keys ``(B, heads, d, M)`` (None where batch or heads cannot be separated)."""
        qq = self._arrange(q, ql, q.ndim - 2, q.ndim - 1, query=True)
        kk = self._arrange(k.transpose(-1, -2), tuple(list(kl[:-2]) + [kl[-1], kl[-2]]), k.ndim - 1, k.ndim - 2, query=False)
        return qq, kk

    def _sdpa_tokens(self, q: torch.Tensor, k: torch.Tensor, ql: Labels, kl: Labels, mask: Any, scale: float, frame: Frame) -> bool:
        """Fused attention over token sequences (prefix tokens ⊕ patches): rows stay lazy, from the captured q and k."""
        lq, lk = token_layout(ql[-2]), token_layout(kl[-2])
        if lq is None or lk is None:
            return False
        qq, kk = self._fused_qk(q, k, ql, kl)
        if qq is None or kk is None:
            self.report_seen(Seen(frame.name, "scaled_dot_product_attention", tuple(q.shape), "batch or heads could not be separated"))
            return True
        rec = TokenAttention(queries=self._keep_qk(qq), keys=self._keep_qk(kk), query_hw=lq.hw, key_hw=lk.hw, scale=scale, mask=_keep_mask(mask),
                             query_prefix=lq.prefix, key_prefix=lk.prefix)
        rec.note = "fused attention (scaled_dot_product_attention) over tokens; rows computed from its queries and keys"
        self._record_fused(frame, rec)
        return True

    def _sdpa_one_query(self, q: torch.Tensor, k: torch.Tensor, ql: Labels, kl: Labels, mask: Any, scale: float, frame: Frame) -> bool:
        """Fused attention of one query (class attention) over tokens with prefix tokens: the weights, as the op computes them."""
        lk = token_layout(kl[-2])
        if mask is not None or lk is None or not lk.prefix or (ql[-2] is not None and prefix_names(ql[-2]) is None):
            return False
        qq, kk = self._fused_qk(q, k, ql, kl)
        if qq is None or kk is None:
            return False
        with torch.no_grad():
            m = ((qq.float() @ kk.float()) * scale).softmax(-1)  # (B, heads, 1, P + M)
        self._record_fused(frame, _token_pooling(m, lk, prefix_names(ql[-2]) if ql[-2] else None, "softmax"))
        return True

    def _record_fused(self, frame: Frame, rec: Record) -> None:
        """Emit a record of a fused op (found by discovery, named after the calling module)."""
        rec.source = "generic"
        self.emit(frame, "", rec)

    def _sdpa_window(self, q: torch.Tensor, k: torch.Tensor, ql: Labels, kl: Labels, mask: Any, causal: bool, scale: float, frame: Frame) -> bool:
        """Fused attention inside windows folded into the batch: the weights, computed as the fused op does."""
        qa, ka = ql[-2], kl[-2]
        if not qa or not ka or not all(_base(a[1]) in ("h", "w") for a in (*qa, *ka)):
            return False
        lead = [at for ax in ql[:-2] for at in (ax or ())]
        if not any(_base(a[1]) in ("h", "w") for a in lead):
            return False
        logits = (q.float() @ k.float().transpose(-1, -2)) * scale
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
        if causal:
            n, m = logits.shape[-2:]
            logits = logits.masked_fill(torch.ones(n, m, dtype=torch.bool, device=logits.device).triu(1), float("-inf"))
        a = logits.softmax(-1)
        full = a.reshape([at[2] for at in lead] + [int(a.shape[-2]), int(a.shape[-1])])
        if full.numel() > MAX_MATRIX:
            self.report_seen(Seen(frame.name, "scaled_dot_product_attention", tuple(q.shape),
                                  f"window-local attention with {full.numel() / 1e6:.0f} M weights, over the keep limit"))
            return True
        try:
            rec = placed_windows(keep(full), [(at[1], at[2]) for at in lead], [(at[1], at[2]) for at in qa], [(at[1], at[2]) for at in ka],
                                 _steps_of([at for at in lead if _base(at[1]) in ("h", "w")]))
        except ValueError as e:
            self.report_seen(Seen(frame.name, "scaled_dot_product_attention", tuple(q.shape), f"window-local attention that cannot be placed: {e}"))
            return True
        fused = "fused attention (scaled_dot_product_attention) inside windows; weights recomputed from its queries, keys and mask"
        rec.note = f"{fused}; {rec.note}" if rec.note else fused
        self._record_fused(frame, rec)
        return True

    # ---- end of forward
    def finish(self) -> None:
        """Report every candidate that produced no record, with why."""
        for c in self.cands:
            if c.used:
                continue
            reason = c.reasons[-1] if c.reasons else "never used as a gate or as attention weights (e.g. an activation)"
            if not c.reasons and c.op in ("sigmoid", "hardsigmoid"):
                reason = "never multiplied into a feature map as a gate (an activation such as x·σ(x), or a score)"
            self.report_seen(Seen(c.frame.name, c.op, tuple(c.source.shape), reason))
        for g, c in self._region_of.items():  # soft regions that no pixel → region attention used
            self.report_seen(Seen(c.frame.name, c.op, tuple(c.source.shape),
                                  f"{self._regions[g][0].shape[1]} softmax maps over positions pool the features, but what "
                                  "mixes the pooled features back into pixels is linear (no pixel → region attention weights), as in a lambda layer"))
        self._region_of.clear()
        self._qk_bytes = 0
        self.cands.clear()
        self._labels.clear()
        self._made.clear()
        self._derived.clear()
        self._logits.clear()
        self._regions.clear()


def is_tensor_list(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(t, torch.Tensor) for t in x)


_ = (BATCH_GRID, F)
