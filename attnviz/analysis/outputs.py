"""What a model returned, made uniform: classification logits ``(B, K)`` or dense logits ``(B, K, h, w)``.

Accepted outputs: a tensor, a dict with ``"out"`` (torchvision's segmentation models) or with a single
tensor, a tuple or list (the first element is the main output), an object with ``.logits`` (Hugging
Face), or anything a user post-processing function turns into one of these. The task is inferred
from the shape: 2-D is classification, 4-D is segmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

Postprocess = Callable[[Any], Any]


class OutputError(ValueError):
    """A model output that is neither classification nor segmentation logits."""


@dataclass
class ModelOutput:
    """A model's main output.

    Attributes:
        task: ``"classification"``, ``"segmentation"`` or ``"features"`` (a backbone without classes).
        logits: ``(B, K)`` or ``(B, K, h, w)`` float; features ``(B, D)``.
    """

    task: str
    logits: torch.Tensor


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        return f"a dict with keys {list(out)[:6]}"
    return type(out).__name__


def _features(out: Any, raw: Any) -> torch.Tensor:
    """A backbone's output as one vector per image ``(B, D)``: as it is, tokens averaged, or a feature map pooled (HF outputs:
    ``pooler_output``, else ``last_hidden_state``)."""
    if not isinstance(out, torch.Tensor):
        get = out.get if isinstance(out, Mapping) else (lambda k: getattr(out, k, None))
        pooled, hidden = get("pooler_output"), get("last_hidden_state")
        out = pooled if isinstance(pooled, torch.Tensor) else hidden if isinstance(hidden, torch.Tensor) else (
            out[0] if isinstance(out, (tuple, list)) and out else None)
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.ndim not in (2, 3, 4):
        raise OutputError(f"The backbone returned {_describe(raw)}; attnviz reads (B, D) features, (B, tokens, D) or (B, D, h, w).")
    return out if out.ndim == 2 else out.mean(1) if out.ndim == 3 else out.mean((2, 3))


def interpret_output(out: Any, postprocess: Postprocess | None = None, features: bool = False) -> ModelOutput:
    """The main logits of a forward's output, and the task they imply.

    Args:
        out: What the model returned.
        postprocess: A user function that turns it into logits.
        features: The model is a backbone without classes (its card's task is ``"features"``): task ``"features"``,
            the output as one vector per image.

    Raises:
        OutputError: The output (after ``postprocess``) is not logits of either task; the message
            says what was returned and how to adapt it.
    """
    raw = out
    if postprocess is not None:
        out = postprocess(out)
    if features:
        return ModelOutput("features", _features(out, raw))
    if isinstance(out, Mapping):
        if "out" in out:
            out = out["out"]
        else:
            tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
            if len(tensors) != 1:
                raise OutputError(f"The model returned {_describe(out)}; attnviz reads the key 'out', or a dict with one tensor. "
                                  "Pass a post-processing function that picks the logits.")
            out = tensors[0]
    elif isinstance(out, (tuple, list)) and out:
        out = out[0]
    elif not isinstance(out, torch.Tensor) and isinstance(getattr(out, "logits", None), torch.Tensor):
        out = out.logits
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise OutputError(f"The model returned {_describe(raw)}, not logits. Pass a post-processing function that returns "
                          "(B, classes) or (B, classes, h, w) logits.")
    if out.ndim == 2:
        return ModelOutput("classification", out)
    if out.ndim == 4:
        return ModelOutput("segmentation", out)
    raise OutputError(f"The model returned logits of shape {tuple(out.shape)}; attnviz needs (B, classes) for classification "
                      "or (B, classes, h, w) for segmentation. Pass a post-processing function that reshapes it.")


def source_coords(n_out: int, n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For bilinear resizing ``n_in → n_out`` (align_corners=False): lower index, upper index, weight of upper."""
    scale = n_in / n_out
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_min(0)
    lo = src.floor().long().clamp_max(n_in - 1)
    hi = (lo + 1).clamp_max(n_in - 1)
    return lo, hi, (src - lo).float()


def logits_at(logits: torch.Tensor, out_hw: tuple[int, int], ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Logits ``(n, K)`` at output pixels (ys, xs) of ``logits (K, h, w)`` resized to ``out_hw``.

    Equals indexing ``F.interpolate(logits[None], out_hw, mode="bilinear", align_corners=False)``
    without forming the resized tensor.
    """
    k, h, w = logits.shape
    y0, y1, wy = source_coords(out_hw[0], h)
    x0, x1, wx = source_coords(out_hw[1], w)
    y0, y1, wy = y0[ys], y1[ys], wy[ys][:, None]
    x0, x1, wx = x0[xs], x1[xs], wx[xs][:, None]
    flat = logits.float().permute(1, 2, 0)  # (h, w, K)
    top = flat[y0, x0] * (1 - wx) + flat[y0, x1] * wx
    bottom = flat[y1, x0] * (1 - wx) + flat[y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def resized_labels(logits: torch.Tensor, out_hw: tuple[int, int], rows_per_chunk: int = 64) -> torch.Tensor:
    """Per-pixel argmax ``(H, W)`` (int64) of ``logits (K, h, w)`` bilinearly resized to ``out_hw``.

    Computed in row chunks so that K × H × W floats never exist at once (ADE20K has 150 classes).
    """
    k, h, w = logits.shape
    if (h, w) == tuple(out_hw):
        return logits.argmax(0)
    out = torch.empty(out_hw, dtype=torch.long)
    y0, y1, wy = source_coords(out_hw[0], h)
    cols = F.interpolate(logits.float()[None], size=(h, out_hw[1]), mode="bilinear", align_corners=False)[0]  # (K, h, W): width first
    for start in range(0, out_hw[0], rows_per_chunk):
        sl = slice(start, min(out_hw[0], start + rows_per_chunk))
        a, b, t = y0[sl], y1[sl], wy[sl][None, :, None]
        out[sl] = (cols[:, a] * (1 - t) + cols[:, b] * t).argmax(0)
    return out
