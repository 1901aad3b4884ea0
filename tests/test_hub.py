"""Downloads on demand, against a local HTTP server: progress, cache, checksum, interruption and resume, offline."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from attnviz.models import hub
from attnviz.models.hub import DownloadError, Remote, fetch


class Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_after: int | None = None  # send only this many bytes (then close): an interrupted download
    ranges_seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        data = self.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        start = 0
        if rng:
            self.ranges_seen.append(rng)
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None:
            self.wfile.write(body[: self.cut_after])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    Handler.cut_after = None
    Handler.ranges_seen = []
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ATTNVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ATTNVIZ_OFFLINE", raising=False)
    return tmp_path / "cache"


def publish(name: str, data: bytes, url: str) -> Remote:
    Handler.files[name] = data
    return Remote(f"{url}/{name}", hashlib.sha256(data).hexdigest()[:8], len(data) / 2**20)


def test_download_progress_cache_and_no_second_download(server: str, cache: Path) -> None:
    data = bytes(range(256)) * 20000  # 5 MB
    remote = publish("w.pth", data, server)
    seen: list[tuple[int, int]] = []
    path = fetch(remote, "w", progress=lambda d, t: seen.append((d, t)))
    assert path.read_bytes() == data and path.parent == cache
    assert seen[-1] == (len(data), len(data)) and len(seen) > 1
    assert not list(cache.glob("*.part"))
    Handler.files.clear()  # the server forgets it: a second call must not download
    assert fetch(remote, "w") == path


def test_checksum_mismatch_leaves_nothing(server: str, cache: Path) -> None:
    remote = publish("bad.pth", b"x" * 100000, server)
    wrong = Remote(remote.url, "00000000")
    with pytest.raises(DownloadError, match="sha256.*does not start with 00000000"):
        fetch(wrong, "bad")
    assert not list(cache.iterdir()) or all(p.suffix != ".pth" and not p.name.endswith(".part") for p in cache.iterdir())


def test_interrupted_download_resumes(server: str, cache: Path) -> None:
    data = b"abcdefgh" * 300000  # 2.4 MB
    remote = publish("big.pth", data, server)
    Handler.cut_after = 1_000_000
    with pytest.raises(DownloadError, match="interrupted|stopped at"):
        fetch(remote, "big")
    part = cache / "big.pth.part"
    assert part.exists() and 0 < part.stat().st_size < len(data) and not (cache / "big.pth").exists()
    Handler.cut_after = None
    path = fetch(remote, "big")
    assert path.read_bytes() == data and Handler.ranges_seen and Handler.ranges_seen[-1].startswith("bytes=")
    assert not part.exists()


def test_offline_and_unreachable_say_so_in_one_line(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = publish("o.pth", b"1" * 1000, server)
    monkeypatch.setenv("ATTNVIZ_OFFLINE", "1")
    with pytest.raises(DownloadError) as e:
        fetch(remote, "o")
    assert "attnviz download o" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.delenv("ATTNVIZ_OFFLINE")
    with pytest.raises(DownloadError, match="cannot reach") as e2:
        fetch(Remote("http://127.0.0.1:9/nowhere.pth", "12345678"), "nowhere", timeout=2)
    assert "\n" not in str(e2.value)


def test_registry_entry_downloads_then_loads(server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A published mmsegmentation entry: unavailable → chosen in the app → downloaded with progress → loaded."""
    from attnviz.analysis import Catalog
    from attnviz.models import available, mmseg, registry
    from attnviz.models.mmseg import build_mmseg

    m = build_mmseg("gcnet", 50, num_classes=19)
    p = tmp_path / "gc.pth"
    torch.save({"meta": {"CLASSES": ("road",)}, "state_dict": {"backbone." + k: v for k, v in m.backbone.state_dict().items()}
                | {"decode_head." + k.replace("transform", "channel_add_conv"): v for k, v in m.decode_head.state_dict().items()}}, p)
    remote = publish("gc.pth", p.read_bytes(), server)
    entry = mmseg.MMSEG["gc_r50_d8_cityscapes"]
    monkeypatch.setitem(mmseg.MMSEG, "gc_r50_d8_cityscapes", mmseg.MMSegEntry(entry.name, entry.method, entry.depth, entry.dataset, remote,
                                                                               entry.miou, entry.config))
    info = {i.name: i for i in available()}["gc_r50_d8_cityscapes"]
    assert not info.available and info.downloadable and "attnviz download gc_r50_d8_cityscapes" in info.reason
    cat = Catalog.from_registry(torch.device("cpu"))
    assert ("gc_r50_d8_cityscapes" in dict((v, k) for k, v in cat.choices())) and "downloads on first use" in dict(
        (v, k) for k, v in cat.choices())["gc_r50_d8_cityscapes"]
    seen: list[int] = []
    model = cat.get("gc_r50_d8_cityscapes", progress=lambda d, t: seen.append(d))
    assert seen and model.card["class_names"][0] == "road" and model.card["miou_published"] == entry.miou
    assert {i.name: i for i in available()}["gc_r50_d8_cityscapes"].available
    _ = registry, hub
