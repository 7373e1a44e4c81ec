"""The query benchmark of text search (``manage.py evaluate_search``): shopper queries with what every
result must be, P@10 per query and overall for vector-only, lexical-only and hybrid search.

The queries are ``recommender/search_benchmark/queries.json`` (hand-written: plain garment words,
colours and synonyms, audiences, negations, attributes, nonsense) plus, at run time, queries generated
from the catalog's own (audience group, colour, product type) combinations ("women dark blue dress")
and SKU and exact-title queries of seeded random products.

P@10 of a query is the share of its top 10 results that satisfy every constraint, where the
denominator is capped at the number of catalog products that satisfy them (a query with 4 possible
answers that finds all 4 scores 1.0). Queries with no possible answer in the catalog are left out
(listed). Nonsense queries score 1 when the answer is empty ("no close matches"); SKU and title
queries when the product comes first.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import numpy as np

from catalog.models import Product
from recommender.filters import Filters
from recommender.search import product_search
from recommender.selectors import NoActiveModel, active_version

QUERIES = Path(__file__).resolve().parent / "search_benchmark" / "queries.json"
#: The modes compared: (name, product_search arguments). Vector-only is the search as it was: the text
#: tower's vector alone, no query understanding, colour variants kept.
MODES = {
    "vector": {"mode": "vector", "understand": False, "group_variants": False},
    "lexical": {"mode": "lexical", "understand": True, "group_variants": True},
    "hybrid": {"mode": "hybrid", "understand": True, "group_variants": True},
}
#: Spoken names of the audience groups in generated queries.
AUDIENCE_WORDS = {"women": "women", "men": "men", "kids": "kids", "baby": "baby"}
TOP = 10


@dataclass(frozen=True)
class Row:
    """A product as the benchmark checks it."""

    pk: int
    sku: str
    title: str
    type: str
    colour: str
    audience: str
    group: str
    text: str


def catalog_rows() -> dict[int, Row]:
    """Every product's fields the constraints read (its text lower-cased: title, colour, type,
    audience, section, description)."""
    rows = {}
    for p in Product.objects.only(
        "sku",
        "title",
        "product_type",
        "colour",
        "audience_group",
        "audience",
        "section",
        "description",
        "variant_group",
    ).iterator(chunk_size=2000):
        rows[p.pk] = Row(
            p.pk, p.sku, p.title, p.product_type, p.colour, p.audience_group, p.variant_group, p.text.lower()
        )
    return rows


def _among(value: str, allowed) -> bool:
    return value.lower() in {a.lower() for a in allowed}


def satisfies(row: Row, must: dict) -> bool:
    """Does a product satisfy every constraint of a benchmark query (keys of ``queries.json``)? Types and
    colours are compared without case (H&M writes "T-shirt" and "Black", MANGO "T-Shirt" and "black")."""
    if must.get("type") and not _among(row.type, must["type"]):
        return False
    if must.get("colour") and not _among(row.colour, must["colour"]):
        return False
    if must.get("audience") and row.audience not in must["audience"]:
        return False
    if _among(row.colour, must.get("colour_not", ())):
        return False
    if any(not re.search(rx, row.text) for rx in must.get("text", ())):
        return False
    return not any(re.search(rx, row.text) for rx in must.get("text_not", ()))


def generated_queries(rows: dict[int, Row], *, n: int = 30, exact: int = 5, seed: int = 0) -> list[dict]:
    """Queries from the catalog's (audience, colour, type) combinations holding ≥ 5 products, and
    SKU / exact-title queries of ``exact`` random products (seeded)."""
    combos = Counter(
        (r.audience, r.colour, r.type)
        for r in rows.values()
        if r.audience in AUDIENCE_WORDS
        and r.colour
        and r.type
        and not r.type.startswith(("Other", "Unknown"))
        and not r.colour.startswith(("Other", "Unknown", "undefined"))
    )
    usable = sorted(c for c, count in combos.items() if count >= 5)
    rng = random.Random(seed)
    out = []
    for audience, colour, type_ in rng.sample(usable, min(n, len(usable))):
        words = f"{AUDIENCE_WORDS[audience]} {colour.lower()} {type_.split('/')[0].lower()}"
        out.append(
            {"q": words, "group": "generated", "audience": [audience], "colour": [colour], "type": [type_]}
        )
    for row in rng.sample(sorted(rows.values(), key=lambda r: r.pk), min(exact, len(rows))):
        out.append({"q": row.sku, "group": "sku", "first": row.pk})
        out.append({"q": row.title, "group": "title", "first_title": row.title.lower()})
    return out


def _score(query: dict, ids: list[int], rows: dict[int, Row], possible: int) -> float:
    if query.get("expect_none"):
        return 1.0 if not ids else 0.0
    if "first" in query:
        return 1.0 if ids[:1] == [query["first"]] else 0.0
    if "first_title" in query:
        return 1.0 if ids and rows[ids[0]].title.lower() == query["first_title"] else 0.0
    good = sum(satisfies(rows[i], query) for i in ids[:TOP] if i in rows)
    return min(1.0, good / min(TOP, possible))  # ungrouped answers may hold more than the groups


def search_evaluate(
    *, out: Path | None = None, queries_path: Path = QUERIES, seed: int = 0, log=print
) -> dict:
    """Run every benchmark query in every mode; print and (with ``out``) write ``search_eval.json`` and
    ``search_eval.md``.

    Returns:
        ``{"modes": [...], "queries": [{q, group, possible, <mode>: p10, <mode>_dup_groups}],
        "overall": {mode: mean P@10}, "groups": {group: {mode: mean}}, "skipped": [...]}``.
    """
    rows = catalog_rows()
    queries = json.loads(queries_path.read_text())["queries"] + generated_queries(rows, seed=seed)
    try:
        active_version()
        modes = list(MODES)
    except NoActiveModel:
        modes = ["lexical"]
        log("no active model version: lexical-only (the vector and hybrid modes need one)")
    results, skipped = [], []
    timings: dict[str, list[float]] = defaultdict(list)
    for query in queries:
        checked = "expect_none" in query or "first" in query or "first_title" in query
        # the cap counts variant groups: one product per group is all a grouped answer can show
        possible = (
            len(rows) if checked else len({r.group or r.pk for r in rows.values() if satisfies(r, query)})
        )
        if not possible:
            skipped.append(query["q"])
            continue
        entry = {"q": query["q"], "group": query["group"], "possible": possible}
        for mode in modes:
            start = time.perf_counter()
            answer = product_search(query=query["q"], k=TOP, filters=Filters(), **MODES[mode])
            timings[mode].append(1000 * (time.perf_counter() - start))
            ids = [h.product.pk for h in answer.hits]
            entry[mode] = round(_score(query, ids, rows, possible), 3)
            groups = [rows[i].group for i in ids if rows[i].group]
            entry[f"{mode}_dup_groups"] = len(groups) - len(set(groups))
        entry["variant_check"] = bool(query.get("variant_check"))
        results.append(entry)
        log(f"{query['group']:>10}  {query['q'][:40]:<40} " + "  ".join(f"{m} {entry[m]:.2f}" for m in modes))
    ranked = [r for r in results if r["group"] not in ("nonsense", "sku", "title")]
    by_group: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        for m in modes:
            by_group[r["group"]][m].append(r[m])
    report = {
        "modes": modes,
        "products": len(rows),
        "queries": results,
        "overall": {m: round(mean(r[m] for r in ranked), 3) for m in modes},
        "groups": {g: {m: round(mean(v), 3) for m, v in ms.items()} for g, ms in by_group.items()},
        "variant_checks": {
            m: {r["q"]: r[f"{m}_dup_groups"] for r in results if r["variant_check"]} for m in modes
        },
        "skipped": skipped,
        "latency_ms": {
            m: {"p50": round(float(np.percentile(t, 50)), 1), "p95": round(float(np.percentile(t, 95)), 1)}
            for m, t in timings.items()
        },
    }
    log(
        "latency (ms, whole call, one process): "
        + ", ".join(f"{m} p50 {v['p50']} p95 {v['p95']}" for m, v in report["latency_ms"].items())
    )
    log("P@10 overall (ranked queries): " + ", ".join(f"{m} {v:.3f}" for m, v in report["overall"].items()))
    for g, ms in report["groups"].items():
        log(f"  {g:>10}: " + ", ".join(f"{m} {v:.3f}" for m, v in ms.items()))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "search_eval.json").write_text(json.dumps(report, indent=1))
        (out / "search_eval.md").write_text(_markdown(report))
        log(f"written to {out / 'search_eval.json'} and {out / 'search_eval.md'}")
    return report


def _markdown(report: dict) -> str:
    modes = report["modes"]
    lines = [
        f"# Text search benchmark ({report['products']} products)",
        "",
        "P@10 (capped at the number of possible answers); nonsense: 1 = answered no close matches; sku /",
        "title: 1 = the product first. Overall: the ranked queries (all groups but nonsense, sku, title).",
        "",
        "| group | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
        "| **overall** | " + " | ".join(f"**{report['overall'][m]:.3f}**" for m in modes) + " |",
    ]
    lines += [
        f"| {g} | " + " | ".join(f"{ms[m]:.3f}" for m in modes) + " |" for g, ms in report["groups"].items()
    ]
    lines += [
        "",
        "Latency of one call (ms, text tower included, this machine): "
        + ", ".join(f"{m} p50 {v['p50']} / p95 {v['p95']}" for m, v in report["latency_ms"].items()),
    ]
    lines += ["", "Variant groups repeated in the top 10 (variant-heavy queries):", ""]
    for m in modes:
        lines.append(f"* {m}: " + ", ".join(f"{q} {n}" for q, n in report["variant_checks"][m].items()))
    lines += [
        "",
        "| query | group | possible | " + " | ".join(modes) + " |",
        "|---|---|---|" + "---|" * len(modes),
    ]
    for r in report["queries"]:
        lines.append(
            f"| {r['q']} | {r['group']} | {r['possible']} | "
            + " | ".join(f"{r[m]:.2f}" for m in modes)
            + " |"
        )
    if report["skipped"]:
        lines += ["", "Left out (no possible answer in this catalog): " + ", ".join(report["skipped"])]
    return "\n".join(lines) + "\n"
