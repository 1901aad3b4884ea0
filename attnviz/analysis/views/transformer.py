"""Transformer views: every layer and head at once (for a clicked patch or the class token), rollout, mean attention distance."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ... import render
from ...capture.records import Affinity, TokenAttention, WindowAffinity
from ...maps import ClickLayer, click_layers, click_map, feature_cell, mean_attention_distance, mean_row_distance, rollout_map
from ...maps.transformer import gradient_rollout, plain_softmax
from ..errors import UserError
from ..session import Analysis, Engine, Style
from ..text import share_text
from .click import point
from .draw import overlay_map

QUERIES = ("patch", "cls")


def token_layers(a: Analysis) -> list[TokenAttention]:
    """The self-attention layers over tokens, in forward order."""
    return [r for r in a.records.values() if isinstance(r, TokenAttention)]


def head_layers(a: Analysis) -> list[ClickLayer]:
    """Query-dependent self-attention layers the head grid can show, in forward order: over tokens, or with several heads
    (Swin's windows, LeViT, BotNet, a ViT without a class token); never layers whose positions run past the image."""
    return [cl for cl in click_layers(a.records).values()
            if cl.kind in ("tokens", "affinity", "window") and (cl.kind == "tokens" or cl.heads > 1) and not cl.overhangs]


def _layers(a: Analysis) -> list[TokenAttention]:
    layers = token_layers(a)
    if not layers:
        what = "multi-head self-attention" if not head_layers(a) else "self-attention over a token sequence (the head grid of the clicked patch works)"
        raise UserError(f"{a.model_name} has no {what}, so there is no class-token view, rollout or distance plot here.")
    return layers


def _patch_stages(a: Analysis) -> dict[tuple[int, int, int], list[ClickLayer]]:
    """The head grid's layers grouped into stages, keyed by (heads, key rows, key columns): consecutive or not, layers whose
    rows lie on the same key grid with the same head count, in forward order."""
    groups: dict[tuple[int, int, int], list[ClickLayer]] = {}
    for cl in head_layers(a):
        rec = cl.records[0]
        grid = rec.key_hw if isinstance(rec, Affinity) else rec.hw  # type: ignore[union-attr]
        groups.setdefault((cl.heads, *grid), []).append(cl)
    return groups


def _cls_stages(a: Analysis) -> list[list[TokenAttention]]:
    every = _layers(a)
    if not every[0].query_prefix:
        raise UserError(f"{a.model_name} has no class token; choose the clicked patch.")
    groups: dict[tuple[Any, ...], list[TokenAttention]] = {}
    for r in every:
        if r.query_prefix:
            groups.setdefault((r.key_hw, r.heads), []).append(r)
    return list(groups.values())


def head_stages(a: Analysis, query: str = "patch") -> list[str]:
    """The stages the head grid can show (layers with one grid and head count each), in words: ``"14×14 cells, 2 heads, 2 layers"``."""
    if query == "cls":
        return [f"{g[0].key_hw[0]}×{g[0].key_hw[1]} cells, {g[0].heads} heads, {len(g)} layers" for g in _cls_stages(a)]
    return [f"{h}×{w} cells, {heads} heads, {len(g)} layers" for (heads, h, w), g in _patch_stages(a).items()]


def head_maps(a: Analysis, x: Any = None, y: Any = None, query: str = "patch", stage: int = 0) -> tuple[np.ndarray, list[str], str]:
    """Maps ``(L, H, h, w)`` of every layer and head of one stage for one query, the layer names, and what the query is.

    Args:
        a: The analysis.
        x, y: The clicked pixel (image pixels) for ``query="patch"``; default the image centre.
        query: ``patch`` (the patch under the pixel) or ``cls`` (the class token, the same for every click).
        stage: Which stage (:func:`head_stages`; 0 = the first): a hierarchical model's stages have grids of their own.
    """
    if query not in QUERIES:
        raise UserError(f"query must be one of {', '.join(QUERIES)}; got {query!r}.")
    fx, fy = point(a, a.hw[1] / 2 if x in (None, "") else x, a.hw[0] / 2 if y in (None, "") else y)
    if query == "cls":
        groups = _cls_stages(a)
        layers = groups[_stage(stage, len(groups))]
        return np.stack([np.stack([r.prefix_row(0, head=h).numpy() for h in range(r.heads)]) for r in layers]), [r.name for r in layers], "class token"
    if not head_layers(a):
        raise UserError(f"{a.model_name} has no transformer self-attention (ViT, DeiT, DINO, Swin, LeViT … with several heads), "
                        "so there is no head grid.")
    stages = list(_patch_stages(a).values())
    layers = stages[_stage(stage, len(stages))]  # each head's row placed on the image, as a click draws it (windows at their cells)
    maps = [np.stack([click_map(cl, fx, fy, a.hw, "row", head=h if cl.heads > 1 else None).numpy() for h in range(cl.heads)]) for cl in layers]
    return np.stack(maps), [cl.name for cl in layers], f"the patch under pixel ({fx:.0f}, {fy:.0f})"


def _stage(stage: Any, n: int) -> int:
    try:
        i = int(stage)
    except (TypeError, ValueError):
        raise UserError(f"stage must be a whole number in [0, {n}); got {stage!r}.") from None
    if not 0 <= i < n:
        raise UserError(f"stage must be in [0, {n}) for this model; got {i}.")
    return i


def head_grid(a: Analysis, x: Any = None, y: Any = None, query: str = "patch", cmap: str = "inferno", stage: int = 0) -> Figure:
    """Layers × heads thumbnails of :func:`head_maps` (each with its own scale)."""
    return _grid_figure(*head_maps(a, x, y, query, stage), cmap)


def _grid_figure(maps: np.ndarray, names: list[str], what: str, cmap: str) -> Figure:
    return render.head_grid(maps, names, f"Attention of {what}: every layer (rows) and head (columns)", cmap)


def head_at(a: Analysis, px: float, py: float, x: Any = None, y: Any = None, query: str = "patch", cmap: str = "inferno",
            stage: int = 0) -> tuple[int, int]:
    """The (layer, head) of the thumbnail under pixel (px, py) of the head grid image drawn by :func:`head_grid`.

    Raises:
        UserError: The pixel lies between thumbnails (titles, margins).
    """
    maps, names, what = head_maps(a, x, y, query, stage)
    fig = _grid_figure(maps, names, what, cmap)
    render.figure_to_rgb(fig)  # lays the figure out as the page shows it
    n_heads = maps.shape[1]
    for k, (x0, y0, x1, y1) in enumerate(render.axes_boxes(fig)):
        if x0 <= px < x1 and y0 <= py < y1:
            return divmod(k, n_heads)
    raise UserError("That point of the grid is between thumbnails; click on one to open it.")


def head_view(a: Analysis, layer: int, head: int, x: Any = None, y: Any = None, query: str = "patch",
              style: Style | None = None, stage: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """One thumbnail of the head grid opened: that layer and head's map for the query, drawn over the image (``layer``
    counts within the ``stage`` the grid shows)."""
    style = (style or Style()).check()
    maps, names, what = head_maps(a, x, y, query, stage)
    if not (0 <= layer < maps.shape[0] and 0 <= head < maps.shape[1]):
        raise UserError(f"layer must be in [0, {maps.shape[0]}) and head in [0, {maps.shape[1]}); got layer {layer}, head {head}.")
    fx, fy = point(a, a.hw[1] / 2 if x in (None, "") else x, a.hw[0] / 2 if y in (None, "") else y)
    m = maps[layer, head]
    img = overlay_map(a, m, style, point=None if query == "cls" else (fx, fy))
    share = float(m.sum())
    tokens = {r.name: bool(r.key_prefix) for r in token_layers(a)}.get(names[layer], False)
    rest = "" if share >= 1 - 1e-6 else (f" (their share {share_text(share)}; the rest goes to the prefix tokens)" if tokens else
                                         f" (their share {share_text(share)}; the rest falls on the zero padding past the map, not drawn)")
    return img, {"layer": names[layer], "head": head, "query": what, "max": float(m.max()), "sum": share,
                 "text": f"{names[layer]}, head {head}: attention of {what} over the patches{rest}."}


def rollout_view(a: Analysis, x: Any = None, y: Any = None, query: str = "cls", style: Style | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Attention rollout through every layer (Abnar & Zuidema 2020) of the class token or the clicked patch, over the image."""
    style = (style or Style()).check()
    layers = _layers(a)
    chain = [r for r in layers if r.query_hw == layers[0].query_hw == r.key_hw]
    if query == "cls" and not chain[0].query_prefix:
        raise UserError(f"{a.model_name} has no class token; choose the clicked patch.")
    fx, fy = point(a, a.hw[1] / 2 if x in (None, "") else x, a.hw[0] / 2 if y in (None, "") else y)
    cell = feature_cell(fx, fy, a.hw, chain[0].query_hw)
    m = rollout_map(chain, 0 if query == "cls" else cell).numpy()
    img = overlay_map(a, m, style, point=None if query == "cls" else (fx, fy), unit="rollout")
    return img, {"layers": len(chain), "query": "cls" if query == "cls" else {"x": fx, "y": fy, "cell": list(cell)},
                 "prefix_share": round(float(1 - m.sum()), 4), "method": "attention rollout: 0.5·A + 0.5·I per layer, heads averaged"}


def gradient_rollout_view(engine: Engine, a: Analysis, target: int | None = None, style: Style | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Gradient-weighted rollout (Chefer et al. 2021) of a class (default: the predicted one) over the image; one backward pass."""
    style = (style or Style()).check()
    layers = _layers(a)
    if a.task != "classification":
        what = "is a backbone without classes" if a.task == "features" else "segments"
        raise UserError(f"Gradient rollout explains one class of a classifier; {a.model_name} {what}.")
    cls = int(a.logits.argmax()) if target is None else int(target)
    if not 0 <= cls < a.logits.shape[0]:
        raise UserError(f"target must be a class index in [0, {a.logits.shape[0]}); got {target!r}.")
    model = engine.catalog.get(a.model_name)
    try:
        with engine.model_lock(a.model_name):
            r = gradient_rollout(model, a.x.clone(), cls, prefix=len(layers[0].query_prefix))
    except ValueError as e:
        raise UserError(str(e)) from None
    m = r.reshape(layers[0].key_hw).numpy()
    img = overlay_map(a, m, style, unit="gradient rollout")
    return img, {"class": a.label(cls), "layers": len(layers), "method": "Chefer, Gur & Wolf 2021: R ← R + mean_h((∇A ⊙ A)⁺)·R"}


def distance_layers(a: Analysis) -> list[Affinity | WindowAffinity]:
    """The layers of the distance plot: the token layers, else every layer of the head grid (global multi-head attention as
    in LeViT or a ViT without a class token, Swin's windows, BotNet's relative-position attention); never positions past
    the image's edge (LeViT's last stage), whose query cells are not the image's."""
    if token_layers(a):
        return list(token_layers(a))
    return [r for cl in head_layers(a) if isinstance(r := cl.records[0], (Affinity, WindowAffinity))]


def distances(a: Analysis) -> tuple[np.ndarray, list[str]]:
    """Mean attention distance in image pixels ``(L, H)`` (the ViT paper's definition) and the layer names: from the whole
    matrix where it is one softmax of queries and keys, else from every query's own row."""
    layers = distance_layers(a)
    if not layers:
        raise UserError(f"{a.model_name} has no multi-head self-attention over image positions, so there is no distance plot.")
    out = []
    for rec in layers:
        if isinstance(rec, Affinity) and (rec.matrix is not None or plain_softmax(rec)):
            patch = (a.hw[0] / rec.query_hw[0], a.hw[1] / rec.query_hw[1])  # image pixels per query cell
            out.append(mean_attention_distance(rec, patch).numpy())
        else:
            out.append(mean_row_distance(rec, a.hw).numpy())
    width = max(len(d) for d in out)
    mat = np.full((len(out), width), np.nan)
    for i, d in enumerate(out):
        mat[i, : len(d)] = d
    return mat, [r.name for r in layers]


def distance_figure(a: Analysis) -> Figure:
    """The heads × layers mean-distance plot."""
    mat, names = distances(a)
    return render.distance_plot(mat, names, f"{a.model_name}: mean attention distance per head (image pixels)")
