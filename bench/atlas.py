"""Attention-atlas benchmark (CPU). Ratios come from one run, interleaved, to cancel the machine's noise.

    python bench/atlas.py [--images 256] [--rounds 2] [--small 1000] [--large 20000] [--out bench/out/atlas.json]

1. Throughput of a local atlas vs a plain batched forward over the same images (the same decoding workers, batch 16):
   timm SE-ResNet-18 with a Non-Local block after layer3 (14×14 positions at 224²), on photos of mixed sizes (target ≥ 0.8×).
2. The Ray engine on this machine (2 actors, Ray started beforehand; start-up timed apart) vs local.
3. Peak RSS in dataset size: the same small model over 1k and 20k images, each run in a fresh process (target ≤ 1.1×).
4. The per-image costs the scaling plan in BENCHMARKS.md starts from.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnviz.atlas import AtlasOptions, run_atlas, scan_folder  # noqa: E402
from attnviz.atlas.engines import Plan, _as_is, _Shards  # noqa: E402
from attnviz.models.inputs import card_of  # noqa: E402
from attnviz.modules import NonLocal2d  # noqa: E402

BATCH = 16


def nl_se_model() -> nn.Module:
    """timm seresnet18 with a Non-Local block after layer3 (a trained-looking, non-identity block)."""
    torch.manual_seed(0)
    m = timm.create_model("seresnet18", pretrained=False, num_classes=4)
    block = NonLocal2d(256)
    nn.init.normal_(block.w[1].weight, 0, 0.1)
    m.layer3 = nn.Sequential(m.layer3, block)
    m.card = {"input_size": [224, 224], "class_names": ["a", "b", "c", "d"]}
    return m.eval()


def small_model() -> nn.Module:
    from attnviz.modules import SqueezeExcite  # noqa: PLC0415

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), SqueezeExcite(8, rd_channels=4), NonLocal2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, 4))
    m.card = {"input_size": [32, 32], "class_names": ["a", "b", "c", "d"]}
    return m.eval()


def photos(root: Path, n: int, rng: np.random.Generator) -> Path:
    """``n`` JPEG crops of scikit-image's photos (280–520 px sides) in four class folders."""
    import skimage.data as d  # noqa: PLC0415

    pool = [d.astronaut(), d.coffee(), d.chelsea(), d.rocket(), np.stack([d.camera()] * 3, -1)]
    for i in range(n):
        src = pool[i % len(pool)]
        h, w = int(rng.integers(280, min(520, src.shape[0]))), int(rng.integers(280, min(520, src.shape[1])))
        y, x = int(rng.integers(0, src.shape[0] - h + 1)), int(rng.integers(0, src.shape[1] - w + 1))
        (root / "abcd"[i % 4]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(src[y : y + h, x : x + w]).save(root / "abcd"[i % 4] / f"{i:06d}.jpg", quality=90)
    return root


def tiny(root: Path, n: int, rng: np.random.Generator) -> Path:
    for i in range(n):
        (root / "abcd"[i % 4]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "abcd"[i % 4] / f"{i:06d}.png")
    return root


def plain(model: nn.Module, data: Path, workers: int) -> float:
    """Seconds for a plain batched forward: the same shards, decoding workers and batch size, no capture."""
    source = scan_folder(data)
    plan = Plan(source.shards(BATCH), card_of(model))
    t0 = time.perf_counter()
    loader = DataLoader(_Shards(plan, list(range(len(plan.shards)))), batch_size=None, num_workers=workers, collate_fn=_as_is,
                        prefetch_factor=2 if workers else None)
    with torch.inference_mode():
        for _, decoded in loader:
            model(decoded.x)
    return time.perf_counter() - t0


def atlas(model: nn.Module, data: Path, out: Path, engine: str, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    run_atlas(model, scan_folder(data), out, AtlasOptions(engine=engine, batch_size=BATCH, workers=workers))
    return time.perf_counter() - t0


def rss_child(data: str, out: str) -> None:
    """In a fresh process: one atlas run; prints the peak RSS (MB) and its growth above the RSS before the run."""
    import psutil  # noqa: PLC0415

    model = small_model()
    base = psutil.Process().memory_info().rss / 2**20
    run_atlas(model, scan_folder(data), out, AtlasOptions(batch_size=64, workers=0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak, "before_mb": base}))


def rss(data: Path, out: Path) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    res = subprocess.run([sys.executable, __file__, "--rss-child", str(data), str(out)], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def ray_vs_local(model: nn.Module, data: Path, tmp: Path, workers: int) -> dict[str, object]:
    """The Ray engine (2 actors, Ray started beforehand and timed apart) and local, one after the other."""
    import ray  # noqa: PLC0415

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    start = round(time.perf_counter() - t0, 2)
    ray_s = atlas(model, data, tmp / "out-ray", "ray", 2)
    local_s = atlas(model, data, tmp / "out-local", "local", workers)
    ray.shutdown()
    return {"ray_start_s": start, "ray_s": ray_s, "local_again_s": local_s, "throughput_ray_vs_local": round(local_s / ray_s, 3)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--large", type=int, default=20000)
    p.add_argument("--workers", type=int, default=1, help="decoding processes (local) and actors (ray: at least 2)")
    p.add_argument("--out", default="bench/out/atlas.json")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--rss-child", nargs=2, default=None)
    args = p.parse_args()
    if args.rss_child:
        return rss_child(*args.rss_child)
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    res: dict[str, object] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "images": args.images}
    try:
        data = photos(tmp / "photos", args.images, rng)
        model = nl_se_model()
        plain(model, data, args.workers)  # warm-up
        times: dict[str, list[float]] = {"plain": [], "local": []}
        for _ in range(args.rounds):
            times["plain"].append(plain(model, data, args.workers))
            times["local"].append(atlas(model, data, tmp / "out-local", "local", args.workers))
        t0 = time.perf_counter()  # merging the shards and drawing the report alone: a finished run resumed does only that
        run_atlas(model, scan_folder(data), tmp / "out-local", AtlasOptions(batch_size=BATCH, workers=args.workers, resume=True))
        res["merge_and_report_s"] = round(time.perf_counter() - t0, 3)
        res["plain_s"], res["local_s"] = times["plain"], times["local"]
        res["throughput_local_vs_plain"] = round(min(times["plain"]) / min(times["local"]), 3)
        res["throughput_local_vs_plain_without_report"] = round(min(times["plain"]) / (min(times["local"]) - res["merge_and_report_s"]), 3)
        res["per_image_ms"] = {"plain": round(1000 * min(times["plain"]) / args.images, 2), "atlas": round(1000 * min(times["local"]) / args.images, 2)}
        if not args.skip_ray:
            res.update(ray_vs_local(model, data, tmp, args.workers))
        if args.skip_rss:
            return _write(res, args.out)
        big = tiny(tmp / "tiny", args.large, rng)
        small_dir = tmp / "tiny-small"
        for cls in "abcd":
            (small_dir / cls).mkdir(parents=True)
        for f in sorted(big.rglob("*.png"))[: args.small]:
            os.link(f, small_dir / f.parent.name / f.name)
        res["rss_small"], res["rss_large"] = rss(small_dir, tmp / "out-s"), rss(big, tmp / "out-l")
        res["rss_ratio_large_vs_small"] = round(res["rss_large"]["peak_mb"] / res["rss_small"]["peak_mb"], 3)  # type: ignore[index]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _write(res, args.out)


def _write(res: dict[str, object], out: str) -> None:
    print(json.dumps(res, indent=2))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
