"""Celery tasks: the one Django-aware module of ``ml``. They load rows, call ``ml``, write through services.

Tasks take ids, re-read their rows and are safe to run twice (vector writes are upserts).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from celery import shared_task
from django.conf import settings
from django.utils import timezone

from catalog.models import Outfit, Product
from ml.config import ModelConfig, TrainConfig
from ml.slots import SLOT_INDEX

logger = logging.getLogger(__name__)

_EMBEDDERS: dict[int, Any] = {}


def model_config() -> ModelConfig:
    """The model the settings ask for (``ML_MODEL_NAME``, ``ML_PRETRAINED``, ``EMBEDDING_DIM``, ``ML_DEVICE``)."""
    return ModelConfig(name=settings.ML_MODEL_NAME, pretrained=settings.ML_PRETRAINED,
                       embed_dim=settings.EMBEDDING_DIM, device=settings.ML_DEVICE)  # fmt: skip


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
    products: list[Product], img: np.ndarray, txt: np.ndarray, *, val_fraction: float, seed: int,
    heldout_fraction: float = 0.1,
):  # fmt: skip
    """Arrays for :func:`ml.train.train` from products (in order) and their tower features.

    Splits (all seeded and stable per SKU / outfit): outfits of the ``test`` split are held out for
    evaluation; ``val_fraction`` of the other outfits validate early stopping; ``heldout_fraction`` of
    the products (by SKU) never enter the image↔text loss and form the text→item evaluation gallery,
    and ``val_fraction`` of the rest validate it.
    """
    from ml.data import split_is_test
    from ml.train import TrainData

    index = {p.pk: i for i, p in enumerate(products)}

    def ids(values: list[str]) -> np.ndarray:
        vocab: dict[str, int] = {}
        return np.asarray([vocab.setdefault(v, len(vocab)) for v in values], dtype=np.int64)

    outfits: dict[int, tuple[str, list[int]]] = {}
    rows = Outfit.objects.values_list("pk", "split", "items__product_id").order_by("pk", "items__position")
    for oid, split, pid in rows:
        if pid in index:
            outfits.setdefault(oid, (split, []))[1].append(index[pid])
    train, val, test = [], [], []
    for oid, (split, items) in outfits.items():
        if len(items) < 2:
            continue
        arr = np.asarray(items, dtype=np.int64)
        if split == Outfit.Split.TEST:
            test.append(arr)
        elif split_is_test(f"val-{oid}", val_fraction, seed):
            val.append(arr)
        else:
            train.append(arr)
    is_heldout = [split_is_test(f"item-{p.sku}", heldout_fraction, seed) for p in products]
    heldout = [i for i, h in enumerate(is_heldout) if h]
    val_items = [i for i, (p, h) in enumerate(zip(products, is_heldout))
                 if not h and split_is_test(f"val-item-{p.sku}", val_fraction, seed)]  # fmt: skip
    return TrainData(
        image=img, text=txt,
        heldout_items=np.asarray(heldout, dtype=np.int64), val_items=np.asarray(val_items, dtype=np.int64),
        slots=np.asarray([SLOT_INDEX[p.slot] for p in products], dtype=np.int64),
        types=ids([p.product_type for p in products]),
        outfits=train, val_outfits=val, test_outfits=test,
        item_ids=np.asarray([p.pk for p in products], dtype=np.int64),
        attrs={"section": ids([p.section for p in products]), "department": ids([p.department for p in products]),
               "colour": ids([p.colour for p in products])},
    )  # fmt: skip


@shared_task(bind=True, acks_late=True, name="ml.tasks.train_model")
def train_model(self, run_id: int) -> dict[str, Any]:
    """Fine-tune on the catalog, register a model version, embed every product, then activate it.

    Phases (stored on the :class:`TrainingRun` for the UI): features → training → evaluation →
    embedding → activation. The active version keeps serving until the new one has every vector.
    """
    from ml.evaluate import evaluate_all, write_report
    from ml.inference import Embedder
    from ml.train import save_heads, train, zero_shot_heads
    from recommender.models import ModelVersion, TrainingRun
    from recommender.services import embeddings_write, model_version_activate, model_version_create

    run = TrainingRun.objects.get(pk=run_id)
    if run.status not in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING):
        return {"skipped": f"run {run_id} is {run.status}"}
    log: list[str] = []
    timings: dict[str, float] = {}

    def update(**fields: Any) -> None:
        if "log" in fields:
            log.append(f"{timezone.now():%H:%M:%S} {fields.pop('log')}")
            logger.info("run %s: %s", run_id, log[-1])
            fields["log_tail"] = "\n".join(log[-40:])
        qs = TrainingRun.objects.filter(pk=run_id)
        if "status" in fields:  # a cancel from the UI/API wins over the worker's own status updates
            qs = qs.exclude(status=TrainingRun.Status.CANCELLED)
        qs.update(**fields)

    def cancelled() -> bool:
        return TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.CANCELLED).exists()

    version = None
    try:
        update(status=TrainingRun.Status.RUNNING, started_at=timezone.now(), phase="features", progress=1.0,
               celery_task_id=self.request.id or "", log="started")  # fmt: skip
        known = {f.name for f in TrainConfig.__dataclass_fields__.values()}
        cfg = TrainConfig(**{k: v for k, v in run.params.items() if k in known})
        mcfg = model_config()
        products = list(Product.objects.order_by("pk"))
        if len(products) < 2:
            raise ValueError(f"the catalog has {len(products)} products; import or upload some first")
        t = time.perf_counter()
        embedder = Embedder(mcfg, zero_shot_heads(mcfg.embed_dim, cfg.compat_dim, cfg.seed),
                            cache_dir=settings.ML_FEATURE_CACHE_DIR)  # fmt: skip
        img, txt, failed = embedder.tower_features([_image_path(p) for p in products], [p.text for p in products],
                                                   progress=True)  # fmt: skip
        timings["features_s"] = time.perf_counter() - t
        update(progress=20.0, log=f"tower features of {len(products)} products in {timings['features_s']:.1f} s "
               f"({len(failed)} unreadable photos)")  # fmt: skip
        data = build_train_data(products, img, txt, val_fraction=cfg.val_fraction, seed=cfg.seed)
        update(phase="training", log=f"training on {len(data.outfits)} outfits, {len(data.val_outfits)} for "
               f"validation, {len(data.test_outfits)} held out")  # fmt: skip

        def on_epoch(info: dict[str, Any]) -> None:
            update(progress=20.0 + 50.0 * info["progress"], step=info["step"], loss=info["loss"],
                   history=info["history"], log=f"epoch {info['epoch']} step {info['step']} loss {info['loss']:.4f} "
                   f"val FITB {info['val_fitb']:.3f} val R@10 {info['val_r10']:.3f}")  # fmt: skip

        t = time.perf_counter()
        ckdir = Path(settings.ML_ARTIFACTS_DIR) / f"run-{run_id}"
        result = train(
            data, cfg, progress=on_epoch, checkpoint_dir=ckdir / "checkpoints", should_stop=cancelled
        )
        timings["training_s"] = time.perf_counter() - t
        if cancelled():
            update(finished_at=timezone.now(), log="cancelled")
            return {"cancelled": run_id}
        version = model_version_create(name=f"{mcfg.name} fine-tuned (run {run_id})",
                                       config={"model": mcfg.to_dict(), "train": cfg.to_dict()})  # fmt: skip
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
        metrics.update({"train_steps": result.steps, "best_epoch": result.best_epoch, "best_val": result.best_val,
                        "train_samples_per_s": result.samples_per_s, "timings": timings})  # fmt: skip
        ModelVersion.objects.filter(pk=version.pk).update(artifact_path=str(artifact), metrics=metrics)
        version.refresh_from_db()
        update(phase="embedding", progress=80.0, log="embedding the catalog")
        t = time.perf_counter()
        embedder.heads = result.heads.eval()
        vecs = embedder.vectors_from_features(img, txt, failed)
        embeddings_write(version=version, product_ids=[p.pk for p in products], image=vecs.image, text=vecs.text,
                         fused=vecs.fused, compat=vecs.compat)  # fmt: skip
        timings["embedding_s"] = time.perf_counter() - t
        if cancelled():  # cancelled while embedding: keep the vectors, do not switch versions
            ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.READY)
            update(finished_at=timezone.now(), log=f"cancelled; version {version.pk} kept inactive")
            return {"cancelled": run_id, "version": version.pk}
        model_version_activate(version=version)
        metrics["timings"] = timings
        ModelVersion.objects.filter(pk=version.pk).update(metrics=metrics)
        update(status=TrainingRun.Status.SUCCEEDED, phase="done", progress=100.0, finished_at=timezone.now(),
               log=f"version {version.pk} active")  # fmt: skip
        embed_missing.delay()  # products created while we trained
        return {"run": run_id, "version": version.pk, "metrics": metrics}
    except Exception as exc:
        logger.exception("training run %s failed", run_id)
        if version is not None:
            ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.FAILED)
        update(status=TrainingRun.Status.FAILED, finished_at=timezone.now(),
               error=f"{type(exc).__name__}: {exc}"[:2000],  # the traceback goes to the worker log only
               log=f"failed: {type(exc).__name__}: {exc}")  # fmt: skip
        raise


@shared_task(bind=True, acks_late=True, name="ml.tasks.embed_products", autoretry_for=(ConnectionError,),
             retry_backoff=True, max_retries=5)  # fmt: skip
def embed_products(self, product_ids: list[int], version_id: int | None = None) -> dict[str, Any]:
    """Embed these products with the active (or given) model version and upsert their vectors.

    Idempotent: a second delivery overwrites the same rows. Unknown ids are skipped.
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
    n = embeddings_write(version=version, product_ids=[p.pk for p in products], image=vecs.image, text=vecs.text,
                         fused=vecs.fused, compat=vecs.compat)  # fmt: skip
    return {"embedded": n, "version": version.pk, "seconds": time.perf_counter() - t,
            "failed_images": [products[r].pk for r, _ in vecs.failed]}  # fmt: skip


@shared_task(name="ml.tasks.embed_missing")
def embed_missing(batch_size: int = 256) -> dict[str, Any]:
    """Reconciliation: queue embedding of every product that has no vector for the active version."""
    from recommender.models import ModelVersion

    version = ModelVersion.objects.filter(is_active=True).first()
    if version is None:
        return {"queued": 0}
    missing = list(
        Product.objects.exclude(embeddings__model_version=version).values_list("pk", flat=True).order_by("pk")
    )
    for i in range(0, len(missing), batch_size):
        embed_products.delay(product_ids=missing[i : i + batch_size], version_id=version.pk)
    return {"queued": len(missing), "version": version.pk}


__all__ = ["train_model", "embed_products", "embed_missing"]
