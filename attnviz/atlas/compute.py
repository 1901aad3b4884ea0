"""The per-batch function of an atlas: one captured forward → partial aggregates that merge by addition.

Every engine (local, Ray) calls :func:`process_batch` on the same shards and stores what it returns; the final tables
are sums of these partials (:mod:`attnviz.atlas.aggregate`), so the order of batches and workers does not matter.

Partial tables (pandas DataFrames):

- ``per_image``: ``path, label, prediction, confidence, correct`` and per record ``LAYER:STATISTIC`` (head mean);
- ``gates``: ``layer, class, channel, count, sum, sumsq, saturated`` (gates ≤ 0.05 or ≥ 0.95);
- ``attention``: ``layer, head, statistic, count, sum, sumsq`` (head −1: the mean over heads);
- ``counts``: ``table, i, j, count``: the confusion matrix (``confusion``, truth i, prediction j) and per-class
  intersection / union pixel counts of segmentation (``inter`` / ``union``, class i, j = 0).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from ..analysis.outputs import interpret_output
from ..capture import capture
from ..capture.records import BranchWeights, ChannelGate, ElementGate, Record, SpatialMask, TokenAttention
from ..maps.stats import (
    QUERY_LIMIT,
    is_token_layer,
    layer_rows,
    mask_jaccard,
    pair_dependence,
    pixel_layers,
    query_pairs,
    row_statistics,
    same_class_ratio,
)
from ..maps.transformer import cls_maps, dino_mask
from .data import IGNORE, Decoded, seed_of

Scorer = Callable[[nn.Module, Decoded, str, torch.Tensor, dict[str, Record]], dict[str, list[Any]]]
SATURATED = 0.05  # a gate within this of 0 or 1 counts as saturated
ALL = "(all)"  # the class of the rows over every image
DINO_KEEP = 0.6


@dataclass
class BatchContext:
    """What the per-batch function needs besides the batch.

    Attributes:
        classes: Label names of the data (empty: no labels).
        label_to_model: Data label → model class index (−1: none), for accuracy and confusion.
        device: Where the model runs.
        amp: Autocast on CUDA.
        seed: Seed of the random query pairs (combined with each image's path).
        query_limit: Query cells per layer and image.
        statistics: Compute the attention statistics (off: predictions and the scorer only).
        scorer: ``scorer(model, batch, task, logits, records)``, called after the captured forward with what it saw, for a
            caller's own per-batch measures (``attnviz evaluate``); what it returns (per-image lists) joins ``per_image``.
        features: The model is a backbone without classes (its card's task is ``"features"``).
    """

    classes: list[str] = field(default_factory=list)
    label_to_model: list[int] = field(default_factory=list)
    device: str = "cpu"
    amp: bool = False
    seed: int = 0
    query_limit: int = QUERY_LIMIT
    statistics: bool = True
    scorer: Scorer | None = None
    features: bool = False  # a backbone without classes (card task "features"): no prediction


class _Sums:
    """count / sum / sum of squares per key, in float64."""

    def __init__(self) -> None:
        self.acc: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])

    def add(self, key: tuple[Any, ...], value: float, count: int = 1, sq: float | None = None) -> None:
        a = self.acc[key]
        a[0] += count
        a[1] += value
        a[2] += value * value if sq is None else sq

    def frame(self, columns: list[str]) -> pd.DataFrame:
        rows = [(*k, c, s, q) for k, (c, s, q) in self.acc.items()]
        return pd.DataFrame(rows, columns=[*columns, "count", "sum", "sumsq"])


def forward(model: nn.Module, x: torch.Tensor, ctx: BatchContext) -> tuple[str, torch.Tensor, dict[str, Record]]:
    """One captured forward: task, logits (CPU float) and records."""
    dev = torch.device(ctx.device)
    amp = torch.autocast(dev.type) if ctx.amp and dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), amp, capture(model) as cap:
        raw = model(x.to(dev))
    out = interpret_output(raw, features=ctx.features)
    return out.task, out.logits.detach().float().cpu(), dict(cap.records)


def _gates(records: dict[str, Record], classes: list[str], labels: torch.Tensor) -> pd.DataFrame:
    names = [classes[i] if 0 <= i < len(classes) else None for i in labels.tolist()]
    groups = [(ALL, torch.ones(len(names), dtype=torch.bool))]
    groups += [(c, torch.tensor([n == c for n in names])) for c in sorted({n for n in names if n is not None})]
    parts: list[pd.DataFrame] = []
    for name, rec in records.items():
        if isinstance(rec, ChannelGate):
            layers = {name: rec.weights}
        elif isinstance(rec, BranchWeights):
            layers = {f"{name}[branch {m}]": rec.weights[:, m] for m in range(rec.weights.shape[1])}
        else:
            continue
        for layer, g in layers.items():
            g = g.double()  # (B, C)
            sat = ((g <= SATURATED) | (g >= 1 - SATURATED)).double()
            for cls, sel in groups:
                gs, c = g[sel], g.shape[1]
                parts.append(pd.DataFrame({"layer": layer, "class": cls, "channel": np.arange(c), "count": int(sel.sum()),
                                           "sum": gs.sum(0).numpy(), "sumsq": (gs * gs).sum(0).numpy(), "saturated": sat[sel].sum(0).numpy()}))
    cols = ["layer", "class", "channel", "count", "sum", "sumsq", "saturated"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def _head_values(acc: _Sums, per_image: dict[str, float], layer: str, stats: dict[str, torch.Tensor]) -> None:
    for stat, v in stats.items():
        v = v.double()
        for hd, val in enumerate(v.tolist()):
            acc.add((layer, hd, stat), val)
        acc.add((layer, -1, stat), float(v.mean()))
        per_image[f"{layer}:{stat}"] = float(v.mean())


def token_jaccard(maps: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """DINO's mask (60 % of the class token's mass) of each head's map ``maps`` (heads, Hk, Wk) and of their mean, against
    the objects of the label map ``truth`` (H, W) (0 = background, ``IGNORE`` left out): ``mask_jaccard`` per head and
    ``_mean_mask_jaccard`` (1,) for the heads' mean map."""
    maps = torch.cat([maps, maps.mean(0, keepdim=True)])
    masks = F.interpolate(dino_mask(maps, DINO_KEEP)[None].float(), size=truth.shape, mode="nearest")[0].bool()
    valid = truth != IGNORE
    jac = mask_jaccard(masks & valid, (truth > 0) & valid)
    return {"mask_jaccard": jac[:-1], "_mean_mask_jaccard": jac[-1:]}


def _pixel(records: dict[str, Record], batch: Decoded, ctx: BatchContext, per_image: list[dict[str, Any]], acc: _Sums) -> None:
    hw = tuple(batch.x.shape[-2:])
    for layer, recs in pixel_layers(records).items():
        for b, path in enumerate(batch.paths):
            lr = layer_rows(layer, recs, b, hw, ctx.query_limit)  # type: ignore[arg-type]
            stats = row_statistics(lr)
            stats.update(pair_dependence(lr, query_pairs(len(lr.cells), torch.Generator().manual_seed(seed_of(path, layer, ctx.seed)))))
            if batch.masks is not None:
                stats.update(same_class_ratio(lr, batch.masks[b], IGNORE))
                if is_token_layer(recs):
                    rec = recs[0]
                    assert isinstance(rec, TokenAttention)
                    jac = token_jaccard(cls_maps(rec, b), batch.masks[b])
                    mean_jac = jac.pop("_mean_mask_jaccard")
                    acc.add((layer, -2, "mask_jaccard"), float(mean_jac))  # head −2: the mask of the heads' mean map
                    stats.update(jac)
            _head_values(acc, per_image[b], layer, stats)


def _spatial(records: dict[str, Record], batch: Decoded, per_image: list[dict[str, Any]], acc: _Sums) -> None:
    """Spatial masks against the objects: whether each mask's peak (at the input size) lies on one (pointing), and the
    Jaccard index of the mask's 60 %-mass region (as DINO thresholds its maps) with them."""
    if batch.masks is None:
        return
    valid = batch.masks != IGNORE
    objects = (batch.masks > 0) & valid
    for name, rec in records.items():
        if not isinstance(rec, SpatialMask) or isinstance(rec, ElementGate):
            continue
        up = F.interpolate(rec.mask[:, None].float(), size=batch.masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = up.flatten(1).argmax(1)
        lab = batch.masks.flatten(1).gather(1, peak[:, None])[:, 0]
        jac = mask_jaccard(dino_mask(up.clamp_min(0), DINO_KEEP) & valid, objects)  # (B,)
        for b, hit in enumerate(((lab > 0) & (lab != IGNORE)).tolist()):
            acc.add((name, -1, "pointing"), float(hit))
            acc.add((name, -1, "mask_jaccard"), float(jac[b]))
            per_image[b][f"{name}:pointing"] = float(hit)
            per_image[b][f"{name}:mask_jaccard"] = float(jac[b])


def _predictions(task: str, logits: torch.Tensor, batch: Decoded, ctx: BatchContext, counts: _Sums) -> list[dict[str, Any]]:
    rows = []
    if task == "features":  # a backbone: nothing predicted
        conf, pred = torch.full((len(batch.paths),), float("nan")), torch.full((len(batch.paths),), -1)
    elif task == "classification":
        p = logits.softmax(1)
        conf, pred = p.max(1)
    else:
        lg = F.interpolate(logits, size=batch.x.shape[-2:], mode="bilinear", align_corners=False)
        pix = lg.argmax(1)  # (B, h, w)
        conf = lg.softmax(1).amax(1).flatten(1).mean(1)
        fg = torch.where(pix > 0, pix, torch.full_like(pix, -1)).flatten(1)
        pred = torch.tensor([int(r[r >= 0].mode().values) if bool((r >= 0).any()) else 0 for r in fg])
        if batch.masks is not None:
            k = logits.shape[1]
            for c in range(k):
                valid = batch.masks != IGNORE
                counts.add(("inter", c, 0), float(((pix == c) & (batch.masks == c) & valid).sum()))
                counts.add(("union", c, 0), float((((pix == c) | (batch.masks == c)) & valid).sum()))
    for b, path in enumerate(batch.paths):
        label = int(batch.labels[b])
        truth = ctx.label_to_model[label] if 0 <= label < len(ctx.label_to_model) else -1
        row = {"path": path, "label": ctx.classes[label] if 0 <= label < len(ctx.classes) else None, "prediction": int(pred[b]),
               "confidence": float(conf[b]), "correct": (int(pred[b]) == truth) if truth >= 0 and task == "classification" else None}
        if task == "classification" and truth >= 0:
            counts.add(("confusion", truth, int(pred[b])), 1.0)
        rows.append(row)
    return rows


def process_batch(model: nn.Module, batch: Decoded, ctx: BatchContext) -> dict[str, pd.DataFrame]:
    """The partial tables of one decoded batch (see the module docstring)."""
    if len(batch.paths) == 0:
        return {"per_image": pd.DataFrame(), "gates": pd.DataFrame(), "attention": pd.DataFrame(), "counts": pd.DataFrame()}
    task, logits, records = forward(model, batch.x, ctx)
    counts, acc = _Sums(), _Sums()
    per_image = _predictions(task, logits, batch, ctx, counts)
    for row in per_image:
        row["task"] = task
    if ctx.scorer is not None:
        for key, values in ctx.scorer(model, batch, task, logits, records).items():
            for row, v in zip(per_image, values):
                row[key] = v
    if not ctx.statistics:
        return {"per_image": pd.DataFrame(per_image), "gates": _gates({}, ctx.classes, batch.labels), "attention": acc.frame(["layer", "head", "statistic"]),
                "counts": counts.frame(["table", "i", "j"])}
    _pixel(records, batch, ctx, per_image, acc)
    _spatial(records, batch, per_image, acc)
    gates = _gates(records, ctx.classes, batch.labels)
    for name, rec in records.items():
        if isinstance(rec, ChannelGate):
            g = rec.weights.double()
            for b in range(len(batch.paths)):
                per_image[b][f"{name}:gate_mean"] = float(g[b].mean())
                per_image[b][f"{name}:saturated_share"] = float(((g[b] <= SATURATED) | (g[b] >= 1 - SATURATED)).double().mean())
    return {"per_image": pd.DataFrame(per_image), "gates": gates, "attention": acc.frame(["layer", "head", "statistic"]),
            "counts": counts.frame(["table", "i", "j"])}
