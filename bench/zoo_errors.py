"""Where a classification zoo model's accuracy goes: per class, top confusions and item size, in-family vs held-out.

Same seeded test scenes as ``attnviz evaluate`` (200 per background family, seed 0).

    python bench/zoo_errors.py --model nonlocal_resnet
    python bench/zoo_errors.py --model nonlocal_resnet --weights runs/exp/nonlocal_resnet.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import attnviz  # noqa: E402
from attnviz.data import FAMILIES, HELDOUT_FAMILIES, normalize  # noqa: E402
from attnviz.evaluate import item_side, test_scenes  # noqa: E402
from attnviz.models.zoo import INPUT_SIZE, NUM_CLASSES  # noqa: E402

SIZE_BINS = (0.0, 0.25, 0.35, 1.01)  # item side (√ box area) as a share of the canvas side


def confusion(model: torch.nn.Module, families: list[str], per_family: int, seed: int) -> tuple[torch.Tensor, list[list[float]]]:
    """Confusion matrix (true, predicted) and per-size-bin correctness over the families' test scenes."""
    conf = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    by_size: list[list[float]] = [[] for _ in SIZE_BINS[:-1]]
    for fam in families:
        for b in test_scenes(fam, per_family, INPUT_SIZE, (1, 1), seed):
            with torch.inference_mode():
                pred = model(normalize(b.images)).argmax(1)
            conf.index_put_((b.labels, pred), torch.ones_like(pred), accumulate=True)
            side = item_side(b.boxes, INPUT_SIZE)
            ok = (pred == b.labels).float()
            for i in range(len(SIZE_BINS) - 1):
                by_size[i] += ok[(side >= SIZE_BINS[i]) & (side < SIZE_BINS[i + 1])].tolist()
    return conf, by_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="nonlocal_resnet")
    p.add_argument("--weights", default=None)
    p.add_argument("--per-family", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    model = attnviz.load_pretrained(args.model, weights=args.weights).eval()
    names = model.card["class_names"]
    groups = {"in-family": [f for f in FAMILIES if f not in HELDOUT_FAMILIES], "held-out": list(HELDOUT_FAMILIES)}
    results = {g: confusion(model, fams, args.per_family, args.seed) for g, fams in groups.items()}
    print(f"{args.model}: per-class accuracy, {args.per_family} scenes per family, seed {args.seed}\n")
    print("| class | " + " | ".join(groups) + " |")
    print("|---|" + "---|" * len(groups))
    for c, name in enumerate(names):
        accs = [float(conf[c, c]) / max(1, int(conf[c].sum())) for conf, _ in results.values()]
        print(f"| {name} | " + " | ".join(f"{a:.2f}" for a in accs) + " |")
    for g, (conf, by_size) in results.items():
        off = [(int(conf[i, j]), names[i], names[j]) for i in range(NUM_CLASSES) for j in range(NUM_CLASSES) if i != j]
        top = ", ".join(f"{t} → {q} ({n})" for n, t, q in sorted(off, reverse=True)[:5])
        sizes = ", ".join(f"{SIZE_BINS[i]:.2f}–{min(SIZE_BINS[i + 1], 1):.2f}: {sum(v) / max(1, len(v)):.2f} (n={len(v)})"
                          for i, v in enumerate(by_size))
        print(f"\n{g}: accuracy {float(conf.diag().sum()) / int(conf.sum()):.3f}; top confusions {top}")
        print(f"{g}: accuracy by item side / canvas side: {sizes}")


if __name__ == "__main__":
    main()
