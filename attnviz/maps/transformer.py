"""Transformer maps from token-attention records: class-token maps, DINO's mask, attention rollout, mean attention distance.

Each follows its paper's definition (the tests hold a reference written from the formula):

- class-token map: the class token's last-layer attention over the patches, per head (Caron et al. 2021,
  "Emerging Properties in Self-Supervised Vision Transformers", arXiv:2104.14294);
- DINO mask: per head, the smallest set of patches that holds ``keep`` (60 %) of that attention's mass (ibid.);
- attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", arXiv:2005.00928):
  per layer ``Â = 0.5·A + 0.5·I`` with rows renormalised, heads fused by mean / max / min, optionally the lowest
  ``discard_ratio`` of each fused matrix's weights set to 0 (never the class token's own column, as in the
  common implementation); the rollout is ``Â_L ⋯ Â_1`` and a token's row of it is its map;
- gradient rollout (Chefer, Gur & Wolf 2021, arXiv:2103.15679): ``R ← R + mean_h((∇A ⊙ A)⁺)·R`` per layer, for one class;
- mean attention distance (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", arXiv:2010.11929, §D.7):
  per head, the distance in image pixels between a patch query and each patch key, weighted by the attention
  (renormalised over the patch keys), averaged over the patch queries.

Rows are built from the records' lazy queries and keys (a full ``(N, N)`` matrix per layer is formed only here,
on request, for one sample).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..capture.records import Affinity, HaloAffinity, TokenAttention, WindowAffinity

FUSIONS = ("mean", "max", "min")


def full_attention(rec: Affinity, batch: int = 0) -> torch.Tensor:
    """Every query's weights over every key, ``(heads, Nq, Nk)``, prefix tokens first for token records.

    Softmax attention of ``scale · QKᵀ`` plus a mask only: a record with relative-position logits, a causal mask or the
    dot-product normalisation (``f / N``) has rows only through its own ``row``.
    """
    if rec.matrix is not None:
        return rec.matrix[batch].float()
    full_attention_allowed(rec)
    assert rec.queries is not None and rec.keys is not None
    logits = torch.einsum("hnd,hdm->hnm", rec.queries[batch].float(), rec.keys[batch].float()) * rec.scale
    return rec.masked(logits, batch).softmax(-1)


def plain_softmax(rec: Affinity) -> bool:
    """Whether ``rec``'s weights are ``softmax(scale · QKᵀ + mask)`` of its queries and keys (no relative-position logits,
    no causal mask, not the dot-product normalisation)."""
    return rec.rel_h is None and not rec.causal and rec.normalize == "softmax"


def full_attention_allowed(rec: Affinity) -> None:
    """Raise unless ``rec``'s weights are ``softmax(scale · QKᵀ + mask)`` of its queries and keys."""
    if not plain_softmax(rec):
        raise ValueError(f"{rec.name}: the whole matrix is formed only for softmax(scale · QKᵀ + mask) attention")


def cls_maps(rec: TokenAttention, batch: int = 0, token: int = 0) -> torch.Tensor:
    """The attention of prefix token ``token`` (0 = class token) over the patches, per head: ``(heads, Hk, Wk)``."""
    if not rec.query_prefix:
        raise ValueError(f"{rec.name} has no prefix tokens (no class token)")
    a = full_attention(rec, batch)[:, token, len(rec.key_prefix):]  # (heads, Mk)
    return a.reshape(a.shape[0], *rec.key_hw)


def dino_mask(maps: torch.Tensor, keep: float = 0.6) -> torch.Tensor:
    """Per map, the smallest set of positions that holds ``keep`` of its mass (largest weights first): boolean, same shape.

    Args:
        maps: ``(..., H, W)`` non-negative maps (e.g. :func:`cls_maps`).
        keep: Share of the mass to keep (DINO: 0.6).
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep must lie in (0, 1]; got {keep}")
    flat = maps.flatten(-2).float()  # (..., N)
    val, idx = flat.sort(-1, descending=True)
    cum = val.cumsum(-1) / val.sum(-1, keepdim=True).clamp_min(1e-12)
    chosen = (cum - val / val.sum(-1, keepdim=True).clamp_min(1e-12)) < keep  # the mass before this position is under `keep`
    out = torch.zeros_like(flat, dtype=torch.bool).scatter(-1, idx, chosen)
    return out.reshape(maps.shape)


def _check_rollout(records: Sequence[Affinity], head_fusion: str, discard_ratio: float) -> None:
    if head_fusion not in FUSIONS:
        raise ValueError(f"head_fusion must be one of {', '.join(FUSIONS)}; got {head_fusion!r}")
    if not 0 <= discard_ratio < 1:
        raise ValueError(f"discard_ratio must lie in [0, 1); got {discard_ratio}")
    if not records:
        raise ValueError("rollout needs at least one attention layer")


def _rollout_step(rec: Affinity, batch: int, head_fusion: str, discard_ratio: float, n: int | None) -> torch.Tensor:
    """One layer's rollout factor ``0.5·A + 0.5·I``, rows renormalised, ``(N, N)`` (``n``: the token count it must have)."""
    a = full_attention(rec, batch)  # (heads, N, N)
    if a.shape[-1] != a.shape[-2] or (n is not None and a.shape[-1] != n):
        raise ValueError(f"{rec.name}: rollout needs self-attention over the same tokens in every layer (got {tuple(a.shape)})")
    fused = _fuse_heads(a, head_fusion)
    if discard_ratio > 0:
        flat = fused.flatten().clone()
        k = int(flat.numel() * discard_ratio)
        if k:
            low = flat.topk(k, largest=False).indices
            low = low[low != 0]  # keep the class token's own weight (index 0), as the reference implementation does
            flat[low] = 0
        fused = flat.reshape(fused.shape)
    step = fused.mul(0.5)
    step.diagonal().add_(0.5)  # 0.5·A + 0.5·I
    return step.div_(step.sum(-1, keepdim=True))


def _fuse_heads(a: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """``a`` ``(heads, …)`` fused over its heads by ``mean``, ``max`` or ``min``."""
    return a.mean(0) if head_fusion == "mean" else getattr(a, head_fusion)(0).values


def _rollout_row(rec: TokenAttention, batch: int, head_fusion: str, n: int) -> torch.Tensor:
    """Row ``n`` of :func:`_rollout_step` without discarding, from query ``n``'s weights alone ``(N,)``: the last layer of a
    rollout from the left needs no other row."""
    if rec.matrix is None:
        full_attention_allowed(rec)
    rows = rec.token_rows(n, batch).float()  # (heads, N)
    queries = rec.matrix.shape[-2] if rec.matrix is not None else rec.queries.shape[-2]  # type: ignore[union-attr]
    if rows.shape[-1] != queries:
        raise ValueError(f"{rec.name}: rollout needs self-attention over the same tokens in every layer (got {tuple(rows.shape)})")
    step = _fuse_heads(rows, head_fusion).mul(0.5)
    step[n] += 0.5
    return step.div_(step.sum())


def rollout(records: Sequence[Affinity], batch: int = 0, head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout over consecutive self-attention layers: ``(N, N)`` over the tokens of the first layer.

    Args:
        records: The layers in forward order, all over the same tokens.
        batch: The sample.
        head_fusion: ``mean``, ``max`` or ``min`` over heads.
        discard_ratio: Share of each fused matrix's smallest weights set to 0 before adding the identity.
    """
    _check_rollout(records, head_fusion, discard_ratio)
    result: torch.Tensor | None = None
    for rec in records:
        step = _rollout_step(rec, batch, head_fusion, discard_ratio, None if result is None else result.shape[-1])
        result = step if result is None else step @ result
    assert result is not None
    return result


def rollout_map(records: Sequence[TokenAttention], query: int | tuple[int, int] = 0, batch: int = 0, head_fusion: str = "mean",
                discard_ratio: float = 0.0) -> torch.Tensor:
    """The rollout of one token over the patches ``(H, W)``: ``query`` = a prefix index (0 = class token) or a grid cell (y, x).

    Row ``n`` of ``S_L ⋯ S_1`` is formed from the left, ``e_nᵀ S_L`` then times each earlier factor: vector × matrix
    products instead of the matrix products of :func:`rollout` (the same numbers, a third less work)."""
    _check_rollout(records, head_fusion, discard_ratio)
    rec = records[0]
    p = len(rec.query_prefix)
    n = query if isinstance(query, int) else p + query[0] * rec.query_hw[1] + query[1]
    v: torch.Tensor | None = None
    for layer in reversed(records):
        if v is None and discard_ratio == 0:
            v = _rollout_row(layer, batch, head_fusion, n)
            continue
        step = _rollout_step(layer, batch, head_fusion, discard_ratio, None if v is None else v.shape[-1])
        v = step[n] if v is None else v @ step
    assert v is not None
    return v[len(rec.key_prefix):].reshape(rec.key_hw)


def mean_attention_distance(rec: Affinity, patch_px: tuple[float, float], batch: int = 0) -> torch.Tensor:
    """Per head, the attention-weighted distance in image pixels between patch queries and patch keys, averaged over the
    queries: ``(heads,)``. ``patch_px``: (height, width) of one query cell in image pixels (keys on a coarser grid are
    placed at their cell centres in the same image)."""
    a = full_attention(rec, batch)
    pq = len(getattr(rec, "query_prefix", ()))
    pk = len(getattr(rec, "key_prefix", ()))
    a = a[:, pq:, pk:]
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)  # over the patch keys
    (qh, qw), (kh, kw) = rec.query_hw, rec.key_hw
    img_h, img_w = qh * patch_px[0], qw * patch_px[1]
    qy, qx = torch.meshgrid((torch.arange(qh) + 0.5) * img_h / qh, (torch.arange(qw) + 0.5) * img_w / qw, indexing="ij")
    ky, kx = torch.meshgrid((torch.arange(kh) + 0.5) * img_h / kh, (torch.arange(kw) + 0.5) * img_w / kw, indexing="ij")
    d = torch.cdist(torch.stack([qy.flatten(), qx.flatten()], 1), torch.stack([ky.flatten(), kx.flatten()], 1))  # (Nq, Nk)
    return (a * d).sum(-1).mean(-1)


def mean_row_distance(rec: Affinity | WindowAffinity | HaloAffinity, image_hw: tuple[int, int], batch: int = 0) -> torch.Tensor:
    """:func:`mean_attention_distance` from the record's own rows, for attention whose whole matrix is not one softmax of its
    queries and keys: windows (Swin; shifted ones rolled back), halo windows, relative-position logits (BotNet).
    ``(heads,)``: per query cell, the attention-weighted distance in image pixels to the key cells drawn on the image
    (weights renormalised over them, as over the patch keys of a token record), averaged over the query cells."""
    if isinstance(rec, WindowAffinity):
        return _window_distance(rec, image_hw, batch)
    qh, qw = rec.query_hw
    kh, kw = rec.key_hw
    img_h, img_w = image_hw
    ky = ((torch.arange(kh) + 0.5) * img_h / kh)[:, None]  # (Hk, 1): key cell centres in pixels
    kx = ((torch.arange(kw) + 0.5) * img_w / kw)[None, :]  # (1, Wk)
    total = torch.zeros(rec.heads, dtype=torch.float64)
    for y in range(qh):
        for x in range(qw):
            rows = _head_rows(rec, y, x, batch).double()  # (heads, Hk, Wk)
            d = torch.sqrt((ky - (y + 0.5) * img_h / qh) ** 2 + (kx - (x + 0.5) * img_w / qw) ** 2).double()  # (Hk, Wk)
            total += (rows * d).sum((1, 2)) / rows.sum((1, 2)).clamp_min(1e-12)
    return (total / (qh * qw)).float()


def _window_distance(rec: WindowAffinity, image_hw: tuple[int, int], batch: int) -> torch.Tensor:
    """:func:`mean_row_distance` of window attention, every window at once (:meth:`WindowAffinity.cells`)."""
    c = rec.cells(batch)
    ch, cw = image_hw[0] / rec.hw[0], image_hw[1] / rec.hw[1]  # image pixels per cell
    dy = (c["qy"][:, :, None] - c["ky"][:, None, :]).double() * ch  # (L, Nq, Nk)
    dx = (c["qx"][:, :, None] - c["kx"][:, None, :]).double() * cw
    w = c["weights"].double() * c["k_in"][:, None, :]  # keys on the padding are not drawn: renormalised over the others
    per_query = (w * torch.sqrt(dy**2 + dx**2)).sum(-1) / w.sum(-1).clamp_min(1e-12)  # (L, Nq)
    q_in = c["q_in"].double()  # queries on the padding are no image cells
    heads = rec.heads
    total = torch.zeros(heads, dtype=torch.float64).index_add_(0, c["head"], (per_query * q_in).sum(-1))
    count = torch.zeros(heads, dtype=torch.float64).index_add_(0, c["head"], q_in.sum(-1))
    return (total / count).float()


def _head_rows(rec: Affinity | HaloAffinity, y: int, x: int, batch: int) -> torch.Tensor:
    if isinstance(rec, HaloAffinity):
        return rec.head_rows(y, x, batch)
    return torch.stack([rec.row(y, x, batch, head=h) for h in range(rec.heads)])


class _SdpaRecorder(TorchFunctionMode):
    """Keeps q, k, v, scale, mask and the output (gradient retained) of every ``scaled_dot_product_attention`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") == "scaled_dot_product_attention" and isinstance(out, torch.Tensor) and out.requires_grad:
            q, k, v = (args + (None,) * 3)[:3] if len(args) >= 3 else (kwargs["query"], kwargs["key"], kwargs["value"])
            scale = args[6] if len(args) > 6 else kwargs.get("scale")
            out.retain_grad()
            self.calls.append({"q": q, "k": k, "v": v, "mask": args[3] if len(args) > 3 else kwargs.get("attn_mask"), "out": out,
                               "scale": float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])})
        return out


def gradient_rollout(model: torch.nn.Module, x: torch.Tensor, target: int | None = None, prefix: int = 1, batch: int = 0) -> torch.Tensor:
    """Gradient-weighted rollout (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability", arXiv:2103.15679)
    of class ``target`` (default: the predicted one): ``R = I``, per layer ``R ← R + mean_h((∇A ⊙ A)⁺) · R``; returns the class
    token's row over the patches ``(N − prefix,)`` (reshape to the grid with the record's ``key_hw``).

    The model runs its fused ``scaled_dot_product_attention``: ``A = softmax(scale · QKᵀ + mask)`` is formed from the op's own
    q and k, and ``∇A = ∇out · Vᵀ`` because the op's output is ``A · V``: exact, without switching the model to another path.
    """
    rec = _SdpaRecorder()
    fresh = [p for p in model.parameters() if p.grad is None]
    try:
        with torch.enable_grad(), rec:
            logits = model(x.detach().clone())
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                raise ValueError("gradient rollout needs a classifier that returns (B, classes) logits")
            cls = int(logits[batch].argmax()) if target is None else int(target)
            logits[batch, cls].backward()
    finally:
        for p in fresh:  # leave the user's model as it was
            p.grad = None
    if not rec.calls:
        raise ValueError("gradient rollout needs attention computed with scaled_dot_product_attention (timm ViT / DeiT, HF sdpa)")
    n = rec.calls[0]["q"].shape[-2]
    r = torch.eye(n)
    for c in rec.calls:
        q, k, v = c["q"][batch].detach().float(), c["k"][batch].detach().float(), c["v"][batch].detach().float()
        logits_qk = q @ k.transpose(-1, -2) * c["scale"]  # (heads, N, N)
        if c["mask"] is not None:
            m = c["mask"] if c["mask"].ndim < 4 else c["mask"][batch]
            logits_qk = logits_qk.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits_qk + m.float()
        a = logits_qk.softmax(-1)
        grad = c["out"].grad[batch].float() @ v.transpose(-1, -2)  # ∂y/∂A = ∂y/∂out · Vᵀ, (heads, N, N)
        cam = (grad * a).clamp(min=0).mean(0)
        r = r + cam @ r
    return r[0, prefix:]
