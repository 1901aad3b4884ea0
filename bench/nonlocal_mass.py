"""Why did the zoo Non-Local's centre-query mass fall from zoo v1 to v2? Its mechanism, measured on the same scenes.

    python bench/nonlocal_mass.py --weights v1=/tmp/v1/nonlocal_resnet.safetensors --weights v2=pretrained/nonlocal_resnet.safetensors

For each checkpoint, on test-split scenes v2 of the train and held-out families (``--n`` each), from the block's own
parameters applied to the block's own input (a forward pre-hook on ``context``; the same arithmetic as
``NonLocal2d.forward``):

- ``mass_ratio``: the centre query's row, mass inside the item box ÷ the box's share of the image (the card's figure);
- ``query_js``: Jensen–Shannon divergence between the rows of two random queries of one image (0: one map for all);
- ``query_share``: the share of the logits' variance over keys that the *query-specific* part carries: logits
  θ(x_i)ᵀφ(x_j) = θ̄ᵀφ(x_j) + (θ(x_i) − θ̄)ᵀφ(x_j), with θ̄ the image's mean query;
- ``logit_std``: the scaled logits' standard deviation over keys (the softmax temperature it works at);
``--weights start=pretrained/plain_resnet.safetensors`` measures a fresh block on a trained backbone (where the v2
fine-tune starts; γ = 0 there, so the block adds nothing yet); ``random`` a fresh model.

- ``gamma``: |BN γ| of the output projection (mean), and ``contribution`` ‖W·y‖ / ‖x‖ (how much the block adds).
"""

from __future__ import annotations

import argparse
import json

import torch
from safetensors.torch import load_file

from attnviz.data import HELDOUT_FAMILIES, TRAIN_FAMILIES, SceneConfig, SceneGenerator, normalize
from attnviz.maps.metrics import js_divergence, mass_ratio
from attnviz.models.zoo import INPUT_SIZE, build


def block_stats(model: torch.nn.Module, families: tuple[str, ...], n: int) -> dict[str, float]:
    """The measures of the module docstring on ``n`` test scenes of ``families``."""
    batch = SceneGenerator("test", SceneConfig(size=INPUT_SIZE, items=(1, 1), families=families)).generate(n, seed=0)
    seen: dict[str, torch.Tensor] = {}
    handle = model.context.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].detach()))
    with torch.no_grad():
        acc = float((model(normalize(batch.images)).argmax(1) == batch.labels).float().mean())
    handle.remove()
    nl, x = model.context, seen["x"]  # x: (B, C, h, w)
    b, _, h, w = x.shape
    with torch.no_grad():
        q = nl.theta(x).flatten(2).transpose(1, 2)  # (B, N, Ci)
        k = nl.phi(x).flatten(2)  # (B, Ci, M)
        v = nl.g(x).flatten(2).transpose(1, 2)  # (B, M, Ci)
        logits = torch.bmm(q, k) * nl.scale  # (B, N, M)
        attn = logits.softmax(-1)
        added = nl.w(torch.bmm(attn, v).transpose(1, 2).reshape(b, -1, h, w))  # (B, C, h, w)
        common = torch.bmm(q.mean(1, keepdim=True), k) * nl.scale  # (B, 1, M)
    specific = logits - common
    cy = ((batch.boxes[:, 1] + batch.boxes[:, 3]) / 2 / INPUT_SIZE * h).long().clamp(0, h - 1)
    cx = ((batch.boxes[:, 0] + batch.boxes[:, 2]) / 2 / INPUT_SIZE * w).long().clamp(0, w - 1)
    rows = attn[torch.arange(b), cy * w + cx].view(b, h, w)
    up = torch.nn.functional.interpolate(rows[:, None], size=(INPUT_SIZE, INPUT_SIZE), mode="nearest")[:, 0]
    g = torch.Generator().manual_seed(0)
    pairs = torch.randint(0, h * w, (b, 2), generator=g)
    ar = torch.arange(b)
    return {
        "accuracy": round(acc, 4),
        "mass_ratio": round(float(mass_ratio(up, batch.boxes).mean()), 3),
        "query_js": round(float(js_divergence(attn[ar, pairs[:, 0]], attn[ar, pairs[:, 1]]).mean()), 4),
        "query_share": round(float(specific.var(-1).mean() / logits.var(-1).mean()), 4),
        "logit_std": round(float(logits.std(-1).mean()), 3),
        "gamma": round(float(nl.w[1].weight.abs().mean()), 4),
        "contribution": round(float((added.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)).mean()), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", action="append", required=True, help="LABEL=PATH of a nonlocal_resnet checkpoint (repeatable)")
    p.add_argument("--n", type=int, default=600)
    args = p.parse_args()
    torch.manual_seed(0)
    out = {}
    for item in args.weights:
        label, path = item.split("=", 1)
        model = build("nonlocal_resnet")
        if path != "random":  # a plain_resnet checkpoint gives the fine-tune's start: its backbone, a fresh block
            own = model.state_dict()
            model.load_state_dict({k: v for k, v in load_file(path).items() if k in own and own[k].shape == v.shape}, strict=False)
        model.eval()
        out[label] = {"in_family": block_stats(model, TRAIN_FAMILIES, args.n), "heldout": block_stats(model, HELDOUT_FAMILIES, args.n)}
        print(json.dumps({label: out[label]}), flush=True)


if __name__ == "__main__":
    main()
