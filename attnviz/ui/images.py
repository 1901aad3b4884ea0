"""Reading user images safely: every odd format becomes RGB uint8, every failure a clear message."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_SIDE = 1024  # images are downscaled to this longest side for analysis and display
MAX_PIXELS = 80_000_000  # refuse decompression bombs beyond this before decoding
MAX_BYTES = 50 * 1024 * 1024


class ImageError(ValueError):
    """A user image that cannot be used; the message says why, in plain words."""


@dataclass
class LoadedImage:
    """An image ready for analysis.

    Attributes:
        rgb: ``(H, W, 3) uint8`` after EXIF rotation, mode conversion and downscaling.
        notes: What was done to the upload (shown to the user).
        original_size: (W, H) of the upload as stored in the file.
    """

    rgb: np.ndarray
    notes: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)


def _to_rgb(im: Image.Image, notes: list[str]) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit or float grey: stretch to 8 bits
        a = np.asarray(im, dtype=np.float64)
        lo, hi = np.nanmin(a), np.nanmax(a)
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        notes.append(f"{mode} image rescaled from [{lo:g}, {hi:g}] to 8 bits")
        a = np.repeat(a[..., None], 3, axis=2)
        return a.round().astype(np.uint8)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA (from palette)"
    if im.mode in ("RGBA", "LA", "PA"):
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im.convert("RGBA"))
        notes.append(f"{mode} transparency flattened onto white")
    elif im.mode in ("L", "1"):
        notes.append("greyscale image repeated to 3 channels")
    elif im.mode == "P":
        notes.append("palette image converted to RGB")
    elif im.mode == "CMYK":
        notes.append("CMYK image converted to RGB")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_image(source: str | os.PathLike[str] | np.ndarray | Image.Image, max_side: int = MAX_SIDE) -> LoadedImage:
    """Read an upload (path, array or PIL image) as RGB uint8, downscaled to ``max_side``.

    Raises:
        ImageError: For missing, empty, non-image, corrupt, absurdly large or wrongly shaped input.
    """
    notes: list[str] = []
    if source is None:
        raise ImageError("No image was given. Upload an image or pick an example.")
    if isinstance(source, np.ndarray):
        a = source
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or min(a.shape[:2]) < 1:
            raise ImageError(f"An image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {a.shape}.")
        if a.dtype != np.uint8:
            f = a.astype(np.float64)
            hi = f.max() if f.size else 1
            f = f / (65535 if hi > 255 else 255 if hi > 1 else 1) * 255
            a = f.clip(0, 255).round().astype(np.uint8)
        im = Image.fromarray(a[..., :3] if a.shape[2] != 1 else a[..., 0])
    elif isinstance(source, Image.Image):
        im = source
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ImageError(f"The file {os.path.basename(path)!r} does not exist.")
        size = os.path.getsize(path)
        if size == 0:
            raise ImageError("The file is empty (0 bytes).")
        if size > MAX_BYTES:
            raise ImageError(f"The file is {size / 2**20:.0f} MB; images up to {MAX_BYTES // 2**20} MB are accepted.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(path)
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(f"The image is {im.width}×{im.height} pixels; at most {MAX_PIXELS // 10**6} megapixels are accepted.")
                im.load()
        except ImageError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            name = os.path.basename(path)
            if isinstance(e, UnidentifiedImageError):
                raise ImageError(f"{name!r} is not an image file that can be read (PNG, JPEG, WebP, GIF, BMP, TIFF…).") from None
            raise ImageError(f"{name!r} is too large to decode safely.") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{os.path.basename(path)!r} looks like an image but is corrupt or truncated ({e}).") from None
    original = im.size
    try:
        rotated = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block must not lose the image
        rotated = im
        notes.append("EXIF orientation unreadable; shown as stored")
    if rotated is not None and rotated is not im and rotated.size != im.size or (rotated is not None and im.getexif().get(0x0112, 1) not in (1, None)):
        notes.append("rotated upright from its EXIF orientation")
    im = rotated if rotated is not None else im
    if getattr(im, "n_frames", 1) > 1:
        notes.append("animated/multi-page image: the first frame is used")
    rgb = _to_rgb(im, notes)
    h, w = rgb.shape[:2]
    if max(h, w) > max_side:
        k = max_side / max(h, w)
        nw, nh = max(1, round(w * k)), max(1, round(h * k))
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.LANCZOS))
        notes.append(f"downscaled from {w}×{h} to {nw}×{nh}")
    if min(rgb.shape[:2]) < 8:
        raise ImageError(f"The image is only {rgb.shape[1]}×{rgb.shape[0]} pixels; at least 8×8 is needed.")
    return LoadedImage(np.ascontiguousarray(rgb), notes, original)
