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


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int, steps: int = 24) -> torch.Tensor:
    """captum ``IntegratedGradients`` from a black baseline, |attribution| summed over channels: ``(B, H, W)``."""
    from captum.attr import IntegratedGradients

    attr = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=steps, internal_batch_size=steps)
    return attr.detach().abs().sum(1)  # (B, H, W)


def occlusion(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int, window: int | None = None) -> torch.Tensor:
    """captum ``Occlusion`` with a square window of ~1/8 of the side, stride half of it: ``(B, H, W)``.

    Positive values mean that hiding the region lowers the target logit.
    """
    from captum.attr import Occlusion

    side = min(x.shape[-2:])
    win = window or max(4, side // 8)
    stride = max(2, win // 2)
    attr = Occlusion(model).attribute(x, sliding_window_shapes=(x.shape[1], win, win), strides=(x.shape[1], stride, stride), target=target,
                                      perturbations_per_eval=16)
    return attr.detach().sum(1).clamp_min(0)  # (B, H, W)
