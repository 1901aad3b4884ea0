"""CPU cost of the published mmsegmentation architectures (random weights: the cost does not depend on them).

    python bench/mmseg.py [--repeats 3] [--out pretrained/mmseg_cpu.json]

For each decode head (NL, CC, DA, GC, OCR) and depth (R50, R101) at the app's CPU input sizes
(Cityscapes 256×512, 19 classes; ADE20K 384×384, 150 classes): median forward time without and with
capture, the time of one click (the default view of the head's click layer, from the captured records),
and the process's peak RSS after the runs. Plain and captured forwards are interleaved. The JSON output
is what the README's published-checkpoint table quotes (``python -m attnviz.docs``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnviz import capture  # noqa: E402
from attnviz.maps.views import click_layers, click_map  # noqa: E402
from attnviz.models.mmseg import DATASETS, MMSEG, build_mmseg  # noqa: E402


def one(method: str, depth: int, dataset: str, repeats: int) -> dict[str, float]:
    ds = DATASETS[dataset]
    h, w = ds["cpu_input"]
    model = build_mmseg(method, depth, len(ds["classes"])).eval()
    x = torch.randn(1, 3, h, w)
    tp: list[float] = []
    tc: list[float] = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            tp.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with capture(model) as cap:
                model(x)
            tc.append(time.perf_counter() - t0)
    layers = click_layers(cap.records)
    click_ms = float("nan")
    if layers:
        layer = next(iter(layers.values()))
        ts = []
        for i in range(20):
            t0 = time.perf_counter()
            click_map(layer, (37 * i) % w, (23 * i) % h, (h, w), layer.default_view)
            ts.append(time.perf_counter() - t0)
        click_ms = 1e3 * statistics.median(ts)
    return {"input": [w, h], "forward_ms": round(1e3 * statistics.median(tp), 1), "capture_ms": round(1e3 * statistics.median(tc), 1),
            "click_ms": round(click_ms, 2), "records": len(cap.records), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="pretrained/mmseg_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    combos = sorted({(e.method, e.depth, e.dataset) for e in MMSEG.values()})
    res: dict[str, object] = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}",
                              "note": "median of interleaved runs, batch 1, random weights, our ResNetV1c-D8 + head"}
    for method, depth, dataset in combos:
        r = one(method, depth, dataset, args.repeats)
        res[f"{method}_r{depth}_{dataset}"] = r
        print(f"{method:8s} R{depth:<3d} {dataset:10s} {r['input'][0]}×{r['input'][1]}: forward {r['forward_ms']:7.0f} ms, capture {r['capture_ms']:7.0f} ms, "
              f"click {r['click_ms']:6.2f} ms, peak RSS {r['peak_rss_mb']} MB", flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
