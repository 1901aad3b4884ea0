"""CCNet two-hop reach: where a pixel's information can come from after two criss-cross loops."""

from __future__ import annotations

import torch

from ..capture.records import CrissCross


def criss_cross_reach(first: CrissCross, second: CrissCross, y: int, x: int, batch: int = 0) -> torch.Tensor:
    """Two-hop attention of pixel (y, x): ``reach[q] = Σ_u A2[(y, x), u] · A1[u, q]``.

    ``u`` runs over the loop-2 cross of (y, x) (its column and row); each ``A1[u, :]`` is the loop-1
    cross of u. Cost O((H + W)²·C'): no (HW × HW) matrix is formed.

    Args:
        first: Record of loop 1.
        second: Record of loop 2 (the same module's next call).
        y, x: Query position on the feature grid.
        batch: Sample index.

    Returns:
        ``(H, W)`` map that sums to 1.
    """
    h, w = second.hw
    if first.hw != (h, w):
        raise ValueError(f"loops have different grids: {first.hw} vs {second.hw}")
    if not (0 <= y < h and 0 <= x < w):
        raise IndexError(f"query ({y}, {x}) is outside the {h}×{w} grid")
    col2, row2 = second.cross_weights(torch.tensor([y]), torch.tensor([x]), batch)
    col2, row2 = col2[0], row2[0]  # (H,), (W,): weights of u = (h', x) and u = (y, w')

    # loop-1 crosses of the column positions u = (h', x), h' = 0..H-1
    c_col, c_row = first.cross_weights(torch.arange(h), torch.full((h,), x), batch)  # (H, H), (H, W)
    # loop-1 crosses of the row positions u = (y, w'), w' = 0..W-1
    r_col, r_row = first.cross_weights(torch.full((w,), y), torch.arange(w), batch)  # (W, H), (W, W)

    reach = torch.zeros(h, w)
    reach[:, x] += col2 @ c_col  # column parts of the column positions all lie on column x
    reach += col2[:, None] * c_row  # row part of u = (h', x) lies on row h'
    reach += (row2[:, None] * r_col).T  # column part of u = (y, w') lies on column w'
    reach[y, :] += row2 @ r_row  # row parts of the row positions all lie on row y
    return reach
