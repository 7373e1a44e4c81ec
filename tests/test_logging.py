"""Structured logs: one line per request (id, method, path, status, duration) and LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _request_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "recommender.requests"]


def test_each_request_logs_id_method_path_status_and_duration(client, caplog):
    caplog.set_level(logging.INFO, logger="recommender.requests")
    r = client.get("/api/no-such-endpoint/", HTTP_X_REQUEST_ID="abc-123")
    assert r.status_code == 404 and r["X-Request-ID"] == "abc-123"
    (rec,) = _request_records(caplog)
    assert (rec.request_id, rec.method, rec.path, rec.status) == (
        "abc-123",
        "GET",
        "/api/no-such-endpoint/",
        404,
    )
    assert rec.levelno == logging.WARNING and rec.duration_ms >= 0 and rec.user_id is None
    assert rec.getMessage().startswith("GET /api/no-such-endpoint/ 404 ")


def test_unsafe_incoming_request_id_is_replaced(client, caplog):
    caplog.set_level(logging.INFO, logger="recommender.requests")
    r = client.get("/api/no-such-endpoint/", HTTP_X_REQUEST_ID='evil" id\nwith newline')
    rid = r["X-Request-ID"]
    assert len(rid) == 32 and int(rid, 16) >= 0  # a fresh uuid4 hex
    assert _request_records(caplog)[0].request_id == rid


_SCRIPT = """
import django, logging
django.setup()
from django.test import Client
c = Client()
assert c.get("/api/schema/", HTTP_X_REQUEST_ID="req-json-1").status_code == 200
assert c.get("/api/nope/").status_code == 404
logging.getLogger("recommender.demo").info("outside a request")
"""


@pytest.mark.slow
def test_log_format_json_writes_one_json_object_per_line():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "recommender.settings",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    requests = [x for x in lines if x["logger"] == "recommender.requests"]
    assert [(x["method"], x["path"], x["status"], x["level"]) for x in requests] == [
        ("GET", "/api/schema/", 200, "INFO"),
        ("GET", "/api/nope/", 404, "WARNING"),
    ]
    assert requests[0]["request_id"] == "req-json-1" and len(requests[1]["request_id"]) == 32
    assert all(isinstance(x["duration_ms"], float) and x["time"].endswith("+00:00") for x in requests)
    other = next(x for x in lines if x["logger"] == "recommender.demo")
    assert other == {**other, "message": "outside a request", "request_id": "-", "level": "INFO"}


def test_unknown_log_format_is_refused():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "recommender.settings", "LOG_FORMAT": "xml"}
    out = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0 and "LOG_FORMAT must be 'plain' or 'json', not 'xml'" in out.stderr


def test_worker_logs_printed_output_as_info_not_warning():
    from recommender.celery import app

    assert app.conf.worker_redirect_stdouts_level == "INFO"  # a tqdm bar in a task is not a warning
