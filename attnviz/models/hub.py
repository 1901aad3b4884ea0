"""Weights on demand: a local cache, sha256-checked, atomic and resumable downloads, a clear offline message.

Files go to ``$ATTNVIZ_CACHE`` (default ``$XDG_CACHE_HOME/attnviz`` or ``~/.cache/attnviz``). A download
streams into ``NAME.part`` (resumed with an HTTP Range request when the server allows it), is hashed
on the fly, and only a file whose sha256 starts with the published prefix is renamed into place; a
mismatch deletes the partial file. ``ATTNVIZ_OFFLINE=1`` turns every download into a one-line message.
timm and torchvision weights go through those libraries' own download functions and caches.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

Progress = Callable[[int, int], None]  # (bytes done, bytes total or 0)
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that did not produce a verified file; the message is one line."""


@dataclass(frozen=True)
class Remote:
    """A published checkpoint.

    Attributes:
        url: Where it is.
        sha256_prefix: The leading hex digits of its sha256 (mmsegmentation puts 8 in the file name).
        size_mb: Approximate size, for messages.
    """

    url: str
    sha256_prefix: str
    size_mb: float = 0.0

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def cache_dir() -> Path:
    """The cache folder (created when missing)."""
    base = os.environ.get("ATTNVIZ_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "attnviz")
    d = Path(base)
    d.mkdir(parents=True, exist_ok=True)
    return d


def offline() -> bool:
    """Whether downloads are switched off (``ATTNVIZ_OFFLINE=1``)."""
    return os.environ.get("ATTNVIZ_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def cached(remote: Remote) -> Path | None:
    """The verified cached file, or None. A sidecar ``.sha256`` avoids re-hashing large files on every look-up."""
    path = cache_dir() / remote.filename
    side = path.with_name(path.name + ".sha256")
    if not path.is_file():
        return None
    if side.is_file() and side.read_text().strip().startswith(remote.sha256_prefix) and side.stat().st_mtime >= path.stat().st_mtime:
        return path
    digest = _hash_file(path)
    if not digest.startswith(remote.sha256_prefix):
        return None
    side.write_text(digest)
    return path


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(remote: Remote, name: str, progress: bool | Progress = False, timeout: float = 30.0) -> Path:
    """The verified local file of ``remote``, downloading it first when needed.

    Args:
        remote: The published checkpoint.
        name: The registry name (for messages).
        progress: True for a tqdm bar, or a callback ``(done, total)``.
        timeout: Socket timeout in seconds.

    Raises:
        DownloadError: offline, unreachable, interrupted (the partial file is kept for a resume) or
            corrupt (the partial file is deleted).
    """
    hit = cached(remote)
    if hit is not None:
        return hit
    where = cache_dir() / remote.filename
    if offline():
        raise DownloadError(f"{name}: weights not in {cache_dir()} and ATTNVIZ_OFFLINE is set; "
                            f"on a machine with internet run `attnviz download {name}` or put {remote.filename} there")
    part = where.with_name(where.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    h = hashlib.sha256()
    if have:
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
    resp = _open(remote, name, have, timeout)
    try:
        if resp is not None:
            if have and resp.status != 206:  # the server ignored the range: start over
                have, h = 0, hashlib.sha256()
            _receive(resp, part, name, have, h, progress)
    finally:
        if resp is not None:
            resp.close()
    digest = h.hexdigest()
    if not digest.startswith(remote.sha256_prefix):
        part.unlink(missing_ok=True)
        raise DownloadError(f"{name}: the downloaded file's sha256 {digest[:12]}… does not start with {remote.sha256_prefix} "
                            "as published; the partial file was deleted")
    os.replace(part, where)  # atomic: the final name only ever holds a verified file
    where.with_name(where.name + ".sha256").write_text(digest)
    return where


def _open(remote: Remote, name: str, have: int, timeout: float) -> Any:
    """The HTTP response for the bytes from ``have`` on, or None when the server says the partial file is complete."""
    req = urllib.request.Request(remote.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (an https URL from our registry)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part is complete already
            return None
        raise DownloadError(f"{name}: the server answered {e.code} for {remote.url}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{name}: cannot reach {remote.url} ({getattr(e, 'reason', e)}); check the connection, "
                            f"or copy {remote.filename} into {cache_dir()}") from None


def _receive(resp: Any, part: Path, name: str, have: int, h: Any, progress: bool | Progress) -> None:
    """Append the response's body to ``part`` (which holds ``have`` bytes; 0: write it anew), hashing into ``h``."""
    total = int(resp.headers.get("Content-Length") or 0) + have
    bar = tqdm(total=total or None, initial=have, unit="B", unit_scale=True, desc=name, dynamic_ncols=True) if progress is True else None
    done = have
    try:
        with open(part, "ab" if have else "wb") as f:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, urllib.error.URLError) as e:
                    raise DownloadError(f"{name}: the download was interrupted after {done / 2**20:.1f} MB ({e}); "
                                        "run it again to resume") from None
                if not chunk:
                    break
                f.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                elif callable(progress):
                    progress(done, total)
    finally:
        if bar is not None:
            bar.close()
    if total and done < total:
        raise DownloadError(f"{name}: the download stopped at {done / 2**20:.1f} of {total / 2**20:.1f} MB; run it again to resume")
