"""Celery tasks: the one Django-aware module of ``ml``. They load rows, call ``ml``, write through services.

Tasks take ids, re-read their rows and are safe to run twice (vector writes are upserts on
(product, version)). Transient errors (a database or Redis connection dropped) are retried with
exponential backoff. The database is the outbox: ``reconcile`` (beat, and every worker start) embeds
products that have no vectors for the active version, fails training runs whose worker died
(stale heartbeat) and sends runs whose message never reached the broker.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import kombu.exceptions
import numpy as np
import redis.exceptions
from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from catalog.models import Outfit, Product
from ml.config import ModelConfig, TrainConfig
from ml.slots import SLOT_INDEX

logger = logging.getLogger(__name__)

_EMBEDDERS: dict[int, Any] = {}

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


class Heartbeat:
    """Context manager: a daemon thread sets ``TrainingRun.heartbeat_at`` every ``interval`` seconds.

    The thread dies with the process, so a SIGKILLed worker leaves a stale heartbeat that
    ``recommender.services.training_runs_fail_lost`` detects. The thread uses (and closes) its own
    database connection; a failed beat is logged and retried at the next interval.
    """

    def __init__(self, run_id: int, interval: float) -> None:
        self.run_id, self.interval = run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-run-{run_id}", daemon=True)

    def _loop(self) -> None:
        from recommender.services import training_run_heartbeat

        try:
            while not self._stop.wait(self.interval):
                try:
                    training_run_heartbeat(run_id=self.run_id)
                except Exception as exc:  # the database blinked; try again next interval
                    logger.warning("heartbeat of run %s failed: %s", self.run_id, exc)
                    connection.close()
        finally:
            connection.close()

    def __enter__(self) -> Heartbeat:
        from recommender.services import training_run_heartbeat

        training_run_heartbeat(run_id=self.run_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


def model_config() -> ModelConfig:
    """The model the settings ask for (``ML_MODEL_NAME``, ``ML_PRETRAINED``, ``EMBEDDING_DIM``, ``ML_DEVICE``)."""
    return ModelConfig(
        name=settings.ML_MODEL_NAME,
        pretrained=settings.ML_PRETRAINED,
        embed_dim=settings.EMBEDDING_DIM,
        device=settings.ML_DEVICE,
    )


def embedder_for(version) -> Any:
    """The :class:`ml.inference.Embedder` of a model version, built once per process."""
    from ml.inference import Embedder
    from ml.train import load_heads

    if version.pk not in _EMBEDDERS:
        heads, _ = load_heads(version.artifact_path)
        cfg = ModelConfig(**version.config["model"])
        _EMBEDDERS[version.pk] = Embedder(cfg, heads, cache_dir=settings.ML_FEATURE_CACHE_DIR)
    return _EMBEDDERS[version.pk]


def _image_path(p: Product) -> str:
    return p.image.path if p.image else ""


def build_train_data(
    products: list[Product],
    img: np.ndarray,
    txt: np.ndarray,
    *,
    val_fraction: float,
    seed: int,
    heldout_fraction: float = 0.1,
):
    """Arrays for :func:`ml.train.train` from products (in order) and their tower features.

    Splits (all seeded and stable per SKU / outfit): outfits of the ``test`` split are held out for
    evaluation; ``val_fraction`` of the other outfits validate early stopping; ``heldout_fraction`` of
    the products (by SKU) never enter the image↔text loss and form the text→item evaluation gallery,
    and ``val_fraction`` of the rest validate it.
    """
    from ml.train import TrainData, category_ids, split_items, split_outfits

    index = {p.pk: i for i, p in enumerate(products)}

    outfits: dict[int, tuple[str, list[int]]] = {}
    rows = Outfit.objects.values_list("pk", "split", "items__product_id").order_by("pk", "items__position")
    for oid, split, pid in rows:
        if pid in index:
            outfits.setdefault(oid, (split, []))[1].append(index[pid])
    train, val, test = split_outfits(
        [
            (oid, np.asarray(items, dtype=np.int64), split == Outfit.Split.TEST)
            for oid, (split, items) in outfits.items()
            if len(items) >= 2
        ],
        val_fraction=val_fraction,
        seed=seed,
    )
    heldout, val_items = split_items(
        [p.sku for p in products], heldout_fraction=heldout_fraction, val_fraction=val_fraction, seed=seed
    )
    return TrainData(
        image=img,
        text=txt,
        heldout_items=heldout,
        val_items=val_items,
        slots=np.asarray([SLOT_INDEX[p.slot] for p in products], dtype=np.int64),
        types=category_ids([p.product_type for p in products]),
        outfits=train,
        val_outfits=val,
        test_outfits=test,
        item_ids=np.asarray([p.pk for p in products], dtype=np.int64),
        attrs={
            a: category_ids([getattr(p, a) for p in products]) for a in ("section", "department", "colour")
        },
        image_paths=[_image_path(p) for p in products],
        texts=[p.text for p in products],
    )


@shared_task(
    bind=True,
    name="ml.tasks.train_model",
    acks_late=True,
    reject_on_worker_lost=False,
    time_limit=settings.ML_TRAIN_TIME_LIMIT_S,
    soft_time_limit=settings.ML_TRAIN_TIME_LIMIT_S - 60,
)
def train_model(self, run_id: int) -> dict[str, Any]:
    """Fine-tune on the catalog, register a model version, embed every product, then activate it.

    Phases (stored on the :class:`TrainingRun` for the UI): features → training → evaluation →
    embedding (progress % and items/s) → activation. The active version keeps serving until the new
    one has every vector. A heartbeat thread marks the run alive; ``acks_late`` keeps the message
    until the end, but a worker lost mid-run does not requeue it (``reject_on_worker_lost=False``: a
    run that killed its worker, e.g. out of memory, must not loop): reconciliation fails the run and
    a redelivered message finds it finished and skips. Only a queued run starts; a run failed or
    cancelled meanwhile stops at the next epoch.
    """
    from recommender.models import TrainingRun

    run = TrainingRun.objects.filter(pk=run_id).first()
    if run is None:
        return {"skipped": f"run {run_id} does not exist"}
    # Claim the run atomically: of two deliveries of the same message (or two workers), one trains.
    claimed = TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED).update(
        status=TrainingRun.Status.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now()
    )
    if not claimed:  # finished, cancelled, or a redelivery of a run a lost worker began
        return {"skipped": f"run {run_id} is {TrainingRun.objects.get(pk=run_id).status}"}
    with Heartbeat(run_id, settings.ML_HEARTBEAT_INTERVAL_S):
        return _train(self, run)


def _train(task, run) -> dict[str, Any]:
    """The body of :func:`train_model` (its heartbeat thread runs meanwhile)."""
    from ml.evaluate import evaluate_all, write_report
    from ml.inference import Embedder
    from ml.train import save_heads, train, zero_shot_heads
    from recommender.models import ModelVersion, TrainingRun
    from recommender.services import (
        catalog_snapshot,
        embeddings_write,
        model_version_activate,
        model_version_create,
    )

    run_id = run.pk
    log: list[str] = []
    timings: dict[str, float] = {}

    def update(**fields: Any) -> None:
        if "log" in fields:
            log.append(f"{timezone.now():%H:%M:%S} {fields.pop('log')}")
            logger.info("run %s: %s", run_id, log[-1])
            fields["log_tail"] = "\n".join(log[-40:])
        qs = TrainingRun.objects.filter(pk=run_id)
        if "status" in fields:  # a cancel (UI/API) or a "worker lost" verdict wins over the worker's updates
            qs = qs.exclude(status__in=[TrainingRun.Status.CANCELLED, TrainingRun.Status.FAILED])
        qs.update(heartbeat_at=timezone.now(), **fields)

    def cancelled() -> bool:
        return TrainingRun.objects.filter(
            pk=run_id, status__in=[TrainingRun.Status.CANCELLED, TrainingRun.Status.FAILED]
        ).exists()

    version = None
    try:
        update(phase="features", progress=1.0, celery_task_id=task.request.id or "", log="started")
        known = {f.name for f in TrainConfig.__dataclass_fields__.values()}
        cfg = TrainConfig(**{k: v for k, v in run.params.items() if k in known})
        mcfg = model_config()
        snapshot = catalog_snapshot()  # before reading: later changes count towards the next retrain
        products = list(Product.objects.order_by("pk"))
        if len(products) < 2:
            raise ValueError(f"the catalog has {len(products)} products; import or upload some first")
        t = time.perf_counter()
        embedder = Embedder(
            mcfg,
            zero_shot_heads(mcfg.embed_dim, cfg.compat_dim, cfg.seed),
            cache_dir=settings.ML_FEATURE_CACHE_DIR,
        )
        img, txt, failed = embedder.tower_features(
            [_image_path(p) for p in products], [p.text for p in products], progress=True
        )
        timings["features_s"] = time.perf_counter() - t
        update(
            progress=20.0,
            log=f"tower features of {len(products)} products in {timings['features_s']:.1f} s "
            f"({len(failed)} unreadable photos)",
        )
        data = build_train_data(products, img, txt, val_fraction=cfg.val_fraction, seed=cfg.seed)
        update(
            phase="training",
            log=f"training on {len(data.outfits)} outfits, {len(data.val_outfits)} for "
            f"validation, {len(data.test_outfits)} held out",
        )

        def on_epoch(info: dict[str, Any]) -> None:
            update(
                progress=20.0 + 50.0 * info["progress"],
                step=info["step"],
                loss=info["loss"],
                history=info["history"],
                log=f"epoch {info['epoch']} step {info['step']} loss {info['loss']:.4f} "
                f"val FITB {info['val_fitb']:.3f} val R@10 {info['val_r10']:.3f}",
            )

        t = time.perf_counter()
        ckdir = Path(settings.ML_ARTIFACTS_DIR) / f"run-{run_id}"
        bundle = None
        if cfg.tunes_towers:  # a private model whose last blocks are trained (ml.towers)
            from ml.model import build_model

            bundle = build_model(mcfg)
        result = train(
            data,
            cfg,
            progress=on_epoch,
            checkpoint_dir=ckdir / "checkpoints",
            should_stop=cancelled,
            bundle=bundle,
        )
        if result.heads.tower_state:  # features of the tuned towers for evaluation and the catalog vectors
            embedder = Embedder(mcfg, result.heads, cache_dir=settings.ML_FEATURE_CACHE_DIR)
            img, txt, _ = embedder.tower_features(
                [_image_path(p) for p in products], [p.text for p in products], progress=True
            )
            data.image, data.text = img, txt
        timings["training_s"] = time.perf_counter() - t
        if cancelled():
            update(phase="cancelled", finished_at=timezone.now(), log="cancelled")
            return {"cancelled": run_id}
        version = model_version_create(
            name=f"{mcfg.name} fine-tuned (run {run_id})",
            config={"model": mcfg.to_dict(), "train": cfg.to_dict()},
        )
        ModelVersion.objects.filter(pk=version.pk).update(trained_on=snapshot)
        artifact = Path(settings.ML_ARTIFACTS_DIR) / f"version-{version.pk}" / "heads.pt"
        save_heads(artifact, result.heads, {"model": mcfg.to_dict(), "train": cfg.to_dict()})
        update(
            model_version=version, phase="evaluation", progress=72.0, log="evaluating on the held-out split"
        )
        t = time.perf_counter()
        metrics: dict[str, Any] = {}
        if data.test_outfits:
            results = evaluate_all(data, {"fine-tuned": result.heads}, seed=cfg.seed)
            write_report(results, artifact.parent, history=result.history, data=data, heads=result.heads)
            metrics = {"evaluation": results}
        timings["evaluation_s"] = time.perf_counter() - t
        metrics.update(
            {
                "train_steps": result.steps,
                "best_epoch": result.best_epoch,
                "best_val": result.best_val,
                "train_samples_per_s": result.samples_per_s,
                "timings": timings,
            }
        )
        ModelVersion.objects.filter(pk=version.pk).update(artifact_path=str(artifact), metrics=metrics)
        version.refresh_from_db()
        if cancelled():  # cancelled during evaluation: do not embed the catalog for a version nobody wants
            ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.RETIRED)
            update(
                phase="cancelled",
                finished_at=timezone.now(),
                log=f"cancelled after evaluation; version {version.pk} kept for its metrics, not embedded",
            )
            return {"cancelled": run_id, "version": version.pk}
        update(phase="embedding", progress=80.0, log="embedding the catalog")
        t = time.perf_counter()
        embedder.heads = result.heads.eval()
        vecs = embedder.vectors_from_features(img, txt, failed)

        def on_batch(done: int, total: int) -> None:
            rate = done / max(time.perf_counter() - t, 1e-9)
            update(
                progress=80.0 + 19.0 * done / max(total, 1),
                items_per_s=rate,
                log=f"embedded {done}/{total} products ({rate:.0f} items/s)",
            )

        embeddings_write(
            version=version,
            product_ids=[p.pk for p in products],
            image=vecs.image,
            text=vecs.text,
            fused=vecs.fused,
            compat=vecs.compat,
            progress=on_batch,
        )
        timings["embedding_s"] = time.perf_counter() - t
        if cancelled():  # cancelled while embedding: keep the vectors, do not switch versions
            ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.READY)
            update(
                phase="cancelled",
                finished_at=timezone.now(),
                log=f"cancelled; version {version.pk} kept inactive",
            )
            return {"cancelled": run_id, "version": version.pk}
        model_version_activate(version=version)
        metrics["timings"] = timings
        ModelVersion.objects.filter(pk=version.pk).update(metrics=metrics)
        update(
            status=TrainingRun.Status.SUCCEEDED,
            phase="done",
            progress=100.0,
            finished_at=timezone.now(),
            log=f"version {version.pk} active",
        )
        try:
            embed_missing.delay()  # products created while we trained
        except Exception as exc:  # broker down: the next reconciliation does it
            logger.warning("could not queue embed_missing after run %s: %s", run_id, exc)
        return {"run": run_id, "version": version.pk, "metrics": metrics}
    except Exception as exc:
        logger.exception("training run %s failed", run_id)
        if version is not None:
            ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.FAILED)
        update(
            status=TrainingRun.Status.FAILED,
            finished_at=timezone.now(),
            error=f"{type(exc).__name__}: {exc}"[:2000],  # the traceback goes to the worker log only
            log=f"failed: {type(exc).__name__}: {exc}",
        )
        raise


@shared_task(
    bind=True,
    name="ml.tasks.embed_products",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    **EMBED_LIMITS,
    **RETRY,
)
def embed_products(self, product_ids: list[int], version_id: int | None = None) -> dict[str, Any]:
    """Embed these products with the active (or given) model version and upsert their vectors.

    Idempotent: a second delivery overwrites the same rows (unique (product, version) upsert), so the
    message is acknowledged late and requeued when its worker dies. Unknown ids are skipped.
    """
    from recommender.models import ModelVersion
    from recommender.services import embeddings_write

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
    vecs = embedder_for(version).embed_items([_image_path(p) for p in products], [p.text for p in products])
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


@shared_task(name="ml.tasks.embed_missing", ignore_result=True, **EMBED_LIMITS, **RETRY)
def embed_missing(batch_size: int = 256) -> dict[str, Any]:
    """Reconciliation: queue embedding of every product that has no vector for the active version.

    Returns:
        ``{"queued": number of products, "version": active version id}``.
    """
    from recommender.models import ModelVersion

    version = ModelVersion.objects.filter(is_active=True).first()
    if version is None:
        return {"queued": 0}
    missing = list(
        Product.objects.exclude(embeddings__model_version=version).values_list("pk", flat=True).order_by("pk")
    )
    for i in range(0, len(missing), batch_size):
        embed_products.delay(product_ids=missing[i : i + batch_size], version_id=version.pk)
    if missing:
        logger.info("reconcile: queued %d products without vectors for version %s", len(missing), version.pk)
    return {"queued": len(missing), "version": version.pk}


@shared_task(name="ml.tasks.reconcile", ignore_result=True, **EMBED_LIMITS, **RETRY)
def reconcile() -> dict[str, Any]:
    """The database is the outbox: repair what a dead worker or a broker outage left behind.

    1. runs whose heartbeat is older than ``ML_HEARTBEAT_TIMEOUT_S`` → failed ("worker lost");
    2. queued runs whose message never reached the broker → sent again;
    3. products without vectors for the active version → ``embed_products`` queued.

    Runs on beat every ``ML_RECONCILE_EVERY_S`` seconds and once at every worker start.
    """
    from recommender.services import training_runs_fail_lost, training_runs_requeue

    lost = training_runs_fail_lost()
    requeued = training_runs_requeue()
    return {"failed_runs": lost, "requeued_runs": requeued, **embed_missing.run()}


@shared_task(name="ml.tasks.prune_model_versions", ignore_result=True, **EMBED_LIMITS, **RETRY)
def prune_model_versions(keep: int | None = None) -> dict[str, Any]:
    """Retention: delete vectors and artifacts of versions beyond the newest ``keep`` (``ML_KEEP_VERSIONS``),
    never the active one or the rollback target (:func:`recommender.services.model_versions_prune`)."""
    from recommender.services import model_versions_prune

    return {"pruned": model_versions_prune(keep=keep)}


@shared_task(name="ml.tasks.retrain_if_changed", ignore_result=True, **RETRY)
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
    from recommender.models import ModelVersion
    from recommender.services import TrainingRunBusy, catalog_changed_fraction, training_run_start

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


__all__ = [
    "train_model",
    "embed_products",
    "embed_missing",
    "reconcile",
    "prune_model_versions",
    "retrain_if_changed",
    "Heartbeat",
]
