"""Shared fixtures: a small slice of the real H&M sample in the real PostgreSQL + pgvector test database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings

HM_ROOT = Path(os.environ.get("HM_DATA_DIR", settings.BASE_DIR.parent / "shared" / "data" / "hm"))
SLICE = int(os.environ.get("TEST_SLICE", "160"))


@pytest.fixture(scope="session")
def hm_root() -> Path:
    """The H&M sample folder (``../shared/data/hm``; ``HM_DATA_DIR`` overrides)."""
    if not (HM_ROOT / "articles.csv").exists():
        pytest.fail(f"H&M sample not found at {HM_ROOT}; set HM_DATA_DIR")
    return HM_ROOT


@pytest.fixture(scope="session")
def mango_root(hm_root) -> Path:
    """The MANGO sample folder (next to the H&M one; ``MANGO_DATA_DIR`` overrides)."""
    root = Path(os.environ.get("MANGO_DATA_DIR", hm_root.parent / "mango"))
    if not (root / "products.csv").exists():
        pytest.fail(f"MANGO sample not found at {root}; set MANGO_DATA_DIR")
    return root


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's ``django_db_setup``, and the test database of the ``default`` alias in any case.

    pytest-django creates only the databases of the session's tests marked ``django_db`` (or using
    ``db``); modules that reach the database only through committed session or module fixtures
    (``test_pipeline``, ``test_browser``), run on their own, would otherwise read, write and flush the
    developer's own database (the demo's). Raises ``RuntimeError`` when the connection still is not on a
    ``test_`` database.
    """
    from django.db import connection
    from django.test.utils import setup_databases, teardown_databases

    created = None
    if not connection.settings_dict["NAME"].startswith("test_"):
        with django_db_blocker.unblock():
            connection.close()
            connection.close_pool()  # a pool opened before the switch would keep the old database
            created = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        name = cursor.fetchone()[0]
    if not name.startswith("test_"):
        raise RuntimeError(f"the tests' connection is on database {name!r}, not a test database")
    yield
    if created is not None:
        with django_db_blocker.unblock():
            teardown_databases(created, verbosity=0)


@pytest.fixture(scope="session")
def trained_catalog(django_db_setup, django_db_blocker, hm_root):
    """Import a slice of the real catalog and train a few epochs (synchronously, no worker).

    Session-scoped and committed, so every test sees the same products, outfits and active version.
    Returns the active ``ModelVersion``.
    """
    with django_db_blocker.unblock():
        return _train_slice(hm_root)


def _train_slice(hm_root: Path):
    """Import the slice, train it synchronously (no worker) and return the then active ``ModelVersion``.
    Call with database access unblocked."""
    from catalog.hm_import import catalog_import_hm
    from recommender.models import ModelVersion, TrainingRun
    from recommender.tasks import train_model

    catalog_import_hm(root=hm_root, limit=SLICE, progress=False)
    run = TrainingRun.objects.create(params={"epochs": 8, "batch_size": 64, "seed": 0, "patience": 0})
    train_model.apply(kwargs={"run_id": run.pk}, throw=True)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    activate_if_gated(run)
    return ModelVersion.objects.get(is_active=True)


def active_trained_slice(hm_root: Path):
    """The active ``ModelVersion`` with its vectors, for module fixtures that commit (workers, backups).

    A transactional test (``transactional_db``, e.g. ``test_e2e``) flushes the test database, taking the
    session's ``trained_catalog`` rows with it; another may leave its own version active. Then the slice
    is imported and trained again here, as ``trained_catalog`` does. Call with database access unblocked.
    """
    from recommender.models import ModelVersion, ProductEmbedding

    active = ModelVersion.objects.filter(is_active=True).first()
    if active is None or not ProductEmbedding.objects.filter(model_version=active).exists():
        active = _train_slice(hm_root)
    return active


def run_through_api(merch, body: dict):
    """Start a training run with ``POST /api/training-runs/`` as ``merch`` (an API client with the
    merchandiser permission), execute it here (no worker) and return it, refreshed, after checking it
    succeeded. A run that raised is marked failed, so the next test can start one."""
    from recommender.models import TrainingRun
    from recommender.tasks import train_model

    r = merch.post("/api/training-runs/", body, format="json")
    assert r.status_code == 202, r.json()
    run = TrainingRun.objects.get(pk=r.json()["id"])
    try:
        train_model.apply(kwargs={"run_id": run.pk}, throw=True)
    finally:
        run.refresh_from_db()
        if run.status in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING):
            TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.FAILED)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    return run


def activate_if_gated(run) -> None:
    """A finished run's version serves: the quality gate (``recommender.gate.quality_gate``) may have
    kept it inactive (a few epochs on a small slice need not beat the baselines); then activate it by hand,
    as a merchandiser can. Its verdict is stored either way."""
    from recommender.services import model_version_activate

    version = run.model_version
    assert {"passed", "reason"} <= set(version.metrics["gate"]), version.metrics
    if not version.is_active:
        assert not version.metrics["gate"]["passed"], version.metrics["gate"]
        model_version_activate(version=version, require_complete=True)


def pytest_sessionfinish(session, exitstatus) -> None:
    """Stop the embedded PostgreSQL if this test session started it (``recommender.db``), so a checkout
    does not keep one server running per clone; a server that was already running (the demo's, another
    session's) is left alone, and so is one that other clients still use."""
    from recommender import db

    if os.environ.get("DATABASE_URL") or not (pid := db.started_here(Path(settings.VAR_DIR))):
        return
    from django.db import connections

    connections.close_all()
    for conn in connections.all(initialized_only=True):
        conn.close_pool()  # the psycopg pool's idle connections
    if (others := db.client_count(Path(settings.VAR_DIR))) > 0:
        session.config.get_terminal_writer().line(
            f"left the embedded PostgreSQL this session started running: {others} other clients use it"
        )
    elif db.stop_embedded(Path(settings.VAR_DIR), only_pid=pid):
        session.config.get_terminal_writer().line(
            f"\nstopped the embedded PostgreSQL this session started ({pid})"
        )
