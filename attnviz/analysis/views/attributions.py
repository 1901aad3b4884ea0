"""Attributions (captum Grad-CAM, IntegratedGradients, Occlusion) beside the native maps, with agreement scores."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ... import render
from ...capture.records import Record, SpatialMask
from ...maps import (
    click_layers,
    click_map,
    grad_cam,
    integrated_gradients,
    occlusion,
    spearman,
    topk_iou,
)
from ..errors import UserError
from ..outputs import interpret_output
from ..session import Analysis, Engine, Style
from .draw import overlay_map


def native_map_names(a: Analysis) -> list[str]:
    """Names of the maps :func:`native_maps` computes, without computing them."""
    names = [r.name for r in a.of(SpatialMask)]
    return names + [f"{name} (mean {cl.default_view} of 16 queries)" for name, cl in click_layers(a.records).items()]


def native_maps(a: Analysis) -> dict[str, np.ndarray]:
    """Maps to compare with attributions: spatial masks, and for click layers the mean row over queries."""
    maps = [r.mask[0].numpy() for r in a.of(SpatialMask)]  # type: ignore[attr-defined]
    ys, xs = np.meshgrid(np.linspace(0, a.hw[0] - 1, 4), np.linspace(0, a.hw[1] - 1, 4), indexing="ij")
    for cl in click_layers(a.records).values():
        rows = [click_map(cl, float(x), float(y), a.hw, view=cl.default_view).numpy() for x, y in zip(xs.ravel(), ys.ravel())]
        maps.append(np.mean(rows, axis=0))
    return dict(zip(native_map_names(a), maps))


def cam_layer(engine: Engine, a: Analysis, model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The model's Grad-CAM layer: ``last_conv_stage`` if it names one, else found once per loaded model
    (finding it costs a forward and a backward). Call with the model's lock held."""
    layer = getattr(model, "last_conv_stage", None) or engine.cam_layers.get(model)
    if layer is None:
        post = engine.catalog.entry(a.model_name).postprocess
        layer = _grad_cam_layer(model, a.records, int(a.logits.shape[0]), x, lambda o: interpret_output(o, post).logits)
        engine.cam_layers[model] = layer
    return layer


def compare(engine: Engine, a: Analysis, method: str = "Grad-CAM", native: str | None = None, style: Style | None = None,
            topk: float = 0.1) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """An attribution (captum) beside a native map, with Spearman and top-k% IoU agreement."""
    style = (style or Style()).check()
    if a.task == "segmentation":
        raise UserError("For a segmentation model, click a pixel: its class's Grad-CAM over the segment is shown beside the native attention.")
    if a.task == "features":
        raise UserError(f"{a.model_name} is a backbone without classes; attributions explain a class score.")
    maps = native_maps(a)
    if not maps:
        raise UserError(f"{a.model_name} has no spatial or click-dependent attention map to compare with.")
    name = native or list(maps)[-1]
    if name not in maps:
        raise UserError(f"native must be one of: {', '.join(maps)}; got {name!r}.")
    methods = ("Grad-CAM", "IntegratedGradients", "Occlusion")
    if method not in methods:
        raise UserError(f"method must be one of {', '.join(methods)}; got {method!r}.")
    model = engine.catalog.get(a.model_name)
    target = int(a.logits.argmax())
    x = a.x.clone()
    lock = engine.model_lock(a.model_name)
    with lock, torch.enable_grad():
        if method == "Grad-CAM":
            layer = cam_layer(engine, a, model, x)
            attr = grad_cam(model, layer, x, target)[0]
        elif method == "IntegratedGradients":
            attr = integrated_gradients(model, x, target)[0]
        else:
            attr = occlusion(model, x, target)[0]
    attr_np = attr.detach().float().cpu().numpy()
    nat = maps[name]
    nat_t = torch.from_numpy(render.resize_map(nat, attr_np.shape))
    attr_t = torch.from_numpy(attr_np)
    rho = spearman(nat_t, attr_t)
    scores: dict[str, Any] = {
        "native": name, "attribution": method, "target": a.label(target),
        "spearman": None if np.isnan(rho) else round(rho, 4), f"top{int(topk * 100)}%_iou": round(topk_iou(nat_t, attr_t, topk), 4),
    }
    if np.isnan(rho):
        scores["note"] = "Spearman is undefined: one of the two maps is constant (e.g. a Grad-CAM that is zero everywhere)."
    if style.shared:
        nat_img = overlay_map(a, render.to_unit(nat), style, unit="native (scaled to 0–1)", side_by_side=False, vrange=(0.0, 1.0))
        att_img = overlay_map(a, render.to_unit(attr_np), style, unit=f"{method} (scaled to 0–1)", side_by_side=False, vrange=(0.0, 1.0))
    else:
        nat_img = overlay_map(a, nat, style, unit="native map", side_by_side=False)
        att_img = overlay_map(a, attr_np, style, unit=method, side_by_side=False)
    return nat_img, att_img, scores


def module_name(model: nn.Module, layer: nn.Module) -> str:
    for n, m in model.named_modules():
        if m is layer:
            return n
    return type(layer).__name__


def _grad_cam_layer(model: nn.Module, records: Mapping[str, Record], num_classes: int, x: torch.Tensor,
                    logits_of: Callable[[Any], torch.Tensor]) -> nn.Module:
    """Grad-CAM target for a model without ``last_conv_stage``: the last Conv2d *the output depends on*, in
    execution order, outside attention modules and other than the 1×1 classifier (an auxiliary head that
    is defined later but not used for the output, as in torchvision's segmentation models, is skipped)."""
    inside = tuple(r.name.split("#")[0].rsplit(".", 1)[0] + "." for r in records.values()) + tuple(r.name.split("#")[0] + "." for r in records.values())
    convs = [m for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and not (name + ".").startswith(inside)]
    if not convs:
        raise UserError("Grad-CAM needs a convolutional layer; this model has none.")
    feature = [m for m in convs if not (m.kernel_size == (1, 1) and m.out_channels == num_classes)] or convs
    order: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: order.append((mod, out)) if isinstance(out, torch.Tensor) else None)
             for m in feature]
    try:
        with torch.enable_grad():
            logits = logits_of(model(x.detach().requires_grad_(True)))
            grads = torch.autograd.grad(logits.float().sum(), [o for _, o in order], allow_unused=True) if order else []
    finally:
        for h in hooks:
            h.remove()
    used = [m for (m, _), g in zip(order, grads) if g is not None]
    if not used:
        raise UserError("Grad-CAM needs a convolutional layer that the output depends on; this model has none.")
    return used[-1]
