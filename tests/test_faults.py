"""Fault tolerance and backups on a PRIVATE embedded PostgreSQL holding the real schema, vectors and an
active model: the session's trained slice, backed up with ``recommender.backup`` and restored into a
fresh cluster by ``manage.py restore`` (as ``make backup`` / ``make restore`` do).

1. The restored cluster answers the same similar-items query as the original, with the model's
   artifacts relinked to the new ``ML_ARTIFACTS_DIR``.
2. ``pg_ctl restart -m fast`` while shoppers query gunicorn (similar items, complete-the-look, search):
   every request sent after the restart succeeds in the same gunicorn process, and so does the next
   Celery task. Then a restart while gunicorn is idle: its pooled connections were cut unused, and the
   pool's check (``CONN_HEALTH_CHECKS`` → psycopg_pool's ``check``) replaces them before the next
   requests; a second gunicorn with ``DB_CONN_HEALTH_CHECKS=false`` answers 500 instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from recommender import runtime
from recommender.celery import app
from tests.private_pg import PrivatePostgres
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
PORT = int(os.environ.get("TEST_FAULTS_PORT", "7041"))  # health-checked pool; PORT + 1 without the check
QUEUE = "faults"  # a queue of its own, so no other test's task reaches this worker


@pytest.fixture(scope="module")
def source(trained_catalog, django_db_blocker, hm_root, tmp_path_factory) -> dict:
    """A backup of the test database (the session's trained slice, rebuilt if a transactional test
    flushed it) and answers to compare with."""
    from catalog.models import Product
    from recommender import selectors
    from recommender.backup import backup_create
    from tests.conftest import active_trained_slice

    with django_db_blocker.unblock():
        active = active_trained_slice(hm_root)
        out = tmp_path_factory.mktemp("backup") / "b"
        backup_create(out=out)
        embedded = Product.objects.filter(embeddings__model_version=active).order_by("pk")
        probe = embedded.first().pk
        return {
            "folder": out,
            "probe": probe,
            "similar": [h.product.pk for h in selectors.similar_items(product_id=probe, k=8)],
            "top": embedded.filter(slot="top").first().pk,
            "bottom": embedded.filter(slot="bottom").first().pk,
            "count": Product.objects.count(),
        }


def _env(pg: PrivatePostgres, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": pg.url,
        "DJANGO_SETTINGS_MODULE": "recommender.settings.test",
        "VAR_DIR": str(pg.folder / "var"),  # artifacts restored here (test settings: var/test-models)
        **extra,
    }


@pytest.fixture(scope="module")
def private_pg(source) -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres("faults")
    try:
        out = subprocess.run(
            [sys.executable, "manage.py", "restore", str(source["folder"])],
            cwd=ROOT,
            env=_env(pg),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout + out.stderr[-3000:]
        yield pg
    finally:
        pg.close()


def _call(port: int, path: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _serve(pg: PrivatePostgres, port: int, name: str, **extra: str) -> Iterator[subprocess.Popen]:
    log = settings.VAR_DIR / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = _env(
        pg,
        WEB_CONCURRENCY="1",
        DB_APPLICATION_NAME=name,
        RECOMMENDATION_CACHE_SECONDS="0",  # every request queries PostgreSQL
        THROTTLE_RATE_SEARCH="100000/min",
        **extra,
    )
    proc = runtime.start_web(addr=f"127.0.0.1:{port}", env=env, logfile=log)
    try:
        runtime.wait_for_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=180)
        yield proc
    finally:
        runtime.stop_worker(proc, timeout=30)


@pytest.fixture(scope="module")
def web(private_pg) -> Iterator[subprocess.Popen]:
    yield from _serve(private_pg, PORT, "faults-web")


@pytest.fixture(scope="module")
def web_unchecked(private_pg) -> Iterator[subprocess.Popen]:
    yield from _serve(private_pg, PORT + 1, "faults-web-unchecked", DB_CONN_HEALTH_CHECKS="false")


@pytest.fixture(scope="module")
def worker(private_pg) -> Iterator[subprocess.Popen]:
    runtime.ensure_redis(settings.CELERY_BROKER_URL, settings.VAR_DIR)
    log = settings.VAR_DIR / "logs" / "faults-worker.log"
    log.write_bytes(b"")
    proc = runtime.start_worker(
        queues=QUEUE,
        concurrency=1,
        env=_env(private_pg, LOG_FORMAT="json"),
        logfile=log,
        name=f"faults-{os.getpid()}",
    )
    try:
        assert runtime.wait_for_worker(app, timeout=120), log.read_text()[-3000:]
        yield proc
    finally:
        runtime.stop_worker(proc)


def _task() -> dict:
    """``recommender.tasks.embed_missing`` on the private database (every product has its vectors)."""
    from recommender.tasks import embed_missing

    return embed_missing.apply_async(queue=QUEUE, ignore_result=False).get(timeout=120)


def _requests(source: dict) -> list[tuple[str, str, dict | None]]:
    """Similar items, complete-the-look and search: each runs a pgvector query against the active model."""
    return [
        ("similar", f"/api/products/{source['probe']}/similar/?k=8", None),
        ("complete", "/api/complete-the-look/", {"product_ids": [source["top"], source["bottom"]], "k": 4}),
        ("search", "/api/search/?q=black+denim+jacket&k=8", None),
    ]


def _gunicorn_workers(proc: subprocess.Popen) -> set[int]:
    return {int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()}


def test_a_restored_backup_answers_the_same_similar_items(source, private_pg, web):
    status, body = _call(PORT, f"/api/products/{source['probe']}/similar/?k=8")
    assert status == 200, body[:500]
    assert [h["product"]["id"] for h in json.loads(body)["results"]] == source["similar"]
    status, body = _call(PORT, "/api/products/?page_size=1")
    assert status == 200 and json.loads(body)["count"] == source["count"]
    # the model's heads were copied and the registry points at the copies
    [(path,)] = private_pg.query("SELECT artifact_path FROM recommender_modelversion WHERE is_active")
    assert path.startswith(str(private_pg.folder / "var" / "test-models") + "/"), path
    assert Path(path).is_file()


def test_a_postgres_restart_under_load_costs_no_request_after_it(
    source, private_pg, web, web_unchecked, worker
):
    calls = _requests(source)
    for port in (PORT, PORT + 1):
        for _, path, body in calls:
            status, answer = _call(port, path, body)
            assert status == 200, (port, path, answer[:300])
    assert _task()["queued"] == 0
    workers_before = _gunicorn_workers(web)

    answers: list[tuple[float, str, int]] = []  # (sent at, kind, status)
    stop = threading.Event()

    def shopper(offset: int) -> None:
        i = offset
        while not stop.is_set():
            kind, path, body = calls[i % len(calls)]
            sent = time.monotonic()
            try:
                status = _call(PORT, path, body)[0]
            except OSError:
                status = 0
            answers.append((sent, kind, status))
            i += 1

    shoppers = [threading.Thread(target=shopper, args=(k,)) for k in range(4)]
    for t in shoppers:
        t.start()
    time.sleep(2)
    private_pg.pg_ctl("-m", "fast", "restart")  # terminates every backend
    restarted = time.monotonic()
    time.sleep(4)
    stop.set()
    for t in shoppers:
        t.join()

    after = [(kind, status) for sent, kind, status in answers if sent > restarted]
    assert {kind for kind, _ in after} == {"similar", "complete", "search"}, after
    assert [a for a in after if a[1] != 200] == [], f"answers sent after the restart: {after}"
    assert web.poll() is None and _gunicorn_workers(web) == workers_before  # the same processes
    assert private_pg.backend_count("faults-web") <= settings.DB_POOL_MAX_SIZE

    # Under load the cut connections were busy: their requests failed inside the restart and the pool
    # dropped them. Idle connections are the pool's check's work: restart again with both servers idle.
    private_pg.pg_ctl("-m", "fast", "restart")
    assert [_call(PORT, path, body)[0] for _, path, body in calls] == [200, 200, 200]
    # without the check the pool hands out a connection the restart cut: the next request is a 500
    unchecked = [_call(PORT + 1, path, body)[0] for _, path, body in calls * 2]
    assert 500 in unchecked, unchecked
    assert unchecked[-1] == 200  # the broken connections were dropped on their way back to the pool

    status, body = _call(PORT, "/healthz")
    assert status == 200 and b'"database": {"ok": true' in body, body[:500]
    assert _task()["queued"] == 0
    assert worker.poll() is None

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
