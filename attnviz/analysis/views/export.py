"""Export bundles: one zip per request with PNG overlays, raw maps (NPZ) and metadata (JSON).

For a segmentation model the bundle also holds the label map as an index PNG (class ids, lossless),
its colour rendering, and the logits at the model's output resolution. Each request writes its own
uniquely named file, atomically (temporary name, then rename), so concurrent exports never collide.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...maps import click_layers
from ..session import Analysis, Style
from ..workdirs import atomic_path, unique_path, work_dir
from .click import attention_at
from .modules import modules_table, summary
from .segmentation import segmentation_view
from .spatial import spatial_gallery
from .stn import stn_view


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in s)[:80]


def export_bundle(a: Analysis, click: tuple[float, float] | None = None, layer: str | None = None,
                  style: Style | None = None, folder: str | os.PathLike[str] | None = None) -> Path:
    """Write the zip of one analysis (and one click, if given) and return its path.

    Contents: ``overlays/*.png`` (lossless), ``maps.npz`` (every record's raw tensors at feature
    resolution; ``click/…`` the clicked map; segmentation ``segmentation/labels`` and ``/logits``),
    ``segmentation.png`` (class ids as pixel values) and ``metadata.json``.
    """
    style = (style or Style()).check()
    pngs: dict[str, np.ndarray] = {"image.png": a.image}
    for i, (rgb, cap) in enumerate(spatial_gallery(a, style)):
        pngs[f"spatial_{i:02d}_{_safe(cap.split(' ')[0])}.png"] = rgb
    arrays: dict[str, np.ndarray] = {}
    for name, r in a.records.items():
        for k, v in r.arrays().items():
            arrays[f"{name}/{k}"] = v[0].numpy() if v.ndim and v.shape[0] == a.x.shape[0] else v.numpy()
    meta: dict[str, Any] = summary(a)
    meta["modules"] = [dict(zip(["layer", "kind", "module", "source", "shape", "contribution", "note"], row)) for row in modules_table(a)]
    meta["style"] = vars(style)
    meta["coordinates"] = "image pixels of overlays/image.png (x to the right, y down)"
    extra: dict[str, bytes] = {}
    if a.task == "segmentation":
        labels = a.labels()
        arrays["segmentation/labels"] = labels
        arrays["segmentation/logits"] = a.logits.numpy()
        seg_rgb, legend = segmentation_view(a)
        pngs["segmentation_overlay.png"] = seg_rgb
        dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
        extra["segmentation.png"] = _png(labels.astype(dtype))
        meta["segmentation"] = {"labels_png": "segmentation.png (pixel value = class index)", "class_names": a.class_names,
                                "palette": None if a.palette is None else a.palette.tolist(), "legend": legend}
    if click is not None and click_layers(a.records):
        rgb, info, m = attention_at(a, click[0], click[1], layer, style=style)
        pngs[f"click_{_safe(info['layer'])}_{info['view']}.png"] = rgb
        arrays[f"click/{info['layer']}/{info['view']}"] = m
        meta["click"] = info
    stn, _ = stn_view(a)
    if stn is not None:
        pngs["stn.png"] = stn
    folder = Path(folder) if folder else work_dir("exports")
    folder.mkdir(parents=True, exist_ok=True)
    path = unique_path(folder, f"attnviz_{a.model_name}", ".zip")
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for fname, rgb in pngs.items():
            z.writestr(f"overlays/{fname}", _png(rgb))
        for fname, data in extra.items():
            z.writestr(fname, data)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        z.writestr("maps.npz", buf.getvalue())
        z.writestr("metadata.json", json.dumps(meta, indent=2, default=str))
    return path
