"""The JSON API: answers, the single error format, permissions and the OpenAPI schema."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Permission, User
from PIL import Image
from rest_framework.test import APIClient

from catalog.models import Product

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def test_product_list_filters_by_slot(trained_catalog, api):
    r = api.get("/api/products/", {"slot": "bottom"})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == Product.objects.filter(slot="bottom").count() > 0
    assert {p["slot"] for p in body["results"]} == {"bottom"}


def test_unknown_product_is_404_with_json_error(trained_catalog, api):
    r = api.get("/api/products/999999/similar/")
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "unknown_products", "message": "unknown product id(s): [999999]",
                                  "details": {"ids": [999999]}}}  # fmt: skip


def test_empty_set_for_compatibility_is_400(trained_catalog, api):
    r = api.post("/api/compatibility/", {"product_ids": []}, format="json")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid" and "product_ids" in err["message"]


def test_bad_k_and_long_query_are_400(trained_catalog, api):
    assert api.get("/api/search/", {"q": "jeans", "k": 0}).status_code == 400
    r = api.get("/api/search/", {"q": "x" * 10_000})
    assert r.status_code == 400 and "q" in r.json()["error"]["details"]


def test_search_and_compatibility_answer(trained_catalog, api):
    r = api.get("/api/search/", {"q": "black trousers", "k": 5})
    assert r.status_code == 200 and len(r.json()) == 5
    ids = list(Product.objects.filter(slot__in=["top", "bottom"]).values_list("pk", flat=True)[:2])
    r = api.post("/api/compatibility/", {"product_ids": ids}, format="json")
    assert r.status_code == 200
    body = r.json()
    assert body["product_ids"] == ids and 0 <= body["score"] <= 1 and len(body["matrix"]) == 2
    r = api.post("/api/complete-the-look/", {"product_ids": ids[:1], "k": 2}, format="json")
    assert r.status_code == 200 and all(len(s["hits"]) <= 2 for s in r.json())


def _jpeg(hm_root) -> bytes:
    return next((hm_root / "images").glob("*/*.jpg")).read_bytes()


def test_anonymous_and_plain_users_cannot_write(trained_catalog, api, hm_root):
    data = {"sku": "T-1", "title": "Test tee", "slot": "top", "image": io.BytesIO(_jpeg(hm_root))}
    r = api.post("/api/products/", data, format="multipart")
    assert r.status_code == 403 and r.json()["error"]["code"] in ("not_authenticated", "permission_denied")
    user = User.objects.create_user("shopper", password="pw")
    api.force_authenticate(user)
    assert api.post("/api/training-runs/", {}, format="json").status_code == 403
    assert not Product.objects.filter(sku="T-1").exists()


def test_merchandiser_upload_rejects_broken_image_and_creates_nothing(trained_catalog, api):
    user = User.objects.create_user("merch", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    api.force_authenticate(user)
    buf = io.BytesIO()
    Image.new("RGB", (40, 60), "navy").save(buf, format="PNG")
    truncated = buf.getvalue()[:50]
    r = api.post("/api/products/", {"sku": "T-2", "title": "Broken", "slot": "top",
                                    "image": io.BytesIO(truncated)}, format="multipart")  # fmt: skip
    assert r.status_code == 400
    assert "T-2" in r.json()["error"]["message"]
    assert not Product.objects.filter(sku="T-2").exists()


def test_openapi_schema_lists_the_endpoints(api):
    r = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for p in [
        "/api/search/",
        "/api/compatibility/",
        "/api/complete-the-look/",
        "/api/products/{id}/similar/",
    ]:
        assert p in paths
