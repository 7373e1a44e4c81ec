"""The serving benchmark's data: a synthetic catalog of clustered unit vectors loaded with binary ``COPY``
into a database of its own, the model's HNSW indexes built on it, and what PostgreSQL says of them
(sizes, parameters). Used by ``manage.py bench_serving`` (whose 100k database ``manage.py bench_http`` then reuses).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from django.core.management import call_command
from django.db import connection, connections

from catalog.models import Product
from recommender.models import ModelVersion, ProductEmbedding

logger = logging.getLogger("bench_serving")


#: Slot shares of the synthetic catalog: shoes ~10%, jewellery ~1% (the two filter selectivities).
SLOT_SHARES = {
    "top": 0.35,
    "bottom": 0.25,
    "one-piece": 0.10,
    "outerwear": 0.09,
    "shoes": 0.10,
    "bag": 0.05,
    "accessory": 0.05,
    "jewellery": 0.01,
}


N_COARSE = 200


ITEMS_PER_FINE = 20


NOISE = 0.6  # noise norm relative to the unit centre, at both levels


PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def clustered_unit_vectors(
    rng: np.random.Generator, n: int, dim: int, centres: np.ndarray, labels: np.ndarray
):
    """(n, dim) float32 unit vectors: ``normalise(centre[label] + NOISE * g / sqrt(dim))``, g ~ N(0, I)."""
    x = centres[labels] + rng.standard_normal((n, dim), dtype=np.float32) * np.float32(NOISE / np.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32, copy=False)


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def percentiles(ms: list[float]) -> dict[str, float]:
    """p50/p95/p99 and mean of latencies in ms."""
    a = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "mean_ms": round(float(a.mean()), 2),
        "n": len(ms),
    }


def _vector_bin(v: np.ndarray) -> bytes:
    """pgvector's binary send format: int16 dim, int16 unused, dim big-endian float32."""
    return struct.pack(">hh", v.shape[0], 0) + v.astype(">f4").tobytes()


def bench_database_name(prefix: str, n: int) -> str:
    """One database per size (``recommender_bench_100k``), so ``bench_http`` can reuse the 100k one."""
    label = f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)
    return f"{prefix}_{label}"


_HOME: dict[str, str] = {}


def point_at(name: str) -> None:
    """Point the default connection at the database ``name`` on the same server, and check it.

    The connection pool (``OPTIONS["pool"]``, psycopg_pool) keeps the database it was opened with: it
    is closed too, so the next connection opens a pool on ``name``. Without that, a benchmark's
    ``TRUNCATE`` ran in the development database.

    Raises:
        RuntimeError: the connection still reaches another database.
    """
    connections.close_all()
    connection.close_pool()
    connection.settings_dict["NAME"] = name
    with connection.cursor() as cur:
        cur.execute("SELECT current_database()")
        now = cur.fetchone()[0]
    if now != name:
        raise RuntimeError(f"the default connection reaches database {now!r}, not {name!r}")


def use_database(name: str) -> None:
    """Create ``name`` on the default server if needed and point the default connection at it."""
    _HOME.setdefault("NAME", connection.settings_dict["NAME"])
    point_at(_HOME["NAME"])  # the server's main database runs CREATE DATABASE
    with connection.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{name}"')
    point_at(name)
    call_command("migrate", verbosity=0)


def _progress_logger(stop: threading.Event, label: str) -> None:
    """Log ``pg_stat_progress_create_index`` every 30 s while an index builds (own connection)."""
    import psycopg

    sd = connection.settings_dict
    params = {
        "dbname": sd["NAME"],
        "host": sd["HOST"] or None,
        "port": sd["PORT"] or None,
        "user": sd["USER"] or None,
        "password": sd["PASSWORD"] or None,
    }
    with psycopg.connect(**{k: v for k, v in params.items() if v}, autocommit=True) as conn:
        while not stop.wait(30):
            row = conn.execute(
                "SELECT phase, tuples_done, tuples_total, blocks_done, blocks_total "
                "FROM pg_stat_progress_create_index"
            ).fetchone()
            if row:
                logger.info("  %s: %s, tuples %s/%s, blocks %s/%s", label, *row)


def build_index(sql: str, label: str, opts) -> float:
    """Run one CREATE INDEX with the maintenance settings; returns seconds."""
    stop = threading.Event()
    t = threading.Thread(target=_progress_logger, args=(stop, label), daemon=True)
    t.start()
    t0 = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        with contextlib.suppress(OSError):  # be kind to the machine's other users: build at low priority
            os.setpriority(os.PRIO_PROCESS, cur.fetchone()[0], 15)
        cur.execute(f"SET maintenance_work_mem = '{opts['maintenance_work_mem']}'")
        cur.execute("SET max_parallel_maintenance_workers = %s", [opts["parallel_workers"]])
        cur.execute(sql)
    stop.set()
    connection.close()  # the next queries get a fresh backend at the normal priority
    secs = time.perf_counter() - t0
    logger.info("built %s in %.1f s", label, secs)
    return round(secs, 1)


def serving_indexes(opts) -> list:
    """The model's own HNSW indexes on the columns the bench stores (``fused``, ``compat``), as declared
    in ``ProductEmbedding.Meta.indexes`` (the whole-table ``fused`` graph and the per-slot partial
    graphs of migration 0004), with ``--m``/``--ef-construction`` overriding their parameters."""
    from pgvector.django import HnswIndex

    out = []
    for index in ProductEmbedding._meta.indexes:
        if not isinstance(index, HnswIndex) or index.fields[0] not in ("fused", "compat"):
            continue
        _, args, kwargs = index.deconstruct()
        kwargs["m"] = opts["m"] or kwargs["m"]
        kwargs["ef_construction"] = opts["ef_construction"] or kwargs["ef_construction"]
        out.append(HnswIndex(*args, **kwargs))
    return out


def build_serving_indexes(table: str, dim: int, n: int, opts) -> dict[str, float]:
    """Build :func:`serving_indexes` (and the halfvec one up to ``--halfvec-max-size``); seconds per
    group: ``fused`` (whole table), ``fused per slot``, ``compat per slot`` (sums over the slots)."""

    build_s: dict[str, float] = {}
    for index in serving_indexes(opts):
        with connection.schema_editor(atomic=False) as editor:
            sql = str(index.create_sql(ProductEmbedding, editor))
        group = index.fields[0] + (" per slot" if index.condition is not None else "")
        build_s[group] = round(build_s.get(group, 0.0) + build_index(sql, index.name, opts), 1)
    if n <= opts["halfvec_max_size"]:
        m, efc = opts["m"] or 16, opts["ef_construction"] or 64
        build_s["fused halfvec"] = build_index(
            f"CREATE INDEX emb_fused_half_hnsw ON {table} USING hnsw ((fused::halfvec({dim})) "
            f"halfvec_ip_ops) WITH (m = {m}, ef_construction = {efc})",
            "fused halfvec hnsw",
            opts,
        )
    return build_s


def synthesize(n: int, rng: np.random.Generator, dim: int, cdim: int):
    """The synthetic catalog of size n: (slots (n,) str, fused (n, dim), compat (n, cdim) float32 unit).

    Deterministic for a seeded ``rng`` (``--reuse`` regenerates it instead of reading 1M vectors back).
    """
    slot_names = np.array(list(SLOT_SHARES))
    slots = rng.choice(slot_names, size=n, p=np.array(list(SLOT_SHARES.values())))
    n_fine = max(1, n // ITEMS_PER_FINE)
    centres, ccentres = (
        clustered_unit_vectors(
            rng, n_fine, d, _unit(rng, N_COARSE, d), rng.integers(0, N_COARSE, size=n_fine)
        )
        for d in (dim, cdim)
    )
    labels = rng.integers(0, n_fine, size=n)
    fused = np.empty((n, dim), dtype=np.float32)
    compat = np.empty((n, cdim), dtype=np.float32)
    for start in range(0, n, COPY_STEP):
        stop = min(n, start + COPY_STEP)
        fused[start:stop] = clustered_unit_vectors(rng, stop - start, dim, centres, labels[start:stop])
        compat[start:stop] = clustered_unit_vectors(rng, stop - start, cdim, ccentres, labels[start:stop])
    return slots, fused, compat


COPY_STEP = 20_000


#: The text columns of a bench product, in ``COPY`` order (after ``sku, source``).
TEXT_COLUMNS = (
    "title",
    "description",
    "product_type",
    "product_group",
    "colour",
    "audience",
    "audience_group",
    "department",
    "section",
    "variant_group",
)


def real_texts(slots: np.ndarray, root) -> list[tuple[str, ...]] | None:
    """Text columns (:data:`TEXT_COLUMNS`) for each synthetic row: a real H&M article of the same slot,
    the slot's articles taken in turn, so full-text search and the search vocabulary at N products see
    the real catalog's words and their frequencies (each article repeated about N / 11,800 times; each
    repetition its own variant group). None when the H&M sample is not at ``root``.

    Args:
        slots: (n,) str, the synthetic rows' slots.
        root: the H&M sample's folder (``articles.csv``).
    """
    from ml.data import read_articles

    try:
        articles, _ = read_articles(root)
    except (FileNotFoundError, ValueError) as exc:
        logger.warning("no real product texts (%s): the bench catalog keeps synthetic titles", exc)
        return None
    by_slot: dict[str, list] = {}
    for art in articles:
        by_slot.setdefault(art.slot, []).append(art)
    seen: dict[str, int] = {}
    out: list[tuple[str, ...]] = []
    for i, slot in enumerate(slots):
        pool = by_slot.get(str(slot))
        if not pool:
            out.append(
                (f"bench item {i}", "", f"{slot} type {i % 7}", "", "black", "women", "women", "", "", "")
            )
            continue
        j = seen.get(slot, 0)
        seen[slot] = j + 1
        art = pool[j % len(pool)]
        copy = j // len(pool)
        out.append(
            (
                art.title,
                art.description,
                art.product_type,
                art.product_group,
                art.colour,
                art.audience,
                art.audience_group,
                art.department,
                art.section,
                f"{art.product_code}-{copy}",
            )
        )
    return out


#: Norm of the Gaussian noise added to a real text's vector for each of its copies (relative to the unit
#: vector): copies of one article are as close as colour variants (cosine ~0.9 to the original).
TEXT_NOISE = 0.35


def text_tower_vectors(
    texts: list[tuple[str, ...]], embedder, rng: np.random.Generator, noise: float = TEXT_NOISE
) -> np.ndarray:
    """(n, E) float32 unit vectors: each row's product text (:func:`ml.data.product_text` of its
    :data:`TEXT_COLUMNS`) through the serving version's text tower and heads, plus seeded noise of norm
    ``noise`` per row, re-normalised. Queries then meet the catalog as in a trained model's space: a
    "lace top" query lies near lace tops, so a filter on tops passes most of the nearest rows (the
    clustered synthetic vectors have no relation to the texts: every filter is uncorrelated).

    Each distinct text is encoded once (cached under ``VAR_DIR/bench-models`` by the texts' hash).
    """
    import hashlib

    import torch
    from django.conf import settings

    from ml.data import product_text

    def text_of(row: tuple[str, ...]) -> str:
        title, description, ptype, _, colour, audience, _, _, section, _ = row
        return product_text(title, colour, ptype, audience, section, description)

    distinct = sorted({text_of(r) for r in texts})
    digest = hashlib.sha256("\n".join(distinct).encode()).hexdigest()[:16]
    cache = Path(settings.VAR_DIR) / "bench-models" / f"text-vectors-{digest}.npy"
    if cache.exists():
        base = np.load(cache)
    else:
        logger.info("encoding %d distinct product texts with the text tower", len(distinct))
        feats = torch.from_numpy(embedder.extractor.encode_texts(distinct, progress=True))
        with torch.no_grad():
            base = embedder.heads.general(feats, feats)[1].numpy().astype(np.float32)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, base)
    index = {t: i for i, t in enumerate(distinct)}
    rows = np.fromiter((index[text_of(r)] for r in texts), dtype=np.int64, count=len(texts))
    out = base[rows] + rng.standard_normal((len(texts), base.shape[1]), dtype=np.float32) * (
        noise / np.sqrt(base.shape[1])
    )
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def bench_catalog(
    n: int,
    rng: np.random.Generator,
    dim: int,
    cdim: int,
    texts_root=None,
    vectors: str = "clusters",
    embedder=None,
):
    """The bench catalog of size n, deterministic for a seeded ``rng``: (slots (n,), texts (list of
    :data:`TEXT_COLUMNS` tuples, or None), fused (n, dim), compat (n, cdim) float32 unit).

    Args:
        texts_root: the H&M sample whose articles' texts the products take (:func:`real_texts`); None
            for synthetic titles.
        vectors: ``clusters`` (:func:`synthesize`'s two-level clusters) or ``texts`` (``fused`` from
            the products' own texts through ``embedder``, :func:`text_tower_vectors`; needs the texts).

    Raises:
        ValueError: ``texts`` vectors without real texts or an embedder.
    """
    slots, fused, compat = synthesize(n, rng, dim, cdim)
    texts = real_texts(slots, texts_root) if texts_root is not None else None
    if vectors == "texts":
        if texts is None or embedder is None:
            raise ValueError("vectors='texts' needs the H&M sample's texts and the version's embedder")
        fused = text_tower_vectors(texts, embedder, np.random.default_rng(n + 1))
    elif vectors != "clusters":
        raise ValueError(f"vectors must be 'clusters' or 'texts' (got {vectors!r})")
    return slots, texts, fused, compat


def load_catalog(table_rows: tuple, version_id: int):
    """COPY the products and vectors of :func:`bench_catalog` (``table_rows``: its return value);
    returns the products' ids (n,) int64 in row order. Synthetic titles ("bench item i") without
    real texts."""

    slots, texts, fused, compat = table_rows
    n = len(slots)
    table = Product._meta.db_table
    now = datetime.now(UTC).isoformat()
    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {table} RESTART IDENTITY CASCADE")
        with cur.cursor.copy(
            f"COPY {table} (sku, source, slot, {', '.join(TEXT_COLUMNS)}, price, image, thumbnail, "
            "image_sha256, created_at, updated_at) FROM STDIN"
        ) as cp:
            for i in range(n):
                slot = slots[i]
                if texts is not None:
                    text = texts[i]
                else:
                    colour, audience = ("black", "white", "blue", "red")[i % 4], ("women", "men")[i % 2]
                    text = (f"bench item {i}", "", f"{slot} type {i % 7}", "", colour, audience, audience)
                    text += ("", "", f"vg{i // 3}")
                cp.write_row((f"B{i:08d}", "upload", slot, *text, f"{10 + i % 90}.00", "", "", "", now, now))
        cur.execute(f"SELECT id FROM {table} ORDER BY id")
        ids = np.asarray([r[0] for r in cur.fetchall()], dtype=np.int64)
        ts = int((datetime.now(UTC) - PG_EPOCH).total_seconds() * 1e6)
        header = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
        with cur.cursor.copy(
            "COPY recommender_productembedding (product_id, model_version_id, slot, audience_group, fused, "
            "compat, hub_score, updated_at) FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.write(header)
            for start in range(0, n, COPY_STEP):
                stop = min(n, start + COPY_STEP)
                buf = []
                for j in range(start, stop):
                    s = slots[j].encode()
                    g = (texts[j][6] if texts is not None else ("women", "men")[j % 2]).encode()
                    fb, cb = _vector_bin(fused[j]), _vector_bin(compat[j])
                    buf.append(
                        struct.pack(">hiqiqi", 8, 8, int(ids[j]), 8, version_id, len(s))
                        + s
                        + struct.pack(">i", len(g))
                        + g
                        + struct.pack(">i", len(fb))
                        + fb
                        + struct.pack(">i", len(cb))
                        + cb
                        + struct.pack(">id", 8, 0.0)  # hub_score
                        + struct.pack(">iq", 8, ts)
                    )
                cp.write(b"".join(buf))
                if (start // COPY_STEP) % 10 == 0:
                    logger.info("  loaded %d / %d embedding rows", stop, n)
            cp.write(struct.pack(">h", -1))
    return ids


def fresh_bench_version(dim: int, cdim: int) -> ModelVersion:
    """Empty the bench database for a load: every model version (and with them every vector row) goes,
    the HNSW indexes are dropped (built again after the load, much faster than during it), ``image`` and
    ``text`` may be NULL (the bench stores only ``fused`` and ``compat``); returns the new active
    ``bench`` version, whose heads are the zero-shot identity heads of these dimensions."""
    from django.conf import settings

    from ml.heads import save_heads, zero_shot_heads
    from recommender.ml_bridge import model_config

    table = ProductEmbedding._meta.db_table
    with connection.cursor() as cur:
        cur.execute("TRUNCATE recommender_modelversion RESTART IDENTITY CASCADE")
        cur.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexname LIKE 'emb\\_%%hnsw'", [table]
        )
        for (idx,) in cur.fetchall():
            cur.execute(f"DROP INDEX {idx}")
        cur.execute(f"ALTER TABLE {table} ALTER COLUMN image DROP NOT NULL, ALTER COLUMN text DROP NOT NULL")
    art = Path(settings.VAR_DIR) / "bench-models" / "heads.pt"
    save_heads(art, zero_shot_heads(dim, cdim), {"bench": True})
    return ModelVersion.objects.create(
        name="bench",
        config={"model": model_config().to_dict()},
        artifact_path=str(art),
        status="ready",
        is_active=True,
    )


def exact_topk(x: np.ndarray, q: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Exact top-k rows of ``x`` (N, D) float32 by inner product with q (D,) float32 (NumPy brute force),
    best first; ``rows`` maps them to catalog rows when ``x`` is one filter's pre-filtered partition."""
    s = x @ q  # (N,)
    top = np.argpartition(-s, k)[:k]
    top = top[np.argsort(-s[top])]
    return top if rows is None else rows[top]


def prewarm(table: str) -> float | None:
    """Read ``table`` (with its TOAST relation: the vectors), its HNSW indexes, and the products with theirs
    (full text's GIN index) into the OS page cache
    with ``pg_prewarm(..., 'read')``, as a server does after a restart before it takes traffic; returns
    seconds, or None when the ``pg_prewarm`` extension is not installed (then the warm-up queries alone
    warm the cache, and the first measured queries still read from disk)."""
    from django.db import DatabaseError

    t0 = time.perf_counter()
    with connection.cursor() as cur:
        try:
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        except DatabaseError as exc:
            logger.warning("no pg_prewarm (%s): measuring without a prewarmed cache", exc)
            return None
        cur.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relname = %s OR c.relname LIKE "
            "'emb\\_%%hnsw' UNION ALL SELECT reltoastrelid::regclass::text FROM pg_class "
            "WHERE relname = %s AND reltoastrelid <> 0 "
            # the products and their indexes (full text's GIN): what the shoppers' search reads
            "UNION ALL SELECT 'catalog_product' UNION ALL SELECT indexrelid::regclass::text FROM pg_index "
            "WHERE indrelid = 'catalog_product'::regclass",
            [table, table],
        )
        for (rel,) in cur.fetchall():
            cur.execute("SELECT pg_prewarm(%s::regclass, 'read')", [rel])
    secs = round(time.perf_counter() - t0, 1)
    logger.info("prewarmed %s and its indexes in %.1f s", table, secs)
    return secs


def index_params(table: str) -> dict[str, str]:
    """The WITH (...) parameters of each HNSW index as PostgreSQL has it (``pg_indexes``), e.g.
    ``{"emb_fused_hnsw": "m='24', ef_construction='128'"}``: what was measured, also with ``--reuse``."""
    import re

    with connection.cursor() as cur:
        cur.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname LIKE "
            "'emb\\_%%hnsw' ORDER BY indexname",
            [table],
        )
        return {
            name: (m.group(1) if (m := re.search(r"WITH \((.*?)\)", d)) else "") for name, d in cur.fetchall()
        }


def relation_sizes(table: str) -> dict[str, float]:
    """Table and index sizes in MB (``pg_relation_size``)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "WHERE c.relname = %s OR c.relname LIKE 'emb\\_%%hnsw'",
            [table],
        )
        return {name: round(b / 2**20, 1) for name, b in cur.fetchall()}


def has_index(name: str) -> bool:
    with connection.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_class WHERE relname = %s", [name])
        return cur.fetchone() is not None


def grouped_sizes(sizes_mb: dict[str, float]) -> dict[str, float]:
    """Relation sizes with the per-slot partial indexes summed per column (``emb_fused_<slot>_hnsw``)."""
    import re

    out: dict[str, float] = {}
    for name, mb in sorted(sizes_mb.items()):
        m = re.fullmatch(r"emb_(fused|compat)_(?!half_)\w+_hnsw", name)
        key = f"emb_{m.group(1)}_<slot>_hnsw (sum)" if m else name
        if name.startswith("recommender_"):
            key = f"{name} (rows, TOAST and all indexes)"
        out[key] = round(out.get(key, 0.0) + mb, 1)
    return out
