"""Dual attention (DANet): position attention and channel attention."""

from __future__ import annotations

import torch
from torch import nn


class PositionAttention(nn.Module):
    """DANet position attention module (PAM): softmax affinity of every position over all positions.

    Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019. https://arxiv.org/abs/1809.02983

    Args:
        channels: Input channels C.
        rd_ratio: Width of queries and keys (1/8 in the paper).
        key_channels: Width of queries and keys; overrides ``rd_ratio`` (mmsegmentation uses 64).
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 8, key_channels: int | None = None) -> None:
        super().__init__()
        ck = key_channels or max(1, int(channels * rd_ratio))
        self.query = nn.Conv2d(channels, ck, 1)
        self.key = nn.Conv2d(channels, ck, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.softmax = nn.Softmax(dim=-1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C')
        k = self.key(x).flatten(2)  # (B, C', N)
        attn = self.softmax(torch.bmm(q, k))  # (B, N, N)
        v = self.value(x).flatten(2)  # (B, C, N)
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * out


class ChannelAttention(nn.Module):
    """DANet channel attention module (CAM): softmax affinity between channels, ``(B, C, C)``.

    Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019. https://arxiv.org/abs/1809.02983

    As in the reference implementation the softmax is taken over ``max(energy) - energy``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.softmax = nn.Softmax(dim=-1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        f = x.flatten(2)  # (B, C, N)
        energy = torch.bmm(f, f.transpose(1, 2))  # (B, C, C)
        energy = energy.amax(-1, keepdim=True).expand_as(energy) - energy
        attn = self.softmax(energy)  # (B, C, C)
        out = torch.bmm(attn, f).view(b, c, h, w)
        return x + self.gamma * out


class DualAttention(nn.Module):
    """DANet head: the mean of position attention and channel attention applied to the same input.

    Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019. https://arxiv.org/abs/1809.02983

    Args:
        channels: Input channels C.
        rd_ratio: Width of the PAM queries and keys.
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 8) -> None:
        super().__init__()
        self.pam = PositionAttention(channels, rd_ratio)
        self.cam = ChannelAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.pam(x) + self.cam(x))
