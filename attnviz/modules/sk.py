"""Selective Kernel convolution."""

from __future__ import annotations

import torch
from torch import nn

from .se import reduced_channels


class SelectiveKernel(nn.Module):
    """SK unit: M convolution branches of growing receptive field, fused by a softmax over branches.

    Li et al., "Selective Kernel Networks", CVPR 2019. https://arxiv.org/abs/1903.06586

    Branch m is a 3×3 convolution with dilation m+1 (a 3×3, 5×5, ... receptive field). The branch
    weights come from the named ``softmax`` submodule, output ``(B, M, C, 1, 1)``.

    Args:
        channels: Input (and output) channels C.
        num_branches: Number of branches M.
        rd_ratio: Width of the selection MLP as a fraction of C.
        groups: Groups of the branch convolutions.
    """

    def __init__(self, channels: int, num_branches: int = 2, rd_ratio: float = 1.0 / 8, groups: int = 1) -> None:
        super().__init__()
        self.num_branches = num_branches
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=m + 1, dilation=m + 1, groups=groups, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            )
            for m in range(num_branches)
        )
        rd = reduced_channels(channels, rd_ratio, minimum=8)
        self.fc_reduce = nn.Sequential(nn.Conv2d(channels, rd, 1, bias=False), nn.BatchNorm2d(rd), nn.ReLU())
        self.fc_select = nn.Conv2d(rd, channels * num_branches, 1)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        feats = torch.stack([branch(x) for branch in self.branches], dim=1)  # (B, M, C, H, W)
        s = feats.sum(1).mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        logits = self.fc_select(self.fc_reduce(s)).view(b, self.num_branches, c, 1, 1)  # (B, M, C, 1, 1)
        weights = self.softmax(logits)  # (B, M, C, 1, 1)
        return (feats * weights).sum(1)  # (B, C, H, W)
