"""Model registry through the API: activation needs complete vectors, rollback, cancelling runs."""

from __future__ import annotations

import numpy as np
import pytest
from django.contrib.auth.models import Permission, User
from rest_framework.test import APIClient

from catalog.models import Product
from recommender.models import ModelVersion, ProductEmbedding, TrainingRun
from recommender.services import embeddings_write, model_version_activate

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture
def merch() -> APIClient:
    user = User.objects.create_user("merch-reg", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    api = APIClient()
    api.force_authenticate(user)
    return api


def _copy_version(source: ModelVersion, product_ids: list[int]) -> ModelVersion:
    """A new version holding the source's vectors for ``product_ids`` (same heads artifact)."""
    v = ModelVersion.objects.create(name="copy", config=source.config, artifact_path=source.artifact_path,
                                    status=ModelVersion.Status.READY)  # fmt: skip
    rows = list(
        ProductEmbedding.objects.filter(model_version=source, product_id__in=product_ids).order_by(
            "product_id"
        )
    )
    embeddings_write(version=v, product_ids=[r.product_id for r in rows],
                     **{c: np.stack([np.asarray(getattr(r, c)) for r in rows]) for c in ("image", "text", "fused", "compat")})  # fmt: skip
    return v


def test_activation_refuses_a_version_with_missing_vectors(trained_catalog, merch):
    partial = _copy_version(trained_catalog, list(Product.objects.values_list("pk", flat=True)[:5]))
    r = merch.post(f"/api/model-versions/{partial.pk}/activate/")
    assert r.status_code == 409
    missing = Product.objects.count() - 5
    assert r.json()["error"] == {"code": "version_not_ready", "details": {},
                                 "message": f"model version {partial.pk} lacks vectors for {missing} products; re-embed first"}  # fmt: skip
    assert ModelVersion.objects.get(is_active=True) == trained_catalog


def test_activate_then_roll_back(trained_catalog, merch):
    full = _copy_version(trained_catalog, list(Product.objects.values_list("pk", flat=True)))
    r = merch.post(f"/api/model-versions/{full.pk}/activate/")
    assert r.status_code == 200 and r.json()["is_active"] is True
    assert ModelVersion.objects.get(is_active=True) == full
    r = merch.post("/api/model-versions/rollback/")
    assert r.status_code == 200 and r.json()["id"] == trained_catalog.pk
    assert ModelVersion.objects.filter(is_active=True).count() == 1
    assert ModelVersion.objects.get(is_active=True) == trained_catalog


def test_rollback_without_an_earlier_version_is_409(trained_catalog, merch):
    ModelVersion.objects.exclude(pk=trained_catalog.pk).update(activated_at=None)
    model_version_activate(version=trained_catalog)  # now the earliest activation
    r = merch.post("/api/model-versions/rollback/")
    assert r.status_code == 409 and "no earlier model version" in r.json()["error"]["message"]


def test_cancel_a_queued_run_once(trained_catalog, merch):
    run = TrainingRun.objects.create(params={}, status=TrainingRun.Status.QUEUED)
    r = merch.post(f"/api/training-runs/{run.pk}/cancel/")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = merch.post(f"/api/training-runs/{run.pk}/cancel/")
    assert (
        r.status_code == 400 and r.json()["error"]["message"] == f"training run {run.pk} is already cancelled"
    )
    assert merch.post("/api/training-runs/999999/cancel/").status_code == 404


def test_registry_writes_need_a_merchandiser(trained_catalog):
    anon = APIClient()
    assert anon.post("/api/model-versions/rollback/").status_code == 401
    assert anon.post(f"/api/model-versions/{trained_catalog.pk}/activate/").status_code == 401
