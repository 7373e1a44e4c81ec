"""Writes of the recommender app: model versions, training runs and product vectors (HackSoft "services")."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from django.db import transaction
from django.utils import timezone

from catalog.models import Product
from recommender.models import ModelVersion, ProductEmbedding, TrainingRun

logger = logging.getLogger(__name__)


def training_run_start(*, params: dict[str, Any] | None = None, user=None) -> TrainingRun:
    """Create a queued :class:`TrainingRun` and send ``ml.tasks.train_model`` once the row is committed.

    Raises:
        ValueError: a run is already queued or running (one training run at a time).
    """
    from ml.tasks import train_model

    with transaction.atomic():
        busy = TrainingRun.objects.select_for_update().filter(
            status__in=[TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING]
        )
        if busy.exists():
            raise ValueError(
                f"training run {busy.first().pk} is still {busy.first().status}; wait or cancel it"
            )
        run = TrainingRun.objects.create(params=params or {}, started_by=user if user and user.pk else None)

        def send() -> None:
            res = train_model.delay(run_id=run.pk)
            TrainingRun.objects.filter(pk=run.pk).update(celery_task_id=res.id or "")

        transaction.on_commit(send)
    return run


def training_run_update(run_id: int, **fields: Any) -> None:
    """Update progress fields of a run (one UPDATE; called from the worker)."""
    TrainingRun.objects.filter(pk=run_id).update(**fields)


def model_version_create(
    *, name: str, config: dict[str, Any], status: str = ModelVersion.Status.EMBEDDING
) -> ModelVersion:
    """Register a new (not yet active) model version."""
    return ModelVersion.objects.create(name=name, config=config, status=status)


def embeddings_write(
    *,
    version: ModelVersion,
    product_ids: Sequence[int],
    image: np.ndarray,
    text: np.ndarray,
    fused: np.ndarray,
    compat: np.ndarray,
    batch_size: int = 1000,
) -> int:
    """Upsert one vector row per (product, version); idempotent (a repeated call writes no duplicate).

    Args:
        product_ids: N product ids; products deleted meanwhile are skipped.
        image, text, fused: (N, E) float32 unit vectors; compat: (N, C) float32 unit vectors.

    Returns:
        Number of rows written.
    """
    n = len(product_ids)
    if not (len(image) == len(text) == len(fused) == len(compat) == n):
        raise ValueError(
            f"{n} ids but vectors of lengths {len(image)}, {len(text)}, {len(fused)}, {len(compat)}"
        )
    slots = dict(Product.objects.filter(pk__in=list(product_ids)).values_list("pk", "slot"))
    written = 0
    for start in range(0, n, batch_size):
        rows = [
            ProductEmbedding(
                product_id=pid,
                model_version=version,
                slot=slots[pid],
                image=image[i],
                text=text[i],
                fused=fused[i],
                compat=compat[i],
            )  # fmt: skip
            for i, pid in enumerate(product_ids[start : start + batch_size], start=start)
            if pid in slots
        ]
        ProductEmbedding.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=["product", "model_version"],
            update_fields=["slot", "image", "text", "fused", "compat", "updated_at"],
        )  # fmt: skip
        written += len(rows)
    return written


def model_version_activate(*, version: ModelVersion) -> ModelVersion:
    """Make ``version`` the one the site serves, in one transaction (the previous one stays, inactive).

    Raises:
        ValueError: the version is failed or has no vectors.
    """
    if version.status == ModelVersion.Status.FAILED:
        raise ValueError(f"model version {version.pk} failed and cannot be activated")
    if not ProductEmbedding.objects.filter(model_version=version).exists():
        raise ValueError(f"model version {version.pk} has no vectors yet")
    with transaction.atomic():
        ModelVersion.objects.select_for_update().filter(is_active=True).exclude(pk=version.pk).update(
            is_active=False
        )
        version.is_active = True
        version.status = ModelVersion.Status.READY
        version.activated_at = timezone.now()
        version.save(update_fields=["is_active", "status", "activated_at"])
    return version
