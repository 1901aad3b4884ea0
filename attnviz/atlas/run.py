"""``run_atlas``: plan the shards, run an engine over the unfinished ones, merge every shard into the atlas's files.

Output folder ``OUT``:

- ``per_image.parquet``: ``path, label, prediction, confidence, correct, task`` and per record ``LAYER:STATISTIC``;
- ``gates.parquet``: ``layer, class, channel, count, mean, std, saturated_share``;
- ``attention.parquet``: ``layer, head, statistic, value, std, count`` (head −1: the heads' mean; −2: the mask of the
  heads' mean map);
- ``atlas.json``: model, data, counts, metrics, versions, skipped files with reasons, the column definitions;
- ``report.html``: the plots; ``shards/``: the partial results (what ``--resume`` continues from).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..models.inputs import card_of, pick_device
from . import aggregate
from .compute import BatchContext
from .data import AtlasError, Source
from .engines import Plan, Progress, done_shards, run_local, run_ray

ENGINES = ("local", "ray")

COLUMNS = {
    "per_image.parquet": {
        "path": "the image file (or scene:N)", "label": "its class folder (or scene class); null without labels",
        "prediction": "predicted class index (segmentation: the largest predicted object class)",
        "confidence": "softmax probability of the prediction (segmentation: mean over pixels)",
        "correct": "prediction == label where the label names a model class, else null", "task": "classification or segmentation",
        "LAYER:STATISTIC": "per record, the statistic's mean over heads for this image",
    },
    "gates.parquet": {"layer": "gate record (SK: one per branch)", "class": "label name, or (all)", "channel": "channel index",
                      "count": "images", "mean": "mean gate", "std": "standard deviation (population)",
                      "saturated_share": "share of gates ≤ 0.05 or ≥ 0.95"},
    "attention.parquet": {"layer": "record", "head": "head index; -1 mean over heads; -2 the mask of the heads' mean map",
                          "statistic": "see statistics", "value": "mean over images", "std": "standard deviation over images",
                          "count": "images (or query cells on objects, for same-class statistics: images with one)"},
}
STATISTICS = {
    "distance_px": "mean attention distance in input pixels (ViT §D.7): Σ weight · |query − key|, averaged over the query cells",
    "entropy": "entropy of a query's row (nats), averaged over the query cells",
    "entropy_norm": "entropy ÷ ln(keys the query can reach); 1 = uniform",
    "prefix_mass": "transformers: the weight patch queries put on prefix tokens (class, registers)",
    "query_js": "Jensen–Shannon divergence (nats, ≤ ln 2) of the rows of random query pairs: 0 = the same map for every query",
    "same_peak": "share of random query pairs whose rows peak at the same key",
    "same_class_mass_ratio": "queries on objects: mass on their class ÷ the class's share of the image (1 = chance)",
    "same_class_baseline": "the same for uniform weights over the keys each query can reach (the geometry alone)",
    "mask_jaccard": "Jaccard of a map's 60 %-mass region (DINO's threshold) with the objects of the label map: the class token's map per "
                    "head of transformer layers, the mask of spatial-mask layers",
    "pointing": "spatial masks: whether the mask's peak lies on an object",
    "gate_mean": "gates: mean over channels of the mean gate", "saturated_share": "gates: share ≤ 0.05 or ≥ 0.95",
    "class_selectivity": "gates: between-class share of each channel's variance (η²), mean over channels; needs labels",
    "class_selectivity_chance": "what η² averages without any class effect, (classes − 1) ÷ (images − 1): read class_selectivity against it",
}


@dataclass
class AtlasOptions:
    """How to run: engine, batch size, workers (decoding processes locally; actors with Ray), device, AMP, resume."""

    engine: str = "local"
    batch_size: int = 16
    workers: int | None = None
    ray_address: str | None = None
    device: str | None = None
    amp: bool = False
    resume: bool = False
    seed: int = 0
    query_limit: int = 64
    model_name: str = ""
    statistics: bool = True
    report: bool = True
    scorer: Any = None  # see BatchContext.scorer


def _label_map(classes: list[str], model_classes: list[str]) -> list[int]:
    """Data label → model class index, by name (case-insensitive); −1 where the model has no such class."""
    low = [c.lower() for c in model_classes]
    return [low.index(c.lower()) if c.lower() in low else -1 for c in classes]


def _manifest(source: Source, opts: AtlasOptions, card: dict[str, Any]) -> dict[str, Any]:
    return {"model": opts.model_name, "data": source.description, "items": len(source.items), "batch_size": opts.batch_size,
            "seed": opts.seed, "query_limit": opts.query_limit, "input_size": list(card["input_size"]),
            "first": source.items[0].path if source.items else "", "last": source.items[-1].path if source.items else ""}


def _prepare(out: Path, manifest: dict[str, Any], resume: bool) -> None:
    path = out / "manifest.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if not resume:
            raise AtlasError(f"{out} already holds an atlas run; pass --resume to continue it, or choose another --out")
        if old != manifest:
            diff = sorted(k for k in manifest if old.get(k) != manifest[k])
            raise AtlasError(f"--resume: {out} holds a different run (differs in {', '.join(diff)}); use the same options or another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2))


def run_atlas(model: nn.Module, source: Source, out: str | os.PathLike[str], opts: AtlasOptions | None = None,
              progress: Progress | None = None) -> dict[str, Any]:
    """Run an atlas of ``model`` over ``source`` into ``out``; returns the contents of ``atlas.json``.

    Raises:
        AtlasError: Nothing to run, an unknown engine, or an ``out`` that holds another run.
    """
    opts = opts or AtlasOptions()
    if opts.engine not in ENGINES:
        raise AtlasError(f"--engine must be one of {', '.join(ENGINES)}; got {opts.engine!r}")
    if not source.items:
        raise AtlasError("no images to run over" + (f" ({len(source.skipped)} files skipped)" if source.skipped else ""))
    if opts.batch_size < 1:
        raise AtlasError("--batch-size must be at least 1")
    outp = Path(out)
    card = card_of(model)
    _prepare(outp, _manifest(source, opts, card), opts.resume)
    device = pick_device(opts.device)
    model = model.to(device).eval()
    model_classes = [str(c) for c in card.get("class_names") or []]
    ctx = BatchContext(source.classes, _label_map(source.classes, model_classes), str(device), opts.amp, opts.seed, opts.query_limit,
                       opts.statistics, opts.scorer, features=card.get("task") == "features")
    plan = Plan(source.shards(opts.batch_size), card, source.scenes, source.decoder)
    todo = sorted(set(range(len(plan.shards))) - done_shards(outp, len(plan.shards)))
    workers = opts.workers if opts.workers is not None else max(1 if opts.engine == "ray" else 0, min(4, (os.cpu_count() or 1) - 1))
    t0 = time.perf_counter()
    if todo and opts.engine == "local":
        run_local(model, plan, todo, ctx, outp, workers, progress)
    elif todo:
        run_ray(model, plan, todo, ctx, outp, max(1, workers), opts.ray_address, progress)
    return finish(outp, source, opts, card, model_classes, time.perf_counter() - t0, workers)


def _versions(engine: str) -> dict[str, str]:
    from .. import __version__  # noqa: PLC0415

    out = {"attnviz": __version__, "torch": torch.__version__, "pandas": pd.__version__, "python": platform.python_version()}
    if engine == "ray":
        import ray  # noqa: PLC0415

        out["ray"] = ray.__version__
    return out


def finish(out: Path, source: Source, opts: AtlasOptions, card: dict[str, Any], model_classes: list[str], seconds: float,
           workers: int) -> dict[str, Any]:
    """Merge every shard into the atlas's tables, ``atlas.json`` and ``report.html``."""
    n = len(source.shards(opts.batch_size))
    indices = list(range(n))
    gates = aggregate.gates_table(aggregate.fold_shards(out, indices, "gates", ["layer", "class", "channel"]))
    attention = aggregate.attention_table(aggregate.fold_shards(out, indices, "attention", ["layer", "head", "statistic"]), gates)
    images, task = aggregate.write_per_image(out, indices)
    gates.to_parquet(out / "gates.parquet", index=False)
    attention.to_parquet(out / "attention.parquet", index=False)
    markers = [json.loads(aggregate.shard_path(out, i, "done").read_text()) for i in indices]
    skipped = source.skipped + [s for m in markers for s in m["skipped"]]
    info = {
        "model": opts.model_name or card.get("name", type(card).__name__), "task": task, "data": source.description,
        "engine": opts.engine, "workers": workers, "batch_size": opts.batch_size, "device": opts.device or str(pick_device()), "amp": opts.amp,
        "seed": opts.seed, "query_limit": opts.query_limit, "input_size": list(card["input_size"]),
        "counts": {"images": images, "skipped": len(skipped), "shards": n, "records": int(attention["layer"].nunique()) if len(attention) else 0},
        "seconds": round(seconds, 2), "classes": source.classes, "model_classes": model_classes,
        "metrics": aggregate.metrics(aggregate.fold_shards(out, indices, "counts", ["table", "i", "j"]), source.classes, model_classes, task),
        "skipped": skipped, "versions": _versions(opts.engine), "columns": COLUMNS, "statistics": STATISTICS,
    }
    (out / "atlas.json").write_text(json.dumps(info, indent=2, default=str))
    if opts.report:
        from .report import write_report  # noqa: PLC0415

        write_report(out, info, gates, attention)
    return info
