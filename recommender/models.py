"""Model registry and vector store: model versions, training runs and per-version product vectors.

Vectors live in PostgreSQL (pgvector) with HNSW indexes. All stored vectors are L2-normalised (unit
hypersphere), so the inner product equals cosine similarity; the indexes use ``vector_ip_ops`` and the
queries order by the bare ``<#>`` operator (negative inner product) ascending, which the index serves.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from pgvector.django import HnswIndex, VectorField

from catalog.models import Product
from ml.audience import AUDIENCE_GROUPS, UNISEX
from ml.slots import SLOTS

#: Vector columns with one partial HNSW index per slot (``WHERE slot = '<slot>'``).
SLOT_INDEXED_COLUMNS = ("fused", "compat")


def slot_index_name(column: str, slot: str) -> str:
    """Name of the partial HNSW index of ``column`` for one slot: ``emb_fused_shoes_hnsw``,
    ``emb_compat_one_hnsw`` for ``one-piece`` (the first word: Django caps index names at 30 chars)."""
    return f"emb_{column}_{slot.split('-')[0]}_hnsw"


assert len({slot_index_name("compat", s) for s in SLOTS}) == len(SLOTS), "slot index names must be unique"


class ModelVersion(models.Model):
    """A trained (or zero-shot) model: its config, artifact, evaluation metrics and lifecycle state.

    Exactly one version is active (a partial unique constraint); the site serves its vectors.
    """

    class Status(models.TextChoices):
        TRAINING = "training", "training"
        EMBEDDING = "embedding", "embedding the catalog"
        READY = "ready", "ready"
        FAILED = "failed", "failed"
        RETIRED = "retired", "retired"

    name = models.CharField(max_length=128)
    config = models.JSONField(default=dict)
    artifact_path = models.CharField(max_length=512, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.TRAINING)
    is_active = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    #: What the version was trained on (``recommender.services.catalog_snapshot``): product and outfit
    #: counts and the newest ``updated_at``/``created_at``; ``retrain_if_changed`` compares against it.
    trained_on = models.JSONField(default=dict, blank=True)
    #: When ``prune_model_versions`` deleted this version's vectors and artifacts (it cannot serve again).
    pruned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=models.Q(is_active=True), name="one_active_model_version"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} (v{self.pk}{', active' if self.is_active else ''})"


class TrainingRun(models.Model):
    """One fine-tuning run, with the progress the UI shows while it runs.

    At most one run is queued or running at a time (a partial unique index, ``one_busy_training_run``).
    The task refreshes ``heartbeat_at`` every ``ML_HEARTBEAT_INTERVAL_S`` seconds from a thread; a run
    whose heartbeat is older than ``ML_HEARTBEAT_TIMEOUT_S`` lost its worker (SIGKILL, OOM, power) and
    the reconciliation marks it failed.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    model_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL)
    params = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    phase = models.CharField(max_length=64, blank=True)
    progress = models.FloatField(default=0.0)  # percent, 0..100
    step = models.IntegerField(default=0)
    loss = models.FloatField(null=True, blank=True)
    history = models.JSONField(default=dict, blank=True)
    log_tail = models.TextField(blank=True)
    error = models.TextField(blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    items_per_s = models.FloatField(null=True, blank=True)  # throughput of the current phase (embedding)
    # How far the current phase is in items, e.g. {"phase": "features", "done": 64, "total": 160,
    # "rate": 21.3 (items/s), "eta_s": 4.5}; {} when the phase reports none.
    phase_progress = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                models.Value(True),
                condition=models.Q(status__in=["queued", "running"]),
                name="one_busy_training_run",
            )
        ]

    def __str__(self) -> str:
        return f"TrainingRun {self.pk} ({self.status})"


class ProductEmbedding(models.Model):
    """The vectors of one product under one model version (one row per product and version).

    ``image``/``text``: general space (image↔text aligned, similar items and text search), unit norm.
    ``fused``: normalised mean of image and text, for similar items by look and description.
    ``compat``: type-aware compatibility space (complete-the-look), unit norm.
    ``slot`` and ``audience_group`` (who the product is for, :func:`ml.audience.audience_group` of its
    audience, section and department) are copied from the product so filtered index scans need no join.
    ``hub_score``: the product's offset in complete-the-look under this version, ≥ 0 (its price in "no
    item fills more than a few percent of its slot's lists", :mod:`recommender.hubness`); written with
    the vectors (``recommender.services.embeddings_write``).
    """

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="embeddings")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="embeddings")
    slot = models.CharField(max_length=32, db_index=True)
    audience_group = models.CharField(max_length=8, choices=[(g, g) for g in AUDIENCE_GROUPS], default=UNISEX)
    image = VectorField(dimensions=settings.EMBEDDING_DIM)
    text = VectorField(dimensions=settings.EMBEDDING_DIM)
    fused = VectorField(dimensions=settings.EMBEDDING_DIM)
    compat = VectorField(dimensions=settings.COMPAT_DIM)
    hub_score = models.FloatField(default=0.0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["product", "model_version"], name="uniq_product_version")
        ]
        indexes = [
            HnswIndex(
                name="emb_image_hnsw", fields=["image"], m=16, ef_construction=64, opclasses=["vector_ip_ops"]
            ),
            HnswIndex(
                name="emb_text_hnsw", fields=["text"], m=16, ef_construction=64, opclasses=["vector_ip_ops"]
            ),
            # The whole-table graph of similar items and text search: m = 24, ef_construction = 128. At 1M
            # products m = 16 / 64 left 12% of queries in the wrong region of the graph (Recall@10 0.82 at
            # ef_search 100, 0.89 at 400); 24 / 128 reaches 0.958 at ef_search 300 (README, Benchmarks).
            HnswIndex(
                name="emb_fused_hnsw",
                fields=["fused"],
                m=24,
                ef_construction=128,
                opclasses=["vector_ip_ops"],
            ),
            # One partial HNSW graph per slot for the slot-filtered rankings (complete-the-look, the slot
            # facet of search and similar items): the pgvector docs' answer to filtering on a column with
            # few distinct values. The planner picks the slot's graph for ``WHERE slot = 's'``, whose
            # rows all pass the slot filter, instead of scanning the whole graph for the 1-10% that do.
            # ``compat`` is only ever ranked within one slot, so it has no whole-table graph.
            *(
                HnswIndex(
                    name=slot_index_name(column, slot),
                    fields=[column],
                    condition=models.Q(slot=slot),
                    m=16,
                    ef_construction=64,
                    opclasses=["vector_ip_ops"],
                )
                for column in SLOT_INDEXED_COLUMNS
                for slot in SLOTS
            ),
            # The exact rankings of a slot that the outfit's audience leaves few rows in (men's bags:
            # ``recommender.looks``): exactly those rows, in a B-tree range scan.
            models.Index(
                fields=["model_version", "slot", "audience_group"], name="emb_version_slot_audience"
            ),
        ]
