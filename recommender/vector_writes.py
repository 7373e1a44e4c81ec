"""Writing a model version's vector rows into pgvector (``embeddings_write``).

Rows are streamed with binary ``COPY`` and merged in batches, each through the table's HNSW graphs.
The first large write into an empty vector table (a first training run) loads the rows with the graphs
dropped and builds them afterwards in the same transaction, as pgvector's README advises for an initial
load ("add an index after loading your initial data"): one in-memory build per graph instead of one
graph search and insert per row and graph.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from django.conf import settings
from django.db import connection, transaction

from catalog.models import Product
from catalog.selectors import product_audience_group
from ml.audience import UNISEX
from recommender import answer_cache
from recommender.hubness import hub_refresh_deferred, hub_refresh_schedule, hub_scores_for
from recommender.models import ModelVersion, ProductEmbedding

logger = logging.getLogger(__name__)

#: The HNSW indexes of a table: their names (schema-qualified where needed) and definitions.
_GRAPHS_SQL = (
    "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
    "WHERE i.indrelid = %s::regclass AND a.amname = 'hnsw' ORDER BY 1"
)


def embeddings_write(
    *,
    version: ModelVersion,
    product_ids: Sequence[int],
    image: np.ndarray,
    text: np.ndarray,
    fused: np.ndarray,
    compat: np.ndarray,
    batch_size: int = 2000,
    method: Literal["copy", "bulk_create"] = "copy",
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Upsert one vector row per (product, version); idempotent (a repeated call writes no duplicate).

    ``copy`` (default): each batch is streamed with PostgreSQL binary ``COPY ... FROM STDIN`` into a
    temporary table (pgvector-python's psycopg 3 adapter) and merged with one
    ``INSERT ... SELECT ... ON CONFLICT (product, version) DO UPDATE``; the join with the product table
    supplies ``slot`` and skips products deleted meanwhile. ``bulk_create`` is the Django ORM upsert
    (kept for the benchmark). Each batch commits on its own, so a worker killed half-way keeps what
    it wrote and a re-run completes it; except a first load into an empty table, one transaction that
    builds the HNSW graphs after the rows (:func:`_load_then_build_graphs`). Each row's ``hub_score`` (its offset in complete-the-look,
    :func:`recommender.hubness.hub_scores_for`) is computed first, against these vectors and the
    version's stored ones, and written with the vectors (a small write into a large version keeps the
    stored offsets and schedules one refresh instead: :func:`recommender.hubness.hub_refresh_deferred`);
    so is its ``audience_group``
    (:func:`product_audience_groups`), which complete-the-look filters on.

    Args:
        product_ids: N product ids (a repeated id keeps its last vectors); deleted products are skipped.
        image, text, fused: (N, E) float32 unit vectors; compat: (N, C) float32 unit vectors.
        batch_size: rows per COPY + merge (one transaction each).
        progress: called after each batch with (rows done, N) (once, at the end, for a first load).

    Returns:
        Number of rows written (inserted or updated).

    Raises:
        ValueError: the arrays' lengths differ from ``len(product_ids)``, or a vector is not finite.
    """
    n = len(product_ids)
    if not (len(image) == len(text) == len(fused) == len(compat) == n):
        raise ValueError(
            f"{n} ids but vectors of lengths {len(image)}, {len(text)}, {len(fused)}, {len(compat)}"
        )
    for name, arr in (("image", image), ("text", text), ("fused", fused), ("compat", compat)):
        bad = ~np.isfinite(np.asarray(arr, dtype=np.float32)).all(axis=1) if n else np.zeros(0, bool)
        if bad.any():
            raise ValueError(
                f"{name} vectors of products {[product_ids[i] for i in np.flatnonzero(bad)[:10]]} "
                "are not finite"
            )
    last = {int(pid): i for i, pid in enumerate(product_ids)}  # one row per product in a batch
    order = sorted(last.values())
    write = _write_copy if method == "copy" else _write_bulk_create
    hub = np.zeros(n, dtype=np.float32)
    ids = [int(product_ids[i]) for i in order]
    if hub_refresh_deferred(version=version, rows=len(ids)):  # an upload: searchable now, priced later
        stored = dict(
            ProductEmbedding.objects.filter(model_version=version, product_id__in=ids).values_list(
                "product_id", "hub_score"
            )
        )
        hub[order] = [stored.get(pid, 0.0) for pid in ids]
        hub_refresh_schedule(version=version)
    else:
        t = time.perf_counter()
        hub[order] = hub_scores_for(version=version, product_ids=ids, compat=np.asarray(compat)[order])
        logger.info(
            "hub offsets of %d rows of version %s priced in %.1f s",
            len(ids),
            version.pk,
            time.perf_counter() - t,
        )
    t = time.perf_counter()
    written = _load_then_build_graphs(write, version, product_ids, order, (image, text, fused, compat), hub)
    if written is None:
        written = 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            with transaction.atomic():
                written += write(
                    version,
                    [int(product_ids[i]) for i in idx],
                    image[idx],
                    text[idx],
                    fused[idx],
                    compat[idx],
                    hub[idx],
                )
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
    elif progress is not None:
        progress(len(order), len(order))
    logger.info(
        "%d vector rows of version %s written in %.1f s", written, version.pk, time.perf_counter() - t
    )
    if written and ModelVersion.objects.filter(pk=version.pk, is_active=True).exists():
        answer_cache.invalidate()  # new or changed vectors of the served version: retire cached answers
    return written


def product_audience_groups(*, product_ids: Sequence[int]) -> dict[int, str]:
    """Who each product is for (:func:`catalog.selectors.product_audience_group`), as its vector rows
    store it; deleted products are left out."""
    return {p.pk: product_audience_group(product=p) for p in Product.objects.filter(pk__in=list(product_ids))}


def _write_bulk_create(version, ids, image, text, fused, compat, hub) -> int:
    slots = dict(Product.objects.filter(pk__in=ids).values_list("pk", "slot"))
    groups = product_audience_groups(product_ids=ids)
    rows = [
        ProductEmbedding(
            product_id=pid,
            model_version=version,
            slot=slots[pid],
            audience_group=groups[pid],
            image=image[i],
            text=text[i],
            fused=fused[i],
            compat=compat[i],
            hub_score=float(hub[i]),
        )
        for i, pid in enumerate(ids)
        if pid in slots
    ]
    ProductEmbedding.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["product", "model_version"],
        update_fields=[
            "slot",
            "audience_group",
            "image",
            "text",
            "fused",
            "compat",
            "hub_score",
            "updated_at",
        ],
    )
    return len(rows)


def _write_copy(version, ids, image, text, fused, compat, hub) -> int:
    from pgvector.psycopg.vector import register_vector_info
    from psycopg.types import TypeInfo

    table = ProductEmbedding._meta.db_table
    products = Product._meta.db_table
    groups = product_audience_groups(product_ids=ids)
    connection.ensure_connection()
    with connection.connection.cursor() as cur:  # the raw psycopg 3 cursor (binary COPY)
        register_vector_info(cur, TypeInfo.fetch(cur.connection, "vector"))  # this cursor only
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _embedding_load (product_id bigint, image vector, "
            "text vector, fused vector, compat vector, hub_score float8, audience_group text)"
        )
        cur.execute("TRUNCATE _embedding_load")
        sql = (
            "COPY _embedding_load (product_id, image, text, fused, compat, hub_score, audience_group) "
            "FROM STDIN WITH (FORMAT BINARY)"
        )
        with cur.copy(sql) as copy:
            copy.set_types(["int8", "vector", "vector", "vector", "vector", "float8", "text"])
            for i, pid in enumerate(ids):
                group = groups.get(pid, UNISEX)  # a deleted product: the join below drops its row
                copy.write_row((pid, image[i], text[i], fused[i], compat[i], float(hub[i]), group))
        cur.execute(
            f"INSERT INTO {table} (product_id, model_version_id, slot, audience_group, image, text, fused, "
            f"compat, hub_score, updated_at) "
            f"SELECT l.product_id, %s, p.slot, l.audience_group, l.image, l.text, l.fused, l.compat, "
            f"l.hub_score, now() "
            f"FROM _embedding_load l JOIN {products} p ON p.id = l.product_id "
            f"ON CONFLICT (product_id, model_version_id) DO UPDATE SET slot = EXCLUDED.slot, "
            f"audience_group = EXCLUDED.audience_group, image = EXCLUDED.image, text = EXCLUDED.text, "
            f"fused = EXCLUDED.fused, compat = EXCLUDED.compat, hub_score = EXCLUDED.hub_score, "
            f"updated_at = EXCLUDED.updated_at",
            [version.pk],
        )
        return cur.rowcount


def graphs_of_table(table: str) -> list[tuple[str, str]]:
    """The HNSW indexes of ``table``: (name, ``CREATE INDEX`` statement) pairs, sorted by name."""
    with connection.cursor() as cur:
        cur.execute(_GRAPHS_SQL, [table])
        return [(name, definition) for name, definition in cur.fetchall()]


def _load_then_build_graphs(write, version, product_ids, order, arrays, hub) -> int | None:
    """Write the rows into an empty vector table with its HNSW graphs dropped, then build the graphs.

    Taken when the table holds no row at all (any version) and the write has at least
    ``settings.HNSW_BUILD_AFTER_LOAD_MIN_ROWS`` rows (0: never). One transaction holds the table
    exclusively (readers of the table wait; a first load has nobody to serve): the graphs are dropped,
    every row is copied, and each graph is created again from its own definition with
    ``maintenance_work_mem`` = ``settings.HNSW_BUILD_MAINTENANCE_WORK_MEM`` (pgvector builds a graph in
    memory when it fits). A failure rolls all of it back: no row written, every graph as it was.

    Returns:
        Rows written, or None when the table is not empty or the write is too small (the caller then
        writes batch by batch through the graphs).
    """
    min_rows = int(settings.HNSW_BUILD_AFTER_LOAD_MIN_ROWS)
    if min_rows <= 0 or len(order) < min_rows or ProductEmbedding.objects.exists():
        return None
    table = ProductEmbedding._meta.db_table
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(f"LOCK TABLE {connection.ops.quote_name(table)} IN ACCESS EXCLUSIVE MODE")
        if ProductEmbedding.objects.exists():  # another writer came first: write through the graphs
            return None
        graphs = graphs_of_table(table)
        for name, _ in graphs:
            cur.execute(f"DROP INDEX {name}")
        image, text, fused, compat = arrays
        ids = [int(product_ids[i]) for i in order]
        written = write(version, ids, image[order], text[order], fused[order], compat[order], hub[order])
        connection.check_constraints()  # fire the deferred foreign-key checks: CREATE INDEX refuses to wait
        t = time.perf_counter()
        cur.execute(
            "SELECT set_config('maintenance_work_mem', %s, true)", [settings.HNSW_BUILD_MAINTENANCE_WORK_MEM]
        )
        for _, definition in graphs:
            cur.execute(definition)
        logger.info(
            "%d rows loaded into the empty vector table, then its %d HNSW graphs built in %.1f s",
            written,
            len(graphs),
            time.perf_counter() - t,
        )
    return written
