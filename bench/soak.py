"""Soak test: N concurrent HTTP clients against the app for a long time; nothing wrong, nothing piles up.

    python bench/soak.py [--minutes 30] [--clients 8] [--cap-mb 40] [--ttl-s 240]

Starts the app in its own process (RSS is the server's alone) on shipped zoo models (a classification and a segmentation model), then
every client loops over a random mix of analyze / click / export / video / cancelled video on its own
image. Every result is checked against a reference computed alone before the soak: the prediction, the
click answer and the click overlay's bytes, and the bytes of every NPZ and PNG inside the export zip
(metadata is compared without its timing fields). Every 30 s it samples RSS and the size of the work
folders. Reports wrong results, errors, RSS growth after warm-up (target ≤ 100 MB) and the largest and
final size of the work folders against their cap. Writes ``bench/out/soak.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERVER = """
import attnviz
from attnviz.ui import build_demo
models = {"cbam_resnet": attnviz.load_pretrained("cbam_resnet"), "nonlocal_seg": attnviz.load_pretrained("nonlocal_seg")}
build_demo(models=models, include_registry=False).launch(server_port=7899, ssr_mode=False, quiet=True, max_threads=16)
"""
TIMING_KEYS = {"forward_ms", "seconds", "elapsed_s", "time", "created", "device"}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):  # os.walk ignores folders deleted while it walks (the server cleans them)
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def _strip(obj: Any) -> Any:
    """``obj`` without timing fields (they differ between runs and are not results)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _zip_digest(path: str | Path) -> dict[str, Any]:
    """sha256 of every PNG/NPZ member and the metadata without timings."""
    out: dict[str, Any] = {}
    with zipfile.ZipFile(path) as zf:
        if zf.testzip() is not None:
            raise ValueError("corrupt zip")
        for n in sorted(zf.namelist()):
            data = zf.read(n)
            out[n] = _strip(json.loads(data)) if n.endswith(".json") else hashlib.sha256(data).hexdigest()
    return out


def main() -> None:  # noqa: PLR0915  (a benchmark script: argument parsing, load loop and report in one place)
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--cap-mb", type=float, default=40.0, help="size cap of each work folder")
    ap.add_argument("--ttl-s", type=float, default=240.0, help="age after which work files are deleted")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "soak.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="attnviz_soak_"))
    os.environ["ATTNVIZ_WORK_DIR"] = str(work)
    os.environ["ATTNVIZ_WORK_CAP_MB"] = str(args.cap_mb)
    os.environ["ATTNVIZ_WORK_TTL_S"] = str(args.ttl_s)
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")  # Gradio's own upload/output cache, measured apart

    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image


    server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, env=os.environ.copy())  # the app alone in its process
    url = "http://127.0.0.1:7899/"
    for _ in range(600):
        try:
            Client(url, verbose=False)
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(1)

    rng = np.random.default_rng(0)
    imgs: list[tuple[Path, str, int, int]] = []
    for i in range(args.clients):  # every client its own image, size and model
        w, h = 90 + 7 * i, 70 + 5 * i
        p = work / f"client{i}.png"
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(p)
        imgs.append((p, "nonlocal_seg" if i % 2 else "cbam_resnet", w, h))
    clip = handle_file(str(ROOT / "examples" / "clip_moving_item.mp4"))

    def click_pts(i: int) -> list[tuple[int, int]]:
        _, _, w, h = imgs[i]
        return [(w // 4, h // 3), (w // 2, h // 2), (w - 3, h - 2)]

    # ---- references, one request at a time
    ref: dict[tuple[Any, ...], Any] = {}
    c0 = Client(url, verbose=False)
    for i, (p, model, _, _) in enumerate(imgs):
        f = handle_file(str(p))
        top, summ = c0.predict(f, model, api_name="/analyze")
        ref[("analyze", i)] = (top, _strip(summ))
        for x, y in click_pts(i):
            if summ.get("click_layers"):
                im, info = c0.predict(f, x, y, None, None, "mean", model, api_name="/attention_at")
                ref[("click", i, x, y)] = (_digest(im), _strip(info))
            ref[("export", i, x, y)] = _zip_digest(c0.predict(f, model, x, y, api_name="/export"))
    for model in ("cbam_resnet", "nonlocal_seg"):
        res = c0.predict(clip, model, "", None, None, None, 4, 300, api_name="/analyze_video")
        ref[("video", model)] = (_digest(res[3]), res[5])

    stop = time.time() + 60 * args.minutes
    lock = threading.Lock()
    counts: dict[str, int] = {}
    wrong: list[str] = []
    errors: list[str] = []

    def user(i: int) -> None:
        c = Client(url, verbose=False)
        p, model, _, _ = imgs[i]
        f = handle_file(str(p))
        r = random.Random(i)
        while time.time() < stop:
            op = r.choices(["analyze", "click", "export", "video", "cancel"], [3, 6 if ("click", i, *click_pts(i)[0]) in ref else 0, 3, 1, 1])[0]
            try:
                if op == "analyze":
                    top, summ = c.predict(f, model, api_name="/analyze")
                    ok = (top, _strip(summ)) == ref[("analyze", i)]
                elif op in ("click", "export"):
                    x, y = r.choice(click_pts(i))
                    if op == "click":
                        im, info = c.predict(f, x, y, None, None, "mean", model, api_name="/attention_at")
                        ok = (_digest(im), _strip(info)) == ref[("click", i, x, y)]
                    else:
                        ok = _zip_digest(c.predict(f, model, x, y, api_name="/export")) == ref[("export", i, x, y)]
                elif op == "video":
                    res = c.predict(clip, model, "", None, None, None, 4, 300, api_name="/analyze_video")
                    ok = (_digest(res[3]), res[5]) == ref[("video", model)]
                else:
                    job = c.submit(clip, model, "", None, None, None, 1, 300, api_name="/analyze_video")
                    time.sleep(r.uniform(0.2, 1.5))
                    job.cancel()
                    ok = True
                with lock:
                    counts[op] = counts.get(op, 0) + 1
                    if not ok:
                        wrong.append(f"client {i} {op}")
            except Exception as e:  # noqa: BLE001 - every failure is counted
                with lock:
                    errors.append(f"client {i} {op}: {type(e).__name__}: {str(e)[:200]}")

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(args.clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    samples: list[dict[str, float]] = []
    while any(t.is_alive() for t in threads):
        time.sleep(30 if args.minutes >= 3 else 5)
        try:
            ours = _folder_bytes(work / "exports") + _folder_bytes(work / "videos")
            rss = _rss_mb(server.pid)
        except OSError as e:  # never lose the clients' results to a measurement
            print(f"sample skipped: {e}", flush=True)
            continue
        samples.append({"t_s": round(time.time() - t0), "rss_mb": round(rss, 1), "work_mb": round(ours / 2**20, 2),
                        "gradio_cache_mb": round(_folder_bytes(work / "gradio") / 2**20, 2),
                        "requests": sum(counts.values())})
        print(json.dumps(samples[-1]), flush=True)
    for t in threads:
        t.join()
    gc.collect()
    warm = next((s for s in samples if s["t_s"] >= min(120, 60 * args.minutes / 4)), samples[0])
    from attnviz.analysis import cleanup

    for name in ("exports", "videos"):
        if (work / name).exists():
            cleanup(work / name)
    parts = [str(p) for p in work.rglob("*.part")]
    res = {
        "minutes": args.minutes, "clients": args.clients, "requests": counts, "wrong_results": len(wrong), "errors": len(errors),
        "first_errors": errors[:5], "first_wrong": wrong[:5],
        "rss_mb_after_warmup": warm["rss_mb"], "rss_mb_end": round(_rss_mb(server.pid), 1), "rss_growth_mb": round(_rss_mb(server.pid) - warm["rss_mb"], 1),
        "work_cap_mb_per_folder": args.cap_mb, "work_mb_max": max(s["work_mb"] for s in samples),
        "work_mb_end_after_cleanup": round(_folder_bytes(work / "exports") / 2**20 + _folder_bytes(work / "videos") / 2**20, 2),
        "gradio_cache_mb_max": max(s["gradio_cache_mb"] for s in samples), "part_files_left": len(parts), "samples": samples,
    }
    server.terminate()
    server.wait(30)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
