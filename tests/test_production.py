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
