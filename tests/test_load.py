"""Load and faults through the HTTP API: concurrent users never mix results, cancel frees the server, nothing piles up."""

from __future__ import annotations

import json
import os
import random
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image
from test_analysis import Tiny

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


class Slow(Tiny):
    """Tiny, but each forward takes 0.2 s: a video job on it runs long enough to be cancelled."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.2)
        return super().forward(x)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from attnviz.analysis import workdirs
    from attnviz.ui import build_demo

    root = tmp_path_factory.mktemp("work")
    old = workdirs.ROOT
    workdirs.ROOT = root  # this test's own work folders
    demo = build_demo(models={"tiny": Tiny().eval(), "slow": Slow().eval()}, include_registry=False)
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", demo, root
    finally:
        demo.close()
        workdirs.ROOT = old


def test_concurrent_clients_never_mix_results(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gradio_client import Client, handle_file

    url, demo, root = server
    rng = np.random.default_rng(0)
    files = []
    for i in range(8):  # every client has its own image, of its own size
        p = tmp_path / f"client{i}.png"
        Image.fromarray((rng.random((40 + i, 50 + 2 * i, 3)) * 255).astype(np.uint8)).save(p)
        files.append(p)
    failures: list[str] = []
    rss0 = _rss_mb()

    def user(i: int) -> None:
        c = Client(url, verbose=False)
        img = handle_file(str(files[i]))
        w, h = 50 + 2 * i, 40 + i
        r = random.Random(i)
        for step in range(6):
            op = r.choice(["analyze", "click", "export"])
            try:
                if op == "analyze":
                    _, s = c.predict(img, "tiny", api_name="/analyze")
                    ok = s["image_size"] == [w, h]
                elif op == "click":
                    x, y = r.randrange(w), r.randrange(h)
                    _, info = c.predict(img, x, y, "nl", None, "mean", "tiny", api_name="/attention_at")
                    ok = info["x"] == x and info["y"] == y
                else:
                    x = r.randrange(w)
                    z = c.predict(img, "tiny", x, 3, "nl", api_name="/export")
                    with zipfile.ZipFile(z) as zf:
                        meta = json.loads(zf.read("metadata.json"))
                        ok = zf.testzip() is None and meta["image_size"] == [w, h] and meta["click"]["x"] == x
                        ok &= np.asarray(Image.open(zf.open("overlays/image.png"))).shape[:2] == (h, w)
                if not ok:
                    failures.append(f"client {i} step {step} {op}: wrong result")
            except Exception as e:  # a crash is a failure too
                failures.append(f"client {i} step {step} {op}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=user, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    assert _rss_mb() - rss0 < 300
    from attnviz.analysis import cleanup
    from attnviz.analysis.workdirs import run_dir

    exports = run_dir(root) / "exports"  # this process's run folder
    assert not list(exports.glob("*.part"))
    cap = 200_000
    cleanup(exports, cap_bytes=cap)
    assert sum(p.stat().st_size for p in exports.iterdir()) <= cap  # the folder returns to its cap


def test_cancelled_video_jobs_stop_and_leave_nothing(server) -> None:  # type: ignore[no-untyped-def]
    from gradio_client import Client, handle_file

    url, demo, root = server
    clip = handle_file(str(EXAMPLES / "clip_moving_item.mp4"))
    c = Client(url, verbose=False)
    jobs = [c.submit(clip, "slow", "query", None, 64, 64, 1, 300, api_name="/analyze_video") for _ in range(2)]
    deadline = time.time() + 60
    while time.time() < deadline and not any(t.name == "attnviz-video" for t in threading.enumerate()):
        time.sleep(0.05)
    time.sleep(1.0)
    assert not any(j.done() for j in jobs)
    for j in jobs:
        j.cancel()
    t0 = time.time()
    while time.time() - t0 < 20 and any(t.name == "attnviz-video" for t in threading.enumerate()):
        time.sleep(0.1)
    assert not any(t.name == "attnviz-video" for t in threading.enumerate()), "a cancelled job kept running"
    _, s = c.predict(handle_file(str(EXAMPLES / "photo_coffee.png")), "tiny", api_name="/analyze")  # the queue serves again
    assert s["model"] == "tiny"
    from attnviz.analysis.workdirs import run_dir

    videos = run_dir(root) / "videos"
    leftovers = [p for p in videos.glob("*") if p.suffix in (".mp4", ".npz", ".csv", ".part")] if videos.exists() else []
    assert not leftovers, leftovers
