"""Evaluate a zoo model on held-out test scenes: ``attnviz evaluate --model NAME [--n 2000]``.

Scenes come from the t10k split in chunks of 250 with seeds ``seed·1000 + chunk``, so the first
500 scenes of a 2000-scene run are exactly a 500-scene run. Every map score is reported next to the
centre-point baseline (how often the canvas centre alone falls inside the box) and next to captum's
Grad-CAM on the last convolutional stage, the reference the native maps are compared with.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import torch
from torch import nn

from .capture import Affinity, CrissCross, SamplingGrid, SpatialMask, capture
from .data import SceneConfig, SceneGenerator, centre_in_box, normalize
from .maps import (
    criss_cross_reach,
    grad_cam,
    js_divergence,
    mass_ratio,
    nearest_centroid_accuracy,
    pointing,
    quad_iou,
    sampled_quad,
    upsample_map,
)
from .models.zoo import INPUT_SIZE, NUM_CLASSES

CHUNK = 250
CHECK_N = 500  # scenes the test suite re-evaluates against ``evaluation_check`` in each card


def test_scenes(n: int, seed: int = 0, clutter: bool = True):  # type: ignore[no-untyped-def]
    """Yield the seeded test scenes in chunks of 250 (the last one shorter)."""
    gen = SceneGenerator("test", SceneConfig(size=INPUT_SIZE))
    for i, start in enumerate(range(0, n, CHUNK)):
        yield gen.generate(min(CHUNK, n - start), seed=seed * 1000 + i, clutter=clutter)


def _feature_point(boxes: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Box centres in feature-grid coordinates (y, x)."""
    cy = (boxes[:, 1] + boxes[:, 3]).float() / 2 / INPUT_SIZE * hw[0]
    cx = (boxes[:, 0] + boxes[:, 2]).float() / 2 / INPUT_SIZE * hw[1]
    return cy.long().clamp(0, hw[0] - 1), cx.long().clamp(0, hw[1] - 1)


def _up(m: torch.Tensor) -> torch.Tensor:
    return upsample_map(m, (INPUT_SIZE, INPUT_SIZE))


@torch.no_grad()
def _native(model: nn.Module, x: torch.Tensor, boxes: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    """Logits and per-scene native-map scores of one chunk."""
    with capture(model) as cap:
        logits = model(x)
    recs = list(cap.records.values())
    out: dict[str, list[Any]] = {}
    b = x.shape[0]
    spatial = [r for r in recs if isinstance(r, SpatialMask)]
    if spatial:
        maps = torch.stack([_up(m) for m in spatial[-1].mask])
        out["spatial_pointing"] = pointing(maps, boxes).float().tolist()
        out["spatial_mass_ratio"] = mass_ratio(maps, boxes).tolist()
        out["spatial_mean"] = spatial[-1].mask.mean((1, 2)).tolist()
    aff = [r for r in recs if isinstance(r, Affinity)]
    if aff:
        a = aff[-1]
        ys, xs = _feature_point(boxes, a.query_hw)
        rows = torch.stack([_up(a.row(int(ys[i]), int(xs[i]), batch=i)) for i in range(b)])
        out["affinity_centre_mass_ratio"] = mass_ratio(rows, boxes).tolist()
        h, w = a.query_hw
        q = torch.randint(0, h * w, (b, 2), generator=gen)
        r1 = torch.stack([a.row(int(q[i, 0]) // w, int(q[i, 0]) % w, batch=i).flatten() for i in range(b)])
        r2 = torch.stack([a.row(int(q[i, 1]) // w, int(q[i, 1]) % w, batch=i).flatten() for i in range(b)])
        out["affinity_query_js"] = js_divergence(r1, r2).tolist()
    cc = [r for r in recs if isinstance(r, CrissCross)]
    if len(cc) >= 2:
        ys, xs = _feature_point(boxes, cc[0].hw)
        reach = torch.stack([_up(criss_cross_reach(cc[0], cc[1], int(ys[i]), int(xs[i]), batch=i)) for i in range(b)])
        loop1 = torch.stack([_up(cc[0].row(int(ys[i]), int(xs[i]), batch=i)) for i in range(b)])
        out["ccnet_reach_mass_ratio"] = mass_ratio(reach, boxes).tolist()
        out["ccnet_loop1_mass_ratio"] = mass_ratio(loop1, boxes).tolist()
    grids = [r for r in recs if isinstance(r, SamplingGrid)]
    if grids:
        g = grids[0]
        quads = torch.stack([sampled_quad(g, i) for i in range(b)])  # (B, 4, 2)
        out["stn_iou"] = quad_iou(quads, boxes, (INPUT_SIZE, INPUT_SIZE)).tolist()
        out["stn_centre"] = quads.mean(1).tolist()
        out["box_centre"] = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1).float().tolist()
    gates = [r for r in recs if r.kind == "channel"]
    if gates:
        out["gates"] = gates[-1].weights.tolist()
    return logits, out


def evaluate(model: nn.Module, n: int = 2000, seed: int = 0, gradcam: bool = True) -> dict[str, Any]:
    """Accuracy and faithfulness of ``model`` (a zoo model in eval mode) on ``n`` test scenes."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    acc: list[float] = []
    centre: list[float] = []
    agg: dict[str, list[Any]] = {}
    labels_all: list[int] = []
    for batch in test_scenes(n, seed):
        x = normalize(batch.images).to(device)
        logits, scores = _native(model, x, batch.boxes, gen)
        pred = logits.argmax(1).cpu()
        acc += (pred == batch.labels).float().tolist()
        centre += centre_in_box(batch.boxes, INPUT_SIZE).float().tolist()
        labels_all += batch.labels.tolist()
        if gradcam and hasattr(model, "last_conv_stage"):
            cam = grad_cam(model, model.last_conv_stage, x, pred.to(device)).cpu()
            scores["gradcam_pointing"] = pointing(cam, batch.boxes).float().tolist()
            scores["gradcam_mass_ratio"] = mass_ratio(cam, batch.boxes).tolist()
        for k, v in scores.items():
            agg.setdefault(k, []).extend(v)
    clean = []
    for batch in test_scenes(min(n, 1000), seed + 1, clutter=False):
        with torch.no_grad():
            clean += (model(normalize(batch.images).to(device)).argmax(1).cpu() == batch.labels).float().tolist()

    def mean(key: str) -> float:
        return round(float(torch.tensor(agg[key], dtype=torch.float64).mean()), 4)

    res: dict[str, Any] = {
        "n": n, "seed": seed, "split": "test (t10k)",
        "accuracy": round(sum(acc) / len(acc), 4),
        "accuracy_clean": round(sum(clean) / len(clean), 4),
        "centre_baseline_pointing": round(sum(centre) / len(centre), 4),
    }
    for key in ("spatial_pointing", "spatial_mass_ratio", "spatial_mean", "affinity_centre_mass_ratio", "affinity_query_js",
                "ccnet_reach_mass_ratio", "ccnet_loop1_mass_ratio", "stn_iou", "gradcam_pointing", "gradcam_mass_ratio"):
        if key in agg:
            res[key] = mean(key)
    if "stn_centre" in agg:
        sc, bc = torch.tensor(agg["stn_centre"]), torch.tensor(agg["box_centre"])
        corr = [float(torch.corrcoef(torch.stack([sc[:, i], bc[:, i]]))[0, 1]) for i in range(2)]
        res["stn_centre_correlation"] = round(sum(corr) / 2, 4)
    if "gates" in agg:
        res["gate_class_selectivity"] = round(nearest_centroid_accuracy(torch.tensor(agg["gates"]), torch.tensor(labels_all), NUM_CLASSES), 4)
    return res


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``attnviz evaluate``."""
    p = p or argparse.ArgumentParser(prog="attnviz evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-card", action="store_true", help="store the result in pretrained/NAME.json")
    return p


def run(args: argparse.Namespace) -> int:
    """Evaluate and print JSON (optionally store it in the model card)."""
    from .models.registry import card_path, load_pretrained

    model = load_pretrained(args.model)
    res = evaluate(model, n=args.n, seed=args.seed)
    print(json.dumps(res, indent=2))
    if args.write_card:
        path = card_path(args.model)
        card = json.loads(path.read_text())
        card["evaluation"] = res
        # the first 500 of these scenes, which the test suite measures again and compares exactly
        card["evaluation_check"] = res if args.n == CHECK_N else evaluate(model, n=CHECK_N, seed=args.seed)
        path.write_text(json.dumps(card, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m attnviz.evaluate``."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
