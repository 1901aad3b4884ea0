"""Channel views: SE / ECA / CBAM / GC gates, SK branch weights and DANet channel affinity."""

from __future__ import annotations

from matplotlib.figure import Figure

from ... import render
from ...capture.records import BranchWeights, ChannelAffinity, ChannelGate
from ..errors import UserError
from ..session import Analysis


def gate_records(a: Analysis) -> list[ChannelGate]:
    """Channel gates in forward order."""
    return [r for r in a.of(ChannelGate)]  # type: ignore[misc]


def gates_heatmap(a: Analysis, cmap: str = "viridis") -> Figure | None:
    """Blocks × channels heatmap of every channel gate (with its colour bar)."""
    gates = gate_records(a)
    if not gates:
        return None
    return render.gate_heatmap([g.name for g in gates], [g.weights[0].numpy() for g in gates], cmap=cmap)


def gate_bars(a: Analysis, block: str | None, sort: bool = True, other: Analysis | None = None) -> Figure | None:
    """Bars of one block's gates, optionally beside a second image's gates for the same block."""
    gates = {g.name: g for g in gate_records(a)}
    if not gates:
        return None
    name = block or list(gates)[-1]
    if name not in gates:
        raise UserError(f"block must be one of: {', '.join(gates)}; got {name!r}.")
    second = None
    if other is not None:
        og = {g.name: g for g in gate_records(other)}
        if name not in og:
            raise UserError(f"The second image's analysis has no gate {name!r} (was it analysed with another model?).")
        second = og[name].weights[0].numpy()
    return render.gate_bars(name, gates[name].weights[0].numpy(), sort=sort, other=second)


def branch_figures(a: Analysis) -> list[Figure]:
    """SK branch weights, one Figure per block."""
    return [render.branch_bars(r.name, r.weights[0].numpy()) for r in a.of(BranchWeights)]  # type: ignore[attr-defined]


def channel_affinity_figures(a: Analysis) -> list[Figure]:
    """DANet channel affinity matrices."""
    return [render.affinity_matrix(r.name, r.matrix[0].numpy()) for r in a.of(ChannelAffinity)]  # type: ignore[attr-defined]
