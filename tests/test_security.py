"""Security model: shoppers read anonymously; every write needs a merchandiser (``catalog.add_product``).

The write endpoints are enumerated from the OpenAPI schema and the URLconf, not listed by hand, so a new
endpoint is covered the day it is added: it must either refuse anonymous and plain users, or be one of
the few read-only queries sent as POST (:data:`PUBLIC_QUERY_POSTS`).
"""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from catalog.models import Product
from recommender.models import TrainingRun

pytestmark = pytest.mark.django_db

WRITE_METHODS = ("post", "put", "patch", "delete")
#: POST endpoints that only read (a query too large or binary for a URL); anyone may call them.
PUBLIC_QUERY_POSTS = {"/api/search/photo/", "/api/complete-the-look/", "/api/compatibility/"}
#: Pages that accept an anonymous POST because it only reads (search by an uploaded photo).
PUBLIC_QUERY_PAGES = {"photo-search"}
#: Sign-in and sign-out take anonymous POSTs by design (Django's LoginView / LogoutView).
AUTH_PAGES = {"login": 200, "logout": 302}


def _schema_paths() -> dict[str, dict]:
    return SchemaGenerator().get_schema(request=None, public=True)["paths"]


def _concrete(path: str) -> str:
    return re.sub(r"\{\w+\}", "999999", path)  # an id no test creates


def _write_operations() -> list[tuple[str, str]]:
    ops = [(p, m) for p, item in _schema_paths().items() for m in item if m in WRITE_METHODS]
    return [(p, m) for p, m in ops if p not in PUBLIC_QUERY_POSTS]


def _user(name: str, *, merchandiser: bool) -> User:
    user = User.objects.create_user(name, password="pw")
    if merchandiser:
        user.user_permissions.add(Permission.objects.get(codename="add_product"))
    return user


def _api_urlconf_paths() -> set[str]:
    """Every API route in the URLconf, as the schema writes it (``/api/products/{id}/similar/``)."""
    (api,) = [
        p for p in get_resolver().url_patterns if isinstance(p, URLResolver) and str(p.pattern) == "api/"
    ]
    out = set()
    for p in api.url_patterns:
        route = str(p.pattern)
        if route.startswith("^") or route == "docs/":
            continue  # the JSON 404 catch-all and the Swagger UI page (GET only)
        out.add("/api/" + re.sub(r"<int:(\w+)>", lambda m: "{id}" if m[1] == "pk" else f"{{{m[1]}}}", route))
    return out


def test_the_schema_lists_every_api_route_and_the_public_posts_are_queries():
    paths = _schema_paths()
    assert _api_urlconf_paths() == set(paths), "an API route is missing from the OpenAPI schema"
    ops = _write_operations()
    assert (
        len(ops) >= 5
        and ("/api/products/", "post") in ops
        and ("/api/model-versions/rollback/", "post") in ops
    )
    for p in PUBLIC_QUERY_POSTS:  # each is a POST that the schema documents; nothing else is public
        assert "post" in paths[p]
    from recommender.urls import api

    public = {
        "/api/" + str(u.pattern)
        for u in api
        if getattr(getattr(u.callback, "view_class", None), "public_post", False)
    }
    assert public == PUBLIC_QUERY_POSTS


def test_anonymous_cannot_write_through_any_api_endpoint():
    api = APIClient()
    for path, method in _write_operations():
        r = getattr(api, method)(_concrete(path), {}, format="json")
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.json()["error"]["code"] == "not_authenticated" and r["WWW-Authenticate"].startswith("Basic")


def test_methods_the_schema_does_not_list_are_never_accepted():
    api = APIClient()
    api.force_authenticate(_user("merch-methods", merchandiser=True))
    for path, item in _schema_paths().items():
        for method in WRITE_METHODS:
            if method not in item:
                r = getattr(api, method)(_concrete(path), {}, format="json")
                assert r.status_code == 405, (method, path, r.status_code)


def test_a_user_without_the_merchandiser_permission_gets_403_everywhere():
    api = APIClient()
    api.force_authenticate(_user("shopper-sec", merchandiser=False))
    for path, method in _write_operations():
        r = getattr(api, method)(_concrete(path), {}, format="json")
        assert r.status_code == 403, (method, path, r.status_code)
        assert r.json()["error"] == {
            "code": "permission_denied",
            "details": {},
            "message": "this action needs a logged-in merchandiser",
        }
    assert TrainingRun.objects.filter(started_by__username="shopper-sec").count() == 0


def test_a_merchandiser_passes_the_permission_check_everywhere():
    api = APIClient()
    api.force_authenticate(_user("merch-sec", merchandiser=True))
    seen = {}
    for path, method in _write_operations():
        r = getattr(api, method)(_concrete(path), {}, format="json")
        seen[(path, method)] = r.status_code
        assert r.status_code not in (401, 403) and r.status_code < 500, (
            method,
            path,
            r.status_code,
            r.content,
        )
    # the bodies are empty and id 999999 does not exist: the answers are the endpoints' own validation
    assert seen[("/api/products/", "post")] == 415  # multipart only
    assert seen[("/api/training-runs/", "post")] in (202, 400)  # started, or one already runs
    assert seen[("/api/model-versions/{id}/activate/", "post")] == 404


def test_public_query_posts_answer_anonymous_callers():
    api = APIClient()
    for path in PUBLIC_QUERY_POSTS:
        r = api.post(path, {}, format="multipart" if "photo" in path else "json")
        assert r.status_code == 400, (path, r.status_code)  # validation, not a login prompt


def test_api_token_from_drf_create_token_authenticates_writes(capsys):
    merch = _user("merch-token", merchandiser=True)
    call_command("drf_create_token", "merch-token")
    key = Token.objects.get(user=merch).key
    assert f"Generated token {key} for user merch-token" in capsys.readouterr().out
    api = APIClient()  # no session, no CSRF token: the Authorization header alone
    r = api.post("/api/model-versions/999999/activate/", HTTP_AUTHORIZATION=f"Token {key}")
    assert r.status_code == 404 and r.json()["error"]["message"] == "no model version 999999"
    r = api.post("/api/model-versions/999999/activate/", HTTP_AUTHORIZATION="Token not-a-real-token")
    assert r.status_code == 401 and r.json()["error"]["message"] == "Invalid token."
    _user("shopper-token", merchandiser=False)
    call_command("drf_create_token", "shopper-token")
    plain = Token.objects.get(user__username="shopper-token").key
    r = api.post("/api/model-versions/999999/activate/", HTTP_AUTHORIZATION=f"Token {plain}")
    assert r.status_code == 403


def test_api_session_writes_need_the_csrf_token():
    _user("merch-csrf-api", merchandiser=True)
    c = Client(enforce_csrf_checks=True)
    c.login(username="merch-csrf-api", password="pw")
    r = c.post("/api/model-versions/999999/activate/")
    assert r.status_code == 403
    assert r.json()["error"]["message"] == "CSRF Failed: CSRF cookie not set."
    c.get("/models")  # sets the CSRF cookie
    token = c.cookies["csrftoken"].value
    r = c.post("/api/model-versions/999999/activate/", HTTP_X_CSRFTOKEN=token)
    assert r.status_code == 404


# --- pages ---------------------------------------------------------------------------------------------


def _page_patterns() -> list[URLPattern]:
    from recommender import page_urls

    return [p for p in page_urls.urlpatterns if isinstance(p, URLPattern)]


def _page_url(p: URLPattern) -> str:
    return "/" + re.sub(r"<int:\w+>", "1", str(p.pattern))


def test_every_page_either_refuses_posts_or_needs_a_merchandiser(client):
    protected = []
    for p in _page_patterns():
        r = client.post(_page_url(p), {})
        if p.name in PUBLIC_QUERY_PAGES:
            assert r.status_code == 200, p.name
        elif p.name in AUTH_PAGES:
            assert r.status_code == AUTH_PAGES[p.name], (p.name, r.status_code)
        elif r.status_code == 302:
            assert r["Location"].startswith("/accounts/login/?next="), (p.name, r["Location"])
            protected.append(p.name)
        else:
            assert r.status_code == 405, f"page {p.name} accepts an anonymous POST ({r.status_code})"
    assert sorted(protected) == sorted(
        [
            "training-start",
            "model-activate",
            "model-rollback",
            "product-upload",
            "product-edit",
            "product-delete",
            "outfit-list",
            "outfit-save",
            "outfit-delete",
            "import",
            "import-columns",
            "import-example",
            "import-job",
            "import-report",
        ]
    )
    _user("shopper-pages", merchandiser=False)
    client.login(username="shopper-pages", password="pw")
    for p in _page_patterns():
        if p.name in protected:
            assert client.post(_page_url(p), {}).status_code == 403, p.name
            assert client.get(_page_url(p)).status_code == 403, p.name
    assert TrainingRun.objects.filter(started_by__username="shopper-pages").count() == 0
    _user("merch-pages", merchandiser=True)
    client.login(username="merch-pages", password="pw")
    assert client.get("/manage/upload").status_code == 200
    r = client.post("/models/train", {"epochs": "1"})  # started, or refused because one already runs
    assert r.status_code == 302 and r["Location"].startswith("/models")


def test_a_merchandiser_signs_in_without_staff_status_and_never_leaves_the_site(client):
    _user("merch-signin", merchandiser=True)  # not staff: the admin would refuse this user
    page = client.get("/search", {"q": "red dress"}).content.decode()
    assert 'href="/accounts/login/?next=/search%3Fq%3Dred%2Bdress"' in page  # back to the same search
    r = client.post(
        "/accounts/login/", {"username": "merch-signin", "password": "wrong", "next": "/manage/upload"}
    )
    assert r.status_code == 200 and b"Please enter a correct username and password" in r.content
    assert "_auth_user_id" not in client.session
    r = client.post(
        "/accounts/login/", {"username": "merch-signin", "password": "pw", "next": "https://evil.example/"}
    )
    assert r.status_code == 302 and r["Location"] == "/"  # an off-site next is ignored
    r = client.get("/manage/upload")
    assert r.status_code == 200 and b"Sign out (merch-signin)" in r.content
    assert b'href="/admin/"' not in r.content  # no admin link for a user the admin would refuse
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/manage/upload")["Location"] == "/accounts/login/?next=/manage/upload"


def test_admin_writes_need_a_staff_login(client):
    r = client.post("/admin/catalog/product/add/", {"sku": "ADM-1"})
    assert r.status_code == 302 and r["Location"].startswith("/admin/login/")
    user = _user("staff-no-perms", merchandiser=False)
    user.is_staff = True
    user.save()
    client.login(username="staff-no-perms", password="pw")
    assert client.post("/admin/catalog/product/add/", {"sku": "ADM-1"}).status_code == 403
    assert not Product.objects.filter(sku="ADM-1").exists()


def _png(colour: str = "navy") -> io.BytesIO:
    buf = io.BytesIO()
    Image.new("RGB", (40, 60), colour).save(buf, format="PNG")
    buf.seek(0)
    buf.name = "p.png"
    return buf


def test_page_posts_need_the_csrf_token(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    _user("merch-csrf", merchandiser=True)
    c = Client(enforce_csrf_checks=True)
    c.login(username="merch-csrf", password="pw")
    before = TrainingRun.objects.count()
    for url, data in [
        ("/manage/upload", {"sku": "CSRF-1", "title": "T", "slot": "top", "image": _png()}),
        ("/models/train", {"epochs": "1"}),
        ("/search/photo", {"image": _png()}),
    ]:
        r = c.post(url, data)
        assert r.status_code == 403 and b"CSRF verification failed" in r.content, url
    assert TrainingRun.objects.count() == before and not Product.objects.filter(sku="CSRF-1").exists()
    page = c.get("/manage/upload")
    assert page.status_code == 200 and b'name="csrfmiddlewaretoken"' in page.content
    token = c.cookies["csrftoken"].value
    r = c.post(
        "/manage/upload",
        {"sku": "TOKEN-1", "title": "T", "slot": "top", "image": _png("white"), "csrfmiddlewaretoken": token},
    )
    assert r.status_code == 302 and Product.objects.filter(sku="TOKEN-1").exists()  # with the token: created


def test_password_guessing_locks_the_user_name_out_on_the_page_and_the_api(client, settings):
    import base64
    import uuid

    settings.LOGIN_MAX_FAILURES = 3
    name = f"merch-guess-{uuid.uuid4().hex[:8]}"  # counts live in Redis for LOGIN_LOCKOUT_S, across runs
    _user(name, merchandiser=True)
    for _ in range(3):
        r = client.post("/accounts/login/", {"username": name, "password": "wrong"})
        assert r.status_code == 200 and b"Please enter a correct username and password" in r.content
    r = client.post("/accounts/login/", {"username": name, "password": "pw"})  # the right one, too late
    assert (
        r.status_code == 200
        and b"Too many failed sign-ins for this user name; try again in 15 minutes" in r.content
    )
    assert "_auth_user_id" not in client.session
    basic = "Basic " + base64.b64encode(f"{name}:pw".encode()).decode()
    r = client.get("/api/model-versions/", HTTP_AUTHORIZATION=basic)
    assert r.status_code == 401 and r.json()["error"]["message"].startswith("Too many failed sign-ins")
    other = f"merch-other-{uuid.uuid4().hex[:8]}"  # another user name from the same address is not affected
    _user(other, merchandiser=True)
    assert client.post("/accounts/login/", {"username": other, "password": "pw"}).status_code == 302
