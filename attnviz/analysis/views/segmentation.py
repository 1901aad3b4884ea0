"""Segmentation views: the predicted segmentation with its legend, and Grad-CAM of a clicked segment."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ... import render
from ...maps import grad_cam
from ..errors import UserError
from ..outputs import interpret_output, resized_labels
from ..session import Analysis, Engine, Style
from .attributions import cam_layer, module_name
from .click import point
from .draw import overlay_map


def segmentation_view(a: Analysis, alpha: float = 0.5) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Predicted segmentation over the image (drawn enlarged for tiny images) and the legend rows."""
    if a.task != "segmentation":
        raise UserError(f"{a.model_name} is a classifier; it has no segmentation to show.")
    if not 0 <= float(alpha) <= 1:
        raise UserError(f"opacity must lie between 0 and 1; got {alpha!r}.")
    k = a.display_scale
    labels = a.labels()
    if k > 1:
        labels = np.repeat(np.repeat(labels, k, axis=0), k, axis=1)
    assert a.palette is not None
    return render.label_overlay(a.display_image(), labels, a.palette, float(alpha)), a.legend()


def segment_gradcam(engine: Engine, a: Analysis, x: Any, y: Any, style: Style | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """captum Grad-CAM for the clicked pixel's class, summed over that class's predicted segment."""
    if a.task != "segmentation":
        raise UserError("Grad-CAM over a segment needs a segmentation model.")
    style = (style or Style()).check()
    fx, fy = point(a, x, y)
    labels = a.labels()
    cls = int(labels[int(fy), int(fx)])
    model = engine.catalog.get(a.model_name)
    entry = engine.catalog.entry(a.model_name)
    xin = a.x.clone()
    with torch.no_grad():
        out = interpret_output(model(xin), entry.postprocess).logits
    mask = torch.from_numpy(resized_labels(out[0].float().cpu(), tuple(out.shape[-2:])).numpy() == cls).to(out.device)  # type: ignore[arg-type]

    class Target(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1): the class's logit summed over its segment
            logits = interpret_output(self.model(t), entry.postprocess).logits
            return (logits[:, cls] * mask).sum((1, 2))[:, None]

    with engine.model_lock(a.model_name), torch.enable_grad():
        layer = cam_layer(engine, a, model, xin)
        cam = grad_cam(Target(), layer, xin, 0)[0].detach().float().cpu().numpy()
    img = overlay_map(a, cam, style, point=(fx, fy), unit="Grad-CAM (ReLU)")
    area = float((labels == cls).mean())
    on = mass_on(cam, labels == cls)
    return img, {"class": a.label(cls), "segment_area_share": round(area, 4), "layer": module_name(model, layer),
                 "mass_on_segment": None if on is None else round(on, 4),
                 "mass_ratio": None if on is None or area == 0 else round(on / area, 3),
                 "method": "captum LayerGradCam of the class logit summed over the predicted segment"}


def mass_on(m: np.ndarray, region: np.ndarray) -> float | None:
    """The share of a non-negative map's mass inside a boolean ``(H, W)`` region, the map resized bilinearly to it (None if the map is all 0)."""
    up = np.clip(render.resize_map(np.asarray(m, np.float32), region.shape), 0, None)
    total = float(up.sum())
    return None if total <= 0 else float(up[region].sum()) / total
