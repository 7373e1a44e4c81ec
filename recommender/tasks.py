"""Celery tasks of the recommender: thin entry points that take ids, re-read their rows and call services.

Tasks are safe to run twice (vector writes are upserts on (product, version)). Transient errors (a
database or Redis connection dropped) are retried with exponential backoff. The database is the
outbox: ``reconcile`` (beat, and every worker start) embeds products that have no vectors for the
active version, fails training runs whose worker died (stale heartbeat) and sends runs whose message
never reached the broker.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from catalog.models import Product
from recommender import ml_bridge
from recommender.model_cache import embedder_for
from recommender.models import ModelVersion
from recommender.services import (
    TrainingRunBusy,
    catalog_changed_fraction,
    embeddings_queue,
    embeddings_write,
    model_versions_prune,
    training_run_start,
    training_runs_fail_lost,
    training_runs_requeue,
)
from recommender.training import Heartbeat, training_run_claim, training_run_execute

logger = logging.getLogger(__name__)

#: Errors worth retrying: the database or the broker/cache connection dropped for a moment.
TRANSIENT_ERRORS = (
    OperationalError,
    InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    ConnectionError,
    TimeoutError,
)
#: Retry policy of the short tasks: 1, 2, 4, ... s (jittered, at most 120 s apart), 6 tries.
RETRY = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 6,
}
#: Time limits of the short tasks (seconds); the soft one raises SoftTimeLimitExceeded inside the task.
EMBED_LIMITS = {
    "time_limit": settings.ML_EMBED_TIME_LIMIT_S,
    "soft_time_limit": settings.ML_EMBED_TIME_LIMIT_S - 30,
}


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=False,
    time_limit=settings.ML_TRAIN_TIME_LIMIT_S,
    soft_time_limit=settings.ML_TRAIN_TIME_LIMIT_S - 60,
)
def train_model(self, run_id: int) -> dict[str, Any]:
    """Run training run ``run_id`` (:func:`recommender.training.training_run_execute`).

    A heartbeat thread marks the run alive; ``acks_late`` keeps the message until the end, but a
    worker lost mid-run does not requeue it (``reject_on_worker_lost=False``: a run that killed its
    worker, e.g. out of memory, must not loop): reconciliation fails the run and a redelivered message
    finds it finished and skips. Only a queued run starts; a run failed or cancelled meanwhile stops at
    the next epoch.
    """
    run = training_run_claim(run_id=run_id)
    if isinstance(run, str):
        return {"skipped": run}
    with Heartbeat(run_id, settings.ML_HEARTBEAT_INTERVAL_S):
        result = training_run_execute(run=run, task_id=self.request.id or "")
    if "version" in result and "cancelled" not in result:
        try:
            embed_missing.delay()  # products created while we trained
        except Exception as exc:  # broker down: the next reconciliation does it
            logger.warning("could not queue embed_missing after run %s: %s", run_id, exc)
    return result


@shared_task(
    bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True, **EMBED_LIMITS, **RETRY
)
def embed_products(self, product_ids: list[int], version_id: int | None = None) -> dict[str, Any]:
    """Embed these products with the active (or given) model version and upsert their vectors.

    Idempotent: a second delivery overwrites the same rows (unique (product, version) upsert), so the
    message is acknowledged late and requeued when its worker dies. Unknown ids are skipped.
    """
    qs = (
        ModelVersion.objects.filter(pk=version_id)
        if version_id
        else ModelVersion.objects.filter(is_active=True)
    )
    version = qs.first()
    if version is None:
        return {"embedded": 0, "reason": "no active model version"}
    products = list(Product.objects.filter(pk__in=product_ids).order_by("pk"))
    if not products:
        return {"embedded": 0, "reason": "no such products"}
    t = time.perf_counter()
    vecs = embedder_for(version).embed_items(*ml_bridge.product_inputs(products))
    n = embeddings_write(
        version=version,
        product_ids=[p.pk for p in products],
        image=vecs.image,
        text=vecs.text,
        fused=vecs.fused,
        compat=vecs.compat,
    )
    return {
        "embedded": n,
        "version": version.pk,
        "seconds": time.perf_counter() - t,
        "failed_images": [products[r].pk for r, _ in vecs.failed],
    }


@shared_task(ignore_result=True, **EMBED_LIMITS, **RETRY)
def embed_missing() -> dict[str, Any]:
    """Reconciliation: queue embedding of every product that has no vector for the active version.

    Returns:
        ``{"queued": number of products, "version": active version id}``.
    """
    version = ModelVersion.objects.filter(is_active=True).first()
    if version is None:
        return {"queued": 0}
    missing = list(
        Product.objects.exclude(embeddings__model_version=version).values_list("pk", flat=True).order_by("pk")
    )
    embeddings_queue(product_ids=missing, version_id=version.pk, on_commit=False)
    if missing:
        logger.info("reconcile: queued %d products without vectors for version %s", len(missing), version.pk)
    return {"queued": len(missing), "version": version.pk}


@shared_task(ignore_result=True, **EMBED_LIMITS, **RETRY)
def reconcile() -> dict[str, Any]:
    """The database is the outbox: repair what a dead worker or a broker outage left behind.

    1. runs whose heartbeat is older than ``ML_HEARTBEAT_TIMEOUT_S`` → failed ("worker lost");
    2. queued runs whose message never reached the broker → sent again;
    3. products without vectors for the active version → ``embed_products`` queued.

    Runs on beat every ``ML_RECONCILE_EVERY_S`` seconds and once at every worker start.
    """
    lost = training_runs_fail_lost()
    requeued = training_runs_requeue()
    return {"failed_runs": lost, "requeued_runs": requeued, **embed_missing.run()}


@shared_task(ignore_result=True, **EMBED_LIMITS, **RETRY)
def refresh_hub_scores(version_id: int) -> dict[str, Any]:
    """Price every row of a version again (:func:`recommender.hubness.hub_scores_refresh`): queued once
    after a burst of uploads or edits, which are written with their stored offsets
    (:func:`recommender.hubness.hub_refresh_schedule`). A deleted version is skipped."""
    from recommender.hubness import hub_scores_refresh

    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        return {"refreshed": 0, "version": version_id}
    t = time.perf_counter()
    n = hub_scores_refresh(version=version)
    logger.info(
        "hub offsets of version %s refreshed: %d rows in %.1f s", version_id, n, time.perf_counter() - t
    )
    return {"refreshed": n, "version": version_id}


@shared_task(ignore_result=True, **EMBED_LIMITS, **RETRY)
def prune_model_versions(keep: int | None = None) -> dict[str, Any]:
    """Retention: delete vectors and artifacts of versions beyond the newest ``keep`` (``ML_KEEP_VERSIONS``),
    never the active one or the rollback target (:func:`recommender.services.model_versions_prune`)."""
    return {"pruned": model_versions_prune(keep=keep)}


@shared_task(ignore_result=True, **RETRY)
def retrain_if_changed(min_fraction: float | None = None, force: bool = False) -> dict[str, Any]:
    """Start a training run when the catalog changed enough since the active version was trained.

    Args:
        min_fraction: changed share of products + outfits that triggers a run (default
            ``ML_RETRAIN_CHANGED_FRACTION``; see ``recommender.services.catalog_changed_fraction``).
        force: start a run whatever changed (the ``ML_RETRAIN_CRONTAB`` schedule).

    Returns:
        ``{"changed": fraction or None, "started": run id or None, "reason": why}``; a run already
        queued or running is left alone (one at a time).
    """
    min_fraction = settings.ML_RETRAIN_CHANGED_FRACTION if min_fraction is None else min_fraction
    active = ModelVersion.objects.filter(is_active=True).first()
    changed = catalog_changed_fraction(since=active.trained_on if active else {})
    if not force and changed <= min_fraction:
        return {"changed": changed, "started": None, "reason": f"changed {changed:.1%} <= {min_fraction:.1%}"}
    if not Product.objects.exists():
        return {"changed": changed, "started": None, "reason": "the catalog is empty"}
    try:
        run = training_run_start(params=dict(settings.ML_RETRAIN_PARAMS))
    except TrainingRunBusy as exc:
        return {"changed": changed, "started": None, "reason": str(exc)}
    reason = "scheduled" if force else f"changed {changed:.1%} > {min_fraction:.1%}"
    logger.info("retrain: started training run %s (%s)", run.pk, reason)
    return {"changed": changed, "started": run.pk, "reason": reason}
