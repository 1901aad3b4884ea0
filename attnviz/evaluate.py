"""Evaluate a zoo model on test scenes v2, per background family: ``attnviz evaluate --model NAME [--atlas DIR]``.

Each family is an atlas run (:mod:`attnviz.atlas`: its engine, captured forward and per-batch function) over the family's
seeded test scenes, with this module's measures as the run's scorer; ``--atlas DIR`` keeps each family's atlas
(dataset-level attention statistics, Parquet tables, report) in ``DIR/FAMILY``. The scorers draw their random queries
from one generator per family, so an evaluation runs its chunks in order on the local engine and never resumes.

Every background family is evaluated on its own (test items from t10k, seeds ``seed·1000 + family
index``), so the report separates families the model trained on (*in-family*) from the ones it never
saw (*held-out*), plus the bundled natural photos it never saw (``photos``). The first ``n`` scenes
of a larger run are exactly an ``n``-scene run, which the test suite re-measures against the card.

Classification: accuracy, top-1 on clean scenes, and map faithfulness (CBAM/scSE/GC mask pointing and
mass ratio; ViT: the last layer's class-token map (heads' mean) pointing and mass ratio, and DINO's mask (60 % of the
mass) against the item's silhouette, Jaccard for the heads' mean map and per head (``--random-weights`` adds the same
architecture at random initialisation beside it); Non-Local/DANet centre-query mass ratio and query dependence; CCNet two-hop mass ratio next
to what uniform criss-cross weights score from the same query; STN IoU and centre correlation; gate
class selectivity; SK: per layer, the Spearman correlation between item size and the weight on the widest
branch, which the SK paper reports growing with object size; captum Grad-CAM as the reference), always
beside the centre-point baseline.

Segmentation: pixel accuracy, mIoU, per-class IoU, foreground/background IoU, and per attention layer
the same-class mass ratio of queries inside objects (CCNet: beside the uniform-weight geometry) and
query dependence; with ``--baseline fcn_seg`` the ΔmIoU with a bootstrap interval over scenes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atlas import AtlasError, AtlasOptions, Item, Source, run_atlas
from .atlas.compute import Scorer, token_jaccard
from .atlas.data import Decoded
from .capture import Affinity, BranchWeights, CrissCross, SamplingGrid, SpatialMask
from .capture.records import RegionAttention, TokenAttention
from .data import (
    CLASSES,
    FAMILIES,
    HELDOUT_FAMILIES,
    SceneBatch,
    SceneConfig,
    SceneGenerator,
    centre_in_box,
    normalize,
)
from .maps import (
    cls_maps,
    criss_cross_reach,
    grad_cam,
    mass_ratio,
    nearest_centroid_accuracy,
    pointing,
    quad_iou,
    query_dependence,
    same_class_mass,
    sampled_quad,
    spearman,
    uniform_reach,
    upsample_map,
)
from .models.seg_zoo import SEG_CLASSES, SEG_INPUT_SIZE
from .models.zoo import INPUT_SIZE, NUM_CLASSES

CHUNK = 200
CHECK_PER_FAMILY = 30  # scenes per family the test suite re-evaluates against ``evaluation_check``
PHOTOS = "photos"  # the held-out natural photos (photo family, held-out photo set)


def test_scenes(family: str, n: int, size: int, items: tuple[int, int], seed: int = 0, clutter: bool = True) -> Iterator[SceneBatch]:
    """Seeded test scenes of one background family (or ``photos``), in chunks of ``CHUNK``."""
    chunks = SceneChunks(family, size, items, seed, clutter)
    for i, start in enumerate(range(0, n, CHUNK)):
        yield chunks.batch(min(CHUNK, n - start), i)


class SceneChunks:
    """The seeded test scenes of one family, chunk by chunk; as an atlas decoder, shard i is chunk i (the same seeds, the
    same scenes) as the model's input (``normalize``), its labels and label maps, the boxes riding along for the scorers."""

    def __init__(self, family: str, size: int, items: tuple[int, int], seed: int = 0, clutter: bool = True) -> None:
        self.family, self.size, self.items, self.seed, self.clutter = family, size, items, seed, clutter

    def batch(self, n: int, chunk: int) -> SceneBatch:
        """Chunk ``chunk`` of the family: ``n`` scenes."""
        names = list(FAMILIES) + [PHOTOS]
        cfg = SceneConfig(size=self.size, items=self.items, families=("photo",) if self.family == PHOTOS else (self.family,),
                          photos="heldout" if self.family == PHOTOS else "train")
        return SceneGenerator("test", cfg).generate(n, seed=(self.seed * 1000 + names.index(self.family)) * 100 + chunk, clutter=self.clutter)

    def __call__(self, items: list[Item], shard: int) -> Decoded:
        batch = self.batch(len(items), shard)
        return Decoded(normalize(batch.images), batch.labels, batch.label_map, [it.path for it in items], extra={"boxes": batch.boxes})


def scene_run(model: nn.Module, family: str, n: int, size: int, items: tuple[int, int], seed: int, scorer: Scorer, clutter: bool = True,
              atlas_dir: Path | None = None) -> None:
    """One atlas run over a family's test scenes (chunks of :data:`CHUNK`, in order) with an evaluation ``scorer``; with
    ``atlas_dir`` the run's atlas (statistics, tables, report) is kept in ``atlas_dir/FAMILY``, else only the scorer's
    measures are made."""
    source = Source([Item(f"scene:{family}:{i}") for i in range(n)], list(CLASSES), description=f"{n} test scenes of family {family}",
                    decoder=SceneChunks(family, size, items, seed, clutter))
    keep = atlas_dir is not None
    with tempfile.TemporaryDirectory(prefix="attnviz-eval-") as tmp:
        out = atlas_dir / (family if clutter else f"{family}-clean") if atlas_dir is not None else Path(tmp)
        if (out / "manifest.json").exists():  # an evaluation measures every scene: it never resumes
            raise AtlasError(f"{out} already holds an atlas; choose an empty --atlas folder")
        opts = AtlasOptions(batch_size=CHUNK, workers=0, seed=seed, statistics=keep, report=keep, scorer=scorer, resume=False,
                            device=str(next(model.parameters()).device), model_name=str((getattr(model, "card", None) or {}).get("name", "")))
        run_atlas(model, source, out, opts)


def _feature_point(boxes: torch.Tensor, hw: tuple[int, int], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Box centres in feature-grid coordinates (y, x)."""
    cy = (boxes[:, 1] + boxes[:, 3]).float() / 2 / size * hw[0]
    cx = (boxes[:, 0] + boxes[:, 2]).float() / 2 / size * hw[1]
    return cy.long().clamp(0, hw[0] - 1), cx.long().clamp(0, hw[1] - 1)


def item_side(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Item size per scene: √(box area) as a share of the canvas side. ``boxes``: (B, 4) x0, y0, x1, y1."""
    return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float().sqrt() / size  # (B,)


def _mean(values: list[float]) -> float:
    v = [x for x in values if x == x]  # drop NaN
    return round(float(np.mean(v)), 4) if v else float("nan")


# ---------------------------------------------------------------------------------------------- classification
def _class_token(rec: TokenAttention, boxes: torch.Tensor, truth: torch.Tensor | None, size: int) -> dict[str, list[Any]]:
    """The class token's map of one layer (heads' mean), per scene: pointing and mass ratio; with the silhouettes
    ``truth`` (B, S, S) (0 = background), the Jaccard of DINO's 60 %-mass mask, for the heads' mean and per head (mean)."""
    maps = torch.stack([cls_maps(rec, i) for i in range(boxes.shape[0])])  # (B, heads, Hk, Wk)
    mean = maps.mean(1)
    up = torch.stack([upsample_map(m, (size, size)) for m in mean])
    out: dict[str, list[Any]] = {"cls_pointing": pointing(up, boxes).float().tolist(), "cls_mass_ratio": mass_ratio(up, boxes).tolist()}
    if truth is not None:
        jac = [token_jaccard(m, t) for m, t in zip(maps, truth)]  # the atlas's measure, scene by scene
        out["cls_jaccard"] = [float(j["_mean_mask_jaccard"]) for j in jac]
        out["cls_jaccard_heads"] = [float(j["mask_jaccard"].mean()) for j in jac]
    return out


@torch.no_grad()
def _native(records: dict[str, Any], x: torch.Tensor, boxes: torch.Tensor, gen: torch.Generator, truth: torch.Tensor | None = None) -> dict[str, list[Any]]:
    """Per-scene native-map scores of one chunk of classification scenes, from its captured records (``truth``: the
    scenes' label maps, for the class-token mask)."""
    size = x.shape[-1]

    def up(m: torch.Tensor) -> torch.Tensor:
        return upsample_map(m, (size, size))

    recs = list(records.values())
    out: dict[str, list[Any]] = {}
    b = x.shape[0]
    spatial = [r for r in recs if isinstance(r, SpatialMask)]
    if spatial:
        maps = torch.stack([up(m) for m in spatial[-1].mask])
        out["spatial_pointing"] = pointing(maps, boxes).float().tolist()
        out["spatial_mass_ratio"] = mass_ratio(maps, boxes).tolist()
        out["spatial_mean"] = spatial[-1].mask.mean((1, 2)).tolist()
    aff = [r for r in recs if isinstance(r, Affinity)]
    if aff:
        a = aff[-1]
        ys, xs = _feature_point(boxes, a.query_hw, size)
        rows = torch.stack([up(a.row(int(ys[i]), int(xs[i]), batch=i)) for i in range(b)])
        out["affinity_centre_mass_ratio"] = mass_ratio(rows, boxes).tolist()
        h, w = a.query_hw
        q = torch.randint(0, h * w, (b, 2), generator=gen)
        r1 = torch.stack([a.row(int(q[i, 0]) // w, int(q[i, 0]) % w, batch=i).flatten() for i in range(b)])
        r2 = torch.stack([a.row(int(q[i, 1]) // w, int(q[i, 1]) % w, batch=i).flatten() for i in range(b)])
        qd = [query_dependence(r1[i : i + 1], r2[i : i + 1]) for i in range(b)]
        out["affinity_query_js"] = [d["js"] for d in qd]
        out["affinity_same_peak"] = [d["same_peak"] for d in qd]
    cc = [r for r in recs if isinstance(r, CrissCross)]
    if len(cc) >= 2:
        ys, xs = _feature_point(boxes, cc[0].hw, size)
        reach = torch.stack([up(criss_cross_reach(cc[0], cc[1], int(ys[i]), int(xs[i]), batch=i)) for i in range(b)])
        uniform = torch.stack([up(uniform_reach(cc[0].hw, int(ys[i]), int(xs[i]))) for i in range(b)])
        loop1 = torch.stack([up(cc[0].row(int(ys[i]), int(xs[i]), batch=i)) for i in range(b)])
        out["ccnet_reach_mass_ratio"] = mass_ratio(reach, boxes).tolist()
        out["ccnet_uniform_reach_mass_ratio"] = mass_ratio(uniform, boxes).tolist()
        out["ccnet_loop1_mass_ratio"] = mass_ratio(loop1, boxes).tolist()
    grids = [r for r in recs if isinstance(r, SamplingGrid)]
    if grids:
        g = grids[0]
        quads = torch.stack([sampled_quad(g, i) for i in range(b)])  # (B, 4, 2)
        out["stn_iou"] = quad_iou(quads, boxes, (size, size)).tolist()
        out["stn_centre"] = quads.mean(1).tolist()
        out["box_centre"] = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1).float().tolist()
    tokens = [r for r in recs if isinstance(r, TokenAttention) and r.query_prefix]
    if tokens:
        out.update(_class_token(tokens[-1], boxes, truth, size))
    gates = [r for r in recs if r.kind == "channel"]
    if gates:
        out["gates"] = gates[-1].weights.tolist()
    branches = [r for r in recs if isinstance(r, BranchWeights)]
    if branches:  # zoo SK: branch m is dilated m + 1, so the last branch has the widest receptive field
        out["item_size"] = item_side(boxes, size).tolist()
        for r in branches:
            out[f"{SK_WEIGHT}{r.name}"] = r.weights[:, -1].mean(1).tolist()  # (B,) mean over channels
    return out


SK_WEIGHT = "sk_widest_weight:"  # per-scene score key prefix, one per SK layer
CLS_KEYS = ("accuracy", "centre_baseline_pointing", "spatial_pointing", "spatial_mass_ratio", "spatial_mean", "affinity_centre_mass_ratio",
            "affinity_query_js", "affinity_same_peak", "ccnet_reach_mass_ratio", "ccnet_uniform_reach_mass_ratio", "ccnet_loop1_mass_ratio",
            "stn_iou", "gradcam_pointing", "gradcam_mass_ratio", "cls_pointing", "cls_mass_ratio", "cls_jaccard", "cls_jaccard_heads")


class _ClassificationScorer:
    """Accumulates a family's classification measures chunk by chunk (one generator for the random queries, in order)."""

    def __init__(self, seed: int, gradcam: bool) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.gradcam = gradcam
        self.agg: dict[str, list[Any]] = {"accuracy": [], "centre_baseline_pointing": []}
        self.labels: list[int] = []

    def __call__(self, model: nn.Module, batch: Decoded, task: str, logits: torch.Tensor, records: dict[str, Any]) -> dict[str, list[Any]]:
        boxes = batch.extra["boxes"]
        x = batch.x.to(next(model.parameters()).device)
        scores = _native(records, x, boxes, self.gen, batch.masks)
        pred = logits.argmax(1).cpu()
        self.agg["accuracy"] += (pred == batch.labels).float().tolist()
        self.agg["centre_baseline_pointing"] += centre_in_box(boxes, INPUT_SIZE).float().tolist()
        self.labels += batch.labels.tolist()
        if self.gradcam and hasattr(model, "last_conv_stage"):
            cam = grad_cam(model, model.last_conv_stage, x, pred.to(x.device)).cpu()
            scores["gradcam_pointing"] = pointing(cam, boxes).float().tolist()
            scores["gradcam_mass_ratio"] = mass_ratio(cam, boxes).tolist()
        for k, v in scores.items():
            self.agg.setdefault(k, []).extend(v)
        return {f"evaluate:{k}": v for k, v in scores.items() if k in CLS_KEYS}


def _classification_family(model: nn.Module, family: str, n: int, seed: int, gradcam: bool, atlas_dir: Path | None = None) -> dict[str, Any]:
    scorer = _ClassificationScorer(seed, gradcam)
    scene_run(model, family, n, INPUT_SIZE, (1, 1), seed, scorer, atlas_dir=atlas_dir)
    agg, labels_all = scorer.agg, scorer.labels
    res: dict[str, Any] = {"n": n}
    for key in CLS_KEYS:
        if key in agg:
            res[key] = _mean(agg[key])
    if "stn_centre" in agg:
        sc, bc = torch.tensor(agg["stn_centre"]), torch.tensor(agg["box_centre"])
        res["stn_centre_correlation"] = round(sum(float(torch.corrcoef(torch.stack([sc[:, i], bc[:, i]]))[0, 1]) for i in range(2)) / 2, 4)
    if "gates" in agg:
        res["gate_class_selectivity"] = round(nearest_centroid_accuracy(torch.tensor(agg["gates"]), torch.tensor(labels_all), NUM_CLASSES), 4)
    sk = {k[len(SK_WEIGHT):]: torch.tensor(v) for k, v in agg.items() if k.startswith(SK_WEIGHT)}
    if sk:
        size = torch.tensor(agg["item_size"])
        res["layers"] = {name: {"sk_size_spearman": round(spearman(size, w), 4)} for name, w in sk.items()}
    return res


# ---------------------------------------------------------------------------------------------- segmentation
def _query_points(label_map: torch.Tensor, hw: tuple[int, int], k: int, gen: torch.Generator) -> list[tuple[int, int, int]]:
    """Up to ``k`` random feature cells (fy, fx, class) whose image pixel lies on an object."""
    s = label_map.shape[-1]
    ys, xs = torch.nonzero(label_map > 0, as_tuple=True)
    if len(ys) == 0:
        return []
    pick = torch.randint(len(ys), (k,), generator=gen)
    out = []
    for i in pick.tolist():
        y, x = int(ys[i]), int(xs[i])
        out.append((min(hw[0] - 1, y * hw[0] // s), min(hw[1] - 1, x * hw[1] // s), int(label_map[y, x])))
    return out


def _layer_rows(rec_list: list[Any], fy: int, fx: int, b: int) -> dict[str, torch.Tensor]:
    """The query maps of one attention layer at a feature cell: name → ``(h, w)`` map."""
    r0 = rec_list[0]
    if isinstance(r0, Affinity):
        return {"row": r0.row(fy, fx, batch=b)}
    if isinstance(r0, CrissCross):
        out = {"loop1": r0.row(fy, fx, batch=b)}
        if len(rec_list) > 1:
            out["reach"] = criss_cross_reach(r0, rec_list[1], fy, fx, batch=b)
            out["uniform_reach"] = uniform_reach(r0.hw, fy, fx)
        return out
    if isinstance(r0, RegionAttention):
        return {"regions": r0.pixel_map(fy, fx, batch=b)}
    return {}


class _SegmentationScorer:
    """Accumulates a family's segmentation measures chunk by chunk (one generator for the query points, in order)."""

    def __init__(self, seed: int, num_classes: int, queries: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.k, self.queries = num_classes, queries
        self.inter = np.zeros((0, num_classes))
        self.union = np.zeros((0, num_classes))
        self.correct = self.total = 0
        self.fg = np.zeros(2)  # foreground intersection, union
        self.bg = np.zeros(2)
        self.layer_scores: dict[str, dict[str, list[float]]] = {}

    def __call__(self, model: nn.Module, batch: Decoded, task: str, logits: torch.Tensor, records: dict[str, Any]) -> dict[str, list[Any]]:
        pred = logits.argmax(1).cpu()
        gt = batch.masks
        assert gt is not None
        self.correct += int((pred == gt).sum())
        self.total += gt.numel()
        ci = np.stack([((pred == c) & (gt == c)).flatten(1).sum(1).numpy() for c in range(self.k)], 1)
        cu = np.stack([((pred == c) | (gt == c)).flatten(1).sum(1).numpy() for c in range(self.k)], 1)
        self.inter, self.union = np.concatenate([self.inter, ci]), np.concatenate([self.union, cu])
        self.fg += [int(((pred > 0) & (gt > 0)).sum()), int(((pred > 0) | (gt > 0)).sum())]
        self.bg += [int(((pred == 0) & (gt == 0)).sum()), int(((pred == 0) | (gt == 0)).sum())]
        layers: dict[str, list[Any]] = {}
        for name, rec in records.items():
            if isinstance(rec, (Affinity, CrissCross, RegionAttention)):
                layers.setdefault(name.split("#")[0], []).append(rec)
        for lname, recs in layers.items():
            self._layer(lname, recs, gt, batch.x.shape[0])
        return {"evaluate:pixel_accuracy": ((pred == gt).flatten(1).float().mean(1)).tolist()}

    def _layer(self, lname: str, recs: list[Any], gt: torch.Tensor, b_size: int) -> None:
        sc = self.layer_scores.setdefault(lname, {})
        hw = recs[0].query_hw if isinstance(recs[0], (Affinity, RegionAttention)) else recs[0].hw
        for b in range(b_size):
            for fy, fx, cls in _query_points(gt[b], hw, self.queries, self.gen):
                for view, m in _layer_rows(recs, fy, fx, b).items():
                    if view == "regions":
                        continue
                    up = upsample_map(m, gt.shape[-2:])[None]
                    sc.setdefault(f"{view}_same_class_mass_ratio", []).append(float(same_class_mass(up, gt[b][None], torch.tensor([cls]))[0]))
            # query dependence: two random queries anywhere in the image
            h, w = hw
            q = torch.randint(0, h * w, (2,), generator=self.gen)
            ra = _layer_rows(recs, int(q[0]) // w, int(q[0]) % w, b)
            rb = _layer_rows(recs, int(q[1]) // w, int(q[1]) % w, b)
            key = "reach" if "reach" in ra else "row" if "row" in ra else "regions" if "regions" in ra else "loop1"
            qd = query_dependence(ra[key].flatten()[None], rb[key].flatten()[None])
            sc.setdefault("query_js", []).append(qd["js"])
            sc.setdefault("query_same_peak", []).append(qd["same_peak"])


def _segmentation_family(model: nn.Module, family: str, n: int, seed: int, num_classes: int, queries: int = 4,
                         atlas_dir: Path | None = None) -> dict[str, Any]:
    sc = _SegmentationScorer(seed, num_classes, queries)
    scene_run(model, family, n, SEG_INPUT_SIZE, (1, 6), seed, sc, atlas_dir=atlas_dir)
    inter, union, correct, total, fg, bgc, layer_scores = sc.inter, sc.union, sc.correct, sc.total, sc.fg, sc.bg, sc.layer_scores
    iou = inter.sum(0) / np.maximum(union.sum(0), 1)
    present = union.sum(0) > 0
    res: dict[str, Any] = {
        "n": n, "pixel_accuracy": round(correct / max(total, 1), 4), "miou": round(float(iou[present].mean()), 4),
        "per_class_iou": [round(float(v), 4) if p else None for v, p in zip(iou, present)],
        "foreground_iou": round(fg[0] / max(fg[1], 1), 4), "background_iou": round(bgc[0] / max(bgc[1], 1), 4),
        "layers": {k: {m: _mean(v) for m, v in d.items()} for k, d in layer_scores.items()},
        "_inter": inter, "_union": union,
    }
    return res


def _bootstrap_delta(a_inter: np.ndarray, a_union: np.ndarray, b_inter: np.ndarray, b_union: np.ndarray, reps: int = 1000, seed: int = 0) -> dict[str, float]:
    """ΔmIoU (a − b) over the same scenes with a 95% bootstrap interval (scenes resampled)."""
    rng = np.random.default_rng(seed)
    n = a_inter.shape[0]

    def miou(inter: np.ndarray, union: np.ndarray) -> float:
        u = union.sum(0)
        return float((inter.sum(0)[u > 0] / u[u > 0]).mean())

    delta = miou(a_inter, a_union) - miou(b_inter, b_union)
    draws = []
    for _ in range(reps):
        idx = rng.integers(0, n, n)
        draws.append(miou(a_inter[idx], a_union[idx]) - miou(b_inter[idx], b_union[idx]))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"delta_miou": round(delta, 4), "ci95": [round(float(lo), 4), round(float(hi), 4)]}


# ---------------------------------------------------------------------------------------------- driver
def _aggregate(per: dict[str, dict[str, Any]], fams: Sequence[str]) -> dict[str, Any]:
    """Mean over families of every scalar score (and of each layer's scores)."""
    out: dict[str, Any] = {}
    rows = [per[f] for f in fams if f in per]
    if not rows:
        return out
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and key != "n":
            out[key] = _mean([r[key] for r in rows if key in r])
        elif key == "layers":
            out["layers"] = {ln: {m: _mean([r["layers"][ln][m] for r in rows if m in r["layers"].get(ln, {})]) for m in d} for ln, d in value.items()}
    out["n"] = sum(r["n"] for r in rows)
    return out


def evaluate(model: nn.Module, per_family: int = 200, seed: int = 0, gradcam: bool = True, train_families: Sequence[str] | None = None,
             task: str | None = None, baseline: nn.Module | None = None, atlas_dir: str | Path | None = None) -> dict[str, Any]:
    """Per-family evaluation of a zoo model (eval mode), with in-family / held-out / photos summaries.

    Each family is an atlas run over its seeded test scenes (:func:`scene_run`: the atlas's engine, captured forward and
    per-batch function, with this module's measures as its scorer).

    Args:
        model: A zoo model (classification or segmentation).
        per_family: Scenes per background family.
        seed: Scene seed.
        gradcam: Classification: also captum Grad-CAM on ``model.last_conv_stage``.
        train_families: The families the model trained on (default: its card's, else all but the held-out ones).
        task: ``"classification"`` or ``"segmentation"`` (default: from the card).
        baseline: Segmentation: a model to report ΔmIoU against, on the same scenes.
        atlas_dir: Keep each family's atlas (statistics, tables, report) in ``atlas_dir/FAMILY``.
    """
    model.eval()
    adir = Path(atlas_dir) if atlas_dir is not None else None
    card = getattr(model, "card", {}) or {}
    task = task or card.get("task", "classification")
    trained = list(train_families or card.get("data", {}).get("train_families") or [f for f in FAMILIES if f not in HELDOUT_FAMILIES])
    fams = list(FAMILIES) + [PHOTOS]
    per: dict[str, dict[str, Any]] = {}
    deltas: dict[str, Any] = {}
    for f in fams:
        if task == "classification":
            per[f] = _classification_family(model, f, per_family, seed, gradcam, adir)
        else:
            per[f] = _segmentation_family(model, f, per_family, seed, len(card.get("class_names") or SEG_CLASSES), atlas_dir=adir)
            if baseline is not None:
                base = _segmentation_family(baseline, f, per_family, seed, len(card.get("class_names") or SEG_CLASSES), queries=0)
                deltas[f] = (per[f]["_inter"], per[f]["_union"], base["_inter"], base["_union"])
    res: dict[str, Any] = {
        "per_family_scenes": per_family, "seed": seed, "split": "test (t10k items)", "task": task,
        "train_families": trained, "heldout_families": [f for f in FAMILIES if f not in trained] + [PHOTOS],
    }
    groups = {"in_family": [f for f in FAMILIES if f in trained], "heldout": [f for f in FAMILIES if f not in trained], PHOTOS: [PHOTOS]}
    for name, members in groups.items():
        res[name] = _aggregate(per, members)
    if deltas:
        for name, members in groups.items():
            parts = [deltas[f] for f in members if f in deltas]
            if parts:
                res[name]["vs_baseline"] = _bootstrap_delta(*(np.concatenate([p[i] for p in parts]) for i in range(4)))
    if task == "classification":
        clean: list[float] = []

        def correct(model: nn.Module, batch: Decoded, task: str, logits: torch.Tensor, records: dict[str, Any]) -> dict[str, list[Any]]:
            clean.extend((logits.argmax(1).cpu() == batch.labels).float().tolist())
            return {}

        scene_run(model, "flat", min(per_family, 200), INPUT_SIZE, (1, 1), seed + 1, correct, clutter=False, atlas_dir=adir)
        res["accuracy_clean_flat"] = _mean(clean)
    for v in per.values():
        v.pop("_inter", None)
        v.pop("_union", None)
    res["per_family"] = per
    return res


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``attnviz evaluate``."""
    p = p or argparse.ArgumentParser(prog="attnviz evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="zoo model name (classification or segmentation)")
    p.add_argument("--per-family", type=int, default=200, help="test scenes per background family")
    p.add_argument("--seed", type=int, default=0, help="scene seed")
    p.add_argument("--weights", default=None, help="evaluate this checkpoint instead of the shipped one (e.g. a held-out-family variant)")
    p.add_argument("--baseline", default=None, help="segmentation: report ΔmIoU against this zoo model (e.g. fcn_seg)")
    p.add_argument("--atlas", default=None, help="keep each family's attention atlas (Parquet tables, report.html) in ATLAS/FAMILY")
    p.add_argument("--random-weights", action="store_true",
                   help="also evaluate the same architecture at random initialisation (seeded), stored beside the trained figures")
    p.add_argument("--write-card", action="store_true", help="store the result (and the test suite's check subset) in pretrained/NAME.json")
    return p


def _random_weights(model: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """The same architecture at random initialisation (``torch.manual_seed(seed)``), evaluated on the same scenes: the
    in-family / held-out / photos summaries (what a map scores with no training: DINO's "random weights" row)."""
    from .models.seg_zoo import SEG_ZOO, build_seg
    from .models.zoo import build

    torch.manual_seed(args.seed)
    rand = build_seg(args.model) if args.model in SEG_ZOO else build(args.model)
    rand.card = getattr(model, "card", {})  # type: ignore[assignment]  # the same task and training families
    res = evaluate(rand, per_family=args.per_family, seed=args.seed, gradcam=False)
    return {"init": f"torch.manual_seed({args.seed}); attnviz.models.zoo.build({args.model!r})",
            **{g: res[g] for g in ("in_family", "heldout", PHOTOS)}}


def run(args: argparse.Namespace) -> int:
    """Evaluate and print JSON (optionally store it in the model card)."""
    from .models.registry import card_path, load_pretrained

    model = load_pretrained(args.model, weights=args.weights)
    baseline = load_pretrained(args.baseline) if args.baseline else None
    try:
        res = evaluate(model, per_family=args.per_family, seed=args.seed, baseline=baseline, atlas_dir=args.atlas)
        if args.random_weights:
            res["random_weights"] = _random_weights(model, args)
    except AtlasError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(res, indent=2))
    if args.write_card:
        path = card_path(args.model)
        card = json.loads(path.read_text())
        card["evaluation"] = res
        # the first scenes of each family again, which the test suite re-measures and compares
        card["evaluation_check"] = evaluate(model, per_family=CHECK_PER_FAMILY, seed=args.seed)
        path.write_text(json.dumps(card, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m attnviz.evaluate``."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
