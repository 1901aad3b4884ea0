"""Regenerate the example clips: ``python examples/make_videos.py`` (needs dataset-fashion-mnist).

- ``clip_moving_item.mp4``: a t10k Fashion-MNIST item (a sneaker) gliding over a panning photo,
  256×256, 3 s at 15 fps — in distribution for the zoo models.
- ``clip_pan_photo.mp4``: a slow pan across scikit-image's astronaut photo, 320×240, 3 s at 15 fps —
  for ImageNet models.
Both are H.264 / yuv420p, written with PyAV. Deterministic.
"""

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from attnviz.data.backgrounds import _load
from attnviz.data.fashion import load_split
from attnviz.video import write_video

HERE = Path(__file__).resolve().parent
FPS, SECONDS = 15, 3


def moving_item() -> list[np.ndarray]:
    images, labels = load_split("test")
    idx = int(np.flatnonzero(labels == 7)[3])  # a sneaker
    sprite = torch.from_numpy(images[idx].copy()).float()[None, None] / 255  # (1, 1, 28, 28)
    photo = torch.from_numpy(_load("coffee")).permute(2, 0, 1).float()[None] / 255  # (1, 3, H, W)
    size, side = 256, 96
    item = F.interpolate(sprite, size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    colour = torch.tensor([0.95, 0.9, 0.2])[:, None, None]
    frames = []
    n = FPS * SECONDS
    for t in range(n):
        u = t / (n - 1)
        x0 = int(u * (photo.shape[-1] - photo.shape[-2]))  # pan right
        bg = F.interpolate(photo[..., :, x0 : x0 + photo.shape[-2]], size=(size, size), mode="area")[0]
        cx, cy = int(20 + u * (size - side - 40)), int(size / 2 - side / 2 + 50 * np.sin(2 * np.pi * u))
        canvas = bg.clone()
        a = item[None]
        region = canvas[:, cy : cy + side, cx : cx + side]
        canvas[:, cy : cy + side, cx : cx + side] = region * (1 - a) + colour * a
        frames.append((canvas.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
    return frames


def pan_photo() -> list[np.ndarray]:
    photo = torch.from_numpy(_load("astronaut")).permute(2, 0, 1).float()[None] / 255
    frames = []
    n = FPS * SECONDS
    for t in range(n):
        u = t / (n - 1)
        y0, x0 = int(u * 120), int(u * 160)
        crop = photo[..., y0 : y0 + 384, x0 : x0 + 352]
        f = F.interpolate(crop, size=(240, 320), mode="area")[0]
        frames.append((f.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    return frames


if __name__ == "__main__":
    write_video(HERE / "clip_moving_item.mp4", moving_item(), FPS)
    write_video(HERE / "clip_pan_photo.mp4", pan_photo(), FPS)
