"""``python manage.py bench_serving --sizes 10000 100000 1000000``: serving latency and recall at scale.

For each catalog size N, in a separate database (``recommender_bench`` on the same PostgreSQL, so the
dev and test data stay untouched), in the real schema (``catalog_product`` + ``ProductEmbedding`` rows
of one ``ModelVersion``, loaded with binary ``COPY``):

* synthetic clustered unit vectors in two levels, like a catalog (product types → products → colour
  variants): 200 seeded coarse centres on the unit sphere, N/20 fine centres around them, each item a
  fine centre plus isotropic noise, re-normalised (uniform random vectors in 512-d are the worst case
  of any ANN index and unlike any catalog: every neighbour is a near-tie). Dimensions of the default model:
  ``fused`` 512, ``compat`` 128. Only the columns the queries need are stored: ``image``/``text`` are
  made NULL-able in the bench database and left empty (photo search, the only ``image`` query, is
  the same query shape on another column);
* slots drawn with fixed shares, so a slot filter matches ~10% (``shoes``) or ~1% (``jewellery``);
* the model's HNSW indexes on those columns (``ProductEmbedding.Meta.indexes``: the whole-table
  ``fused`` graph and one partial graph per slot for ``fused`` and ``compat``, m=16,
  ef_construction=64 unless ``--m``/``--ef-construction``) built after the load with a large
  ``maintenance_work_mem``; optionally the half-precision expression index
  ``(fused::halfvec(512)) halfvec_ip_ops`` of migration 0003_serving (``--halfvec-max-size``);
* latency (p50/p95, ms) of the real selectors: similar items, text-vector query (the query of a text
  search without the text tower), complete-the-look (one query per missing slot), outfit
  compatibility (with its replacement query), and text search end to end (text tower + query);
* Recall@10 of the indexed query against exact search (NumPy brute force on the same vectors), with no
  filter and with a ~10% and a ~1% slot filter, and the exact search's own latency as a ratio.

Writes ``ml/benchmarks/results/serving.json`` (merged per size, so sizes can run separately) and
``serving.md`` (the table quoted in docs/benchmarks.md). Progress goes to the log (``--log``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.test.utils import override_settings

from ml.benchmarks.queries import QUERY_WORDS
from recommender import looks, selectors
from recommender.bench_data import (
    ITEMS_PER_FINE,
    N_COARSE,
    NOISE,
    bench_catalog,
    bench_database_name,
    build_serving_indexes,
    exact_topk,
    fresh_bench_version,
    grouped_sizes,
    has_index,
    index_params,
    load_catalog,
    percentiles,
    prewarm,
    relation_sizes,
    use_database,
)
from recommender.model_cache import embedder_for
from recommender.models import ModelVersion, ProductEmbedding

logger = logging.getLogger("bench_serving")


RESULTS_DIR = Path(__file__).resolve().parents[3] / "ml" / "benchmarks" / "results"


FILTER_SLOTS = {"none": None, "slot~10%": "shoes", "slot~1%": "jewellery"}


class Command(BaseCommand):
    help = "Serving latency and Recall@10 at 10k/100k/1M synthetic products in a separate bench database."

    def add_arguments(self, parser):
        parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
        parser.add_argument("--queries", type=int, default=200, help="queries per measurement")
        parser.add_argument("--database", default="recommender_bench", help="prefix: one database per size")
        parser.add_argument(
            "--halfvec-max-size",
            type=int,
            default=100_000,
            help="build and measure the halfvec index up to this size (it doubles the build)",
        )
        parser.add_argument("--maintenance-work-mem", default="5GB")
        parser.add_argument("--m", type=int, default=0, help="HNSW m of every built index (0: the model's)")
        parser.add_argument(
            "--ef-construction", type=int, default=0, help="HNSW ef_construction (0: the model's)"
        )
        parser.add_argument(
            "--parallel-workers", type=int, default=1, help="max_parallel_maintenance_workers"
        )
        parser.add_argument(
            "--reuse", action="store_true", help="reuse rows and indexes of that size if present"
        )
        parser.add_argument(
            "--skip-compat",
            action="store_true",
            help="skip complete-the-look and compatibility (e.g. while the compat index builds)",
        )
        parser.add_argument("--text-queries", type=int, default=50, help="end-to-end text searches")
        parser.add_argument("--skip-text", action="store_true", help="skip the text tower (e2e text search)")
        parser.add_argument(
            "--skip-shopper", action="store_true", help="skip the shoppers' hybrid search (product_search)"
        )
        parser.add_argument(
            "--texts",
            default=str(settings.HM_DATA_DIR),
            help="H&M sample whose articles' texts the bench products take ('' for synthetic titles)",
        )
        parser.add_argument(
            "--vectors",
            choices=("clusters", "texts"),
            default="clusters",
            help="fused vectors: seeded two-level clusters, or the products' real texts through the text "
            "tower (queries then meet them as in a trained model's space); 'texts' uses its own databases "
            "(prefix recommender_bench_texts) and results file (serving_texts.json)",
        )
        parser.add_argument("--out", default="")

    def handle(self, *args, **opts):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
        opts["texts_root"] = Path(opts["texts"]) if opts["texts"] else None
        texts = opts["vectors"] == "texts"
        if texts and opts["texts_root"] is None:
            raise CommandError("--vectors texts needs the products' real texts (--texts)")
        if texts and opts["database"] == "recommender_bench":
            opts["database"] = "recommender_bench_texts"
        out = Path(opts["out"] or RESULTS_DIR / ("serving_texts.json" if texts else "serving.json"))
        opts["out"] = str(out)
        for n in opts["sizes"]:
            logger.info("=== size %d ===", n)
            use_database(bench_database_name(opts["database"], n))
            res = bench_size(n, opts)
            with connection.cursor() as cur:  # the server's page cache: it sets how often a query reads disk
                cur.execute("SHOW shared_buffers")
                res["shared_buffers"] = cur.fetchone()[0]
            # re-read before writing: another size may have been measured meanwhile by a parallel run
            results = json.loads(out.read_text()) if out.exists() else {"sizes": {}}
            results["sizes"][str(n)] = res
            results["machine"] = {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}
            results["settings"] = {
                "ef_search": settings.HNSW_EF_SEARCH_BY_QUERY,
                "iterative_scan": settings.HNSW_ITERATIVE_SCAN,
                "max_scan_tuples": settings.HNSW_MAX_SCAN_TUPLES,
                "search_max_scan_tuples": settings.SEARCH_MAX_SCAN_TUPLES,
                "noise": NOISE,
                "coarse_centres": N_COARSE,
                "items_per_fine_centre": ITEMS_PER_FINE,
            }
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))
            out.with_suffix(".md").write_text(markdown(results))
            logger.info("wrote %s", out)


def bench_size(n: int, opts) -> dict:
    """Load (or reuse) n products, build the indexes, measure; returns the result dict of this size."""

    dim, cdim = settings.EMBEDDING_DIM, settings.COMPAT_DIM
    rng = np.random.default_rng(n)
    res: dict = {"n": n, "dim": dim, "compat_dim": cdim, "measured_at": datetime.now(UTC).isoformat()}
    table = ProductEmbedding._meta.db_table
    reuse = opts["reuse"] and ProductEmbedding.objects.count() == n
    res["vectors"] = opts["vectors"]

    def catalog(version: ModelVersion):
        embedder = embedder_for(version) if opts["vectors"] == "texts" else None
        return bench_catalog(n, rng, dim, cdim, opts["texts_root"], opts["vectors"], embedder)

    if reuse:
        version = ModelVersion.objects.get(is_active=True)
        slots, _, fused, compat = catalog(version)  # the same seeded vectors as the load
        ids = np.asarray(ProductEmbedding.objects.order_by("product_id").values_list("product_id", flat=True))
        for i in np.random.default_rng(2).integers(
            0, n, size=50
        ):  # guard: the regenerated rows are the stored ones
            e = ProductEmbedding.objects.get(product_id=ids[i])
            if e.slot != slots[i] or not np.allclose(np.asarray(e.fused), fused[i], atol=1e-5):
                raise CommandError(f"--reuse: stored row {ids[i]} differs from the synthetic catalog; reload")
        out = Path(opts["out"])
        before = json.loads(out.read_text())["sizes"].get(str(n), {}) if out.exists() else {}
        res.update({k: before[k] for k in ("load_s", "build_s") if k in before})  # measured when loaded
        logger.info("reusing %d rows", n)
    else:
        version = fresh_bench_version(dim, cdim)
        t0 = time.perf_counter()
        slots, texts, fused, compat = rows = catalog(version)
        ids = load_catalog(rows, version.pk)
        res["load_s"] = round(time.perf_counter() - t0, 1)
        logger.info("loaded %d products + vectors in %.1f s", n, res["load_s"])
        res["build_s"] = build_serving_indexes(table, dim, n, opts)
        with connection.cursor() as cur:
            cur.execute(f"VACUUM ANALYZE {table}")
            cur.execute("VACUUM ANALYZE catalog_product")
    res["sizes_mb"] = relation_sizes(table)
    res["index_params"] = index_params(table)
    res["prewarm_s"] = prewarm(table)
    res.update(measure(n, opts, version, ids, slots, fused, compat))
    return res


def _timed(fn, queries) -> tuple[list[float], list]:
    ms, outs = [], []
    for q in queries:
        t0 = time.perf_counter()
        outs.append(fn(q))
        ms.append((time.perf_counter() - t0) * 1000)
    return ms, outs


def measure(n, opts, version, ids, slots, fused, compat) -> dict:
    """Latency and recall measurements on the loaded catalog."""

    with connection.cursor() as cur:  # the backend answers for this process: same CPU priority
        cur.execute("SELECT pg_backend_pid()")
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, cur.fetchone()[0], os.getpriority(os.PRIO_PROCESS, 0))
    rng = np.random.default_rng(1)
    nq = opts["queries"]
    out: dict = {"load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    k = 10
    rows_of = {
        name: (None if slot is None else np.flatnonzero(slots == slot)) for name, slot in FILTER_SLOTS.items()
    }
    out["filter_share"] = {name: (1.0 if r is None else round(len(r) / n, 4)) for name, r in rows_of.items()}
    # Text-vector queries: fresh points of the catalog's distribution (a centre plus noise).
    anchors = rng.integers(0, n, size=nq)
    qv = fused[anchors] + rng.standard_normal((nq, fused.shape[1]), dtype=np.float32) * (
        0.5 / np.sqrt(fused.shape[1])
    )
    qv = (qv / np.linalg.norm(qv, axis=1, keepdims=True)).astype(np.float32)  # float32 like the catalog
    base = ProductEmbedding.objects.filter(model_version=version)
    recall: dict = {}
    lat: dict = {}
    for halfvec in [False, True] if has_index("emb_fused_half_hnsw") else [False]:
        settings.PGVECTOR_HALFVEC = halfvec
        tag = "halfvec" if halfvec else "vector"
        for name, slot in FILTER_SLOTS.items():
            qs = base if slot is None else base.filter(slot=slot)

            def run(q, qs=qs, slot=slot):
                return selectors._ranked(qs, "fused", q, k, kind="search")

            for q in qv[:20]:  # warm the index pages (the build before may have evicted them)
                run(q)
            ms, res = _timed(run, qv)
            exact_ms, hits = [], []
            part = fused if rows_of[name] is None else np.ascontiguousarray(fused[rows_of[name]])
            for q, r in zip(qv, res, strict=True):
                t0 = time.perf_counter()
                top = exact_topk(part, q, k, rows_of[name])
                exact_ms.append((time.perf_counter() - t0) * 1000)
                truth = set(ids[top].tolist())
                hits.append(len(truth & {pid for pid, _ in r}) / k)
            recall[f"{tag} {name}"] = round(float(np.mean(hits)), 4)
            lat[f"text-vector {tag} {name}"] = percentiles(ms)
            lat[f"exact numpy {name}"] = percentiles(exact_ms)
            logger.info(
                "%s %s: recall@10 %.3f, p95 %.1f ms (exact %.1f ms)",
                tag,
                name,
                recall[f"{tag} {name}"],
                lat[f"text-vector {tag} {name}"]["p95_ms"],
                lat[f"exact numpy {name}"]["p95_ms"],
            )
    settings.PGVECTOR_HALFVEC = False
    out["recall_at_10"] = recall
    # Real selectors end to end (Django ORM, product rows, serializable hits).
    pids = ids[rng.integers(0, n, size=nq)].tolist()
    selectors.similar_items(product_id=pids[0], k=k)
    lat["similar items (selector)"] = percentiles(
        _timed(lambda p: selectors.similar_items(product_id=p, k=k), pids)[0]
    )
    tops, bottoms = ids[slots == "top"], ids[slots == "bottom"]
    if opts["skip_compat"]:
        out["latency"] = lat
        out["skipped"] = ["complete-the-look", "compatibility"]
        return _text_e2e(out, opts, rng, k)
    # a look is one audience's (a men's shirt with men's trousers): each query's items share the
    # audience group of its first, drawn at random (groups of mixed items leave only unisex picks)
    group_of = dict(
        ProductEmbedding.objects.filter(model_version=version).values_list("product_id", "audience_group")
    )
    groups = np.asarray([group_of[int(i)] for i in ids])

    by_group: dict[tuple[int, str], np.ndarray] = {}

    def same_group(first: int, pool: np.ndarray) -> int:
        key = (id(pool), group_of[first])
        if key not in by_group:
            mine = pool[groups[np.searchsorted(ids, pool)] == group_of[first]]
            by_group[key] = mine if len(mine) else pool
        return int(rng.choice(by_group[key]))

    def outfit(first_pool: np.ndarray, other_pools: list[np.ndarray]) -> list[int]:
        first = int(rng.choice(first_pool))
        return [first, *(same_group(first, p) for p in other_pools)]

    pairs = [outfit(tops, [bottoms]) for _ in range(nq)]
    lat["complete-the-look, 2 items, 6 slots (selector)"] = percentiles(
        _timed(lambda p: looks.complete_the_look(product_ids=p, k=4), pairs)[0]
    )
    one = [outfit(tops, [bottoms]) for _ in range(nq)]
    lat["complete-the-look, 1 slot (selector)"] = percentiles(
        _timed(lambda p: looks.complete_the_look(product_ids=p, k=4, slots=["shoes"]), one)[0]
    )
    quads = [outfit(ids, [ids, ids, ids]) for _ in range(nq)]
    lat["compatibility, 4 items + replacement (selector)"] = percentiles(
        _timed(lambda p: looks.outfit_compatibility(product_ids=p), quads)[0]
    )
    lat["compatibility, 4 items, no replacement (selector)"] = percentiles(
        _timed(lambda p: looks.outfit_compatibility(product_ids=p, suggest=False), quads)[0]
    )
    out["latency"] = lat
    return _text_e2e(out, opts, rng, k)


def _text_e2e(out: dict, opts, rng: np.random.Generator, k: int) -> dict:
    """Text search end to end (text tower + query), unless ``--skip-text``."""

    lat = out["latency"]
    if not opts["skip_text"]:
        words = list(QUERY_WORDS)
        texts = [
            " ".join(rng.choice(words, size=3)) + f" {i}" for i in range(opts["text_queries"])
        ]  # no LRU hits
        selectors.text_search(query="warm up the towers", k=k)
        lat["text search end to end (tower + query)"] = percentiles(
            _timed(lambda t: selectors.text_search(query=t, k=k), texts)[0]
        )
    if not opts["skip_shopper"]:
        lat.update(shopper_search_latency(opts["texts_root"] is not None))
    return out


def shopper_search_latency(real_texts: bool) -> dict:
    """p50/p95 (ms) of the shoppers' search page's own call, :func:`recommender.search.product_search`
    (hybrid: query understanding and spelling, text tower, full-text + vector rankings fused in SQL,
    variant grouping, facets), over the search benchmark's queries (``search_benchmark/queries.json``).

    Each query runs twice: first with the text tower's query cache cleared (what a new query costs),
    then again (a repeated query: the tower's LRU answers). One warm-up query first builds the search
    vocabulary (cached per catalog generation, as in serving).
    """
    from recommender.search import product_search
    from recommender.search_eval import QUERIES

    queries = [q["q"] for q in json.loads(QUERIES.read_text())["queries"]]
    tag = "" if real_texts else ", synthetic texts"
    product_search(query="warm up the vocabulary", k=24)
    lru = embedder_for(ModelVersion.objects.get(is_active=True))._text_lru

    def cold(q: str):
        lru.clear()
        return product_search(query=q, k=24)

    def plain(q: str):  # the two levers of recommender.search switched off: exact ranking, frequent words
        with override_settings(SEARCH_EXACT_MAX_ROWS=0, SEARCH_KEYWORD_MAX_ROWS=0):
            return product_search(query=q, k=24)

    new_ms = _timed(cold, queries)[0]
    slowest = sorted(zip(new_ms, queries, strict=True), reverse=True)[:8]
    logger.info("slowest new queries: %s", ", ".join(f"{q!r} {ms:.0f} ms" for ms, q in slowest))
    return {
        f"shopper search, hybrid, new query (tower + understanding + SQL){tag}": {
            **percentiles(new_ms),
            "slowest": [[q, round(ms, 1)] for ms, q in slowest],
        },
        f"shopper search, hybrid, repeated query, no exact ranking of few, frequent words bring all{tag}": (
            percentiles(_timed(plain, queries)[0])
        ),
        f"shopper search, hybrid, repeated query (tower cached){tag}": percentiles(
            _timed(lambda q: product_search(query=q, k=24), queries)[0]
        ),
        f"shopper search, lexical only{tag}": percentiles(
            _timed(lambda q: product_search(query=q, k=24, mode="lexical"), queries)[0]
        ),
    }


def markdown(results: dict) -> str:
    """The README tables: latency per query type and size, recall per filter and size, sizes."""
    sizes = sorted(results["sizes"], key=int)
    rs = [results["sizes"][s] for s in sizes]
    head = "| | " + " | ".join(f"{int(s):,}" for s in sizes) + " |\n|---|" + "---:|" * len(sizes) + "\n"
    lines = ["### Latency, ms (p50 / p95)\n", head]
    keys = list(dict.fromkeys(k for r in rs for k in r.get("latency", {})))
    for key in keys:
        cells = [
            f"{r['latency'][key]['p50_ms']} / {r['latency'][key]['p95_ms']}"
            if key in r.get("latency", {})
            else "—"
            for r in rs
        ]
        lines.append(f"| {key} | " + " | ".join(cells) + " |\n")
    lines += ["\n### Exact NumPy search time / index query time (p50; above 1 = the index is faster)\n", head]
    for tag in ("vector", "halfvec"):
        for name in FILTER_SLOTS:
            cells = []
            for r in rs:
                lat = r.get("latency", {})
                a, b = lat.get(f"exact numpy {name}"), lat.get(f"text-vector {tag} {name}")
                cells.append(f"{a['p50_ms'] / max(b['p50_ms'], 1e-3):.2f}" if a and b else "—")
            if any(c != "—" for c in cells):
                lines.append(f"| {tag} {name} | " + " | ".join(cells) + " |\n")
    lines += ["\n### Recall@10 against exact search\n", head]
    for key in dict.fromkeys(k for r in rs for k in r.get("recall_at_10", {})):
        lines.append(
            f"| {key} | " + " | ".join(str(r.get("recall_at_10", {}).get(key, "—")) for r in rs) + " |\n"
        )
    lines += ["\n### Index build (s) and sizes (MB)\n", head]
    for key in dict.fromkeys(k for r in rs for k in r.get("build_s", {})):
        lines.append(
            f"| build {key} | " + " | ".join(str(r.get("build_s", {}).get(key, "—")) for r in rs) + " |\n"
        )
    for name in ("emb_fused_hnsw", "emb_fused_top_hnsw", "emb_compat_top_hnsw"):
        cells = [r.get("index_params", {}).get(name, "—").replace("'", "") for r in rs]
        if any(c != "—" for c in cells):
            lines.append(f"| parameters {name} | " + " | ".join(cells) + " |\n")
    sizes = [grouped_sizes(r.get("sizes_mb", {})) for r in rs]
    for key in dict.fromkeys(k for g in sizes for k in g):
        lines.append(f"| {key} MB | " + " | ".join(str(g.get(key, "—")) for g in sizes) + " |\n")
    return "".join(lines)
