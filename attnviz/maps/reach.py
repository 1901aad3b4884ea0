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

    # loop-1 crosses of every u on the loop-2 cross, in one batched call:
    # first the column positions u = (h', x), h' = 0..H-1, then the row positions u = (y, w'), w' = 0..W-1
    ys = torch.cat([torch.arange(h), torch.full((w,), y)])
    xs = torch.cat([torch.full((h,), x), torch.arange(w)])
    col1, row1 = first.cross_weights(ys, xs, batch)  # (H + W, H), (H + W, W)
    c_col, r_col = col1[:h], col1[h:]
    c_row, r_row = row1[:h], row1[h:]

    reach = torch.zeros(h, w)
    reach[:, x] += col2 @ c_col  # column parts of the column positions all lie on column x
    reach += col2[:, None] * c_row  # row part of u = (h', x) lies on row h'
    reach += (row2[:, None] * r_col).T  # column part of u = (y, w') lies on column w'
    reach[y, :] += row2 @ r_row  # row parts of the row positions all lie on row y
    return reach


def uniform_criss_cross(hw: tuple[int, int]) -> CrissCross:
    """A criss-cross loop whose every weight is equal (zero logits): the geometry without attention."""
    h, w = hw
    return CrissCross(queries=torch.zeros(1, 1, h, w), keys=torch.zeros(1, 1, h, w))


def uniform_reach(hw: tuple[int, int], y: int, x: int) -> torch.Tensor:
    """Two-hop reach of (y, x) with uniform weights on both loops, ``(H, W)``.

    What CCNet's cross geometry alone gives: any mass ratio of a trained reach should be read against
    this baseline (from a pixel inside an object, the cross already runs through the object).
    """
    u = uniform_criss_cross(hw)
    return criss_cross_reach(u, u, y, x)
