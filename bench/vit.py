"""Vision-transformer costs on CPU, every ratio from one interleaved run (the machine is noisy).

    python bench/vit.py [--repeats 10] [--out bench/out/vit.json]

1. timm ``vit_small_patch16_224`` at 224², batch 1 and 8: forward with ``attnviz.capture`` ÷ the plain fused forward, beside
   what users do today (``fused_attn=False`` plus forward hooks on ``attn_drop`` to keep the weights) and the unfused
   forward alone.
2. Attention rollout over the 12 layers and one click (a patch's row) ÷ one forward, batch 1.
3. Peak memory of a DINOv2-S/14 forward at 518² (1 + 4 + 1369 tokens), capture ÷ plain, each in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import attnviz  # noqa: E402
from attnviz.capture import records  # noqa: E402
from attnviz.maps.transformer import rollout_map  # noqa: E402


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def workaround(model: torch.nn.Module) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The usual recipe: switch every block to its explicit path and keep the weights with a hook."""
    import copy

    m = copy.deepcopy(model)
    kept: list[torch.Tensor] = []
    for blk in m.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda mod, args, out: kept.append(out.detach()))
    return m, kept


def overhead(batch: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    unfused, kept = workaround(model)
    hooks_off = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    for blk in hooks_off.blocks:
        blk.attn.fused_attn = False
    x = torch.randn(batch, 3, 224, 224)
    runs = {
        "plain": lambda: model(x),
        "capture": lambda: _captured(model, x),
        "capture_spill_all": lambda: _captured(model, x, spill=True),
        "workaround": lambda: (unfused(x), kept.clear()),
        "unfused": lambda: hooks_off(x),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for fn in runs.values():
            fn()
        for _ in range(repeats):
            for k, fn in runs.items():
                times[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = {f"{k}_paired": round(statistics.median(a / b for a, b in zip(times[k], times["plain"])), 3) for k in runs if k != "plain"}
    return {"batch": batch, "plain_ms": round(med["plain"] * 1e3, 1), **{f"{k}_ratio": round(med[k] / med["plain"], 3) for k in runs if k != "plain"},
            **paired}


def _captured(model: torch.nn.Module, x: torch.Tensor, spill: bool = False) -> None:
    """A capture with the shipped settings, or with every query and key spilled to a file (``ATTNVIZ_SPILL_MB=0``)."""
    limit = records.SPILL_BYTES
    records.SPILL_BYTES = 0 if spill else limit
    try:
        with attnviz.capture(model):
            model(x)
    finally:
        records.SPILL_BYTES = limit


def view_costs(repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode(), attnviz.capture(model) as cap:
        model(x)
    recs = list(cap.records.values())
    fwd, roll, click = [], [], []
    with torch.inference_mode():
        for i in range(repeats):
            fwd.append(timed(lambda: model(x)))
            roll.append(timed(lambda: rollout_map(recs, 0)))
            click.append(timed(lambda i=i: recs[-1].row(i % 14, (3 * i) % 14)))
    f = statistics.median(fwd)
    return {"forward_ms": round(f * 1e3, 1), "rollout_ratio": round(statistics.median(roll) / f, 4), "click_ratio": round(statistics.median(click) / f, 5)}


def _memory_child(mode: str) -> None:
    """Peak RSS during one forward above the RSS just before it, sampled every millisecond (ru_maxrss cannot be reset,
    and building the model peaks higher than its forward)."""
    import threading

    import psutil

    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=518).eval()
    x = torch.randn(1, 3, 518, 518)
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    with torch.inference_mode():
        if mode == "capture":
            with attnviz.capture(model) as cap:
                model(x)
            assert len(cap.records) == 12
        else:
            model(x)
    done.set()
    t.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    print(json.dumps({"peak_kb": (peak[0] - base) / 1024}))


MEMORY_SETTINGS = {  # environment of the child processes: attnviz's spill limit, and glibc's threshold for returning big blocks
    "default (q and k kept in memory up to 64 MB per forward)": {},
    "spill everything (ATTNVIZ_SPILL_MB=0)": {"ATTNVIZ_SPILL_MB": "0"},
    "glibc returns freed blocks (MALLOC_MMAP_THRESHOLD_=65536)": {"MALLOC_MMAP_THRESHOLD_": "65536"},
    "both": {"ATTNVIZ_SPILL_MB": "0", "MALLOC_MMAP_THRESHOLD_": "65536"},
}


def memory(runs: int = 3) -> dict[str, dict[str, float]]:
    """Peak memory of one forward, capture ÷ plain, under each of ``MEMORY_SETTINGS``: ``runs`` fresh processes per arm,
    alternating, median (glibc keeps freed blocks in its heap, so one process's peak varies by ±15 MB)."""
    res = {}
    for label, env in MEMORY_SETTINGS.items():
        out: dict[str, list[float]] = {"plain": [], "capture": []}
        for _ in range(runs):
            for mode in out:
                r = subprocess.run([sys.executable, __file__, "--memory-child", mode], capture_output=True, text=True, check=True,
                                   env={**os.environ, **env})
                out[mode].append(json.loads(r.stdout.strip().splitlines()[-1])["peak_kb"] / 1024)
        med = {k: statistics.median(v) for k, v in out.items()}
        res[label] = {"plain_mb": round(med["plain"], 1), "capture_mb": round(med["capture"], 1),
                      "ratio": round(med["capture"] / max(med["plain"], 1e-6), 3),
                      "capture_range_mb": [round(min(out["capture"]), 1), round(max(out["capture"]), 1)],
                      "plain_range_mb": [round(min(out["plain"]), 1), round(max(out["plain"]), 1)]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="bench/out/vit.json")
    ap.add_argument("--memory-child", choices=["plain", "capture"])
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--memory-runs", type=int, default=3, help="fresh processes per arm and setting (median)")
    args = ap.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child)
        return
    if args.memory_only:
        print(json.dumps(memory(args.memory_runs), indent=2))
        return
    res = {"overhead": [overhead(b, args.repeats) for b in (1, 8)], "views": view_costs(args.repeats * 3), "memory_dinov2_518": memory(args.memory_runs),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
