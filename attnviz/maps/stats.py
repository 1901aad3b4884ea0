"""Per-image statistics of pixel attention, for dataset-level summaries (the attention atlas).

Every layer whose weights depend on the query pixel (Non-Local / DANet / BotNet affinity, transformer heads,
windows, CCNet's two-hop reach, pixel → region attention) is read the same way: the rows of a fixed set of query
cells (:func:`query_cells`, the same cells for every image of a layer), per head, over the layer's keys placed
at their own image pixels. The statistics follow their papers:

- mean attention distance (Dosovitskiy et al. 2021, arXiv:2010.11929, §D.7): per query, the distance in image
  pixels between the query's cell centre and each key's cell centre, weighted by the attention, averaged over the
  queries; for transformer layers the prefix tokens' weight is removed and the rest renormalised, as in the paper;
- entropy of a row (nats) and the same divided by ln(number of keys the query can reach): 1 = uniform;
- query dependence (GCNet, Cao et al. 2019, arXiv:1904.11492): Jensen–Shannon divergence of the rows of random
  pairs of query cells and the share of pairs whose rows peak at the same key;
- with a label map: the same-class mass ratio of queries on objects (mass on pixels of the query's class ÷ that
  class's share of the image) beside the same ratio for uniform weights over the keys the query can reach (the
  geometry alone: a window or a criss-cross already lies mostly on the object around its query).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..capture.records import Affinity, CrissCross, HaloAffinity, Record, RegionAttention, TokenAttention, WindowAffinity
from .metrics import js_divergence
from .reach import criss_cross_reach, uniform_criss_cross, uniform_reach
from .transformer import full_attention, plain_softmax
from .views import base_name, cell_px

QUERY_LIMIT = 64  # query cells per layer and image (all cells when the grid has fewer)


def query_cells(hw: tuple[int, int], limit: int = QUERY_LIMIT) -> torch.Tensor:
    """The query cells a layer's statistics use, ``(Q, 2)`` (y, x): every cell of an ``hw`` grid when it has at most
    ``limit``, else a regular ``k × k`` lattice of cell centres (``k = ⌊√limit⌋``), the same for every image."""
    h, w = hw
    if h * w <= limit:
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    else:
        k = max(1, math.isqrt(limit))
        ys, xs = torch.meshgrid(((torch.arange(min(k, h)) + 0.5) * h / min(k, h)).long(),
                                ((torch.arange(min(k, w)) + 0.5) * w / min(k, w)).long(), indexing="ij")
    return torch.stack([ys.flatten(), xs.flatten()], 1)


def cell_centres(hw: tuple[int, int], image_hw: tuple[int, int], cells: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Image-pixel centres (y, x) of every cell of an ``hw`` grid that covers an ``image_hw`` image, ``(h·w, 2)``; with
    ``cells = (bh, bw, H, W)`` each cell is a bh × bw block of an H × W grid that covers it (the last blocks run past the
    image's edge, see :attr:`~attnviz.capture.records.Affinity.key_cells`)."""
    h, w = hw
    sh, sw = cell_px(hw, image_hw, cells)
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) * sh, (torch.arange(w) + 0.5) * sw, indexing="ij")
    return torch.stack([ys.flatten(), xs.flatten()], 1)


@dataclass
class LayerRows:
    """The rows of one layer's query cells for one image.

    Attributes:
        name: Layer name (module path; CCNet's loops are one layer).
        kind: Record kind (``affinity``, ``tokens``, ``window``, ``criss_cross``, ``regions``).
        rows: ``(heads, Q, M)`` non-negative weights over the keys, each row summing to 1 (float64: the statistics of
            near-uniform rows are differences of nearly equal numbers).
        cells: ``(Q, 2)`` query cells (y, x) on ``query_hw``.
        query_px: ``(Q, 2)`` query cell centres in image pixels.
        key_px: ``(M, 2)`` key cell centres in image pixels.
        key_hw: Grid of the keys.
        reach: ``(heads, Q, M)`` bool: the keys each query can receive weight from (its window, its cross, …).
        baseline: ``(1, Q, M)`` the rows of equal weights through the same geometry (uniform over the reach; CCNet: the
            reach of two uniform criss-cross loops).
        prefix_mass: ``(heads, Q)`` weight on prefix tokens before renormalisation (transformer layers), else None.
    """

    name: str
    kind: str
    rows: torch.Tensor
    cells: torch.Tensor
    query_px: torch.Tensor
    key_px: torch.Tensor
    key_hw: tuple[int, int]
    reach: torch.Tensor
    baseline: torch.Tensor
    prefix_mass: torch.Tensor | None = None

    @property
    def heads(self) -> int:
        return int(self.rows.shape[0])


def pixel_layers(records: Mapping[str, Record]) -> dict[str, list[Record]]:
    """Query-dependent layers whose rows are distributions, in forward order: name → its records (CCNet: the loops in order)."""
    out: dict[str, list[Record]] = {}
    for name, rec in records.items():
        if isinstance(rec, Affinity) and rec.normalize != "softmax":
            continue  # dot-product Non-Local (f / N): its rows are no distributions, and these statistics need one
        if isinstance(rec, (Affinity, WindowAffinity, HaloAffinity, CrissCross, RegionAttention)):
            key = base_name(name) if isinstance(rec, CrissCross) else name
            out.setdefault(key, []).append(rec)
    return out


def _affinity_rows(rec: Affinity, cells: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(heads, Q, Mk)`` rows over the patch keys (renormalised) and the prefix mass ``(heads, Q)`` or None."""
    h, w = rec.query_hw
    idx = cells[:, 0] * w + cells[:, 1]  # (Q,)
    pq, pk = len(getattr(rec, "query_prefix", ())), len(getattr(rec, "key_prefix", ()))
    simple = plain_softmax(rec)
    if rec.matrix is not None:
        full = rec.matrix[batch][:, pq + idx, :].float()  # (heads, Q, M)
    elif simple and (rec.mask is None or rec.mask.ndim < 2 or rec.mask.shape[-2] == 1):
        assert rec.queries is not None and rec.keys is not None
        logits = torch.einsum("hqd,hdm->hqm", rec.queries[batch][:, pq + idx].float(), rec.keys[batch].float()) * rec.scale
        full = F.softmax(rec.masked(logits, batch), dim=-1)
    elif simple:
        full = full_attention(rec, batch)[:, pq + idx, :]
    else:  # relative positions or a causal mask: the record's own rows
        assert not pk
        full = torch.stack([torch.stack([rec.row(int(y), int(x), batch, head=hd).flatten() for y, x in cells.tolist()])
                            for hd in range(rec.heads)])
    prefix = full[..., :pk].sum(-1) if pk else None
    patch = full[..., pk:]
    return patch / patch.sum(-1, keepdim=True).clamp_min(1e-12), prefix


def _window_rows(rec: WindowAffinity | HaloAffinity, cells: torch.Tensor, batch: int) -> torch.Tensor:
    """``(heads, Q, H·W)``: every head's row of each query cell, one call per cell."""
    return torch.stack([rec.head_rows(int(y), int(x), batch).flatten(1) for y, x in cells.tolist()], dim=1)


def _criss_cross_rows(recs: Sequence[CrissCross], cells: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``(1, Q, H·W)`` (the two-hop reach of the first two loops, else loop 1) and the same through uniform loops."""
    uniform = uniform_criss_cross(recs[0].hw)
    if len(recs) >= 2:
        rows = [criss_cross_reach(recs[0], recs[1], int(y), int(x), batch).flatten() for y, x in cells.tolist()]
        base = [uniform_reach(recs[0].hw, int(y), int(x)).flatten() for y, x in cells.tolist()]
    else:
        rows = [recs[0].row(int(y), int(x), batch).flatten() for y, x in cells.tolist()]
        base = [uniform.row(int(y), int(x)).flatten() for y, x in cells.tolist()]
    return torch.stack(rows)[None], torch.stack(base)[None]


def layer_rows(name: str, recs: Sequence[Record], batch: int, image_hw: tuple[int, int], limit: int = QUERY_LIMIT) -> LayerRows:
    """The rows of layer ``name`` (its records from :func:`pixel_layers`) for sample ``batch`` of an ``image_hw`` input."""
    rec = recs[0]
    prefix, base, q_cells, k_cells = None, None, getattr(rec, "query_cells", None), getattr(rec, "key_cells", None)
    if isinstance(rec, Affinity):
        q_hw, k_hw = rec.query_hw, rec.key_hw
        cells = query_cells(q_hw, limit)
        rows, prefix = _affinity_rows(rec, cells, batch)
        reach = torch.ones_like(rows, dtype=torch.bool)
        if rec.matrix is None and rec.mask is not None or rec.causal:
            reach = rows > 0
    elif isinstance(rec, (WindowAffinity, HaloAffinity)):
        q_hw = k_hw = rec.hw
        if isinstance(rec, HaloAffinity):
            k_hw = rec.key_hw  # the zero padding's share is no key cell: rows hold the in-map part
        cells = query_cells(q_hw, limit)
        rows = _window_rows(rec, cells, batch)
        if getattr(rec, "folded", False):  # VOLO: sums over 1–4 overlapping windows, as shares of the cell's input
            rows = rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)
        reach = rows > 0  # softmax weights are positive inside the window, 0 outside
    elif isinstance(rec, CrissCross):
        q_hw = k_hw = rec.hw
        cells = query_cells(q_hw, limit)
        rows, base = _criss_cross_rows(recs, cells, batch)  # type: ignore[arg-type]
        reach = rows > 0
    elif isinstance(rec, RegionAttention):
        q_hw = k_hw = rec.query_hw
        cells = query_cells(q_hw, limit)
        idx = cells[:, 0] * q_hw[1] + cells[:, 1]
        maps = rec.region_maps[batch].flatten(1).float()  # (K, H·W)
        rows = (rec.pixel_weights[batch, idx].float() @ maps)[None]  # (1, Q, H·W)
        rows = rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)
        reach = torch.ones_like(rows, dtype=torch.bool)
        k_hw = tuple(rec.region_maps.shape[-2:])  # type: ignore[assignment]
    else:
        raise TypeError(f"{name}: {type(rec).__name__} has no query rows")
    if base is None:
        base = reach[:1].float() / reach[:1].sum(-1, keepdim=True).clamp_min(1)
    return LayerRows(name, rec.kind, rows.double(), cells, cell_centres(q_hw, image_hw, q_cells)[cells[:, 0] * q_hw[1] + cells[:, 1]],
                     cell_centres(k_hw, image_hw, k_cells), k_hw, reach, base.double(), prefix)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def row_statistics(lr: LayerRows) -> dict[str, torch.Tensor]:
    """Per head ``(heads,)``: ``distance_px``, ``entropy``, ``entropy_norm`` and, for transformer layers, ``prefix_mass``
    (each the mean over the layer's query cells)."""
    d = torch.cdist(lr.query_px.double(), lr.key_px.double())  # (Q, M)
    p = lr.rows
    ent = _entropy(p)  # (heads, Q)
    n = lr.reach.sum(-1).clamp_min(2).float()  # (heads, Q) keys each query can reach
    out = {"distance_px": (p * d).sum(-1).mean(-1), "entropy": ent.mean(-1), "entropy_norm": (ent / n.log()).mean(-1)}
    if lr.prefix_mass is not None:
        out["prefix_mass"] = lr.prefix_mass.mean(-1)
    return out


def query_pairs(q: int, generator: torch.Generator) -> torch.Tensor:
    """``(P, 2)`` random pairs of distinct query indices (P = Q, at least one pair when Q ≥ 2)."""
    if q < 2:
        return torch.zeros(0, 2, dtype=torch.long)
    a = torch.randint(0, q, (q,), generator=generator)
    b = (a + torch.randint(1, q, (q,), generator=generator)) % q  # never the same query
    return torch.stack([a, b], 1)


def pair_dependence(lr: LayerRows, pairs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per head ``(heads,)``: ``query_js`` (mean JS divergence of the pairs' rows, nats) and ``same_peak`` (share of
    pairs whose rows peak at the same key)."""
    if len(pairs) == 0:
        return {}
    a, b = lr.rows[:, pairs[:, 0]], lr.rows[:, pairs[:, 1]]  # (heads, P, M)
    js = js_divergence(a.flatten(0, 1), b.flatten(0, 1)).reshape(a.shape[:2])
    return {"query_js": js.mean(-1), "same_peak": (a.argmax(-1) == b.argmax(-1)).float().mean(-1)}


def key_labels(labels: torch.Tensor, key_px: torch.Tensor) -> torch.Tensor:
    """The label under each key's centre pixel, ``(M,)``. ``labels``: ``(H, W)`` long at the image's size."""
    ys = key_px[:, 0].long().clamp(0, labels.shape[0] - 1)
    xs = key_px[:, 1].long().clamp(0, labels.shape[1] - 1)
    return labels[ys, xs]


def same_class_ratio(lr: LayerRows, labels: torch.Tensor, ignore: int = 255) -> dict[str, torch.Tensor]:
    """Same-class mass ratio of the query cells that lie on an object (label > 0, not ``ignore``), per head, beside the
    uniform-weights baseline of the same reach: ``{"same_class_mass_ratio", "same_class_baseline"}`` of ``(heads,)``, or
    ``{}`` when no query cell is on an object."""
    kl = key_labels(labels, lr.key_px)  # (M,)
    ql = key_labels(labels, lr.query_px)  # (Q,)
    on = (ql > 0) & (ql != ignore)
    if not bool(on.any()):
        return {}
    same = (kl[None, :] == ql[on][:, None]).float()  # (Q', M)
    share = same.mean(-1)  # (Q',) the class's share of the key positions
    p = lr.rows[:, on]  # (heads, Q', M)
    uniform = lr.baseline[:, on]  # (1, Q', M)
    ratio = ((p * same).sum(-1) / share).mean(-1)  # (heads,)
    return {"same_class_mass_ratio": ratio, "same_class_baseline": ((uniform * same).sum(-1) / share).mean(-1).expand_as(ratio)}


def mask_jaccard(masks: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Jaccard index of boolean maps ``(heads, H, W)`` with a boolean truth ``(H, W)`` (same size): ``(heads,)``."""
    inter = (masks & truth).flatten(1).sum(1).float()
    union = (masks | truth).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))


def is_token_layer(recs: Sequence[Record]) -> bool:
    """Whether a layer is transformer self-attention with a class token."""
    return isinstance(recs[0], TokenAttention) and bool(recs[0].query_prefix)
