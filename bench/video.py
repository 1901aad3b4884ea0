"""Video benchmark (CPU). Ratios come from one run so machine noise cancels.

    python bench/video.py [--seconds 6] [--out bench/out/video.json]

1. End-to-end fps of ``attnviz.video.analyze_video`` (decode + capture + maps + render + encode,
   two decode passes for the clip-wide colour scale) vs forward-only fps (preprocess + forward of
   the same frames, already decoded, same batch size) — target ≥ 0.8× — at 256×256 and 854×480,
   for a zoo model (64² input: forward is cheap, so I/O dominates) and a Non-Local ResNet-18 at 224².
2. The naive loop users write today: per-frame forward, per-frame colour scale, OpenCV ``mp4v`` writer.
3. Peak RSS (VmHWM) of a 10 s vs a 60 s 480p clip, each in a fresh process (target ≤ 1.2×).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnviz import render
from attnviz.capture import capture
from attnviz.capture.records import SpatialMask
from attnviz.maps import click_layers, click_map
from attnviz.models.inputs import card_of, preprocess
from attnviz.video import analyze_video, iter_frames, write_video

OUT = Path("bench/out")


def make_clip(path: Path, seconds: float, w: int, h: int, fps: int = 15) -> Path:
    rng = np.random.default_rng(0)
    base = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    frames = []
    for t in range(int(seconds * fps)):
        f = np.roll(base, t * 3, axis=1).copy()
        x = (t * 5) % (w - 40)
        f[h // 3 : h // 3 + 40, x : x + 40] = (250, 220, 30)
        frames.append(f)
    return write_video(path, frames, fps)


def nonlocal_r18() -> torch.nn.Module:
    import torchvision

    from attnviz.modules import NonLocal2d

    m = torchvision.models.resnet18()
    m.layer3 = torch.nn.Sequential(m.layer3, NonLocal2d(256))
    m.card = {"input_size": [224, 224]}  # type: ignore[assignment]
    return m.eval()


def forward_only(path: Path, model: torch.nn.Module, bs: int) -> float:
    frames = [f for _, _, f in iter_frames(path, 1, 10**6)]
    card = card_of(model)
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(frames), bs):
            model(preprocess(frames[i : i + bs], card, torch.device("cpu")))
    return len(frames) / (time.perf_counter() - t)


def naive(path: Path, model: torch.nn.Module, kind: str, out: Path) -> float:
    import cv2

    card = card_of(model)
    t = time.perf_counter()
    writer = None
    n = 0
    for _, _, f in iter_frames(path, 1, 10**6):
        with torch.no_grad(), capture(model) as cap:
            model(preprocess(f, card, torch.device("cpu")))
        if kind == "spatial":
            m = [r for r in cap.records.values() if isinstance(r, SpatialMask)][-1].mask[0].numpy()
        else:
            cl = list(click_layers(cap.records).values())[-1]
            m = click_map(cl, f.shape[1] / 2, f.shape[0] / 2, f.shape[:2]).numpy()
        img = render.overlay(f, m)  # per-frame colour scale: brightness differs between frames
        if writer is None:
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 15, (f.shape[1], f.shape[0]))
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        n += 1
    assert writer is not None
    writer.release()
    return n / (time.perf_counter() - t)


def peak_rss(path: Path) -> float:
    # VmHWM, not ru_maxrss: ru_maxrss survives fork+exec and would report this (large) parent's peak
    code = (
        "import attnviz; from attnviz.video import analyze_video; "
        "m = attnviz.load_pretrained('cbam_resnet'); "
        f"analyze_video({str(path)!r}, m, kind='spatial', out='bench/out/rss.mp4'); "
        "print([int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--out", default="bench/out/video.json")
    ap.add_argument("--memory-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    import attnviz

    models = {"cbam_resnet (64² input)": (attnviz.load_pretrained("cbam_resnet"), "spatial"),
              "Non-Local ResNet-18 (224² input)": (nonlocal_r18(), "query")}
    rows = []
    for w, h in (() if args.memory_only else ((256, 256), (854, 480))):
        clip = make_clip(OUT / f"clip_{w}x{h}.mp4", args.seconds, w, h)
        for name, (model, kind) in models.items():
            bs = 8
            fwd = forward_only(clip, model, bs)
            t = time.perf_counter()
            res = analyze_video(clip, model, kind=kind, out=OUT / "e2e.mp4", batch_size=bs)
            e2e = res.frames / (time.perf_counter() - t)
            nv = naive(clip, model, kind, OUT / "naive.mp4")
            rows.append({"clip": f"{w}×{h}, {res.frames} frames", "model": name, "kind": kind, "forward_only_fps": round(fwd, 1),
                         "end_to_end_fps": round(e2e, 1), "ratio": round(e2e / fwd, 3), "naive_fps": round(nv, 1),
                         "naive_ratio": round(nv / fwd, 3)})
            print(rows[-1], flush=True)
    c10 = make_clip(OUT / "clip10.mp4", 10, 854, 480)
    c60 = make_clip(OUT / "clip60.mp4", 60, 854, 480)
    r10, r60 = peak_rss(c10), peak_rss(c60)
    mem = {"peak_rss_10s_mb": round(r10, 1), "peak_rss_60s_mb": round(r60, 1), "ratio": round(r60 / r10, 3)}
    print(mem)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "fps": rows, "memory": mem,
                                          "bench_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, indent=2))


if __name__ == "__main__":
    main()
