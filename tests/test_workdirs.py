"""The app's temporary files: gone when it exits (Ctrl-C or SIGTERM), and a crashed run's are removed at the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SERVER = """
import sys
sys.path.insert(0, {tests!r})
from test_analysis import Tiny
from attnviz.ui import build_demo
from attnviz.ui.app import launch_kwargs
demo = build_demo(models={{"tiny": Tiny().eval()}}, include_registry=False)
kw = launch_kwargs()
kw.pop("mcp_server", None)
demo.launch(server_port={port}, prevent_thread_lock=True, quiet=True, **kw)
print("READY", flush=True)
demo.block_thread()
"""


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def start(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # the work folder lies in the temp folder, as by default (Gradio serves files from the temp folder only)
    env = {**os.environ, "ATTNVIZ_WORK_DIR": str(tmp_path / "tmp" / "work"), "TMPDIR": str(tmp_path / "tmp"), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("GRADIO_TEMP_DIR", None)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", SERVER.format(tests=str(ROOT / "tests"), port=port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if "READY" in line:
            return proc, f"http://127.0.0.1:{port}/"
        if proc.poll() is not None:
            break
    proc.kill()
    pytest.fail("the app did not start")


def use(url: str, image: Path) -> None:
    from gradio_client import Client, handle_file

    c = Client(url, verbose=False)
    c.predict(handle_file(str(image)), "tiny", api_name="/analyze")
    c.predict(handle_file(str(image)), "tiny", 10, 10, "nl", api_name="/export")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_exit_leaves_no_files(tmp_path: Path, how: str) -> None:
    proc, url = start(tmp_path)
    try:
        use(url, ROOT / "examples" / "scene_nonlocal_resnet.png")
        assert files_under(tmp_path / "tmp" / "work")  # uploads and the export live in the run folder while it runs
    finally:
        proc.send_signal(getattr(signal, how))
        proc.wait(timeout=60)
    assert files_under(tmp_path / "tmp" / "work") == [] and files_under(tmp_path / "tmp") == []


def test_a_crashed_runs_files_are_removed_at_the_next_start(tmp_path: Path) -> None:
    proc, url = start(tmp_path)
    use(url, ROOT / "examples" / "scene_nonlocal_resnet.png")
    proc.kill()  # no exit handlers
    proc.wait(timeout=60)
    left = {p.parts[len((tmp_path / "tmp" / "work").parts)] for p in files_under(tmp_path / "tmp" / "work")}
    assert left, "a killed run leaves its folder"
    proc, _ = start(tmp_path)
    try:
        now = {p.parts[len((tmp_path / "tmp" / "work").parts)] for p in files_under(tmp_path / "tmp" / "work")}
        assert not (left & now)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
