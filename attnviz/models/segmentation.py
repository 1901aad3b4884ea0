"""Segmentation networks: a dilated ResNet (output stride 8) and the decode heads of the attention papers.

The layout follows mmsegmentation's encoder-decoder so that its published checkpoints map onto these
modules key by key (:mod:`attnviz.models.mmseg`), and our own small segmentation zoo uses the very same
heads at a smaller width (:mod:`attnviz.models.seg_zoo`):

- :class:`ResNetD8`: deep stem (three 3×3 convs, as ResNetV1c) → max-pool → four stages; stages 3–4
  keep stride 8 with dilations 2 and 4 (the first block of a dilated stage uses half its dilation);
- heads on the last stage: :class:`FCNHead` (no attention, the baseline), :class:`NLHead`
  (Non-Local), :class:`CCHead` (criss-cross, R loops), :class:`DAHead` (DANet position + channel
  attention), :class:`GCHead` (global context), and :class:`OCRHead` (object-contextual
  representations, cascaded after an FCN head that gives the coarse object regions);
- :class:`SegmentationNet`: backbone → head(s) → logits bilinearly resized to the input size.

The attention inside every head is an :mod:`attnviz.modules` block, so capture sees it natively.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..modules import (
    ChannelAttention,
    CrissCrossAttention,
    GlobalContext,
    NonLocal2d,
    PositionAttention,
)
from ..modules.conv import ConvBNAct
from ..modules.ocr import ObjectContext


# ---------------------------------------------------------------------------------------------- backbone
class BasicBlock(nn.Module):
    """ResNet basic block with stride and dilation on the first 3×3 conv."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, planes, H/s, W/s)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet bottleneck ("pytorch" style: stride and dilation on the 3×3 conv)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, 4·planes, H/s, W/s)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetD8(nn.Module):
    """Dilated ResNet at output stride 8 with a deep stem (ResNetV1c-D8 layout).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: Blocks per stage.
        planes: Planes per stage (output channels are ``planes · block.expansion``).
        stem_channels: Output channels of the deep stem (its first two convs have half).
        strides: Stride of each stage.
        dilations: Dilation of each stage.
        contract_dilation: The first block of a dilated stage uses half the dilation.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        planes: Sequence[int] = (64, 128, 256, 512),
        stem_channels: int = 64,
        strides: Sequence[int] = (1, 2, 1, 1),
        dilations: Sequence[int] = (1, 1, 2, 4),
        contract_dilation: bool = True,
    ) -> None:
        super().__init__()
        half = stem_channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, 2, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, 1, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, stem_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = stem_channels
        self.out_channels: list[int] = []
        for i, (n, p, s, d) in enumerate(zip(layers, planes, strides, dilations)):
            cout = p * block.expansion
            down = None
            if s != 1 or cin != cout:
                down = nn.Sequential(nn.Conv2d(cin, cout, 1, s, bias=False), nn.BatchNorm2d(cout))
            first = d // 2 if d > 1 and contract_dilation else d
            blocks = [block(cin, p, s, first, down)] + [block(cout, p, 1, d) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels.append(cout)
            cin = cout

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the four stages: strides 4, 8, 8, 8."""
        x = self.maxpool(self.stem(x))  # (B, stem, H/4, W/4)
        outs = []
        for i in range(len(self.out_channels)):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs


# ---------------------------------------------------------------------------------------------- heads
class DecodeHead(nn.Module):
    """Base of the decode heads: picks one backbone output, ends in dropout → 1×1 ``conv_seg``.

    Args:
        in_channels: Channels of the chosen backbone output.
        channels: Width of the head.
        num_classes: Output classes.
        in_index: Which backbone output the head reads.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, in_index: int = -1, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_channels, self.channels, self.num_classes, self.in_index = in_channels, channels, num_classes, in_index
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits ``(B, K, h, w)``."""
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)


class FCNHead(DecodeHead):
    """Fully convolutional head: ``num_convs`` 3×3 conv-BN-ReLU, optionally fused with its input.

    Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015.
    https://arxiv.org/abs/1411.4038

    Subclasses put their attention block between ``convs[0]`` and ``convs[1]`` (as mmsegmentation's
    NL/CC/GC heads do) by overriding :meth:`context`.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 2, concat_input: bool = True, **kw: object) -> None:
        super().__init__(in_channels, channels, num_classes, **kw)  # type: ignore[arg-type]
        self.concat_input = concat_input
        self.convs = nn.Sequential(*[ConvBNAct(in_channels if i == 0 else channels, channels, 3) for i in range(num_convs)])
        self.conv_cat = ConvBNAct(in_channels + channels, channels, 3) if concat_input else None

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The attention step between the two convs (identity for plain FCN)."""
        return x

    def features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Head features before the classifier ``(B, channels, h, w)``."""
        x = inputs[self.in_index]
        out = self.convs[0](x)
        out = self.context(out)
        for conv in self.convs[1:]:
            out = conv(out)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return out

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.cls_seg(self.features(inputs))


class NLHead(FCNHead):
    """Non-Local head: an embedded-Gaussian Non-Local block between the two convs.

    Wang et al., "Non-local Neural Networks", CVPR 2018. https://arxiv.org/abs/1711.07971
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, reduction: int = 2, **kw: object) -> None:
        super().__init__(in_channels, channels, num_classes, num_convs=2, **kw)
        self.nl_block = NonLocal2d(channels, inter_channels=max(channels // reduction, 1), use_scale=True)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        return self.nl_block(x)


class CCHead(FCNHead):
    """CCNet head: one criss-cross attention module applied ``recurrence`` times (shared weights).

    Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019.
    https://arxiv.org/abs/1811.11721
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, recurrence: int = 2, **kw: object) -> None:
        super().__init__(in_channels, channels, num_classes, num_convs=2, **kw)
        self.recurrence = recurrence
        self.cca = CrissCrossAttention(channels)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):
            x = self.cca(x)
        return x


class GCHead(FCNHead):
    """GCNet head: a global context block (attention pooling, channel add) between the two convs.

    Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond", ICCVW 2019.
    https://arxiv.org/abs/1904.11492
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, ratio: float = 0.25, **kw: object) -> None:
        super().__init__(in_channels, channels, num_classes, num_convs=2, **kw)
        self.gc_block = GlobalContext(channels, rd_channels=int(channels * ratio), fusion="add")

    def context(self, x: torch.Tensor) -> torch.Tensor:
        return self.gc_block(x)


class DAHead(DecodeHead):
    """DANet head: a position-attention branch and a channel-attention branch, summed.

    Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019. https://arxiv.org/abs/1809.02983

    In training it also returns each branch's own logits (the paper's auxiliary losses).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, pam_channels: int = 64, **kw: object) -> None:
        super().__init__(in_channels, channels, num_classes, **kw)  # type: ignore[arg-type]
        self.pam_in_conv = ConvBNAct(in_channels, channels, 3)
        self.pam = PositionAttention(channels, key_channels=pam_channels)
        self.pam_out_conv = ConvBNAct(channels, channels, 3)
        self.pam_conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.cam_in_conv = ConvBNAct(in_channels, channels, 3)
        self.cam = ChannelAttention()
        self.cam_out_conv = ConvBNAct(channels, channels, 3)
        self.cam_conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = inputs[self.in_index]
        pam_feat = self.pam_out_conv(self.pam(self.pam_in_conv(x)))
        cam_feat = self.cam_out_conv(self.cam(self.cam_in_conv(x)))
        out = self.cls_seg(pam_feat + cam_feat)
        if not self.training:
            return out
        drop = self.dropout if self.dropout is not None else nn.Identity()
        return out, self.pam_conv_seg(drop(pam_feat)), self.cam_conv_seg(drop(cam_feat))


class OCRHead(DecodeHead):
    """OCRNet head: soft object regions from a coarse head's logits, then pixel → region attention.

    Yuan et al., "Object-Contextual Representations for Semantic Segmentation", ECCV 2020.
    https://arxiv.org/abs/1909.11065

    ``forward(inputs, coarse)`` takes the coarse logits of the preceding FCN head (the cascade's first
    stage); the regions are its classes.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, ocr_channels: int = 256, scale: float = 1.0, **kw: object) -> None:
        super().__init__(in_channels, channels, num_classes, **kw)  # type: ignore[arg-type]
        self.bottleneck = ConvBNAct(in_channels, channels, 3)
        self.ocr = ObjectContext(channels, ocr_channels, scale)

    def forward(self, inputs: list[torch.Tensor], coarse: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        feats = self.bottleneck(inputs[self.in_index])  # (B, channels, h, w)
        return self.cls_seg(self.ocr(feats, coarse))


# ---------------------------------------------------------------------------------------------- network
class SegmentationNet(nn.Module):
    """Backbone → decode head (→ OCR stage) → logits at the input size.

    Args:
        backbone: Returns a list of stage outputs.
        decode_head: The main head; for OCRNet the coarse FCN head of the cascade.
        ocr_head: The OCR stage, run on the coarse head's logits (OCRNet only).
        aux_head: An auxiliary FCN head used in training only (e.g. on stage 3).
        align_corners: ``align_corners`` of the final bilinear resize.
        stem: An optional parameter-free module applied to the input first (the zoo standardises).

    ``forward(x)`` returns logits ``(B, K, H, W)`` at the input size; in training mode it returns a
    dict of every head's logits (``"out"`` first) for the losses.
    """

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, ocr_head: OCRHead | None = None, aux_head: nn.Module | None = None,
                 align_corners: bool = False, stem: nn.Module | None = None) -> None:
        super().__init__()
        self.standardize = stem
        self.backbone = backbone
        self.decode_head = decode_head
        self.ocr_head = ocr_head
        self.aux_head = aux_head
        self.align_corners = align_corners

    @property
    def last_conv_stage(self) -> nn.Module:
        """The backbone's last stage (Grad-CAM target)."""
        return getattr(self.backbone, f"layer{len(self.backbone.out_channels)}")

    def _resize(self, t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(t, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:  # (B, 3, H, W)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if self.standardize is not None:
            x = self.standardize(x)
        feats = self.backbone(x)
        out = self.decode_head(feats)
        extra: dict[str, torch.Tensor] = {}
        if isinstance(out, tuple):  # DANet in training: (fused, pam, cam)
            out, extra["pam"], extra["cam"] = out
        if self.ocr_head is not None:
            extra["coarse"] = out
            out = self.ocr_head(feats, out)
        if not self.training:
            return self._resize(out, size)
        if self.aux_head is not None:
            extra["aux"] = self.aux_head(feats)
        return {"out": self._resize(out, size), **{k: self._resize(v, size) for k, v in extra.items()}}
