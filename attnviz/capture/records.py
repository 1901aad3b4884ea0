"""Record types: what a capture keeps of one call of one attention module.

Every tensor is float32 on the CPU and owned by the record (cloned at capture time), batch first.
Affinity-like records keep queries and keys (O(HW·C)) and compute a row when asked; the (HW × HW)
matrix is only held when generic discovery met an unknown module that materialised it itself. Beyond
:data:`SPILL_BYTES` of queries and keys in one forward (a transformer at a large input size, a batch of
frames), they are *spilled* (:func:`spill`): written to a temporary file that is unlinked at once and
memory-mapped for reading, so the process holds only the pages a view reads.
"""

from __future__ import annotations

import abc
import math
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.nn import functional as F


def _spill_limit() -> int | None:
    """Bytes of queries and keys one forward keeps in memory before spilling (``ATTNVIZ_SPILL_MB``, default 64: a ViT-S
    batch of 8 at 224² or DINOv2-S at 518² stays in memory, where writing its 24 tensors would cost about 5 % of the
    forward; ``0``: spill all; ``off``: never spill). Never on Windows, which cannot unlink a file that is mapped."""
    raw = os.environ.get("ATTNVIZ_SPILL_MB", "64").strip().lower()
    if os.name == "nt" or raw in ("off", "none", ""):
        return None
    try:
        return max(0, int(float(raw) * 2**20))
    except ValueError:
        return 64 * 2**20


SPILL_BYTES = _spill_limit()
SPILL_DIR = os.environ.get("ATTNVIZ_SPILL_DIR") or None  # default: the system's temporary folder (it should be on disk)


def keep(t: torch.Tensor) -> torch.Tensor:
    """Detached float32 CPU copy of ``t`` that no later in-place op of the model can change."""
    return t.detach().to(device="cpu", dtype=torch.float32, copy=True)


def spill(t: torch.Tensor) -> torch.Tensor:
    """Like :func:`keep`, but the copy lives in a temporary file, unlinked at once and memory-mapped (read-only use): its
    pages are read when a view touches them and can be dropped by the kernel. A strided or non-float32 source is written
    in slices of about 1 MB, so no full-size copy passes through the heap. Falls back to :func:`keep` on any error."""
    src = t.detach()
    if src.numel() == 0 or src.device.type != "cpu":
        return keep(t)
    try:
        fd, path = tempfile.mkstemp(prefix="attnviz-spill-", suffix=".f32", dir=SPILL_DIR)
    except OSError:
        return keep(t)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_f32(src, f)
        return torch.from_file(path, shared=False, size=src.numel(), dtype=torch.float32).view(src.shape)
    except (OSError, RuntimeError):
        return keep(t)
    finally:
        os.unlink(path)  # the mapping stays valid; the disk space is freed with it


SLICE = 1 << 18
"""Elements (1 MB of float32) a large copy or difference is formed in at a time, in :func:`scratch`."""
_local = threading.local()


def scratch(n: int) -> torch.Tensor:
    """A float32 CPU buffer of ``n ≤ SLICE`` elements, the same one for every call in this thread: slices copied or
    subtracted through it leave no transient allocation behind (glibc keeps freed blocks in its heap, where a few
    megabytes of them interleaved with the model's own tensors raise the process's peak)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = torch.empty(SLICE, dtype=torch.float32)
    return buf[:n]


def _write_f32(src: torch.Tensor, f: Any) -> None:
    """Write ``src`` as row-major float32: at once when it already is contiguous float32, else in slices along its
    leading dims copied through :func:`scratch`."""
    if src.dtype == torch.float32 and src.is_contiguous():
        src.numpy().tofile(f)
        return
    if src.numel() <= SLICE or src.ndim <= 1:
        if src.numel() > SLICE:  # a long strided 1-D tensor: rare, copied at once
            src.to(torch.float32).contiguous().numpy().tofile(f)
            return
        buf = scratch(src.numel()).view(src.shape)
        buf.copy_(src)
        buf.numpy().tofile(f)
        return
    per = src[0].numel()
    step = max(1, SLICE // per)
    for i in range(0, src.shape[0], step):
        _write_f32(src[i:i + step] if per <= SLICE else src[i], f)


NOT_CHANGED = "no ‖out−x‖/‖x‖: the output is not the input changed (A·V or fused branches; a residual sum is outside the module)"


@dataclass(eq=False, kw_only=True)
class Record(abc.ABC):
    """Base of every record.

    Attributes:
        name: Module path in the model (``name#k`` for its k-th call in one forward).
        module_type: Class name of the attention module that produced it.
        source: ``"adapter"`` (exact, known module) or ``"generic"`` (found by discovery).
        contribution: ``‖out − x‖ / ‖x‖`` per sample ``(B,)`` of the module (NaN where x is all zeros), or ``None``
            when input and output shapes differ, the module changed its input in place, or its output is not its
            input changed (:data:`NOT_CHANGED`, then in ``contribution_note``).
        contribution_note: Why there is no contribution, when the reason is known.
    """

    kind: ClassVar[str] = ""
    name: str = ""
    module_type: str = ""
    source: str = "adapter"
    contribution: torch.Tensor | None = None
    contribution_note: str = ""
    note: str = ""  # how the record was identified, or what it summarises

    @property
    @abc.abstractmethod
    def batch_size(self) -> int:
        """Number of samples B in the record."""

    def arrays(self) -> dict[str, torch.Tensor]:
        """The raw tensors of the record at feature resolution, for export."""
        out = {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor) and not k.startswith("_")}
        if self.contribution is not None:
            out["contribution"] = self.contribution
        return out

    def defer_contribution(self, finish: Callable[[], torch.Tensor | None]) -> None:
        """Set :attr:`contribution` to ``finish()``, called on first read: the capture keeps the few per-sample or
        per-channel sums it needs and leaves the last small ops (a ratio, a copy) to whoever reads the number."""
        vars(self)["_contribution"] = None
        vars(self)["_finish"] = finish

    def __getstate__(self) -> dict[str, Any]:
        _ = self.contribution  # a pickled or copied record carries the number, not the pending work
        return dict(vars(self))


def _get_contribution(rec: Record) -> torch.Tensor | None:
    state = vars(rec)
    finish = state.pop("_finish", None)
    if finish is not None:
        state["_contribution"] = finish()
    return state.get("_contribution")


def _set_contribution(rec: Record, value: torch.Tensor | None) -> None:
    vars(rec).pop("_finish", None)
    vars(rec)["_contribution"] = value


# the dataclass field stays in ``__init__``; reads and writes go through the lazy slot above
Record.contribution = property(_get_contribution, _set_contribution, doc="‖out − x‖ / ‖x‖ per sample (B,), or None.")  # type: ignore[assignment]


@dataclass(eq=False, kw_only=True)
class ChannelGate(Record):
    """Per-channel gate (SE, ECA, CBAM channel, GC with multiplicative fusion)."""

    kind: ClassVar[str] = "channel"
    weights: torch.Tensor  # (B, C)

    @property
    def batch_size(self) -> int:
        return self.weights.shape[0]


@dataclass(eq=False, kw_only=True)
class SpatialMask(Record):
    """Per-position gate or pooling mask (CBAM spatial, scSE sSE, GC context softmax)."""

    kind: ClassVar[str] = "spatial"
    mask: torch.Tensor  # (B, H, W)

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]


@dataclass(eq=False, kw_only=True)
class ElementGate(SpatialMask):
    """A gate that varies over channels *and* positions (SimAM's energy gate, BAM): ``gate (B, C, H, W)``.

    It is no spatial mask; ``mask`` is its channel mean ``(B, H, W)``, a view labelled as such wherever it is drawn.
    """

    kind: ClassVar[str] = "element_gate"
    gate: torch.Tensor  # (B, C, H, W)


@dataclass(eq=False, kw_only=True)
class BranchWeights(Record):
    """Per-branch, per-channel weights of a selective-kernel style fusion."""

    kind: ClassVar[str] = "branch"
    weights: torch.Tensor  # (B, M, C)

    @property
    def batch_size(self) -> int:
        return self.weights.shape[0]


@dataclass(eq=False, kw_only=True)
class ChannelAffinity(Record):
    """Channel-to-channel attention: DANet CAM, or cross-covariance attention (XCiT, EdgeNeXt; El-Nouby et al. 2021,
    arXiv:2106.09681) whose heads attend within their own channel group.

    Attributes:
        matrix: ``(B, C, C)``: row c is what channel c attends to. With ``groups`` > 1 (one group per head) it is block
            diagonal: head g's ``(C/g × C/g)`` weights at channels ``g·C/g … (g + 1)·C/g − 1``, zero between groups.
        groups: Channel groups (heads) that attend only within themselves.
    """

    kind: ClassVar[str] = "channel_affinity"
    matrix: torch.Tensor  # (B, C, C)
    groups: int = 1

    @property
    def batch_size(self) -> int:
        return self.matrix.shape[0]


@dataclass(eq=False, kw_only=True)
class Affinity(Record):
    """Attention of one query position over key positions (Non-Local, DANet PAM, BotNet).

    Either ``queries``/``keys`` are held (lazy rows) or the full ``matrix`` (generic discovery).

    Attributes:
        query_hw: Grid (H, W) of query positions.
        key_hw: Grid (Hk, Wk) of key positions (smaller when keys are sub-sampled).
        queries: ``(B, heads, N, d)``.
        keys: ``(B, heads, d, M)``.
        scale: Factor on the logits.
        normalize: ``"softmax"`` or ``"mean"`` (dot-product Non-Local: logits / M).
        rel_h, rel_w: Relative position tables ``(2H-1, d)`` and ``(2W-1, d)`` (BotNet) or None.
        scale_pos: Whether the relative logits are added before (True) or after (False) the scale.
        matrix: ``(B, heads, N, M)`` when captured whole.
        mask: Additive float or boolean (True = keep) mask broadcastable to ``(B, heads, N, M)``
            (``F.scaled_dot_product_attention``'s ``attn_mask``), or None.
        causal: Key m is masked out for query n when m > n (``is_causal``).
        query_cells, key_cells: ``(bh, bw, H, W)`` when each position of the grid is a bh × bw block of cells of an
            H × W grid that tiles the image, the last blocks running past its edge (LeViT's subsample of a 7×7 map to
            4×4 takes cells 0, 2, 4, 6: 64-pixel cells over 256 pixels at 224²); None when the grid tiles the image.
    """

    kind: ClassVar[str] = "affinity"
    query_hw: tuple[int, int]
    key_hw: tuple[int, int]
    queries: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    scale: float = 1.0
    normalize: str = "softmax"
    rel_h: torch.Tensor | None = None
    rel_w: torch.Tensor | None = None
    scale_pos: bool = False
    matrix: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    causal: bool = False
    query_cells: tuple[int, int, int, int] | None = None
    key_cells: tuple[int, int, int, int] | None = None

    @property
    def batch_size(self) -> int:
        t = self.matrix if self.matrix is not None else self.queries
        assert t is not None
        return t.shape[0]

    @property
    def heads(self) -> int:
        """Number of attention heads."""
        t = self.matrix if self.matrix is not None else self.queries
        assert t is not None
        return t.shape[1]

    def _check(self, y: int, x: int, batch: int, head: int | None) -> int:
        h, w = self.query_hw
        if not (0 <= y < h and 0 <= x < w):
            raise IndexError(f"query ({y}, {x}) is outside the {h}×{w} query grid of {self.name}")
        if not 0 <= batch < self.batch_size:
            raise IndexError(f"batch {batch} out of range for batch size {self.batch_size}")
        if head is not None and not 0 <= head < self.heads:
            raise IndexError(f"head {head} out of range for {self.heads} heads")
        return y * w + x

    def row(self, y: int, x: int, batch: int = 0, head: int | None = None) -> torch.Tensor:
        """Attention of query (y, x) over the keys, ``(Hk, Wk)``; heads averaged when ``head`` is None."""
        n = self._check(y, x, batch, head)
        if self.matrix is not None:
            rows = self.matrix[batch, :, n, :]  # (heads, M)
        else:
            assert self.queries is not None and self.keys is not None
            q = self.queries[batch, :, n, :]  # (heads, d)
            logits = torch.einsum("hd,hdm->hm", q, self.keys[batch])  # (heads, M)
            if self.rel_h is not None and self.rel_w is not None:
                rel = self._relative_logits(q, y, x)  # (heads, M)
                logits = (logits + rel) * self.scale if self.scale_pos else logits * self.scale + rel
            else:
                logits = logits * self.scale
            logits = self.masked(logits, batch, n)
            if self.causal:
                logits[:, n + 1 :] = float("-inf")
            rows = F.softmax(logits, dim=-1) if self.normalize == "softmax" else logits / logits.shape[-1]
        out = rows.mean(0) if head is None else rows[head]
        return out.reshape(self.key_hw)

    def masked(self, logits: torch.Tensor, batch: int, n: int | None = None) -> torch.Tensor:
        """``logits`` with the fused op's ``attn_mask`` applied: of query ``n`` ``(heads, M)``, or of every query
        ``(heads, N, M)`` when ``n`` is None."""
        if self.mask is None:
            return logits
        m = self.mask.reshape((1,) * (4 - self.mask.ndim) + tuple(self.mask.shape))  # (B|1, heads|1, N|1, M)
        m = m[min(batch, m.shape[0] - 1)]  # (heads|1, N|1, M)
        if n is not None:
            m = m[:, min(n, m.shape[1] - 1)]  # (heads|1, M)
        return logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m

    def _relative_logits(self, q: torch.Tensor, y: int, x: int) -> torch.Tensor:
        """Relative-position logits of query (y, x) for every key, ``(heads, Hk·Wk)``."""
        assert self.rel_h is not None and self.rel_w is not None
        hk, wk = self.key_hw
        idx_h = torch.arange(hk) - y + hk - 1  # (Hk,)
        idx_w = torch.arange(wk) - x + wk - 1  # (Wk,)
        lh = q @ self.rel_h[idx_h].T  # (heads, Hk)
        lw = q @ self.rel_w[idx_w].T  # (heads, Wk)
        return (lh[:, :, None] + lw[:, None, :]).flatten(1)


@dataclass(eq=False, kw_only=True)
class TokenAttention(Affinity):
    """Self-attention over a token sequence (ViT, DeiT, DINO/DINOv2 with registers, …): patch tokens are image cells,
    prefix tokens (class, distillation, registers) are named.

    Queries ``(B, heads, Pq + Nq, d)`` and keys ``(B, heads, d, Pk + Mk)`` hold the prefix tokens first; rows are
    computed lazily, as the fused op does (scale · QKᵀ, mask, softmax over every key). ``row`` gives the patch-key
    part of a patch query's row: the weight on prefix keys is *not* renormalised away (see :meth:`prefix_mass`).

    Attributes:
        query_prefix: Names of the prefix query tokens (e.g. ``("cls", "reg0", …)``).
        key_prefix: Names of the prefix key tokens.
    """

    kind: ClassVar[str] = "tokens"
    query_prefix: tuple[str, ...] = ()
    key_prefix: tuple[str, ...] = ()

    @property
    def prefix_tokens(self) -> list[str]:
        """Names of the prefix tokens (keys), e.g. ``["cls", "reg0", "reg1", "reg2", "reg3"]``."""
        return list(self.key_prefix)

    def token_rows(self, n: int, batch: int = 0) -> torch.Tensor:
        """Every head's weights of query token ``n`` (prefix tokens first) over every key token, ``(heads, Pk + Mk)``."""
        if self.matrix is not None:
            return self.matrix[batch, :, n, :]
        assert self.queries is not None and self.keys is not None
        logits = torch.einsum("hd,hdm->hm", self.queries[batch, :, n, :], self.keys[batch]) * self.scale  # (heads, M)
        return F.softmax(self.masked(logits, batch, n), dim=-1)

    def _full(self, n: int, batch: int, head: int | None) -> torch.Tensor:
        """Weights of query token ``n`` over every key token ``(Pk + Mk,)`` (heads averaged when ``head`` is None)."""
        rows = self.token_rows(n, batch)
        return rows.mean(0) if head is None else rows[head]

    def _patch_keys(self, w: torch.Tensor) -> torch.Tensor:
        return w[len(self.key_prefix):].reshape(self.key_hw)

    def row(self, y: int, x: int, batch: int = 0, head: int | None = None) -> torch.Tensor:
        """Patch query at grid cell (y, x) over the patch keys, ``(Hk, Wk)``."""
        n = self._check(y, x, batch, head) + len(self.query_prefix)
        return self._patch_keys(self._full(n, batch, head))

    def prefix_row(self, i: int, batch: int = 0, head: int | None = None) -> torch.Tensor:
        """What prefix token ``i`` (0 = the class token where there is one) attends to among the patch keys, ``(Hk, Wk)``."""
        if not 0 <= i < len(self.query_prefix):
            raise IndexError(f"{self.name} has {len(self.query_prefix)} prefix query tokens ({', '.join(self.query_prefix) or 'none'}); got {i}")
        self._check(0, 0, batch, head)
        return self._patch_keys(self._full(i, batch, head))

    def prefix_mass(self, y: int, x: int, batch: int = 0, head: int | None = None) -> torch.Tensor:
        """The weight patch query (y, x) puts on each prefix key ``(Pk,)`` (the rest of its row is :meth:`row`)."""
        n = self._check(y, x, batch, head) + len(self.query_prefix)
        return self._full(n, batch, head)[: len(self.key_prefix)]


@dataclass(eq=False, kw_only=True)
class CrissCross(Record):
    """CCNet attention of one loop: each position over its column and row.

    Holds queries/keys (``(B, C', H, W)``) from our module, or the softmaxed ``attention``
    ``(B, H, W, H + W)`` (column part first) from generic discovery.
    """

    kind: ClassVar[str] = "criss_cross"
    queries: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    attention: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        t = self.attention if self.attention is not None else self.queries
        assert t is not None
        return t.shape[0]

    @property
    def hw(self) -> tuple[int, int]:
        """Feature grid (H, W)."""
        if self.attention is not None:
            return int(self.attention.shape[1]), int(self.attention.shape[2])
        assert self.queries is not None
        return int(self.queries.shape[2]), int(self.queries.shape[3])

    def cross_weights(self, ys: torch.Tensor, xs: torch.Tensor, batch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights of several query positions over their column and row.

        Args:
            ys, xs: Query coordinates ``(n,)`` (long).
            batch: Sample index.

        Returns:
            ``(col (n, H), row (n, W))``; the own position appears in ``row`` only.
        """
        h, w = self.hw
        if self.attention is not None:
            a = self.attention[batch, ys, xs]  # (n, H + W)
        else:
            assert self.queries is not None and self.keys is not None
            q = self.queries[batch][:, ys, xs].T.unsqueeze(2)  # (n, C', 1)
            k = self.keys[batch]  # (C', H, W)
            by_col = k.permute(2, 1, 0).contiguous()  # (W, H, C'): contiguous gathers keep bmm on its fast path
            by_row = k.permute(1, 2, 0).contiguous()  # (H, W, C')
            col = torch.bmm(by_col[xs], q).squeeze(2)  # (n, H): keys on each query's column
            col[torch.arange(len(ys)), ys] = float("-inf")  # own position: counted in the row part only
            row = torch.bmm(by_row[ys], q).squeeze(2)  # (n, W): keys on each query's row
            a = F.softmax(torch.cat([col, row], dim=1), dim=1)
        return a[:, :h], a[:, h:]

    def row(self, y: int, x: int, batch: int = 0) -> torch.Tensor:
        """Attention of position (y, x) as an ``(H, W)`` map: non-zero only on row y and column x."""
        h, w = self.hw
        if not (0 <= y < h and 0 <= x < w):
            raise IndexError(f"query ({y}, {x}) is outside the {h}×{w} grid of {self.name}")
        col, row = self.cross_weights(torch.tensor([y]), torch.tensor([x]), batch)
        out = torch.zeros(h, w)
        out[:, x] += col[0]
        out[y, :] += row[0]
        return out


@dataclass(eq=False, kw_only=True)
class SamplingGrid(Record):
    """STN sampling positions in ``grid_sample``'s normalised (x, y) convention.

    Attributes:
        grid: ``(B, Ho, Wo, 2)``.
        theta: ``(B, 2, 3)`` when the grid came from an affine θ, else None.
        input_hw: Size (H, W) of the sampled input, when known.
        align_corners: The ``align_corners`` the grid was made and used with.
    """

    kind: ClassVar[str] = "grid"
    grid: torch.Tensor
    theta: torch.Tensor | None = None
    input_hw: tuple[int, int] | None = None
    align_corners: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.grid.shape[0]


@dataclass(eq=False, kw_only=True)
class RegionAttention(Record):
    """Pixel → region attention (OCR object regions, EMA bases, ANN pyramid cells, A²-Nets).

    The keys are not pixels but K regions, each a soft map over the image; a query pixel's
    attention is a distribution over the K regions. A clicked pixel's map over the image is the
    composition ``Σ_k p(k | pixel) · region_k`` (where its context comes from, exactly).

    Attributes:
        region_maps: ``(B, K, H, W)`` each region's weights over positions.
        pixel_weights: ``(B, Hq·Wq, K)`` each query's distribution over the regions.
        query_hw: Grid (Hq, Wq) of the queries.
        region_names: Names of the K regions where they are classes (OCR), else None.
    """

    kind: ClassVar[str] = "regions"
    region_maps: torch.Tensor
    pixel_weights: torch.Tensor
    query_hw: tuple[int, int]
    region_names: list[str] | None = None

    @property
    def batch_size(self) -> int:
        return self.region_maps.shape[0]

    @property
    def regions(self) -> int:
        """Number of regions K."""
        return int(self.region_maps.shape[1])

    def distribution(self, y: int, x: int, batch: int = 0) -> torch.Tensor:
        """Attention of query (y, x) over the K regions, ``(K,)``."""
        h, w = self.query_hw
        if not (0 <= y < h and 0 <= x < w):
            raise IndexError(f"query ({y}, {x}) is outside the {h}×{w} query grid of {self.name}")
        return self.pixel_weights[batch, y * w + x]

    def pixel_map(self, y: int, x: int, batch: int = 0) -> torch.Tensor:
        """The query's attention carried onto the image through the regions, ``(H, W)``."""
        p = self.distribution(y, x, batch)  # (K,)
        return torch.einsum("k,khw->hw", p, self.region_maps[batch])


@dataclass(eq=False, kw_only=True)
class AxisGate(Record):
    """A gate over channels × one image axis (coordinate attention's H and W factors, Triplet's branches).

    Attributes:
        weights: ``(B, C, L)``: the gate of channel c at row (``axes[1] == "h"``) or column ``l``.
        axes: ``("c", "h")`` or ``("c", "w")``.
    """

    kind: ClassVar[str] = "axis_gate"
    weights: torch.Tensor
    axes: tuple[str, str] = ("c", "h")

    @property
    def batch_size(self) -> int:
        return self.weights.shape[0]


@dataclass(eq=False, kw_only=True)
class WindowAffinity(Record):
    """Window-local attention (windows or dilated grids folded into the batch), placed back on the image.

    The weights are kept with the atoms of their axes (see :mod:`attnviz.capture.provenance`): the batch
    axis holds ``b`` and the window index atoms, the query and key axes the within-window atoms; together
    they give every query's and key's row and column exactly.

    Attributes:
        weights: ``(*lead, Nq, Nk)`` with ``lead`` the sizes of ``lead_atoms``.
        lead_atoms, query_atoms, key_atoms: ``(name, size)`` of each atom, row-major.
        steps: How the grid the windows tile comes from the image grid, in order: ``("roll", rh, rw)`` for
            ``torch.roll(…, shifts=(rh, rw))`` (Swin's shifted windows) and ``("pad", H, W, Hp, Wp)`` (zero padding after
            the last row and column, Swin at a size its window does not divide). Rows are mapped back through them:
            rolled back and the padding cut off (its weight is :meth:`outside_mass`), so ``row`` is always in unshifted
            image coordinates.
    """

    kind: ClassVar[str] = "window"
    weights: torch.Tensor
    lead_atoms: list[tuple[str, int]]
    query_atoms: list[tuple[str, int]]
    key_atoms: list[tuple[str, int]]
    steps: tuple[tuple[Any, ...], ...] = ()

    @property
    def batch_size(self) -> int:
        return self.weights.shape[0]

    @property
    def shift(self) -> tuple[int, int]:
        """The roll ``(rh, rw)`` of the grid the windows tile, from :attr:`steps` ((0, 0) for unshifted windows)."""
        rolls = [(int(st[1]), int(st[2])) for st in self.steps if st[0] == "roll"]
        return rolls[0] if rolls else (0, 0)

    def _radix(self, base: str) -> list[tuple[str, int, str]]:
        """Every atom of ``base`` (h or w) with its place: ``(name, size, where)``, outermost first."""
        found = [(n, s, "lead") for n, s in self.lead_atoms if n.split("[")[0] == base]
        found += [(n, s, "q") for n, s in self.query_atoms if n.split("[")[0] == base]
        return sorted(found, key=lambda t: _outer_first(t[0]))

    @property
    def heads(self) -> int:
        """Number of heads (every atom folded into the batch that is not the batch or a window index)."""
        return math.prod(s for n, s in self.lead_atoms if n.split("[")[0] not in ("b", "h", "w"))

    @property
    def grid_hw(self) -> tuple[int, int]:
        """The grid the windows tile (padded, where the model padded it)."""
        return (int(torch.tensor([s for _, s, _ in self._radix("h")]).prod()), int(torch.tensor([s for _, s, _ in self._radix("w")]).prod()))

    @property
    def hw(self) -> tuple[int, int]:
        """The image grid (H, W) whose cells the rows are over."""
        pads = [st for st in self.steps if st[0] == "pad"]
        return (int(pads[0][1]), int(pads[0][2])) if pads else self.grid_hw

    def layout(self) -> str:
        """What a query attends to, in words: local windows (the within-window atoms are the grid's finest) or a dilated
        grid (the finest atoms are folded into the batch: cells a fixed step apart, as MobileViT's and MaxViT's grid attention)."""
        h, w = self.hw
        sizes, steps = [], []
        for base in ("h", "w"):
            radix = self._radix(base)
            q = [s for _, s, where in radix if where == "q"]
            inner = 1
            for _, s, where in reversed(radix):  # the finest atoms that are not the query's: the step between attended cells
                if where == "q":
                    break
                inner *= s
            sizes.append(int(torch.tensor(q).prod()) if q else 1)
            steps.append(inner)
        if steps == [1, 1]:
            ext, shifted = (h, w), ""
            for st in self.steps:  # the model rolled its (padded) grid by (−dy, −dx): Swin's shift
                if st[0] == "roll":
                    shifted = f", shifted by {(-st[1]) % ext[0]}×{(-st[2]) % ext[1]} cells (rolled back)"
                else:
                    ext = (int(st[3]), int(st[4]))
            gh, gw = self.grid_hw
            if (sizes[0], sizes[1]) == (gh, gw) == (h, w):
                return f"one window over the whole {h}×{w} grid (every cell attends to every cell)"
            padded = f", padded to {gh}×{gw} (the padding is not drawn)" if (gh, gw) != (h, w) else ""
            return f"window-local: {sizes[0]}×{sizes[1]} windows on a {h}×{w} grid{shifted}{padded}"
        return f"dilated grid: {sizes[0]}×{sizes[1]} cells {steps[0]}×{steps[1]} apart on a {h}×{w} grid"

    def validate(self) -> None:
        """Raise ValueError unless queries and keys tile the same grid window by window."""
        qn = sorted(n for n, _ in self.query_atoms)
        kn = sorted(n for n, _ in self.key_atoms)
        if qn != kn:
            raise ValueError("keys and queries come from different windows (e.g. halo windows)")
        if any(n.split("[")[0] not in ("h", "w", "b") and n.split("[")[0] != "c" for n, _ in self.lead_atoms):
            raise ValueError("an unknown axis is folded into the batch")

    def _index(self, atoms: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        """For every flat index of an axis made of ``atoms``: the digit of each atom (cached per axis)."""
        cache = self.__dict__.setdefault("_index_cache", {})
        key = tuple(atoms)
        if key not in cache:
            cache[key] = self._digits(atoms)
        return cache[key]

    @staticmethod
    def _digits(atoms: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        sizes = [s for _, s in atoms]
        n = int(torch.tensor(sizes).prod()) if sizes else 1
        flat = torch.arange(n)
        out = {}
        for i, (name, s) in enumerate(atoms):
            inner = int(torch.tensor(sizes[i + 1 :]).prod()) if i + 1 < len(sizes) else 1
            out[name] = (flat // inner) % s
        return out

    def row(self, y: int, x: int, batch: int = 0, head: int | None = None) -> torch.Tensor:
        """The query (y, x)'s attention over the image ``(H, W)``: its window's keys at their own pixels, 0 elsewhere."""
        rows = self.head_rows(y, x, batch)  # (heads, H, W)
        return rows.mean(0) if head is None else rows[head]

    def head_rows(self, y: int, x: int, batch: int = 0) -> torch.Tensor:
        """:meth:`row` of every head at once, ``(heads, H, W)``."""
        H, W = self.hw
        if not (0 <= y < H and 0 <= x < W):
            raise IndexError(f"query ({y}, {x}) is outside the {H}×{W} grid of {self.name}")
        steps, ext, gy, gx = self.steps, (H, W), y, x
        for st in steps:  # image cell → cell of the grid the windows tile
            if st[0] == "roll":  # the rolled grid holds image cell (y, x) at ((y + rh) mod H, (x + rw) mod W)
                gy, gx = (gy + st[1]) % ext[0], (gx + st[2]) % ext[1]
            else:
                ext = (int(st[3]), int(st[4]))
        rows = self._rows(gy, gx, batch)  # (heads, Gh, Gw)
        for st in reversed(steps):  # and the rows back onto the image grid
            rows = torch.roll(rows, shifts=(-st[1], -st[2]), dims=(1, 2)) if st[0] == "roll" else rows[:, : st[1], : st[2]]
        return rows.contiguous()

    def outside_mass(self, y: int, x: int, batch: int = 0, head: int | None = None) -> float:
        """The weight query (y, x) puts on the zero padding past the image grid (not drawn by :meth:`row`)."""
        left = 1 - self.head_rows(y, x, batch).sum((1, 2))  # (heads,): every head's softmax row sums to 1
        return float(left.mean() if head is None else left[head])

    def cells(self, batch: int = 0) -> dict[str, torch.Tensor]:
        """Every window at once, with the image cell of each query and key: ``weights (L, Nq, Nk)`` (one window of one
        head per entry), ``head (L,)``, ``qy``, ``qx`` ``(L, Nq)`` and ``ky``, ``kx`` ``(L, Nk)`` in unshifted image-grid
        coordinates, ``q_in``, ``k_in`` (False on the zero padding past the image grid)."""
        lead = self._digits(self.lead_atoms)  # atom -> (L_all,)
        n_lead = math.prod(s for _, s in self.lead_atoms)
        keep = lead["b"] == batch if "b" in lead else torch.ones(n_lead, dtype=torch.bool)
        w = self.weights.reshape(n_lead, *self.weights.shape[-2:])[keep].float()  # (L, Nq, Nk)
        head = torch.zeros(n_lead, dtype=torch.long)
        for name, s in self.lead_atoms:  # the head atoms, row-major
            if name.split("[")[0] not in ("b", "h", "w"):
                head = head * s + lead[name]
        out = {"weights": w, "head": head[keep]}
        for side, atoms, n in (("q", self.query_atoms, w.shape[1]), ("k", self.key_atoms, w.shape[2])):
            own = self._index(atoms)  # atom -> (N,)
            grid = {}
            for base in ("h", "w"):
                g = torch.zeros(w.shape[0], n, dtype=torch.long)
                for name, _s, inner in self._places(base):
                    g += (own[name][None, :] if name in own else lead[name][keep][:, None]) * inner
                grid[base] = g
            out[f"{side}y"], out[f"{side}x"], out[f"{side}_in"] = self._unshift(grid["h"], grid["w"])
        return out

    def _unshift(self, gy: torch.Tensor, gx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cells of the grid the windows tile → image cells (rolls undone), and whether each is inside the image grid."""
        exts, ext = [], self.hw
        for st in self.steps:  # the extent each step acts on
            exts.append(ext)
            if st[0] == "pad":
                ext = (int(st[3]), int(st[4]))
        inside = torch.ones_like(gy, dtype=torch.bool)
        for st, (eh, ew) in zip(reversed(self.steps), reversed(exts)):
            if st[0] == "roll":
                gy, gx = (gy - st[1]) % eh, (gx - st[2]) % ew
            else:
                inside &= (gy < eh) & (gx < ew)
        return gy, gx, inside

    def _places(self, base: str) -> list[tuple[str, int, int]]:
        """:meth:`_radix` of ``base`` with each atom's place value: ``(name, size, inner)`` (cached: atoms never change)."""
        cache = self.__dict__.setdefault("_place_cache", {})
        if base not in cache:
            radix = self._radix(base)
            cache[base] = [(name, s, math.prod(t[1] for t in radix[j + 1:])) for j, (name, s, _) in enumerate(radix)]
        return cache[base]

    def _rows(self, y: int, x: int, batch: int) -> torch.Tensor:
        H, W = self.grid_hw
        digits = {name: (coord // inner) % s for base, coord in (("h", y), ("w", x)) for name, s, inner in self._places(base)}
        lead_idx: list[Any] = [batch if name == "b" else digits[name] if name in digits else slice(None) for name, _s in self.lead_atoms]
        qi = self._index(self.query_atoms)
        qflat = torch.ones(len(next(iter(qi.values()))) if qi else 1, dtype=torch.bool)
        for name, vals in qi.items():
            qflat &= vals == digits[name]
        q = int(qflat.nonzero()[0])
        w = self.weights[tuple(lead_idx)][..., q, :]  # (*heads, Nk)
        w = w.reshape(-1, w.shape[-1])  # (heads, Nk)
        ki = self._index(self.key_atoms)
        ys = torch.zeros(w.shape[-1], dtype=torch.long)
        xs = torch.zeros(w.shape[-1], dtype=torch.long)
        for base, target in (("h", ys), ("w", xs)):
            for name, _s, inner in self._places(base):
                target += (ki[name] if name in ki else torch.full((w.shape[-1],), digits[name])) * inner
        out = torch.zeros(w.shape[0], H, W)
        out[:, ys, xs] = w.float()
        return out


@dataclass(eq=False, kw_only=True)
class HaloAffinity(Record):
    """Blocked local self-attention with a halo (HaloNet: Vaswani et al., "Scaling Local Self-Attention for Parameter
    Efficient Visual Backbones", CVPR 2021, https://arxiv.org/abs/2103.12731).

    The query grid is cut into blocks; the queries of block (i, j) attend to one window of the key grid, the block's area
    grown by a halo: window cell (ky, kx) is key cell ``(i·step_h + ky − pad_h, j·step_w + kx − pad_w)``, zero padding
    where that falls outside the grid (its weight is real, and not drawn: see :meth:`outside_mass`).

    Attributes:
        weights: ``(B, heads, blocks_h, blocks_w, Nq, Nk)``; queries and window keys row-major within their block / window.
        query_hw, key_hw: The query and key grids (the queries may be subsampled: HaloNet's ``block_stride``).
        block: Queries per block ``(bh, bw)``; window: keys per window ``(kh, kw)``; step: key cells between windows;
            pad: key cells of zero padding before the first row / column.
        folded: The weights are sums over overlapping windows that a fold adds up (VOLO's outlook attention): a row
            is how much each input cell contributes to this output cell, and sums to the number of windows that
            contain it (1–4 at stride 2), not to 1.
    """

    kind: ClassVar[str] = "window"
    weights: torch.Tensor
    query_hw: tuple[int, int]
    key_hw: tuple[int, int]
    block: tuple[int, int]
    window: tuple[int, int]
    step: tuple[int, int]
    pad: tuple[int, int]
    folded: bool = False

    @property
    def batch_size(self) -> int:
        return self.weights.shape[0]

    @property
    def heads(self) -> int:
        return self.weights.shape[1]

    @property
    def hw(self) -> tuple[int, int]:
        return self.query_hw

    def layout(self) -> str:
        """What a query attends to, in words."""
        (bh, bw), (kh, kw) = self.block, self.window
        if self.folded:
            return f"outlook attention folded back: each of {self.query_hw[0]}×{self.query_hw[1]} cells over the {kh}×{kw} cells around it"
        if self.pad == (0, 0) and self.step == self.window:  # no halo: windows that tile the key grid, coarser queries
            return (f"window-local: {bh}×{bw} queries per window, each over its {kh}×{kw} keys on a {self.key_hw[0]}×{self.key_hw[1]} grid "
                    f"(queries on a {self.query_hw[0]}×{self.query_hw[1]} grid)")
        return f"halo windows: {bh}×{bw} query blocks, each over {kh}×{kw} keys on a {self.key_hw[0]}×{self.key_hw[1]} grid"

    def _window_rows(self, y: int, x: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every head's window weights of query (y, x) ``(heads, kh, kw)`` and the key rows and columns of the window."""
        h, w = self.query_hw
        if not (0 <= y < h and 0 <= x < w):
            raise IndexError(f"query ({y}, {x}) is outside the {h}×{w} grid of {self.name}")
        (by, iy), (bx, ix) = divmod(y, self.block[0]), divmod(x, self.block[1])
        r = self.weights[batch, :, by, bx, iy * self.block[1] + ix].float().view(-1, *self.window)  # (heads, kh, kw)
        ys = by * self.step[0] - self.pad[0] + torch.arange(self.window[0])
        xs = bx * self.step[1] - self.pad[1] + torch.arange(self.window[1])
        return r, ys, xs

    def _window_row(self, y: int, x: int, batch: int, head: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if head is not None and not 0 <= head < self.heads:
            raise IndexError(f"head {head} out of range for {self.heads} heads")
        r, ys, xs = self._window_rows(y, x, batch)
        return (r.mean(0) if head is None else r[head]), ys, xs

    def row(self, y: int, x: int, batch: int = 0, head: int | None = None) -> torch.Tensor:
        """Query cell (y, x) over the key grid ``(Hk, Wk)``: its window's weights at their cells, 0 elsewhere."""
        r, ys, xs = self._window_row(y, x, batch, head)
        return self._place(r[None], ys, xs)[0]

    def head_rows(self, y: int, x: int, batch: int = 0) -> torch.Tensor:
        """:meth:`row` of every head at once, ``(heads, Hk, Wk)``."""
        r, ys, xs = self._window_rows(y, x, batch)
        return self._place(r, ys, xs)

    def _place(self, r: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """Window weights ``(n, kh, kw)`` at their key cells ``(n, Hk, Wk)``; cells of the zero padding are dropped."""
        vy, vx = (ys >= 0) & (ys < self.key_hw[0]), (xs >= 0) & (xs < self.key_hw[1])
        out = torch.zeros(r.shape[0], *self.key_hw)
        out[:, ys[vy][:, None], xs[vx][None, :]] = r[:, vy][:, :, vx]
        return out

    def outside_mass(self, y: int, x: int, batch: int = 0, head: int | None = None) -> float:
        """The weight query (y, x) puts on zero-padded keys outside the grid (not drawn by :meth:`row`)."""
        r, _, _ = self._window_row(y, x, batch, head)
        return float(r.sum()) - float(self.row(y, x, batch, head).sum())


def _outer_first(name: str) -> tuple[int, ...]:
    """Sort key of a row / column atom: outer parts before inner ones (``h[28o][14o][7o]`` < ``h[28o][2i]`` < ``h[2i]``)."""
    return tuple(0 if p.endswith("o]") else 1 for p in name.split("[")[1:])


def pooled_windows(weights: torch.Tensor, lead_atoms: list[tuple[str, int]], query_atoms: list[tuple[str, int]],
                   key_atoms: list[tuple[str, int]]) -> HaloAffinity:
    """Window attention whose queries lie on a coarser grid than their keys (Hiera's query pooling: one query per 2×2 key
    cells of its mask unit), as :class:`HaloAffinity` blocks without halo. ``weights`` ``(*lead, Nq, Nk)`` as for
    :class:`WindowAffinity`. Exact only when the windows are the outermost digits of both grids and the digits the queries
    lack are the keys' finest; otherwise ValueError."""
    base = {n: n.split("[")[0] for n, _ in [*lead_atoms, *query_atoms, *key_atoms]}
    if any(b not in ("b", "c", "h", "w") for b in base.values()) or not {n for n, _ in query_atoms} < {n for n, _ in key_atoms}:
        raise ValueError("keys and queries come from different windows (e.g. halo windows)")
    parts = {"lead": lead_atoms, "q": query_atoms, "k": key_atoms}
    offsets = {"lead": 0, "q": len(lead_atoms), "k": len(lead_atoms) + len(query_atoms)}
    idx: dict[str, list[int]] = {}  # "qh": positions (in lead + query + key order) of the query's row atoms, outer first
    names: dict[str, list[str]] = {}
    for part, atoms in parts.items():
        for b in ("h", "w"):
            mine = sorted((i for i, (n, _) in enumerate(atoms) if base[n] == b), key=lambda i, a=atoms: _outer_first(a[i][0]))
            idx[part + b], names[part + b] = [offsets[part] + i for i in mine], [atoms[i][0] for i in mine]
    for b in ("h", "w"):
        if any(sorted(names["lead" + b] + names[p + b], key=_outer_first)[: len(names["lead" + b])] != names["lead" + b] for p in ("q", "k")):
            raise ValueError("the windows are not the outermost cells of the grid (a dilated grid with pooled queries)")
        if names["k" + b][: len(names["q" + b])] != names["q" + b]:
            raise ValueError("the queries lack other digits of the key grid than its finest (not a coarser grid of blocks)")
    size = {key: math.prod(dict(parts[key[:-1]])[n] for n in ns) for key, ns in names.items()}
    batch = [i for i, (n, _) in enumerate(lead_atoms) if n == "b"]
    heads = [i for i, (n, _) in enumerate(lead_atoms) if base[n] == "c"]
    w = weights.reshape([s for _, s in [*lead_atoms, *query_atoms, *key_atoms]])
    w = w.permute(batch + heads + idx["leadh"] + idx["leadw"] + idx["qh"] + idx["qw"] + idx["kh"] + idx["kw"])
    nb, nh = math.prod(lead_atoms[i][1] for i in batch), math.prod(lead_atoms[i][1] for i in heads)
    (bh, bw), (kh, kw), (gh, gw) = (size["qh"], size["qw"]), (size["kh"], size["kw"]), (size["leadh"], size["leadw"])
    rec = HaloAffinity(weights=w.reshape(nb, nh, gh, gw, bh * bw, kh * kw).contiguous(), query_hw=(gh * bh, gw * bw), key_hw=(gh * kh, gw * kw),
                       block=(bh, bw), window=(kh, kw), step=(kh, kw), pad=(0, 0))
    rec.note = (f"queries on a grid {kh // bh}×{kw // bw} times coarser than the keys (pooled or subsampled queries, e.g. Hiera's "
                "query pooling): a row is the coarse cell's, over the keys of its window")
    return rec


def placed_windows(weights: torch.Tensor, lead_atoms: list[tuple[str, int]], query_atoms: list[tuple[str, int]],
                   key_atoms: list[tuple[str, int]], steps: tuple[tuple[Any, ...], ...] = ()) -> WindowAffinity | HaloAffinity:
    """The record of window-local weights: :class:`WindowAffinity`, or :func:`pooled_windows` where the queries are on a coarser
    grid than the keys (never with rolls or padding); ValueError with the reason where neither places them exactly."""
    rec = WindowAffinity(weights=weights, lead_atoms=lead_atoms, query_atoms=query_atoms, key_atoms=key_atoms, steps=steps)
    try:
        rec.validate()
    except ValueError:
        if steps or sorted(n for n, _ in query_atoms) == sorted(n for n, _ in key_atoms):
            raise
        return pooled_windows(weights, lead_atoms, query_atoms, key_atoms)
    return rec


RECORD_TYPES: tuple[type[Record], ...] = (
    ChannelGate, SpatialMask, BranchWeights, ChannelAffinity, Affinity, CrissCross, SamplingGrid, RegionAttention, AxisGate, WindowAffinity,
    HaloAffinity,
)
