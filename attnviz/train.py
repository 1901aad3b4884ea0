"""Train a zoo model on scenes v2: ``attnviz train --model NAME`` / ``python -m attnviz.train``.

Classification models (``*_resnet``, 64×64, one item) and segmentation models (``*_seg``, 128×128,
1–6 items, per-pixel labels) use one loop. Scenes are generated on the fly (step i uses seed
``seed·10⁷ + i``) from the training background families only (``--families``; the held-out ones are
never seen). A curriculum mixes easy scenes (large items, no clutter, no photometric noise,
brightness contrast only) with full v2 scenes, the share of full scenes ramping from 0 to 1 over the
first ``--curriculum`` fraction of the steps. Attention variants start from a shared backbone
(``--init``); their attention maps are never supervised. Only the STN's localiser gets an auxiliary
box loss (see its model card). Checkpoints in ``--workdir`` make a run resumable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from .data import (
    CLASSES,
    FAMILIES,
    MEAN,
    STD,
    TRAIN_FAMILIES,
    SceneConfig,
    SceneGenerator,
    normalize,
)
from .models.inputs import pick_device
from .models.registry import sha256
from .models.seg_zoo import SEG_CLASSES, SEG_INPUT_SIZE, SEG_ZOO, build_seg
from .models.zoo import INPUT_SIZE, ZOO, ZooNet, build
from .modules.stn import HeatmapAffineHead

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"
AUX_WEIGHT = 0.4  # weight of auxiliary segmentation losses (OCR's coarse head, DANet's branches)


def task_of(name: str) -> str:
    """``"classification"`` or ``"segmentation"`` for a zoo model name."""
    if name in ZOO:
        return "classification"
    if name in SEG_ZOO:
        return "segmentation"
    raise ValueError(f"unknown zoo model {name!r}; valid names: {', '.join([*ZOO, *SEG_ZOO])}")


def scene_configs(task: str, families: Sequence[str]) -> tuple[SceneConfig, SceneConfig]:
    """The (easy, full) scene recipes of a task's training curriculum."""
    if task == "classification":
        full = SceneConfig(size=INPUT_SIZE, items=(1, 1), families=tuple(families))
    else:
        full = SceneConfig(size=SEG_INPUT_SIZE, items=(1, 6), families=tuple(families))
    easy = dataclasses.replace(full, item_frac=(0.3, 0.5), clutter=(0, 1), occlusion=0.0, hue_contrast=0.0, photometric=False)
    return easy, full


def box_targets(boxes: torch.Tensor, size: int, margin: float = 1.15, square: bool = True) -> torch.Tensor:
    """Target ``(s_x, s_y, t_x, t_y)`` of a sampling window around each box, in θ units (square: ``s_x = s_y``)."""
    cx = (boxes[:, 0] + boxes[:, 2]).float() / 2 / size * 2 - 1
    cy = (boxes[:, 1] + boxes[:, 3]).float() / 2 / size * 2 - 1
    wh = (boxes[:, 2:] - boxes[:, :2]).float() / size * margin  # (B, 2)
    if square:
        wh = wh.amax(1, keepdim=True).expand(-1, 2)
    return torch.cat([wh.clamp(0.2, 1.0), cx[:, None], cy[:, None]], 1)


def stn_box_loss(model: ZooNet, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between the STN window's (s_x, s_y, t_x, t_y) and the box targets (square for a one-scale head)."""
    assert model.stn is not None
    theta = model.stn.head(model.stn.localization(model.standardize(x)))  # (B, 2, 3)
    scales = theta[:, :, :2].norm(dim=1)  # (B, 2): lengths of the window's sides, rotation or not
    pred = torch.cat([scales, theta[:, :, 2]], 1)
    square = not isinstance(model.stn.head, HeatmapAffineHead)
    return F.smooth_l1_loss(pred, box_targets(boxes, x.shape[-1], square=square).to(x.device), beta=0.05)


def seg_loss(out: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the main logits plus ``AUX_WEIGHT`` × each auxiliary head's."""
    loss = F.cross_entropy(out["out"], target)
    for key, logits in out.items():
        if key != "out":
            loss = loss + AUX_WEIGHT * F.cross_entropy(logits, target)
    return loss


def model_has_stn(model: nn.Module) -> bool:
    """Whether the model has a trainable STN localiser (parameters under ``stn.``)."""
    return any(n.startswith("stn.") for n, _ in model.named_parameters())


def param_groups(model: nn.Module, args: argparse.Namespace, fresh: set[str]) -> list[dict[str, Any]]:
    """AdamW groups: the STN localiser at ``--stn-lr-mult``, tensors ``--init`` did not provide at ``--new-lr-mult``."""
    named = list(model.named_parameters())
    loc = [p for n, p in named if n.startswith("stn.")]
    new = [p for n, p in named if not n.startswith("stn.") and n in fresh]
    rest = [p for n, p in named if not n.startswith("stn.") and n not in fresh]
    groups = [] if args.stn_only else [{"params": rest, "lr": args.lr}]
    if new and not args.stn_only:
        groups.append({"params": new, "lr": args.lr * args.new_lr_mult})
    if loc:
        groups.append({"params": loc, "lr": args.lr * args.stn_lr_mult})
    return groups


def scheduled_lr(lr: float, step: int, steps: int, warmup: int) -> float:
    """The zoo's schedule at ``step`` for peak ``lr``: linear warm-up over ``warmup`` steps, then cosine down to 2 % of it."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    cos = 0.5 * (1 + math.cos(math.pi * step / steps))
    return lr * warm * (0.02 + 0.98 * cos)


def full_share(step: int, steps: int, curriculum: float) -> float:
    """The curriculum's chance of a full scene (instead of an easy one) at ``step``: rising to 1 over ``curriculum · steps``."""
    return min(1.0, step / max(1, curriculum * steps)) if curriculum > 0 else 1.0


def build_any(name: str) -> nn.Module:
    """A randomly initialised zoo model of either task."""
    return build(name) if task_of(name) == "classification" else build_seg(name)


def _device_and_families(args: argparse.Namespace) -> tuple[torch.device, tuple[str, ...]]:
    """Seed, threads and device of a run; its training families (checked)."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    families = tuple(args.families.split(",")) if args.families else TRAIN_FAMILIES
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"--families: unknown {unknown}; valid: {', '.join(FAMILIES)}")
    return device, families


def _initial_model(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, set[str]]:
    """The model, initialised from ``--init`` where shapes fit; the names of the tensors that start fresh."""
    model = build_any(args.model).to(device)
    fresh: set[str] = set()
    if args.init:
        state = load_file(args.init)
        own = model.state_dict()
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(fitting, strict=False)
        fresh = {k for k in own if k not in fitting}
        print(f"initialised {len(fitting)}/{len(own)} tensors from {args.init}; the rest (attention, new heads) start fresh")
    if args.stn_only and not model_has_stn(model):
        raise SystemExit(f"--stn-only needs a model with an STN; {args.model} has none")
    return model, fresh


def _resume(args: argparse.Namespace, ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> tuple[int, float]:
    """Step and elapsed seconds of the run's last checkpoint (loaded into model and optimiser), or (0, 0)."""
    if not ckpt.exists() or args.restart:
        return 0, 0.0
    state = torch.load(ckpt, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    print(f"resumed {args.model} at step {int(state['step'])}/{args.steps}")
    return int(state["step"]), float(state["elapsed"])


def _loss(args: argparse.Namespace, model: nn.Module, task: str, x: torch.Tensor, batch: Any, device: torch.device) -> torch.Tensor:
    """The training loss of one batch for the run's task."""
    if task == "segmentation":
        return seg_loss(model(x), batch.label_map.to(device))
    if args.stn_only:  # localiser pre-training: the box loss alone, backbone untouched
        return stn_box_loss(model, x, batch.boxes)  # type: ignore[arg-type]
    loss = F.cross_entropy(model(x), batch.labels.to(device), label_smoothing=0.1)
    if getattr(model, "stn", None) is not None and args.stn_box_weight > 0:
        loss = loss + args.stn_box_weight * stn_box_loss(model, x, batch.boxes)  # type: ignore[arg-type]
    return loss


def _save_checkpoint(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, elapsed: float) -> None:
    tmp = ckpt.with_suffix(".tmp")  # write then rename: a kill mid-save never corrupts last.pt
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed}, tmp)
    os.replace(tmp, ckpt)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) one training run and write the checkpoint and model card."""
    device, families = _device_and_families(args)
    task = task_of(args.model)
    model, fresh = _initial_model(args, device)
    opt = torch.optim.AdamW(param_groups(model, args, fresh), weight_decay=args.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    easy_cfg, full_cfg = scene_configs(task, families)
    easy, full = SceneGenerator("train", easy_cfg, device=device), SceneGenerator("train", full_cfg, device=device)
    work = Path(args.workdir or f"runs/{args.model}")
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "last.pt"
    start, elapsed = _resume(args, ckpt, model, opt, device)
    rng = torch.Generator().manual_seed(args.seed + 1)
    for _ in range(start):  # keep the curriculum draws identical after a resume
        torch.rand(1, generator=rng)
    model.train()
    t0 = time.time() - elapsed
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=args.model, dynamic_ncols=True, mininterval=10)
    ema = None
    for step in bar:
        p_full = full_share(step, args.steps, args.curriculum)
        gen = full if bool(torch.rand(1, generator=rng) < p_full) else easy
        batch = gen.generate(args.batch, seed=args.seed * 10**7 + step)
        x = normalize(batch.images).to(device)
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = scheduled_lr(lr, step, args.steps, args.warmup)
        loss = _loss(args, model, task, x, batch, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}", full=f"{p_full:.2f}")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            _save_checkpoint(ckpt, model, opt, step + 1, time.time() - t0)
    return _write_run(args, model, task, families, time.time() - t0, device)


def _write_run(args: argparse.Namespace, model: nn.Module, task: str, families: tuple[str, ...], seconds: float,
               device: torch.device) -> dict[str, Any]:
    """Write the weights (safetensors) and the model card of a finished run; return the card."""
    model.eval()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{args.model}.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
    card = make_card(args, model, task, families, seconds, device, model_has_stn(model))
    card["sha256"] = sha256(weights)
    (out_dir / f"{args.model}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {weights} ({seconds / 60:.1f} min)")
    return card


def make_card(args: argparse.Namespace, model: nn.Module, task: str, families: tuple[str, ...], seconds: float, device: torch.device,
              has_stn: bool) -> dict[str, Any]:
    """The model card of a finished run (evaluation is added by ``attnviz evaluate --write-card``)."""
    seg = task == "segmentation"
    size = SEG_INPUT_SIZE if seg else INPUT_SIZE
    arch = f"attnviz.models.seg_zoo.build_seg({args.model!r})" if seg else f"attnviz.models.zoo.{type(model).__name__}({ZOO[args.model]!r})"
    return {
        "name": args.model,
        "task": task,
        "architecture": arch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "input_size": [size, size],
        "mean": list(MEAN),
        "std": list(STD),
        "class_names": list(SEG_CLASSES if seg else CLASSES),
        "data": {
            "recipe": f"attnviz.data.SceneGenerator('train', {scene_configs(task, families)[1]!r}) (scenes v2), "
                      f"curriculum with easy scenes over the first {args.curriculum:.0%} of the steps",
            "train_families": list(families),
            "heldout_families": [f for f in FAMILIES if f not in families],
            "seed": args.seed,
            "images_seen": args.steps * args.batch,
        },
        "training": {
            "command": "attnviz train " + " ".join(shlex.quote(a) for a in args.argv),
            "steps": args.steps, "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
            "optimizer": "AdamW, linear warm-up then cosine to 2% of the peak" + ("" if seg else ", label smoothing 0.1"),
            "loss": f"cross-entropy per pixel + {AUX_WEIGHT} × auxiliary heads" if seg else "cross-entropy",
            "init": args.init, "new_lr_mult": args.new_lr_mult if args.init else None, "stn_lr_mult": args.stn_lr_mult if has_stn else None,
            "stn_box_weight": args.stn_box_weight if has_stn else None, "stn_only": args.stn_only,
            "attention_supervised": bool(has_stn and args.stn_box_weight > 0),
            "seconds": round(seconds, 1),
            "hardware": f"{device.type}: {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}, "
                        f"{torch.get_num_threads()} threads",
            "torch": torch.__version__,
        },
    }


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``attnviz train``."""
    p = p or argparse.ArgumentParser(prog="attnviz train", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, choices=sorted([*ZOO, *SEG_ZOO]), help="zoo model to train")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    p.add_argument("--batch", type=int, default=128, help="scenes per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="AdamW weight decay")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--curriculum", type=float, default=0.3, help="fraction of the steps over which full scenes replace easy ones")
    p.add_argument("--families", default=None, help="comma-separated background families to train on (default: all but the held-out ones)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scene stream and the initialisation")
    p.add_argument("--init", default=None, help="safetensors to start from (matching tensors only), e.g. a shared backbone")
    p.add_argument("--new-lr-mult", type=float, default=1.0,
                   help="learning-rate factor of the parameters --init did not provide (e.g. a fine-tune's attention block)")
    p.add_argument("--stn-lr-mult", type=float, default=0.1, help="learning-rate factor of the STN localiser")
    p.add_argument("--stn-box-weight", type=float, default=1.0, help="weight of the STN's auxiliary box loss")
    p.add_argument("--stn-only", action="store_true", help="train only the STN localiser, with the box loss alone")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--workdir", default=None, help="folder for the resumable checkpoint (default runs/NAME)")
    p.add_argument("--out", default=str(PRETRAINED), help="folder for NAME.safetensors and NAME.json")
    p.add_argument("--ckpt-every", type=int, default=100, help="steps between resumable checkpoints")
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
