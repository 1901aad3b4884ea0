"""The modules view: every captured layer with its contribution, a JSON summary, and ablation of one layer."""

from __future__ import annotations

import math
from typing import Any

import torch
from matplotlib.figure import Figure

from ... import render
from ...capture.records import Affinity, Record
from ...maps import ClickLayer, click_layers
from ...maps import ablate as bypass
from ..errors import UserError
from ..outputs import interpret_output
from ..session import Analysis, Engine

NEAR_IDENTITY = 0.01  # contribution below which a block "barely changes its input"


def contribution_note(r: Record, c: float | None) -> str:
    """Why a layer shows no contribution ‖out − x‖ / ‖x‖ (empty when it shows one, or the reason is not known)."""
    if c is not None and math.isnan(c):
        return "its input is all zeros on this image (e.g. after a zero-initialised BatchNorm): ‖out−x‖/‖x‖ is undefined"
    return r.contribution_note if c is None else ""


def modules_table(a: Analysis) -> list[list[Any]]:
    """Rows: layer, kind, module, source, shape, contribution, note."""
    rows = []
    for name, r in a.records.items():
        c = None if r.contribution is None else float(r.contribution[0])
        note = contribution_note(r, c)
        if c is not None and math.isnan(c):
            c = None
        elif c is not None and c < NEAR_IDENTITY:
            note = (f"barely changes its input (‖out−x‖/‖x‖ = {c:.4f}): γ≈0, a zero-initialised last layer "
                    "or a gate ≈ 1 — its maps are real but have almost no effect on the output")
        main = [v for k, v in r.arrays().items() if k != "contribution"]
        shape = "×".join(str(s) for s in main[0].shape[1:]) if main else ""
        rows.append([name, r.kind, r.module_type, r.source, shape, None if c is None else round(c, 4), note])
    for s in a.seen:
        rows.append([s["module"] or "(model)", "seen, not drawn", s["op"], "provenance", "×".join(map(str, s["shape"][1:])), None, s["reason"]])
    return rows


def _click_layer_facts(cl: ClickLayer) -> dict[str, Any]:
    """Views, heads and the grid under the image; for query → key attention also the grids of the exported matrix, and
    the blocks of cells where positions run past the image's edge (``[bh, bw, H, W]``: LeViT's last stage)."""
    out: dict[str, Any] = {"views": list(cl.views), "heads": cl.heads, "feature_hw": list(cl.feature_hw)}
    rec = cl.records[0]
    if isinstance(rec, Affinity):
        out.update(query_hw=list(rec.query_hw), key_hw=list(rec.key_hw))
        out.update({k: list(v) for k, v in (("query_cells", rec.query_cells), ("key_cells", rec.key_cells)) if v is not None})
    return out


def summary(a: Analysis) -> dict[str, Any]:
    """JSON-able description of an analysis (what the API's ``analyze`` returns)."""
    kinds: dict[str, int] = {}
    for r in a.records.values():
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    out: dict[str, Any] = {
        "model": a.model_name, "task": a.task, "image_size": [a.hw[1], a.hw[0]], "source_size": list(a.source_size),
        "source_mode": a.source_mode, "model_input_size": [int(a.x.shape[-1]), int(a.x.shape[-2])], "device": a.device,
        "forward_ms": round(a.forward_ms, 2), "notes": a.notes, "trained_on": a.trained_on,
        "layers": {n: r.kind for n, r in a.records.items()}, "kinds": kinds, "seen_not_drawn": a.seen,
        "click_layers": {n: _click_layer_facts(cl) for n, cl in click_layers(a.records).items()},
    }
    if a.task == "segmentation":
        out["classes_present"] = [{"name": r["name"], "area": round(float(r["area"]), 4), "colour": r["colour"]} for r in a.legend()]  # type: ignore[arg-type]
    else:
        out["top5"] = a.top(5)
    return out


def status_line(a: Analysis) -> str:
    """One line: device, forward time, input size and how the image was resized."""
    h, w = a.hw
    ih, iw = int(a.x.shape[-2]), int(a.x.shape[-1])
    resize = "not resized" if (h, w) == (ih, iw) else f"resized {w}×{h} → {iw}×{ih}"
    return f"{a.model_name} · {a.task} · {a.device.upper()} · forward {a.forward_ms:.1f} ms · image {w}×{h}, {resize}"


def _feature_change(record_name: str, what: str, b: torch.Tensor, af: torch.Tensor) -> tuple[Figure, dict[str, Any]]:
    """A backbone without classes: how much its features move (the 12 that move most drawn)."""
    idx = (af - b).abs().topk(min(12, b.numel())).indices
    fig = render.logit_change([f"feature {int(i)}" for i in idx], b[idx].numpy(), af[idx].numpy(), title=what + " (the features that move most)")
    rel = float((af - b).norm() / b.norm().clamp_min(1e-12))
    cos = float(torch.nn.functional.cosine_similarity(af, b, dim=0))
    return fig, {"layer": record_name, "change": what, "relative_feature_change": round(rel, 4), "cosine_similarity": round(cos, 4)}


def ablate(engine: Engine, a: Analysis, record_name: str) -> tuple[Figure, dict[str, Any]]:
    """Bypass one module (gate = 1 / γ = 0) and show how the output changes."""
    if record_name not in a.records:
        raise UserError(f"layer must be one of: {', '.join(a.records)}; got {record_name!r}.")
    model = engine.catalog.get(a.model_name)
    entry = engine.catalog.entry(a.model_name)
    lock = engine.model_lock(a.model_name)
    try:
        with lock:
            before, after, what = bypass(model, a.x, record_name)
    except ValueError as e:
        raise UserError(str(e)) from None
    feats = a.task == "features"
    b = interpret_output(before, entry.postprocess, features=feats).logits[0].float().cpu()
    af = interpret_output(after, entry.postprocess, features=feats).logits[0].float().cpu()
    if feats:
        return _feature_change(record_name, what, b, af)
    if a.task == "segmentation":  # compare per-class mean logits and the share of pixels whose class changes
        changed = float((b.argmax(0) != af.argmax(0)).float().mean())
        b, af = b.mean((1, 2)), af.mean((1, 2))
    names = a.class_names or [f"class {i}" for i in range(b.numel())]
    fig = render.logit_change(names, b.numpy(), af.numpy(), title=what + (" (mean logit per class)" if a.task == "segmentation" else ""))
    pb, pa = b.softmax(0), af.softmax(0)
    top = int(pb.argmax())
    info = {"layer": record_name, "change": what, "max_abs_logit_change": round(float((af - b).abs().max()), 4)}
    if a.task == "segmentation":
        info["pixels_changing_class"] = round(changed, 4)
    else:
        info.update(top_class=a.label(top), top_prob_before=round(float(pb[top]), 4), top_prob_after=round(float(pa[top]), 4),
                    prediction_after=a.label(int(pa.argmax())))
    return fig, info
