"""Where does the zoo's classification accuracy stop: capacity, or input size? Same recipe, same steps, from scratch.

    python bench/zoo_capacity.py --steps 1500 --threads 1 > bench/out/zoo_capacity.json

Each design is a ``plain_resnet``-layout ZooNet (widths, blocks per stage, input side) trained from scratch on scenes v2
(train families) with the stage-1 recipe of ``pretrained/train_zoo.sh`` (AdamW, warm-up + cosine, easy → full curriculum
over the first 30 % of the steps, label smoothing 0.1), the same seed and scene stream for every design. Reported: the
training loss at the end (mean of the last 100 steps: whether the model still underfits its own data), accuracy on 600
test-split scenes of the train families and 600 of the held-out families, parameters, and CPU milliseconds per image
at batch 1 on one thread (the issue's budget: ≤ 2 M parameters, ≤ 5 ms).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch
import torch.nn.functional as F

from attnviz.data import HELDOUT_FAMILIES, TRAIN_FAMILIES, SceneConfig, SceneGenerator, normalize
from attnviz.models.zoo import ZOO, ZooNet
from attnviz.train import full_share, scene_configs, scheduled_lr

DESIGNS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], int]] = {  # name: (widths, blocks per stage, input side)
    "shipped": ((32, 64, 128), (1, 1, 1), 64),
    "wider": ((48, 96, 192), (1, 1, 1), 64),
    "input80": ((32, 64, 128), (1, 1, 1), 80),
}


def accuracy(model: ZooNet, families: tuple[str, ...], size: int, n: int = 600) -> float:
    """Top-1 accuracy on ``n`` test-split scenes (t10k items) of ``families``."""
    batch = SceneGenerator("test", SceneConfig(size=size, items=(1, 1), families=families)).generate(n, seed=0)
    with torch.no_grad():
        pred = torch.cat([model(normalize(x)).argmax(1) for x in batch.images.split(100)])
    return round(float((pred == batch.labels).float().mean()), 4)


def ms_per_image(model: ZooNet, size: int, repeats: int = 60) -> float:
    """Median CPU milliseconds of one batch-1 forward."""
    x = torch.randn(1, 3, size, size)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 5):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return round(sorted(times[5:])[repeats // 2] * 1000, 2)


def train_design(widths: tuple[int, int, int], depths: tuple[int, int, int], size: int, args: argparse.Namespace) -> dict[str, float]:
    """Train one design from scratch with the stage-1 recipe; return its scores."""
    torch.manual_seed(args.seed)
    model = ZooNet(ZOO["plain_resnet"], widths, depths)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    easy_cfg, full_cfg = (dataclasses.replace(c, size=size) for c in scene_configs("classification", TRAIN_FAMILIES))
    easy, full = SceneGenerator("train", easy_cfg), SceneGenerator("train", full_cfg)
    rng = torch.Generator().manual_seed(args.seed + 1)
    losses: list[float] = []
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        p_full = full_share(step, args.steps, 0.3)
        gen = full if bool(torch.rand(1, generator=rng) < p_full) else easy
        b = gen.generate(args.batch, seed=args.seed * 10**7 + step)
        for g in opt.param_groups:
            g["lr"] = scheduled_lr(args.lr, step, args.steps, 100)
        loss = F.cross_entropy(model(normalize(b.images)), b.labels, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    minutes = (time.time() - t0) / 60
    model.eval()
    return {"parameters": sum(p.numel() for p in model.parameters()), "minutes": round(minutes, 1),
            "train_loss_last100": round(sum(losses[-100:]) / len(losses[-100:]), 4),
            "accuracy_in": accuracy(model, TRAIN_FAMILIES, size), "accuracy_heldout": accuracy(model, HELDOUT_FAMILIES, size),
            "ms_per_image": ms_per_image(model, size)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--designs", default=",".join(DESIGNS), help="comma-separated names (default: all)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed, "threads": args.threads, "designs": {}}
    for name in args.designs.split(","):
        out["designs"][name] = train_design(*DESIGNS[name], args)
        print(name, out["designs"][name], file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
