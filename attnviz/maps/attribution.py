"""Attributions from captum, as maps comparable with native attention."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
    """captum ``LayerGradCam`` on ``layer``, ReLU'd and upsampled to the input size: ``(B, H, W)``."""
    from captum.attr import LayerGradCam

    cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)  # (B, 1, h, w)
    return F.interpolate(cam.detach(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
