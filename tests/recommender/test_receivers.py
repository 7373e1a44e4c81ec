"""The recommender's answer to the catalog's ``products_changed`` signal: embeddings queued, cached answers retired."""

from __future__ import annotations

from decimal import Decimal

import pytest

from catalog.models import Product
from catalog.services import product_delete, product_update
from recommender import answer_cache, tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(monkeypatch) -> list[dict]:
    """The ``embed_products`` messages sent (the broker is not needed)."""
    sent: list[dict] = []
    monkeypatch.setattr(tasks.embed_products, "delay", lambda **kw: sent.append(kw))
    return sent


def test_an_embedded_field_change_queues_embedding_and_retires_cached_answers(
    trained_catalog, queued, django_capture_on_commit_callbacks
):
    product = Product.objects.order_by("pk").first()
    before = answer_cache.generation()
    with django_capture_on_commit_callbacks(execute=True):
        product_update(product=product, data={"title": product.title + " (renamed)"})
    assert queued == [{"product_ids": [product.pk], "version_id": None}]
    assert answer_cache.generation() == before + 1


def test_a_price_change_retires_cached_answers_without_re_embedding(
    trained_catalog, queued, django_capture_on_commit_callbacks
):
    product = Product.objects.order_by("pk").first()
    before = answer_cache.generation()
    with django_capture_on_commit_callbacks(execute=True):
        product_update(product=product, data={"price": Decimal("12.34")})
    assert queued == []
    assert answer_cache.generation() == before + 1


def test_a_rolled_back_change_is_never_announced(trained_catalog, queued, django_capture_on_commit_callbacks):
    product = Product.objects.order_by("pk").first()
    before = answer_cache.generation()
    with django_capture_on_commit_callbacks(execute=False):  # the transaction never commits
        product_update(product=product, data={"title": "never committed"})
    assert queued == [] and answer_cache.generation() == before


def test_a_deletion_retires_cached_answers_and_queues_nothing(
    trained_catalog, queued, django_capture_on_commit_callbacks
):
    product = Product.objects.order_by("-pk").first()
    before = answer_cache.generation()
    with django_capture_on_commit_callbacks(execute=True):
        product_delete(product=product)
    assert queued == [] and answer_cache.generation() == before + 1


def test_imported_training_outfits_retire_cached_answers_and_held_out_ones_do_not(
    trained_catalog, queued, django_capture_on_commit_callbacks
):
    """Complete-the-look lifts items training outfits paired: a bulk import that adds training outfits,
    and no product, retires cached answers; one adding only held-out outfits changes no answer."""
    from catalog.models import Outfit
    from catalog.sample_import import ImportSummary, outfits_create

    a, b, c = Product.objects.order_by("pk").values_list("pk", flat=True)[:3]
    before = answer_cache.generation()
    with django_capture_on_commit_callbacks(execute=True):
        outfits_create(
            source=Outfit.Source.STYLIST, outfits=[("t-held", "", [a, b], True)], summary=ImportSummary()
        )
    assert answer_cache.generation() == before
    with django_capture_on_commit_callbacks(execute=True):
        outfits_create(
            source=Outfit.Source.STYLIST, outfits=[("t-new", "", [a, c], False)], summary=ImportSummary()
        )
    assert queued == [] and answer_cache.generation() == before + 1
