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

import numpy as np
from django.core.management import call_command
from django.db import connection, connections

from catalog.models import Product
from recommender.models import ProductEmbedding

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


def use_database(name: str) -> None:
    """Create ``name`` on the default server if needed and point the default connection at it."""
    _HOME.setdefault("NAME", connection.settings_dict["NAME"])
    connections.close_all()
    connection.settings_dict["NAME"] = _HOME["NAME"]  # the server's main database runs CREATE DATABASE
    with connection.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{name}"')
    connections.close_all()
    connection.settings_dict["NAME"] = name
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


def load_catalog(n: int, rng: np.random.Generator, version_id: int, dim: int, cdim: int):
    """COPY n products and their fused/compat vectors; returns (ids, slots, fused, compat)."""

    table = Product._meta.db_table
    slots, fused, compat = synthesize(n, rng, dim, cdim)
    now = datetime.now(UTC).isoformat()
    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {table} RESTART IDENTITY CASCADE")
        with cur.cursor.copy(
            f"COPY {table} (sku, source, title, description, slot, product_type, product_group, colour, "
            "audience, department, section, variant_group, price, image, thumbnail, image_sha256, "
            "created_at, updated_at) FROM STDIN"
        ) as cp:
            for i in range(n):
                slot = slots[i]
                cp.write_row(
                    (
                        f"B{i:08d}",
                        "upload",
                        f"bench item {i}",
                        "",
                        slot,
                        f"{slot} type {i % 7}",
                        "",
                        ("black", "white", "blue", "red")[i % 4],
                        ("women", "men")[i % 2],
                        "",
                        "",
                        f"vg{i // 3}",
                        f"{10 + i % 90}.00",
                        "",
                        "",
                        "",
                        now,
                        now,
                    )
                )
        cur.execute(f"SELECT id FROM {table} ORDER BY id")
        ids = np.asarray([r[0] for r in cur.fetchall()], dtype=np.int64)
        ts = int((datetime.now(UTC) - PG_EPOCH).total_seconds() * 1e6)
        header = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
        with cur.cursor.copy(
            "COPY recommender_productembedding (product_id, model_version_id, slot, fused, "
            "compat, updated_at) FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.write(header)
            for start in range(0, n, COPY_STEP):
                stop = min(n, start + COPY_STEP)
                buf = []
                for j in range(start, stop):
                    s = slots[j].encode()
                    fb, cb = _vector_bin(fused[j]), _vector_bin(compat[j])
                    buf.append(
                        struct.pack(">hiqiqi", 6, 8, int(ids[j]), 8, version_id, len(s))
                        + s
                        + struct.pack(">i", len(fb))
                        + fb
                        + struct.pack(">i", len(cb))
                        + cb
                        + struct.pack(">iq", 8, ts)
                    )
                cp.write(b"".join(buf))
                if (start // COPY_STEP) % 10 == 0:
                    logger.info("  loaded %d / %d embedding rows", stop, n)
            cp.write(struct.pack(">h", -1))
    return ids, slots, fused, compat


def prewarm(table: str) -> float | None:
    """Read ``table`` (with its TOAST relation: the vectors) and its HNSW indexes into the OS page cache
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
            "WHERE relname = %s AND reltoastrelid <> 0",
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
