"""Global Context block (GCNet)."""

from __future__ import annotations

import torch
from torch import nn

from .se import reduced_channels


class GlobalContext(nn.Module):
    """GC block: softmax attention pooling over positions → bottleneck transform → fused into x.

    Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
    ICCVW 2019. https://arxiv.org/abs/1904.11492

    The pooling weights come from the named ``softmax`` submodule (output ``(B, 1, H·W)``), so a hook
    sees the spatial mask; with ``fusion="scale"`` the transform ends in the ``gate`` sigmoid.

    Args:
        channels: Input channels C.
        rd_ratio: Bottleneck width of the transform.
        rd_channels: Bottleneck width; overrides ``rd_ratio``.
        fusion: ``"add"`` (the paper's default) or ``"scale"`` (multiplicative channel gate).
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 8, fusion: str = "add", rd_channels: int | None = None) -> None:
        super().__init__()
        if fusion not in ("add", "scale"):
            raise ValueError(f"fusion must be 'add' or 'scale', got {fusion!r}")
        rd = reduced_channels(channels, rd_ratio, rd_channels)
        self.fusion = fusion
        self.conv_mask = nn.Conv2d(channels, 1, 1)
        self.softmax = nn.Softmax(dim=2)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, rd, 1),
            nn.LayerNorm([rd, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(rd, channels, 1),
        )
        self.gate = nn.Sigmoid() if fusion == "scale" else None
        if fusion == "add":  # start as identity, as in the paper's initialisation
            nn.init.zeros_(self.transform[-1].weight)
            nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn = self.softmax(self.conv_mask(x).view(b, 1, h * w))  # (B, 1, HW)
        context = torch.bmm(x.view(b, c, h * w), attn.transpose(1, 2)).view(b, c, 1, 1)  # (B, C, 1, 1)
        t = self.transform(context)  # (B, C, 1, 1)
        if self.gate is not None:
            return x * self.gate(t)
        return x + t
