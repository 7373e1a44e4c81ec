"""Image validation and normalisation with Pillow: decode-checked, re-encoded, thumbnailed."""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Refuse images above this many pixels (40 MP) before decoding them (decompression bombs); Pillow's own
#: guard is set to the same number (it only warns up to twice that).
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
MIN_SIDE = 16  # pixels
MAX_ASPECT = 10  # longest side / shortest side
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
THUMBNAIL_SIZE = (160, 240)  # pixels (w, h), the H&M photos' 2:3 aspect


class ImageError(ValueError):
    """The file is not a usable image; the message says why."""


@dataclass(frozen=True)
class CleanImage:
    """A validated image re-encoded as JPEG, with its thumbnail, the decoded RGB image (so callers need
    not decode the JPEG again) and the original bytes' SHA-256."""

    jpeg: bytes
    thumbnail: bytes
    image: Image.Image  # the decoded RGB image (EXIF-rotated) the JPEG was encoded from
    sha256: str


def clean_image(data: bytes, *, name: str = "image") -> CleanImage:
    """Decode ``data`` with Pillow, apply EXIF orientation, convert to RGB, re-encode as JPEG.

    Args:
        data: the raw file bytes (any format Pillow reads).
        name: shown in error messages (a file name or SKU).

    Returns:
        :class:`CleanImage` with JPEG bytes (quality 90) and a JPEG thumbnail fitting
        :data:`THUMBNAIL_SIZE`.

    Raises:
        ImageError: empty file, larger than :data:`MAX_UPLOAD_BYTES`, not an image, truncated, above
            :data:`MAX_PIXELS` (decompression bomb), a side under :data:`MIN_SIDE` px, or an aspect
            ratio beyond 1::data:`MAX_ASPECT`.
    """
    if not data:
        raise ImageError(f"{name}: empty file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(too_big_message(name, len(data)))
    try:
        with warnings.catch_warnings():  # between 1x and 2x the limit Pillow only warns; we refuse below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
        with probe:
            w, h = probe.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{name}: {w}x{h} is {w * h} pixels, over the {MAX_PIXELS} pixel limit")
            if min(w, h) < MIN_SIDE:
                raise ImageError(f"{name}: {w}x{h} is too small (each side needs at least {MIN_SIDE} px)")
            if max(w, h) > MAX_ASPECT * min(w, h):
                raise ImageError(f"{name}: {w}x{h} is too thin or wide (aspect ratio beyond 1:{MAX_ASPECT})")
            probe.verify()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow refuses above 2x the limit before we see the size
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{pixels[1]} pixels" if pixels else "too many pixels"
        raise ImageError(f"{name}: {count}, over the {MAX_PIXELS} pixel limit") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not a photo we can open (save it as JPEG, PNG or WebP)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: broken or truncated image ({exc})") from exc
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    thumb = img.copy()
    thumb.thumbnail(THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
    tout = io.BytesIO()
    thumb.save(tout, format="JPEG", quality=85)
    return CleanImage(out.getvalue(), tout.getvalue(), img, hashlib.sha256(data).hexdigest())


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: transparency composited on white, 16/32-bit and float grey scaled.

    Pillow's own ``convert("RGB")`` clips 16-bit grey (``I;16``, ``I``) at 255, turning a mid-grey
    photo white, so those are scaled by 1/257 (65535 -> 255) first; float (``F``) images are taken as
    0..1 when they fit in it, else as 0..255. CMYK, YCbCr, LAB, 1-bit and palette images go through
    ``convert``.

    Args:
        img: a decoded image, any mode.

    Returns:
        A new ``RGB`` image of the same size (uint8 per channel).
    """
    if img.mode in ("RGBA", "LA", "P", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)  # (H, W)
        if img.mode == "F":
            scaled = arr * 255.0 if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0 else arr
        else:
            scaled = arr / 257.0  # 16-bit range -> 8-bit
        grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def too_big_message(name: str, size: int) -> str:
    """The error message for a file of ``size`` bytes over :data:`MAX_UPLOAD_BYTES`."""
    return f"{name}: {size} bytes is over the {MAX_UPLOAD_BYTES // 2**20} MB limit ({MAX_UPLOAD_BYTES} bytes)"


def read_upload(upload, *, name: str | None = None) -> bytes:
    """The bytes of an uploaded file (a Django ``UploadedFile``), refusing one over :data:`MAX_UPLOAD_BYTES`
    before it is read into memory.

    Raises:
        ImageError: the file is too large.
    """
    name = name or upload.name
    if upload.size > MAX_UPLOAD_BYTES:
        raise ImageError(too_big_message(name, upload.size))
    return upload.read()


def clean_upload(upload, *, name: str | None = None) -> CleanImage:
    """:func:`clean_image` of an uploaded file, with the size checked before reading (:func:`read_upload`)."""
    name = name or upload.name
    return clean_image(read_upload(upload, name=name), name=name)
