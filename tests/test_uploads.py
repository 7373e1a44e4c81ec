"""Bad photos through the API and the upload page: the exact message, nothing created, names not trusted."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from catalog.models import Product
from tests.catalog.test_images import _encode, _noise_jpeg, _png_of_size

pytestmark = pytest.mark.django_db


@pytest.fixture
def merch(settings, tmp_path) -> User:
    settings.MEDIA_ROOT = tmp_path
    user = User.objects.create_user("merch-uploads", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    return user


def _bad_files() -> list[tuple[str, bytes, str, str]]:
    """(file name, bytes, message from the API, message on the page) for SKU ``BAD-1``."""
    jpeg = _noise_jpeg()
    return [
        (
            "document.jpg",
            b"%PDF-1.4\nnot a photo\n" * 8,
            "image: BAD-1: not a photo we can open (save it as JPEG, PNG or WebP)",
            "BAD-1: not a photo we can open (save it as JPEG, PNG or WebP)",
        ),
        (
            "bomb.png",
            _png_of_size(20000, 20000),
            "image: BAD-1: 400000000 pixels, over the 40000000 pixel limit",
            "BAD-1: 400000000 pixels, over the 40000000 pixel limit",
        ),
        (
            "cut.jpg",
            jpeg[:40],
            "image: BAD-1: broken or truncated image (Truncated File Read)",
            "BAD-1: broken or truncated image (Truncated File Read)",
        ),
        # DRF's FileField refuses an empty file before our code runs; the page reaches clean_image
        ("empty.jpg", b"", "image: The submitted file is empty.", "BAD-1: empty file"),
    ]


def test_api_refuses_each_bad_file_with_its_message(merch):
    api = APIClient()
    api.force_authenticate(merch)
    for name, data, message, _ in _bad_files():
        upload = SimpleUploadedFile(name, data, content_type="image/jpeg")
        r = api.post("/api/products/", {"sku": "BAD-1", "title": "Bad", "slot": "top", "image": upload})
        assert r.status_code == 400, (name, r.content)
        assert r.json()["error"]["code"] == "invalid" and r.json()["error"]["message"] == message, name
        assert list(r.json()["error"]["details"]) == ["image"], name  # the field, for a form to mark
    assert not Product.objects.filter(sku="BAD-1").exists()


def test_upload_page_shows_each_bad_file_inline_and_keeps_the_form(merch, client):
    client.force_login(merch)
    for name, data, _, message in _bad_files():
        upload = SimpleUploadedFile(name, data, content_type="image/jpeg")
        r = client.post(
            "/manage/upload", {"sku": "BAD-1", "title": "Bad tee", "slot": "top", "image": upload}
        )
        body = r.content.decode()
        assert r.status_code == 200 and "Nothing was created" in body, name
        assert f"<li>{message}</li>" in body and 'value="Bad tee"' in body, (name, message)
    assert not Product.objects.filter(sku="BAD-1").exists()


def test_photo_search_api_refuses_the_bomb_and_a_renamed_document():
    api = APIClient()
    for data, message in [
        (_png_of_size(20000, 20000), "image: photo: 400000000 pixels, over the 40000000 pixel limit"),
        (b"GIF89a but not really", "image: photo: not a photo we can open (save it as JPEG, PNG or WebP)"),
    ]:
        r = api.post("/api/search/photo/", {"image": SimpleUploadedFile("x.jpg", data)})
        assert r.status_code == 400 and r.json()["error"]["message"] == message


def test_unusual_formats_are_stored_as_rgb_jpeg_under_a_content_hash_name(merch):
    import numpy as np

    api = APIClient()
    api.force_authenticate(merch)
    grey16 = _encode(Image.fromarray(np.full((90, 60), 32896, dtype=np.uint16)), "PNG")
    cmyk = _encode(Image.new("CMYK", (60, 90), (0, 255, 255, 0)), "JPEG", quality=100)
    rotated = io.BytesIO()
    img = Image.new("RGB", (60, 90), "white")
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(rotated, format="JPEG", exif=exif)
    hostile_names = ["../../../etc/passwd.jpg", "photo.php.jpg", "<script>.png"]
    for i, (data, name) in enumerate(zip([grey16, cmyk, rotated.getvalue()], hostile_names, strict=True)):
        r = api.post(
            "/api/products/",
            {
                "sku": f"ODD-{i}",
                "title": "Odd",
                "slot": "top",
                "image": SimpleUploadedFile(name, data, "image/png"),
            },
        )
        assert r.status_code == 201, r.content
        p = Product.objects.get(sku=f"ODD-{i}")
        assert p.image.name == f"products/{p.image_sha256[:24]}.jpg" and ".." not in p.image.name
        stored = Image.open(p.image.path)
        assert stored.format == "JPEG" and stored.mode == "RGB"
        if i == 0:
            assert stored.getpixel((30, 45)) == (128, 128, 128)  # 16-bit mid-grey, not clipped to white
        if i == 2:
            assert stored.size == (90, 60)  # EXIF orientation applied
