"""Charts as matplotlib Figures (object API only: no pyplot state, safe in request handlers)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def _fig(w: float = 7.0, h: float = 3.2) -> Figure:
    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def gate_heatmap(names: Sequence[str], gates: Sequence[np.ndarray], cmap: str = "viridis", title: str = "Channel gates across depth") -> Figure:
    """Blocks × channels heatmap of gate vectors (blocks with fewer channels are padded blank)."""
    if not gates:
        raise ValueError("no channel gates to plot")
    width = max(len(g) for g in gates)
    mat = np.full((len(gates), width), np.nan)
    for i, g in enumerate(gates):
        mat[i, : len(g)] = g
    fig = _fig(8, 1.2 + 0.32 * len(gates))
    ax = fig.add_subplot()
    im = ax.imshow(mat, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(names)), labels=list(names), fontsize=8)
    ax.set_xlabel("channel")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="gate", shrink=0.9)
    return fig


def gate_bars(name: str, gates: np.ndarray, sort: bool = True, other: np.ndarray | None = None, labels: tuple[str, str] = ("image A", "image B")) -> Figure:
    """Per-channel gate bars of one block; with ``other``, the second image's gates beside them.

    When sorted, channels are ordered by the first image's gate so both series stay comparable.
    """
    g = np.asarray(gates, dtype=np.float64)
    order = np.argsort(-g) if sort else np.arange(len(g))
    fig = _fig(8, 3)
    ax = fig.add_subplot()
    xs = np.arange(len(g))
    if other is None:
        ax.bar(xs, g[order], width=1.0, color="#3b7dd8")
    else:
        o = np.asarray(other, dtype=np.float64)
        if o.shape != g.shape:
            raise ValueError(f"the two images' gates differ in shape: {g.shape} vs {o.shape}")
        ax.bar(xs - 0.2, g[order], width=0.4, color="#3b7dd8", label=labels[0])
        ax.bar(xs + 0.2, o[order], width=0.4, color="#e8833a", label=labels[1])
        ax.legend(fontsize=8, loc="upper right")
    ax.set_ylim(0, max(1.0, float(np.nanmax(g)) * 1.05))
    ax.set_xlabel("channel (sorted by gate)" if sort else "channel")
    ax.set_ylabel("gate")
    ax.set_title(name, fontsize=10)
    if len(g) <= 32:
        ax.set_xticks(xs, labels=[str(i) for i in order], fontsize=7)
    return fig


def branch_bars(name: str, weights: np.ndarray) -> Figure:
    """SK branch weights ``(M, C)``: mean weight per branch and the per-channel split."""
    w = np.asarray(weights, dtype=np.float64)
    fig = _fig(8, 3)
    a1, a2 = fig.subplots(1, 2, width_ratios=[1, 3])
    a1.bar(range(w.shape[0]), w.mean(1), color="#3b7dd8")
    a1.set_xticks(range(w.shape[0]), labels=[f"branch {i}" for i in range(w.shape[0])], fontsize=8)
    a1.set_ylim(0, 1)
    a1.set_title("mean weight", fontsize=9)
    im = a2.imshow(w, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    a2.set_yticks(range(w.shape[0]), labels=[f"branch {i}" for i in range(w.shape[0])], fontsize=8)
    a2.set_xlabel("channel")
    a2.set_title(name, fontsize=9)
    fig.colorbar(im, ax=a2, shrink=0.9)
    return fig


def affinity_matrix(name: str, mat: np.ndarray, cmap: str = "viridis") -> Figure:
    """DANet channel affinity ``(C, C)`` (each row sums to 1)."""
    fig = _fig(4.6, 4)
    ax = fig.add_subplot()
    im = ax.imshow(np.asarray(mat), cmap=cmap, interpolation="nearest")
    ax.set_xlabel("key channel")
    ax.set_ylabel("query channel")
    ax.set_title(name, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.9)
    return fig


def logit_change(class_names: Sequence[str], before: np.ndarray, after: np.ndarray, top: int = 8, title: str = "") -> Figure:
    """Logits before and after an ablation for the classes that change most (and the top class)."""
    b, a = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    idx = list(np.argsort(-np.abs(a - b))[:top])
    if int(np.argmax(b)) not in idx:
        idx[-1] = int(np.argmax(b))
    fig = _fig(7, 0.8 + 0.35 * len(idx))
    ax = fig.add_subplot()
    ys = np.arange(len(idx))
    ax.barh(ys - 0.2, b[idx], height=0.4, color="#3b7dd8", label="original")
    ax.barh(ys + 0.2, a[idx], height=0.4, color="#e8833a", label="ablated")
    ax.set_yticks(ys, labels=[class_names[i] if i < len(class_names) else str(i) for i in idx], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("logit")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def series_heatmap(mat: np.ndarray, times: np.ndarray, ylabel: str, title: str, cmap: str = "viridis", vmin: float | None = 0.0,
                   vmax: float | None = 1.0) -> Figure:
    """A (rows × time) heatmap, e.g. one block's channel gates over the frames of a clip."""
    fig = _fig(8, 3)
    ax = fig.add_subplot()
    t = np.asarray(times, dtype=np.float64)
    extent = (float(t[0]), float(t[-1]) if len(t) > 1 else float(t[0]) + 1, mat.shape[0] - 0.5, -0.5)
    im = ax.imshow(np.asarray(mat), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", extent=extent)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.9)
    return fig


def timeline(times: np.ndarray, series: dict[str, np.ndarray], ylabel: str, title: str) -> Figure:
    """Line plot of named series over time."""
    fig = _fig(8, 2.8)
    ax = fig.add_subplot()
    for label, ys in series.items():
        ax.plot(times, ys, label=label, lw=1.5)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def head_grid(maps: np.ndarray, layers: Sequence[str], title: str, cmap: str = "inferno") -> Figure:
    """Layers × heads thumbnails of maps ``(L, H, h, w)``, each with its own colour scale (its maximum in the corner)."""
    n_layers, n_heads = maps.shape[:2]
    fig = _fig(1.1 * n_heads + 1.4, 1.0 * n_layers + 0.6)
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    for i in range(n_layers):
        for j in range(n_heads):
            ax = axes[i][j]
            ax.imshow(maps[i, j], cmap=cmap, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.98, 0.02, f"{float(maps[i, j].max()):.2g}", transform=ax.transAxes, ha="right", va="bottom", fontsize=6, color="white")
            if i == 0:
                ax.set_title(f"head {j}", fontsize=8)
            if j == 0:
                ax.set_ylabel(layers[i], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=10)
    return fig


def distance_plot(distances: np.ndarray, layers: Sequence[str], title: str = "Mean attention distance") -> Figure:
    """Mean attention distance per head (dots) for each layer, as in the ViT paper's figure: ``distances (L, H)`` in pixels."""
    fig = _fig(7, 3.2)
    ax = fig.add_subplot()
    n_layers, n_heads = distances.shape
    for j in range(n_heads):
        ax.scatter(np.arange(n_layers), distances[:, j], s=14, label=f"head {j}")
    ax.plot(np.arange(n_layers), distances.mean(1), color="black", lw=1, label="mean of heads")
    ax.set_xticks(range(n_layers), labels=[str(i) for i in range(n_layers)], fontsize=8)
    ax.set_xlabel("layer (" + (f"{layers[0]} … {layers[-1]}" if layers else "") + ")")
    ax.set_ylabel("mean attention distance (image pixels)")
    ax.set_title(title, fontsize=10)
    if n_heads <= 12:  # beside the axes: inside, it covers the dots of the small plots the app shows
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def axes_boxes(fig: Figure) -> list[tuple[int, int, int, int]]:
    """Where each of a rasterised Figure's axes lies in its ``figure_to_rgb`` image: ``(x0, y0, x1, y1)`` pixels, top-left
    origin, in the order of ``fig.axes`` (call after :func:`figure_to_rgb`, which lays the figure out)."""
    height = fig.canvas.get_width_height()[1]
    out = []
    for ax in fig.axes:
        b = ax.get_window_extent()
        out.append((int(b.x0), int(height - b.y1), int(np.ceil(b.x1)), int(np.ceil(height - b.y0))))
    return out


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """Rasterise a Figure to ``(H, W, 3) uint8`` (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
