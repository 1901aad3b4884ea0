"""Reading user images safely: every odd format becomes RGB uint8, every failure a clear message.

Memory is bounded *before* decoding: the header gives width × height × bands × bytes per sample,
which must fit :data:`MAX_DECODED_BYTES` (``$ATTNVIZ_MAX_DECODED_MB``, default 200 MB); PIL's
decompression-bomb guard stays on. Large images are reduced right after decoding (JPEGs are even
decoded at reduced scale), so no full-size float copy is ever made. Uploads are identified by the
sha256 of their bytes (:func:`file_digest`), never by decoded pixels.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_SIDE = 1024  # images are downscaled to this longest side for analysis and display
MAX_BYTES = 50 * 1024 * 1024  # file size
MAX_DECODED_BYTES = int(float(os.environ.get("ATTNVIZ_MAX_DECODED_MB", "200")) * 2**20)
# bands and bytes per sample of each PIL mode, to size the decoded image from the header
_MODE_BYTES = {
    "1": 1 / 8, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4,
    "RGBX": 4, "CMYK": 4, "I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2,
}


class ImageError(ValueError):
    """A user image that cannot be used; the message says why, in plain words."""


@dataclass
class LoadedImage:
    """An image ready for analysis.

    Attributes:
        rgb: ``(H, W, 3) uint8`` after EXIF rotation, mode conversion and downscaling.
        notes: What was done to the upload (shown to the user).
        original_size: (W, H) of the upload as stored in the file.
        mode: PIL mode of the upload (e.g. ``"I;16"``), or ``"array"``.
        digest: sha256 of the uploaded bytes (or of the array), the upload's identity.
        name: File name of the upload, when it came from a file.
    """

    rgb: np.ndarray
    notes: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)
    mode: str = ""
    digest: str = ""
    name: str = ""


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def array_digest(a: np.ndarray) -> str:
    """sha256 (hex) of an array's dtype, shape and bytes."""
    h = hashlib.sha256(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def decoded_bytes(size: tuple[int, int], mode: str) -> int:
    """Bytes the decoded image of ``size`` (W, H) in ``mode`` occupies."""
    return int(size[0] * size[1] * _MODE_BYTES.get(mode, 4))


def _reduce(im: Image.Image, max_side: int, notes: list[str]) -> Image.Image | np.ndarray:
    """Shrink a decoded image by an integer factor to at most about 2× ``max_side`` (cheap box filter)."""
    k = max(im.size) // (2 * max_side)
    if k < 2:
        return im
    if im.mode.startswith("I;16"):  # PIL cannot reduce 16-bit images: block-average in numpy (2 bytes/px)
        a = np.asarray(im)
        h, w = (a.shape[0] // k) * k, (a.shape[1] // k) * k
        return a[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3), dtype=np.float32)
    if im.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
    return im.reduce(k)


def _to_rgb(im: Image.Image | np.ndarray, mode: str, notes: list[str]) -> np.ndarray:
    if isinstance(im, np.ndarray) or mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # 16-bit / float grey: stretch to 8 bits
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        notes.append(f"{mode} image rescaled from [{lo:g}, {hi:g}] to 8 bits")
        return np.repeat(np.nan_to_num(a).round().astype(np.uint8)[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA (from palette)"
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im.convert("RGBA"))
        notes.append(f"{mode} transparency flattened onto white")
    elif im.mode in ("L", "1") or mode in ("L", "1"):
        notes.append("greyscale image repeated to 3 channels")
    elif mode == "P":
        notes.append("palette image converted to RGB")
    elif mode == "CMYK":
        notes.append("CMYK image converted to RGB")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _open(path: str, max_side: int, budget: int) -> tuple[Image.Image, str, tuple[int, int]]:
    """Open and decode a file within the budget; returns the decoded image, its mode and stored size."""
    name = os.path.basename(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            mode, size = im.mode, im.size
            need = decoded_bytes(size, mode)
            if need > budget:
                raise ImageError(f"{name!r} is {size[0]}×{size[1]} pixels ({mode}): decoded it would take {need / 2**20:.0f} MB, "
                                 f"over the {budget / 2**20:.0f} MB limit (ATTNVIZ_MAX_DECODED_MB). Downscale it first.")
            if im.format == "JPEG" and max(size) > 2 * max_side:
                im.draft("RGB" if mode in ("RGB", "YCbCr", "CMYK") else mode, (2 * max_side, 2 * max_side))  # decode at 1/2…1/8 scale
            im.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError):
            raise ImageError(f"{name!r} is not an image file that can be read (PNG, JPEG, WebP, GIF, BMP, TIFF…).") from None
        raise ImageError(f"{name!r} is too large to decode safely (decompression-bomb guard).") from None
    except (OSError, SyntaxError, ValueError, MemoryError) as e:
        raise ImageError(f"{name!r} looks like an image but is corrupt or truncated ({e}).") from None
    return im, mode, size


def _from_array(source: np.ndarray, budget: int) -> tuple[Image.Image, str, tuple[int, int], str]:
    """An ``(H, W[, C])`` array (any integer or float range) as a PIL image, its mode, (W, H) and digest."""
    a = source
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or min(a.shape[:2]) < 1:
        raise ImageError(f"An image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {source.shape}.")
    if a.nbytes > budget:
        raise ImageError(f"The array takes {a.nbytes / 2**20:.0f} MB, over the {budget / 2**20:.0f} MB limit.")
    digest = array_digest(source)
    if a.dtype != np.uint8:
        f = a.astype(np.float32)
        hi = float(f.max()) if f.size else 1.0
        f = f / (65535 if hi > 255 else 255 if hi > 1 else 1) * 255
        a = f.clip(0, 255).round().astype(np.uint8)
    return Image.fromarray(a[..., :3] if a.shape[2] != 1 else a[..., 0]), "array", (a.shape[1], a.shape[0]), digest


def _from_file(source: str | os.PathLike[str], max_side: int, budget: int, notes: list[str]) -> tuple[Any, str, tuple[int, int], str, str]:
    """A file checked for existence and size, then opened within the budget: (image, mode, (W, H), digest, file name)."""
    path = os.fspath(source)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ImageError(f"The file {name!r} does not exist.")
    size = os.path.getsize(path)
    if size == 0:
        raise ImageError("The file is empty (0 bytes).")
    if size > MAX_BYTES:
        raise ImageError(f"The file is {size / 2**20:.0f} MB; images up to {MAX_BYTES // 2**20} MB are accepted.")
    digest = file_digest(path)
    im, mode, original = _open(path, max_side, budget)
    if getattr(im, "n_frames", 1) > 1:
        notes.append("animated/multi-page image: the first frame is used")
    return im, mode, original, digest, name


def load_image(source: str | os.PathLike[str] | np.ndarray | Image.Image, max_side: int = MAX_SIDE, budget: int | None = None) -> LoadedImage:
    """Read an upload (path, array or PIL image) as RGB uint8, downscaled to ``max_side``.

    Args:
        source: A file path, an ``(H, W[, C])`` array or a PIL image.
        max_side: Longest side of the result.
        budget: Largest decoded size in bytes (default :data:`MAX_DECODED_BYTES`).

    Raises:
        ImageError: For missing, empty, non-image, corrupt, over-budget or wrongly shaped input.
    """
    budget = MAX_DECODED_BYTES if budget is None else budget
    notes: list[str] = []
    digest, name = "", ""
    if source is None:
        raise ImageError("No image was given. Upload an image or pick an example.")
    if isinstance(source, np.ndarray):
        im: Image.Image | np.ndarray
        im, mode, original, digest = _from_array(source, budget)
    elif isinstance(source, Image.Image):
        im, mode, original = source, source.mode, source.size
        if decoded_bytes(original, mode) > budget:
            raise ImageError(f"The image is {original[0]}×{original[1]} pixels, over the decoded-size limit.")
    else:
        im, mode, original, digest, name = _from_file(source, max_side, budget, notes)
    orientation = 1
    if isinstance(im, Image.Image):
        try:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
        except Exception:  # a broken EXIF block must not lose the image
            notes.append("EXIF orientation unreadable; shown as stored")
        im = _reduce(im, max_side, notes)
    if isinstance(im, Image.Image) and orientation not in (1,):
        try:
            im = ImageOps.exif_transpose(im) or im
            notes.append("rotated upright from its EXIF orientation")
        except Exception:
            notes.append("EXIF orientation unreadable; shown as stored")
    elif isinstance(im, np.ndarray) and orientation in (3, 6, 8):  # a reduced 16-bit array: rotate in numpy
        im = np.rot90(im, {3: 2, 6: 3, 8: 1}[orientation]).copy()
        notes.append("rotated upright from its EXIF orientation")
    rgb = _to_rgb(im, mode, notes)
    h, w = rgb.shape[:2]
    ow, oh = original if orientation in (1, 2, 3, 4) else (original[1], original[0])
    if max(h, w) > max_side:
        k = max_side / max(h, w)
        nw, nh = max(1, round(w * k)), max(1, round(h * k))
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.LANCZOS))
    if (rgb.shape[1], rgb.shape[0]) != (ow, oh):
        notes.append(f"downscaled from {ow}×{oh} to {rgb.shape[1]}×{rgb.shape[0]}")
    if min(rgb.shape[:2]) < 8:
        raise ImageError(f"The image is only {rgb.shape[1]}×{rgb.shape[0]} pixels; at least 8×8 is needed.")
    return LoadedImage(np.ascontiguousarray(rgb), notes, original, mode, digest, name)
