"""Writes of the recommender app: model versions, training runs and product vectors (HackSoft "services")."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from catalog.models import Outfit, Product
from recommender.celery import app
from recommender.models import ModelVersion, ProductEmbedding, TrainingRun
from recommender.vector_writes import embeddings_write as embeddings_write  # the services' API
from recommender.vector_writes import product_audience_groups as product_audience_groups

logger = logging.getLogger(__name__)


class TrainingRunBusy(ValueError):
    """A training run is already queued or running (one at a time); the API answers 409."""

    def __init__(self, run: TrainingRun) -> None:
        super().__init__(f"training run {run.pk} is still {run.status}; wait or cancel it")
        self.run = run


#: Products per ``embed_products`` message.
EMBED_BATCH = 256


def embeddings_queue(
    *, product_ids: Sequence[int], version_id: int | None = None, on_commit: bool = True
) -> int:
    """Queue ``recommender.tasks.embed_products`` for these ids, in batches of :data:`EMBED_BATCH`, once
    the current transaction commits (``on_commit=False``: at once), for the active model version (or
    ``version_id``, e.g. the rollback target).

    Never raises into the request and gives up within ~2 s when the broker (Redis) is down
    (``CELERY_BROKER_CONNECTION_TIMEOUT``, ``CELERY_TASK_PUBLISH_RETRY_POLICY``): the products stay
    without vectors and ``recommender.tasks.reconcile`` (beat, worker start) embeds them later.

    Returns:
        The number of messages that will be sent.
    """
    from recommender.tasks import embed_products  # the Styleguide's service <-> task pair

    ids = [int(i) for i in product_ids]
    batches = [ids[i : i + EMBED_BATCH] for i in range(0, len(ids), EMBED_BATCH)]

    def send() -> None:
        for batch in batches:
            try:
                embed_products.delay(product_ids=batch, version_id=version_id)
            except Exception as exc:  # broker down: the reconciliation task embeds them later
                logger.warning(
                    "could not queue embedding of %d products (%s); reconcile will catch up", len(batch), exc
                )
                return

    if batches:
        transaction.on_commit(send) if on_commit else send()
    return len(batches)


#: Key of the transaction-level advisory lock that serialises :func:`training_run_start`.
_TRAINING_LOCK = 0x7261696E  # "rain"


def training_run_send(*, run: TrainingRun) -> bool:
    """Send ``recommender.tasks.train_model`` for a queued run and store the Celery task id.

    The broker may be down: the error is logged, never raised, and the run stays queued without a task
    id; :func:`training_runs_requeue` (beat and worker start) sends it again later.

    Returns:
        True when the message was handed to the broker.
    """
    from recommender.tasks import train_model  # the Styleguide's service <-> task pair

    try:
        res = train_model.delay(run_id=run.pk)
    except Exception as exc:  # kombu OperationalError, redis ConnectionError, timeouts
        logger.warning("could not queue training run %s (%s); reconciliation will send it", run.pk, exc)
        return False
    TrainingRun.objects.filter(pk=run.pk).update(celery_task_id=res.id or "")
    return True


def init_from_active_refusal() -> str | None:
    """Why a run cannot start from the active version's heads (``init_from_active``), or None when it can:
    there must be an active version, with base towers (heads trained with tuned towers go with them)."""
    active = ModelVersion.objects.filter(is_active=True).first()
    if active is None:
        return "no version is active: a run starts from the heads of an active version"
    train = (active.config or {}).get("train") or {}
    if train.get("unfreeze_last_blocks") or train.get("unfreeze_text_layers"):
        return (
            f"the active version v{active.pk} has tuned towers: a run starts from the heads of an active "
            "version with base towers (activate one on this page first)"
        )
    return None


def training_run_start(*, params: dict[str, Any] | None = None, user=None) -> TrainingRun:
    """Create a queued :class:`TrainingRun` and send ``recommender.tasks.train_model`` once the row is committed.

    One run at a time: a transaction-level advisory lock serialises concurrent starts, and the
    partial unique index ``one_busy_training_run`` backs it up in the database.

    Raises:
        TrainingRunBusy: a run is already queued or running.
    """
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_TRAINING_LOCK])
        busy = TrainingRun.objects.filter(
            status__in=[TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING]
        ).first()
        if busy is not None:
            raise TrainingRunBusy(busy)
        try:
            with transaction.atomic():
                run = TrainingRun.objects.create(
                    params=params or {}, started_by=user if user and user.pk else None
                )
        except IntegrityError as exc:  # lost a race with a writer that skipped the lock
            busy = TrainingRun.objects.filter(
                status__in=[TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING]
            ).first()
            if busy is None:
                raise
            raise TrainingRunBusy(busy) from exc
        transaction.on_commit(lambda: training_run_send(run=run))
    return run


def training_run_heartbeat(*, run_id: int) -> None:
    """Record that the worker running ``run_id`` is alive (``heartbeat_at = now``)."""
    TrainingRun.objects.filter(pk=run_id).update(heartbeat_at=timezone.now())


def training_runs_fail_lost(*, timeout_s: float | None = None) -> list[int]:
    """Mark running runs whose heartbeat is older than ``timeout_s`` seconds failed ("worker lost").

    A SIGKILLed or crashed worker cannot write its own failure; its heartbeat thread stops with it.
    Their unfinished model versions are marked failed; the active version is never touched.

    Args:
        timeout_s: staleness limit in seconds (default ``settings.ML_HEARTBEAT_TIMEOUT_S``).

    Returns:
        The ids of the runs marked failed.
    """
    timeout_s = settings.ML_HEARTBEAT_TIMEOUT_S if timeout_s is None else timeout_s
    now = timezone.now()
    limit = now - timedelta(seconds=timeout_s)
    lost = TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING).filter(
        Q(heartbeat_at__lt=limit) | Q(heartbeat_at__isnull=True, started_at__lt=limit)
    )
    failed: list[int] = []
    with transaction.atomic():
        for run in lost.select_for_update(skip_locked=True):
            seen = run.heartbeat_at or run.started_at
            run.status = TrainingRun.Status.FAILED
            run.finished_at = now
            run.error = (
                f"worker lost: no heartbeat since {seen:%Y-%m-%d %H:%M:%S} UTC "
                f"({(now - seen).total_seconds():.0f} s > {timeout_s:g} s); the worker was killed or crashed"
            )
            run.log_tail = (run.log_tail + f"\n{now:%H:%M:%S} failed: {run.error}").strip()[-8000:]
            run.save(update_fields=["status", "finished_at", "error", "log_tail"])
            if run.model_version_id:
                ModelVersion.objects.filter(pk=run.model_version_id, is_active=False).exclude(
                    status=ModelVersion.Status.READY
                ).update(status=ModelVersion.Status.FAILED)
            failed.append(run.pk)
            logger.warning("training run %s: %s", run.pk, run.error)
    return failed


def training_runs_requeue(*, min_age_s: float = 30.0) -> list[int]:
    """Send again the queued runs whose message never reached the broker (no Celery task id).

    Args:
        min_age_s: leave runs younger than this (their ``on_commit`` send may still be under way).

    Returns:
        The ids of the runs handed to the broker now.
    """
    limit = timezone.now() - timedelta(seconds=min_age_s)
    runs = TrainingRun.objects.filter(
        status=TrainingRun.Status.QUEUED, celery_task_id="", created_at__lt=limit
    )
    return [run.pk for run in runs if training_run_send(run=run)]


def catalog_snapshot() -> dict[str, Any]:
    """What the catalog looks like now, for :func:`catalog_changed_fraction` (stored on each version).

    Returns:
        ``{"products", "outfits", "product_max_id", "outfit_max_id", "products_updated_at"}``
        (counts, highest ids, ISO time of the newest product change or None).
    """
    p = Product.objects.aggregate(n=Count("pk"), max_id=Max("pk"), updated=Max("updated_at"))
    o = Outfit.objects.aggregate(n=Count("pk"), max_id=Max("pk"))
    return {
        "products": p["n"],
        "outfits": o["n"],
        "product_max_id": p["max_id"] or 0,
        "outfit_max_id": o["max_id"] or 0,
        "products_updated_at": p["updated"].isoformat() if p["updated"] else None,
    }


def catalog_changed_fraction(*, since: dict[str, Any]) -> float:
    """Fraction of the catalog that changed since ``since`` (a :func:`catalog_snapshot`).

    Changed = products created or updated after the snapshot + outfits created after it + rows deleted
    since (count drop), over the snapshot's products + outfits. An empty snapshot counts as all changed.
    """
    base = int(since.get("products", 0)) + int(since.get("outfits", 0))
    if base == 0:
        return 1.0 if Product.objects.exists() else 0.0
    now = catalog_snapshot()
    products = Product.objects.filter(pk__gt=since.get("product_max_id", 0))
    if since.get("products_updated_at"):
        products = Product.objects.filter(
            Q(pk__gt=since.get("product_max_id", 0)) | Q(updated_at__gt=since["products_updated_at"])
        )
    changed = products.count() + Outfit.objects.filter(pk__gt=since.get("outfit_max_id", 0)).count()
    changed += max(0, since["products"] - now["products"]) + max(0, since["outfits"] - now["outfits"])
    return changed / base


def model_version_create(
    *, name: str, config: dict[str, Any], status: str = ModelVersion.Status.EMBEDDING
) -> ModelVersion:
    """Register a new (not yet active) model version."""
    return ModelVersion.objects.create(name=name, config=config, status=status)


class VersionNotReady(ValueError):
    """The model version cannot serve yet (failed, or products lack its vectors)."""


def model_version_activate(
    *, version: ModelVersion, require_complete: bool = False, queue_missing: bool = False
) -> ModelVersion:
    """Make ``version`` the one the site serves, in one transaction (the previous one stays, inactive).

    Args:
        require_complete: refuse unless every product has a vector row for this version (manual
            activation and rollback; the training task activates right after embedding everything).
        queue_missing: when refused for missing vectors, queue their embedding for this version (the
            merchandiser's activate and rollback actions: the same action succeeds once it ran).

    Raises:
        VersionNotReady: the version failed, has no vectors, or (``require_complete``) misses some.
    """
    if version.status == ModelVersion.Status.FAILED:
        raise VersionNotReady(f"model version {version.pk} failed and cannot be activated")
    if version.pruned_at is not None:
        raise VersionNotReady(
            f"model version {version.pk} was pruned on {version.pruned_at:%Y-%m-%d} (retention); "
            "its vectors are gone"
        )
    have = ProductEmbedding.objects.filter(model_version=version).count()
    if not have:
        raise VersionNotReady(f"model version {version.pk} has no vectors yet")
    missing = Product.objects.count() - have
    if require_complete and missing > 0:
        if not queue_missing:
            raise VersionNotReady(
                f"model version {version.pk} lacks vectors for {missing} products; re-embed first"
            )
        # Products created or changed while another version served have no vectors of this one: embed
        # them now, so the same action succeeds once the worker is done (seconds for a few products).
        ids = list(Product.objects.exclude(embeddings__model_version=version).values_list("pk", flat=True))
        embeddings_queue(product_ids=ids, version_id=version.pk)
        raise VersionNotReady(
            f"model version {version.pk} lacks vectors for {len(ids)} products (created or changed since "
            "it served); their embedding is queued: try again in a minute"
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


def model_version_rollback_target() -> ModelVersion | None:
    """The version :func:`model_version_rollback` would activate: activated before the current one, not
    failed, not pruned (None when there is none)."""
    current = ModelVersion.objects.filter(is_active=True).first()
    earlier = ModelVersion.objects.filter(activated_at__isnull=False, pruned_at__isnull=True).exclude(
        status=ModelVersion.Status.FAILED
    )
    if current is not None:
        earlier = earlier.exclude(pk=current.pk).filter(activated_at__lt=current.activated_at)
    return earlier.order_by("-activated_at").first()


def model_version_rollback(*, queue_missing: bool = False) -> ModelVersion:
    """Activate the version that was active before the current one (one action, one transaction).

    Args:
        queue_missing: as in :func:`model_version_activate`.

    Raises:
        VersionNotReady: there is no earlier activated version that is complete.
    """
    previous = model_version_rollback_target()
    if previous is None:
        raise VersionNotReady("no earlier model version to roll back to")
    return model_version_activate(version=previous, require_complete=True, queue_missing=queue_missing)


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
        app.control.revoke(run.celery_task_id)  # never starts
    run.refresh_from_db()
    return run


def model_versions_prune(*, keep: int | None = None) -> list[int]:
    """Delete the vectors and on-disk artifacts of the versions no longer kept (retention).

    Kept: the ``keep`` newest versions, the active one, the rollback target
    (:func:`model_version_rollback_target`) and any version a queued or running training run is still
    building. A pruned version keeps its row (name, metrics, history) with ``status = retired`` and
    ``pruned_at`` set; it can no longer be activated (it has no vectors).

    Args:
        keep: how many of the newest versions keep their vectors (default ``settings.ML_KEEP_VERSIONS``).

    Returns:
        The ids of the versions pruned now.

    Raises:
        ValueError: ``keep`` is below 1.
    """
    keep = settings.ML_KEEP_VERSIONS if keep is None else keep
    if keep < 1:
        raise ValueError(f"ML_KEEP_VERSIONS must be at least 1, got {keep}")
    kept = set(ModelVersion.objects.order_by("-pk").values_list("pk", flat=True)[:keep])
    kept |= set(ModelVersion.objects.filter(is_active=True).values_list("pk", flat=True))
    target = model_version_rollback_target()
    if target is not None:
        kept.add(target.pk)
    kept |= set(
        TrainingRun.objects.filter(
            status__in=[TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING], model_version__isnull=False
        ).values_list("model_version_id", flat=True)
    )
    pruned: list[int] = []
    for version in ModelVersion.objects.filter(pruned_at__isnull=True).exclude(pk__in=kept).order_by("pk"):
        with transaction.atomic():
            locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
            if locked.is_active:  # activated meanwhile
                continue
            deleted, _ = ProductEmbedding.objects.filter(model_version=locked).delete()
            locked.status = ModelVersion.Status.RETIRED
            locked.pruned_at = timezone.now()
            locked.save(update_fields=["status", "pruned_at"])
        if locked.artifact_path:
            folder = Path(locked.artifact_path).parent
            if folder.name == f"version-{locked.pk}":  # only the version's own folder, never a shared one
                shutil.rmtree(folder, ignore_errors=True)
        logger.info("pruned model version %s: %d vector rows and its artifacts", locked.pk, deleted)
        pruned.append(locked.pk)
    return pruned
