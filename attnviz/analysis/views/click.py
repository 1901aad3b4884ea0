"""Pixel attention: what one clicked pixel attends to, in every layer, view and head; and whether queries differ (GCNet)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ... import render
from ...capture.records import CrissCross, HaloAffinity, RegionAttention, TokenAttention, WindowAffinity
from ...maps import (
    ClickLayer,
    cell_px,
    click_layers,
    click_map,
    feature_cell,
    on_image,
    same_class_mass,
    top_share,
    uniform_reach,
)
from ...maps import query_dependence as js_query_dependence
from ..errors import UserError
from ..session import Analysis, Style
from ..text import share_text
from .draw import overlay_map

VIEW_MEANING = {
    "row": "attention weight of the clicked query over every key position; the row sums to 1",
    "loop1": "CCNet loop-1 weight, non-zero only on the query's row and column; sums to 1",
    "loop2": "CCNet loop-2 weight, non-zero only on the query's row and column; sums to 1",
    "reach": "two-hop reach Σ_u A2(p,u)·A1(u,q): where the pixel's information can come from after both loops; sums to 1",
    "regions": "the query's attention carried onto the image through the soft object regions: Σ_k p(k|pixel)·region_k; sums to 1",
    "folded": "how much each cell around the clicked one contributes to its output: VOLO's overlapping 3×3 windows added up "
              "as the module's fold adds them, so the map sums to the number of windows holding the cell (1–4), not to 1",
    "tokens": "attention weight of the clicked patch over every patch key; with its weight on the prefix tokens (class, registers) it sums to 1",
    "cls": "the class token's attention over the patches in this layer (the same for every click); with its prefix weight it sums to 1",
    "rollout": "attention rollout of the clicked patch from the first layer up to this one (Abnar & Zuidema 2020: 0.5·A + 0.5·I per layer, "
               "heads averaged); with the prefix tokens' share it sums to 1",
}
VIEW_UNIT = {"row": "attention weight", "cls": "class-token attention", "rollout": "rollout",
             "loop1": "loop-1 weight", "loop2": "loop-2 weight", "reach": "two-hop reach", "regions": "region-weighted attention"}


def click_choices(a: Analysis) -> list[str]:
    """Names of query-dependent layers."""
    return list(click_layers(a.records))


def layer_of(a: Analysis, layer: str | None) -> ClickLayer:
    """The click layer named ``layer`` (default: the deepest), or a clear error."""
    layers = click_layers(a.records)
    if not layers:
        raise UserError(f"{a.model_name} has no Non-Local, DANet, BotNet, CCNet or OCR layer, so a click has nothing to show.")
    name = layer or list(layers)[-1]
    if name not in layers:
        raise UserError(f"layer must be one of: {', '.join(layers)}; got {name!r}.")
    return layers[name]


def point(a: Analysis, x: Any, y: Any) -> tuple[float, float]:
    """(x, y) as finite floats inside the image, or a clear error."""
    h, w = a.hw
    try:
        fx, fy = float(x), float(y)
    except (TypeError, ValueError):
        raise UserError(f"x and y must be numbers (image pixels); got x={x!r}, y={y!r}.") from None
    if not (np.isfinite(fx) and np.isfinite(fy)):
        raise UserError(f"x and y must be finite numbers; got x={x!r}, y={y!r}.")
    if not (0 <= fx < w and 0 <= fy < h):
        raise UserError(f"Pixel ({fx:g}, {fy:g}) lies outside the {w}×{h} image: x must be in [0, {w}), y in [0, {h}).")
    return fx, fy


def click_raw(a: Analysis, x: Any, y: Any, layer: str | None = None, view: str | None = None, head: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The raw map (feature resolution) of the query at image pixel (x, y) and facts about it."""
    fx, fy = point(a, x, y)
    cl = layer_of(a, layer)
    view = view or cl.default_view
    if view not in cl.views:
        raise UserError(f"view must be one of {', '.join(cl.views)} for {cl.name}; got {view!r}.")
    if view == "rollout":
        head = None  # rollout fuses the heads (their mean)
    if head is not None and not (cl.heads > 1 and 0 <= head < cl.heads):
        raise UserError("head must be 'mean'" + (f" or 0…{cl.heads - 1}" if cl.heads > 1 else f" ({cl.name} has a single head)") + f"; got {head!r}.")
    try:
        native = click_map(cl, fx, fy, a.hw, view=view, head=head, native=True)  # each key once
        row, m = native.numpy(), on_image(native, getattr(cl.records[0], "key_cells", None)).numpy()  # m: as drawn
    except ValueError as e:
        raise UserError(str(e)) from None
    cy, cx = cl.query_cell(fx, fy, a.hw) if cl.overhangs else feature_cell(fx, fy, a.hw, m.shape[:2] if view != "regions" else cl.feature_hw)
    peak = int(m.argmax())
    py, px = divmod(peak, m.shape[1])
    sy, sx = a.hw[0] / m.shape[0], a.hw[1] / m.shape[1]
    meaning = VIEW_MEANING["tokens"] if view == "row" and cl.kind == "tokens" else VIEW_MEANING.get(view, "")
    if view == "row" and getattr(cl.records[0], "folded", False):
        meaning = VIEW_MEANING["folded"]
    info: dict[str, Any] = {
        "layer": cl.name, "view": view, "meaning": meaning, "head": "mean" if head is None else head,
        "x": round(fx, 2), "y": round(fy, 2), "feature_cell": [cy, cx], "feature_hw": list(m.shape),
        "cell_size_px": [round(sx, 2), round(sy, 2)],
        "peak": {"cell": [py, px], "x": round((px + 0.5) * sx, 1), "y": round((py + 0.5) * sy, 1), "value": float(m.max())},
        "min": float(row.min()), "max": float(row.max()), "sum": float(row.sum()),
        "top5pct_share": round(top_share(torch.from_numpy(row), 0.05), 4),
    }
    if cl.overhangs:
        _overhang_facts(cl, row, a.hw, info)
    rec = cl.records[0]
    if isinstance(rec, (WindowAffinity, HaloAffinity)) and view == "row":
        outside = rec.outside_mass(cy, cx, head=head)  # weight on the zero padding past the map (HaloNet, Swin at odd sizes)
        if outside > 1e-6:
            info["outside_mass"] = round(outside, 4)
    if isinstance(rec, TokenAttention) and rec.key_prefix and view == "row":
        pm = rec.prefix_mass(cy, cx, head=head)
        info["prefix_mass"] = {n: round(float(v), 4) for n, v in zip(rec.key_prefix, pm)}
    if isinstance(rec, RegionAttention):
        p = rec.distribution(cy, cx).numpy()
        names = rec.region_names or [a.label(i) for i in range(len(p))]
        order = np.argsort(-p)[:5]
        info["regions"] = [{"region": names[i] if i < len(names) else f"region {i}", "weight": round(float(p[i]), 4)} for i in order]
    if a.task == "segmentation":
        _segmentation_facts(a, m, (fx, fy), uniform_reach(rec.hw, cy, cx).numpy() if view == "reach" and isinstance(rec, CrissCross) else None, info)
    return m, info


def _segmentation_facts(a: Analysis, m: np.ndarray, xy: tuple[float, float], uniform: np.ndarray | None, info: dict[str, Any]) -> None:
    """The class under the click, the top three, and the share of the map's mass on that class (beside the same for
    uniform weights through CCNet's geometry when ``uniform`` is its reach)."""
    labels = a.labels()
    cls = int(labels[int(xy[1]), int(xy[0])])
    info["class"] = a.label(cls)
    info["top3"] = [{"class": n, "p": round(p, 4)} for n, p in a.probs_at(*xy)]
    lab = torch.from_numpy(labels.astype(np.int64))[None]
    up = torch.from_numpy(render.resize_map(m, a.hw))[None]
    info["same_class_mass_ratio"] = round(float(same_class_mass(up, lab, torch.tensor([cls]))[0]), 3)
    info["same_class_area_share"] = round(float((labels == cls).mean()), 4)
    if uniform is not None:
        uni_up = torch.from_numpy(render.resize_map(uniform, a.hw))[None]
        info["same_class_mass_ratio_uniform_geometry"] = round(float(same_class_mass(uni_up, lab, torch.tensor([cls]))[0]), 3)


def _overhang_facts(cl: ClickLayer, row: np.ndarray, hw: tuple[int, int], info: dict[str, Any]) -> None:
    """Facts on the layer's own grids when its positions are blocks of cells whose last ones run past the image's edge
    (LeViT's last stage): the query grid and the size of its cells in pixels, and the peak key at the middle of its part
    inside the image."""
    rec = cl.records[0]
    qy, qx = cell_px(rec.query_hw, hw, rec.query_cells)  # type: ignore[attr-defined]
    sy, sx = cell_px(row.shape, hw, rec.key_cells)  # type: ignore[attr-defined]
    py, px = divmod(int(row.argmax()), row.shape[1])
    info["feature_hw"], info["cell_size_px"] = list(rec.query_hw), [round(qx, 2), round(qy, 2)]  # type: ignore[attr-defined]
    info["peak"] = {"cell": [py, px], "x": round((px * sx + min((px + 1) * sx, hw[1])) / 2, 1),
                    "y": round((py * sy + min((py + 1) * sy, hw[0])) / 2, 1), "value": float(row.max())}
    info["overhang"] = "keys are blocks of cells whose last row and column run past the image's edge; drawn over the part inside it"


def attention_at(a: Analysis, x: Any, y: Any, layer: str | None = None, view: str | None = None, head: int | None = None,
                 style: Style | None = None) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """Original | overlay (clicked point and peak marked, colour bar attached), its facts, and the raw map.

    Args:
        a: The analysis.
        x: Column in image pixels.
        y: Row in image pixels.
        layer: A click layer (default: the deepest).
        view: ``row`` / ``loop1`` / ``loop2`` / ``reach`` / ``regions`` (default: reach for CCNet).
        head: Head index, or None for the head average.
        style: Display controls (``threshold`` hides weights below that fraction of the maximum).
    """
    style = (style or Style()).check()
    m, info = click_raw(a, x, y, layer, view, head)
    img = overlay_map(a, m, style, point=(info["x"], info["y"]), peak=(info["peak"]["x"], info["peak"]["y"]), unit=VIEW_UNIT.get(info["view"], "weight"))
    info["text"] = describe_click(a, info)
    return img, info, m


def click_grid(a: Analysis, x: Any, y: Any, style: Style | None = None, max_tiles: int = 24) -> list[tuple[np.ndarray, str]]:
    """Every click layer, every view and every head for the same click (DINO-style), each tile with its own scale."""
    style = (style or Style()).check()
    tiles: list[tuple[np.ndarray, str]] = []
    for name, cl in click_layers(a.records).items():
        for view in cl.views:
            heads: list[int | None] = [None] + (list(range(cl.heads)) if cl.heads > 1 and view == "row" else [])
            for hd in heads:
                if len(tiles) >= max_tiles:
                    return tiles
                m, info = click_raw(a, x, y, name, view, hd)
                img = overlay_map(a, m, style, point=(info["x"], info["y"]), peak=(info["peak"]["x"], info["peak"]["y"]),
                                       unit=VIEW_UNIT.get(view, "weight"), side_by_side=False)
                tag = "mean of heads" if hd is None and cl.heads > 1 else ("" if hd is None else f"head {hd}")
                tiles.append((img, f"{name} · {view}{' · ' + tag if tag else ''} · scale {m.min():.3g}–{m.max():.3g}"))
    return tiles


def query_dependence(a: Analysis, layer: str | None = None, pairs: int = 64, seed: int = 0) -> dict[str, Any]:
    """GCNet's question for one layer: do different queries attend to different places?"""
    cl = layer_of(a, layer)
    if cl.name in a._qd:
        return a._qd[cl.name]
    h, w = cl.feature_hw
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, h * w, (pairs, 2), generator=g)
    rows = []
    for i in range(pairs):
        for j in range(2):
            cy, cx = divmod(int(q[i, j]), w)
            px, py = (cx + 0.5) * a.hw[1] / w, (cy + 0.5) * a.hw[0] / h
            rows.append(click_map(cl, px, py, a.hw, view=cl.default_view, native=True).flatten())
    r = torch.stack(rows).view(pairs, 2, -1)
    qd = js_query_dependence(r[:, 0], r[:, 1])
    js, same = qd["js"], qd["same_peak"]
    if js < 0.05 and same > 0.8:
        verdict = "query-independent: every pixel gets nearly the same map (one global context, as GCNet found)"
    elif js < 0.15:
        verdict = "weakly query-dependent: maps differ a little between pixels"
    else:
        verdict = "query-dependent: different pixels attend to different places"
    res = {"layer": cl.name, "view": cl.default_view, "pairs": pairs, "mean_js": round(js, 4), "same_peak_share": round(same, 3),
           "verdict": verdict, "explanation": "mean Jensen–Shannon divergence between the maps of random query pairs "
           "(0 = identical, ln 2 ≈ 0.69 = disjoint), and the share of pairs whose maps peak at the same place"}
    a._qd[cl.name] = res
    return res


def describe_click(a: Analysis, info: dict[str, Any]) -> str:
    """A readable paragraph of what a click shows: which cell of which grid, where the mass goes, how concentrated."""
    fh, fw = info["feature_hw"]
    cy, cx = info["feature_cell"]
    csx, csy = info["cell_size_px"]
    head = "" if info["head"] == "mean" else f", head {info['head']}"
    parts = [f"Pixel ({info['x']:g}, {info['y']:g}) lies in cell ({cy}, {cx}) of the {fh}×{fw} grid of **{info['layer']}** "
             f"(one cell ≈ {csx:g}×{csy:g} image pixels); shown: {info['view']}{head} — {info['meaning']}."]
    pk = info["peak"]
    parts.append(f"The map peaks at cell ({pk['cell'][0]}, {pk['cell'][1]}) ≈ pixel ({pk['x']:g}, {pk['y']:g}) with {pk['value']:.3g} "
                 f"(range {info['min']:.3g}–{info['max']:.3g}).")
    share = info["top5pct_share"]
    uniform = 0.05
    conc = "highly concentrated" if share > 0.5 else "concentrated" if share > 0.2 else "spread out"
    parts.append(f"The top 5% of positions hold {share:.0%} of the mass ({conc}; a uniform map would give {uniform:.0%}).")
    if "outside_mass" in info:
        parts.append(f"{share_text(info['outside_mass'])} of its weight falls on the zero padding past the map (not drawn).")
    if "prefix_mass" in info:
        pm = info["prefix_mass"]
        parts.append(f"It puts {share_text(sum(pm.values()))} of its attention on the prefix tokens ("
                     + ", ".join(f"{n} {share_text(v)}" for n, v in pm.items()) + "), the rest on the patches shown.")
    if "regions" in info:
        top = ", ".join(f"{r['region']} {share_text(r['weight'])}" for r in info["regions"][:3])
        parts.append(f"Over the object regions the pixel attends to: {top}.")
    if "class" in info:
        top3 = ", ".join(f"{t['class']} {share_text(t['p'])}" for t in info["top3"])
        ratio = info["same_class_mass_ratio"]
        line = (f"The pixel is predicted **{info['class']}** ({top3}). Mass on pixels of that class: {ratio:.2f}× its area share "
                f"({info['same_class_area_share']:.1%} of the image; 1× = no preference)")
        if "same_class_mass_ratio_uniform_geometry" in info:
            u = info["same_class_mass_ratio_uniform_geometry"]
            line += (f"; uniform criss-cross weights from the same pixel would already give {u:.2f}× (the cross runs through its own object), "
                     f"so only the excess over {u:.2f}× is attention")
        parts.append(line + ".")
    return " ".join(parts)
