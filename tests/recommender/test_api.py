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
    assert len(body["results"]) == 24  # the default page
    five = api.get("/api/products/", {"slot": "bottom", "page_size": 5}).json()["results"]
    assert [p["id"] for p in five] == [p["id"] for p in body["results"][:5]]
    assert len(api.get("/api/products/", {"page_size": 1000}).json()["results"]) == 100  # the cap
    r = api.get("/api/products/", {"page": "abc"})
    assert r.status_code == 400 and r.json()["error"]["details"] == {"page": ["'abc' is not a page number"]}
    assert {p["audience_group"] for p in body["results"]} <= {"women", "men", "kids", "baby", "unisex"}
    assert {p["audience_group"] for p in body["results"]} >= {"women", "men"}


def test_unknown_product_is_404_with_json_error(trained_catalog, api):
    r = api.get("/api/products/999999/similar/")
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "code": "unknown_products",
            "message": "unknown product id(s): [999999]",
            "details": {"ids": [999999]},
        }
    }


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
    assert r.status_code == 200 and len(r.json()["results"]) == 5
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
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_authenticated"  # anonymous
    user = User.objects.create_user("shopper", password="pw")
    api.force_authenticate(user)
    r = api.post("/api/training-runs/", {}, format="json")
    # logged in, but without the merchandiser permission
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    assert not Product.objects.filter(sku="T-1").exists()


def test_merchandiser_upload_rejects_broken_image_and_creates_nothing(trained_catalog, api):
    user = User.objects.create_user("merch", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    api.force_authenticate(user)
    buf = io.BytesIO()
    Image.new("RGB", (40, 60), "navy").save(buf, format="PNG")
    truncated = buf.getvalue()[:50]
    r = api.post(
        "/api/products/",
        {"sku": "T-2", "title": "Broken", "slot": "top", "image": io.BytesIO(truncated)},
        format="multipart",
    )
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


def test_nested_validation_errors_read_plainly(trained_catalog, api):
    r = api.post("/api/compatibility/", {"product_ids": ["abc", 2]}, format="json")
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "product_ids[0]: A valid integer is required."


def test_repeated_ids_count_once(trained_catalog, api):
    pid = Product.objects.filter(slot="top").first().pk
    r = api.post("/api/compatibility/", {"product_ids": [pid] * 9}, format="json")
    assert r.status_code == 400 and "2 to 8 distinct" in r.json()["error"]["message"]
    r = api.post("/api/complete-the-look/", {"product_ids": [pid] * 9, "k": 1}, format="json")
    assert r.status_code == 200


def test_unknown_api_path_and_wrong_method_answer_json(api):
    r = api.get("/api/products/-1/similar/")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = api.post("/api/search/?q=dress")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_bad_filters_are_400_not_500(trained_catalog, api):
    r = api.get("/api/products/", {"colour": "black\x00"})
    assert r.status_code == 400 and "colour" in r.json()["error"]["message"]
    r = api.get("/api/search/", {"q": "dress", "price_min": 50, "price_max": 10})
    assert r.status_code == 400 and "price_min 50.0 is above price_max 10.0" in r.json()["error"]["message"]
    r = api.get("/api/products/", {"slot": "hat"})
    assert r.status_code == 400 and "slot" in r.json()["error"]["details"]


def test_photo_search_rejects_thin_and_broken_images(trained_catalog, api):
    buf = io.BytesIO()
    Image.new("RGB", (20, 2000), "white").save(buf, format="PNG")
    buf.seek(0)
    r = api.post("/api/search/photo/", {"image": buf}, format="multipart")
    assert r.status_code == 400 and "too thin or wide" in r.json()["error"]["message"]
    r = api.post("/api/search/photo/", {"image": io.BytesIO(b"%PDF-1.4 not an image")}, format="multipart")
    assert r.status_code == 400 and "not a photo we can open" in r.json()["error"]["message"]


def test_upload_rejects_unsafe_sku_and_negative_price(trained_catalog, api, hm_root):
    user = User.objects.create_user("merch2", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    api.force_authenticate(user)
    for sku, price, field in [("../../etc/x", "1.00", "sku"), ("OK-1", "-5", "price")]:
        data = {"sku": sku, "title": "T", "slot": "top", "price": price, "image": io.BytesIO(_jpeg(hm_root))}
        r = api.post("/api/products/", data, format="multipart")
        assert r.status_code == 400 and field in r.json()["error"]["details"], r.content
    # an audience that names nobody would be taken as unisex and shown beside kids' items
    data = {
        "sku": "OK-2",
        "title": "T",
        "slot": "top",
        "audience": "Martians",
        "image": io.BytesIO(_jpeg(hm_root)),
    }
    r = api.post("/api/products/", data, format="multipart")
    assert r.status_code == 400, r.content
    assert r.json()["error"]["details"]["audience"][0].startswith(
        "“Martians” does not say who the product is for"
    )
    assert not Product.objects.filter(title="T").exists()
