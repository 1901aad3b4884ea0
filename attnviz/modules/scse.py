"""Concurrent spatial and channel squeeze & excitation (scSE)."""

from __future__ import annotations

import torch
from torch import nn

from .se import SqueezeExcite


class SpatialSE(nn.Module):
    """sSE: 1×1 convolution to one channel → sigmoid mask over positions.

    Roy et al., "Concurrent Spatial and Channel Squeeze & Excitation in Fully Convolutional
    Networks", MICCAI 2018. https://arxiv.org/abs/1803.02579

    Args:
        channels: Input channels C.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.conv(x))  # mask (B, 1, H, W)


class SCSE(nn.Module):
    """scSE: the sum of a channel SE (``cse``) and a spatial SE (``sse``) of the same input.

    Roy et al., "Concurrent Spatial and Channel Squeeze & Excitation in Fully Convolutional
    Networks", MICCAI 2018. https://arxiv.org/abs/1803.02579

    Args:
        channels: Input channels C.
        rd_ratio: Bottleneck width of the channel branch.
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 8) -> None:
        super().__init__()
        self.cse = SqueezeExcite(channels, rd_ratio)
        self.sse = SpatialSE(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.cse(x) + self.sse(x))
