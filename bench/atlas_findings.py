"""The dataset-level claims of the attention papers, re-checked on our zoo with ``attnviz atlas`` over generated scenes.

    python bench/atlas_findings.py [--scenes 1000] [--out bench/out/atlas_findings]

Each model runs one atlas (``attnviz.atlas.run_atlas``, the same code as ``attnviz atlas --model NAME --scenes N``) over
test scenes of every background family; a random-weight copy of a model (same card) gives the baseline where one is
needed. Printed as Markdown tables (BENCHMARKS.md keeps them):

1. SENet §7.2: gate class selectivity (η², the class's share of each channel's gate variance) per block, trained vs random.
2. GCNet: query dependence (JS of two random queries' rows; share of pairs with the same peak) per pixel-attention layer.
3. CCNet / DANet: same-class mass ratio of queries on objects beside the geometry-only baseline (segmentation zoo).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnviz.atlas import AtlasOptions, run_atlas, scene_source  # noqa: E402
from attnviz.models import load_pretrained  # noqa: E402
from attnviz.models.seg_zoo import build_seg  # noqa: E402
from attnviz.models.zoo import build  # noqa: E402

GATES = ["se_resnet", "eca_resnet", "cbam_resnet", "sk_resnet"]
PIXEL = ["nonlocal_resnet", "danet_resnet", "ccnet_resnet", "nonlocal_seg", "danet_seg", "ccnet_seg", "ocr_seg"]
SAME_CLASS = ["ccnet_seg", "danet_seg", "nonlocal_seg"]


def random_copy(name: str) -> torch.nn.Module:
    """The zoo architecture with random weights and the trained model's card (preprocessing, classes)."""
    trained = load_pretrained(name)
    torch.manual_seed(0)
    m = build_seg(name) if trained.card.get("task") == "segmentation" else build(name)
    m.card = dict(trained.card)
    return m.eval()


def atlas(model: torch.nn.Module, name: str, scenes: int, out: Path) -> pd.DataFrame:
    task = str(model.card.get("task", "classification"))
    run_atlas(model, scene_source(scenes, task=task), out / name, AtlasOptions(batch_size=50, workers=1, model_name=name))
    return pd.read_parquet(out / name / "attention.parquet")


def value(att: pd.DataFrame, layer: str, statistic: str) -> float:
    r = att[(att["layer"] == layer) & (att["statistic"] == statistic) & (att["head"] == -1)]
    return float(r["value"].iloc[0]) if len(r) else float("nan")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scenes", type=int, default=1000)
    p.add_argument("--out", default="bench/out/atlas_findings")
    args = p.parse_args()
    out = Path(args.out)
    lines = [f"Scenes: {args.scenes} per model, every background family (test items), seed 0.", "",
             "**Gate class selectivity per block (η²), trained vs random weights**", "", "| model | block | trained | random |", "|---|---|---|---|"]
    results: dict[str, object] = {}
    for name in GATES:
        tr, rnd = atlas(load_pretrained(name), name, args.scenes, out), atlas(random_copy(name), f"{name}_random", args.scenes, out)
        for layer in dict.fromkeys(tr[tr["statistic"] == "class_selectivity"]["layer"]):
            a, b = value(tr, layer, "class_selectivity"), value(rnd, layer, "class_selectivity")
            lines.append(f"| {name} | {layer} | {a:.3f} | {b:.3f} |")
            results[f"{name}:{layer}:class_selectivity"] = [a, b]
    lines += ["", "**Query dependence per pixel-attention layer** (JS ≤ ln 2 = 0.693; same peak: share of query pairs)", "",
              "| model | layer | JS | same peak | JS, random weights | distance (px) | entropy ÷ max |", "|---|---|---|---|---|---|---|"]
    atl: dict[str, pd.DataFrame] = {}
    for name in PIXEL:
        atl[name] = tr = atlas(load_pretrained(name), name, args.scenes, out)
        rnd = atlas(random_copy(name), f"{name}_random", args.scenes, out)
        for layer in dict.fromkeys(tr[tr["statistic"] == "query_js"]["layer"]):
            row = [value(tr, layer, s) for s in ("query_js", "same_peak")] + [value(rnd, layer, "query_js")]
            row += [value(tr, layer, s) for s in ("distance_px", "entropy_norm")]
            lines.append(f"| {name} | {layer} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
            results[f"{name}:{layer}:query"] = row
    lines += ["", "**Same-class mass ratio of queries on objects** (1 = chance) beside uniform weights through the same geometry", "",
              "| model | layer | attention | geometry alone |", "|---|---|---|---|"]
    for name in SAME_CLASS:
        tr = atl[name]
        for layer in dict.fromkeys(tr[tr["statistic"] == "same_class_mass_ratio"]["layer"]):
            a, b = value(tr, layer, "same_class_mass_ratio"), value(tr, layer, "same_class_baseline")
            lines.append(f"| {name} | {layer} | {a:.2f} | {b:.2f} |")
            results[f"{name}:{layer}:same_class"] = [a, b]
    from attnviz.atlas.report import excitation_figure  # noqa: PLC0415
    from attnviz.render import figure_to_rgb  # noqa: PLC0415

    gates = pd.read_parquet(out / "se_resnet" / "gates.parquet")
    Image.fromarray(figure_to_rgb(excitation_figure(gates))).save(Path(__file__).resolve().parents[1] / "docs" / "atlas_se_resnet.png")
    text = "\n".join(lines)
    print(text)
    (out / "findings.md").write_text(text + "\n")
    (out / "findings.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
