"""Recommendation queries against the real PostgreSQL + pgvector, on a trained slice of the H&M sample."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection, transaction
from pgvector.django import MaxInnerProduct

from catalog.models import Product
from ml.slots import OUTFIT_SLOTS
from recommender import looks, model_cache, selectors
from recommender.models import ProductEmbedding

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def test_every_product_has_unit_vectors(trained_catalog):
    embs = ProductEmbedding.objects.filter(model_version=trained_catalog)
    assert embs.count() == Product.objects.count()
    for e in embs[:20]:
        for col in ("image", "text", "fused", "compat"):
            assert np.linalg.norm(np.asarray(getattr(e, col))) == pytest.approx(1.0, abs=1e-4)


def test_own_vector_is_its_nearest_neighbour(trained_catalog):
    for p in Product.objects.order_by("?")[:10]:
        emb = ProductEmbedding.objects.get(product=p, model_version=trained_catalog)
        top = (
            ProductEmbedding.objects.filter(model_version=trained_catalog)
            .order_by(MaxInnerProduct("image", emb.image))
            .values_list("product_id", flat=True)[:1]
        )
        assert list(top) == [p.pk]


def test_text_query_jeans_returns_trousers(trained_catalog):
    hits = selectors.text_search(query="jeans", k=5)
    assert len(hits) == 5
    types = [h.product.product_type for h in hits]
    assert types.count("Trousers") + types.count("Shorts") >= 3, types
    assert hits[0].score >= hits[-1].score


def test_similar_items_drop_colour_variants_and_self(trained_catalog):
    p = Product.objects.filter(variant_group__in=Product.objects.values("variant_group")).first()
    hits = selectors.similar_items(product_id=p.pk, k=8)
    assert p.pk not in [h.product.pk for h in hits]
    assert all(h.product.variant_group != p.variant_group for h in hits)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_filtered_similar_items_return_k_rows_of_the_filter(trained_catalog):
    from django.db.models import Count

    counts = Product.objects.values("slot").annotate(n=Count("id")).filter(n__gte=3).order_by("n")
    rare = counts[0]["slot"]  # the rarest slot with at least 3 items: a selective filter
    assert counts[0]["n"] / Product.objects.count() < 0.1
    p = Product.objects.exclude(slot=rare).first()
    hits = selectors.similar_items(
        product_id=p.pk, k=3, exclude_variants=False, filters=selectors.Filters(slot=rare)
    )
    assert len(hits) == 3 and {h.product.slot for h in hits} == {rare}


def test_complete_the_look_never_returns_a_given_slot(trained_catalog, settings):
    settings.LOOKS_MEMORY_PICKS = 0  # the model's order alone (remembered picks come first)
    top = Product.objects.filter(slot="top").first()
    bottom = Product.objects.filter(slot="bottom").first()
    # the plain order (no hubness re-ranking) is by score; a top and a bottom of any audience
    picks = looks.complete_the_look(product_ids=[top.pk, bottom.pk], k=3, audience="any", reduce_hubs=False)
    slots = [sp.slot for sp in picks]
    assert "top" not in slots and "bottom" not in slots and "one-piece" not in slots
    assert set(slots) <= set(OUTFIT_SLOTS)
    for sp in picks:
        assert all(h.product.slot == sp.slot for h in sp.hits)
        assert all(0.0 <= h.score <= 1.0 for h in sp.hits)
        assert [h.score for h in sp.hits] == sorted([h.score for h in sp.hits], reverse=True)
    assert any(sp.hits for sp in picks)


def test_complete_the_look_ranking_equals_summed_pair_scores(trained_catalog):
    """The one-query-per-slot trick: <q_t, f_x> equals the sum of pair scores with every given item."""
    import torch

    heads = model_cache.heads_for(trained_catalog)
    women = Product.objects.filter(audience_group="women").order_by("pk")  # shoes fit their audience
    given = [women.filter(slot=s).first().pk for s in ("top", "bottom")]
    picks = looks.complete_the_look(product_ids=given, k=2, slots=["shoes"])
    best = picks[0].hits[0].product
    embs = {
        e.product_id: e
        for e in ProductEmbedding.objects.filter(
            model_version=trained_catalog, product_id__in=[*given, best.pk]
        )
    }
    f = torch.tensor(np.stack([np.asarray(embs[i].compat) for i in [*given, best.pk]]), dtype=torch.float32)
    from ml.slots import SLOT_INDEX

    s = torch.tensor([SLOT_INDEX[embs[i].slot] for i in [*given, best.pk]])
    pair_sum = float(heads.pair_score(f[:2], f[2:].expand(2, -1), s[:2], s[2:].expand(2)).sum())
    assert picks[0].hits[0].score == pytest.approx(looks.compat_to_unit(pair_sum, 2), abs=1e-4)


def test_compatibility_is_symmetric_in_order(trained_catalog):
    ids = list(Product.objects.filter(slot__in=["top", "bottom", "shoes"]).values_list("pk", flat=True)[:3])
    a = looks.outfit_compatibility(product_ids=ids, suggest=False)
    b = looks.outfit_compatibility(product_ids=list(reversed(ids)), suggest=False)
    assert a.score == pytest.approx(b.score, abs=1e-6)
    assert 0.0 <= a.score <= 1.0
    assert set(a.weakest) == set(b.weakest)
    m = np.asarray(a.matrix)
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)


def test_compatibility_errors(trained_catalog):
    with pytest.raises(ValueError, match="2 to 8"):
        looks.outfit_compatibility(product_ids=[])
    with pytest.raises(selectors.UnknownProducts) as exc:
        looks.outfit_compatibility(product_ids=[Product.objects.first().pk, 987654321])
    assert exc.value.ids == [987654321]


@pytest.mark.parametrize("column", ["image", "fused", "compat"])
def test_queries_use_the_hnsw_index(trained_catalog, column):
    row = ProductEmbedding.objects.filter(model_version=trained_catalog, slot="top").first()
    q = np.asarray(getattr(row, column))
    qs = ProductEmbedding.objects.filter(model_version=trained_catalog)
    if column == "compat":  # compat is ranked within one slot: that slot's partial index (migration 0004)
        qs = qs.filter(slot="top")
    qs = qs.annotate(d=MaxInnerProduct(column, q.tolist())).order_by("d")[:10]
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("ANALYZE recommender_productembedding")  # real row statistics, as in production
        # The selectors' settings switch scans + sorts off, so the index serves the query (it could not
        # if the query ordered by an expression other than the bare operator).
        cur.execute(selectors.ranking_settings_sql("similar", 10))
        plan = qs.explain()
    index = "emb_compat_top_hnsw" if column == "compat" else f"emb_{column}_hnsw"
    assert f"Index Scan using {index} " in plan, plan
