"""The Celery pipeline under faults, with real worker processes, Redis and the real PostgreSQL + pgvector.

A worker SIGKILLed during training or embedding, a message delivered twice, an upload while Redis is
down, activation during a re-embed. The tests commit to the test database (a worker process cannot
see a test transaction), so a module fixture puts the session's trained slice back if a transactional
test flushed it, and removes what these tests created.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.db import connection, transaction
from django.db.models import Count
from django.test import override_settings
from django.utils import timezone
from PIL import Image
from rest_framework.test import APIClient

from catalog.models import Product
from ml.data import read_articles
from recommender import runtime, selectors
from recommender.celery import app
from recommender.models import ModelVersion, ProductEmbedding, TrainingRun
from recommender.services import (
    VersionNotReady,
    model_version_activate,
    model_version_create,
    training_run_start,
)
from tests.conftest import activate_if_gated
from tests.uploads import api_upload
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PRIVATE_REDIS_PORT = int(os.environ.get("TEST_PRIVATE_REDIS_PORT", "7020"))
_names = itertools.count()
TERMINAL = {TrainingRun.Status.SUCCEEDED, TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED}


def _wait(predicate, timeout: float, what: str, every: float = 0.2):
    return wait_for(predicate, timeout, what, every)


@pytest.fixture(scope="module")
def db_access(django_db_setup, django_db_blocker):
    """Committed database access for the whole module (workers must see the rows)."""
    with django_db_blocker.unblock():
        yield


@pytest.fixture(scope="module")
def catalog(trained_catalog, db_access, hm_root):
    """The session's trained slice, active; rebuilt when a transactional test flushed it. Cleans up after."""
    from tests.conftest import active_trained_slice

    active = active_trained_slice(hm_root)
    marks = {
        m: (m.objects.order_by("-pk").values_list("pk", flat=True).first() or 0)
        for m in (Product, ModelVersion, TrainingRun)
    }
    yield active
    TrainingRun.objects.filter(pk__gt=marks[TrainingRun]).delete()
    model_version_activate(version=ModelVersion.objects.get(pk=active.pk))
    ModelVersion.objects.filter(pk__gt=marks[ModelVersion]).delete()
    for p in Product.objects.filter(pk__gt=marks[Product]):
        p.image.delete(save=False)
        p.thumbnail.delete(save=False)
        p.delete()


@pytest.fixture(autouse=True)
def catalog_serves_after_each_test(request):
    """A test that activates another version and then fails would leave it serving for the rest of the
    module (``catalog`` is module-scoped): every later reconciliation then embeds for that version."""
    yield
    if "catalog" in request.fixturenames:
        version = request.getfixturevalue("catalog")
        if not ModelVersion.objects.filter(pk=version.pk, is_active=True).exists():
            model_version_activate(version=ModelVersion.objects.get(pk=version.pk))


@contextmanager
def worker(*, broker: str | None = None, **env: str):
    """A real ``celery worker`` process (queues embedding + training) on the test database; yields
    ``(proc, log path)``. ``broker`` points it at another Redis; ``env`` adds settings."""
    name = f"pipe{os.getpid()}-{next(_names)}"
    log = settings.VAR_DIR / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    extra = {
        "DATABASE_URL": runtime.database_url(connection.settings_dict),
        "DJANGO_SETTINGS_MODULE": "recommender.settings.test",
        **env,
    }
    if broker:
        extra["TEST_REDIS_URL"] = broker
    proc = runtime.start_worker(queues="embedding,training", concurrency=1, logfile=log, name=name, env=extra)
    try:
        _wait(
            lambda: proc.poll() is not None or " ready." in log.read_text(errors="replace"),
            120,
            "the worker to be ready",
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        yield proc, log
    finally:
        runtime.stop_worker(proc)


@contextmanager
def celery_broker(url: str):
    """Point this process's Celery app (and ``/healthz``) at another Redis for the duration."""
    old = app.conf.broker_url
    app.conf.broker_url = url
    app._after_fork()  # drop the pooled connections to the old broker
    try:
        with override_settings(CELERY_BROKER_URL=url):
            yield
    finally:
        app.conf.broker_url = old
        app._after_fork()


def _vector_rows(version: ModelVersion) -> dict[int, int]:
    """product id → number of vector rows of ``version`` (every value should be 1)."""
    rows = ProductEmbedding.objects.filter(model_version=version).values("product_id").annotate(n=Count("pk"))
    return {r["product_id"]: r["n"] for r in rows}


def _zero_shot_version(name: str, tmp: Path) -> ModelVersion:
    """A registered, not yet embedded version whose (untrained) heads rank items differently."""
    from ml.heads import save_heads, zero_shot_heads
    from recommender.ml_bridge import model_config

    mcfg = model_config()
    v = model_version_create(name=name, config={"model": mcfg.to_dict()})
    path = tmp / f"version-{v.pk}" / "heads.pt"
    save_heads(path, zero_shot_heads(mcfg.embed_dim, settings.COMPAT_DIM, seed=3), {})
    ModelVersion.objects.filter(pk=v.pk).update(artifact_path=str(path))
    v.refresh_from_db()
    return v


def _merchandiser() -> APIClient:
    user, _ = User.objects.get_or_create(username="merch-pipeline")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    api = APIClient()
    api.force_authenticate(user)
    return api


def _new_article(hm_root: Path, slot: str, skip: int = 0):
    articles, _ = read_articles(hm_root)
    known = set(Product.objects.values_list("sku", flat=True)) | {
        s.removeprefix("UPLOAD-")
        for s in Product.objects.filter(sku__startswith="UPLOAD-").values_list("sku", flat=True)
    }
    fresh = [a for a in articles if a.article_id not in known and a.slot == slot]
    return fresh[skip]


def _similar_ids(pid: int) -> list[int]:
    return [h.product.pk for h in selectors.similar_items(product_id=pid, k=8)]


@pytest.mark.django_db  # also makes pytest-django create the test database when this file runs alone
def test_beat_schedule_routes_and_task_options():
    from django.db import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from recommender import tasks

    beat = app.conf.beat_schedule
    assert beat["reconcile"] == {
        "task": "recommender.tasks.reconcile",
        "schedule": settings.ML_RECONCILE_EVERY_S,
    }
    assert beat["prune-model-versions"]["task"] == "recommender.tasks.prune_model_versions"
    assert beat["retrain-if-changed"]["task"] == "recommender.tasks.retrain_if_changed"
    assert "retrain-on-schedule" not in beat  # off unless ML_RETRAIN_CRONTAB is set
    assert {e["task"] for e in beat.values()} <= set(app.tasks)  # every scheduled task exists
    route = app.amqp.router.route
    assert route({}, "recommender.tasks.train_model")["queue"].name == "training"
    for name in (
        "recommender.tasks.embed_products",
        "recommender.tasks.embed_missing",
        "recommender.tasks.reconcile",
        "recommender.tasks.prune_model_versions",
    ):
        assert route({}, name)["queue"].name == "embedding", name
    train = tasks.train_model
    assert (train.acks_late, train.reject_on_worker_lost) == (True, False)
    assert train.time_limit == settings.ML_TRAIN_TIME_LIMIT_S and train.soft_time_limit < train.time_limit
    embed = tasks.embed_products
    assert embed.acks_late and embed.reject_on_worker_lost and embed.retry_backoff and embed.max_retries == 6
    assert embed.soft_time_limit < embed.time_limit == settings.ML_EMBED_TIME_LIMIT_S
    assert {OperationalError, RedisConnectionError} <= set(embed.autoretry_for)
    # a reserved message comes back after the visibility timeout: above the embedding limit and the longest
    # retry countdown (so neither a running embedding nor a retry waiting its turn is handed out twice)
    visibility = app.conf.broker_transport_options["visibility_timeout"]
    assert embed.time_limit < visibility < train.time_limit and embed.retry_backoff_max < visibility


def test_retrain_crontab_and_retention_come_from_the_environment():
    import subprocess
    import sys

    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'recommender.settings'; django.setup(); "
        "from django.conf import settings as s; e = s.CELERY_BEAT_SCHEDULE; c = e['retrain-on-schedule']; "
        "print(c['kwargs'], sorted(c['schedule'].hour), sorted(c['schedule'].day_of_week), "
        "'retrain-if-changed' in e, s.ML_KEEP_VERSIONS)"
    )
    env = {
        **os.environ,
        "ML_RETRAIN_CRONTAB": "30 3 * * 0",
        "ML_RETRAIN_CHANGED_FRACTION": "0",
        "ML_KEEP_VERSIONS": "5",
        "DATABASE_URL": runtime.database_url(connection.settings_dict),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "{'force': True} [3] [0] False 5"


def test_worker_killed_during_training(catalog):
    """SIGKILL mid-run: the previous version keeps serving, the run fails as "worker lost", a new run succeeds."""
    api = APIClient()
    probe = Product.objects.filter(embeddings__model_version=catalog).order_by("pk").first().pk
    before = _similar_ids(probe)
    fast = {"ML_HEARTBEAT_INTERVAL_S": "0.5", "ML_HEARTBEAT_TIMEOUT_S": "4"}
    runtime.purge_queues(app)
    with worker(**fast) as (proc, log):
        run = training_run_start(params={"epochs": 400, "batch_size": 32, "seed": 2, "patience": 0})
        _wait(
            lambda: TrainingRun.objects.filter(pk=run.pk, phase="training", step__gt=0).exists(),
            120,
            "the run to be training",
        )
        runtime.kill_worker(proc)
    run.refresh_from_db()
    assert (
        run.status == TrainingRun.Status.RUNNING and run.heartbeat_at is not None
    )  # nobody could say otherwise
    assert ModelVersion.objects.get(is_active=True) == catalog
    assert _similar_ids(probe) == before
    r = api.get(f"/api/products/{probe}/similar/", {"k": 8})
    assert r.status_code == 200 and [h["product"]["id"] for h in r.json()["results"]] == before
    # The restarted worker's start-up reconciliation fails runs whose heartbeat is older than the timeout;
    # a worker that comes back sooner leaves it to beat's next reconciliation, so wait the timeout out.
    stale = (run.heartbeat_at - timezone.now()).total_seconds() + float(fast["ML_HEARTBEAT_TIMEOUT_S"]) + 1
    time.sleep(max(0.0, stale))

    with worker(**fast):  # its start-up reconciliation finds the stale heartbeat
        _wait(lambda: TrainingRun.objects.get(pk=run.pk).status in TERMINAL, 60, "the lost run to be failed")
        run.refresh_from_db()
        assert run.status == TrainingRun.Status.FAILED, run.status
        assert re.match(r"worker lost: no heartbeat since .* UTC \(\d+ s > 4 s\)", run.error), run.error
        assert ModelVersion.objects.get(is_active=True) == catalog

        again = training_run_start(params={"epochs": 2, "batch_size": 64, "seed": 2})
        _wait(lambda: TrainingRun.objects.get(pk=again.pk).status in TERMINAL, 180, "the new run")
        again.refresh_from_db()
        assert again.status == TrainingRun.Status.SUCCEEDED, again.error
        activate_if_gated(again)  # 2 epochs need not beat the active version's 8
        assert ModelVersion.objects.get(is_active=True) == again.model_version
        assert again.items_per_s and again.items_per_s > 0 and again.heartbeat_at >= again.started_at
        assert set(_vector_rows(again.model_version).values()) == {1}
        assert len(_vector_rows(again.model_version)) == Product.objects.count()
    model_version_activate(version=catalog)


class TestWithAWarmWorker:
    """Three checks that share one worker process (its models stay loaded)."""

    @pytest.fixture(scope="class")
    def warm(self, catalog):
        runtime.purge_queues(app)
        with worker() as (proc, log):
            yield proc, log

    def test_same_embedding_message_delivered_twice(self, catalog, warm, tmp_path):
        from recommender.tasks import embed_products

        _, log = warm
        version = ModelVersion.objects.create(
            name="twice",
            config=catalog.config,
            artifact_path=catalog.artifact_path,
            status=ModelVersion.Status.EMBEDDING,
        )
        ids = list(Product.objects.order_by("pk").values_list("pk", flat=True)[:12])
        for _ in range(2):  # the same message (same task id) twice, as a broker redelivery would
            embed_products.apply_async(
                kwargs={"product_ids": ids, "version_id": version.pk}, task_id="twice-1"
            )
        _wait(
            lambda: log.read_text().count("recommender.tasks.embed_products[twice-1] succeeded") == 2,
            120,
            "both deliveries to run",
        )
        assert _vector_rows(version) == {pid: 1 for pid in ids}

    def test_uploaded_product_is_its_own_nearest_neighbour(self, catalog, warm, hm_root):
        pid, photo = api_upload(_merchandiser(), _new_article(hm_root, "top"))
        _wait(
            lambda: ProductEmbedding.objects.filter(product_id=pid, model_version=catalog).exists(),
            120,
            "the upload's embedding task",
            every=0.05,
        )
        hits = selectors.photo_search(image=Image.open(io.BytesIO(photo)), k=3).hits
        assert hits[0].product.pk == pid and hits[0].score > 0.99

    def test_activation_is_atomic_during_a_re_embed(self, catalog, warm, tmp_path):
        from recommender.tasks import embed_products

        new = _zero_shot_version("re-embed", tmp_path)
        probes = list(
            Product.objects.filter(embeddings__model_version=catalog)
            .order_by("pk")
            .values_list("pk", flat=True)[:3]
        )
        old = {p: _similar_ids(p) for p in probes}
        ids = list(Product.objects.order_by("pk").values_list("pk", flat=True))
        for i in range(0, len(ids), 20):
            embed_products.delay(product_ids=ids[i : i + 20], version_id=new.pk)
        seen_partial = False
        while len(_vector_rows(new)) < len(ids):
            # The worker's writes wait while the count and the refused activation run, or the last batch
            # could land between them and the activation would succeed (it did on a fast CI machine).
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute(f"LOCK TABLE {ProductEmbedding._meta.db_table} IN SHARE MODE")
                have = len(_vector_rows(new))
                seen_partial |= 0 < have < len(ids)
                if 0 < have < len(ids):
                    with pytest.raises(VersionNotReady, match="lacks vectors for"):
                        model_version_activate(version=new, require_complete=True)
            assert {p: _similar_ids(p) for p in probes} == old  # only the active version's vectors
            time.sleep(0.05)
        assert seen_partial, "the re-embed finished before it could be observed; use more products"

        # Queries in another thread while the version switches: each answer is all old or all new.
        answers: list[dict[int, list[int]]] = []
        stop = threading.Event()

        def query() -> None:
            try:
                while not stop.is_set():
                    answers.append({p: _similar_ids(p) for p in probes})
            finally:
                connection.close()

        t = threading.Thread(target=query)
        t.start()
        time.sleep(0.3)
        model_version_activate(version=new, require_complete=True)
        time.sleep(0.3)
        stop.set()
        t.join()
        newest = {p: _similar_ids(p) for p in probes}
        assert newest != old, "the new version ranks these probes like the old one; pick others"
        # each query is answered from one version's vectors (a request may straddle the switch)
        mixed = [(p, a[p]) for a in answers for p in probes if a[p] not in (old[p], newest[p])]
        assert not mixed, (mixed[:3], old, newest)
        assert answers[0] == old and answers[-1] == newest
        model_version_activate(version=catalog)


def test_upload_while_redis_is_down_is_embedded_once_redis_is_back(catalog, tmp_path, hm_root):
    private = f"redis://127.0.0.1:{PRIVATE_REDIS_PORT}/0"
    redis_proc = runtime.start_redis(PRIVATE_REDIS_PORT, tmp_path / "redis")
    try:
        with celery_broker(private):
            redis_proc.kill()
            redis_proc.wait(5)
            assert not runtime.redis_ping(private)
            api = _merchandiser()
            t = time.perf_counter()
            pid, _ = api_upload(api, _new_article(hm_root, "bottom"))
            took = time.perf_counter() - t
            assert took < 15, f"the upload blocked {took:.1f} s on the dead broker"  # liveness, not speed
            assert not ProductEmbedding.objects.filter(product_id=pid).exists()
            # The site keeps answering: recommendations, pages, health (which says Redis is down).
            probe = Product.objects.filter(embeddings__model_version=catalog).order_by("pk").first().pk
            assert api.get(f"/api/products/{probe}/similar/", {"k": 3}).status_code == 200
            assert api.get("/api/search/", {"q": "black jeans", "k": 3}).status_code == 200
            assert api.get(f"/products/{pid}").status_code == 200
            h = api.get("/healthz")
            assert h.status_code == 503 and h.json()["checks"]["redis"]["ok"] is False
            assert h.json()["checks"]["database"]["ok"] is True

            redis_proc = runtime.start_redis(PRIVATE_REDIS_PORT, tmp_path / "redis")  # Redis is back, empty
            with worker(broker=private):  # its start-up reconciliation finds the product without vectors
                _wait(
                    lambda: ProductEmbedding.objects.filter(product_id=pid, model_version=catalog).exists(),
                    120,
                    "the reconciliation to embed the upload",
                )
                rows = _vector_rows(catalog)
                assert rows[pid] == 1 and set(rows.values()) == {1} and len(rows) == Product.objects.count()
    finally:
        redis_proc.kill()
        redis_proc.wait(5)


def test_worker_killed_mid_embedding(catalog, tmp_path):
    """SIGKILL while a re-embed of the active version runs; after a restart every product has one row."""
    from recommender.tasks import embed_products

    ids = list(Product.objects.order_by("pk").values_list("pk", flat=True))
    gone = ids[::2]  # enough batches that the kill lands mid-way even on a quiet machine
    runtime.purge_queues(app)
    cold = {"ML_FEATURE_CACHE_DIR": str(tmp_path / "features")}  # real tower inference: slow enough to kill
    with worker(**cold) as (proc, log):
        # Let the start-up reconciliation finish first, or it would embed every missing product in one batch.
        _wait(
            lambda: re.search(
                r"recommender\.tasks\.reconcile\[[^\]]+\] succeeded", log.read_text(errors="replace")
            ),
            60,
            "the start-up reconciliation",
        )
        ProductEmbedding.objects.filter(model_version=catalog, product_id__in=gone).delete()
        for i in range(0, len(gone), 3):
            embed_products.delay(product_ids=gone[i : i + 3], version_id=catalog.pk)
        _wait(lambda: len(_vector_rows(catalog)) > len(ids) - len(gone), 120, "the first batch", every=0.05)
        runtime.kill_worker(proc)
    at_kill = len(_vector_rows(catalog))
    assert at_kill < len(ids), "everything was embedded before the kill; use more products"
    with worker(**cold):  # the queued messages, and the start-up reconciliation, finish the job
        _wait(lambda: len(_vector_rows(catalog)) == len(ids), 180, "every product to have vectors")
        assert set(_vector_rows(catalog).values()) == {1}


def test_embedding_message_comes_back_after_its_worker_dies(catalog, tmp_path):
    """Two workers; the one that received an embedding message is SIGKILLed while it embeds. The other,
    never restarted, gets the message after the visibility timeout (``BROKER_VISIBILITY_TIMEOUT_S``, 6 s
    here) and writes the vectors. The version is not the active one, so no reconciliation can fill the
    gap: only the redelivered message can."""
    from recommender.tasks import embed_products

    version = ModelVersion.objects.create(
        name="redelivered",
        config=catalog.config,
        artifact_path=catalog.artifact_path,
        status=ModelVersion.Status.EMBEDDING,
    )
    ids = list(Product.objects.order_by("pk").values_list("pk", flat=True)[:24])
    fast = {
        "BROKER_VISIBILITY_TIMEOUT_S": "6",
        "BROKER_RESTORE_EVERY_S": "2",
        "ML_FEATURE_CACHE_DIR": str(tmp_path / "features"),  # real tower inference: slow enough to kill
    }
    runtime.purge_queues(app)
    with worker(**fast) as one, worker(**fast) as two:
        embed_products.apply_async(kwargs={"product_ids": ids, "version_id": version.pk}, task_id="lost-1")

        def receiver():
            for (proc, log), other in ((one, two), (two, one)):
                if "embed_products[lost-1] received" in log.read_text(errors="replace"):
                    return proc, other
            return None

        victim, (live, live_log) = _wait(receiver, 60, "a worker to receive the message", every=0.05)
        runtime.kill_worker(victim)
        assert not _vector_rows(version), "the task finished before the kill; give it more products"
        _wait(
            lambda: len(_vector_rows(version)) == len(ids), 120, "the message to come back to the live worker"
        )
        assert _vector_rows(version) == {pid: 1 for pid in ids}
        # the rows commit before the task returns and Celery logs its result: wait for that line too
        _wait(
            lambda: "embed_products[lost-1] succeeded" in live_log.read_text(errors="replace"),
            30,
            "the live worker to log the task's success",
        )
        assert live.poll() is None  # the same process all along
