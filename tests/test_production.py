"""Production settings and the health endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "DJANGO_SETTINGS_MODULE": "recommender.settings", **env}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_with_production_settings():
    out = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="x" * 60 + "-production-secret-for-the-test",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no issues" in out.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    out = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "DJANGO_DEBUG": "false", "DJANGO_SETTINGS_MODULE": "recommender.settings"},
        timeout=120,
    )
    assert out.returncode != 0 and "DJANGO_SECRET_KEY" in out.stderr


@pytest.mark.django_db
def test_healthz_reports_database_redis_and_model(client):
    from recommender.models import ModelVersion

    ModelVersion.objects.filter(is_active=True).update(is_active=False)  # rolled back after the test
    r = client.get("/healthz")
    body = r.json()
    assert r.status_code == 200 and body["status"] == "degraded"
    assert body["checks"]["database"]["ok"] and body["checks"]["database"]["pgvector"].startswith("0.8")
    assert body["checks"]["redis"]["ok"] and body["checks"]["active_model"] == {"ok": False, "version": None}


@pytest.mark.django_db
def test_healthz_is_503_when_redis_is_down(client, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    r = client.get("/healthz")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable" and r.json()["checks"]["redis"]["ok"] is False


def test_uploaded_photos_are_served_with_debug_off(tmp_path):
    """Compose runs with DJANGO_DEBUG=false and SERVE_MEDIA on: product photos must still load."""
    (tmp_path / "products").mkdir()
    (tmp_path / "products" / "abc.jpg").write_bytes(b"\xff\xd8\xff fake jpeg body")
    code = (
        "import django; django.setup(); from django.test import Client; c = Client(); "
        "r = c.get('/media/products/abc.jpg', secure=True); print(r.status_code, b''.join(r.streaming_content)); "
        "print(c.get('/media/../settings.py', secure=True).status_code, "
        "c.get('/media/products/missing.jpg', secure=True).status_code)"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "recommender.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "x" * 60,
        "MEDIA_ROOT": str(tmp_path),
        "SERVE_MEDIA": "true",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "200 b'\\xff\\xd8\\xff fake jpeg body'",
        "400 404",
    ]  # a path outside MEDIA_ROOT is refused


SECRET = 'connection to server on socket "/tmp/pgsecret/.s.PGSQL.5432" failed'


@pytest.mark.django_db
def test_a_server_error_shows_the_friendly_page_without_internals(client, settings, monkeypatch):
    """DEBUG off: pages answer templates/500.html, the API its JSON error; neither carries the exception."""
    from django.db import OperationalError

    from recommender import search_views, selectors

    def broken(**kwargs):
        raise OperationalError(SECRET)

    settings.DEBUG = False
    client.raise_request_exception = False
    monkeypatch.setattr(selectors, "text_search", broken)  # the API's
    monkeypatch.setattr(selectors, "active_version", broken)  # the API's answer cache asks first
    monkeypatch.setattr(search_views, "product_search", broken)  # the page's (recommender/search_views.py)
    page = client.get("/search", {"q": "black dress"})
    assert page.status_code == 500 and b"Something went wrong" in page.content
    assert b"pgsecret" not in page.content and b"Traceback" not in page.content
    api = client.get("/api/search/", {"q": "black dress"})
    assert api.status_code == 500 and api.json()["error"]["code"] == "server_error"
    assert "pgsecret" not in api.content.decode()


@pytest.mark.django_db
def test_healthz_does_not_show_where_the_database_is(client, monkeypatch):
    from django.db import OperationalError, connection

    def down():
        raise OperationalError(SECRET)

    monkeypatch.setattr(connection, "cursor", down)
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["checks"]["database"] == {
        "ok": False,
        "error": "OperationalError",
        "ms": r.json()["checks"]["database"]["ms"],
    }
    assert "pgsecret" not in r.content.decode() and "socket" not in r.content.decode()


@pytest.mark.django_db
def test_a_process_never_holds_more_connections_than_its_pool(settings):
    """Twice as many threads as ``DB_POOL_MAX_SIZE`` query at once: all answer, and PostgreSQL never sees
    more than DB_POOL_MAX_SIZE connections from this process (with ``DB_POOL_MAX_SIZE=0``, one per thread)."""
    import threading

    import psycopg
    from django.db import connection

    from recommender.runtime import database_url

    bound = settings.DB_POOL_MAX_SIZE or 4  # DB_POOL_MAX_SIZE=0 (no pool) must fail below
    n_threads = 2 * bound
    errors: list[BaseException] = []
    peak = 0

    def query() -> None:
        try:
            with connection.cursor() as cur:
                cur.execute("SELECT pg_sleep(0.4)")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()  # back to the pool

    with psycopg.connect(database_url(connection.settings_dict), autocommit=True) as probe:
        count = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        threads = [threading.Thread(target=query) for _ in range(n_threads)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, probe.execute(count).fetchone()[0])
        for t in threads:
            t.join()
    assert not errors, errors[:2]
    assert 1 < peak <= bound, f"{peak} connections from {n_threads} threads, pool bound {bound}"


@pytest.mark.parametrize(
    ("addr", "debug", "expect"),
    [
        ("127.0.0.1:8000", False, "false"),
        ("127.0.0.1:8000", True, "true"),
        ("[::1]:8000", True, "true"),
        ("0.0.0.0:8080", False, "false"),
        ("0.0.0.0:8080", True, ValueError),
        ("192.168.1.7:8080", True, ValueError),
        ("8000", False, ValueError),
    ],
)
def test_the_demo_serves_with_debug_off_unless_asked_on_loopback(tmp_path, monkeypatch, addr, debug, expect):
    from recommender.runtime import web_env

    monkeypatch.delenv("DJANGO_SECRET_KEY", raising=False)
    if expect is ValueError:
        with pytest.raises(ValueError, match="--debug|host:port"):
            web_env(addr=addr, var_dir=tmp_path, debug=debug)
        return
    env = web_env(addr=addr, var_dir=tmp_path, debug=debug)
    assert env["DJANGO_DEBUG"] == expect
    if not debug:
        assert env["DJANGO_SECRET_KEY"] == (tmp_path / "secret_key").read_text().strip()
        assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
        assert env["DJANGO_SECURE_SSL_REDIRECT"] == "false"
