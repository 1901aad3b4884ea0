"""Efficient Channel Attention."""

from __future__ import annotations

import math

import torch
from torch import nn


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """Adaptive odd kernel size ``k = |log2(C)/γ + β/γ|_odd`` from the ECA paper."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return max(3, t if t % 2 else t + 1)


class EfficientChannelAttn(nn.Module):
    """ECA: global average pool → 1-D convolution across channels → sigmoid gate.

    Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
    CVPR 2020. https://arxiv.org/abs/1910.03151

    Args:
        channels: Input channels C (sets the adaptive kernel size).
        kernel_size: Kernel of the 1-D convolution; adaptive when ``None``.
    """

    def __init__(self, channels: int, kernel_size: int | None = None) -> None:
        super().__init__()
        k = kernel_size or eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = x.mean((2, 3)).view(b, 1, c)  # (B, 1, C)
        g = self.gate(self.conv(y)).view(b, c, 1, 1)  # (B, C, 1, 1)
        return x * g
