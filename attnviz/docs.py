"""README and BENCHMARKS tables generated from the model cards (``pretrained/*.json``) and the mmseg CPU benchmark.

    python -m attnviz.docs           # rewrite the generated blocks of README.md and BENCHMARKS.md
    python -m attnviz.docs --check   # exit 1 if one is out of date (the test suite checks the same)

A generated block sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->``. Every number comes from a
card's ``evaluation`` (written by ``attnviz evaluate --write-card``) or from ``pretrained/mmseg_cpu.json``
(written by ``bench/mmseg.py``); nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from .models.mmseg import DATASETS, MMSEG
from .models.seg_zoo import SEG_ZOO
from .models.zoo import ZOO

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "pretrained"

ATTENTION = {  # zoo model -> what its attention is
    "plain_resnet": "none (baseline)", "se_resnet": "SE channel gates", "eca_resnet": "ECA channel gates",
    "cbam_resnet": "CBAM channel + spatial", "scse_resnet": "scSE channel + spatial", "gc_resnet": "GC context",
    "sk_resnet": "SK branch weights", "nonlocal_resnet": "Non-Local", "ccnet_resnet": "CCNet (R = 2)",
    "danet_resnet": "DANet PAM + CAM", "stn_resnet": "STN (affine)", "vit_tiny": "ViT self-attention (class token, 4 blocks × 4 heads)",
    "fcn_seg": "none (baseline)", "nonlocal_seg": "Non-Local head", "ccnet_seg": "CCNet head (R = 2)",
    "danet_seg": "DANet PAM + CAM head", "gc_seg": "GC head", "ocr_seg": "OCR object regions",
}
# classification: the native-map score shown per model (key in the evaluation, label, is it a ratio)
NATIVE: list[tuple[str, str]] = [
    ("stn_iou", "STN IoU"), ("ccnet_reach_mass_ratio", "CCNet two-hop mass ratio"), ("cls_jaccard", "class-token mask Jaccard (DINO, 60 %)"),
    ("affinity_centre_mass_ratio", "centre-query mass ratio"),
    ("spatial_pointing", "mask pointing"), ("gate_class_selectivity", "gate class selectivity"),
]


def _f(v: Any, nd: int = 2) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


NOT_SHIPPED = "not shipped in this release (`bash pretrained/train_zoo.sh` trains it)"


def _shipped(name: str) -> bool:
    return (PRETRAINED / f"{name}.safetensors").is_file()


def _card(name: str) -> dict[str, Any] | None:
    p = PRETRAINED / f"{name}.json"
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def _params(card: dict[str, Any]) -> str:
    n = card.get("parameters")
    return "—" if n is None else f"{n / 1e6:.2f} M"


def _evaluation(name: str, columns: int) -> tuple[dict[str, Any], dict[str, Any]] | str:
    """``(card, evaluation)`` of a shipped, evaluated zoo model, else its table row saying why there is none."""
    card = _card(name) or {}
    ev = card.get("evaluation")
    if not _shipped(name):
        return f"| {name} | {ATTENTION[name]} | — | {NOT_SHIPPED} |" + " |" * (columns - 4)
    if not ev or "heldout" not in ev:
        return f"| {name} | {ATTENTION[name]} | {_params(card)} | not evaluated |" + " |" * (columns - 4)
    return card, ev


def classification_table() -> str:
    """Classification zoo: accuracy and the native map's score, in-family | held-out families | photos."""
    lines = [
        "| model | attention | params | accuracy: in-family / held-out / photos | native map (in-family / held-out) | Grad-CAM pointing (held-out) |",
        "|---|---|---|---|---|---|",
    ]
    for name in ZOO:
        got = _evaluation(name, 6)
        if isinstance(got, str):
            lines.append(got)
            continue
        card, ev = got
        i, h, p = ev["in_family"], ev["heldout"], ev["photos"]
        native = "—"
        for key, label in NATIVE:
            if key in h:
                native = f"{label}: {_f(i.get(key))} / {_f(h.get(key))}"
                if key == "spatial_pointing":
                    native += f" (centre baseline {_f(h.get('centre_baseline_pointing'))})"
                elif key == "ccnet_reach_mass_ratio":
                    native += f" (uniform weights {_f(h.get('ccnet_uniform_reach_mass_ratio'))})"
                elif key == "stn_iou":
                    native += f"; centre corr. {_f(h.get('stn_centre_correlation'))}"
                elif key == "cls_jaccard":
                    rand = (ev.get("random_weights") or {}).get("heldout", {})
                    native += (f" (random weights {_f(rand.get('cls_jaccard'))}); class-token pointing {_f(h.get('cls_pointing'))} "
                               f"(centre baseline {_f(h.get('centre_baseline_pointing'))})")
                break
        else:
            sk = [(layer, d["sk_size_spearman"]) for layer, d in (h.get("layers") or {}).items() if "sk_size_spearman" in d]
            if sk:
                native = ("widest-branch weight vs item size, Spearman per SK layer: "
                          f"{', '.join(_f(i['layers'][layer].get('sk_size_spearman')) for layer, _ in sk)} / {', '.join(_f(v) for _, v in sk)}")
        lines.append(f"| {name} | {ATTENTION[name]} | {_params(card)} | {_f(i['accuracy'])} / **{_f(h['accuracy'])}** / {_f(p['accuracy'])} | "
                     f"{native} | {_f(h.get('gradcam_pointing'))} |")
    return "\n".join(lines)


def _layer_score(group: dict[str, Any]) -> tuple[str, str, str]:
    """(same-class mass ratio, uniform-weights baseline, query JS) of a segmentation model's first attention layer."""
    for layer in (group.get("layers") or {}).values():
        for view in ("reach", "row"):
            key = f"{view}_same_class_mass_ratio"
            if key in layer:
                base = _f(layer.get("uniform_reach_same_class_mass_ratio")) if view == "reach" else ""
                return _f(layer[key]), base, _f(layer.get("query_js"), 3)
        if "query_js" in layer:
            return "—", "", _f(layer.get("query_js"), 3)
    return "—", "", "—"


def segmentation_table() -> str:
    """Segmentation zoo: mIoU, foreground / background IoU, ΔmIoU against fcn_seg and the head's maps."""
    lines = [
        "| model | attention | params | mIoU: in-family / held-out / photos | fg / bg IoU (held-out) | ΔmIoU vs fcn_seg (held-out, 95% CI) | "
        "same-class mass ratio (held-out) | query JS (held-out) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in SEG_ZOO:
        got = _evaluation(name, 8)
        if isinstance(got, str):
            lines.append(got)
            continue
        card, ev = got
        i, h, p = ev["in_family"], ev["heldout"], ev["photos"]
        vs = h.get("vs_baseline")
        delta = "—" if not vs else f"{vs['delta_miou']:+.3f} [{vs['ci95'][0]:+.3f}, {vs['ci95'][1]:+.3f}]"
        mass, base, js = _layer_score(h)
        if base:
            mass += f" (uniform cross {base})"
        lines.append(f"| {name} | {ATTENTION[name]} | {_params(card)} | {_f(i['miou'])} / **{_f(h['miou'])}** / {_f(p['miou'])} | "
                     f"{_f(h['foreground_iou'])} / {_f(h['background_iou'])} | {delta} | {mass} | {js} |")
    return "\n".join(lines)


def mmseg_table() -> str:
    """Published checkpoints: what they are, their published mIoU, size and measured CPU cost."""
    p = PRETRAINED / "mmseg_cpu.json"
    cpu: dict[str, Any] = json.loads(p.read_text()) if p.is_file() else {}
    lines = ["| name | head | backbone | trained on | published mIoU | download | CPU input | forward / with capture | one click |",
             "|---|---|---|---|---|---|---|---|---|"]
    heads = {"nonlocal": "Non-Local", "ccnet": "CCNet (R = 2)", "danet": "DANet PAM + CAM", "gcnet": "GCNet", "ocrnet": "OCR (+ FCN aux)"}
    for e in MMSEG.values():
        m = cpu.get(f"{e.method}_r{e.depth}_{e.dataset}") or {}
        h, w = DATASETS[e.dataset]["cpu_input"]
        fwd = f"{m['forward_ms'] / 1e3:.1f} s / {m['capture_ms'] / 1e3:.1f} s" if m else "—"
        if not m:
            click = "—"
        elif m["click_ms"] != m["click_ms"]:  # NaN: no query-dependent map (GC context is one map for every pixel)
            click = "no click map"
        else:
            click = f"{m['click_ms']:.2f} ms"
        lines.append(f"| `{e.name}` | {heads[e.method]} | R{e.depth}-D8 | {e.dataset} | {e.miou:.2f} | {e.remote.size_mb:.0f} MB | {w}×{h} | {fwd} | {click} |")
    if cpu.get("machine"):
        lines.append("")
        lines.append(f"CPU times: `bench/mmseg.py` on {cpu['machine']} ({cpu.get('note', '')}).")
    return "\n".join(lines)


def _per_family(names: list[str], key: str, what: str) -> str:
    """One row per evaluated model, one column per background family (held-out ones marked †)."""
    cards = [(n, got[0]) for n in names if not isinstance(got := _evaluation(n, 4), str)]
    if not cards:
        return "not evaluated"
    fams = list(cards[0][1]["evaluation"]["per_family"])
    held = set(cards[0][1]["evaluation"].get("heldout_families", []))
    head = " | ".join(f"{f}†" if f in held else f for f in fams)
    lines = [f"| model ({what}) | {head} |", "|---|" + "---|" * len(fams)]
    for n, c in cards:
        per = c["evaluation"]["per_family"]
        lines.append(f"| {n} | " + " | ".join(_f(per.get(f, {}).get(key)) for f in fams) + " |")
    n = cards[0][1]["evaluation"]["per_family_scenes"]
    lines += ["", f"† never seen in training. {n} test scenes per family (t10k items), seed {cards[0][1]['evaluation']['seed']}; "
              "`photos` = items pasted on the held-out natural photos."]
    return "\n".join(lines)


def classification_per_family() -> str:
    """Accuracy of every classification zoo model on every background family."""
    return _per_family(list(ZOO), "accuracy", "accuracy")


def segmentation_per_family() -> str:
    """mIoU of every segmentation zoo model on every background family."""
    return _per_family(list(SEG_ZOO), "miou", "mIoU")


def render(text: str, required: tuple[str, ...] = ()) -> str:
    """``text`` with every generated block it contains replaced by its current content.

    Raises:
        ValueError: A block named in ``required`` is missing, or ``text`` has no block at all.
    """
    found = 0
    for name, fn in BLOCKS.items():
        pat = re.compile(rf"(<!-- BEGIN {name} -->\n)(.*?)(<!-- END {name} -->)", re.DOTALL)
        if not pat.search(text):
            if name in required:
                raise ValueError(f"no block {name!r} (<!-- BEGIN {name} --> … <!-- END {name} -->)")
            continue
        found += 1
        text = pat.sub(lambda m, fn=fn: m.group(1) + fn() + "\n" + m.group(3), text)
    if not found:
        raise ValueError("no generated block in this text")
    return text


BLOCKS = {"zoo-classification": classification_table, "zoo-segmentation": segmentation_table, "mmseg": mmseg_table,
          "per-family-classification": classification_per_family, "per-family-segmentation": segmentation_per_family}
FILES = {"README.md": ("zoo-classification", "zoo-segmentation", "mmseg"),
         "BENCHMARKS.md": ("per-family-classification", "per-family-segmentation")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnviz.docs", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated block is out of date")
    args = ap.parse_args(argv)
    stale = 0
    for fname, required in FILES.items():
        path = ROOT / fname
        old = path.read_text()
        new = render(old, required)
        if new == old:
            continue
        if args.check:
            print(f"{path} is out of date: run python -m attnviz.docs", file=sys.stderr)
            stale += 1
        else:
            path.write_text(new)
            print(f"updated {path}")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
