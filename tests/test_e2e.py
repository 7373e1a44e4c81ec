"""End to end with real processes: Redis, a real Celery worker, the real PostgreSQL + pgvector.

Import a slice of the H&M sample → a training run on the worker → vectors in pgvector → queries;
then a product uploaded through the API becomes searchable once its embedding task ran.
"""

from __future__ import annotations

import io
import os

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.db import connection
from rest_framework.test import APIClient

from catalog.hm_import import catalog_import_hm
from catalog.models import Product
from ml.data import read_articles
from recommender import runtime, selectors
from recommender.celery import app
from recommender.models import ModelVersion, ProductEmbedding, TrainingRun
from recommender.services import training_run_start
from tests.conftest import activate_if_gated
from tests.uploads import api_upload
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def worker(transactional_db, tmp_path):
    """A real ``celery worker`` process on the test database and the tests' Redis database."""
    runtime.ensure_redis(settings.CELERY_BROKER_URL, settings.VAR_DIR)
    app.control.purge()
    log = settings.VAR_DIR / "logs" / "e2e-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    proc = runtime.start_worker(
        queues="embedding,training",
        concurrency=1,
        logfile=log,
        name=f"e2e-{os.getpid()}",
        env={
            "DATABASE_URL": runtime.database_url(connection.settings_dict),
            "DJANGO_SETTINGS_MODULE": "recommender.settings.test",
        },
    )
    try:
        assert runtime.wait_for_worker(app, timeout=120), log.read_text()[-3000:]
        yield proc
    finally:
        runtime.stop_worker(proc)


_wait = wait_for


def test_import_train_on_worker_query_and_upload(worker, hm_root):
    summary = catalog_import_hm(root=hm_root, limit=120, progress=False)
    assert summary.skipped == [] and summary.created + summary.unchanged + summary.updated == 120
    assert Product.objects.count() >= 120  # the session's trained slice may be there too

    run = training_run_start(params={"epochs": 4, "batch_size": 64, "seed": 1})
    terminal = {TrainingRun.Status.SUCCEEDED, TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED}
    _wait(lambda: TrainingRun.objects.get(pk=run.pk).status in terminal, 600, "the training run")
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert run.progress == 100.0 and run.step > 0 and "active" in run.log_tail
    activate_if_gated(run)
    version = ModelVersion.objects.get(is_active=True)
    assert version == run.model_version
    assert ProductEmbedding.objects.filter(model_version=version).count() == Product.objects.count()
    ev = version.metrics["evaluation"]
    assert ev["fine-tuned"]["mrr"] > ev["zero-shot"]["mrr"]  # the held-out gallery may hold under 10 items

    types = [h.product.product_type for h in selectors.text_search(query="jeans", k=5)]
    assert types.count("Trousers") + types.count("Shorts") >= 3, types

    # A merchandiser uploads a real H&M article that is not in the catalog yet.
    articles, _ = read_articles(hm_root)
    known = set(Product.objects.values_list("sku", flat=True))
    new = next(a for a in articles if a.article_id not in known and a.slot == "bottom")
    user = User.objects.create_user("merch", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    api = APIClient()
    api.force_authenticate(user)
    pid, photo = api_upload(api, new)
    _wait(
        lambda: ProductEmbedding.objects.filter(product_id=pid, model_version=version).exists(),
        120,
        "the uploaded product's embedding task",
    )
    from PIL import Image

    hits = selectors.photo_search(image=Image.open(io.BytesIO(photo)), k=3).hits
    assert hits[0].product.pk == pid
    assert api.get(f"/api/products/{pid}/similar/", {"k": 3}).status_code == 200
