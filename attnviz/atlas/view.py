"""A finished atlas, opened for viewing (the app's Atlas tab, notebooks): its tables, its numbers in sentences, and the
per-class and per-layer figures. Opens an ``OUT`` folder or its zip (read safely: no path leaves the extraction folder,
and the unpacked size is capped)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..render import atlas as charts
from .compute import ALL
from .data import AtlasError
from .report import distance_matrix, excitation_figure, figures, layer_stat, pixel_layers

MAX_UNPACKED = 512 * 2**20
NEEDED = ("atlas.json", "gates.parquet", "attention.parquet")


@dataclass
class OpenedAtlas:
    """The tables and ``atlas.json`` of one atlas run."""

    folder: Path
    info: dict[str, Any]
    gates: pd.DataFrame
    attention: pd.DataFrame

    @property
    def classes(self) -> list[str]:
        """Classes with per-class gate statistics."""
        return sorted(c for c in self.gates["class"].unique() if c != ALL) if len(self.gates) else []

    @property
    def layers(self) -> list[str]:
        """Every layer of the atlas, in forward order."""
        return list(dict.fromkeys(self.attention["layer"]))

    def figures(self) -> list[tuple[str, Figure]]:
        """The report's plots."""
        return figures(self.info, self.gates, self.attention)


def _unzip(path: Path, into: Path) -> Path:
    try:
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > MAX_UNPACKED:
                raise AtlasError(f"{path.name}: unpacks to more than {MAX_UNPACKED >> 20} MB")
            for m in members:
                name = Path(m.filename)
                if name.is_absolute() or ".." in name.parts or name.name not in (*NEEDED, "per_image.parquet", "report.html"):
                    continue  # only the atlas's own files, never a path outside the folder
                target = into / name.name
                target.write_bytes(z.read(m))
    except zipfile.BadZipFile:
        raise AtlasError(f"{path.name} is not a zip file; choose an atlas folder or its zip") from None
    return into


def open_atlas(path: str | Path, scratch: Path | None = None) -> OpenedAtlas:
    """Open an atlas folder, or a zip of one (unpacked into ``scratch``).

    Raises:
        AtlasError: The path is not an atlas (missing files are named).
    """
    p = Path(path)
    if p.is_file():
        if scratch is None:
            raise AtlasError("a zipped atlas needs a scratch folder to unpack into")
        scratch.mkdir(parents=True, exist_ok=True)
        p = _unzip(p, scratch)
    if not p.is_dir():
        raise AtlasError(f"{path}: no such atlas folder or zip")
    missing = [n for n in NEEDED if not (p / n).is_file()]
    if missing:
        raise AtlasError(f"{Path(path).name} is not a finished atlas: {', '.join(missing)} missing (run attnviz atlas, or --resume it)")
    try:
        info = json.loads((p / "atlas.json").read_text())
        return OpenedAtlas(p, info, pd.read_parquet(p / "gates.parquet"), pd.read_parquet(p / "attention.parquet"))
    except (ValueError, OSError) as e:
        raise AtlasError(f"{Path(path).name}: unreadable atlas ({e})") from None


def summary(at: OpenedAtlas) -> str:
    """The atlas in a few sentences (Markdown)."""
    i, c, m = at.info, at.info.get("counts", {}), at.info.get("metrics", {})
    parts = [f"**{i.get('model', '?')}** over {i.get('data', '?')}: {c.get('images', 0)} images ({c.get('skipped', 0)} skipped), "
             f"{i.get('task', '')}, engine {i.get('engine', '?')}, {i.get('seconds', '?')} s."]
    if at.attention.empty:
        parts.append("The model has no attention layer attnviz can read: only its predictions are summarised.")
    if "accuracy" in m:
        parts.append(f"Accuracy {m['accuracy']:.3f}.")
    if "miou" in m:
        parts.append(f"mIoU {m['miou']:.3f}.")
    sel = layer_stat(at.attention, "class_selectivity")
    if len(sel) >= 2:
        trend = "rises" if sel.iloc[-1] > sel.iloc[0] else "falls"
        chance = layer_stat(at.attention, "class_selectivity_chance")
        level = f" (chance level {float(chance.iloc[0]):.3f} with this many images)" if len(chance) else ""
        parts.append(f"Gate class selectivity {trend} with depth: {sel.iloc[0]:.3f} ({sel.index[0]}) → {sel.iloc[-1]:.3f} ({sel.index[-1]}){level}.")
    js = layer_stat(at.attention, "query_js")
    if len(js):
        parts.append("Query dependence (JS of two queries' maps, ≤ ln 2 = 0.693): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in js.items()) + ".")
    return " ".join(parts)


def class_figure(at: OpenedAtlas, cls: str) -> Figure:
    """One class's mean gate per channel in each block, against the mean over all images."""
    if cls not in at.classes:
        raise AtlasError(f"class {cls!r} has no gate statistics in this atlas ({', '.join(at.classes[:8]) or 'none: no labels or no gates'})")
    fig = excitation_figure(at.gates, only=cls)
    assert fig is not None
    return fig


def layer_figure(at: OpenedAtlas, layer: str) -> Figure:
    """One layer: per head, its mean attention distance, query dependence and entropy (or, for a gate, its gates per class)."""
    if layer not in at.layers:
        raise AtlasError(f"layer {layer!r} is not in this atlas")
    if layer in pixel_layers(at.attention):
        stats = ["distance_px", "query_js", "entropy_norm"]
        rows = {s: distance_matrix(at.attention[at.attention["layer"] == layer], [layer], s)[0] for s in stats}
        heads = max(len(v) for v in rows.values())
        return charts.layer_lines([f"head {h}" for h in range(heads)], {s: np.pad(v, (0, heads - len(v)), constant_values=np.nan) for s, v in rows.items()},
                                  "value", f"{layer}: per head (distance in input pixels; JS in nats; entropy ÷ its maximum)")
    g = at.gates[at.gates["layer"] == layer]
    if g.empty:
        return charts.layer_lines([layer], {s: layer_stat(at.attention, s).reindex([layer]).to_numpy() for s in ("pointing",)}, "share", layer)
    return charts.excitation_curves([layer], [np.stack([g[g["class"] == c].sort_values("channel")["mean"].to_numpy() for c in [ALL, *at.classes]])],
                                    ["all classes", *at.classes], cols=1)


def layer_table(at: OpenedAtlas, layer: str) -> pd.DataFrame:
    """Every statistic of one layer (head −1: the heads' mean)."""
    return at.attention[at.attention["layer"] == layer].reset_index(drop=True)
