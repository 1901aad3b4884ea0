"""Convolutional Block Attention Module (channel gate, then spatial mask)."""

from __future__ import annotations

import torch
from torch import nn

from .se import reduced_channels


class ChannelGate(nn.Module):
    """CBAM channel attention: shared MLP on average- and max-pooled descriptors, summed, sigmoid.

    Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018. https://arxiv.org/abs/1807.06521

    Args:
        channels: Input channels C.
        rd_ratio: Bottleneck width of the shared MLP as a fraction of C.
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16) -> None:
        super().__init__()
        rd = reduced_channels(channels, rd_ratio)
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=False)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))  # (B, C, 1, 1)
        mx = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))  # (B, C, 1, 1)
        return x * self.gate(avg + mx)


class SpatialGate(nn.Module):
    """CBAM spatial attention: channel-wise mean and max → k×k conv → BN → sigmoid mask.

    Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018. https://arxiv.org/abs/1807.06521

    Args:
        kernel_size: Size of the convolution over the two pooled maps (7 in the paper).
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return x * self.gate(self.bn(self.conv(pooled)))  # mask (B, 1, H, W)


class CBAM(nn.Module):
    """CBAM block: ``ChannelGate`` followed by ``SpatialGate``.

    Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018. https://arxiv.org/abs/1807.06521

    Args:
        channels: Input channels C.
        rd_ratio: Bottleneck width of the channel MLP.
        kernel_size: Kernel of the spatial convolution.
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, rd_ratio)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
