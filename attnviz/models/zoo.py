"""The attnviz zoo: small ResNet-style classifiers for 64×64 scenes, one per attention family, and a small ViT.

Layout (64×64 input): per-image standardisation → stem 3×3 stride 2 (32 ch, 32×32) → stage 1 (32 ch, 32×32) → stage 2 (64 ch,
16×16) → stage 3 (128 ch, 8×8) → global average pool → linear. Sized for interactive CPU use and for
training on 2 CPU cores. Channel/spatial attention (SE, ECA, CBAM,
scSE, GC, SK) sits in every residual block, before the residual sum; Non-Local, CCNet (R = 2) and
DANet sit after stage 2, on the 16×16 map; the STN sits in front of the stem.

``vit_tiny`` is timm's ``VisionTransformer`` (class token, 4 blocks of width 128, 4 heads) over an 8×8 grid of tokens whose
patch embedding is a convolutional stem of three stride-2 3×3 convolutions and a 1×1 projection: "Early Convolutions Help
Transformers See Better" (Xiao et al., NeurIPS 2021, https://arxiv.org/abs/2106.14881), which makes a small ViT trainable
from scratch on few images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..modules import create_attn

NUM_CLASSES = 10
INPUT_SIZE = 64


@dataclass(frozen=True)
class ZooSpec:
    """Where and which attention a zoo model uses."""

    attn: str | None
    where: str  # "block" | "stage2" | "input" | "none" | "tokens" (a vision transformer)
    kwargs: tuple[tuple[str, object], ...] = ()


ZOO: dict[str, ZooSpec] = {
    "plain_resnet": ZooSpec(None, "none"),
    "se_resnet": ZooSpec("se", "block", (("rd_ratio", 0.25),)),
    "eca_resnet": ZooSpec("eca", "block"),
    "cbam_resnet": ZooSpec("cbam", "block", (("rd_ratio", 0.25),)),
    "scse_resnet": ZooSpec("scse", "block", (("rd_ratio", 0.25),)),
    "gc_resnet": ZooSpec("gc", "block", (("rd_ratio", 0.25),)),
    "sk_resnet": ZooSpec("sk", "block"),
    "nonlocal_resnet": ZooSpec("nonlocal", "stage2"),
    "ccnet_resnet": ZooSpec("ccnet", "stage2", (("recurrence", 2),)),
    "danet_resnet": ZooSpec("danet", "stage2"),
    "stn_resnet": ZooSpec("stn", "input", (("localizer", "map"),)),
    "vit_tiny": ZooSpec("vit", "tokens", (("embed_dim", 128), ("depth", 4), ("num_heads", 4), ("mlp_ratio", 2.0))),
}


class ImageStandardize(nn.Module):
    """Per-image standardisation of the input (zero mean, unit variance over C, H, W).

    Makes the zoo indifferent to global brightness, contrast and colour casts, which scenes v2
    randomise and which a visitor's photo never matches; it has no parameters.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W)
        mean = x.mean((1, 2, 3), keepdim=True)
        std = x.std((1, 2, 3), keepdim=True).clamp_min(1e-3)
        return (x - mean) / std


class BasicBlock(nn.Module):
    """ResNet basic block with optional attention on the residual branch (as in SE-ResNet)."""

    def __init__(self, cin: int, cout: int, stride: int, attn: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.attn = attn if attn is not None else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.down is None else self.down(x)
        y = self.act(self.bn1(self.conv1(x)))
        y = self.attn(self.bn2(self.conv2(y)))  # (B, C, H, W)
        return self.act(y + shortcut)


class ZooNet(nn.Module):
    """Small attention classifier (see module docstring).

    Args:
        spec: Which attention and where.
        widths: Channels of the stem/stage 1, stage 2 and stage 3.
        depths: Residual blocks per stage.
        num_classes: Output classes.
    """

    def __init__(self, spec: ZooSpec, widths: tuple[int, int, int] = (32, 64, 128), depths: tuple[int, int, int] = (1, 1, 1),
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.spec = spec
        kw = dict(spec.kwargs)
        self.standardize = ImageStandardize()
        self.stn = create_attn("stn", 3, **kw) if spec.where == "input" else None
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages = []
        cin = widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(d):
                attn = create_attn(spec.attn, w, **kw) if spec.where == "block" and spec.attn else None
                blocks.append(BasicBlock(cin, w, 2 if j == 0 and i > 0 else 1, attn))
                cin = w
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.context = create_attn(spec.attn, widths[1], **kw) if spec.where == "stage2" and spec.attn else None
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[2], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 64, 64)
        x = self.standardize(x)
        if self.stn is not None:
            x = self.stn(x)
        x = self.stage1(self.stem(x))  # (B, 32, 32, 32)
        x = self.stage2(x)  # (B, 64, 16, 16)
        if self.context is not None:
            x = self.context(x)
        return self.head(self.stage3(x))  # (B, classes)

    @property
    def last_conv_stage(self) -> nn.Module:
        """The last convolutional stage (Grad-CAM target)."""
        return self.stage3


class ConvStemEmbed(PatchEmbed):
    """timm's ``PatchEmbed`` whose single patchifying convolution is a convolutional stem of the same total stride
    (3×3 stride-2 conv + BN + ReLU per halving, then a 1×1 projection), after Xiao et al. 2021."""

    def __init__(self, img_size: int = INPUT_SIZE, patch_size: int = 8, in_chans: int = 3, embed_dim: int = 128, **kw: object) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, **kw)  # type: ignore[arg-type]
        layers: list[nn.Module] = []
        c, size = in_chans, 1
        for width in (32, 64, 128):
            if size >= patch_size:
                break
            layers += [nn.Conv2d(c, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c, size = width, size * 2
        self.proj = nn.Sequential(*layers, nn.Conv2d(c, embed_dim, 1))  # (B, D, H/p, W/p)


class ZooViT(nn.Module):
    """Per-image standardisation, then a small timm ``VisionTransformer`` with a convolutional stem (module docstring)."""

    def __init__(self, spec: ZooSpec, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.spec = spec
        self.standardize = ImageStandardize()
        self.vit = VisionTransformer(img_size=INPUT_SIZE, patch_size=8, num_classes=num_classes, embed_layer=ConvStemEmbed, **dict(spec.kwargs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 64, 64)
        return self.vit(self.standardize(x))  # (B, classes)

    @property
    def last_conv_stage(self) -> nn.Module:
        """The convolutional stem (Grad-CAM target, on the 8×8 token grid)."""
        return self.vit.patch_embed.proj


def build(name: str) -> ZooNet | ZooViT:
    """A randomly initialised zoo model by name."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO)}")
    spec = ZOO[name]
    return ZooViT(spec) if spec.where == "tokens" else ZooNet(spec)
