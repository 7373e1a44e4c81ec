"""Photo validation: size checked before reading, shape limits, the decoded image handed back."""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from catalog.images import MAX_UPLOAD_BYTES, ImageError, clean_image, clean_upload, read_upload


class _Upload:
    """An uploaded file whose body must never be read (it claims to be too large)."""

    name = "huge.jpg"
    size = MAX_UPLOAD_BYTES + 1

    def read(self) -> bytes:
        raise AssertionError("an oversized upload was read into memory")


def test_oversized_upload_is_refused_before_reading():
    with pytest.raises(ImageError, match=rf"huge.jpg: {MAX_UPLOAD_BYTES + 1} bytes is over the 10 MB limit"):
        read_upload(_Upload())
    with pytest.raises(ImageError, match="over the 10 MB limit"):
        clean_upload(_Upload(), name="photo")


def test_clean_image_returns_the_decoded_rgb_image_of_a_real_photo(hm_root):
    raw = next((hm_root / "images").glob("*/*.jpg")).read_bytes()
    clean = clean_image(raw, name="p")
    assert clean.image.mode == "RGB" and clean.image.size == Image.open(io.BytesIO(raw)).size
    assert Image.open(io.BytesIO(clean.jpeg)).size == clean.image.size
    assert max(Image.open(io.BytesIO(clean.thumbnail)).size) <= 240


def test_palette_png_with_alpha_becomes_rgb_on_white():
    img = Image.new("RGBA", (40, 60), (0, 0, 0, 0))
    buf = io.BytesIO()
    img.convert("P").save(buf, format="PNG")
    clean = clean_image(buf.getvalue(), name="p")
    assert clean.image.mode == "RGB" and clean.image.getpixel((5, 5)) == (255, 255, 255)


# --- bad input and unusual formats (the generators below build each file in memory, in milliseconds) ---


def _png_of_size(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG of any size, built row by row: 20000x20000 compresses to ~49 KB."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise_jpeg() -> bytes:
    rgb = np.random.default_rng(0).integers(0, 256, size=(300, 200, 3), dtype=np.uint8)
    return _encode(Image.fromarray(rgb), "JPEG", quality=90)


def test_bad_files_are_refused_with_a_message_naming_the_file():
    cases = [
        (b"", "a.jpg: empty file"),
        (
            b"%PDF-1.4\n% a document renamed to .jpg\n" * 4,
            "a.jpg: not a photo we can open (save it as JPEG, PNG or WebP)",
        ),
        (
            b"<svg xmlns='http://www.w3.org/2000/svg'/>",
            "a.jpg: not a photo we can open (save it as JPEG, PNG or WebP)",
        ),
        (_png_of_size(20000, 20000), "a.jpg: 400000000 pixels, over the 40000000 pixel limit"),
        (_png_of_size(7000, 7000), "a.jpg: 7000x7000 is 49000000 pixels, over the 40000000 pixel limit"),
        (_png_of_size(8, 300), "a.jpg: 8x300 is too small (each side needs at least 16 px)"),
    ]
    for data, message in cases:
        with pytest.raises(ImageError) as info:
            clean_image(data, name="a.jpg")
        assert str(info.value) == message


def test_the_decompression_bomb_is_small_on_disk_and_refused_before_decoding():
    bomb = _png_of_size(20000, 20000)
    assert len(bomb) < 100_000  # 400 MP in under 100 KB: the pixel count, not the file size, must stop it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no DecompressionBombWarning leaks out of the 40-80 MP band
        with pytest.raises(ImageError, match="over the 40000000 pixel limit"):
            clean_image(_png_of_size(7000, 7000), name="x")


def test_truncated_jpeg_is_refused():
    raw = _noise_jpeg()
    for cut in (len(raw) // 2, 40):
        with pytest.raises(ImageError) as info:
            clean_image(raw[:cut], name="t.jpg")
        assert re.fullmatch(
            r"t\.jpg: broken or truncated image \((image file is truncated \(\d+ bytes not "
            r"processed\)|Truncated File Read)\)",
            str(info.value),
        ), str(info.value)


def test_cmyk_palette_alpha_16_bit_and_1_bit_images_become_rgb():
    grey16 = Image.fromarray(np.full((60, 40), 32896, dtype=np.uint16))  # 32896 / 257 = 128
    dark16 = Image.fromarray(np.full((60, 40), 2570, dtype=np.uint16))  # 10 in 8 bits
    cases = [  # (file, expected RGB of a pixel in the middle, tolerance for JPEG)
        (_encode(Image.new("CMYK", (40, 60), (0, 255, 255, 0)), "JPEG", quality=100), (255, 0, 0), 3),
        (
            _encode(
                Image.new("RGB", (40, 60), (0, 0, 200)).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"
            ),
            (0, 0, 200),
            0,
        ),
        (_encode(Image.new("RGBA", (40, 60), (255, 0, 0, 128)), "PNG"), (255, 127, 127), 1),  # on white
        (_encode(Image.new("LA", (40, 60), (0, 0)), "PNG"), (255, 255, 255), 0),  # transparent -> white
        (_encode(grey16, "PNG"), (128, 128, 128), 0),  # not clipped to white
        (_encode(dark16, "PNG"), (10, 10, 10), 0),
        (_encode(Image.new("1", (40, 60), 1), "PNG"), (255, 255, 255), 0),
        (_encode(Image.new("F", (40, 60), 0.5), "TIFF"), (128, 128, 128), 0),
        (_encode(Image.new("RGB", (40, 60), (0, 200, 0)), "WEBP", lossless=True), (0, 200, 0), 0),
    ]
    for data, rgb, tol in cases:
        mode = Image.open(io.BytesIO(data)).mode
        clean = clean_image(data, name="c")
        assert clean.image.mode == "RGB", mode
        got = clean.image.getpixel((20, 30))
        assert all(abs(a - b) <= tol for a, b in zip(got, rgb, strict=True)), (mode, got, rgb)
        assert Image.open(io.BytesIO(clean.jpeg)).mode == "RGB"


def test_exif_orientation_is_applied_and_exif_is_not_kept():
    img = Image.new("RGB", (60, 90), "white")
    img.paste((255, 0, 0), (0, 0, 15, 15))  # a red block at the top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    exif[0x010F] = "CameraMaker"  # Make
    raw = _encode(img, "JPEG", exif=exif, quality=95)
    clean = clean_image(raw, name="o")
    assert clean.image.size == (90, 60)
    r, g, b = clean.image.getpixel((85, 5))  # the block is now at the top-right
    assert r > 200 and g < 60 and b < 60
    assert dict(Image.open(io.BytesIO(clean.jpeg)).getexif()) == {}  # orientation, camera, GPS: all dropped
