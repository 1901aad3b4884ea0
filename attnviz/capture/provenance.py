"""Provenance: what each axis of a tensor *is*, followed through the ops of a forward pass.

Generic discovery decides what a gate or an attention matrix is from where its output goes and where its
axes come from, never from a shape coincidence. Every tensor derived from the model input carries axis
labels; an axis label is a tuple of *atoms* ``(grid, name, size)`` in row-major order: ``name`` is
``"b"`` (the batch; grid 0 for every tensor), ``"c"`` (channels of a grid), ``"h"`` / ``"w"`` (rows and
columns of a grid of image positions), or a split part of one of them (``"h[4o]"`` is the outer factor
of size 4 of ``h``, ``"h[8i]"`` the inner one). Labels follow views, reshapes, permutes, flattens,
splits, matmuls, einsums, elementwise ops and reductions; 4-D feature maps entering or leaving a module
without labels get fresh NCHW labels (a new grid), so convolutional stages stay labelled.

Token sequences are feature maps too: a sequence axis that concatenates named prefix tokens (class,
distillation, register tokens: atoms ``(0, "pre:<name>", n)``, from the model's token parameters) with the
positions of a grid becomes one *token axis* ``(t, "tok", P + H·W)`` whose :class:`TokenLayout` says which
position is which; slicing the prefix off gives the grid's positions back.

With labels, the questions of generic discovery have exact answers: a sigmoid that multiplies a feature
map is a channel gate if it varies along ``c`` only, a spatial mask if along ``h, w`` only; a softmax
contracted by a matmul against values is attention whose key axis is positions of a grid (or a window
of one, or regions); heads, groups and windows folded into the batch are atoms next to ``b``.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Atom = tuple[int, str, int]  # (grid, name, size)
Axis = tuple[Atom, ...] | None  # None: unknown
Labels = tuple[Axis, ...]

BATCH_GRID = 0
_grid_ids = itertools.count(1)
_SPLIT = re.compile(r"^(?P<base>.+)\[(?P<size>\d+)(?P<part>[oi])\]$")


@dataclass(frozen=True)
class TokenLayout:
    """A token axis: ``prefix`` tokens (names in order) followed by the ``hw`` positions of ``grid`` in row-major order."""

    prefix: tuple[str, ...]
    grid: int
    hw: tuple[int, int]

    @property
    def size(self) -> int:
        return len(self.prefix) + self.hw[0] * self.hw[1]


TOKENS: dict[int, TokenLayout] = {}  # token-axis id → layout (ids come from the grid counter: unique in the process)
MAX_TOKEN_LAYOUTS = 100_000


def _remember(table: dict[int, Any], value: Any) -> int:
    """A new grid id mapped to ``value`` in ``table``; a long-running server forgets the oldest half past the cap (their
    forwards are over)."""
    if len(table) > MAX_TOKEN_LAYOUTS:
        for k in list(table)[: MAX_TOKEN_LAYOUTS // 2]:
            del table[k]
    g = new_grid()
    table[g] = value
    return g


def token_axis(layout: TokenLayout) -> Axis:
    """A new token axis for ``layout``."""
    return ((_remember(TOKENS, layout), "tok", layout.size),)


def token_layout(axis: Axis) -> TokenLayout | None:
    """The layout of a token axis, or (no prefix) of an axis that is exactly the positions of a grid; None otherwise."""
    if axis and len(axis) == 1 and axis[0][1] == "tok":
        return TOKENS.get(axis[0][0])
    p = positions(axis)
    return TokenLayout((), p[0], (p[1], p[2])) if p is not None else None


def prefix_names(axis: Axis) -> tuple[str, ...] | None:
    """The token names of an axis made of prefix-token atoms only (``pre:cls`` → ``cls``; ``pre:reg`` of 4 → ``reg0…reg3``)."""
    if not axis or not all(a[1].startswith("pre:") for a in axis):
        return None
    names: list[str] = []
    for _, n, s in axis:
        base = n[4:]
        names += [base] if s == 1 else [f"{base}{i}" for i in range(s)]
    return tuple(names)


def prefix_atoms(names: Sequence[str]) -> Axis:
    """Atoms of named prefix tokens, one per token."""
    return tuple((BATCH_GRID, f"pre:{n}", 1) for n in names) or None


POOLED: dict[int, tuple[int, int, int]] = {}  # grid id of an adaptive average pool's output → (source grid, H, W)
PYRAMID = "pyr"  # atom name prefix of pooled cells of several scales joined (ANN's pyramid keys): "pyr:H×W:s1×s1,s2×s2,…"
ROLLED: dict[int, tuple[int, int, int]] = {}  # rolled grid id → (base grid, rh, rw): the base grid after torch.roll by (rh, rw)


PADDED: dict[int, tuple[int, int, int, int, int]] = {}  # padded grid id → (base grid, H, W, Hp, Wp): zero-padded after its last row / column


def grid_steps(grid: int) -> list[tuple[Any, ...]]:
    """How the cells of ``grid`` come from an image grid, in forward order: ``("roll", rh, rw)`` for ``torch.roll`` and
    ``("pad", H, W, Hp, Wp)`` for zero padding after the last row and column of an ``H × W`` grid to ``Hp × Wp`` (Swin
    pads a grid the window does not divide). Empty for an image grid."""
    steps: list[tuple[Any, ...]] = []
    for _ in range(8):  # (a chain is short: Swin rolls and pads once)
        if grid in ROLLED:
            grid, rh, rw = ROLLED[grid]
            steps.append(("roll", rh, rw))
        elif grid in PADDED:
            grid, h, w, hp, wp = PADDED[grid]
            steps.append(("pad", h, w, hp, wp))
        else:
            break
    return steps[::-1]


def _roll_labels(xl: Labels | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Labels | None:
    """A cyclic shift of whole row / column axes of one grid: the same positions on a *rolled* grid that remembers the shift
    (Swin's shifted windows are then placed back exactly); any other roll leaves the shifted axes unknown."""
    if xl is None:
        return None
    dims = args[2] if len(args) > 2 else kwargs.get("dims")
    shifts = args[1] if len(args) > 1 else kwargs.get("shifts")
    if dims is None:
        return None
    dims_l = [dims] if isinstance(dims, int) else list(dims)
    shifts_l = [shifts] * len(dims_l) if isinstance(shifts, int) else list(shifts)
    moved = {_norm_dim(int(d), len(xl)): int(s) for d, s in zip(dims_l, shifts_l) if s}
    axes = [xl[d] for d in moved]
    if not moved or not all(ax and len(ax) == 1 and _outer_base(ax[0][1]) in ("h", "w") for ax in axes) \
            or len({ax[0][0] for ax in axes}) != 1:  # type: ignore[index]
        return tuple(None if i in moved else ax for i, ax in enumerate(xl))
    g = axes[0][0][0]  # type: ignore[index]
    base, rh, rw = ROLLED.get(g, (g, 0, 0))
    for d, s in moved.items():
        _, n, size = xl[d][0]  # type: ignore[index]
        rh, rw = ((rh + s) % size, rw) if _outer_base(n) == "h" else (rh, (rw + s) % size)
    g2 = base if (rh, rw) == (0, 0) else _remember(ROLLED, (base, rh, rw))
    return tuple(tuple((g2, n, s) if gid == g else (gid, n, s) for gid, n, s in ax) if ax else ax for ax in xl)


def _cat_tokens(parts: Sequence[Axis], sizes: Sequence[int]) -> Axis:
    """A sequence axis joined from prefix tokens and then the positions of one grid (or an already joined token axis); else None.

    Parts without labels before the positions are tokens we cannot name (``tok0``, …): their place is still exact.
    """
    if len(parts) < 2:
        return None
    last = token_layout(parts[-1])
    if last is None:
        return None
    names: list[str] = []
    for ax, s in zip(parts[:-1], sizes[:-1]):
        pn = prefix_names(ax) if ax is not None else tuple(f"tok{len(names) + i}" for i in range(s))
        if pn is None or len(pn) != s:
            return None
        names += pn
    return token_axis(TokenLayout(tuple(names) + last.prefix, last.grid, last.hw))


def _slice_tokens(layout: TokenLayout, sl: slice) -> Axis:
    """The label of a slice of a token axis: the grid's positions (prefix dropped), or some prefix tokens; None otherwise."""
    start, stop, step = sl.indices(layout.size)
    p = len(layout.prefix)
    if step != 1:
        return None
    if start == p and stop == layout.size:
        h, w = layout.hw
        return tuple(a for a in ((layout.grid, "h", h), (layout.grid, "w", w)) if a[2] > 1) or None
    if stop <= p:
        return prefix_atoms(layout.prefix[start:stop])
    if start == 0 and stop == layout.size:
        return token_axis(layout)
    return None


def new_grid() -> int:
    """A fresh grid id."""
    return next(_grid_ids)


def nchw(shape: Sequence[int], grid: int | None = None, batch: bool = True) -> Labels:
    """Labels of an NCHW feature map on ``grid`` (a new one by default)."""
    b, c, h, w = (int(s) for s in shape)
    g = grid if grid is not None else new_grid()
    return (((BATCH_GRID, "b", b),) if batch else None, ((g, "c", c),), ((g, "h", h),) if h > 1 else None, ((g, "w", w),) if w > 1 else None)


def size_of(axis: Axis) -> int:
    """Product of an axis' atom sizes (1 for an empty axis)."""
    n = 1
    for a in axis or ():
        n *= a[2]
    return n


def merge_atoms(atoms: Sequence[Atom]) -> tuple[Atom, ...]:
    """Re-join adjacent split parts ``x[ao], x[bi]`` into ``x`` (repeatedly)."""
    out: list[Atom] = []
    for a in atoms:
        out.append(a)
        while len(out) >= 2:
            (g1, n1, s1), (g2, n2, s2) = out[-2], out[-1]
            m1, m2 = _SPLIT.match(n1), _SPLIT.match(n2)
            if g1 == g2 and m1 and m2 and m1["part"] == "o" and m2["part"] == "i" and m1["base"] == m2["base"] \
                    and int(m1["size"]) == s1 and int(m2["size"]) == s2:
                out[-2:] = [(g1, m1["base"], s1 * s2)]
            else:
                break
    return tuple(a for a in out if a[2] != 1)


def _split(atom: Atom, outer: int) -> tuple[Atom, Atom]:
    g, n, s = atom
    return (g, f"{n}[{outer}o]", outer), (g, f"{n}[{s // outer}i]", s // outer)


def reshape_labels(labels: Labels | None, old: Sequence[int], new: Sequence[int]) -> Labels | None:
    """Labels after ``reshape(new)`` of a tensor of shape ``old``; None when atoms cannot be followed."""
    if labels is None:
        return None
    cell = labels[-2:] if len(labels) >= 2 else None
    if (cell and list(old[-2:]) == [1, 1] and list(new) == [*old[:-2], 1] and all(ax and len(ax) == 1 and ax[0][2] == 1 for ax in cell)
            and cell[0][0][0] == cell[1][0][0] in POOLED):  # type: ignore[index]
        return (*labels[:-2], (*cell[0], *cell[1]))  # type: ignore[misc]  # a pooled 1×1 cell flattened stays that cell
    atoms: list[Atom | None] = []
    for ax, s in zip(labels, old):
        if s == 1:
            continue
        if ax is None:
            atoms.append((-1, f"?{id(ax)}:{len(atoms)}", int(s)))  # an opaque run of unknown meaning
        else:
            atoms.extend(ax)
    out: list[Axis] = []
    i = 0
    for t in new:
        t = int(t)
        if t == 1:
            out.append(None)
            continue
        got: list[Atom] = []
        prod = 1
        while prod < t:
            if i >= len(atoms):
                return None
            a = atoms[i]
            assert a is not None
            if prod * a[2] <= t:
                got.append(a)
                prod *= a[2]
                i += 1
            else:
                need = t // prod
                if t % prod or a[2] % need:
                    return None
                first, rest = _split(a, need)
                got.append(first)
                atoms[i] = rest
                prod *= need
        if prod != t:
            return None
        merged = merge_atoms(got)
        out.append(None if any(g == -1 for g, _, _ in merged) else merged)
    if i != len(atoms):
        return None
    return tuple(out)


def _norm_dim(d: int, n: int) -> int:
    return d + n if d < 0 else d


def broadcast_labels(shapes: Sequence[Sequence[int]], labels: Sequence[Labels | None], out_shape: Sequence[int]) -> Labels | None:
    """Labels of an elementwise result: per axis, the label of an operand whose size matches the output."""
    n = len(out_shape)
    res: list[Axis] = []
    for k in range(n):
        lab: Axis = None
        for s, lb in zip(shapes, labels):
            j = k - (n - len(s))
            if j < 0 or lb is None:
                continue
            if int(s[j]) == int(out_shape[k]) and lb[j] is not None:
                if lab is None or is_broadcast(lab):
                    lab = lb[j]
                if not is_broadcast(lab):
                    break
        res.append(lab)
    return tuple(res) if any(r is not None for r in res) else None


def is_broadcast(axis: Axis) -> bool:
    """Whether an axis was made by broadcasting (``expand``): the values are constant along it."""
    return bool(axis) and all(a[1] == "bcast" for a in axis)  # type: ignore[union-attr]


def _outer_base(name: str) -> str | None:
    """``h`` for ``h[28o]`` or ``h[28o][14o]`` (outer parts of outer parts: block rows of block rows); None for any inner part."""
    m = _SPLIT.match(name)
    while m is not None:
        if m["part"] != "o":
            return None
        name = m["base"]
        m = _SPLIT.match(name)
    return name if name in ("h", "w") else None


def _grid_of(axis: Axis) -> tuple[int, int, int] | None:
    """(grid, H, W) when an axis is the rows × columns of one grid (or of its blocks) in row-major order, else None."""
    if not axis:
        return None
    atoms = merge_atoms(axis)
    if len(atoms) == 2 and atoms[0][0] == atoms[1][0] and (_outer_base(atoms[0][1]), _outer_base(atoms[1][1])) == ("h", "w"):
        return atoms[0][0], atoms[0][2], atoms[1][2]
    if len(atoms) == 1 and atoms[0][1] in ("h", "w"):  # a map with one side of length 1
        g, n, s = atoms[0]
        return (g, s, 1) if n == "h" else (g, 1, s)
    return None


def positions(axis: Axis) -> tuple[int, int, int] | None:
    """(grid, H, W) when an axis is exactly the image positions of a grid (row-major), else None.

    Block rows × block columns of a grid (after patch merging) are a coarser grid. A grid moved by ``torch.roll`` is not
    the image's: its positions are never placed as such (only windows that tile it are, rolled back: see ``rolled``). Nor
    is a grid padded past the image's edge (:data:`PADDED`): only :func:`placed` places it, with its overhang.
    """
    found = _grid_of(axis)
    return None if found is None or found[0] in ROLLED or found[0] in PADDED else found


Cells = tuple[int, int, int, int]  # (bh, bw, H, W): a position is a bh × bw block of an H × W grid that tiles the image


def placed(axis: Axis) -> tuple[int, int, int, Cells | None] | None:
    """:func:`positions`, or the positions of a grid padded after its last row / column (one :data:`PADDED` step, no
    roll): ``(grid, h, w, cells)`` with ``cells = (bh, bw, H, W)`` when each of the h × w positions is a bh × bw block of
    the unpadded H × W grid, the last blocks running past the image's edge (LeViT's subsample of a 7×7 map to 4×4); else
    ``cells`` is None (the positions tile the image)."""
    found = _grid_of(axis)
    if found is None or found[0] in ROLLED:
        return None
    g, h, w = found
    if g not in PADDED:
        return g, h, w, None
    base, hb, wb, hp, wp = PADDED[g]
    if base in PADDED or base in ROLLED or hp % h or wp % w:
        return None
    return g, h, w, (hp // h, wp // w, hb, wb)


def is_channels(axis: Axis) -> bool:
    """Whether an axis holds (a part of) the channels of one grid."""
    return bool(axis) and all(a[1].split("[")[0] == "c" for a in axis)  # type: ignore[union-attr]


def spatial_atoms(axis: Axis) -> bool:
    """Whether every atom of an axis is a row / column part of one grid."""
    return bool(axis) and all(a[1].split("[")[0] in ("h", "w") for a in axis) and len({a[0] for a in axis}) == 1  # type: ignore[union-attr]


def batch_fold(axis: Axis) -> tuple[Atom, ...] | None:
    """The atoms folded into a batch axis after ``b`` (heads, groups, windows), or None if it is no batch axis."""
    if not axis or axis[0][1] != "b":
        return None
    return axis[1:]


# ---------------------------------------------------------------------------------------------- op rules
_SHAPE_SAME = {
    "contiguous", "clone", "detach", "float", "half", "double", "to", "type_as", "cpu", "cuda", "requires_grad_", "bfloat16",
    "relu", "relu_", "gelu", "silu", "sigmoid", "sigmoid_", "tanh", "exp", "log", "neg", "abs", "sqrt", "rsqrt", "pow", "clamp", "clamp_min",
    "clamp_max", "hardsigmoid", "hardswish", "hardtanh", "relu6", "leaky_relu", "elu", "mish", "dropout", "dropout2d", "softmax", "log_softmax",
    "batch_norm", "layer_norm", "group_norm", "instance_norm", "local_response_norm", "normalize", "sign", "square", "reciprocal",
    "softplus", "erf", "sin", "cos", "floor", "round", "nan_to_num", "selu", "celu", "prelu", "rms_norm", "logsigmoid", "softsign",
}
_BINARY = {"add", "sub", "mul", "div", "true_divide", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
           "__rtruediv__", "add_", "sub_", "mul_", "div_", "__iadd__", "__isub__", "__imul__", "__itruediv__", "maximum", "minimum",
           "where", "addcmul", "lerp", "masked_fill", "masked_fill_", "__pow__", "rsub"}
_REDUCE = {"sum", "mean", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod", "argmax", "argmin", "median"}


def func_name(func: Any) -> str:
    """Short name of a torch function or method (``Tensor.view`` → ``view``)."""
    return getattr(func, "__name__", "") or ""


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


def _shape_arg(args: tuple[Any, ...], start: int) -> list[int]:
    rest = args[start:]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple, torch.Size)):
        rest = tuple(rest[0])
    return [int(v) for v in rest]


def _resolve(shape: list[int], numel: int) -> list[int]:
    if -1 in shape:
        known = 1
        for s in shape:
            if s != -1:
                known *= s
        shape = [numel // max(known, 1) if s == -1 else s for s in shape]
    return shape


def _einsum_labels(eq: str, ops: Sequence[torch.Tensor], labels: Sequence[Labels | None]) -> Labels | None:
    eq = eq.replace(" ", "")
    if "->" not in eq or "..." in eq:
        return None
    lhs, rhs = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != len(ops):
        return None
    found: dict[str, Axis] = {}
    for term, lb in zip(terms, labels):
        if lb is None or len(term) != len(lb):
            continue
        for ch, ax in zip(term, lb):
            if ch in string.ascii_letters and found.get(ch) is None:
                found[ch] = ax
    out = tuple(found.get(ch) for ch in rhs)
    return out if any(o is not None for o in out) else None


def _pyramid(parts: list[Axis]) -> Axis:
    """Flattened adaptive-average-pool outputs of one grid joined (a pyramid of cells): one axis named after the source grid
    and the scales, so keys and values pooled alike carry the same label; None for anything else."""
    scales, src = [], None
    for p in parts:
        one = bool(p) and len(p) == 2 and p[0][0] == p[1][0] and (p[0][1], p[1][1], p[0][2], p[1][2]) == ("h", "w", 1, 1)  # type: ignore[index]
        g = (p[0][0], 1, 1) if one else positions(p)  # type: ignore[index]
        if g is None or g[0] not in POOLED:
            return None
        s = POOLED[g[0]]
        if src is not None and s != src:
            return None
        src = s
        scales.append(f"{g[1]}x{g[2]}")
    if src is None or len(scales) < 2:
        return None
    return ((src[0], f"{PYRAMID}:{src[1]}x{src[2]}:{','.join(scales)}", sum(int(a) * int(b) for a, b in (x.split("x") for x in scales))),)


def pyramid_regions(axis: Axis) -> tuple[int, torch.Tensor] | None:
    """For a pyramid key axis: (source grid, the weight of every source cell in every pooled cell ``(K, H, W)``), exactly as
    ``adaptive_avg_pool2d`` averages (cell i of n spans rows ⌊i·H/n⌋ … ⌈(i + 1)·H/n⌉ − 1); None for other axes."""
    if not axis or len(axis) != 1 or not str(axis[0][1]).startswith(PYRAMID + ":"):
        return None
    g, name, _ = axis[0]
    _, hw, scales = name.split(":")
    h, w = (int(v) for v in hw.split("x"))
    maps = []
    for sc in scales.split(","):
        sh, sw = (int(v) for v in sc.split("x"))
        for i in range(sh):
            for j in range(sw):
                m = torch.zeros(h, w)
                y0, y1 = (i * h) // sh, -((-(i + 1) * h) // sh)
                x0, x1 = (j * w) // sw, -((-(j + 1) * w) // sw)
                m[y0:y1, x0:x1] = 1.0 / ((y1 - y0) * (x1 - x0))
                maps.append(m)
    return g, torch.stack(maps)


def _cell_stride(ax: Axis, i: slice) -> bool:
    """Whether ``x[k::s]`` on axis ``ax`` takes one position of every block of ``s`` rows (or columns) of a grid: the result
    is that grid's block rows, a coarser grid (HF Swin's patch merging joins the four offsets along the channels)."""
    if not ax or len(ax) != 1 or _outer_base(ax[0][1]) is None or not isinstance(i.step, int) or i.step < 2:
        return False
    start = 0 if i.start is None else i.start
    return isinstance(start, int) and 0 <= start < i.step and i.stop is None and ax[0][2] % i.step == 0


def _padded_strides(xl: Labels, idx: tuple[Any, ...]) -> dict[int, Axis]:
    """``x[:, ::s, ::t]`` over a grid's row and column axes where a step does not divide its side (LeViT subsamples a
    7×7 map to 4×4: cells 0, 2, 4, 6): the grid zero-padded after its last row / column to multiples of the steps
    (:data:`PADDED`), of which sample i is block row (column) i — the last block runs past the image's edge. Returns the
    two new axes by dimension, or {} when the index is anything else (then the usual rules apply)."""
    if len(idx) > len(xl) or any(not isinstance(i, slice) for i in idx):
        return {}
    strided = {d: i for d, i in enumerate(idx) if i.step not in (None, 1)}
    axes = {d: xl[d] for d in strided}
    if len(strided) != 2 or any(not ax or len(ax) != 1 or _outer_base(ax[0][1]) is None for ax in axes.values()):
        return {}
    if any(i.start not in (None, 0) or i.stop is not None or not isinstance(i.step, int) or i.step < 2 for i in strided.values()):
        return {}
    (dh, ah), (dw, aw) = sorted(axes.items(), key=lambda kv: _outer_base(kv[1][0][1]) != "h")  # type: ignore[index]
    if ah[0][0] != aw[0][0] or (_outer_base(ah[0][1]), _outer_base(aw[0][1])) != ("h", "w"):  # type: ignore[index]
        return {}
    (sh, sw), (n, m) = (strided[dh].step, strided[dw].step), (ah[0][2], aw[0][2])  # type: ignore[index]
    if n % sh == 0 and m % sw == 0:
        return {}
    hp, wp = -(-n // sh) * sh, -(-m // sw) * sw
    g = _remember(PADDED, (ah[0][0], n, m, hp, wp))  # type: ignore[index]
    return {dh: ((g, f"{ah[0][1]}[{hp // sh}o]", hp // sh),), dw: ((g, f"{aw[0][1]}[{wp // sw}o]", wp // sw),)}  # type: ignore[index]


def _repeat_labels(xl: Labels, shape: list[int], oshape: list[int]) -> Labels:
    """``x.repeat(...)``: an axis of size 1 repeated holds one value along it (broadcast); a real axis tiled is unknown."""
    pad = len(oshape) - len(xl)
    res: list[Axis] = []
    for i, o in enumerate(oshape):
        j = i - pad
        if j < 0 or shape[j] == 1:
            res.append(((BATCH_GRID, "bcast", int(o)),) if o > 1 else None)
        else:
            res.append(xl[j] if shape[j] == o else None)
    return tuple(res)


def _unbroadcast(res: list[Axis], lbs: list[Labels | None], d: int) -> list[Axis]:
    """Channels of parts joined (``cat`` along ``d``): an axis broadcast in one part and indexed by positions in exactly one
    other holds those positions (Non-Local's concatenation: θ repeated over the keys ⊕ φ repeated over the queries)."""
    out = list(res)
    for k, ax in enumerate(res):
        if k == d or (ax is not None and not is_broadcast(ax)):
            continue
        real = {lb[k] for lb in lbs if lb is not None and lb[k] is not None and not is_broadcast(lb[k])}
        if len(real) == 1 and all(lb is not None and (lb[k] in real or is_broadcast(lb[k])) for lb in lbs):
            out[k] = real.pop()
    return out


@dataclass(frozen=True)
class _Call:
    """One op call as the label rules see it: its name and arguments, the first tensor argument ``x`` with its labels
    ``xl``, the output's shape, and ``get`` (tensor → labels or None)."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    x: Any
    xl: Labels | None
    oshape: list[int]
    get: Any


def _same_shape(c: _Call) -> Labels | None:
    """Elementwise ops and ``expand``: the input's labels; an expanded axis is a broadcast one."""
    if c.name in ("expand", "expand_as", "broadcast_to") and c.xl is not None:
        n, xl = len(c.oshape), c.xl
        pad = tuple(((BATCH_GRID, "bcast", int(o)),) if o > 1 else None for o in c.oshape[: n - len(xl)])
        return pad + tuple(ax if int(s) == int(o) else ((BATCH_GRID, "bcast", int(o)),) for ax, s, o in zip(xl, list(c.x.shape), c.oshape[n - len(xl):]))
    return c.xl if c.xl is not None and len(c.xl) == len(c.oshape) else None


def _reshaped(c: _Call) -> Labels | None:
    return reshape_labels(c.xl, list(c.x.shape), c.oshape) if c.xl is not None else None


def _repeated(c: _Call) -> Labels | None:
    return _repeat_labels(c.xl, list(c.x.shape), c.oshape) if c.xl is not None else None


def _movedim_order(n: int, src: Any, dst: Any) -> list[int]:
    """The ``permute`` order that ``movedim(src, dst)`` applies to ``n`` axes."""
    order = list(range(n))
    src_l = [src] if isinstance(src, int) else list(src)
    dst_l = [dst] if isinstance(dst, int) else list(dst)
    moved = [order[_norm_dim(s, n)] for s in src_l]
    rest = [o for o in order if o not in moved]
    dims = [0] * n
    for d, m in zip(dst_l, moved):
        dims[_norm_dim(d, n)] = m
    it = iter(rest)
    return [d if i in {_norm_dim(v, n) for v in dst_l} else next(it) for i, d in enumerate(dims)]


def _permuted(c: _Call) -> Labels | None:
    if c.xl is None:
        return None
    xl = c.xl
    if c.name == "permute":
        dims = _shape_arg(c.args, 1) if len(c.args) > 1 else list(c.kwargs.get("dims", []))
    else:
        dims = _movedim_order(len(xl), c.args[1], c.args[2])
    return tuple(xl[_norm_dim(d, len(xl))] for d in dims)


def _transposed(c: _Call) -> Labels | None:
    if c.xl is None:
        return None
    n = len(c.xl)
    if c.name in ("t", "mT"):
        d0, d1 = n - 2, n - 1
    else:
        d0 = _norm_dim(int(c.args[1] if len(c.args) > 1 else c.kwargs["dim0"]), n)
        d1 = _norm_dim(int(c.args[2] if len(c.args) > 2 else c.kwargs["dim1"]), n)
    lb = list(c.xl)
    lb[d0], lb[d1] = lb[d1], lb[d0]
    return tuple(lb)


def _matmul(c: _Call) -> Labels | None:
    """Batch axes from either operand, then the left operand's rows and the right one's columns (the keys, unless halo
    windows are not paired with the query blocks)."""
    a, b = (c.args[1], c.args[0]) if c.name == "__rmatmul__" else (c.args[0], c.args[1])
    if c.name == "baddbmm":
        a, b = c.args[1], c.args[2]
    al, bl = c.get(a), c.get(b)
    if a.ndim < 2 or b.ndim < 2:
        return None
    n = len(c.oshape)
    batch: list[Axis] = []
    for k in range(n - 2):
        lab = None
        for t, tl in ((a, al), (b, bl)):
            j = k - (n - t.ndim)
            if tl is not None and j >= 0 and int(t.shape[j]) == c.oshape[k]:
                lab = tl[j]
                if lab is not None:
                    break
        batch.append(lab)
    keys = bl[-1] if bl is not None else None
    if bl is not None and not _halo_paired(list(al[:-2]) if al is not None else [], list(bl[:-2])):
        keys = None  # windows that are not the queries' blocks: the keys' places are unknown
    res = (*batch, al[-2] if al is not None else None, keys)
    return res if any(r is not None for r in res) else None


def _einsum(c: _Call) -> Labels | None:
    ops = list(c.args[1]) if len(c.args) == 2 and isinstance(c.args[1], (list, tuple)) else list(c.args[1:])
    return _einsum_labels(c.args[0], ops, [c.get(t) for t in ops])


def _binary(c: _Call) -> Labels | None:
    ts = [t for t in (*c.args, *c.kwargs.values()) if isinstance(t, torch.Tensor)]
    return broadcast_labels([list(t.shape) for t in ts], [c.get(t) for t in ts], c.oshape)


def _reduced(c: _Call) -> Labels | None:
    if c.xl is None:
        return None
    dim = c.args[1] if len(c.args) > 1 else c.kwargs.get("dim")
    keep = bool(c.args[2] if len(c.args) > 2 and isinstance(c.args[2], bool) else c.kwargs.get("keepdim", False))
    if dim is None:
        return None
    dims = {_norm_dim(int(d), len(c.xl)) for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
    if keep:
        return tuple(None if i in dims else ax for i, ax in enumerate(c.xl))
    return tuple(ax for i, ax in enumerate(c.xl) if i not in dims) or None


def _padded_op(c: _Call) -> Labels | None:
    """``F.pad``: the last len(pad) / 2 axes are padded; zero padding of a row or column is followed, other padding loses
    the axis' meaning."""
    if c.xl is None:
        return None
    xl = c.xl
    pad = list(c.args[1] if len(c.args) > 1 else c.kwargs.get("pad", ()))
    mode = c.args[2] if len(c.args) > 2 else c.kwargs.get("mode", "constant")
    after = _padded_after(xl, pad, mode)
    if after is not None:
        return after
    res = list(xl)
    for i in range(len(pad) // 2):
        if pad[2 * i] or pad[2 * i + 1]:
            res[len(xl) - 1 - i] = _padded(xl[len(xl) - 1 - i], int(pad[2 * i]), int(pad[2 * i + 1])) if mode == "constant" else None
    return tuple(res)


def _rolled(c: _Call) -> Labels | None:
    return _roll_labels(c.xl, c.args, c.kwargs)


_KEEP_CHANNELS_NOT = ("conv2d", "conv_transpose2d", "pixel_shuffle", "pixel_unshuffle")


def _spatial_op(c: _Call) -> Labels | None:
    """Convolutions, pools, resizes: batch kept, channels kept by pools and resizes, a new grid unless the size is the
    same; an adaptive average pool's cells remember the grid they average (:data:`POOLED`)."""
    x, xl, oshape = c.x, c.xl, c.oshape
    if xl is None or x.ndim != 4 or len(oshape) != 4:
        return None
    same_hw = list(x.shape[2:]) == oshape[2:]
    src = positions((*(xl[2] or ()), *(xl[3] or ()))) if c.name == "adaptive_avg_pool2d" and not same_hw else None
    g = _remember(POOLED, (src[0], src[1], src[2])) if src is not None else new_grid()  # cells of known areas of that grid
    ch = xl[1] if c.name not in _KEEP_CHANNELS_NOT and int(x.shape[1]) == oshape[1] else ((g, "c", oshape[1]),)
    if same_hw:
        return (xl[0], ch, xl[2], xl[3])
    one = src is not None  # an adaptive average pool's 1×1 cell is still a cell of its grid (a pyramid's first level)
    return (xl[0], ch, ((g, "h", oshape[2]),) if oshape[2] > 1 or one else None, ((g, "w", oshape[3]),) if oshape[3] > 1 or one else None)


def _sliced_axis(ax: Axis, i: slice) -> Axis:
    """One axis under a slice: the grid before a pad cut off again, itself, a token slice, the block rows of a strided
    slice, channels (sized later), or unknown."""
    full = i == slice(None) or (i.start in (None, 0) and i.stop is None and i.step in (None, 1))
    layout = TOKENS.get(ax[0][0]) if ax and len(ax) == 1 and ax[0][1] == "tok" else None
    cropped = _unpadded(ax, i)
    if cropped is not None:  # the padding cut off again (Swin after its windows): the grid before the pad
        return cropped
    if full:
        return ax
    if layout is not None:
        return _slice_tokens(layout, i)
    if _cell_stride(ax, i):  # every s-th row from offset k < s: one sample per block of s rows (patch merging)
        g, nm, size = ax[0]  # type: ignore[index]
        return ((g, f"{nm}[{size // i.step}o]", size // i.step),)
    return ((new_grid(), "c", 0),) if is_channels(ax) else None  # sized by the caller


def _indexed(c: _Call) -> Labels | None:
    """``x[...]`` with ints, slices, None and Ellipsis (tensor or list indices lose every label)."""
    if c.xl is None:
        return None
    xl = c.xl
    idx = c.args[1] if len(c.args) > 1 else None
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (torch.Tensor, list)) for i in idx):
        return None
    odd = _padded_strides(xl, idx)
    if odd:
        return tuple(odd.get(d, ax) for d, ax in enumerate(xl))
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    res: list[Axis] = []
    d = 0
    for i in idx:
        if i is Ellipsis:
            span = max(0, len(xl) - n_real)
            res.extend(xl[d: d + span])
            d += span
        elif i is None:
            res.append(None)
        elif isinstance(i, (int, slice)):
            if isinstance(i, slice):
                res.append(_sliced_axis(xl[d], i))
            d += 1
        else:
            return None
    res.extend(xl[d:])
    if len(res) != len(c.oshape):
        return None
    return tuple(((ax[0][0], "c", int(o)),) if ax and ax[0][1] == "c" and ax[0][2] == 0 else ax for ax, o in zip(res, c.oshape))


def _joined(c: _Call) -> Labels | None:
    """``torch.cat``: criss-cross keys (a column and a row), channels of a new grid, pyramid cells, or prefix tokens ⊕
    the positions of a grid."""
    ts = c.args[0] if c.args else c.kwargs.get("tensors")
    dim = int(c.args[1] if len(c.args) > 1 else c.kwargs.get("dim", 0))
    if not ts:
        return None
    lbs = [c.get(t) for t in ts]
    base = lbs[0] if lbs[0] is not None else lbs[-1]  # (prefix tokens from an unlabelled parameter: the patch part's labels)
    if base is None:
        return None
    d = _norm_dim(dim, len(base))
    res = list(base)
    parts = [lb[d] if lb is not None else None for lb in lbs]
    if len(parts) == 2 and all(p is not None and len(p) == 1 for p in parts):  # criss-cross keys: a column and a row
        (g1, n1, s1), (g2, n2, s2) = parts[0][0], parts[1][0]  # type: ignore[index]
        if g1 == g2 and (n1, n2) == ("h", "w"):
            res[d] = ((g1, "cross", s1 + s2),)
            return tuple(res)
    if all(p is not None and is_channels(p) for p in parts):  # channels joined: the channels of a new grid
        res[d] = ((new_grid(), "c", int(c.oshape[d])),)
        return tuple(_unbroadcast(res, lbs, d))
    pyramid = _pyramid(parts)
    if pyramid is not None:
        res[d] = pyramid
        return tuple(res)
    res[d] = _cat_tokens(parts, [int(t.shape[d]) for t in ts])  # prefix tokens ⊕ the positions of a grid, or unknown
    if lbs[-1] is not None and res[d] is not None:  # the other axes (batch, channels) are the patch part's
        res = [r if k == d else lbs[-1][k] for k, r in enumerate(res)]
    return tuple(res)


def _linear(c: _Call) -> Labels | None:
    return (*c.xl[:-1], ((new_grid(), "c", c.oshape[-1]),)) if c.xl is not None else None


def _unfolded(c: _Call) -> Labels | None:
    """``F.unfold`` (im2col: blocks of a grid) or ``Tensor.unfold(dimension, size, step)`` (sliding windows of one axis)."""
    if c.xl is None:
        return None
    if len(c.args) == 4 or "step" in c.kwargs or "dimension" in c.kwargs:
        return _window_labels(c.xl, c.args, c.kwargs)
    return _unfold_labels(c.xl, list(c.x.shape), c.args, c.kwargs)


_RULES: dict[str, Any] = {}
for _names, _rule in (
    ((*_SHAPE_SAME, "expand", "expand_as", "broadcast_to"), _same_shape),
    (("view", "reshape", "view_as", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze", "squeeze_", "unsqueeze_"), _reshaped),
    (("repeat",), _repeated),
    (("permute", "movedim"), _permuted),
    (("transpose", "swapaxes", "swapdims", "t", "mT"), _transposed),
    (("matmul", "bmm", "__matmul__", "__rmatmul__", "baddbmm"), _matmul),
    (("einsum",), _einsum),
    (tuple(_BINARY), _binary),
    (tuple(_REDUCE), _reduced),
    (("pad",), _padded_op),
    (("roll",), _rolled),
    (("conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "interpolate", "conv_transpose2d", "lp_pool2d",
      "pixel_shuffle", "pixel_unshuffle", "upsample", "upsample_bilinear", "upsample_nearest"), _spatial_op),
    (("__getitem__",), _indexed),
    (("cat", "concat", "concatenate"), _joined),
    (("linear",), _linear),
    (("unfold",), _unfolded),
):
    for _n in _names:
        _RULES.setdefault(_n, _rule)  # the first family that names an op decides it


def propagate(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Any) -> Labels | None:
    """Labels of ``out`` (a tensor) from the labels of the inputs (``get(t)``), or None when unknown: one rule per op
    family (:data:`_RULES`)."""
    rule = _RULES.get(name)
    if rule is None:
        return None
    x = args[0] if args else kwargs.get("input")
    return rule(_Call(name, args, kwargs, x, get(x) if isinstance(x, torch.Tensor) else None, list(out.shape), get))


HALO = re.compile(r"^(?P<kind>pad|blk|win)(?P<base>[hw]):(?P<a>-?\d+):(?P<b>-?\d+):(?P<n>\d+)$")  # padded / unfolded row or column atoms


def _padded_after(xl: Labels, pad: list[int], mode: str) -> Labels | None:
    """Zero padding after the last row and / or column of one grid whose row and column are whole axes (Swin's pad to a
    multiple of the window): the same axes on a new grid that remembers the unpadded size (:data:`PADDED`), so the cells
    keep their coordinates and the padding is known to lie past them. None for any other padding."""
    amounts = {len(xl) - 1 - i: (int(pad[2 * i]), int(pad[2 * i + 1])) for i in range(len(pad) // 2) if pad[2 * i] or pad[2 * i + 1]}
    if mode != "constant" or not amounts or any(before for before, _ in amounts.values()):
        return None
    dims = {i: ax[0] for i, ax in enumerate(xl) if ax and len(ax) == 1 and _outer_base(ax[0][1]) in ("h", "w")}  # (h, or h[32o] after a merge)
    grids = {at[0] for at in dims.values()}
    if not set(amounts) <= set(dims) or len(grids) != 1 or sorted(_outer_base(at[1]) or "" for at in dims.values()) != ["h", "w"]:
        return None
    size = {_outer_base(at[1]): at[2] for at in dims.values()}
    grown = {_outer_base(at[1]): at[2] + amounts.get(i, (0, 0))[1] for i, at in dims.items()}
    g = _remember(PADDED, (grids.pop(), size["h"], size["w"], grown["h"], grown["w"]))
    return tuple(((g, ax[0][1], grown[_outer_base(ax[0][1])]),) if i in dims else ax for i, ax in enumerate(xl))


def _unpadded(axis: Axis, i: slice) -> Axis:
    """``x[:n]`` of a row or column axis of a padded grid (:data:`PADDED`) with n its size before padding: that axis of the
    grid before the pad; else None."""
    if not axis or len(axis) != 1 or axis[0][0] not in PADDED or _outer_base(axis[0][1]) not in ("h", "w") \
            or i.start not in (None, 0) or i.step not in (None, 1):
        return None
    g, name, size = axis[0]
    base, h, w, _, _ = PADDED[g]
    n = h if _outer_base(name) == "h" else w
    stop = size if i.stop is None else min(int(i.stop), size)
    return ((base, name, n),) if stop == n else None


def _padded(axis: Axis, before: int, after: int) -> Axis:
    """A row or column axis of a grid zero-padded by ``before`` / ``after`` cells: ``pad{h|w}:before:after:N`` (N the grid's
    size); any other axis loses its meaning."""
    if not axis or len(axis) != 1 or axis[0][1] not in ("h", "w") or before < 0 or after < 0:
        return None
    g, base, n = axis[0]
    return ((g, f"pad{base}:{before}:{after}:{n}", n + before + after),)


def _window_labels(xl: Labels, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Labels | None:
    """``Tensor.unfold(d, size, step)`` of a (padded) row or column axis: the windows' index ``blk{h|w}:step:before:N`` in
    place of axis ``d`` and the offset within a window ``win{h|w}:size:before:N`` appended last, so a window's cell k of
    window i is grid cell ``i·step + k − before`` (HaloNet's halo windows); other axes unknown."""
    names = ("dimension", "size", "step")
    opts = dict(zip(names, args[1:])) | {k: v for k, v in kwargs.items() if k in names}
    d, size, step = _norm_dim(int(opts["dimension"]), len(xl)), int(opts["size"]), int(opts["step"])
    ax = xl[d]
    m = HALO.match(ax[0][1]) if ax and len(ax) == 1 else None
    if m is not None and m["kind"] == "pad":
        before, n = int(m["a"]), int(m["n"])
    elif ax and len(ax) == 1 and ax[0][1] in ("h", "w"):
        before, n = 0, int(ax[0][2])
    else:
        return (*xl[:d], None, *xl[d + 1:], None)
    g, base = ax[0][0], (m["base"] if m is not None else ax[0][1])
    count = (int(ax[0][2]) - size) // step + 1
    blk = ((g, f"blk{base}:{step}:{before}:{n}", count),)
    return (*xl[:d], blk, *xl[d + 1:], ((g, f"win{base}:{size}:{before}:{n}", size),))


def _halo_paired(a_lead: Sequence[Axis], b_lead: Sequence[Axis]) -> bool:
    """Whether the windows ``blk`` atoms index on ``b``'s leading axes are ``a``'s blocks, one for one: the same bases in the
    same order, as many windows as blocks, and the windows' steps tiling their grid (HaloNet: block i's queries meet window
    i's keys). True when ``b`` has no window atoms."""
    blk = [(m["base"], int(m["a"]), int(m["n"]), at[2]) for ax in b_lead if ax for at in ax if (m := HALO.match(at[1])) and m["kind"] == "blk"]
    if not blk:
        return True
    outer = [(at[1][0], at[2]) for ax in a_lead if ax for at in ax if _SPLIT.match(at[1]) and at[1][0] in "hw" and at[1].endswith("o]")]
    return len(outer) == len(blk) and all(o == (base, count) and step * count == n for o, (base, step, n, count) in zip(outer, blk))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _unfold_labels(xl: Labels, shape: Sequence[int], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Labels | None:
    """``F.unfold`` (``nn.Unfold``) of a ``(B, C, H, W)`` grid into non-overlapping blocks (stride = kernel, no padding or
    dilation): a window partition. Blocks ``(B, C·kh·kw, L)``: the channel axis holds (C, row, column in the block), the
    block axis the blocks in row-major order (TNT's pixel tokens). Overlapping or padded blocks stay unknown."""
    names = ("kernel_size", "dilation", "padding", "stride")
    opts = dict(zip(names, args[1:])) | {k: v for k, v in kwargs.items() if k in names}
    ks, dil, pad = _pair(opts["kernel_size"]), _pair(opts.get("dilation", 1)), _pair(opts.get("padding", 0))
    stride = _pair(opts.get("stride", 1))
    if len(xl) != 4 or dil != (1, 1) or pad != (0, 0) or stride != ks:
        return None
    (b, c, hax, wax), (_, ch, h, w) = xl, shape
    if not (hax and wax and len(hax) == len(wax) == 1 and hax[0][1] == "h" and wax[0][1] == "w" and hax[0][0] == wax[0][0]) \
            or h % ks[0] or w % ks[1]:
        return None
    (ho, hi), (wo, wi) = _split(hax[0], h // ks[0]), _split(wax[0], w // ks[1])
    chan = c if c else (((-1, f"?unfold:{new_grid()}", int(ch)),) if ch > 1 else ())
    inner = tuple(a for a in (*chan, hi, wi) if a[2] > 1) or None
    blocks = tuple(a for a in (ho, wo) if a[2] > 1) or None
    return (b, inner, blocks)


def propagate_multi(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], outs: Sequence[torch.Tensor], get: Any) -> list[Labels | None]:
    """Labels of each output of a multi-output op (chunk, split, unbind, max with dim, ...)."""
    x = args[0] if args else kwargs.get("input")
    xl = get(x) if isinstance(x, torch.Tensor) else None
    if xl is None:
        return [None] * len(outs)
    if name in ("chunk", "split", "tensor_split", "split_with_sizes"):
        dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        d = _norm_dim(int(dim), len(xl))
        res = []
        for o in outs:
            lb = list(xl)
            if int(o.shape[d]) != int(x.shape[d]):
                ax = xl[d]
                lb[d] = ((new_grid(), "c", int(o.shape[d])),) if is_channels(ax) else None  # part of the channels stays channels
            res.append(tuple(lb))
        return res
    if name == "unbind":
        dim = _norm_dim(int(args[1] if len(args) > 1 else kwargs.get("dim", 0)), len(xl))
        return [tuple(ax for i, ax in enumerate(xl) if i != dim) for _ in outs]
    if name in ("max", "min", "sort", "topk", "median", "mode", "aminmax"):
        lab = propagate("amax" if name in ("max", "min") else name, args, kwargs, outs[0], lambda t: xl if t is x else None)
        return [lab, lab] + [None] * (len(outs) - 2)
    return [None] * len(outs)


@dataclass
class Seen:
    """A watched op that produced no record, with the reason (shown by ``inspect`` and the app)."""

    module: str
    op: str
    shape: tuple[int, ...]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"module": self.module, "op": self.op, "shape": list(self.shape), "reason": self.reason}


@dataclass
class Candidate:
    """A gate or attention-weight tensor waiting to see where it goes."""

    op: str  # sigmoid / hardsigmoid / softmax / normalized
    source: torch.Tensor
    frame: Any
    dim: int | None = None  # the softmax (normalised) axis of ``source``
    qk: tuple[torch.Tensor, torch.Tensor, float] | None = None  # (queries, keys, scale) when the logits are exactly scale · Q @ K
    used: bool = False
    reasons: list[str] = field(default_factory=list)
    arg: Any = None  # the op's input (a gate computed from the very tensor it multiplies is an activation)
    note: str = ""  # what happens to the weights after the op (given to the record)
    mix: bool = False  # a gated mix of softmaxes made by the tracker (its renormalisation keeps it attention)
