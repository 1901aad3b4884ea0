"""``report.html``: the atlas's plots and numbers in one self-contained page (images embedded, no scripts).

The figure builders here turn the atlas's tables into the arrays :mod:`attnviz.render.atlas` draws; the web app's
Atlas tab uses the same builders.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..render import atlas as charts
from .compute import ALL

MAX_BLOCKS = 9  # excitation panels in the report (evenly spread over depth)


def excitation_figure(gates: pd.DataFrame, max_blocks: int = MAX_BLOCKS, only: str | None = None) -> Figure | None:
    """Per-class mean gate per channel, per block (SENet's figure); ``only``: one class against the mean of all."""
    per = gates[gates["class"] != ALL]
    if per.empty:
        return None
    layers = list(dict.fromkeys(per["layer"]))
    pick = [layers[int(i)] for i in np.unique(np.linspace(0, len(layers) - 1, min(max_blocks, len(layers))).round())]
    classes = sorted(per["class"].unique()) if only is None else [only, ALL]
    means = []
    for layer in pick:
        g = gates[gates["layer"] == layer]
        means.append(np.stack([g[g["class"] == c].sort_values("channel")["mean"].to_numpy() for c in classes]))
    return charts.excitation_curves(pick, means, [c if c != ALL else "all classes" for c in classes])


def layer_stat(attention: pd.DataFrame, statistic: str, head: int = -1) -> pd.Series:
    """One statistic per layer (forward order) for one head (−1: the heads' mean)."""
    rows = attention[(attention["statistic"] == statistic) & (attention["head"] == head)]
    return rows.set_index("layer")["value"]


def pixel_layers(attention: pd.DataFrame) -> list[str]:
    """Layers with pixel-attention statistics, in forward order."""
    return list(dict.fromkeys(attention[attention["statistic"] == "distance_px"]["layer"]))


def distance_matrix(attention: pd.DataFrame, layers: list[str], statistic: str = "distance_px") -> np.ndarray:
    """``(layers, heads)`` of one statistic (NaN where a layer has fewer heads)."""
    rows = attention[(attention["statistic"] == statistic) & (attention["head"] >= 0)]
    heads = int(rows["head"].max()) + 1 if len(rows) else 1
    out = np.full((len(layers), heads), np.nan)
    for i, layer in enumerate(layers):
        r = rows[rows["layer"] == layer]
        out[i, r["head"].to_numpy()] = r["value"].to_numpy()
    return out


def figures(info: dict[str, Any], gates: pd.DataFrame, attention: pd.DataFrame) -> list[tuple[str, Figure]]:
    """Every plot of an atlas, titled."""
    out: list[tuple[str, Figure]] = []
    fig = excitation_figure(gates)
    if fig is not None:
        out.append(("Per-class excitation per block (SENet, fig. 6)", fig))
    sel = layer_stat(attention, "class_selectivity")
    if len(sel):
        chance = layer_stat(attention, "class_selectivity_chance").reindex(sel.index).to_numpy()
        out.append(("Class selectivity of the gates over depth", charts.layer_lines(
            list(sel.index), {"η² (class share of the variance)": sel.to_numpy(), "chance level": chance}, "class selectivity", "Gate class selectivity")))
    layers = pixel_layers(attention)
    if layers:
        out.append(("Mean attention distance, heads × layers (ViT, fig. 7)",
                    charts.heads_by_layers(distance_matrix(attention, layers), layers, "Mean attention distance", "input pixels")))
        series = {s: layer_stat(attention, s).reindex(layers).to_numpy() for s in ("query_js", "same_peak")}
        out.append(("Query dependence per layer (GCNet)", charts.layer_lines(layers, series, "JS (nats) / share", "Query dependence")))
        same = {s: layer_stat(attention, s).reindex(layers).to_numpy() for s in ("same_class_mass_ratio", "same_class_baseline")}
        if not all(np.isnan(v).all() for v in same.values()):
            out.append(("Same-class mass beside the geometry alone", charts.layer_lines(layers, same, "ratio (1 = chance)", "Same-class mass")))
    conf = info.get("metrics", {}).get("confusion")
    if conf:
        out.append(("Confusion", charts.confusion(np.asarray(conf), info["metrics"]["confusion_classes"])))
    return out


def _png(fig: Figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return base64.b64encode(buf.getvalue()).decode()


def _table(df: pd.DataFrame, limit: int = 200) -> str:
    return df.head(limit).to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="t")


def write_report(out: Path, info: dict[str, Any], gates: pd.DataFrame, attention: pd.DataFrame) -> Path:
    """Write ``out/report.html`` and return its path."""
    e = html.escape
    parts = [f"<h1>Attention atlas: {e(str(info['model']))}</h1>",
             f"<p>{e(info['data'])} · {info['counts']['images']} images ({info['counts']['skipped']} skipped) · task {e(info['task'])} · "
             f"engine {e(info['engine'])} · {info['seconds']} s</p>"]
    m = info.get("metrics", {})
    if "accuracy" in m:
        parts.append(f"<p>Accuracy {m['accuracy']:.4f}</p>")
    if "miou" in m:
        parts.append(f"<p>mIoU {m['miou']:.4f}</p>")
    for title, fig in figures(info, gates, attention):
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{_png(fig)}'>")
    summary = attention[attention["head"] < 0]
    if len(summary):
        parts.append("<h2>Per-layer statistics (head −1: mean over heads)</h2>" + _table(summary, 500))
    if info.get("skipped"):
        parts.append("<h2>Skipped files</h2>" + _table(pd.DataFrame(info["skipped"])))
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}.t{border-collapse:collapse;font-size:12px}" \
            ".t td,.t th{padding:2px 6px;border-bottom:1px solid #ddd}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>attnviz atlas</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
