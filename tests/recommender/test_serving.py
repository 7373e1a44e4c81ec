"""Serving queries on the real PostgreSQL + pgvector: index use per query type, HNSW settings, halfvec,
filters, and the replacement suggested by outfit compatibility."""

from __future__ import annotations

import re

import numpy as np
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from PIL import Image

from catalog.models import Product
from recommender import looks, model_cache, search, selectors
from recommender.models import ProductEmbedding

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def _ranking_queries(fn) -> list[str]:
    """Run a selector; return the SQL of its ranking queries (the ones ordering by ``<#>``)."""
    with CaptureQueriesContext(connection) as ctx:
        fn()
    return [q["sql"] for q in ctx.captured_queries if "<#>" in q["sql"] and "ORDER BY" in q["sql"]]


def _plan(sql: str, kind: str) -> str:
    """EXPLAIN a ranking query under the very settings its selector sets (``ranking_settings_sql``).

    Without the B-tree of the exact slot rankings (dropped, rolled back with the test): on the
    slice's 160 rows the planner estimates a slot's filtered rows at 1 and reads them through it; at 100k
    it keeps to the slot's graph (docs/benchmarks.md)."""
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("DROP INDEX IF EXISTS emb_version_slot_audience")
        cur.execute("ANALYZE recommender_productembedding")
        cur.execute(selectors.ranking_settings_sql(kind, 10))
        cur.execute("EXPLAIN " + sql)
        return "\n".join(r[0] for r in cur.fetchall())


def _photo(hm_root) -> Image.Image:
    return Image.open(next((hm_root / "images").glob("*/*.jpg"))).convert("RGB")


@pytest.mark.parametrize("kind", ["similar", "search", "photo", "complete", "compatibility"])
def test_every_query_type_orders_by_the_bare_operator_on_an_hnsw_index(
    trained_catalog, hm_root, kind, settings
):
    settings.LOOKS_EXACT_MAX_ROWS = 0  # the graphs' path: the slice's slots have few rows (ranked exactly)
    top = Product.objects.filter(slot="top").first()
    bottom = Product.objects.filter(slot="bottom").first()
    shoes = Product.objects.filter(slot="shoes").first()
    run = {
        "similar": lambda: selectors.similar_items(
            product_id=top.pk, k=5, filters=selectors.Filters(slot="bottom")
        ),
        "search": lambda: selectors.text_search(query="black dress", k=5),
        "photo": lambda: selectors.photo_search(image=_photo(hm_root), k=5),
        "complete": lambda: looks.complete_the_look(product_ids=[top.pk, bottom.pk], k=2),
        "compatibility": lambda: looks.outfit_compatibility(product_ids=[top.pk, bottom.pk, shoes.pk]),
    }[kind]
    column = {
        "similar": "fused",
        "search": "fused",
        "photo": "image",
        "complete": "compat",
        "compatibility": "compat",
    }[kind]
    sqls = _ranking_queries(run)
    assert sqls, "the selector ran no ranking query"
    for sql in sqls:
        assert re.search(rf'ORDER BY "?\w*"?\.?"?{column}"? <#> ', sql) or f'{column}" <#>' in sql, sql
        plan = _plan(sql, "complete" if kind == "compatibility" else kind)
        slot = re.search(r"\.\"slot\" = '([\w-]+)'", sql)
        if slot:  # a slot filter walks that slot's partial graph (migration 0004)
            assert f"Index Scan using emb_{column}_{slot.group(1).split('-')[0]}_hnsw" in plan, plan
        else:
            assert f"Index Scan using emb_{column}_hnsw" in plan, plan
    if column == "compat":
        assert all('."slot" = \'' in sql for sql in sqls)  # compat is only ever ranked within a slot


@pytest.mark.parametrize("kind", ["similar", "search"])
def test_vocabulary_filters_match_every_spelling_and_keep_the_hnsw_index(trained_catalog, kind):
    """A colour / type / audience filter is a regular expression on the product (every spelling of the
    value): the ranking still walks the HNSW graph, the product's filter applied to each row it yields."""
    from django.db.models import Count

    row = (
        Product.objects.exclude(audience="")
        .values("product_type", "colour", "audience")
        .annotate(n=Count("id"))
        .order_by("-n")
        .first()
    )
    # another spelling of each value: upper case, singular or plural, punctuation around it
    kind_ = row["product_type"]
    f = selectors.Filters(
        product_type=(kind_[:-1] if kind_.endswith("s") else kind_ + "s").upper(),
        colour=f" {row['colour'].lower()}!",
        audience=row["audience"].swapcase(),
    )
    top = Product.objects.filter(slot="top").first()
    run = {
        "similar": lambda: selectors.similar_items(product_id=top.pk, k=5, filters=f),
        "search": lambda: selectors.text_search(query="black dress", k=5, filters=f),
    }[kind]
    sqls = _ranking_queries(run)
    assert sqls and all("~*" in sql for sql in sqls), sqls
    for sql in sqls:
        assert "Index Scan using emb_fused_hnsw" in _plan(sql, kind), sql
    hits = run()
    assert Product.objects.filter_facets(**vars(f)).count() == row["n"], (row, f)
    assert len(hits) == min(5, row["n"])
    assert {(h.product.product_type, h.product.colour, h.product.audience) for h in hits} == {
        (row["product_type"], row["colour"], row["audience"])
    }


@pytest.mark.parametrize("typed", ["Bl(ack", ".*", "black|white", "[a-z]+", "black\\", "'; DROP TABLE x; --"])
def test_filter_text_is_never_a_pattern(trained_catalog, typed):
    """What a shopper types in a filter is matched as words, never as a regular expression or SQL: no
    query error, and a pattern-like value does not widen the match."""
    Product.objects.filter(pk=Product.objects.first().pk).update(colour="")  # rolled back after
    hits = selectors.text_search(query="dress", k=20, filters=selectors.Filters(colour=typed))
    colours = {h.product.colour.casefold() for h in hits}
    assert colours <= {"black"}, (typed, colours)
    assert Product.objects.filter_facets(colour=typed).count() == (
        Product.objects.filter(colour__iexact="black").count() if typed == "black\\" else 0
    )


def test_ef_search_and_iterative_scan_come_from_settings_per_query_type(trained_catalog, settings):
    settings.HNSW_EF_SEARCH_BY_QUERY = {"similar": 40, "search": 123, "photo": 100, "complete": 64}
    settings.HNSW_MAX_SCAN_TUPLES = 5000
    settings.HUBNESS_POOL = 40  # complete-the-look's LIMIT (the pool it re-ranks), below its ef_search
    settings.LOOKS_EXACT_MAX_ROWS = 0  # the graphs' path: every slot of the slice has few rows
    top = Product.objects.filter(slot="top").first()
    with CaptureQueriesContext(connection) as ctx:
        selectors.text_search(query="dress", k=5)
        selectors.similar_items(product_id=top.pk, k=5, filters=selectors.Filters(slot="shoes"))
        looks.complete_the_look(product_ids=[top.pk], k=1, slots=["shoes"])
    sets = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("SET LOCAL")]
    force = (
        "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; "
        "SET LOCAL jit = off; "
    )
    scan = (
        "SET LOCAL hnsw.iterative_scan = relaxed_order; SET LOCAL hnsw.max_scan_tuples = 5000; "
        "SET LOCAL max_parallel_workers_per_gather = 0"
    )
    assert sets == [
        f"SET LOCAL hnsw.ef_search = 123; {force}{scan}",
        f"SET LOCAL hnsw.ef_search = 40; {force}{scan}",
        f"SET LOCAL hnsw.ef_search = 64; {force}{scan}",
    ], sets
    settings.HNSW_FORCE_INDEX = False
    assert selectors.ranking_settings_sql("search", 10) == f"SET LOCAL hnsw.ef_search = 123; {scan}"
    # the shoppers' search bounds its own filtered scan; the other rankings keep HNSW_MAX_SCAN_TUPLES
    settings.SEARCH_MAX_SCAN_TUPLES = 700
    with CaptureQueriesContext(connection) as ctx:
        search.product_search(query="black dress", k=5)
    fused = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("SET LOCAL")]
    assert len(fused) == 1 and "SET LOCAL hnsw.max_scan_tuples = 700;" in fused[0], fused


def test_halfvec_ranking_uses_the_expression_index_and_matches_full_precision(trained_catalog, settings):
    with connection.cursor() as cur:  # the index migration 0003_serving creates when PGVECTOR_HALFVEC is on
        cur.execute(
            "CREATE INDEX emb_fused_half_hnsw ON recommender_productembedding USING hnsw "
            "((fused::halfvec(512)) halfvec_ip_ops)"
        )
    full = selectors.text_search(query="black trousers", k=10)
    settings.PGVECTOR_HALFVEC = True
    sqls = _ranking_queries(lambda: selectors.text_search(query="black trousers", k=10))
    half = selectors.text_search(query="black trousers", k=10)
    assert '"fused"::halfvec(512) <#> ' in sqls[0]
    assert "Index Scan using emb_fused_half_hnsw" in _plan(sqls[0], "search")
    overlap = {h.product.pk for h in full} & {h.product.pk for h in half}
    assert len(overlap) >= 9, (full, half)
    assert [round(h.score, 2) for h in half[:3]] == [round(h.score, 2) for h in full[:3]]


def test_filters_return_exactly_the_matching_rows_in_exact_order(trained_catalog):
    """A selective filter (colour + price range) answers the k best matching rows, as exact search would."""
    from django.db.models import Count, F

    Product.objects.update(price=F("id") % 50 + 10)  # the H&M sample has no prices; rolled back after
    colour = Product.objects.values("colour").annotate(n=Count("id")).order_by("-n")[0]["colour"]
    match = Product.objects.filter(colour__iexact=colour, price__gte=20, price__lte=40)
    n = match.count()
    assert 1 <= n < Product.objects.count() * 0.2
    f = selectors.Filters(colour=colour.lower(), price_min=20, price_max=40)
    hits = selectors.text_search(query="summer dress", k=n + 5, filters=f)
    assert len(hits) == n  # every matching row, none else
    assert {h.product.pk for h in hits} == set(match.values_list("pk", flat=True))
    q = model_cache.embedder_for(trained_catalog).embed_query_text("summer dress")
    embs = ProductEmbedding.objects.filter(model_version=trained_catalog, product__in=match)
    exact = sorted(((float(np.dot(np.asarray(e.fused), q)), e.product_id) for e in embs), reverse=True)
    assert [h.product.pk for h in hits] == [pid for _, pid in exact]
    assert [h.score for h in hits] == pytest.approx([s for s, _ in exact], abs=1e-4)


def test_similar_items_filters_by_product_type_and_audience(trained_catalog):
    from django.db.models import Count

    row = (
        Product.objects.exclude(audience="")
        .values("product_type", "audience")
        .annotate(n=Count("id"))
        .filter(n__gte=4)
        .order_by("n")
        .first()
    )
    src = Product.objects.exclude(product_type=row["product_type"]).first()
    f = selectors.Filters(product_type=row["product_type"], audience=row["audience"])
    hits = selectors.similar_items(product_id=src.pk, k=3, exclude_variants=False, filters=f)
    assert len(hits) == 3
    assert {(h.product.product_type, h.product.audience) for h in hits} == {
        (row["product_type"], row["audience"])
    }


def test_complete_the_look_for_three_items_never_repeats_a_slot(trained_catalog):
    ids = [
        Product.objects.filter(slot=s).exclude(product_type="unknown").first().pk
        for s in ("top", "bottom", "shoes")
    ]
    picks = looks.complete_the_look(product_ids=ids, k=3)
    assert [sp.slot for sp in picks] == ["outerwear", "bag", "accessory", "jewellery"]
    for sp in picks:
        assert {h.product.slot for h in sp.hits} <= {sp.slot}
        assert not {h.product.pk for h in sp.hits} & set(ids)


def test_suggested_replacement_is_another_item_that_raises_the_score(trained_catalog):
    suggested = 0
    # one audience's outfits (a swap keeps to the others' audience): the slice's women's tops and bottoms
    known = Product.objects.exclude(product_type="unknown").filter(audience_group="women").order_by("pk")
    tops, bottoms = (list(known.filter(slot=s).values_list("pk", flat=True)[:6]) for s in ("top", "bottom"))
    shoes = known.filter(slot="shoes").values_list("pk", flat=True).first()
    for ids in ([t, b, shoes] for t, b in zip(tops, bottoms, strict=False)):
        res = looks.outfit_compatibility(product_ids=ids)
        m = np.asarray(res.matrix)
        i, j = ids.index(res.weakest[0]), ids.index(res.weakest[1])
        assert m[i, j] == pytest.approx(min(m[a, b] for a in range(3) for b in range(3) if a != b), abs=1e-4)
        if res.suggestion is None:
            continue
        suggested += 1
        weaker = i if (m[i].sum() - 1) <= (m[j].sum() - 1) else j
        new = res.suggestion.product
        assert new.pk not in ids and new.slot == Product.objects.get(pk=ids[weaker]).slot
        swapped = [new.pk if x == ids[weaker] else x for x in ids]
        better = looks.outfit_compatibility(product_ids=swapped, suggest=False)
        assert better.score > res.score, (better.score, res.score)
    assert suggested >= 1


def test_query_text_cache_is_bounded_and_ignores_whitespace_runs(trained_catalog, monkeypatch):
    emb = model_cache.embedder_for(trained_catalog)
    a = emb.embed_query_text("black   leather boots ")
    b = emb.embed_query_text("black leather boots")
    assert a is b and np.linalg.norm(a) == pytest.approx(1.0, abs=1e-4)
    monkeypatch.setattr(emb, "TEXT_CACHE_SIZE", 2)
    for q in ("red dress", "blue jeans", "green coat"):
        emb.embed_query_text(q)
    assert list(emb._text_lru) == ["blue jeans", "green coat"]
    assert np.allclose(emb.embed_query_text("black leather boots"), a, atol=1e-6)  # recomputed, same vector


def test_complete_the_look_runs_its_slot_queries_in_one_transaction(trained_catalog):
    top = Product.objects.filter(slot="top").exclude(product_type="unknown").first()
    with CaptureQueriesContext(connection) as ctx:
        picks = looks.complete_the_look(product_ids=[top.pk], k=2)
    sqls = [q["sql"] for q in ctx.captured_queries]
    ranking = [q for q in sqls if "<#>" in q]
    assert len(picks) == len(ranking) == len(looks.missing_slots(["top"])) >= 5
    assert sum(q.startswith("SET LOCAL hnsw.ef_search") for q in sqls) == 1


def test_the_look_of_a_jacket_is_a_dress_or_separates_never_both(trained_catalog, client):
    from ml.slots import BOTTOM, ONE_PIECE, TOP

    jacket = Product.objects.filter(slot="outerwear").first()
    picks = looks.complete_the_look(product_ids=[jacket.pk], k=2)
    suggested = {sp.slot for sp in picks if sp.hits}
    assert ONE_PIECE in suggested and {TOP, BOTTOM} & suggested  # both kinds offered as picks...
    look = {h.product.slot for h in looks.one_look(picks)}
    assert not (ONE_PIECE in look and look & {TOP, BOTTOM}), look  # ...but the look wears one of them
    best = {sp.slot: sp.hits[0].score for sp in picks if sp.hits}
    separates = [best[s] for s in (TOP, BOTTOM) if s in best]
    assert (ONE_PIECE in look) == (best[ONE_PIECE] >= sum(separates) / len(separates))
    url = re.search(r'href="(/outfit\?ids=[\d,]+)"', client.get(f"/products/{jacket.pk}").content.decode())
    ids = [int(i) for i in url.group(1).split("=")[1].split(",")]
    slots = set(Product.objects.filter(pk__in=ids).values_list("slot", flat=True))
    assert not (ONE_PIECE in slots and slots & {TOP, BOTTOM}), slots
