"""How much of the segmentation targets can a model at output stride 8 reach? The truth itself, seen at each stride.

    python bench/seg_stride.py --scenes 300 > bench/out/seg_stride.json

For test scenes of the segmentation zoo (scenes v2, 128², 1–6 items; the held-out families and the train families), the
ground-truth label map is reduced to each output stride as the ideal coarse prediction would hold it (the class fractions
of each cell: an average pool of the one-hot truth), upsampled back to 128² the way the zoo's models upsample their
logits (bilinear, ``align_corners=False``), and scored with the zoo's measures (mIoU over present classes, foreground
IoU, accumulated over the scenes as ``attnviz evaluate`` does). No model is involved: what is lost here is lost to any
model whose logits live on that grid and are upsampled that way (a model can sharpen its logits, but cannot place a
boundary it cannot represent between two cell centres).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from attnviz.data import HELDOUT_FAMILIES, TRAIN_FAMILIES, SceneConfig, SceneGenerator
from attnviz.models.seg_zoo import SEG_CLASSES, SEG_INPUT_SIZE


def scores(pred: torch.Tensor, gt: torch.Tensor, k: int) -> dict[str, float]:
    """mIoU over present classes and foreground IoU, accumulated over every pixel of every scene."""
    inter = torch.stack([((pred == c) & (gt == c)).sum() for c in range(k)]).double()
    union = torch.stack([((pred == c) | (gt == c)).sum() for c in range(k)]).double()
    present = union > 0
    fg = float(((pred > 0) & (gt > 0)).sum()) / max(1, int(((pred > 0) | (gt > 0)).sum()))
    return {"miou": round(float((inter[present] / union[present]).mean()), 4), "foreground_iou": round(fg, 4)}


def at_stride(gt: torch.Tensor, stride: int, k: int) -> torch.Tensor:
    """The truth through a stride-``stride`` grid: class fractions per cell, bilinearly upsampled, argmax."""
    coarse = at_stride_logits(gt, stride, k)
    return F.interpolate(coarse, size=gt.shape[-2:], mode="bilinear", align_corners=False).argmax(1)


def fitted(gt: torch.Tensor, stride: int, k: int, steps: int = 200) -> torch.Tensor:
    """The best the grid can hold: per scene, logits on the stride-``stride`` grid fitted (Adam on the cross-entropy of their
    upsampled form against the truth) — what a perfect model at that stride could output, up to the fit."""
    logits = (at_stride_logits(gt, stride, k) * 10).requires_grad_(True)  # start from the class fractions, sharpened
    opt = torch.optim.Adam([logits], lr=0.5)
    for _ in range(steps):
        up = F.interpolate(logits, size=gt.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(up, gt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return F.interpolate(logits, size=gt.shape[-2:], mode="bilinear", align_corners=False).argmax(1)


def at_stride_logits(gt: torch.Tensor, stride: int, k: int) -> torch.Tensor:
    """Class fractions of each stride-``stride`` cell ``(B, K, H/s, W/s)``."""
    onehot = F.one_hot(gt, k).permute(0, 3, 1, 2).float()  # (B, K, H, W)
    return F.avg_pool2d(onehot, stride) if stride > 1 else onehot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenes", type=int, default=300)
    p.add_argument("--strides", default="16,8,4,2")
    p.add_argument("--fit-steps", type=int, default=200, help="Adam steps of the fitted logits (0: skip the fit)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    k = len(SEG_CLASSES)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for split, families in (("held_out", HELDOUT_FAMILIES), ("in_family", TRAIN_FAMILIES)):
        cfg = SceneConfig(size=SEG_INPUT_SIZE, items=(1, 6), families=families)
        gt = SceneGenerator("test", cfg).generate(args.scenes, seed=0).label_map.long()  # (B, H, W)
        out[split] = {f"stride {s}": {**scores(at_stride(gt, int(s), k), gt, k),
                                      **({f"fitted_{m}": v for m, v in scores(fitted(gt, int(s), k, args.fit_steps), gt, k).items()} if args.fit_steps else {})}
                      for s in args.strides.split(",")}
    print(json.dumps({"scenes": args.scenes, **out}, indent=2))


if __name__ == "__main__":
    main()
