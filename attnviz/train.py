"""Train a zoo model on generated scenes: ``attnviz train --model NAME`` / ``python -m attnviz.train``.

Scenes are generated on the fly (step i uses seed ``seed·10⁷ + i``), with a clutter curriculum: the
probability that a batch has clutter ramps from 0 to 1 over the first ``--curriculum`` fraction of the
steps. Attention variants start from a shared backbone (``--init``), trained once as
``plain_resnet``; their attention modules start at or near the identity and are never supervised. The
STN alone gets a lower learning rate for its localiser and an auxiliary loss that pulls its sampled
square towards the item's box (scene ground truth), because without it the localiser learned one
fixed zoom for every image (see the model card). Checkpoints in ``--workdir`` make a run resumable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from tqdm import tqdm

from .data import CLASSES, MEAN, STD, SceneConfig, SceneGenerator, normalize
from .models.inputs import pick_device
from .models.registry import sha256
from .models.zoo import INPUT_SIZE, ZOO, ZooNet, build

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"


def box_targets(boxes: torch.Tensor, size: int, margin: float = 1.15) -> torch.Tensor:
    """Target (scale, tx, ty) of a square sampling window around each box, in θ units."""
    cx = (boxes[:, 0] + boxes[:, 2]).float() / 2 / size * 2 - 1
    cy = (boxes[:, 1] + boxes[:, 3]).float() / 2 / size * 2 - 1
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).float() / size * margin
    return torch.stack([side.clamp(0.2, 1.0), cx, cy], 1)


def stn_box_loss(model: ZooNet, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between the STN's (scale, tx, ty) and the box targets."""
    assert model.stn is not None
    theta = model.stn.head(model.stn.localization(x))  # (B, 2, 3)
    scale = torch.linalg.det(theta[:, :, :2]).clamp_min(1e-6).sqrt()
    pred = torch.stack([scale, theta[:, 0, 2], theta[:, 1, 2]], 1)
    return F.smooth_l1_loss(pred, box_targets(boxes, x.shape[-1]).to(x.device), beta=0.05)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) one training run and write the checkpoint and model card."""
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = build(args.model).to(device)
    if args.init:
        state = load_file(args.init)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise SystemExit(f"--init {args.init} has keys this model lacks: {unexpected[:5]}")
        print(f"initialised from {args.init}; {len(missing)} new tensors (attention modules)")
    loc = [p for n, p in model.named_parameters() if n.startswith("stn.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("stn.")]
    if args.stn_only and not loc:
        raise SystemExit(f"--stn-only needs a model with an STN; {args.model} has none")
    groups = [] if args.stn_only else [{"params": rest, "lr": args.lr}]
    if loc:
        groups.append({"params": loc, "lr": args.lr * args.stn_lr_mult})
    opt = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    gen = SceneGenerator("train", SceneConfig(size=INPUT_SIZE), device=device)
    work = Path(args.workdir or f"runs/{args.model}")
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "last.pt"
    start, elapsed = 0, 0.0
    if ckpt.exists() and not args.restart:
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, elapsed = int(state["step"]), float(state["elapsed"])
        print(f"resumed {args.model} at step {start}/{args.steps}")
    rng = torch.Generator().manual_seed(args.seed + 1)
    for _ in range(start):  # keep the curriculum draws identical after a resume
        torch.rand(1, generator=rng)
    model.train()
    t0 = time.time() - elapsed
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=args.model, dynamic_ncols=True, mininterval=5)
    ema = None
    for step in bar:
        p_clutter = min(1.0, step / max(1, args.curriculum * args.steps))
        clutter = bool(torch.rand(1, generator=rng) < p_clutter)
        batch = gen.generate(args.batch, seed=args.seed * 10**7 + step, clutter=clutter)
        x = normalize(batch.images).to(device)
        y = batch.labels.to(device)
        warm = min(1.0, (step + 1) / max(1, args.warmup))
        cos = 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * warm * (0.02 + 0.98 * cos)
        if args.stn_only:  # localiser pre-training: the box loss alone, backbone untouched
            loss = stn_box_loss(model, x, batch.boxes)
        else:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            if model.stn is not None and args.stn_box_weight > 0:
                loss = loss + args.stn_box_weight * stn_box_loss(model, x, batch.boxes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}", clutter=f"{p_clutter:.2f}")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            tmp = ckpt.with_suffix(".tmp")  # write then rename: a kill mid-save never corrupts last.pt
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1, "elapsed": time.time() - t0}, tmp)
            os.replace(tmp, ckpt)
    seconds = time.time() - t0
    model.eval()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{args.model}.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights)
    card = {
        "name": args.model,
        "architecture": f"attnviz.models.zoo.ZooNet({ZOO[args.model]!r})",
        "parameters": sum(p.numel() for p in model.parameters()),
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "mean": list(MEAN),
        "std": list(STD),
        "class_names": list(CLASSES),
        "data": {
            "recipe": "attnviz.data.SceneGenerator('train', SceneConfig(size=64)): Fashion-MNIST train items (20-45% of the side, ±30°, contrasting colour) on scikit-image photo crops, 2-4 clutter fragments",
            "seed": args.seed,
            "batches": f"step i: generate({args.batch}, seed={args.seed}·10^7 + i); clutter curriculum over the first {args.curriculum:.0%} of steps",
            "images_seen": args.steps * args.batch,
        },
        "training": {
            "command": "attnviz train " + " ".join(shlex.quote(a) for a in args.argv),
            "steps": args.steps, "batch": args.batch, "lr": args.lr, "optimizer": "AdamW, cosine, label smoothing 0.1",
            "init": args.init, "stn_lr_mult": args.stn_lr_mult if loc else None,
            "stn_box_weight": args.stn_box_weight if loc else None, "stn_only": args.stn_only,
            "attention_supervised": bool(loc and args.stn_box_weight > 0),
            "seconds": round(seconds, 1),
            "hardware": f"{device.type}: {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__,
        },
        "sha256": sha256(weights),
    }
    (out_dir / f"{args.model}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {weights} ({seconds / 60:.1f} min)")
    return card


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``attnviz train``."""
    p = p or argparse.ArgumentParser(prog="attnviz train", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, choices=sorted(ZOO))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--curriculum", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="safetensors of a shared backbone (e.g. pretrained/plain_resnet.safetensors)")
    p.add_argument("--stn-lr-mult", type=float, default=0.1)
    p.add_argument("--stn-box-weight", type=float, default=1.0)
    p.add_argument("--stn-only", action="store_true", help="train only the STN localiser, with the box loss alone")
    p.add_argument("--device", default=None)
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=str(PRETRAINED))
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m attnviz.train``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
