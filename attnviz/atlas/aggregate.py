"""Merging the partial tables of every shard into the atlas's tables (sums in float64, then means and spreads).

Shards are read in index order and their partials summed, so a run gives the same tables whichever engine, worker
count or interruption produced the shards.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .compute import ALL

TABLES = ("per_image", "gates", "attention", "counts")


def shard_path(out: Path, index: int, table: str) -> Path:
    """Where shard ``index`` keeps ``table`` (``table`` = ``done`` for its completion marker, a JSON file)."""
    return out / "shards" / (f"{index:06d}.done.json" if table == "done" else f"{index:06d}.{table}.parquet")


def _summed(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if df.empty:
        return df
    return df.groupby(keys, sort=False, dropna=False).sum(numeric_only=True).reset_index()


def fold_shards(out: Path, indices: list[int], table: str, keys: list[str]) -> pd.DataFrame:
    """The sum per key of one partial table over the shards, folded in index order: memory holds one shard and the running
    sums, never the whole run."""
    running = pd.DataFrame()
    for i in sorted(indices):
        p = shard_path(out, i, table)
        part = pd.read_parquet(p) if p.is_file() else pd.DataFrame()
        if part.empty:
            continue
        running = part if running.empty else _summed(pd.concat([running, part], ignore_index=True), keys)
    return _summed(running, keys)


def _unified_schema(paths: list[Path]) -> pa.Schema:
    """Every column of the shards (first seen first), each with the first non-null type it has."""
    types: dict[str, pa.DataType] = {}
    for p in paths:
        for f in pq.read_schema(p):
            if f.name.startswith("__"):
                continue
            if f.name not in types or pa.types.is_null(types[f.name]):
                types[f.name] = f.type
    return pa.schema([(n, t if not pa.types.is_null(t) else pa.float64()) for n, t in types.items()])


def write_per_image(out: Path, indices: list[int]) -> tuple[int, str]:
    """Stream every shard's per-image rows into ``out/per_image.parquet`` (one shard in memory at a time).

    Returns:
        The number of rows and the task of the first row (``""`` when there are none).
    """
    paths = [p for i in sorted(indices) if (p := shard_path(out, i, "per_image")).is_file() and pq.read_metadata(p).num_rows]
    target = out / "per_image.parquet"
    if not paths:
        pd.DataFrame(columns=["path", "label", "prediction", "confidence", "correct", "task"]).to_parquet(target, index=False)
        return 0, ""
    schema = _unified_schema(paths)
    rows, task = 0, ""
    with pq.ParquetWriter(target, schema) as writer:
        for p in paths:
            t = pq.read_table(p)
            cols = [t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type) for f in schema]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema))
            task = task or str(t.column("task")[0])
            rows += t.num_rows
    return rows, task


def _mean_std(df: pd.DataFrame) -> pd.DataFrame:
    n = df["count"].astype("float64")
    mean = df["sum"] / n
    df = df.assign(mean=mean, std=np.sqrt(np.maximum(df["sumsq"] / n - mean * mean, 0.0)))
    return df


def gates_table(partial: pd.DataFrame) -> pd.DataFrame:
    """From the summed partial: ``layer, class, channel, count, mean, std, saturated_share`` (class ``(all)``: every image)."""
    if partial.empty:
        return pd.DataFrame(columns=["layer", "class", "channel", "count", "mean", "std", "saturated_share"])
    df = _mean_std(partial)
    df["saturated_share"] = df["saturated"] / df["count"]
    return df[["layer", "class", "channel", "count", "mean", "std", "saturated_share"]]


def class_selectivity(gates: pd.DataFrame) -> dict[str, float]:
    """Per gate layer: the share of each channel's gate variance explained by the class (η², between-class variance ÷
    total variance), averaged over the channels that vary; 0 = class-agnostic, 1 = set by the class alone."""
    out: dict[str, float] = {}
    for layer, g in gates.groupby("layer", sort=False):
        per = g[g["class"] != ALL]
        whole = g[g["class"] == ALL].set_index("channel")
        if per["class"].nunique() < 2:
            continue
        scores = []
        for ch, rows in per.groupby("channel"):
            n, m = float(whole.loc[ch, "count"]), float(whole.loc[ch, "mean"])
            total = float(whole.loc[ch, "std"]) ** 2
            if total <= 1e-12:
                continue
            between = float((rows["count"] * (rows["mean"] - m) ** 2).sum()) / n
            scores.append(min(1.0, between / total))
        if scores:
            out[str(layer)] = float(np.mean(scores))
    return out


def attention_table(partial: pd.DataFrame, gates: pd.DataFrame) -> pd.DataFrame:
    """``layer, head, statistic, value, std, count``: pixel-attention statistics and each gate layer's summary."""
    cols = ["layer", "head", "statistic", "value", "std", "count"]
    rows = []
    if not partial.empty:
        df = _mean_std(partial)
        rows.append(df.rename(columns={"mean": "value"})[cols])
    whole = gates[gates["class"] == ALL]
    extra = []
    sel = class_selectivity(gates)
    for layer, g in whole.groupby("layer", sort=False):
        n = int(g["count"].iloc[0])
        extra.append((layer, -1, "gate_mean", float(g["mean"].mean()), float(g["mean"].std(ddof=0)), n))
        extra.append((layer, -1, "saturated_share", float(g["saturated_share"].mean()), float(g["saturated_share"].std(ddof=0)), n))
        if layer in sel:
            k = int((gates[(gates["layer"] == layer) & (gates["class"] != ALL)]["class"]).nunique())
            extra.append((layer, -1, "class_selectivity", sel[str(layer)], float("nan"), n))
            extra.append((layer, -1, "class_selectivity_chance", (k - 1) / max(n - 1, 1), float("nan"), n))  # E[η²] without any class effect
    if extra:
        rows.append(pd.DataFrame(extra, columns=cols))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)
    out["head"] = out["head"].astype("int64")
    out["count"] = out["count"].astype("int64")
    return out


def metrics(counts: pd.DataFrame, classes: list[str], model_classes: list[str], task: str) -> dict[str, Any]:
    """From the summed counts: accuracy and confusion (classification with labels), per-class IoU and mIoU (segmentation with label maps)."""
    if counts.empty:
        return {}
    c = counts
    out: dict[str, Any] = {}
    conf = c[c["table"] == "confusion"]
    if len(conf):
        k = max(int(conf["i"].max()) + 1, int(conf["j"].max()) + 1, len(model_classes))
        m = np.zeros((k, k), dtype=np.int64)
        m[conf["i"].astype(int), conf["j"].astype(int)] = conf["sum"].round().astype(np.int64)
        out["accuracy"] = float(np.trace(m) / max(m.sum(), 1))
        out["confusion"] = m.tolist()
        out["confusion_classes"] = [model_classes[i] if i < len(model_classes) else f"class {i}" for i in range(k)]
    inter, union = c[c["table"] == "inter"].set_index("i")["sum"], c[c["table"] == "union"].set_index("i")["sum"]
    if len(union):
        iou = {int(i): float(inter.get(i, 0.0) / u) for i, u in union.items() if u > 0}
        out["per_class_iou"] = {model_classes[i] if i < len(model_classes) else f"class {i}": v for i, v in iou.items()}
        out["miou"] = float(np.mean(list(iou.values()))) if iou else math.nan
    return out
