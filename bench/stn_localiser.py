"""Which STN localiser can find the item? Localisers trained alone with the box loss, same data and steps, then scored.

    python bench/stn_localiser.py --steps 3000 --threads 1 > bench/out/stn_localiser.json

Each design is a zoo ``stn_resnet`` (the backbone is unused here) whose localiser trains on scenes v2 (train families)
with ``stn_box_loss``, AdamW with the zoo's warm-up + cosine schedule. Scored on 600 test-split scenes of the train
families and 600 of the held-out families: IoU of the sampled window (θ applied to the output corners) with the item's
box, the correlation of window and box centres, and the IoU of the training target itself (the ceiling of a square window).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from attnviz.data import HELDOUT_FAMILIES, TRAIN_FAMILIES, SceneConfig, SceneGenerator, normalize
from attnviz.maps.metrics import quad_iou
from attnviz.models.zoo import INPUT_SIZE, ZooNet, ZooSpec
from attnviz.train import box_targets, scheduled_lr, stn_box_loss

DESIGNS = {
    "pooled (shipped)": (("bounded", True),),
    "map (soft-argmax, anisotropic)": (("localizer", "map"),),
}
CORNERS = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])  # output corners, (x, y, 1)


def window_quads(theta: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel corners ``(B, 4, 2)`` of the input window that θ samples."""
    return (torch.einsum("bij,kj->bki", theta, CORNERS) + 1) / 2 * size


def score(model: ZooNet, families: tuple[str, ...], n: int = 600) -> dict[str, float]:
    """Window IoU, centre correlation and the square target's own IoU on ``n`` test scenes."""
    batch = SceneGenerator("test", SceneConfig(size=INPUT_SIZE, items=(1, 1), families=families)).generate(n, seed=0)
    with torch.no_grad():
        theta = model.stn.head(model.stn.localization(model.standardize(normalize(batch.images))))  # (B, 2, 3)
    quads = window_quads(theta, INPUT_SIZE)
    t = box_targets(batch.boxes, INPUT_SIZE)
    target_theta = torch.zeros(len(t), 2, 3)
    target_theta[:, 0, 0], target_theta[:, 1, 1], target_theta[:, :, 2] = t[:, 0], t[:, 1], t[:, 2:]
    target = window_quads(target_theta, INPUT_SIZE)
    centres = quads.mean(1)
    box_c = torch.stack([(batch.boxes[:, 0] + batch.boxes[:, 2]) / 2, (batch.boxes[:, 1] + batch.boxes[:, 3]) / 2], 1).float()
    r = [float(torch.corrcoef(torch.stack([centres[:, i], box_c[:, i]]))[0, 1]) for i in range(2)]
    return {"iou": round(float(quad_iou(quads, batch.boxes, (INPUT_SIZE, INPUT_SIZE)).mean()), 4),
            "centre_r": round(sum(r) / 2, 4),
            "square_target_iou": round(float(quad_iou(target, batch.boxes, (INPUT_SIZE, INPUT_SIZE)).mean()), 4)}


def train_localiser(kwargs: tuple[tuple[str, object], ...], steps: int, batch: int, lr: float, seed: int) -> tuple[ZooNet, float]:
    """Train only the STN of a fresh zoo model with the box loss; returns it and the seconds taken."""
    torch.manual_seed(seed)
    model = ZooNet(ZooSpec("stn", "input", kwargs))
    opt = torch.optim.AdamW(model.stn.parameters(), lr=lr, weight_decay=0.05)
    gen = SceneGenerator("train", SceneConfig(size=INPUT_SIZE, items=(1, 1), families=TRAIN_FAMILIES))
    model.train()
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = scheduled_lr(lr, step, steps, 50)
        b = gen.generate(batch, seed=seed * 10**7 + step)
        loss = stn_box_loss(model, normalize(b.images), b.boxes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval(), time.time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, object] = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "threads": args.threads}
    for name, kwargs in DESIGNS.items():
        model, secs = train_localiser(kwargs, args.steps, args.batch, args.lr, seed=3)
        n_loc = sum(p.numel() for p in model.stn.parameters())
        out[name] = {"minutes": round(secs / 60, 1), "localiser_parameters": n_loc,
                     "in_family": score(model, TRAIN_FAMILIES), "heldout": score(model, HELDOUT_FAMILIES)}
        print(json.dumps({name: out[name]}), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
