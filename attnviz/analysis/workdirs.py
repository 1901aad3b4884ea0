"""Folders for files handed to users (exports, videos): unique names, atomic writes, TTL and size cap.

Every file gets a fresh name (``prefix_<random>.ext``) and is written to a temporary name in the same
folder, then renamed, so concurrent requests never share or see a half-written file. :func:`cleanup`
deletes files older than the TTL and, oldest first, whatever exceeds the size cap; it runs at start-up,
then at most once a minute when new files are made.

Each process writes under its own run folder ``ROOT/run-<pid>-<random>`` (:func:`run_dir`): it is removed
when the process exits (:func:`end_run`, registered by :func:`start_run`), and the next start removes the
run folders of processes that no longer exist (a crash, a kill).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

TTL_S = float(os.environ.get("ATTNVIZ_WORK_TTL_S", "3600"))
CAP_BYTES = int(float(os.environ.get("ATTNVIZ_WORK_CAP_MB", "2048")) * 2**20)
ROOT = Path(os.environ.get("ATTNVIZ_WORK_DIR", Path(tempfile.gettempdir()) / "attnviz_work"))
EVERY_S = float(os.environ.get("ATTNVIZ_CLEANUP_EVERY_S", "60"))
_lock = threading.Lock()
_last_cleanup: dict[str, float] = {}
_kept_clean: set[Path] = set()
_cleaner: threading.Thread | None = None
RUN = f"run-{os.getpid()}-{secrets.token_hex(4)}"  # this process's run folder under ROOT
_ended: set[Path] = set()


def run_dir(root: Path | None = None) -> Path:
    """This process's run folder under ``root`` (default :data:`ROOT`)."""
    return (root or ROOT) / RUN


def work_dir(name: str, root: Path | None = None) -> Path:
    """The folder ``name`` in this process's run folder (created when missing)."""
    d = run_dir(root) / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def prune_dead_runs(root: Path | None = None) -> int:
    """Remove the run folders of processes that no longer exist; returns how many were removed."""
    removed = 0
    for d in (root or ROOT).glob("run-*-*"):
        try:
            pid = int(d.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    return removed


def end_run(root: Path | None = None) -> None:
    """Remove this process's run folder (at exit)."""
    shutil.rmtree(run_dir(root), ignore_errors=True)


def start_run(root: Path | None = None) -> Path:
    """Prune dead runs, create this process's run folder and remove it again when the process exits."""
    root = root or ROOT
    prune_dead_runs(root)
    d = run_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    with _lock:
        if d not in _ended:
            _ended.add(d)
            atexit.register(end_run, root)
    return d


def unique_path(folder: Path, prefix: str, suffix: str) -> Path:
    """A path in ``folder`` that no other request gets: ``prefix_<16 random hex>suffix``."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in prefix)[:60]
    return folder / f"{safe}_{secrets.token_hex(8)}{suffix}"


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it to ``final`` on success, delete it on error."""
    tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    maybe_cleanup(final.parent)


def cleanup(folder: Path, ttl_s: float = TTL_S, cap_bytes: int = CAP_BYTES, now: float | None = None) -> dict[str, int]:
    """Delete files older than ``ttl_s`` and then the oldest until the folder fits ``cap_bytes``.

    Returns:
        ``{"deleted": n, "bytes": size left}``.
    """
    now = time.time() if now is None else now
    files = []
    dirs = []
    for root, dnames, fnames in os.walk(folder):  # tolerates entries deleted meanwhile (another cleaner, the web server)
        dirs += [Path(root) / d for d in dnames]
        for name in fnames:
            p = Path(root) / name
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, p))
    deleted = 0
    kept = []
    for mtime, size, p in files:
        # a half-written file of ours, or an empty staging file a server left behind (Gradio's uploads leave one per file)
        stale_part = (p.name.endswith(".part") or size == 0) and now - mtime > 60
        if now - mtime > ttl_s or stale_part:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                deleted += 1
        else:
            kept.append((mtime, size, p))
    total = sum(s for _, s, _ in kept)
    for _mtime, size, p in sorted(kept):
        if total <= cap_bytes:
            break
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            deleted += 1
            total -= size
    for d in sorted(dirs, key=lambda p: -len(p.parts)):  # empty sub-folders left behind (deepest first), once a minute old
        with contextlib.suppress(OSError):
            if now - d.stat().st_mtime > 60:
                d.rmdir()  # only succeeds when empty
    return {"deleted": deleted, "bytes": total}


def maybe_cleanup(folder: Path, every_s: float = 60.0) -> None:
    """Run :func:`cleanup` on ``folder`` unless it ran less than ``every_s`` ago."""
    key = str(folder)
    with _lock:
        if time.time() - _last_cleanup.get(key, 0.0) < every_s:
            return
        _last_cleanup[key] = time.time()
    cleanup(folder)


def keep_clean(*folders: Path, every_s: float = EVERY_S) -> None:
    """Clean ``folders`` now and then every ``every_s`` seconds, in one daemon thread for the process.

    For folders that fill without our writes triggering :func:`maybe_cleanup` (e.g. the web server's
    own upload and output cache).
    """
    global _cleaner
    for f in folders:
        f.mkdir(parents=True, exist_ok=True)
        cleanup(f)
    with _lock:
        _kept_clean.update(folders)
        if _cleaner is not None and _cleaner.is_alive():
            return

        def loop() -> None:
            while True:
                time.sleep(every_s)
                with _lock:
                    todo = list(_kept_clean)
                for f in todo:
                    with contextlib.suppress(OSError):
                        cleanup(f)

        _cleaner = threading.Thread(target=loop, name="attnviz-cleanup", daemon=True)
        _cleaner.start()
