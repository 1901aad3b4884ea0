"""Attention over time: decode (PyAV) → batches → capture → maps → one colour scale → H.264 (PyAV).

``analyze_video(path, model, kind=...)`` writes a browser-playable MP4 (libx264, yuv420p, even size,
``+faststart``) with the chosen map over every frame, an NPZ of the per-frame maps at feature
resolution and a CSV table (prediction, confidence, and per kind: mean gate and top channels, STN
box, peak of the query's map). Frames are streamed: pass 1 decodes and runs the model keeping only
the small per-frame maps, pass 2 decodes again and renders with the clip-wide colour scale (one pass
when the scale is given). Memory therefore does not grow with the clip's length. No UI code here.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch
from torch import nn

from . import render
from .analysis.errors import UserError
from .analysis.outputs import Postprocess
from .analysis.views.frames import (
    KIND_HELP,
    KINDS,
    forward_batch,
    frame_map,
    kinds_of,
    labels_of,
    layer_heads,
    pick_layer,
)
from .capture.records import SamplingGrid
from .maps import sampled_quad
from .maps.geometry import normalized_to_pixels
from .models.inputs import card_of

MAX_FRAMES = 900
MAX_SIDE = 854  # longest side of the written video (480p-class); larger clips are downscaled


class VideoError(ValueError):
    """A clip that cannot be used; the message says why."""


class VideoCancelled(RuntimeError):
    """The job was cancelled (or its client went away); partial outputs were deleted."""


@dataclass
class VideoResult:
    """What :func:`analyze_video` wrote and measured.

    Attributes:
        video: The MP4 path.
        npz: Per-frame maps at feature resolution (``maps``: (T, h, w) or (T, C)), times, predictions.
        csv: The per-frame table.
        rows: The table as dicts.
        fps: Frame rate of the output (source fps / stride).
        frames: Frames written.
        layer: The layer shown.
        vrange: The colour scale used (vmin, vmax), or None for kinds without one.
        notes: What was done (downscaling, stride, truncation, …).
        kind: The kind of map drawn.
        task: ``"classification"`` or ``"segmentation"``.
    """

    video: Path
    npz: Path
    csv: Path
    rows: list[dict[str, Any]]
    fps: float
    frames: int
    layer: str
    vrange: tuple[float, float] | None
    notes: list[str] = field(default_factory=list)
    kind: str = ""
    task: str = "classification"


def probe(path: str | Path) -> tuple[float, int, int, int]:
    """(fps, frame count or 0 when unknown, width, height) of a clip."""
    c = _open(path)
    try:
        s = c.streams.video[0]
        cc = s.codec_context
        if cc is None or not cc.width or not cc.height:
            raise VideoError(f"{Path(path).name!r} could not be decoded: its video stream has no readable size (truncated or corrupt?).")
        rate = s.average_rate or s.guessed_rate or Fraction(25)
        n = int(s.frames or 0)
        if not n and s.duration and s.time_base:
            n = int(round(float(s.duration * s.time_base) * float(rate)))
        return float(rate), n, int(cc.width), int(cc.height)
    finally:
        c.close()


def _open(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise VideoError(f"The file {p.name!r} does not exist.")
    if p.stat().st_size == 0:
        raise VideoError("The video file is empty (0 bytes).")
    try:
        c = av.open(str(p))
    except av.error.FFmpegError as e:
        raise VideoError(f"{p.name!r} is not a video that can be read ({e.strerror or e}).") from None
    if not c.streams.video:
        c.close()
        raise VideoError(f"{p.name!r} has no video stream.")
    return c


def iter_frames(path: str | Path, stride: int = 1, max_frames: int = MAX_FRAMES) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield (index, time in s, RGB uint8 frame) of every ``stride``-th frame.

    Raises:
        VideoError: For unreadable or corrupt clips, or when more than ``max_frames`` frames would be used.
    """
    if stride < 1:
        raise VideoError(f"The frame stride must be ≥ 1, got {stride}.")
    c = _open(path)
    try:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        rate = float(s.average_rate or s.guessed_rate or 25)
        kept = 0
        i = -1
        try:
            for frame in c.decode(s):
                i += 1
                if i % stride:
                    continue
                if kept >= max_frames:
                    raise VideoError(f"The clip is longer than the cap of {max_frames} frames (stride {stride}); "
                                     f"raise the stride or trim the clip.")
                t = float(frame.time) if frame.time is not None else i / rate
                yield i, t, frame.to_ndarray(format="rgb24")
                kept += 1
        except av.error.FFmpegError as e:
            if kept == 0:
                raise VideoError(f"{Path(path).name!r} could not be decoded ({e.strerror or e}).") from None
            # a truncated tail: keep what decoded
        if kept == 0:
            raise VideoError(f"{Path(path).name!r} contains no decodable frames.")
    finally:
        c.close()


def _even(n: int) -> int:
    return max(2, n - n % 2)


class _Writer:
    """H.264 / yuv420p / +faststart MP4 writer (PyAV)."""

    def __init__(self, path: Path, fps: float, width: int, height: int) -> None:
        try:
            self.c = av.open(str(path), mode="w", options={"movflags": "+faststart"})
        except (OSError, ValueError) as e:  # (PyAV's errors derive from OSError or ValueError)
            raise VideoError(f"cannot write {str(path)!r}: {e}") from None
        self.s = self.c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.s.width, self.s.height = width, height
        self.s.pix_fmt = "yuv420p"
        self.s.options = {"crf": "20", "preset": "veryfast"}

    def write(self, rgb: np.ndarray) -> None:
        for pkt in self.s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            self.c.mux(pkt)

    def close(self) -> None:
        for pkt in self.s.encode():
            self.c.mux(pkt)
        self.c.close()


def write_video(path: str | Path, frames: list[np.ndarray], fps: float = 15.0) -> Path:
    """Write RGB uint8 frames (even sides) as a browser-playable H.264 MP4."""
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise VideoError(f"H.264 with yuv420p needs even sides; got {w}×{h}.")
    wr = _Writer(Path(path), fps, w, h)
    try:
        for f in frames:
            wr.write(f)
    finally:
        wr.close()
    return Path(path)


def analyze_video(
    path: str | Path,
    model: nn.Module,
    kind: str | None = None,
    layer: str | None = None,
    query: tuple[float, float] | None = None,
    out: str | Path = "attnviz_video.mp4",
    stride: int = 1,
    max_frames: int = MAX_FRAMES,
    batch_size: int | None = None,
    vrange: tuple[float, float] | None = None,
    cmap: str = "inferno",
    alpha: float = 0.55,
    device: torch.device | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    postprocess: Postprocess | None = None,
    head: int | None = None,
) -> VideoResult:
    """Render one attention map of ``model`` over every frame of a clip (see module docstring).

    Args:
        path: Input clip (mp4, webm, mov, gif, …).
        model: Classifier or segmentation model in eval mode (optional ``model.card``).
        kind: ``spatial``, ``channel``, ``grid`` (STN), ``query`` (Non-Local/DANet/BotNet row, CCNet
            two-hop reach or OCR regions of the ``query`` pixel) or ``segmentation`` (predicted
            segmentation beside the query's attention); for transformers with a class token also ``cls`` (its
            attention in one layer, heads averaged) and ``rollout`` (its rollout up to that layer); default: the first
            kind the model has.
        layer: Layer name; default the deepest of that kind.
        query: (x, y) in source-frame pixels for ``query`` / ``segmentation``; default the frame centre.
        out: Output MP4 path (the NPZ and CSV are written next to it).
        stride: Use every ``stride``-th frame (output fps = source fps / stride).
        max_frames: Refuse clips that would use more frames.
        batch_size: Frames per forward (default 32 on GPU, 8 on CPU).
        vrange: Fixed colour scale; default the min/max over the whole clip.
        cmap: Matplotlib colormap.
        alpha: Overlay opacity.
        device: Default: the model's device.
        progress: Called as ``progress(done, total, stage)``.
        should_stop: Polled between batches and frames; when it returns True the job stops, deletes its
            partial outputs and raises :class:`VideoCancelled`.
        postprocess: Turns the model's output into logits (see :mod:`attnviz.analysis.outputs`).
        head: One attention head for ``query`` and ``cls`` (as DINO shows each head); default the mean of the heads.
    """
    if head is not None and (isinstance(head, bool) or not isinstance(head, int) or head < 0):
        raise VideoError(f"head must be a whole number ≥ 0 (or None for the mean of the heads); got {head!r}.")
    job = _plan(path, model, kind, layer, query, Path(out), stride, max_frames, batch_size, vrange, cmap, alpha, device, postprocess)
    job.head = head
    stop = should_stop or (lambda: False)
    try:
        scale = _encode(job, progress, stop)
    except BaseException:
        _discard(job)
        raise
    if job.n_est and job.decoded < math.ceil(job.n_est / stride) - 1:
        job.notes.append(f"the clip is truncated or damaged: {job.decoded} of about {math.ceil(job.n_est / stride)} frames could be read")
    npz, csv_path = _write_tables(job, scale)
    return VideoResult(job.out, npz, csv_path, job.rows, job.fps / stride, len(job.rows), job.chosen["layer"], scale, job.notes,
                       job.chosen["kind"], job.chosen["task"])


@dataclass
class _Job:
    """One video job: its settings, the clip's geometry, and what the stages accumulate (small per-frame maps and rows)."""

    path: str | Path
    model: nn.Module
    kind: str | None
    layer: str | None
    out: Path
    stride: int
    max_frames: int
    vrange: tuple[float, float] | None
    cmap: str
    alpha: float
    device: torch.device
    postprocess: Postprocess | None
    card: dict[str, Any]
    fps: float
    n_est: int
    src_wh: tuple[int, int]  # (W, H) of the source frames
    out_wh: tuple[int, int]  # (W, H) written (even, at most MAX_SIDE)
    query: tuple[float, float]
    batch_size: int
    notes: list[str] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    labels: list[bytes] = field(default_factory=list)  # segmentation: per-frame labels at the output size, zlib-compressed (memory stays flat)
    small_labels: list[np.ndarray] = field(default_factory=list)  # the same at ≤ 256 px for the NPZ
    rows: list[dict[str, Any]] = field(default_factory=list)
    extra: list[Any] = field(default_factory=list)  # per-frame geometry for grid (quad, lattice) in source pixels
    chosen: dict[str, Any] = field(default_factory=dict)
    decoded: int = 0
    head: int | None = None  # one head for query / cls; None: their mean

    @property
    def names(self) -> list[str]:
        return list(self.card.get("class_names") or [])

    @property
    def total(self) -> int:
        return math.ceil(self.n_est / self.stride) if self.n_est else 0


# ---------------------------------------------------------------------------------------------- plan
def _plan(path: str | Path, model: nn.Module, kind: str | None, layer: str | None, query: tuple[float, float] | None, out: Path, stride: int,
          max_frames: int, batch_size: int | None, vrange: tuple[float, float] | None, cmap: str, alpha: float, device: torch.device | None,
          postprocess: Postprocess | None) -> _Job:
    """Check the arguments, probe the clip and fix the output geometry."""
    if kind is not None and kind not in KINDS:
        raise VideoError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}.")
    if cmap not in render.CMAPS:
        raise VideoError(f"cmap must be one of {', '.join(render.CMAPS)}; got {cmap!r}.")
    if not isinstance(stride, int) or stride < 1:
        raise VideoError(f"stride must be an integer ≥ 1; got {stride!r}.")
    if not isinstance(max_frames, int) or not 1 <= max_frames <= MAX_FRAMES:
        raise VideoError(f"max_frames must be an integer in [1, {MAX_FRAMES}]; got {max_frames!r}.")
    if out.is_dir():
        raise VideoError(f"out is the folder {str(out)!r}; give the path of the .mp4 file to write (its .npz and .csv go beside it).")
    if out.suffix.lower() != ".mp4":
        raise VideoError(f"out must name an .mp4 file (H.264); got {str(out)!r}. Its .npz and .csv go beside it.")
    device = device or next(model.parameters()).device
    fps, n_est, w0, h0 = probe(path)
    if n_est and math.ceil(n_est / stride) > max_frames:
        raise VideoError(f"The clip has about {n_est} frames ({math.ceil(n_est / stride)} at stride {stride}); the cap is "
                         f"{max_frames}. Raise the stride or trim the clip.")
    notes = [f"stride {stride}: {fps / stride:.2f} fps"] if stride > 1 else []
    k = min(1.0, MAX_SIDE / max(w0, h0))
    ow, oh = _even(round(w0 * k)), _even(round(h0 * k))
    if (ow, oh) != (w0, h0):
        notes.append(f"written at {ow}×{oh} (source {w0}×{h0})")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VideoError(f"cannot create the folder {str(out.parent)!r} for the output: {e.strerror or e}.") from None
    if not os.access(out.parent, os.W_OK):
        raise VideoError(f"cannot write to the folder {str(out.parent)!r}; give another --out.")
    return _Job(path, model, kind, layer, out, stride, max_frames, vrange, cmap, alpha, device, postprocess, card_of(model), fps, n_est,
                (w0, h0), (ow, oh), query if query is not None else (w0 / 2, h0 / 2), batch_size or (32 if device.type == "cuda" else 8), notes)


# ---------------------------------------------------------------------------------------------- decode → batches
def _batches(job: _Job, stop: Callable[[], bool]) -> Iterator[list[tuple[int, float, np.ndarray]]]:
    """Decoded frames (index, time, RGB) in batches of ``job.batch_size``."""
    batch: list[tuple[int, float, np.ndarray]] = []
    for item in iter_frames(job.path, job.stride, job.max_frames):
        _check(stop)
        job.decoded += 1
        batch.append(item)
        if len(batch) == job.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------- maps
def _choose(job: _Job, records: dict[str, Any], task: str) -> None:
    """Fix the kind and layer from the first batch's records (a clear error when the model has neither)."""
    have = kinds_of(records, task)
    kd = job.kind or (have[0] if have else None)
    if kd is None:
        raise VideoError("The model has no attention layer attnviz can draw over time (no spatial mask, gate, STN or click layer).")
    if kd == "segmentation" and task != "segmentation":
        raise VideoError(f"kind 'segmentation' needs a segmentation model; this one is a classifier. Kinds it has: {', '.join(have) or 'none'}.")
    if kd not in have:
        raise VideoError(f"The model has no {KIND_HELP[kd]}. Kinds it has: {', '.join(have) or 'none'}.")
    try:
        job.chosen.update(kind=kd, layer=pick_layer(records, kd, job.layer), task=task)
    except UserError as e:
        raise VideoError(str(e)) from None
    (qx, qy), (w0, h0) = job.query, job.src_wh
    if kd in ("query", "segmentation") and not (0 <= qx < w0 and 0 <= qy < h0):
        raise VideoError(f"The query point ({qx:g}, {qy:g}) lies outside the {w0}×{h0} frame.")
    if job.head is not None:
        n = layer_heads(records, kd, job.chosen["layer"])
        if n < 2 or job.head >= n:
            raise VideoError(f"head {job.head} does not exist: {job.chosen['layer'] or 'this map'} ({kd}) has "
                             + (f"{n} heads (0–{n - 1})." if n > 1 else "no separate heads (only query and cls maps of multi-head layers do)."))


def _maps(job: _Job, batch: list[tuple[int, float, np.ndarray]]) -> None:
    """One captured forward of a batch → per frame: the small map (feature resolution) and a table row."""
    try:
        res = forward_batch(job.model, [f for _, _, f in batch], job.card, job.device, job.postprocess)
    except UserError as e:
        raise VideoError(str(e)) from None
    if not job.chosen:
        _choose(job, res.records, res.output.task)
    for b, (i, t, _) in enumerate(batch):
        row: dict[str, Any] = {"frame": i, "time": round(t, 4)}
        row.update(_prediction(job, res.output, b))
        m, facts = _frame_facts(job, res.records, b)
        row.update(facts)
        job.maps.append(np.asarray(m, dtype=np.float32))
        job.rows.append(row)


def _prediction(job: _Job, output: Any, b: int) -> dict[str, Any]:
    """Classification: the top class and its probability. Segmentation: the largest class, its area share, the query's class."""
    names = job.names
    if output.task == "features":  # a backbone: nothing to predict
        return {"prediction": "", "confidence": float("nan")}
    if output.task == "classification":
        p = output.logits.float()[b].softmax(0)
        c = int(p.argmax())
        return {"prediction": names[c] if c < len(names) else c, "confidence": round(float(p[c]), 4)}
    (ow, oh), (w0, h0), (qx, qy) = job.out_wh, job.src_wh, job.query
    lab = labels_of(output, b, (oh, ow))
    job.labels.append(zlib.compress(lab.astype(np.int16).tobytes(), 1))
    step = max(1, math.ceil(max(oh, ow) / 256))
    job.small_labels.append(lab[::step, ::step].astype(np.int16))
    counts = np.bincount(lab.ravel())
    c = int(counts.argmax())
    qc = int(lab[min(oh - 1, int(qy * oh / h0)), min(ow - 1, int(qx * ow / w0))])
    return {"prediction": names[c] if c < len(names) else c, "confidence": round(float(counts[c] / lab.size), 4),
            "query_class": names[qc] if qc < len(names) else qc}


def _frame_facts(job: _Job, records: dict[str, Any], b: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The chosen map of sample ``b`` and its per-kind facts (STN box, mean mask and peak, mean gate and top channels, query peak)."""
    kd, name = job.chosen["kind"], job.chosen["layer"]
    (w0, h0), (qx, qy) = job.src_wh, job.query
    if kd == "grid":
        g: SamplingGrid = records[name]
        in_hw = g.input_hw or (h0, w0)
        scale = torch.tensor([w0 / in_hw[1], h0 / in_hw[0]])
        quad = (sampled_quad(g, b) * scale).numpy()
        lattice = (normalized_to_pixels(g.grid[b], in_hw, g.align_corners) * scale).numpy()
        job.extra.append((quad, lattice[:: max(1, lattice.shape[0] // 8), :: max(1, lattice.shape[1] // 8)]))
        (x0, y0), (x1, y1) = quad.min(0), quad.max(0)
        return quad, {"box_x0": round(float(x0), 1), "box_y0": round(float(y0), 1), "box_x1": round(float(x1), 1), "box_y1": round(float(y1), 1)}
    if kd == "segmentation" and not name:
        return np.zeros((1, 1), np.float32), {}
    m = frame_map(records, kd, name, b, (qx, qy), (h0, w0), head=job.head)
    if kd == "spatial":
        return m, {"mean_mask": round(float(m.mean()), 4), **_peak(m, job.src_wh)}
    if kd == "channel":
        top = np.argsort(-m)[:3]
        return m, {"mean_gate": round(float(m.mean()), 4), "top_channels": " ".join(map(str, top.tolist()))}
    if kd in ("cls", "rollout"):  # the class token's weight on the patches (the rest is on the prefix tokens)
        return m, {"patch_share": round(float(m.sum()), 4), **_peak(m, job.src_wh)}
    return m, {"query_x": qx, "query_y": qy, **_peak(m, job.src_wh)}


def _peak(m: np.ndarray, src_wh: tuple[int, int]) -> dict[str, float]:
    """Centre of a map's peak cell in source-frame pixels."""
    w0, h0 = src_wh
    py, px = np.unravel_index(int(m.argmax()), m.shape)
    return {"peak_x": round(float((px + 0.5) / m.shape[1] * w0), 1), "peak_y": round(float((py + 0.5) / m.shape[0] * h0), 1)}


# ---------------------------------------------------------------------------------------------- colour scale
def _colour_scale(job: _Job) -> tuple[float, float] | None:
    """One colour scale for the whole clip: the given one, else the min/max over every frame's map (none for STN grids)."""
    if job.chosen["kind"] == "grid":
        return None
    return job.vrange if job.vrange is not None else render.map_range(job.maps)


# ---------------------------------------------------------------------------------------------- render
def _render(job: _Job, j: int, frame: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    """Frame ``j`` with its map drawn (lattice, gate strip, overlay, or segmentation beside the query's attention)."""
    (ow, oh), (w0, h0) = job.out_wh, job.src_wh
    if frame.shape[1] != ow or frame.shape[0] != oh:
        frame = cv2.resize(frame, (ow, oh), interpolation=cv2.INTER_AREA)
    kd = job.chosen["kind"]
    sx, sy = ow / w0, oh / h0
    if kd == "grid":
        quad, lattice = job.extra[j]
        return render.draw_quad(render.draw_lattice(frame, lattice * [sx, sy], every=1), quad * [sx, sy])
    if kd == "channel":
        strip = render.colorize(job.maps[j][None], job.cmap, lo, hi)  # (1, C, 3)
        bar = cv2.resize(strip, (ow, max(8, oh // 12)), interpolation=cv2.INTER_NEAREST)
        img = frame.copy()
        img[-bar.shape[0]:] = bar
        return _with_bar(img, job.cmap, lo, hi, "gate")
    point = (job.rows[j].get("query_x", job.query[0]) * sx, job.rows[j].get("query_y", job.query[1]) * sy)
    heat = None
    if kd != "segmentation" or job.chosen["layer"]:
        heat = render.overlay(frame, job.maps[j], job.cmap, job.alpha, lo, hi, point=None if kd in ("spatial", "cls", "rollout") else point)
    if kd != "segmentation":
        return _with_bar(heat, job.cmap, lo, hi, UNITS.get(kd, "mask value"))
    pal = np.asarray(job.card["palette"], np.uint8) if job.card.get("palette") is not None else render.default_palette(max(2, len(job.names)))
    lab = np.frombuffer(zlib.decompress(job.labels[j]), np.int16).reshape(oh, ow)
    seg = render.draw_point(render.label_overlay(frame, lab, pal, 0.5), *point)
    if heat is None:
        return seg
    return np.concatenate([seg, np.full((oh, 4, 3), 255, np.uint8), _with_bar(heat, job.cmap, lo, hi, "attention of the query")], axis=1)


UNITS = {"query": "attention weight", "cls": "class-token attention", "rollout": "rollout"}


def _with_bar(img: np.ndarray, cm: str, lo: float | None, hi: float | None, unit: str) -> np.ndarray:
    framed = render.with_colorbar(img, cm, float(lo or 0.0), float(hi if hi is not None else 1.0), unit)
    return framed[:, : framed.shape[1] - framed.shape[1] % 2]


# ---------------------------------------------------------------------------------------------- encode
def _encode(job: _Job, progress: Callable[[int, int, str], None] | None, stop: Callable[[], bool]) -> tuple[float, float] | None:
    """Pass 1: batches → maps (and, when the scale is known up front, render + encode at once). Pass 2: decode again, render with the
    clip-wide scale, encode. Returns the colour scale used."""
    single = job.vrange is not None or job.kind == "grid"
    writer: _Writer | None = None
    done = 0
    try:
        for batch in _batches(job, stop):
            start = len(job.maps)
            _maps(job, batch)
            single = single or job.chosen["kind"] == "grid"
            if single:
                writer = writer or _Writer(job.out, job.fps / job.stride, *_written_size(job))
                lo, hi = job.vrange if job.vrange is not None else (None, None)
                for j, (_, _, f) in enumerate(batch):
                    _check(stop)
                    writer.write(_render(job, start + j, f, lo, hi))
            done += len(batch)
            if progress:
                progress(done, job.total, "analysing and encoding" if single else "analysing")
        scale = _colour_scale(job)
        if not single:  # pass 2: the clip-wide colour scale is known now
            assert scale is not None
            writer = _Writer(job.out, job.fps / job.stride, *_written_size(job))
            for j, (_, _, f) in enumerate(iter_frames(job.path, job.stride, job.max_frames)):
                _check(stop)
                if j >= len(job.maps):
                    break
                writer.write(_render(job, j, f, *scale))
                if progress and (j + 1) % job.batch_size == 0:
                    progress(j + 1, len(job.maps), "encoding")
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        raise
    assert writer is not None
    writer.close()
    return scale


def _written_size(job: _Job) -> tuple[int, int]:
    ow, oh = job.out_wh
    return _render(job, 0, np.zeros((oh, ow, 3), np.uint8), 0.0, 1.0).shape[:2][::-1]  # (W, H)


def _check(stop: Callable[[], bool]) -> None:
    if stop():
        raise VideoCancelled("cancelled")


def _discard(job: _Job) -> None:
    """Delete a failed or cancelled job's partial outputs."""
    for p in (job.out, job.out.with_suffix(".npz"), job.out.with_suffix(".csv")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


# ---------------------------------------------------------------------------------------------- tables
def _write_tables(job: _Job, scale: tuple[float, float] | None) -> tuple[Path, Path]:
    """The NPZ of per-frame maps (and labels) and the CSV of per-frame rows, next to the MP4."""
    rows = job.rows
    npz = job.out.with_suffix(".npz")
    arrays = {"maps": np.stack(job.maps)}
    if job.small_labels:
        arrays["labels"] = np.stack(job.small_labels)  # predicted classes, every ceil(side / 256)-th pixel
    np.savez_compressed(npz, **arrays, times=np.array([r["time"] for r in rows]), frames=np.array([r["frame"] for r in rows]),
                        confidence=np.array([r["confidence"] for r in rows]), prediction=np.array([str(r["prediction"]) for r in rows]),
                        layer=np.array(job.chosen["layer"]), kind=np.array(job.chosen["kind"]), vrange=np.array(scale if scale else (np.nan, np.nan)))
    csv_path = job.out.with_suffix(".csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return npz, csv_path
