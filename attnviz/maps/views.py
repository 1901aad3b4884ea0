"""Records → the maps a user asks for: per-click rows and reach, layer listings, ablations.

Everything here works at feature resolution; :func:`~attnviz.maps.geometry.upsample_map` (or the
renderer) brings a map to image size. Image pixels map to feature cells by proportion, so a click at
(x, y) on a W×H image selects cell ``(y·h/H, x·w/W)`` of an h×w feature map.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..capture.records import Affinity, CrissCross, HaloAffinity, Record, RegionAttention, TokenAttention, WindowAffinity
from .reach import criss_cross_reach
from .transformer import rollout_map

VIEWS = ("row", "cls", "rollout", "loop1", "loop2", "reach", "regions")


def base_name(name: str) -> str:
    """``"context.cca#2"`` → ``"context.cca"``."""
    return name.split("#", 1)[0]


@dataclass
class ClickLayer:
    """A layer whose maps depend on a query pixel.

    Attributes:
        name: Layer name (the module path; CCNet loops share one layer).
        kind: ``"affinity"``, ``"tokens"`` (transformer self-attention), ``"window"`` (window-local: Swin, HaloNet, …),
            ``"criss_cross"`` or ``"regions"``.
        records: The records: one for affinity and regions, the loops in order for CCNet.
        views: What can be shown: ``("row",)`` for affinity; for tokens also ``"cls"`` (the class token's attention in this
            layer) and ``"rollout"`` (attention rollout of the clicked patch up to this layer); loops and reach for CCNet; ``("regions",)``
            (the query's attention carried onto the image through its regions) for pixel → region attention.
        heads: Number of heads (1 when the record has no separate heads).
    """

    name: str
    kind: str
    records: list[Record] = field(default_factory=list)
    views: tuple[str, ...] = ("row",)
    heads: int = 1
    chain: list[Record] = field(default_factory=list)  # tokens: every self-attention layer up to this one (for rollout)

    @property
    def default_view(self) -> str:
        """The view shown when none is chosen: CCNet's two-hop reach when both loops exist, else the first."""
        return "reach" if "reach" in self.views else self.views[0]

    @property
    def feature_hw(self) -> tuple[int, int]:
        """Grid (h, w) of the query cells under the image: the query grid, or the cells that tile the image when its
        positions are blocks that run past the image's edge (see :attr:`Affinity.query_cells`)."""
        rec = self.records[0]
        cells = getattr(rec, "query_cells", None)
        if cells is not None:
            return cells[2], cells[3]
        return rec.query_hw if isinstance(rec, (Affinity, RegionAttention)) else rec.hw  # type: ignore[union-attr]

    @property
    def overhangs(self) -> bool:
        """Whether the layer's query or key positions are blocks of cells whose last ones run past the image's edge."""
        rec = self.records[0]
        return getattr(rec, "query_cells", None) is not None or getattr(rec, "key_cells", None) is not None

    def query_cell(self, x: float, y: float, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The query position (y, x) of the record's grid under image pixel (x, y)."""
        fy, fx = feature_cell(x, y, image_hw, self.feature_hw)
        cells = getattr(self.records[0], "query_cells", None)
        return (fy // cells[0], fx // cells[1]) if cells is not None else (fy, fx)


def cell_px(hw: tuple[int, ...], image_hw: tuple[int, int], cells: tuple[int, int, int, int] | None = None) -> tuple[float, float]:
    """Image pixels (height, width) of one cell of an ``hw`` grid over an ``image_hw`` image; with ``cells = (bh, bw, H, W)``
    each cell is a bh × bw block of an H × W grid that covers the image (see :attr:`Affinity.key_cells`)."""
    (h, w), (ih, iw) = hw[:2], image_hw
    return (ih / h, iw / w) if cells is None else (cells[0] * ih / cells[2], cells[1] * iw / cells[3])


def on_image(m: torch.Tensor, cells: tuple[int, int, int, int] | None) -> torch.Tensor:
    """A map ``(..., h, w)`` over positions that are blocks of cells (``cells = (bh, bw, H, W)``, see
    :attr:`Affinity.key_cells`) as the ``(..., H, W)`` map of the cells that tile the image: each position's value over
    its bh × bw block, the part past the image's edge cut off. Unchanged when ``cells`` is None."""
    if cells is None:
        return m
    bh, bw, h, w = cells
    return m.repeat_interleave(bh, -2).repeat_interleave(bw, -1)[..., :h, :w]


def click_layers(records: Mapping[str, Record]) -> dict[str, ClickLayer]:
    """Every query-dependent layer of a capture, in forward order."""
    out: dict[str, ClickLayer] = {}
    chain: list[Record] = []
    for name, rec in records.items():
        if isinstance(rec, TokenAttention):
            same = bool(chain) and chain[-1].query_hw == rec.query_hw and chain[-1].key_prefix == rec.key_prefix  # type: ignore[attr-defined]
            chain = [*chain, rec] if same and rec.query_hw == rec.key_hw else [rec]
            views = ("row",) + (("cls",) if rec.query_prefix else ()) + (("rollout",) if rec.query_hw == rec.key_hw else ())
            out[name] = ClickLayer(name, "tokens", [rec], views, rec.heads, chain=list(chain))
        elif isinstance(rec, Affinity):
            out[name] = ClickLayer(name, "affinity", [rec], ("row",), rec.heads)
        elif isinstance(rec, (WindowAffinity, HaloAffinity)):  # window-local: a row is 0 outside the query's window
            out[name] = ClickLayer(name, "window", [rec], ("row",), rec.heads)
        elif isinstance(rec, RegionAttention):
            out[name] = ClickLayer(name, "regions", [rec], ("regions",))
        elif isinstance(rec, CrissCross):
            base = base_name(name)
            layer = out.setdefault(base, ClickLayer(base, "criss_cross", [], ("loop1",)))
            layer.records.append(rec)
            n = len(layer.records)
            layer.views = ("loop1",) if n == 1 else ("loop1", "loop2", "reach")
    return out


def feature_cell(x: float, y: float, image_hw: tuple[int, int], feature_hw: tuple[int, int]) -> tuple[int, int]:
    """Feature cell (fy, fx) under image pixel (x, y)."""
    h, w = image_hw
    fh, fw = feature_hw
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"pixel ({x}, {y}) lies outside the {w}×{h} image")
    return min(fh - 1, int(y * fh / h)), min(fw - 1, int(x * fw / w))


def click_map(layer: ClickLayer, x: float, y: float, image_hw: tuple[int, int], view: str = "row", head: int | None = None, batch: int = 0,
              native: bool = False) -> torch.Tensor:
    """The map of ``layer`` for the query under image pixel (x, y), at feature resolution ``(h, w)``: on the cells that
    tile the image (:func:`on_image`) when the keys are blocks that run past its edge, unless ``native``.

    Args:
        layer: From :func:`click_layers`.
        x: Query column in image pixels.
        y: Query row in image pixels.
        image_hw: Size of the image the pixel refers to.
        view: ``"row"`` (affinity), ``"loop1"``, ``"loop2"``, ``"reach"`` (CCNet) or ``"regions"``.
        head: Head index for multi-head affinity, None for the head average.
        batch: Sample in the batch.
        native: Return the row on the record's own key grid (its values once each: sums and shares).
    """
    if view not in layer.views:
        raise ValueError(f"{layer.name} shows {', '.join(layer.views)}, not {view!r}")
    fy, fx = layer.query_cell(x, y, image_hw)
    if layer.kind == "regions":
        return layer.records[0].pixel_map(fy, fx, batch=batch)  # type: ignore[attr-defined]
    if layer.kind in ("affinity", "tokens", "window"):
        if head is not None and not 0 <= head < layer.heads:
            raise ValueError(f"{layer.name} has {layer.heads} head(s); head {head} does not exist")
        rec = layer.records[0]
        if view == "cls":
            return rec.prefix_row(0, batch=batch, head=head)  # type: ignore[attr-defined]
        if view == "rollout":
            return rollout_map(layer.chain, (fy, fx), batch=batch)  # type: ignore[arg-type]
        m = rec.row(fy, fx, batch=batch, head=head)  # type: ignore[attr-defined]
        return m if native else on_image(m, getattr(rec, "key_cells", None))
    loops = layer.records
    if view == "loop1":
        return loops[0].row(fy, fx, batch=batch)  # type: ignore[attr-defined]
    if view == "loop2":
        return loops[1].row(fy, fx, batch=batch)  # type: ignore[attr-defined]
    return criss_cross_reach(loops[0], loops[1], fy, fx, batch=batch)  # type: ignore[arg-type]


def module_for(model: nn.Module, record_name: str) -> tuple[str, nn.Module]:
    """The module that produced a record (generic records name ``<module>.<kind>``)."""
    path = base_name(record_name)
    while path:
        try:
            return path, model.get_submodule(path)
        except AttributeError:
            path = path.rpartition(".")[0]
    raise ValueError(f"no module of the model produced {record_name!r}")


@contextmanager
def bypassed(model: nn.Module, record_name: str) -> Iterator[str]:
    """Make the module behind ``record_name`` return its input (gate = 1, or γ = 0) for that call.

    For a gate (``out = x·g``) this sets ``g`` to 1; for a residual attention block
    (``out = x + γ·f``) it sets γ to 0. Only the k-th call is changed for ``name#k``.

    Yields:
        A one-line description of what was changed.

    Raises:
        ValueError: When the module changes the shape of its input (no identity to fall back to).
    """
    path, module = module_for(model, record_name)
    want = int(record_name.split("#", 1)[1]) if "#" in record_name else 1
    calls = [0]
    problem: list[str] = []

    def hook(mod: nn.Module, args: tuple[object, ...], out: object) -> object:
        calls[0] += 1
        if calls[0] != want:
            return None
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) or x.shape != out.shape:
            problem.append(f"{path} changes the shape of its input, so it cannot be bypassed")
            return None
        return x

    handle = module.register_forward_hook(hook)
    try:
        yield f"{path} (call {want}) bypassed: output := input, i.e. gate = 1 / γ = 0"
    finally:
        handle.remove()
    if problem:
        raise ValueError(problem[0])


def ablate(model: nn.Module, x: torch.Tensor, record_name: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Logits with and without the module behind ``record_name``: ``(before, after, description)``."""
    with torch.no_grad():
        before = model(x)
        with bypassed(model, record_name) as what:
            after = model(x)
    return before, after, what
