"""Serving API: exact 400 messages, pagination, MMR, the answer cache (per model version, failure-safe),
throttling (429 in the JSON error format) and the documented parameters."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.html import escape
from PIL import Image
from redis.exceptions import ConnectionError as RedisConnectionError
from rest_framework.test import APIClient

from catalog.models import Product
from recommender import api as apis
from recommender import search, selectors
from recommender.models import ModelVersion

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.content
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return body["error"]


def _ids(n: int) -> list[int]:
    return list(Product.objects.order_by("pk").values_list("pk", flat=True)[:n])


@pytest.mark.parametrize(
    "method,url,data,message",
    [
        (
            "post",
            "/api/compatibility/",
            {"product_ids": []},
            "product_ids: Ensure this field has at least 1 elements.",
        ),
        (
            "post",
            "/api/complete-the-look/",
            {"product_ids": []},
            "product_ids: Ensure this field has at least 1 elements.",
        ),
        (
            "post",
            "/api/complete-the-look/",
            {"product_ids": [1], "k": 21},
            "k: Ensure this value is less than or equal to 20.",
        ),
        (
            "get",
            "/api/search/",
            {"q": "jeans", "k": 0},
            "k: Ensure this value is greater than or equal to 1.",
        ),
        (
            "get",
            "/api/search/",
            {"q": "jeans", "k": 101},
            "k: Ensure this value is less than or equal to 100.",
        ),
        ("get", "/api/search/", {"q": "x" * 10_000}, "q: Ensure this field has no more than 500 characters."),
        ("get", "/api/search/", {"q": "   "}, "q: This field may not be blank."),
        (
            "get",
            "/api/search/",
            {"q": "dress", "price_min": 50, "price_max": 10},
            "price_min: price_min 50.0 is above price_max 10.0",
        ),
        ("get", "/api/search/", {"q": "dress", "slot": "hat"}, 'slot: "hat" is not a valid choice.'),
        (
            "get",
            "/api/search/",
            {"q": "dress", "price_min": "cheap"},
            "price_min: A valid number is required.",
        ),
        (
            "get",
            "/api/search/",
            {"q": "dress", "mmr": 1.5},
            "mmr: Ensure this value is less than or equal to 1.0.",
        ),
        (
            "get",
            "/api/search/",
            {"q": "dress", "k": 100, "page": 6},
            "page: page × k must be at most 500 (got 6 × 100)",
        ),
        (
            "get",
            "/api/products/{pid}/similar/",
            {"space": "colour"},
            'space: "colour" is not a valid choice.',
        ),
        (
            "post",
            "/api/compatibility/",
            {"product_ids": list(range(1, 10))},
            "product_ids: give at most 8 distinct product ids (got 9)",
        ),
    ],
)
def test_bad_input_is_400_with_the_exact_message(trained_catalog, api, method, url, data, message):
    url = url.format(pid=_ids(1)[0])
    r = api.get(url, data) if method == "get" else api.post(url, data, format="json")
    err = _error(r, 400)
    assert err["code"] == "invalid" and err["message"] == message


def test_unknown_ids_in_a_body_are_400_and_name_the_ids(trained_catalog, api):
    good = _ids(1)[0]
    for url in ("/api/compatibility/", "/api/complete-the-look/"):
        r = api.post(url, {"product_ids": [good, 987654321, 987654322]}, format="json")
        err = _error(r, 400)
        assert err == {
            "code": "unknown_products",
            "details": {"ids": [987654321, 987654322]},
            "message": "product_ids: unknown product id(s): [987654321, 987654322]",
        }
    for ids in ([good], [good, good]):  # one distinct id, however often repeated, is not a set
        err = _error(api.post("/api/compatibility/", {"product_ids": ids}, format="json"), 400)
        assert err["message"] == "product_ids: give 2 to 8 distinct product ids (got 1)"
        assert err["details"] == {"product_ids": ["give 2 to 8 distinct product ids (got 1)"]}
    for url in ("/api/compatibility/", "/api/complete-the-look/"):
        err = _error(api.post(url, {"product_ids": list(range(1, 1001))}, format="json"), 400)
        assert err["message"] == (
            "product_ids: give at most 8 distinct product ids (and at most 100 entries, repeats included)"
        )


def test_search_pages_are_consecutive_slices_of_one_ranking(trained_catalog, api):
    # the API's ranking (full-text and vector fused by RRF, one product per variant group); words naming no
    # type, colour or audience, so no filter is understood and the slice has 10 hits
    top10 = [h.product.pk for h in search.product_search(query="soft cotton", k=10).hits]
    assert len(top10) == 10
    p1 = api.get("/api/search/", {"q": "soft cotton", "k": 5}).json()
    p2 = api.get("/api/search/", {"q": "soft cotton", "k": 5, "page": 2}).json()
    assert [h["product"]["id"] for h in p1["results"]] == top10[:5]
    assert [h["product"]["id"] for h in p2["results"]] == top10[5:]
    assert p1["page"] == 1 and p1["k"] == 5 and p1["previous"] is None
    assert p1["next"].endswith("page=2") and "q=soft+cotton" in p1["next"]
    assert p2["previous"].endswith("page=1")
    pid = _ids(1)[0]
    s1 = api.get(f"/api/products/{pid}/similar/", {"k": 4, "page": 2}).json()
    assert [h["product"]["id"] for h in s1["results"]] == [
        h.product.pk for h in selectors.similar_items(product_id=pid, k=8)[4:]
    ]


def test_mmr_parameter_rediversifies_the_api_answer(trained_catalog, api):
    # mmr re-ranks the plain vector ranking (nothing understood, no fusion): its top stays, the rest spreads
    plain = selectors.text_search(query="dress", k=10)
    diverse = api.get("/api/search/", {"q": "dress", "k": 10, "mmr": 0.3}).json()["results"]
    assert plain[0].product.pk == diverse[0]["product"]["id"]
    assert [h.product.pk for h in plain] != [h["product"]["id"] for h in diverse]
    assert len({h["product"]["product_type"] for h in diverse}) > len({h.product.product_type for h in plain})
    pid = _ids(1)[0]
    r = api.get(f"/api/products/{pid}/similar/", {"k": 5, "mmr": 0.5, "slot": "bottom"})
    assert r.status_code == 200 and {h["product"]["slot"] for h in r.json()["results"]} == {"bottom"}


def test_photo_search_takes_k_and_filters(trained_catalog, api, hm_root):
    photo = next((hm_root / "images").glob("*/*.jpg")).read_bytes()
    r = api.post(
        "/api/search/photo/",
        {"image": io.BytesIO(photo), "k": 3, "slot": "shoes"},
        format="multipart",
        REMOTE_ADDR="10.9.0.1",
    )
    assert r.status_code == 200, r.content
    n_shoes = Product.objects.filter(slot="shoes").count()
    assert len(r.json()) == min(3, n_shoes) >= 2 and {h["product"]["slot"] for h in r.json()} == {"shoes"}


def test_photo_search_ranks_the_best_matchs_type_first(trained_catalog, api, hm_root):
    """A photo's nearest products drift to other kinds after the first few: by default the best match's
    product type comes first (each group by similarity); ``type_first=false`` ranks by similarity alone."""
    for path in sorted((hm_root / "images").glob("*/*.jpg"))[:80]:  # a photo whose neighbours mix kinds
        plain = selectors.photo_search(image=Image.open(path), k=12, type_first=False)
        kinds = [h.product.product_type for h in plain.hits]
        other = next((i for i, t in enumerate(kinds) if t != kinds[0]), len(kinds))
        if kinds[0] in kinds[other:]:  # another kind ranks before one of the best match's kind
            break
    else:
        pytest.fail("no photo among the first 80 whose nearest products put another kind before its own")
    typed = selectors.photo_search(image=Image.open(path), k=12)
    n_same = min(12, Product.objects.filter(product_type=kinds[0]).count())
    assert typed.product_type == kinds[0] and typed.hits[0].product.pk == plain.hits[0].product.pk
    assert [h.product.product_type for h in typed.hits[:n_same]] == [kinds[0]] * n_same
    assert plain.product_type is None and [h.product.product_type for h in plain.hits] != [
        h.product.product_type for h in typed.hits
    ]
    with CaptureQueriesContext(connection) as ctx:  # one match is in order already: one ranking query
        one = selectors.photo_search(image=Image.open(path), k=1)
    assert [h.product.pk for h in one.hits] == [plain.hits[0].product.pk] and one.product_type == kinds[0]
    assert sum("<#>" in q["sql"] for q in ctx.captured_queries) == 1

    def ids(**extra):
        r = api.post(
            "/api/search/photo/",
            {"image": io.BytesIO(path.read_bytes()), "k": 12, **extra},
            format="multipart",
            REMOTE_ADDR="10.9.0.2",
        )
        assert r.status_code == 200, r.content
        return [h["product"]["id"] for h in r.json()]

    assert ids() == [h.product.pk for h in typed.hits]
    assert ids(type_first="false") == [h.product.pk for h in plain.hits]

    def page(**extra):  # the page's form sends the ticked box as "on", an unticked one not at all
        body = {"image": io.BytesIO(path.read_bytes()), **extra}
        return api.post("/search/photo", body, format="multipart").content.decode()

    ticked, unticked = page(type_first="on"), page()
    note = f"Best match is of type <strong>{escape(kinds[0])}</strong>"
    assert note in ticked and 'name="type_first" checked' in ticked
    assert note not in unticked and 'name="type_first" checked' not in unticked


def test_the_photo_search_page_shows_one_product_per_variant_group(trained_catalog, api):
    """A photo's colour variants look alike: the page shows each variant group once, with "N colours"."""
    import re

    from django.db.models import Count

    groups = Product.objects.exclude(variant_group="").values("variant_group").annotate(n=Count("id"))
    for g in groups.filter(n__gte=2).order_by("-n", "variant_group")[:20]:
        raw = Product.objects.filter(variant_group=g["variant_group"]).order_by("pk").first().image.read()
        plain = selectors.photo_search(image=Image.open(io.BytesIO(raw)), k=24)
        listed = [h.product.variant_group for h in plain.hits if h.product.variant_group]
        if len(listed) > len(set(listed)):  # a variant group twice in the plain ranking
            break
    else:
        pytest.fail("no product among 20 variant groups whose photo's top 24 holds a group twice")
    grouped = selectors.photo_search(image=Image.open(io.BytesIO(raw)), k=24, group_variants=True)
    keys = [h.product.variant_group or h.product.pk for h in grouped.hits]
    assert len(keys) == len(set(keys)) == 24 and grouped.hits[0].product == plain.hits[0].product
    body = {"image": io.BytesIO(raw), "type_first": "on"}
    html = api.post("/search/photo", body, format="multipart").content.decode()
    assert [int(i) for i in re.findall(r'class="card-link" href="/products/(\d+)"', html)] == [
        h.product.pk for h in grouped.hits
    ]
    assert f'<p class="card-variants">{g["n"]} colours</p>' in html
    for extra, want in (({"group_variants": "true"}, grouped), ({}, plain)):  # the API: asked for, or not
        body = {"image": io.BytesIO(raw), "k": 24, **extra}
        r = api.post("/api/search/photo/", body, format="multipart", REMOTE_ADDR="10.9.0.3")
        assert [h["product"]["id"] for h in r.json()] == [h.product.pk for h in want.hits]


def test_hot_answers_come_from_the_cache_keyed_by_model_version(trained_catalog, api, settings):
    settings.RECOMMENDATION_CACHE_SECONDS = 60
    pid = _ids(3)[2]
    url = f"/api/products/{pid}/similar/"
    with CaptureQueriesContext(connection) as cold:
        first = api.get(url, {"k": 3, "colour": "black"}).json()
    with CaptureQueriesContext(connection) as warm:
        second = api.get(url, {"k": 3, "colour": "black"}).json()
    assert second == first
    assert len(warm) == 1 < len(cold)  # only the active-version lookup
    params = {"ids": _ids(2), "audience": "match", "memory": settings.LOOKS_MEMORY_PICKS}
    key = apis._cache_key(version=trained_catalog, name="compatibility", params=params)
    cache.set(key, {"sentinel": True}, 60)  # proves the API answers from this key
    assert api.post("/api/compatibility/", {"product_ids": _ids(2)}, format="json").json() == {
        "sentinel": True
    }
    other = ModelVersion.objects.create(
        name="other",
        config=trained_catalog.config,
        artifact_path=trained_catalog.artifact_path,
        status="ready",
    )
    ModelVersion.objects.filter(pk=trained_catalog.pk).update(is_active=False)
    ModelVersion.objects.filter(pk=other.pk).update(is_active=True)
    r = api.post("/api/compatibility/", {"product_ids": _ids(2)}, format="json")
    # another version is active: the cached answer of the old one is not served (it has no vectors yet)
    assert _error(r, 409)["code"] == "no_active_model"
    cache.delete(key)


def test_a_broken_cache_degrades_to_a_normal_answer(trained_catalog, api, settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:7039/0",  # nothing listens here
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    settings.RECOMMENDATION_CACHE_SECONDS = 60
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"search": "1/min"}}
    with pytest.raises(RedisConnectionError):  # the cache really is down
        cache.get("x")
    for _ in range(2):  # the throttle cannot count either: both answer, no 429, no 500
        r = api.get("/api/search/", {"q": "black trousers", "k": 3})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
    r = api.post("/api/complete-the-look/", {"product_ids": _ids(1), "k": 1}, format="json")
    assert r.status_code == 200


def _rates(settings, **rates) -> None:
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], **rates},
    }


def _fresh_ip() -> str:
    """A client address no earlier run used: throttle counts live in Redis for a minute, across runs."""
    import random

    return "10." + ".".join(str(random.randrange(1, 255)) for _ in range(3))


def test_search_is_throttled_with_a_json_429(trained_catalog, api, settings):
    _rates(settings, search="2/min")
    ip = _fresh_ip()
    for _ in range(2):
        assert api.get("/api/search/", {"q": "dress", "k": 2}, REMOTE_ADDR=ip).status_code == 200
    err = _error(api.get("/api/search/", {"q": "dress", "k": 2}, REMOTE_ADDR=ip), 429)
    assert err["code"] == "throttled"
    assert err["message"].startswith("Request was throttled. Expected available in ")
    assert 0 < err["details"]["retry_after_s"] <= 60
    assert api.get("/api/search/", {"q": "dress", "k": 2}, REMOTE_ADDR=_fresh_ip()).status_code == 200
    pid = _ids(1)[0]  # similar items and the catalog are not in the search scope
    assert api.get(f"/api/products/{pid}/similar/", REMOTE_ADDR=ip).status_code == 200


def test_a_made_up_x_forwarded_for_does_not_buy_a_fresh_allowance(trained_catalog, api, settings):
    _rates(settings, search="2/min")
    ip = _fresh_ip()
    for _ in range(2):
        assert api.get("/api/search/", {"q": "dress", "k": 2}, REMOTE_ADDR=ip).status_code == 200
    for forged in ("9.9.9.9", "9.9.9.10, 8.8.8.8"):  # NUM_PROXIES = 0: the header is not trusted
        r = api.get("/api/search/", {"q": "dress", "k": 2}, REMOTE_ADDR=ip, HTTP_X_FORWARDED_FOR=forged)
        assert r.status_code == 429, forged


def test_json_nested_too_deeply_is_a_400_not_a_500(trained_catalog, api):
    body = '{"product_ids": ' + "[" * 5000 + "1" + "]" * 5000 + "}"
    err = _error(api.post("/api/compatibility/", body, content_type="application/json"), 400)
    assert err["code"] == "parse_error" and "nested too deeply" in err["message"]


def test_photo_search_and_upload_are_throttled(trained_catalog, api, settings, hm_root):
    _rates(settings, photo_search="1/min", upload="1/min")
    ip = _fresh_ip()
    bad = {"image": io.BytesIO(b"%PDF-1.4 not an image")}
    assert api.post("/api/search/photo/", bad, format="multipart", REMOTE_ADDR=ip).status_code == 400
    bad = {"image": io.BytesIO(b"%PDF-1.4 not an image")}
    assert (
        _error(api.post("/api/search/photo/", bad, format="multipart", REMOTE_ADDR=ip), 429)["code"]
        == "throttled"
    )
    user = User.objects.create_user("merch-throttle", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    api.force_authenticate(user)
    buf = io.BytesIO()
    Image.new("RGB", (40, 60), "navy").save(buf, format="PNG")
    data = {"sku": "THR-1", "title": "T", "slot": "top", "image": io.BytesIO(buf.getvalue()[:50])}
    assert api.post("/api/products/", data, format="multipart", REMOTE_ADDR=ip).status_code == 400
    data = {"sku": "THR-2", "title": "T", "slot": "top", "image": io.BytesIO(buf.getvalue())}
    assert (
        _error(api.post("/api/products/", data, format="multipart", REMOTE_ADDR=ip), 429)["code"]
        == "throttled"
    )
    assert not Product.objects.filter(sku="THR-2").exists()
    assert api.get("/api/products/", REMOTE_ADDR=ip).status_code == 200  # listing is not an upload


def test_openapi_documents_the_serving_parameters(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    for path, expected in [
        (
            "/api/search/",
            {"q", "k", "page", "mmr", "slot", "product_type", "colour", "audience", "price_min", "price_max"},
        ),
        (
            "/api/products/{id}/similar/",
            {"k", "page", "mmr", "space", "exclude_variants", "slot", "price_max"},
        ),
    ]:
        get = schema["paths"][path]["get"]
        assert expected <= {p["name"] for p in get["parameters"]}
        assert {"200", "400"} <= set(get["responses"])
    assert "429" in schema["paths"]["/api/search/"]["get"]["responses"]
    assert "429" in schema["paths"]["/api/search/photo/"]["post"]["responses"]
    mmr = next(p for p in schema["paths"]["/api/search/"]["get"]["parameters"] if p["name"] == "mmr")
    assert "Carbonell" in mmr["description"]


def test_catalog_changes_retire_cached_answers(
    trained_catalog, api, settings, django_capture_on_commit_callbacks
):
    """An edited price, and vectors written for the served version, are never answered from the cache."""
    from decimal import Decimal

    import numpy as np

    from catalog.services import product_update
    from recommender.models import ProductEmbedding
    from recommender.services import embeddings_write

    settings.RECOMMENDATION_CACHE_SECONDS = 60
    pid = _ids(3)[2]
    url = f"/api/products/{pid}/similar/"
    first = api.get(url, {"k": 3, "exclude_variants": "false"}).json()["results"]
    top = Product.objects.get(pk=first[0]["product"]["id"])
    with django_capture_on_commit_callbacks(execute=True):
        assert product_update(product=top, data={"price": Decimal("123.45")}) == ["price"]
    again = api.get(url, {"k": 3, "exclude_variants": "false"}).json()["results"]
    assert again[0]["product"]["id"] == top.pk and again[0]["product"]["price"] == "123.45"

    # The product's own vector written again as another item's: that item becomes its nearest neighbour.
    other = next(p for p in _ids(40) if p not in {pid, *(h["product"]["id"] for h in again)})
    emb = ProductEmbedding.objects.get(model_version=trained_catalog, product_id=pid)
    vec = {c: np.asarray([getattr(emb, c)], dtype=np.float32) for c in ("image", "text", "fused", "compat")}
    with django_capture_on_commit_callbacks(execute=True):
        embeddings_write(version=trained_catalog, product_ids=[other], **vec)
    latest = api.get(url, {"k": 3, "exclude_variants": "false"}).json()["results"]
    assert latest[0]["product"]["id"] == other and latest[0]["score"] == pytest.approx(1.0, abs=1e-4)
