"""Capture overhead benchmark (CPU). Ratios are measured in one run, interleaved, to cancel noise.

    python bench/capture.py [--repeats 15] [--out BENCHMARKS-capture.json]

1. capture-on forward / plain forward at batch 1 and 8 (target ≤ 1.05×; the ratio of the medians, and the median of each
   round's capture ÷ the plain forward run just before it, which a slow drift of the machine's speed moves less), beside the floor an empty
   ``TorchFunctionMode`` costs (what watching every torch call costs before any bookkeeping): gate-heavy nets (CBAM-ResNet18
   and SE-ResNet50 from timm, torchvision efficientnet_b0), a Non-Local ResNet18, timm's BotNet and
   HaloNet (explicit q·kᵀ softmax in this timm) and two timm models whose attention runs through
   ``F.scaled_dot_product_attention`` (CoAtNet, MobileNetV4-hybrid), and timm's ViT-S/16 (fused attention). Captured
   forwards replay the model's plan (lazy labelling, ``attnviz.capture.plan``); *first forward* is a capture whose plan
   was forgotten just before, i.e. what the first forward of a model at a new input size costs (it follows every op).
2. one Non-Local row and one CCNet two-hop reach per query vs one forward (target ≤ 0.01×).
3. peak memory of a Non-Local net forward at 1024×1024, capture vs plain (target ≤ 1.2×), each in a
   fresh process: peak RSS growth above the RSS after model construction.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import attnviz  # noqa: E402
from attnviz.capture.plan import forget_plans  # noqa: E402
from attnviz.modules import NonLocal2d, RecurrentCrissCross  # noqa: E402


def with_block(block: nn.Module) -> nn.Module:
    """torchvision ResNet-18 with ``block`` after layer3 (14×14 at 224)."""
    m = torchvision.models.resnet18()
    m.layer3 = nn.Sequential(m.layer3, block)
    return m


def nonlocal_net() -> nn.Module:
    block = NonLocal2d(256)
    nn.init.normal_(block.w[1].weight, 0, 0.1)  # a trained-looking, non-identity block
    return with_block(block)


def ccnet_net() -> nn.Module:
    block = RecurrentCrissCross(256, recurrence=2)
    nn.init.constant_(block.cca.gamma, 0.5)
    return with_block(block)


MODELS: dict[str, tuple[object, int]] = {  # name -> (factory, input side)
    "cbam_resnet18 (timm)": (lambda: timm.create_model("resnet18", block_args=dict(attn_layer="cbam")), 224),
    "seresnet50 (timm)": (lambda: timm.create_model("seresnet50"), 224),
    "efficientnet_b0 (torchvision)": (torchvision.models.efficientnet_b0, 224),
    "nonlocal_resnet18": (nonlocal_net, 224),
    "botnet26t_256 (timm)": (lambda: timm.create_model("botnet26t_256"), 256),
    "halonet26t (timm)": (lambda: timm.create_model("halonet26t"), 256),
    "coatnet_nano_rw_224 (timm, SDPA)": (lambda: timm.create_model("coatnet_nano_rw_224"), 224),
    "mobilenetv4_hybrid_medium (timm, SDPA)": (lambda: timm.create_model("mobilenetv4_hybrid_medium"), 256),
    "vit_small_patch16_224 (timm, SDPA)": (lambda: timm.create_model("vit_small_patch16_224"), 224),
}


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class EmptyMode(TorchFunctionMode):
    """A ``TorchFunctionMode`` that only calls through: the floor cost of watching every torch call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return func(*args, **(kwargs or {}))


def overhead(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median plain, captured and empty-TorchFunctionMode forward times, interleaved."""
    model.eval()

    def plain() -> None:
        model(x)

    def captured() -> None:
        with attnviz.capture(model):
            model(x)

    def empty_mode() -> None:
        with EmptyMode():
            model(x)

    def first() -> None:
        forget_plans(model)
        captured()

    with torch.inference_mode():
        for _ in range(2):
            plain(), captured(), empty_mode()
        tp, tc, tm, tf = [], [], [], []
        for _ in range(repeats):
            tp.append(timed(plain))
            tc.append(timed(captured))
            tm.append(timed(empty_mode))
            tf.append(timed(first))
    p, c, m, f = (statistics.median(t) for t in (tp, tc, tm, tf))
    paired = statistics.median(b / a for a, b in zip(tp, tc))  # each capture over the plain forward just before it
    return {"plain_ms": 1e3 * p, "capture_ms": 1e3 * c, "ratio": c / p, "paired_ratio": paired, "empty_mode_ms": 1e3 * m,
            "empty_mode_ratio": m / p, "first_ms": 1e3 * f, "first_ratio": f / p}


def query_costs(repeats: int) -> dict[str, float]:
    """Time of one Non-Local row and one CCNet reach vs one plain forward at 224."""
    x = torch.randn(1, 3, 224, 224)
    out: dict[str, float] = {}
    for label, factory in [("nonlocal_row", nonlocal_net), ("ccnet_reach", ccnet_net)]:
        m = factory().eval()
        with torch.inference_mode():
            fwd = statistics.median(timed(lambda: m(x)) for _ in range(repeats))
            with attnviz.capture(m) as cap:
                m(x)
        recs = list(cap.records.values())
        if label == "nonlocal_row":
            q = lambda i: recs[0].row(i % 14, (3 * i) % 14)  # noqa: E731
        else:
            q = lambda i: attnviz.criss_cross_reach(recs[0], recs[1], i % 14, (3 * i) % 14)  # noqa: E731
        for i in range(5):
            q(i)
        per = statistics.median(timed(lambda i=i: q(i)) for i in range(200))
        out[f"{label}_ms"] = 1e3 * per
        out[f"{label}_forward_ms"] = 1e3 * fwd
        out[f"{label}_ratio"] = per / fwd
    return out


def _memory_child(mode: str, side: int) -> None:
    import psutil

    torch.set_num_threads(2)
    m = nonlocal_net().eval()
    x = torch.randn(1, 3, side, side)
    base = psutil.Process().memory_info().rss
    with torch.inference_mode():
        if mode == "capture":
            with attnviz.capture(m) as cap:
                m(x)
            assert len(cap.records) == 1
        else:
            m(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"growth_mb": (peak - base) / 2**20}))


def memory(side: int) -> dict[str, float]:
    res = {}
    for mode in ("plain", "capture"):
        out = subprocess.run([sys.executable, __file__, "--memory-child", mode, "--side", str(side)], capture_output=True, text=True, check=True)
        res[f"{mode}_peak_growth_mb"] = json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]
    res["ratio"] = res["capture_peak_growth_mb"] / res["plain_peak_growth_mb"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default="bench/out/capture.json")
    ap.add_argument("--memory-child", choices=["plain", "capture"])
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--only", default="", help="run only the models whose name contains this (and skip queries/memory)")
    args = ap.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.side)
        return
    torch.manual_seed(0)
    torch.set_num_threads(2)
    results: dict[str, object] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for name, (factory, side) in MODELS.items():
        if args.only and args.only not in name:
            continue
        model = factory()  # type: ignore[operator]
        with torch.inference_mode(), attnviz.capture(model.eval()) as cap:
            model(torch.randn(1, 3, side, side))
            results[f"{name} watches every op"] = cap._mode is not None  # generic discovery: its first forward follows every op
        results[f"{name} records"] = len(cap.records)
        for b in (1, 8):
            r = overhead(model, torch.randn(b, 3, side, side), args.repeats if b == 1 else max(5, args.repeats // 3))
            results[f"{name} b{b}"] = r
            print(f"{name:32s} batch {b}: plain {r['plain_ms']:8.1f} ms  capture {r['capture_ms']:8.1f} ms  ratio {r['ratio']:.3f}  "
                  f"(paired {r['paired_ratio']:.3f})  empty mode {r['empty_mode_ratio']:.3f}  first forward {r['first_ratio']:.3f} "
                  f"(discovery: {results[f'{name} watches every op']})",
                  flush=True)
    if args.only:
        print(json.dumps(results, indent=1))
        return
    q = query_costs(args.repeats)
    results["queries"] = q
    print(f"Non-Local row: {q['nonlocal_row_ms']:.3f} ms = {q['nonlocal_row_ratio']:.4f}× forward; "
          f"CCNet reach: {q['ccnet_reach_ms']:.3f} ms = {q['ccnet_reach_ratio']:.4f}× forward", flush=True)
    mem = memory(args.side)
    results["memory_1024"] = mem
    print(f"Non-Local {args.side}²: peak growth plain {mem['plain_peak_growth_mb']:.0f} MB, capture "
          f"{mem['capture_peak_growth_mb']:.0f} MB, ratio {mem['ratio']:.3f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
