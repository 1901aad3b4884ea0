"""Non-local block (embedded Gaussian and dot-product affinities)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class NonLocal2d(nn.Module):
    """Non-local block: every position attends to every (optionally sub-sampled) key position.

    Wang et al., "Non-local Neural Networks", CVPR 2018. https://arxiv.org/abs/1711.07971

    ``theta`` gives queries, ``phi`` keys and ``g`` values (``phi`` and ``g`` include the 2×2 max-pool
    when ``sub_sample`` is set, so hooks on them see the keys the module really uses). The output
    projection ``w`` ends in a BatchNorm initialised to zero, so the block starts as the identity.

    Args:
        channels: Input channels C.
        inter_channels: Width of the embeddings (C/2 by default, as in the paper).
        mode: ``"embedded_gaussian"`` (softmax of θᵀφ) or ``"dot_product"`` (θᵀφ / N).
        sub_sample: Max-pool keys and values by 2 (4× fewer keys).
        use_scale: Divide the embedded-Gaussian logits by sqrt(inter_channels).
    """

    MODES = ("embedded_gaussian", "dot_product")

    def __init__(
        self,
        channels: int,
        inter_channels: int | None = None,
        mode: str = "embedded_gaussian",
        sub_sample: bool = False,
        use_scale: bool = True,
    ) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        ci = inter_channels or max(1, channels // 2)
        self.mode = mode
        self.scale = ci**-0.5 if (use_scale and mode == "embedded_gaussian") else 1.0
        self.theta = nn.Conv2d(channels, ci, 1)
        pool: list[nn.Module] = [nn.MaxPool2d(2)] if sub_sample else []
        self.phi = nn.Sequential(nn.Conv2d(channels, ci, 1), *pool)
        self.g = nn.Sequential(nn.Conv2d(channels, ci, 1), *pool)
        self.w = nn.Sequential(nn.Conv2d(ci, channels, 1, bias=False), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.w[1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, Ci)
        k = self.phi(x).flatten(2)  # (B, Ci, M)
        v = self.g(x).flatten(2).transpose(1, 2)  # (B, M, Ci)
        logits = torch.bmm(q, k)  # (B, N, M)
        if self.mode == "embedded_gaussian":
            attn = F.softmax(logits * self.scale, dim=-1)
        else:
            attn = logits / k.shape[-1]
        y = torch.bmm(attn, v).transpose(1, 2).reshape(b, -1, h, w)  # (B, Ci, H, W)
        return x + self.w(y)
