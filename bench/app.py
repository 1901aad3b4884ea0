"""App benchmark (CPU, server side). Ratios come from one run so machine noise cancels.

    python bench/app.py [--clicks 200] [--analyses 500] [--out bench/out/app.json]

1. Click handling — click layer row or CCNet reach at the query pixel, plus the overlay rendered at
   display size — vs one forward of the same model on the same input (target ≤ 0.1×), p50 and p95
   over ``--clicks`` random pixels. Models: the zoo's ccnet_resnet and nonlocal_resnet (64² input,
   shown at 384²), nonlocal_seg and ccnet_seg (segmentation, 128² input), a Non-Local ResNet-18 and timm's botnet26t_256 at ImageNet size (random weights:
   timing does not depend on them), shown at 768 px.
2. Memory: RSS of the live app process after 10 and after ``--analyses`` analyze calls through
   gradio_client with distinct images (target: growth ≤ 50 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnviz.analysis import Catalog, Engine, Entry, Style
from attnviz.analysis import click as click_view
from attnviz.modules import NonLocal2d


def nonlocal_r18() -> nn.Module:
    m = torchvision.models.resnet18()
    m.layer3 = nn.Sequential(m.layer3, NonLocal2d(256))
    m.card = {"input_size": [224, 224]}  # type: ignore[assignment]
    return m.eval()


def botnet() -> nn.Module:
    import timm

    m = timm.create_model("botnet26t_256", pretrained=False).eval()
    m.card = {"input_size": [256, 256]}  # type: ignore[assignment]
    return m


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def bench_clicks(n: int) -> list[dict[str, object]]:
    from attnviz.models import load_pretrained

    entries = [Entry("nonlocal_r18", True, loader=nonlocal_r18), Entry("botnet26t_256", True, loader=botnet)]
    for name in ("ccnet_resnet", "nonlocal_resnet", "nonlocal_seg", "ccnet_seg"):
        entries.append(Entry(name, True, loader=lambda n=name: load_pretrained(n)))
    eng = Engine(Catalog(entries, torch.device("cpu")))
    rng = np.random.default_rng(0)
    photo = str(Path(__file__).resolve().parents[1] / "examples" / "photo_chelsea.png")
    scene = str(next((Path(__file__).resolve().parents[1] / "examples").glob("scene_*.png")))
    rows = []
    for e in entries:
        seg_scene = Path(__file__).resolve().parents[1] / "examples" / f"segscene_{e.name}.png"
        a = eng.analyze(str(seg_scene) if seg_scene.exists() else scene if e.name.endswith(("_resnet", "_seg")) else photo, e.name)
        model = eng.catalog.get(e.name)
        h, w = a.hw
        fwd, click = [], []
        with torch.inference_mode():
            model(a.x)
        for i in range(n):  # interleave forwards and clicks
            if i % 10 == 0:
                t = time.perf_counter()
                with torch.inference_mode():
                    model(a.x)
                fwd.append(time.perf_counter() - t)
            x, y = float(rng.integers(0, w)), float(rng.integers(0, h))
            t = time.perf_counter()
            click_view.attention_at(a, x, y, None, None, None, Style())
            click.append(time.perf_counter() - t)
        f = statistics.median(fwd)
        layer = click_view.click_choices(a)[-1]
        rows.append({"model": e.name, "layer": layer, "display": f"{w}×{h}", "input": "×".join(map(str, a.x.shape[-2:])),
                     "forward_ms": round(f * 1e3, 2), "click_p50_ms": round(pct(click, 50) * 1e3, 2),
                     "click_p95_ms": round(pct(click, 95) * 1e3, 2), "ratio_p50": round(pct(click, 50) / f, 4),
                     "ratio_p95": round(pct(click, 95) / f, 4)})
        print(rows[-1], flush=True)
    return rows


def bench_memory(n: int) -> dict[str, float]:
    from gradio_client import Client, handle_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import free_port

    from attnviz.ui import build_demo

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    demo = build_demo()
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    c = Client(f"http://127.0.0.1:{port}/", verbose=False)
    proc = psutil.Process()
    tmp = Path("bench/out/imgs")
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    from PIL import Image

    rss = {}
    t0 = time.time()
    for i in range(n):
        p = tmp / f"{i % 50}.png"
        Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(p)
        c.predict(handle_file(str(p)), "ccnet_resnet", api_name="/analyze")
        if i + 1 in (10, n):
            rss[i + 1] = proc.memory_info().rss / 2**20
            print(f"after {i + 1} analyses: RSS {rss[i + 1]:.1f} MB ({time.time() - t0:.0f} s)", flush=True)
    demo.close()
    return {"rss_after_10_mb": round(rss[10], 1), f"rss_after_{n}_mb": round(rss[n], 1), "growth_mb": round(rss[n] - rss[10], 1),
            "cached_analyses": demo.engine.cached()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clicks", type=int, default=200)
    ap.add_argument("--analyses", type=int, default=500)
    ap.add_argument("--out", default="bench/out/app.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "clicks": bench_clicks(args.clicks),
           "memory": bench_memory(args.analyses)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
