"""Batches of frames through a model with capture on, and the one per-frame map of a chosen kind.

The video pipeline and the Video tab call these instead of re-implementing capture and map selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...capture import capture
from ...capture.records import ChannelGate, Record, SamplingGrid, SpatialMask, TokenAttention
from ...maps import click_layers, click_map, rollout_map
from ...models.inputs import card_of, preprocess
from ..errors import UserError
from ..outputs import ModelOutput, Postprocess, interpret_output, resized_labels
from ..session import Engine

KINDS = ("spatial", "channel", "grid", "query", "segmentation", "cls", "rollout")
KIND_HELP = {
    "spatial": "spatial masks (CBAM, scSE, GC)",
    "channel": "channel gates (SE, ECA, CBAM)",
    "grid": "STN sampling grid",
    "query": "attention of a fixed query pixel (Non-Local, DANet, BotNet, CCNet reach, OCR, transformer patches)",
    "segmentation": "predicted segmentation beside the tracked query's attention",
    "cls": "the class token's attention over the patches in one transformer layer, heads averaged (DINO's videos)",
    "rollout": "attention rollout of the class token through the transformer layers up to one (Abnar & Zuidema 2020)",
}


@dataclass
class BatchResult:
    """One captured forward of a batch."""

    output: ModelOutput
    records: dict[str, Record]


def forward_batch(model: nn.Module, frames: Sequence[np.ndarray], card: dict, device: torch.device, postprocess: Postprocess | None = None,
                  autocast: bool = True) -> BatchResult:
    """RGB uint8 frames → one captured forward (autocast fp16 on CUDA) → logits and records."""
    x = preprocess(list(frames), card, device)
    ctx = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" and autocast else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), ctx, capture(model) as cap:
        raw = model(x)
    return BatchResult(interpret_output(raw, postprocess, features=card.get("task") == "features"), dict(cap.records))


def kinds_of(records: dict[str, Record], task: str) -> list[str]:
    """The map kinds a model's records support, in the order the UI offers them."""
    have = []
    if click_layers(records):
        have.append("query")
    if task == "segmentation":
        have.insert(0, "segmentation")
    if any(isinstance(r, SpatialMask) for r in records.values()):
        have.append("spatial")
    if any(isinstance(r, ChannelGate) for r in records.values()):
        have.append("channel")
    if any(isinstance(r, SamplingGrid) for r in records.values()):
        have.append("grid")
    if class_token_layers(records):
        have += ["cls", "rollout"]
    return have


def class_token_layers(records: dict[str, Record]) -> list[str]:
    """Transformer layers whose queries include a class token (the first prefix token), in forward order."""
    return [n for n, r in records.items() if isinstance(r, TokenAttention) and r.query_prefix]


def pick_layer(records: dict[str, Record], kind: str, layer: str | None) -> str:
    """The layer of ``kind`` to show: ``layer`` if valid, else the deepest (a clear error when none)."""
    if kind not in KINDS:
        raise UserError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}.")
    if kind in ("query", "segmentation"):
        names = list(click_layers(records))
    elif kind == "cls":
        names = class_token_layers(records)
    elif kind == "rollout":  # layers whose chain of same-grid layers starts with a class token
        layers = click_layers(records)
        names = [n for n in class_token_layers(records) if "rollout" in layers[n].views and layers[n].chain[0].query_prefix]  # type: ignore[attr-defined]
    else:
        cls = {"spatial": SpatialMask, "channel": ChannelGate, "grid": SamplingGrid}[kind]
        names = [n for n, r in records.items() if isinstance(r, cls)]
    if not names:
        if kind == "segmentation":
            return ""
        raise UserError(f"The model has no {KIND_HELP[kind]}. Kinds it has: {', '.join(kinds_of(records, 'classification')) or 'none'}.")
    if layer is None:
        return names[-1]
    if layer not in names:
        raise UserError(f"layer must be one of: {', '.join(names)} (for kind {kind}); got {layer!r}.")
    return layer


def layer_heads(records: dict[str, Record], kind: str, layer: str) -> int:
    """How many heads a ``query`` or ``cls`` map of ``layer`` can be shown for (1: no separate heads, or another kind)."""
    if kind == "cls" and isinstance(records.get(layer), TokenAttention):
        return records[layer].heads  # type: ignore[union-attr]
    if kind == "query" and layer in (cl := click_layers(records)) and cl[layer].kind in ("affinity", "tokens", "window"):
        return cl[layer].heads
    return 1


def frame_map(records: dict[str, Record], kind: str, layer: str, b: int, query: tuple[float, float], frame_hw: tuple[int, int],
              head: int | None = None) -> np.ndarray:
    """The map of sample ``b``: spatial mask, gate vector, or the query's row / reach (feature resolution); ``head`` picks one
    head of a ``query`` or ``cls`` map (None: their mean)."""
    rec = records.get(layer)
    if kind == "spatial":
        return rec.mask[b].numpy()  # type: ignore[union-attr]
    if kind == "channel":
        return rec.weights[b].numpy()  # type: ignore[union-attr]
    if kind == "cls":
        return rec.prefix_row(0, batch=b, head=head).numpy()  # type: ignore[union-attr]
    cl = click_layers(records)[layer]
    if kind == "rollout":
        return rollout_map(cl.chain, 0, batch=b).numpy()  # type: ignore[arg-type]
    return click_map(cl, query[0], query[1], frame_hw, view=cl.default_view, batch=b, head=head if kind == "query" else None).numpy()


def labels_of(output: ModelOutput, b: int, hw: tuple[int, int]) -> np.ndarray:
    """Segmentation: predicted class per pixel of sample ``b`` at ``hw``."""
    return resized_labels(output.logits[b].float().cpu(), hw).numpy()


def kinds_for(engine: Engine, model_name: str) -> tuple[list[str], str]:
    """The kinds a model supports (found with one tiny capture of a grey frame) and a one-line note."""
    model = engine.catalog.get(model_name)
    card = card_of(model)
    h, w = (int(v) for v in card["input_size"])
    with engine.model_lock(model_name):
        res = forward_batch(model, [np.full((h, w, 3), 128, np.uint8)], card, engine.catalog.device, engine.catalog.entry(model_name).postprocess)
    have = kinds_of(res.records, res.output.task)
    if not have:
        return [], f"{model_name} has no attention map attnviz can draw over time; choose another model."
    return have, "Maps this model has: " + "; ".join(f"**{k}** — {KIND_HELP[k]}" for k in have) + "."
