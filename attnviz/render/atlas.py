"""Dataset-level charts of an attention atlas (arrays in, matplotlib Figures out; object API only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def _fig(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _short(name: str, n: int = 28) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def excitation_curves(blocks: Sequence[str], means: Sequence[np.ndarray], classes: Sequence[str], cols: int = 3) -> Figure:
    """Per block, the mean gate of each channel per class, as in SENet's figure 6 (Hu et al. 2018, arXiv:1709.01507):
    ``means[i]`` is ``(classes, channels)`` for ``blocks[i]``."""
    if not blocks:
        raise ValueError("no gate layers to plot")
    rows = int(np.ceil(len(blocks) / cols))
    fig = _fig(3.4 * min(cols, len(blocks)), 2.6 * rows)
    axes = fig.subplots(rows, min(cols, len(blocks)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(blocks):
            ax.set_visible(False)
            continue
        m = np.asarray(means[k])
        for c in range(m.shape[0]):
            ax.plot(np.arange(m.shape[1]), m[c], lw=0.8, label=classes[c] if c < len(classes) else str(c))
        ax.set_title(_short(blocks[k]), fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("channel", fontsize=7)
        ax.tick_params(labelsize=6)
    axes.flat[0].set_ylabel("mean gate", fontsize=7)
    if len(classes) <= 12:
        axes.flat[0].legend(fontsize=5, ncol=2, loc="best")
    return fig


def layer_lines(layers: Sequence[str], series: dict[str, np.ndarray], ylabel: str, title: str) -> Figure:
    """One line per named series over the layers (forward order); NaN where a layer has no value."""
    fig = _fig(max(5.0, 0.45 * len(layers) + 2), 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(layers))
    for name, v in series.items():
        ax.plot(x, np.asarray(v, dtype=np.float64), marker="o", ms=3, lw=1, label=name)
    ax.set_xticks(x, labels=[_short(n, 22) for n in layers], rotation=60, ha="right", fontsize=6)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return fig


def heads_by_layers(values: np.ndarray, layers: Sequence[str], title: str, label: str) -> Figure:
    """Heatmap of a statistic over heads (columns) × layers (rows), ``values (L, H)`` (NaN where a layer has fewer heads)."""
    v = np.asarray(values, dtype=np.float64)
    fig = _fig(max(4.0, 0.35 * v.shape[1] + 3), 1.2 + 0.28 * v.shape[0])
    ax = fig.add_subplot()
    im = ax.imshow(v, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(layers)), labels=[_short(n) for n in layers], fontsize=6)
    ax.set_xticks(range(v.shape[1]), labels=[str(i) for i in range(v.shape[1])], fontsize=6)
    ax.set_xlabel("head")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=label, shrink=0.9)
    return fig


def confusion(matrix: np.ndarray, classes: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix (truth rows, prediction columns) with the counts written in."""
    m = np.asarray(matrix, dtype=np.float64)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig = _fig(1.5 + 0.42 * len(classes), 1.2 + 0.42 * len(classes))
    ax = fig.add_subplot()
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=6, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), labels=list(classes), rotation=60, ha="right", fontsize=6)
    ax.set_yticks(range(len(classes)), labels=list(classes), fontsize=6)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title("Confusion (rows normalised)", fontsize=10)
    return fig
