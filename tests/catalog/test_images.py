"""Photo validation: size checked before reading, shape limits, the decoded image handed back."""

from __future__ import annotations

import io

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
