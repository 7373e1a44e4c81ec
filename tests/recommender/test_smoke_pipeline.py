import pytest

from catalog.models import Product
from recommender import selectors
from recommender.models import ProductEmbedding


@pytest.mark.django_db
def test_pipeline_smoke(trained_catalog):
    n = Product.objects.count()
    assert ProductEmbedding.objects.filter(model_version=trained_catalog).count() == n
    p = Product.objects.filter(slot="top").first()
    hits = selectors.similar_items(product_id=p.pk, k=5, exclude_variants=False)
    print([ (h.product.title, h.score) for h in hits])
    picks = selectors.complete_the_look(product_ids=[p.pk])
    for sp in picks:
        print(sp.slot, [(h.product.title, round(h.score,3)) for h in sp.hits])
    print([(h.product.title, h.product.product_type, h.score) for h in selectors.text_search(query="jeans", k=5)])
    print(trained_catalog.metrics)
