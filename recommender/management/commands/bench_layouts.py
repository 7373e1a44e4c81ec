"""``python manage.py bench_layouts --size 1000000``: the vector-storage levers of the whole-table query.

Issue 17 asks, at 1M products, for the whole-catalog vector query (similar items, text and photo search:
``ORDER BY fused <#> q LIMIT 10``) at p95 <= 15 ms and Recall@10 >= 0.98. This command loads one
catalog of :func:`recommender.bench_data.bench_catalog` vectors (``--vectors clusters`` or ``texts``)
into its own database and builds, one after the other, one HNSW graph per **layout** over the same
rows, each measured alone (the others dropped, so they do not share the page cache):

* ``vector``: today's index, ``fused vector_ip_ops`` (4 bytes a dimension);
* ``halfvec``: ``(fused::halfvec(D)) halfvec_ip_ops``, half the bytes (pgvector's half precision);
* ``binary+rerank``: ``(binary_quantize(fused)::bit(D)) bit_hamming_ops`` (1 bit a dimension, the sign),
  whose graph returns R candidates by Hamming distance, re-ranked exactly by ``fused <#> q`` in the same
  statement (pgvector README, "Binary Quantization");
* ``prefix+rerank``: ``(subvector(fused, 1, P)::halfvec(P)) halfvec_ip_ops``, the first P dimensions
  in half precision (what a Matryoshka-trained head would serve), re-ranked exactly on the full vector.

For each: build seconds, index MB, then p50/p95 latency (ms) and Recall@10 against exact NumPy search
(timed in the same run, for the speed-up ratio) over ``--queries`` fresh query points, across a sweep of
``hnsw.ef_search`` (and of R for the re-ranked layouts). All use the same m / ef_construction.

Writes ``ml/benchmarks/results/layouts[_texts].json`` and ``.md`` (merged per size).
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from recommender.bench_data import (
    bench_catalog,
    bench_database_name,
    build_index,
    exact_topk,
    fresh_bench_version,
    load_catalog,
    percentiles,
    prewarm,
    use_database,
)
from recommender.model_cache import embedder_for
from recommender.models import ModelVersion, ProductEmbedding

logger = logging.getLogger("bench_layouts")

RESULTS_DIR = Path(__file__).resolve().parents[3] / "ml" / "benchmarks" / "results"
TABLE = ProductEmbedding._meta.db_table
K = 10


def layouts(dim: int, prefix: int) -> dict[str, dict]:
    """Each layout's index expression, operator class, and the ORDER BY of its candidates (``%(q)s`` is
    the query vector literal); ``rerank`` when candidates are re-ranked on the full vector."""
    return {
        "vector": {
            "expr": "fused",
            "ops": "vector_ip_ops",
            "order": "fused <#> %(q)s::vector",
            "rerank": False,
        },
        "halfvec": {
            "expr": f"(fused::halfvec({dim}))",
            "ops": "halfvec_ip_ops",
            "order": f"(fused::halfvec({dim})) <#> %(q)s::halfvec({dim})",
            "rerank": False,
        },
        "binary+rerank": {
            "expr": f"(binary_quantize(fused)::bit({dim}))",
            "ops": "bit_hamming_ops",
            "order": f"(binary_quantize(fused)::bit({dim})) <~> binary_quantize(%(q)s::vector)",
            "rerank": True,
        },
        f"prefix{prefix}+rerank": {
            "expr": f"(subvector(fused, 1, {prefix})::halfvec({prefix}))",
            "ops": "halfvec_ip_ops",
            "order": f"(subvector(fused, 1, {prefix})::halfvec({prefix})) <#> %(p)s::halfvec({prefix})",
            "rerank": True,
        },
    }


def layout_sql(spec: dict, candidates: int) -> str:
    """The query of one layout: its graph's top ``candidates`` (re-ranked exactly on ``fused`` when the
    layout stores a compressed copy), then the top K."""
    if not spec["rerank"]:
        return f"SELECT product_id FROM {TABLE} WHERE model_version_id = %(v)s ORDER BY {spec['order']} LIMIT {K}"
    return (
        f"SELECT product_id FROM (SELECT product_id, fused FROM {TABLE} WHERE model_version_id = %(v)s "
        f"ORDER BY {spec['order']} LIMIT {candidates}) c ORDER BY fused <#> %(q)s::vector LIMIT {K}"
    )


def layout_settings_sql(ef_search: int) -> str:
    """The ``SET LOCAL`` statements of a layout's query: its ``hnsw.ef_search``, no iterative scan (a
    re-ranked layout's graph must return its R candidates: ef_search = R), and, as the serving rankings
    (``selectors.ranking_settings_sql``), no sequential or bitmap scan, sort or JIT, so the graph is the
    planner's only way to produce rows in distance order (the outer re-ranking sort remains)."""
    return (
        f"SET LOCAL hnsw.ef_search = {int(ef_search)}; SET LOCAL enable_seqscan = off; "
        "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; SET LOCAL jit = off; "
        "SET LOCAL hnsw.iterative_scan = off; SET LOCAL max_parallel_workers_per_gather = 0"
    )


def _setting(name: str) -> str:
    with connection.cursor() as cur:
        cur.execute(f"SHOW {name}")
        return cur.fetchone()[0]


def _literal(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in v.tolist()) + "]"


class Command(BaseCommand):
    help = "Whole-table vector query at one size per storage layout (vector, halfvec, binary, prefix)."

    def add_arguments(self, parser):
        parser.add_argument("--size", type=int, default=1_000_000)
        parser.add_argument("--queries", type=int, default=200)
        parser.add_argument("--vectors", choices=("clusters", "texts"), default="clusters")
        parser.add_argument(
            "--layouts", nargs="+", default=["vector", "halfvec", "binary+rerank", "prefix+rerank"]
        )
        parser.add_argument("--prefix", type=int, default=256, help="dimensions of the prefix layout")
        parser.add_argument("--ef-search", type=int, nargs="+", default=[40, 100, 200, 300])
        parser.add_argument("--candidates", type=int, nargs="+", default=[100, 200, 400, 800])
        parser.add_argument("--m", type=int, default=24)
        parser.add_argument("--ef-construction", type=int, default=128)
        parser.add_argument("--maintenance-work-mem", default="5GB")
        parser.add_argument("--parallel-workers", type=int, default=1)
        parser.add_argument("--reuse", action="store_true", help="keep the loaded rows if the size matches")
        parser.add_argument(
            "--keep-indexes",
            action="store_true",
            help="measure a layout's index left by an earlier run as is",
        )
        parser.add_argument("--out", default="")

    def handle(self, *args, **opts):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
        n, dim, cdim = opts["size"], settings.EMBEDDING_DIM, settings.COMPAT_DIM
        if opts["queries"] < 1:
            raise CommandError(f"--queries must be at least 1 (got {opts['queries']})")
        if n <= K:
            raise CommandError(f"--size must be more than {K} products (got {n})")
        if not 0 < opts["prefix"] < dim:
            raise CommandError(f"--prefix must be between 1 and {dim - 1} (got {opts['prefix']})")
        texts = opts["vectors"] == "texts"
        out = Path(opts["out"] or RESULTS_DIR / ("layouts_texts.json" if texts else "layouts.json"))
        specs = layouts(dim, opts["prefix"])
        chosen = [
            name if name != "prefix+rerank" else f"prefix{opts['prefix']}+rerank" for name in opts["layouts"]
        ]
        unknown = [c for c in chosen if c not in specs]
        if unknown:
            raise CommandError(
                f"unknown layout(s) {unknown}; choose from vector, halfvec, binary+rerank, prefix+rerank"
            )
        use_database(bench_database_name("recommender_bench_layouts" + ("_texts" if texts else ""), n))
        version, ids, fused = load(n, dim, cdim, opts)
        res: dict = {
            "n": n,
            "dim": dim,
            "vectors": opts["vectors"],
            "m": opts["m"],
            "ef_construction": opts["ef_construction"],
            "measured_at": datetime.now(UTC).isoformat(),
            "load_avg_before": [round(x, 2) for x in os.getloadavg()],
            "shared_buffers": _setting("shared_buffers"),
            "layouts": {},
        }
        rng = np.random.default_rng(1)
        nq = opts["queries"]
        anchors = rng.integers(0, n, size=nq)  # fresh points near catalog items, as bench_serving's
        qv = fused[anchors] + rng.standard_normal((nq, dim), dtype=np.float32) * (0.5 / np.sqrt(dim))
        qv = (qv / np.linalg.norm(qv, axis=1, keepdims=True)).astype(np.float32)
        truth, exact_ms = [], []
        for q in qv:
            t0 = time.perf_counter()
            top = exact_topk(fused, q, K)
            exact_ms.append((time.perf_counter() - t0) * 1000)
            truth.append(set(ids[top].tolist()))
        res["exact_numpy"] = percentiles(exact_ms)
        logger.info(
            "exact NumPy: p50 %.1f / p95 %.1f ms", res["exact_numpy"]["p50_ms"], res["exact_numpy"]["p95_ms"]
        )
        for name in chosen:
            res["layouts"][name] = measure_layout(name, specs[name], version, qv, truth, opts)
            write(out, n, res)
        write(out, n, res)


def load(n: int, dim: int, cdim: int, opts):
    """Load (or with ``--reuse`` keep) the n bench rows without any HNSW index; returns (version, product
    ids (n,) int64, fused (n, dim) float32)."""
    rng = np.random.default_rng(n)
    if opts["reuse"] and ProductEmbedding.objects.count() == n:
        version = ModelVersion.objects.get(is_active=True)
        embedder = embedder_for(version) if opts["vectors"] == "texts" else None
        _, _, fused, _ = bench_catalog(n, rng, dim, cdim, settings.HM_DATA_DIR, opts["vectors"], embedder)
        ids = np.asarray(ProductEmbedding.objects.order_by("product_id").values_list("product_id", flat=True))
        logger.info("reusing %d rows", n)
        return version, ids, fused
    version = fresh_bench_version(dim, cdim)
    embedder = embedder_for(version) if opts["vectors"] == "texts" else None
    rows = bench_catalog(n, rng, dim, cdim, settings.HM_DATA_DIR, opts["vectors"], embedder)
    t0 = time.perf_counter()
    ids = load_catalog(rows, version.pk)
    logger.info("loaded %d rows in %.1f s", n, time.perf_counter() - t0)
    with connection.cursor() as cur:
        cur.execute(f"VACUUM ANALYZE {TABLE}")
    return version, ids, rows[2]


def measure_layout(name: str, spec: dict, version, qv: np.ndarray, truth: list[set], opts) -> dict:
    """Build the layout's index alone, prewarm it, sweep ef_search (and R); returns its results."""
    idx = "emb_layout_" + "".join(c if c.isalnum() else "_" for c in name) + "_hnsw"
    build_s = None
    with connection.cursor() as cur:
        cur.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexname LIKE 'emb\\_layout%%'",
            [TABLE],
        )
        for (old,) in cur.fetchall():
            if old == idx and opts["keep_indexes"]:
                build_s = "kept"
                continue
            cur.execute(f"DROP INDEX {old}")
    if build_s is None:
        build_s = build_index(
            f"CREATE INDEX {idx} ON {TABLE} USING hnsw ({spec['expr']} {spec['ops']}) "
            f"WITH (m = {opts['m']}, ef_construction = {opts['ef_construction']})",
            name,
            opts,
        )
    warmed = prewarm(TABLE)  # the table, its vectors and its graph into the OS cache (None: no pg_prewarm)
    with connection.cursor() as cur:
        if warmed is not None:  # and as much of the graph as fits into shared buffers
            cur.execute("SELECT pg_prewarm(%s::regclass, 'buffer')", [idx])
        cur.execute("SELECT pg_relation_size(%s::regclass)", [idx])
        index_mb = round(cur.fetchone()[0] / 2**20, 1)
    logger.info("%s: built in %s s, %.1f MB", name, build_s, index_mb)
    prefix = opts["prefix"]
    params = [
        {
            "v": version.pk,
            "q": _literal(q),
            "p": _literal(q[:prefix] / max(np.linalg.norm(q[:prefix]), 1e-12)),
        }
        for q in qv
    ]
    # a re-ranked layout's graph must return R rows: ef_search = R (no iterative scan)
    grid = [(r, r) for r in opts["candidates"]] if spec["rerank"] else [(ef, K) for ef in opts["ef_search"]]
    runs = []
    for ef, r in grid:
        sql = layout_sql(spec, r)
        ms, hits = [], []
        warm = min(20, len(params))  # warm-up queries, not timed
        for i, p in enumerate([*params[:warm], *params]):
            t0 = time.perf_counter()
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute(layout_settings_sql(ef))
                cur.execute(sql, p)
                got = {row[0] for row in cur.fetchall()}
            if i >= warm:
                ms.append((time.perf_counter() - t0) * 1000)
                hits.append(len(got & truth[i - warm]) / K)
        run = {"ef_search": ef, "candidates": r if spec["rerank"] else None, **percentiles(ms)}
        run["recall_at_10"] = round(float(np.mean(hits)), 4)
        runs.append(run)
        logger.info(
            "%s ef_search %d%s: recall@10 %.3f, p50 %.1f / p95 %.1f ms",
            name,
            ef,
            f", R {r}" if spec["rerank"] else "",
            run["recall_at_10"],
            run["p50_ms"],
            run["p95_ms"],
        )
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(layout_settings_sql(grid[0][0]))
        cur.execute(f"EXPLAIN {layout_sql(spec, grid[0][1])}", params[0])
        plan = "\n".join(r[0] for r in cur.fetchall())
    if idx not in plan:
        raise CommandError(f"{name}: the query does not use {idx}:\n{plan}")
    return {"index": idx, "build_s": build_s, "index_mb": index_mb, "runs": runs}


def write(out: Path, n: int, res: dict) -> None:
    results = json.loads(out.read_text()) if out.exists() else {"sizes": {}}
    results["sizes"][str(n)] = res
    results["machine"] = {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(markdown(results))
    logger.info("wrote %s", out)


def markdown(results: dict) -> str:
    """One table per size: layout, ef_search, R, Recall@10, p50 / p95, exact / index p50, build s, MB."""
    lines = []
    for size, r in sorted(results["sizes"].items(), key=lambda kv: int(kv[0])):
        ex = r["exact_numpy"]
        lines += [
            f"### {int(size):,} products, {r['vectors']} vectors, m {r['m']} / ef_construction {r['ef_construction']}, "
            f"shared_buffers {r.get('shared_buffers', '?')}\n\n",
            f"Exact NumPy search (the baseline): p50 {ex['p50_ms']} / p95 {ex['p95_ms']} ms.\n\n",
            "| layout | ef_search | candidates re-ranked | Recall@10 | p50 / p95 ms | exact / index (p50) | build s | index MB |\n",
            "|---|---:|---:|---:|---:|---:|---:|---:|\n",
        ]
        for name, lay in r["layouts"].items():
            for run in lay["runs"]:
                lines.append(
                    f"| {name} | {run['ef_search']} | {run['candidates'] or '—'} | {run['recall_at_10']} | "
                    f"{run['p50_ms']} / {run['p95_ms']} | {ex['p50_ms'] / max(run['p50_ms'], 1e-3):.1f} | "
                    f"{lay['build_s']} | {lay['index_mb']} |\n"
                )
        lines.append("\n")
    return "".join(lines)
