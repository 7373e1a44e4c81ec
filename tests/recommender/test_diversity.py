"""MMR re-ranking (Carbonell & Goldstein 1998): hand-computed cases, then real vectors of the H&M slice."""

from __future__ import annotations

import numpy as np
import pytest

from ml.diversity import mmr


def test_mmr_hand_computed():
    # a and b are the same item (a colour variant), c is different and less relevant.
    rel = np.array([0.9, 0.85, 0.5], dtype=np.float32)
    vec = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    # λ=0.5: a first (0.45); then b: 0.5·0.85 − 0.5·1 = −0.075 against c: 0.5·0.5 − 0 = 0.25 → c; then b.
    assert mmr(relevance=rel, vectors=vec, k=3, lambda_=0.5) == [0, 2, 1]
    assert mmr(relevance=rel, vectors=vec, k=3, lambda_=1.0) == [0, 1, 2]  # plain relevance order
    # λ=0.9: b scores 0.9·0.85 − 0.1·1 = 0.665 > c's 0.45 → relevance still wins.
    assert mmr(relevance=rel, vectors=vec, k=2, lambda_=0.9) == [0, 1]
    assert mmr(relevance=rel, vectors=vec, k=10, lambda_=0.5) == [0, 2, 1]  # fewer candidates than k


def test_mmr_rejects_bad_lambda_and_shapes():
    with pytest.raises(ValueError, match=r"lambda must be in \[0, 1\] \(got 1.5\)"):
        mmr(relevance=np.zeros(2), vectors=np.zeros((2, 3)), k=1, lambda_=1.5)
    with pytest.raises(ValueError, match="3 relevance scores but 2 vectors"):
        mmr(relevance=np.zeros(3), vectors=np.zeros((2, 3)), k=1, lambda_=0.5)


def _distinct(hits, attr: str) -> int:
    return len({getattr(h.product, attr) or f"pk{h.product.pk}" for h in hits})


@pytest.mark.django_db
@pytest.mark.slow
def test_mmr_diversifies_real_text_search_and_similar_items(trained_catalog):
    """Over real queries, MMR (λ=0.3) puts more distinct product types and variant groups in the top 10."""
    from catalog.models import Product
    from recommender import selectors

    plain_types = mmr_types = plain_groups = mmr_groups = 0
    for q in ["black trousers", "dress", "knitted sweater", "shorts", "top"]:
        plain = selectors.text_search(query=q, k=10)
        diverse = selectors.text_search(query=q, k=10, mmr_lambda=0.3)
        assert len(diverse) == len(plain) == 10
        assert diverse[0].product.pk == plain[0].product.pk  # MMR's first pick is the most relevant
        plain_types += _distinct(plain, "product_type")
        mmr_types += _distinct(diverse, "product_type")
        plain_groups += _distinct(plain, "variant_group")
        mmr_groups += _distinct(diverse, "variant_group")
    assert mmr_types > plain_types, (mmr_types, plain_types)
    assert mmr_groups >= plain_groups, (mmr_groups, plain_groups)

    plain_sim = mmr_sim = 0
    for p in Product.objects.order_by("pk")[:5]:
        a = selectors.similar_items(product_id=p.pk, k=10)
        b = selectors.similar_items(product_id=p.pk, k=10, mmr_lambda=0.3)
        assert len(a) == len(b) == 10 and a[0].product.pk == b[0].product.pk
        plain_sim += _distinct(a, "product_type")
        mmr_sim += _distinct(b, "product_type")
    assert mmr_sim > plain_sim, (mmr_sim, plain_sim)
    with pytest.raises(ValueError, match=r"mmr must be between 0 and 1 \(got -0.1\)"):
        selectors.text_search(query="dress", k=3, mmr_lambda=-0.1)
