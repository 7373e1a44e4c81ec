"""Merchandiser pages: upload one product with inline errors, start a training run."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Permission, User
from PIL import Image

from catalog.models import Product
from recommender.models import TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def merch_client(client):
    user = User.objects.create_user("merch-page", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    client.login(username="merch-page", password="pw")
    return client


def test_upload_needs_login_and_permission(client):
    r = client.get("/manage/upload")
    assert r.status_code == 302 and "/admin/login/" in r["Location"]
    User.objects.create_user("shopper-page", password="pw")
    client.login(username="shopper-page", password="pw")
    assert client.get("/manage/upload").status_code == 403


def test_broken_image_upload_shows_inline_error_and_creates_nothing(merch_client):
    buf = io.BytesIO()
    Image.new("RGB", (60, 90), "navy").save(buf, format="JPEG")
    broken = io.BytesIO(buf.getvalue()[:40])
    broken.name = "broken.jpg"
    r = merch_client.post(
        "/manage/upload", {"sku": "PAGE-1", "title": "Navy tee", "slot": "top", "image": broken}
    )
    assert r.status_code == 200
    body = r.content.decode()
    assert "Nothing was created" in body and "PAGE-1: broken or truncated image" in body
    assert 'value="Navy tee"' in body  # the form keeps what was typed
    assert not Product.objects.filter(sku="PAGE-1").exists()


def test_valid_upload_redirects_to_the_new_product(merch_client, hm_root, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    photo = next((hm_root / "images").glob("*/*.jpg"))
    f = io.BytesIO(photo.read_bytes())
    f.name = photo.name
    r = merch_client.post("/manage/upload", {"sku": "PAGE-2", "title": "Real photo", "slot": "bottom",
                                              "colour": "Black", "price": "19.99", "image": f})  # fmt: skip
    product = Product.objects.get(sku="PAGE-2")
    assert r.status_code == 302 and r["Location"] == f"/products/{product.pk}?uploaded=1"
    assert str(product.price) == "19.99" and product.image and product.thumbnail
    page = merch_client.get(r["Location"]).content.decode()
    assert "Uploaded. A worker embeds it now" in page and "Real photo" in page


def test_start_training_from_the_models_page_one_at_a_time(merch_client):
    TrainingRun.objects.create(params={}, status=TrainingRun.Status.RUNNING)
    before = TrainingRun.objects.count()
    r = merch_client.post("/models/train", {"epochs": "3"})
    assert r.status_code == 302
    page = merch_client.get(r["Location"]).content.decode()
    assert "is still running; wait or cancel it" in page
    assert TrainingRun.objects.count() == before
