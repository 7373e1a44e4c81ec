"""A training run from start to finish: the orchestration behind ``recommender.tasks.train_model``.

Phases, stored on the :class:`~recommender.models.TrainingRun` for the UI: features → training →
evaluation → embedding (progress % and items/s) → activation. The active version keeps serving until
the new one has every vector. Rows are read through :mod:`recommender.ml_bridge`, the model is
trained by :func:`ml.train.train`, and everything is written through :mod:`recommender.services`.

Activation passes a quality gate (:mod:`recommender.gate`): the new version is activated only when it
beats the active one on the popularity-matched protocol (FITB and AUC, both evaluated now on the same
fixed held-out split, each on the features of its own towers), or, when none is active, the best
baseline; a version that tuned the image tower, when it improves photo search and keeps compatibility
within a tolerance (one without, when it also keeps a tuned active version's photo search). Otherwise it stays inactive (status ready, every vector written) with the verdict in
``metrics["gate"]``; a merchandiser can still activate it by hand. A run started with the parameter
``serve_first`` (``make demo``) while no version is active embeds and activates its version before
evaluating it, so a fresh install serves a few minutes sooner; the verdict is still recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection
from django.utils import timezone

from catalog.models import Product
from ml.config import ModelConfig, TrainConfig
from ml.dataset import TrainData
from ml.evaluate import evaluate_all, write_report
from ml.heads import load_heads, save_heads
from ml.inference import Embedder
from ml.model import build_model
from ml.train import TrainResult, train
from recommender import gate, ml_bridge, search_probes
from recommender.model_cache import embedder_for
from recommender.models import ModelVersion, TrainingRun
from recommender.services import (
    catalog_snapshot,
    embeddings_write,
    init_from_active_refusal,
    model_version_activate,
    model_version_create,
    training_run_heartbeat,
)

logger = logging.getLogger(__name__)

#: Progress (%) at which each phase starts.
PROGRESS = {"features": 1.0, "training": 20.0, "evaluation": 72.0, "embedding": 80.0, "done": 100.0}
#: Least seconds between two writes of the features phase's progress (the last one is always written).
FEATURE_PROGRESS_EVERY_S = 1.0
_STOPPED = (TrainingRun.Status.CANCELLED, TrainingRun.Status.FAILED)


class Heartbeat:
    """Context manager: a daemon thread sets ``TrainingRun.heartbeat_at`` every ``interval`` seconds.

    The thread dies with the process, so a SIGKILLed worker leaves a stale heartbeat that
    :func:`recommender.services.training_runs_fail_lost` detects. The thread uses (and closes) its own
    database connection; a failed beat is logged and retried at the next interval.
    """

    def __init__(self, run_id: int, interval: float) -> None:
        self.run_id, self.interval = run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-run-{run_id}", daemon=True)

    def _loop(self) -> None:
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
        training_run_heartbeat(run_id=self.run_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


class RunLog:
    """Writes a run's phase, progress and log tail; a cancel or a "worker lost" verdict wins over it."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.lines: list[str] = []

    def update(self, **fields: Any) -> None:
        """Store ``fields`` on the run (``log=`` appends a timestamped line to its tail) and beat."""
        if "log" in fields:
            self.lines.append(f"{timezone.now():%H:%M:%S} {fields.pop('log')}")
            logger.info("run %s: %s", self.run_id, self.lines[-1])
            fields["log_tail"] = "\n".join(self.lines[-40:])
        qs = TrainingRun.objects.filter(pk=self.run_id)
        if "status" in fields:
            qs = qs.exclude(status__in=_STOPPED)
        qs.update(heartbeat_at=timezone.now(), **fields)

    def cancelled(self) -> bool:
        """Was the run cancelled (UI/API) or failed by reconciliation meanwhile?"""
        return TrainingRun.objects.filter(pk=self.run_id, status__in=_STOPPED).exists()

    def end_cancelled(self, message: str = "cancelled") -> None:
        self.update(phase="cancelled", finished_at=timezone.now(), log=message)


@dataclass
class _Run:
    """What the phases of one run share."""

    run_id: int
    cfg: TrainConfig
    mcfg: ModelConfig
    log: RunLog
    products: list[Product] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    init_from_active: bool = False  # start from the active version's heads (e.g. to tune the image tower)
    bundle: Any = None  # the model whose towers the run tuned (their best weights after training)


def training_run_claim(*, run_id: int) -> TrainingRun | str:
    """Claim a queued run atomically (of two deliveries of the same message, or two workers, one trains).

    Returns:
        The claimed run (now ``running``), or why it was skipped (missing, finished, cancelled, or a
        redelivery of a run a lost worker began).
    """
    run = TrainingRun.objects.filter(pk=run_id).first()
    if run is None:
        return f"run {run_id} does not exist"
    claimed = TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED).update(
        status=TrainingRun.Status.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now()
    )
    if not claimed:
        return f"run {run_id} is {TrainingRun.objects.get(pk=run_id).status}"
    run.refresh_from_db()
    return run


def training_run_execute(*, run: TrainingRun, task_id: str = "") -> dict[str, Any]:
    """Fine-tune on the catalog, register a model version, embed every product, then activate it.

    A cancel (or a failure verdict) is honoured at every phase boundary and, inside training, at the
    next epoch. Errors fail the run (and its version) with the reason and are raised again.

    Returns:
        ``{"run", "version", "metrics"}``, or ``{"cancelled": run id, ...}``.
    """
    log = RunLog(run.pk)
    r = _Run(
        run_id=run.pk,
        cfg=TrainConfig.from_params(run.params),
        mcfg=ml_bridge.model_config(),
        log=log,
        init_from_active=bool(run.params.get("init_from_active")),
    )
    version = None
    try:
        log.update(phase="features", progress=PROGRESS["features"], celery_task_id=task_id, log="started")
        snapshot = catalog_snapshot()  # before reading: later changes count towards the next retrain
        embedder, data, failed = _features(r)
        result = _fit(r, data)
        features = (data.image, data.text)  # of the towers the new heads go with
        if result.heads.tower_state:  # features of the tuned towers for evaluation and the catalog vectors
            embedder = Embedder(r.mcfg, result.heads, cache_dir=settings.ML_FEATURE_CACHE_DIR)
            features = ml_bridge.tuned_tower_features(embedder, r.bundle, r.cfg, data, r.products, failed)
        if log.cancelled():
            log.end_cancelled()
            return {"cancelled": r.run_id}
        version, artifact = _register(r, result, snapshot)
        # a first version asked to serve first (``make demo``) serves while it is evaluated
        early = (
            bool(run.params.get("serve_first")) and not ModelVersion.objects.filter(is_active=True).exists()
        )
        if early:
            ModelVersion.objects.filter(pk=version.pk).update(artifact_path=str(artifact))  # hub pricing
            version.artifact_path = str(artifact)
            _embed(r, version, embedder, result, features, failed)
            _activate(version)
            log.update(
                phase="evaluation", log=f"version {version.pk} serving; evaluating on the held-out split"
            )
        metrics = _evaluate(r, version, data, result, artifact, (embedder, features, failed))
        if early:
            if log.cancelled():
                log.end_cancelled(f"cancelled during evaluation; version {version.pk} stays active")
                return {"cancelled": r.run_id, "version": version.pk}
            outcome = _early_outcome(version, metrics["gate"])
        else:
            # cancelled during evaluation: do not embed the catalog for a version nobody wants
            if log.cancelled():
                ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.RETIRED)
                log.end_cancelled(
                    f"cancelled after evaluation; version {version.pk} kept for its metrics, not embedded"
                )
                return {"cancelled": r.run_id, "version": version.pk}
            _embed(r, version, embedder, result, features, failed)
            if log.cancelled():  # cancelled while embedding: keep the vectors, do not switch versions
                ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.READY)
                log.end_cancelled(f"cancelled; version {version.pk} kept inactive")
                return {"cancelled": r.run_id, "version": version.pk}
            outcome = _gated_outcome(version, metrics["gate"])
        metrics["timings"] = r.timings
        ModelVersion.objects.filter(pk=version.pk).update(metrics=metrics)
        log.update(
            status=TrainingRun.Status.SUCCEEDED,
            phase="done",
            progress=PROGRESS["done"],
            finished_at=timezone.now(),
            log=outcome,
        )
        return {"run": r.run_id, "version": version.pk, "metrics": metrics}
    except Exception as exc:
        logger.exception("training run %s failed", r.run_id)
        if version is not None:  # one serving already (evaluated after activation) keeps serving
            ModelVersion.objects.filter(pk=version.pk, is_active=False).update(
                status=ModelVersion.Status.FAILED
            )
        log.update(
            status=TrainingRun.Status.FAILED,
            finished_at=timezone.now(),
            error=f"{type(exc).__name__}: {exc}"[:2000],  # the traceback goes to the worker log only
            log=f"failed: {type(exc).__name__}: {exc}",
        )
        raise


def _features(r: _Run) -> tuple[Embedder, TrainData, list[tuple[int, str]]]:
    """Tower features of the whole catalog (feature cache) and the training arrays."""
    r.products = ml_bridge.catalog_products()
    if len(r.products) < 2:
        raise ValueError(f"the catalog has {len(r.products)} products; import or upload some first")
    t = time.perf_counter()
    embedder = ml_bridge.zero_shot_embedder(compat_dim=r.cfg.compat_dim, seed=r.cfg.seed)
    img, txt, failed = ml_bridge.tower_features(
        embedder, r.products, progress=True, on_batch=_feature_progress(r)
    )
    r.timings["features_s"] = time.perf_counter() - t
    r.log.update(
        progress=PROGRESS["training"],
        log=f"tower features of {len(r.products)} products in {r.timings['features_s']:.1f} s "
        f"({len(failed)} unreadable photos)",
    )
    data = ml_bridge.train_data(r.products, img, txt, val_fraction=r.cfg.val_fraction)
    return embedder, data, failed


def _activate(version: ModelVersion) -> None:
    """Serve ``version``, then fit the search's photo probes for it (``recommender.search_probes``), so
    that shoppers' first negated queries need not; a failure there only costs that wait."""
    model_version_activate(version=version)
    try:
        logger.info(
            "photo probes of version %s: %s", version.pk, search_probes.probes_warm(version) or "none"
        )
    except Exception:
        logger.warning("photo probes of version %s not fitted ahead", version.pk, exc_info=True)


def _gated_outcome(version: ModelVersion, gate: dict[str, Any]) -> str:
    """Activate ``version`` if the quality gate passed it, else keep it ready; the run's last log line."""
    if gate["passed"]:
        _activate(version)
        return f"version {version.pk} active ({gate['reason']})"
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.READY)
    return (
        f"version {version.pk} kept inactive (ready): {gate['reason']}; "
        "a merchandiser can still activate it by hand"
    )


def _early_outcome(version: ModelVersion, gate: dict[str, Any]) -> str:
    """The last log line of a run whose version served before its evaluation (no version was active):
    it stays active whatever the verdict, which is recorded (``metrics["gate"]``) and said."""
    verdict = "passed" if gate["passed"] else "refused"
    return (
        f"version {version.pk} active since before its evaluation (no version was active); "
        f"quality gate {verdict}: {gate['reason']}"
    )


#: Time of one text through its tower as a share of one photo's (2026-12-03, demo catalog on 2 cores:
#: about 62 photos/s and 210 texts/s): the features phase's time left before any text was encoded.
TEXT_COST = 0.3


def features_eta(done: int, total: int, photo_rate: float | None, text_rate: float | None) -> float | None:
    """Seconds left of the features phase, which counts photos 0..N then texts N..2N (``total`` = 2N).

    Photos left at ``photo_rate`` (inputs/s) plus the texts at ``text_rate`` once measured, before that
    at :data:`TEXT_COST` × a photo's time. None while nothing is measured."""
    half = total // 2
    if done < half:
        return (half - done + half * TEXT_COST) / photo_rate if photo_rate else None
    if text_rate:
        return (total - done) / text_rate
    return (total - done) * TEXT_COST / photo_rate if photo_rate else None


def _feature_progress(r: _Run):
    """The callback ``on_batch(done, 2N)`` of the features phase (photos count 0..N, then texts N..2N):
    stores ``phase_progress`` ``{"phase": "features", "done", "total", "rate" (inputs encoded per s),
    "eta_s"}`` (:func:`features_eta`, photos and texts at their own rates) and moves the run's % from
    ``PROGRESS["features"]`` towards ``PROGRESS["training"]``, at most every
    :data:`FEATURE_PROGRESS_EVERY_S` seconds (always the last call, done == total)."""
    start: list[float] = []  # (time, done) of the first call: cache hits do not count towards the rate
    texts: list[float] = []  # (time, done) of the first call in the texts, and the photos' rate then
    last = [float("-inf")]
    span = PROGRESS["training"] - PROGRESS["features"] - 1.0

    def rate_since(mark: list[float], now: float, done: int) -> float | None:
        return (done - mark[1]) / (now - mark[0]) if now > mark[0] and done > mark[1] else None

    def on_batch(done: int, total: int) -> None:
        now = time.perf_counter()
        if not start:
            start.extend((now, done))
        if done >= total // 2 and not texts:
            texts.extend((now, done, rate_since(start, now, min(done, total // 2)) or 0.0))
        if done < total and now - last[0] < FEATURE_PROGRESS_EVERY_S:
            return
        last[0] = now
        rate = rate_since(start, now, done)
        photo_rate = texts[2] if texts else rate
        eta = features_eta(done, total, photo_rate or None, rate_since(texts, now, done) if texts else None)
        r.log.update(
            progress=PROGRESS["features"] + span * done / max(total, 1),
            items_per_s=rate,
            phase_progress={"phase": "features", "done": done, "total": total, "rate": rate, "eta_s": eta},
        )

    return on_batch


def _fit(r: _Run, data: TrainData) -> TrainResult:
    """Train the heads (and the towers' last blocks when the config asks), reporting each epoch."""
    r.log.update(
        phase="training",
        phase_progress={},
        items_per_s=None,
        log=f"training on {len(data.outfits)} outfits, {len(data.val_outfits)} for validation, "
        f"{len(data.test_outfits)} held out",
    )
    span = PROGRESS["evaluation"] - PROGRESS["training"] - 2.0

    def on_epoch(info: dict[str, Any]) -> None:
        r.log.update(
            progress=PROGRESS["training"] + span * info["progress"],
            step=info["step"],
            loss=info["loss"],
            history=info["history"],
            log=f"epoch {info['epoch']} step {info['step']} loss {info['loss']:.4f} "
            f"val FITB {info['val_fitb']:.3f} val R@10 {info['val_r10']:.3f}",
        )

    init = None
    if r.init_from_active:  # checked when the run started; the active version may have changed since
        if why := init_from_active_refusal():
            raise ValueError(f"init_from_active: {why}")
        active = ModelVersion.objects.get(is_active=True)
        init = load_heads(active.artifact_path)[0]
        r.log.update(log=f"starting from the heads of version {active.pk}")
    t = time.perf_counter()
    bundle = r.bundle = build_model(r.mcfg) if r.cfg.tunes_towers else None  # a private model to fine-tune
    if r.cfg.cache_tower_prefix:
        _cache_prefix(r, data, bundle)
    result = train(
        data,
        r.cfg,
        progress=on_epoch,
        checkpoint_dir=Path(settings.ML_ARTIFACTS_DIR) / f"run-{r.run_id}" / "checkpoints",
        should_stop=r.log.cancelled,
        bundle=bundle,
        cache_dir=Path(settings.ML_FEATURE_CACHE_DIR),  # prefix activations (cache_tower_prefix)
        init_heads=init,
    )
    r.timings["training_s"] = time.perf_counter() - t
    return result


def _cache_prefix(r: _Run, data: TrainData, bundle: Any) -> None:
    """Compute the image tower's prefix activations of every photo and of the phone-photo views
    (``ml.towers.run_prefix``) into the feature cache before training reads them, with
    their progress on the run (tens of minutes on a CPU the first time; read from the cache after)."""
    from ml.towers import run_prefix  # lazy: open_clip, scipy and the augmentation code

    cfg = r.cfg
    r.log.update(
        log=f"image tower prefix activations of {len(data.image)} photos and {cfg.tuning_views} phone-photo "
        f"views of up to {cfg.tuning_view_photos} of them (cached for the next run)"
    )
    t, last = time.perf_counter(), [float("-inf"), "", 0.0]

    def on_batch(what: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if what != last[1]:  # a new phase: its rate counts from here
            last[1:] = [what, now]
        if done < total and now - last[0] < FEATURE_PROGRESS_EVERY_S:
            return
        last[0] = now
        rate = done / max(now - last[2], 1e-9)
        r.log.update(
            items_per_s=rate,
            phase_progress={
                "phase": what, "done": done, "total": total, "rate": rate,
                "eta_s": (total - done) / rate if rate > 0 else None,
            },
        )  # fmt: skip

    run_prefix(data, cfg, bundle, Path(settings.ML_FEATURE_CACHE_DIR), on_batch)
    r.timings["tower_prefix_s"] = time.perf_counter() - t
    r.log.update(phase_progress={}, items_per_s=None)


def _register(r: _Run, result: TrainResult, snapshot: dict[str, Any]) -> tuple[ModelVersion, Path]:
    """A new (inactive) model version with the trained heads saved as its artifact."""
    meta = {"model": r.mcfg.to_dict(), "train": r.cfg.to_dict()}
    version = model_version_create(name=f"{r.mcfg.name} fine-tuned (run {r.run_id})", config=meta)
    ModelVersion.objects.filter(pk=version.pk).update(trained_on=snapshot)
    artifact = Path(settings.ML_ARTIFACTS_DIR) / f"version-{version.pk}" / "heads.pt"
    save_heads(artifact, result.heads, meta)
    r.log.update(
        model_version=version,
        phase="evaluation",
        progress=PROGRESS["evaluation"],
        log="evaluating on the held-out split",
    )
    return version, artifact


def _evaluate(
    r: _Run,
    version: ModelVersion,
    data: TrainData,
    result: TrainResult,
    artifact: Path,
    towers: tuple[Embedder, tuple[np.ndarray, np.ndarray], list[tuple[int, str]]],
) -> dict[str, Any]:
    """Held-out evaluation against the baselines and the active version, its report beside the artifact,
    and the quality gate's verdict (:mod:`recommender.gate`); metrics stored.

    ``data`` holds the base towers' features (the baselines' and zero-shot's); ``towers`` is
    ``(embedder, features, failed)`` of the towers the new heads go with (``failed``: unreadable photos'
    rows); the active version is evaluated on its own towers' features (:func:`recommender.gate.incumbent`).
    When either version tuned the image tower, both are also measured on photo search.
    """
    t = time.perf_counter()
    embedder, features, failed = towers
    metrics: dict[str, Any] = {}
    if data.test_outfits:
        heads_by_name = {"fine-tuned": result.heads}
        own = {"fine-tuned": features}
        active = gate.incumbent(version, r.products, (data.image, data.text))
        if active is not None:
            heads_by_name[active.name] = active.heads
            own[active.name] = active.features
        results = evaluate_all(data, heads_by_name, features=own, memory_picks=settings.LOOKS_MEMORY_PICKS)
        plot_data = replace(data, image=features[0], text=features[1])
        write_report(results, artifact.parent, history=result.history, data=plot_data, heads=result.heads)
        metrics = {"evaluation": results}
        metrics["gate"] = gate.quality_gate(results, incumbent=active.name if active else None)
        tuned = gate.tunes_photos(result.heads)
        if active is not None and (tuned or gate.tunes_photos(active.heads)):
            r.log.update(log="measuring photo search with phone photos against the active version")
            photo = gate.photo_search_check(
                data,
                {
                    "fine-tuned": (result.heads, embedder, features[0]),
                    active.name: (active.heads, embedder_for(active.version), active.features[0]),
                },
                skip=[row for row, _ in failed],
            )
            for name, row in photo.items():
                results[name].update(row)
            if tuned:
                metrics["gate"] = gate.photo_gate(results, photo, incumbent=active.name)
            else:
                metrics["gate"] = gate.photo_kept(metrics["gate"], photo, incumbent=active.name)
    else:
        metrics["gate"] = {"passed": False, "reason": "no held-out outfits to evaluate on"}
    r.timings["evaluation_s"] = time.perf_counter() - t
    metrics.update(
        {
            "train_steps": result.steps,
            "best_epoch": result.best_epoch,
            "best_val": result.best_val,
            "train_samples_per_s": result.samples_per_s,
            "timings": r.timings,
        }
    )
    ModelVersion.objects.filter(pk=version.pk).update(artifact_path=str(artifact), metrics=metrics)
    return metrics


def _embed(
    r: _Run,
    version: ModelVersion,
    embedder: Embedder,
    result: TrainResult,
    features: tuple[np.ndarray, np.ndarray],
    failed: list[tuple[int, str]],
) -> None:
    """Vectors of every product for the new version, written in bulk with progress and items/s."""
    r.log.update(phase="embedding", progress=PROGRESS["embedding"], log="embedding the catalog")
    t = time.perf_counter()
    embedder.heads = result.heads.eval()
    vecs = embedder.vectors_from_features(*features, failed)
    span = PROGRESS["done"] - PROGRESS["embedding"] - 1.0

    def on_batch(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - t, 1e-9)
        r.log.update(
            progress=PROGRESS["embedding"] + span * done / max(total, 1),
            items_per_s=rate,
            log=f"embedded {done}/{total} products ({rate:.0f} items/s)",
        )

    version.refresh_from_db()
    embeddings_write(
        version=version,
        product_ids=[p.pk for p in r.products],
        image=vecs.image,
        text=vecs.text,
        fused=vecs.fused,
        compat=vecs.compat,
        progress=on_batch,
    )
    r.timings["embedding_s"] = time.perf_counter() - t
