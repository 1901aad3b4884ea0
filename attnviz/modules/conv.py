"""Conv → BatchNorm → ReLU, the building block of segmentation heads (``conv``/``bn`` names as in mmcv)."""

from __future__ import annotations

import torch
from torch import nn


class ConvBNAct(nn.Sequential):
    """``conv`` (no bias) → ``bn`` → ``activate`` (ReLU, or nothing when ``act=False``).

    Args:
        cin: Input channels.
        cout: Output channels.
        kernel_size: Square kernel size; padding keeps the size (times ``dilation``).
        stride: Convolution stride.
        dilation: Convolution dilation.
        act: Whether to end in a ReLU.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size // 2) * dilation, dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H', W')
        return self.activate(self.bn(self.conv(x)))
