"""Attention over time: decode (PyAV) → batches → capture → maps → one colour scale → H.264 (PyAV).

``analyze_video(path, model, kind=...)`` writes a browser-playable MP4 (libx264, yuv420p, even size,
``+faststart``) with the chosen map over every frame, an NPZ of the per-frame maps at feature
resolution and a CSV table (prediction, confidence, and per kind: mean gate and top channels, STN
box, peak of the query's map). Frames are streamed: pass 1 decodes and runs the model keeping only
the small per-frame maps, pass 2 decodes again and renders with the clip-wide colour scale (one pass
when the scale is given). Memory therefore does not grow with the clip's length. No UI code here.
"""

from __future__ import annotations

import csv
import math
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
from .capture import capture
from .capture.records import ChannelGate, Record, SamplingGrid, SpatialMask
from .maps import click_layers, click_map, sampled_quad
from .maps.geometry import normalized_to_pixels
from .models.inputs import card_of, preprocess

KINDS = ("spatial", "channel", "grid", "query")
MAX_FRAMES = 900
MAX_SIDE = 854  # longest side of the written video (480p-class); larger clips are downscaled


class VideoError(ValueError):
    """A clip that cannot be used; the message says why."""


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
        notes: What was done (downscaling, stride, …).
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


def _pick(records: dict[str, Record], kind: str, layer: str | None) -> str:
    if kind == "query":
        names = list(click_layers(records))
    else:
        cls = {"spatial": SpatialMask, "channel": ChannelGate, "grid": SamplingGrid}[kind]
        names = [n for n, r in records.items() if isinstance(r, cls)]
    if not names:
        raise VideoError(f"The model has no {kind} attention layer. Layers it has: {', '.join(records) or 'none'}.")
    if layer is None:
        return names[-1]  # the deepest
    if layer not in names:
        raise VideoError(f"{layer!r} is not a {kind} layer; choose one of: {', '.join(names)}.")
    return layer


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
    kind: str = "spatial",
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
) -> VideoResult:
    """Render one attention map of ``model`` over every frame of a clip (see module docstring).

    Args:
        path: Input clip (mp4, webm, mov, gif, …).
        model: Classifier in eval mode (optional ``model.card`` for preprocessing and class names).
        kind: ``spatial``, ``channel``, ``grid`` (STN) or ``query`` (Non-Local/DANet/BotNet row or
            CCNet two-hop reach of the ``query`` pixel).
        layer: Layer name; default the deepest of that kind.
        query: (x, y) in source-frame pixels for ``kind="query"``; default the frame centre.
        out: Output MP4 path (the NPZ and CSV are written next to it).
        stride: Use every ``stride``-th frame (output fps = source fps / stride).
        max_frames: Refuse clips that would use more frames.
        batch_size: Frames per forward (default 32 on GPU, 8 on CPU).
        vrange: Fixed colour scale; default the min/max over the whole clip.
        cmap: Matplotlib colormap.
        alpha: Overlay opacity.
        device: Default: the model's device.
        progress: Called as ``progress(done, total, stage)``.
    """
    if kind not in KINDS:
        raise VideoError(f"Unknown kind {kind!r}; choose one of {', '.join(KINDS)}.")
    if cmap not in render.CMAPS:
        raise VideoError(f"Unknown colormap {cmap!r}; choose one of {', '.join(render.CMAPS)}.")
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
    if kind == "query" and not (0 <= qx < w0 and 0 <= qy < h0):
        raise VideoError(f"The query point ({qx:g}, {qy:g}) lies outside the {w0}×{h0} frame.")

    def peak(m: np.ndarray) -> dict[str, float]:
        """Centre of a map's peak cell in source-frame pixels."""
        py, px = np.unravel_index(int(m.argmax()), m.shape)
        return {"peak_x": round(float((px + 0.5) / m.shape[1] * w0), 1), "peak_y": round(float((py + 0.5) / m.shape[0] * h0), 1)}

    maps: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    extra: list[Any] = []  # per-frame geometry for grid (quad, lattice) in source pixels
    chosen: list[str] = []

    def run(batch: list[tuple[int, float, np.ndarray]]) -> None:
        x = preprocess([f for _, _, f in batch], card, device)
        ctx = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
        with torch.inference_mode(), ctx, capture(model) as cap:
            logits = model(x)
        recs = dict(cap.records)
        if not chosen:
            chosen.append(_pick(recs, kind, layer))
        name = chosen[0]
        cl = click_layers(recs)[name] if kind == "query" else None
        probs = logits.float().softmax(1).cpu()
        for b, (i, t, frame) in enumerate(batch):
            p, c = float(probs[b].max()), int(probs[b].argmax())
            row: dict[str, Any] = {"frame": i, "time": round(t, 4), "prediction": names[c] if c < len(names) else c, "confidence": round(p, 4)}
            if kind == "spatial":
                m = recs[name].mask[b].numpy()  # type: ignore[attr-defined]
                row.update(mean_mask=round(float(m.mean()), 4), **peak(m))
            elif kind == "channel":
                m = recs[name].weights[b].numpy()  # type: ignore[attr-defined]
                top = np.argsort(-m)[:3]
                row.update(mean_gate=round(float(m.mean()), 4), top_channels=" ".join(map(str, top.tolist())))
            elif kind == "grid":
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
            else:
                assert cl is not None
                m = click_map(cl, qx, qy, (h0, w0), view=cl.default_view, batch=b).numpy()
                row.update(query_x=qx, query_y=qy, **peak(m))
            maps.append(np.asarray(m, dtype=np.float32))
            rows.append(row)

    def render_frame(j: int, frame: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
        if frame.shape[1] != ow or frame.shape[0] != oh:
            frame = cv2.resize(frame, (ow, oh), interpolation=cv2.INTER_AREA)
        sx, sy = ow / w0, oh / h0
        if kind == "grid":
            quad, lattice = extra[j]
            img = render.draw_lattice(frame, lattice * [sx, sy], every=1)
            return render.draw_quad(img, quad * [sx, sy])
        if kind == "channel":
            strip = render.colorize(maps[j][None], cmap, lo, hi)  # (1, C, 3)
            bar = cv2.resize(strip, (ow, max(8, oh // 12)), interpolation=cv2.INTER_NEAREST)
            img = frame.copy()
            img[-bar.shape[0]:] = bar
            return img
        point = None
        if kind == "query":
            point = (rows[j]["query_x"] * sx, rows[j]["query_y"] * sy)
        return render.overlay(frame, maps[j], cmap, alpha, lo, hi, point=point)

    # pass 1 (and the only pass when the colour scale is fixed or not needed)
    single = vrange is not None or kind == "grid"
    writer = _Writer(out, fps / stride, ow, oh)
    try:
        batch: list[tuple[int, float, np.ndarray]] = []
        done = 0

        def flush() -> None:
            nonlocal done
            start = len(maps)
            run(batch)
            if single:
                lo, hi = vrange if vrange is not None else (None, None)
                for j, (_, _, f) in enumerate(batch):
                    writer.write(render_frame(start + j, f, lo, hi))
            done += len(batch)
            batch.clear()
            if progress:
                progress(done, total, "analysing" if not single else "analysing and encoding")

        for item in iter_frames(path, stride, max_frames):
            batch.append(item)
            if len(batch) == bs:
                flush()
        if batch:
            flush()
        scale: tuple[float, float] | None = None
        if kind != "grid":
            scale = vrange if vrange is not None else render.map_range(maps)
        if not single:  # pass 2: the clip-wide colour scale is known now
            assert scale is not None
            for j, (_, _, f) in enumerate(iter_frames(path, stride, max_frames)):
                if j >= len(maps):
                    break
                writer.write(render_frame(j, f, *scale))
                if progress and (j + 1) % bs == 0:
                    progress(j + 1, len(maps), "encoding")
    finally:
        writer.close()

    npz = out.with_suffix(".npz")
    np.savez_compressed(npz, maps=np.stack(maps), times=np.array([r["time"] for r in rows]), frames=np.array([r["frame"] for r in rows]),
                        confidence=np.array([r["confidence"] for r in rows]), prediction=np.array([str(r["prediction"]) for r in rows]),
                        layer=np.array(chosen[0]), kind=np.array(kind), vrange=np.array(scale if scale else (np.nan, np.nan)))
    csv_path = out.with_suffix(".csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return VideoResult(out, npz, csv_path, rows, fps / stride, len(rows), chosen[0], scale, notes)
