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


class VersionNotReady(ValueError):
    """The model version cannot serve yet (failed, or products lack its vectors)."""


def model_version_activate(*, version: ModelVersion, require_complete: bool = False) -> ModelVersion:
    """Make ``version`` the one the site serves, in one transaction (the previous one stays, inactive).

    Args:
        require_complete: refuse unless every product has a vector row for this version (manual
            activation and rollback; the training task activates right after embedding everything).

    Raises:
        VersionNotReady: the version failed, has no vectors, or (``require_complete``) misses some.
    """
    if version.status == ModelVersion.Status.FAILED:
        raise VersionNotReady(f"model version {version.pk} failed and cannot be activated")
    have = ProductEmbedding.objects.filter(model_version=version).count()
    if not have:
        raise VersionNotReady(f"model version {version.pk} has no vectors yet")
    missing = Product.objects.count() - have
    if require_complete and missing > 0:
        raise VersionNotReady(
            f"model version {version.pk} lacks vectors for {missing} products; re-embed first"
        )
    with transaction.atomic():
        ModelVersion.objects.select_for_update().filter(is_active=True).exclude(pk=version.pk).update(
            is_active=False
        )
        version.is_active = True
        version.status = ModelVersion.Status.READY
        version.activated_at = timezone.now()
        version.save(update_fields=["is_active", "status", "activated_at"])
    return version


def model_version_rollback() -> ModelVersion:
    """Activate the version that was active before the current one (one action, one transaction).

    Raises:
        VersionNotReady: there is no earlier activated version that is complete.
    """
    current = ModelVersion.objects.filter(is_active=True).first()
    earlier = ModelVersion.objects.filter(activated_at__isnull=False).exclude(
        status=ModelVersion.Status.FAILED
    )
    if current is not None:
        earlier = earlier.exclude(pk=current.pk).filter(activated_at__lt=current.activated_at)
    previous = earlier.order_by("-activated_at").first()
    if previous is None:
        raise VersionNotReady("no earlier model version to roll back to")
    return model_version_activate(version=previous, require_complete=True)


def training_run_cancel(*, run: TrainingRun) -> TrainingRun:
    """Cancel a queued or running run: the worker stops at the next epoch, the active version keeps serving.

    Raises:
        ValueError: the run already finished.
    """
    if run.status not in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING):
        raise ValueError(f"training run {run.pk} is already {run.status}")
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.CANCELLED, finished_at=timezone.now()
    )
    if run.status == TrainingRun.Status.QUEUED and run.celery_task_id:
        from recommender.celery import app

        app.control.revoke(run.celery_task_id)  # never starts
    run.refresh_from_db()
    return run
