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
from .analysis.frames import (
    KIND_HELP,
    KINDS,
    forward_batch,
    frame_map,
    kinds_of,
    labels_of,
    pick_layer,
)
from .analysis.outputs import Postprocess
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
        self.c = av.open(str(path), mode="w", options={"movflags": "+faststart"})
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
) -> VideoResult:
    """Render one attention map of ``model`` over every frame of a clip (see module docstring).

    Args:
        path: Input clip (mp4, webm, mov, gif, …).
        model: Classifier or segmentation model in eval mode (optional ``model.card``).
        kind: ``spatial``, ``channel``, ``grid`` (STN), ``query`` (Non-Local/DANet/BotNet row, CCNet
            two-hop reach or OCR regions of the ``query`` pixel) or ``segmentation`` (predicted
            segmentation beside the query's attention); default: the first kind the model has.
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
    """
    if kind is not None and kind not in KINDS:
        raise VideoError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}.")
    if cmap not in render.CMAPS:
        raise VideoError(f"cmap must be one of {', '.join(render.CMAPS)}; got {cmap!r}.")
    if not isinstance(stride, int) or stride < 1:
        raise VideoError(f"stride must be an integer ≥ 1; got {stride!r}.")
    if not isinstance(max_frames, int) or not 1 <= max_frames <= MAX_FRAMES:
        raise VideoError(f"max_frames must be an integer in [1, {MAX_FRAMES}]; got {max_frames!r}.")
    device = device or next(model.parameters()).device
    card = card_of(model)
    names = list(card.get("class_names") or [])
    fps, n_est, w0, h0 = probe(path)
    if n_est and math.ceil(n_est / stride) > max_frames:
        raise VideoError(f"The clip has about {n_est} frames ({math.ceil(n_est / stride)} at stride {stride}); the cap is "
                         f"{max_frames}. Raise the stride or trim the clip.")
    total = math.ceil(n_est / stride) if n_est else 0
    bs = batch_size or (32 if device.type == "cuda" else 8)
    notes = [f"stride {stride}: {fps / stride:.2f} fps"] if stride > 1 else []
    k = min(1.0, MAX_SIDE / max(w0, h0))
    ow, oh = _even(round(w0 * k)), _even(round(h0 * k))
    if (ow, oh) != (w0, h0):
        notes.append(f"written at {ow}×{oh} (source {w0}×{h0})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    qx, qy = query if query is not None else (w0 / 2, h0 / 2)
    stop = should_stop or (lambda: False)

    def peak(m: np.ndarray) -> dict[str, float]:
        """Centre of a map's peak cell in source-frame pixels."""
        py, px = np.unravel_index(int(m.argmax()), m.shape)
        return {"peak_x": round(float((px + 0.5) / m.shape[1] * w0), 1), "peak_y": round(float((py + 0.5) / m.shape[0] * h0), 1)}

    maps: list[np.ndarray] = []
    labels: list[bytes] = []  # segmentation: per-frame labels at the output size, zlib-compressed (memory stays flat)
    small_labels: list[np.ndarray] = []  # the same at ≤ 256 px for the NPZ
    rows: list[dict[str, Any]] = []
    extra: list[Any] = []  # per-frame geometry for grid (quad, lattice) in source pixels
    chosen: dict[str, Any] = {}

    def run(batch: list[tuple[int, float, np.ndarray]]) -> None:
        try:
            res = forward_batch(model, [f for _, _, f in batch], card, device, postprocess)
        except UserError as e:
            raise VideoError(str(e)) from None
        recs, task = res.records, res.output.task
        if not chosen:
            have = kinds_of(recs, task)
            kd = kind or (have[0] if have else None)
            if kd is None:
                raise VideoError("The model has no attention layer attnviz can draw over time (no spatial mask, gate, STN or click layer).")
            if kd == "segmentation" and task != "segmentation":
                raise VideoError(f"kind 'segmentation' needs a segmentation model; this one is a classifier. Kinds it has: {', '.join(have) or 'none'}.")
            if kd not in have:
                raise VideoError(f"The model has no {KIND_HELP[kd]}. Kinds it has: {', '.join(have) or 'none'}.")
            try:
                chosen.update(kind=kd, layer=pick_layer(recs, kd, layer), task=task)
            except UserError as e:
                raise VideoError(str(e)) from None
            if kd in ("query", "segmentation") and not (0 <= qx < w0 and 0 <= qy < h0):
                raise VideoError(f"The query point ({qx:g}, {qy:g}) lies outside the {w0}×{h0} frame.")
        kd, name = chosen["kind"], chosen["layer"]
        logits = res.output.logits.float()
        for b, (i, t, frame) in enumerate(batch):
            row: dict[str, Any] = {"frame": i, "time": round(t, 4)}
            if task == "classification":
                p = logits[b].softmax(0)
                c = int(p.argmax())
                row.update(prediction=names[c] if c < len(names) else c, confidence=round(float(p[c]), 4))
            else:
                lab = labels_of(res.output, b, (oh, ow))
                labels.append(zlib.compress(lab.astype(np.int16).tobytes(), 1))
                step = max(1, math.ceil(max(oh, ow) / 256))
                small_labels.append(lab[::step, ::step].astype(np.int16))
                counts = np.bincount(lab.ravel())
                c = int(counts.argmax())
                qc = int(lab[min(oh - 1, int(qy * oh / h0)), min(ow - 1, int(qx * ow / w0))])
                row.update(prediction=names[c] if c < len(names) else c, confidence=round(float(counts[c] / lab.size), 4),
                           query_class=names[qc] if qc < len(names) else qc)
            if kd == "grid":
                g: SamplingGrid = recs[name]  # type: ignore[assignment]
                in_hw = g.input_hw or (h0, w0)
                scale = torch.tensor([w0 / in_hw[1], h0 / in_hw[0]])
                quad = (sampled_quad(g, b) * scale).numpy()
                lattice = (normalized_to_pixels(g.grid[b], in_hw, g.align_corners) * scale).numpy()
                extra.append((quad, lattice[:: max(1, lattice.shape[0] // 8), :: max(1, lattice.shape[1] // 8)]))
                m = quad
                x0, y0 = quad.min(0)
                x1, y1 = quad.max(0)
                row.update(box_x0=round(float(x0), 1), box_y0=round(float(y0), 1), box_x1=round(float(x1), 1), box_y1=round(float(y1), 1))
            elif kd == "segmentation" and not name:
                m = np.zeros((1, 1), np.float32)
            else:
                m = frame_map(recs, kd, name, b, (qx, qy), (h0, w0))
                if kd == "spatial":
                    row.update(mean_mask=round(float(m.mean()), 4), **peak(m))
                elif kd == "channel":
                    top = np.argsort(-m)[:3]
                    row.update(mean_gate=round(float(m.mean()), 4), top_channels=" ".join(map(str, top.tolist())))
                else:
                    row.update(query_x=qx, query_y=qy, **peak(m))
            maps.append(np.asarray(m, dtype=np.float32))
            rows.append(row)

    def render_frame(j: int, frame: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
        if frame.shape[1] != ow or frame.shape[0] != oh:
            frame = cv2.resize(frame, (ow, oh), interpolation=cv2.INTER_AREA)
        kd = chosen["kind"]
        sx, sy = ow / w0, oh / h0
        if kd == "grid":
            quad, lattice = extra[j]
            img = render.draw_lattice(frame, lattice * [sx, sy], every=1)
            return render.draw_quad(img, quad * [sx, sy])
        if kd == "channel":
            strip = render.colorize(maps[j][None], cmap, lo, hi)  # (1, C, 3)
            bar = cv2.resize(strip, (ow, max(8, oh // 12)), interpolation=cv2.INTER_NEAREST)
            img = frame.copy()
            img[-bar.shape[0]:] = bar
            return _with_bar(img, cmap, lo, hi, "gate")
        point = (rows[j].get("query_x", qx) * sx, rows[j].get("query_y", qy) * sy)
        heat = None
        if kd != "segmentation" or chosen["layer"]:
            heat = render.overlay(frame, maps[j], cmap, alpha, lo, hi, point=None if kd == "spatial" else point)
        if kd == "segmentation":
            pal = np.asarray(card["palette"], np.uint8) if card.get("palette") is not None else render.default_palette(max(2, len(names)))
            lab = np.frombuffer(zlib.decompress(labels[j]), np.int16).reshape(oh, ow)
            seg = render.draw_point(render.label_overlay(frame, lab, pal, 0.5), *point)
            if heat is None:
                return seg
            return np.concatenate([seg, np.full((oh, 4, 3), 255, np.uint8), _with_bar(heat, cmap, lo, hi, "attention of the query")], axis=1)
        return _with_bar(heat, cmap, lo, hi, "attention weight" if kd == "query" else "mask value")

    def _with_bar(img: np.ndarray, cm: str, lo: float | None, hi: float | None, unit: str) -> np.ndarray:
        framed = render.with_colorbar(img, cm, float(lo or 0.0), float(hi if hi is not None else 1.0), unit)
        return framed[:, : framed.shape[1] - framed.shape[1] % 2]

    def written_size() -> tuple[int, int]:
        probe_frame = np.zeros((oh, ow, 3), np.uint8)
        return render_frame(0, probe_frame, 0.0, 1.0).shape[:2][::-1]  # (W, H)

    def check() -> None:
        if stop():
            raise VideoCancelled("cancelled")

    single = vrange is not None or (kind == "grid")
    writer: _Writer | None = None
    decoded = 0
    try:
        batch: list[tuple[int, float, np.ndarray]] = []
        done = 0

        def flush() -> None:
            nonlocal done, writer
            start = len(maps)
            run(batch)
            if chosen["kind"] == "grid":
                nonlocal_single[0] = True
            if nonlocal_single[0]:
                if writer is None:
                    writer = _Writer(out, fps / stride, *written_size())
                lo, hi = vrange if vrange is not None else (None, None)
                for j, (_, _, f) in enumerate(batch):
                    check()
                    writer.write(render_frame(start + j, f, lo, hi))
            done += len(batch)
            batch.clear()
            if progress:
                progress(done, total, "analysing" if not nonlocal_single[0] else "analysing and encoding")

        nonlocal_single = [single]
        for item in iter_frames(path, stride, max_frames):
            check()
            decoded += 1
            batch.append(item)
            if len(batch) == bs:
                flush()
        if batch:
            flush()
        scale: tuple[float, float] | None = None
        if chosen["kind"] != "grid":
            scale = vrange if vrange is not None else render.map_range(maps)
        if not nonlocal_single[0]:  # pass 2: the clip-wide colour scale is known now
            assert scale is not None
            writer = _Writer(out, fps / stride, *written_size())
            for j, (_, _, f) in enumerate(iter_frames(path, stride, max_frames)):
                check()
                if j >= len(maps):
                    break
                writer.write(render_frame(j, f, *scale))
                if progress and (j + 1) % bs == 0:
                    progress(j + 1, len(maps), "encoding")
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        for p in (out, out.with_suffix(".npz"), out.with_suffix(".csv")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        raise
    assert writer is not None
    writer.close()
    if n_est and decoded < math.ceil(n_est / stride) - 1:
        notes.append(f"the clip is truncated or damaged: {decoded} of about {math.ceil(n_est / stride)} frames could be read")
    npz = out.with_suffix(".npz")
    arrays = {"maps": np.stack(maps)}
    if small_labels:
        arrays["labels"] = np.stack(small_labels)  # predicted classes, every ceil(side / 256)-th pixel
    np.savez_compressed(npz, **arrays, times=np.array([r["time"] for r in rows]), frames=np.array([r["frame"] for r in rows]),
                        confidence=np.array([r["confidence"] for r in rows]), prediction=np.array([str(r["prediction"]) for r in rows]),
                        layer=np.array(chosen["layer"]), kind=np.array(chosen["kind"]), vrange=np.array(scale if scale else (np.nan, np.nan)))
    csv_path = out.with_suffix(".csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return VideoResult(out, npz, csv_path, rows, fps / stride, len(rows), chosen["layer"], scale, notes, chosen["kind"], chosen["task"])
