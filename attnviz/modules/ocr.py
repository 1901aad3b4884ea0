"""Object-contextual representations (OCRNet): pixel → soft object region attention."""

from __future__ import annotations

import torch
from torch import nn

from .conv import ConvBNAct


class SpatialGather(nn.Module):
    """Soft object regions: each class's coarse logits, softmaxed over positions, pool the features.

    Yuan et al., "Object-Contextual Representations for Semantic Segmentation", ECCV 2020.
    https://arxiv.org/abs/1909.11065

    The region maps come from the named ``softmax`` submodule (output ``(B, K, H·W)``, each row a
    distribution over the image), so a hook sees them.

    Args:
        scale: Factor on the logits before the softmax (1 in the paper).
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.softmax = nn.Softmax(dim=2)

    def forward(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Region features ``(B, C, K, 1)`` from features ``(B, C, H, W)`` and logits ``(B, K, H, W)``."""
        b, k = probs.shape[:2]
        regions = self.softmax(self.scale * probs.reshape(b, k, -1))  # (B, K, HW)
        context = torch.bmm(regions, feats.flatten(2).transpose(1, 2))  # (B, K, C)
        return context.transpose(1, 2).unsqueeze(3)  # (B, C, K, 1)


class ObjectAttention(nn.Module):
    """OCR's object attention: every pixel attends over the K region features.

    Yuan et al., "Object-Contextual Representations for Semantic Segmentation", ECCV 2020.
    https://arxiv.org/abs/1909.11065

    Queries come from the pixels, keys and values from the regions (two 1×1 conv-BN-ReLU layers for
    queries and keys, one for values and the output, as in the reference implementation); the
    softmax over regions is the named ``softmax`` submodule (output ``(B, H·W, K)``). The attended
    context is concatenated with the pixel features and fused by ``bottleneck``.

    Args:
        channels: Pixel feature channels C.
        key_channels: Width of queries and keys.
    """

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.query_project = nn.Sequential(ConvBNAct(channels, key_channels, 1), ConvBNAct(key_channels, key_channels, 1))
        self.key_project = nn.Sequential(ConvBNAct(channels, key_channels, 1), ConvBNAct(key_channels, key_channels, 1))
        self.value_project = ConvBNAct(channels, key_channels, 1)
        self.out_project = ConvBNAct(key_channels, channels, 1)
        self.softmax = nn.Softmax(dim=-1)
        self.bottleneck = ConvBNAct(2 * channels, channels, 1)

    def forward(self, feats: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Context-augmented features ``(B, C, H, W)``; ``regions`` is ``(B, C, K, 1)``."""
        b, _, h, w = feats.shape
        q = self.query_project(feats).flatten(2).transpose(1, 2)  # (B, HW, Ck)
        k = self.key_project(regions).flatten(2)  # (B, Ck, K)
        v = self.value_project(regions).flatten(2).transpose(1, 2)  # (B, K, Ck)
        attn = self.softmax(torch.bmm(q, k) * self.key_channels**-0.5)  # (B, HW, K)
        context = torch.bmm(attn, v).transpose(1, 2).reshape(b, -1, h, w)  # (B, Ck, H, W)
        context = self.out_project(context)
        return self.bottleneck(torch.cat([context, feats], dim=1))


class ObjectContext(nn.Module):
    """The OCR block: soft object regions from coarse logits, then pixel → region attention.

    Yuan et al., "Object-Contextual Representations for Semantic Segmentation", ECCV 2020.
    https://arxiv.org/abs/1909.11065

    A capture yields one ``regions`` record: the K soft region maps over the image and, for each
    pixel, its attention over the K regions (regions are the classes of the coarse logits).

    Args:
        channels: Pixel feature channels C.
        key_channels: Width of queries and keys.
        scale: Factor on the coarse logits in the region softmax.
    """

    def __init__(self, channels: int, key_channels: int, scale: float = 1.0) -> None:
        super().__init__()
        self.spatial_gather_module = SpatialGather(scale)
        self.object_context_block = ObjectAttention(channels, key_channels)

    def forward(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """``feats`` ``(B, C, H, W)`` and coarse logits ``probs`` ``(B, K, H, W)`` → ``(B, C, H, W)``."""
        return self.object_context_block(feats, self.spatial_gather_module(feats, probs))
