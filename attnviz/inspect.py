"""``attnviz.inspect(model, x)``: every record of one forward, and every watched op seen but not drawn.

A researcher who brings foreign code sees why a map is, or is not, there: for each record its module
path, kind, shape, geometry and how it was identified (an exact adapter for a known class, or generic
discovery by provenance); for each watched op that produced no record, the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .capture import capture
from .capture.records import (
    Affinity,
    AxisGate,
    BranchWeights,
    ChannelAffinity,
    ChannelGate,
    CrissCross,
    HaloAffinity,
    Record,
    RegionAttention,
    SamplingGrid,
    SpatialMask,
    WindowAffinity,
)


def _prefix(names: tuple[str, ...] | list[str]) -> str:
    """Prefix tokens beside a patch grid: `` + cls + dist``, `` + cls + 4 registers``, or nothing."""
    regs = [n for n in names if n.startswith("reg")]
    parts = [n for n in names if not n.startswith("reg")] + ([f"{len(regs)} register{'s' * (len(regs) > 1)}"] if regs else [])
    return "".join(f" + {p}" for p in parts)


def _cells(cells: tuple[int, int, int, int] | None) -> str:
    """`` (2×2 blocks of the 7×7 grid, overhanging)`` for positions that are blocks whose last ones run past the image's edge."""
    return "" if cells is None else f" ({cells[0]}×{cells[1]} blocks of the {cells[2]}×{cells[3]} grid, overhanging)"


def geometry(r: Record) -> str:
    """One line on what the record's axes are."""
    if isinstance(r, ChannelGate):
        return f"{r.weights.shape[1]} channels"
    if isinstance(r, SpatialMask):
        return f"{r.mask.shape[1]}×{r.mask.shape[2]} positions"
    if isinstance(r, AxisGate):
        return f"{r.weights.shape[1]} channels × {r.weights.shape[2]} {'rows' if r.axes[1] == 'h' else 'columns'}"
    if isinstance(r, BranchWeights):
        return f"{r.weights.shape[1]} branches × {r.weights.shape[2]} channels"
    if isinstance(r, ChannelAffinity):
        return f"{r.matrix.shape[1]}×{r.matrix.shape[2]} channels"
    if isinstance(r, Affinity):
        lazy = "rows from queries and keys" if r.matrix is None else "whole matrix"
        qp, kp = _prefix(getattr(r, "query_prefix", ())), _prefix(getattr(r, "key_prefix", ()))
        qc, kc = _cells(r.query_cells), _cells(r.key_cells)
        return f"queries {r.query_hw[0]}×{r.query_hw[1]}{qp}{qc} → keys {r.key_hw[0]}×{r.key_hw[1]}{kp}{kc}, {r.heads} head(s), {lazy}"
    if isinstance(r, CrissCross):
        h, w = r.hw
        return f"{h}×{w} grid, each position over its row and column"
    if isinstance(r, RegionAttention):
        return f"{r.query_hw[0]}×{r.query_hw[1]} pixels → {r.regions} soft regions"
    if isinstance(r, (WindowAffinity, HaloAffinity)):
        return r.layout()
    if isinstance(r, SamplingGrid):
        return f"{r.grid.shape[1]}×{r.grid.shape[2]} sampling grid" + (" from θ" if r.theta is not None else "")
    return ""


def shape_of(r: Record) -> str:
    main = [v for k, v in r.arrays().items() if k not in ("contribution",)]
    return "×".join(str(s) for s in main[0].shape) if main else ""


@dataclass
class InspectReport:
    """What ``inspect`` found."""

    records: list[dict[str, Any]] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    looked_at: dict[str, int] = field(default_factory=dict)
    output_shape: list[int] = field(default_factory=list)

    def table(self) -> str:
        """A plain-text table (what ``attnviz inspect`` prints)."""
        lines = []
        if self.records:
            lines.append(f"{'module':46s} {'kind':16s} {'shape':18s} {'identified by':14s} geometry")
            for r in self.records:
                lines.append(f"{r['module']:46s} {r['kind']:16s} {r['shape']:18s} {r['identified_by']:14s} {r['geometry']}"
                             + (f"  ({r['note']})" if r["note"] else ""))
        else:
            la = self.looked_at
            if la.get("watched", 0) or la.get("adapted", 0):
                lines.append(f"no attention map found: looked at {la.get('modules', 0)} modules ({la.get('adapted', 0)} known attention classes, "
                             f"{la.get('watched', 0)} whose code names a gate or attention function) and every sigmoid / softmax / matmul they ran.")
            else:
                lines.append(f"no attention modules: none of the {la.get('modules', 0)} modules is a known attention class or calls a gate "
                             "or attention function (sigmoid, softmax, matmul, scaled_dot_product_attention) in its forward.")
        if self.seen:
            lines.append("")
            lines.append("seen, not drawn:")
            for s in self.seen:
                lines.append(f"  {s['module'] or '(model)'}: {s['op']} {tuple(s['shape'])} — {s['reason']}")
        return "\n".join(lines)


def inspect(model: nn.Module, x: torch.Tensor, generic: str = "auto") -> InspectReport:
    """Run ``x`` through ``model`` once with capture on and describe what was and was not recorded."""
    model.eval()
    with torch.no_grad(), capture(model, generic=generic) as cap:  # type: ignore[arg-type]
        out = model(x)
    rep = InspectReport(looked_at=dict(cap.looked_at))
    if isinstance(out, torch.Tensor):
        rep.output_shape = list(out.shape)
    for name, r in cap.records.items():
        rep.records.append({
            "module": name, "kind": r.kind, "shape": shape_of(r), "geometry": geometry(r), "class": r.module_type,
            "identified_by": "adapter" if r.source == "adapter" else "provenance", "note": r.note,
        })
    rep.seen = cap.seen_not_drawn()
    return rep
