"""Squeeze-and-Excitation channel gate."""

from __future__ import annotations

import torch
from torch import nn


def reduced_channels(channels: int, rd_ratio: float, rd_channels: int | None = None, minimum: int = 4) -> int:
    """Width of a bottleneck MLP: ``rd_channels`` if given, else ``channels * rd_ratio`` (at least ``minimum``)."""
    if rd_channels:
        return int(rd_channels)
    return max(minimum, int(round(channels * rd_ratio)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation block: global average pool → MLP → sigmoid gate per channel.

    Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018. https://arxiv.org/abs/1709.01507

    The gate is the named submodule ``gate`` so that a hook sees its output ``(B, C, 1, 1)``.

    Args:
        channels: Input (and output) channels C.
        rd_ratio: Bottleneck width as a fraction of C.
        rd_channels: Bottleneck width; overrides ``rd_ratio``.
        act_layer: Activation between the two 1×1 convolutions.
        gate_layer: Gate activation (``nn.Sigmoid`` in the paper).
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        rd = reduced_channels(channels, rd_ratio, rd_channels)
        self.fc1 = nn.Conv2d(channels, rd, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd, channels, 1)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        g = self.gate(self.fc2(self.act(self.fc1(s))))  # (B, C, 1, 1)
        return x * g
