"""Criss-cross attention (CCNet)."""

from __future__ import annotations

import torch
from torch import nn


def criss_cross_logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Logits of every position over its own column and row.

    Args:
        q: Queries ``(B, C', H, W)``.
        k: Keys ``(B, C', H, W)``.

    Returns:
        ``(B, H, W, H + W)``: the first H entries are the column (over rows h, the pixel's own row
        set to -inf because it is counted once, in the row part), the last W the row (over columns w).
    """
    h = q.shape[2]
    col = torch.einsum("bcyx,bchx->byxh", q, k)  # (B, H, W, H)
    own = torch.eye(h, dtype=torch.bool, device=q.device).view(1, h, 1, h)
    col = col.masked_fill(own, float("-inf"))
    row = torch.einsum("bcyx,bcyw->byxw", q, k)  # (B, H, W, W)
    return torch.cat([col, row], dim=-1)


class CrissCrossAttention(nn.Module):
    """Criss-cross attention: each position attends to the positions on its row and column.

    Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019.
    https://arxiv.org/abs/1811.11721

    The pixel's own position lies on both its row and its column; as in the paper's implementation it
    is masked out of the column part so that it is counted once. ``gamma`` starts at 0 (identity).

    Args:
        channels: Input channels C.
        rd_ratio: Width of queries and keys as a fraction of C (1/8 in the paper).
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 8) -> None:
        super().__init__()
        ck = max(1, int(channels * rd_ratio))
        self.query = nn.Conv2d(channels, ck, 1)
        self.key = nn.Conv2d(channels, ck, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.softmax = nn.Softmax(dim=-1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        q, k, v = self.query(x), self.key(x), self.value(x)  # (B, C', H, W), (B, C', H, W), (B, C, H, W)
        attn = self.softmax(criss_cross_logits(q, k))  # (B, H, W, H + W)
        out = torch.einsum("byxh,bchx->bcyx", attn[..., :h], v)  # column part
        out = out + torch.einsum("byxw,bcyw->bcyx", attn[..., h:], v)  # row part
        return x + self.gamma * out


class RecurrentCrissCross(nn.Module):
    """RCCA: one ``CrissCrossAttention`` applied ``recurrence`` times with shared weights.

    Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019.
    https://arxiv.org/abs/1811.11721

    Two loops give every position a path to every other one (full-image context). A capture of this
    block yields one record per loop: ``<name>.cca``, ``<name>.cca#2``, ...

    Args:
        channels: Input channels C.
        recurrence: Number of loops R (2 in the paper).
        rd_ratio: Width of queries and keys.
    """

    def __init__(self, channels: int, recurrence: int = 2, rd_ratio: float = 1.0 / 8) -> None:
        super().__init__()
        if recurrence < 1:
            raise ValueError(f"recurrence must be >= 1, got {recurrence}")
        self.recurrence = recurrence
        self.cca = CrissCrossAttention(channels, rd_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):
            x = self.cca(x)
        return x
