"""Negation read from the photos: a product whose text is silent on a negated word ("without sleeves")
is excluded when a probe on its image vector reads it as showing the word (``recommender.search_probes``).

The fit is checked on real H&M photos through the pretrained image tower (the trained slice holds too
few sleeveless products for a probe); the search's conditions on the trained slice, with a probe made
from the slice's own vectors.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from django.core.cache import cache

from catalog.models import Product
from ml.data import read_articles
from recommender import search, search_probes
from recommender.models import ProductEmbedding
from tests.ml.conftest import HM, ROOT, fresh_bundle

SLEEVES = re.compile(r"\bsleeves?\b")
GARMENTS = {"Dress", "Top", "Vest top", "Blouse", "T-shirt", "Shirt"}


@pytest.fixture(scope="module")
def sleeve_features() -> tuple[np.ndarray, np.ndarray]:
    """Image tower features (N, D) float32 of 40 real H&M garments whose text says sleeveless and 40
    whose text says long sleeves (first by article id)."""
    from ml.features import FeatureCache, FeatureExtractor

    articles, _ = read_articles(HM)
    garments = sorted((a for a in articles if a.product_type in GARMENTS), key=lambda a: a.article_id)
    less = [a for a in garments if "sleeveless" in a.text.lower()][:40]
    long_ = [a for a in garments if "long sleeves" in a.text.lower() and "sleeveless" not in a.text.lower()][
        :40
    ]
    extractor = FeatureExtractor(fresh_bundle(), batch_size=16)
    cache = FeatureCache(ROOT / "var" / "features")
    said = cache.get_or_compute_images(extractor, [str(a.image_path) for a in long_])
    opposite = cache.get_or_compute_images(extractor, [str(a.image_path) for a in less])
    return np.asarray(said, np.float32), np.asarray(opposite, np.float32)


def test_the_probe_tells_sleeves_from_sleeveless_on_held_out_photos(sleeve_features):
    """Cross-validated on real photos it reads held-out garments far better than chance; fitted on
    shuffled labels it does not (so the accuracy is the photos', not the fit's)."""
    said, opposite = sleeve_features
    weights, bias, accuracy = search_probes.probe_fit(said, opposite)
    assert weights.shape == (said.shape[1],) and weights.dtype == np.float32
    assert accuracy >= 0.85, accuracy
    x = np.concatenate([said, opposite])
    order = np.random.default_rng(0).permutation(len(x))
    _, _, chance = search_probes.probe_fit(x[order[: len(said)]], x[order[len(said) :]])
    assert chance < 0.7, chance
    shows = x @ weights + bias > 0  # the fitted side of each row, as the SQL condition reads it
    assert shows[: len(said)].mean() > 0.9 and shows[len(said) :].mean() < 0.1


def test_probe_fit_refuses_too_few_rows():
    with pytest.raises(ValueError, match="5 or more products per side"):
        search_probes.probe_fit(np.zeros((3, 4), np.float32), np.ones((10, 4), np.float32))


@pytest.mark.django_db
@pytest.mark.slow
def test_without_sleeves_leaves_out_silent_products_whose_photo_shows_sleeves(
    trained_catalog, monkeypatch, settings
):
    """A probe made from the slice's own vectors (what mentions sleeves against what is silent) stands in
    for a fitted one: no hit is a silent product it reads as sleeved, and with the photos switched off
    some are."""
    texts = {p.pk: (p.product_type, p.text.lower()) for p in Product.objects.all()}
    rows = ProductEmbedding.objects.filter(model_version=trained_catalog, product_id__in=list(texts))
    image = {pid: np.asarray(v, np.float32) for pid, v in rows.values_list("product_id", "image")}
    silent = [pid for pid in image if not SLEEVES.search(texts[pid][1]) and "sleeveless" not in texts[pid][1]]
    said = [pid for pid in image if SLEEVES.search(texts[pid][1])]
    weights = np.mean([image[p] for p in said], 0) - np.mean([image[p] for p in silent], 0)
    bias = -float(np.median([image[p] @ weights for p in silent]))
    probe = search_probes.Probe("sleeves", "sleeveless", weights.astype(np.float32), bias, 1.0, len(said), 0)
    monkeypatch.setattr(search_probes, "probe_for", lambda version, word, opposite: probe)
    shown = {p for p in silent if float(image[p] @ probe.weights) + bias > 0}
    types = [texts[p][0] for p in shown]
    type_word = max(set(types), key=types.count).split("/")[0].lower()
    query = f"{type_word} without sleeves"

    hits = {h.product.pk for h in search.product_search(query=query, k=48).hits}
    assert hits and not hits & shown, (query, hits & shown)
    settings.SEARCH_PHOTO_NEGATION = False  # the mechanism switched off: text alone lets them through
    plain = {h.product.pk for h in search.product_search(query=query, k=48).hits}
    assert plain & shown, (query, "the guard could not fail")


@pytest.mark.django_db
@pytest.mark.slow
def test_the_conditions_keep_what_says_the_less_word_and_hold_for_every_probe(trained_catalog):
    """On both kinds of rows, for each probe: kept when the text says its "-less" word, else only when
    the photo does not show the word; two probes must both hold (a product passing one is not enough)."""
    version = trained_catalog
    rows = ProductEmbedding.objects.filter(model_version=version)
    image = {pid: np.asarray(v, np.float32) for pid, v in rows.values_list("product_id", "image")}
    ids = sorted(image)
    rng = np.random.default_rng(0)

    less = set(
        Product.objects.filter(search_vector=search_probes.says("sleeveless")).values_list("pk", flat=True)
    )
    assert less, "the slice says sleeveless nowhere: the test could not fail"
    target = min(less & set(ids))  # says "sleeveless"; both probes below read its photo as showing

    def probe(word: str, noise: float) -> search_probes.Probe:  # about half the products show the word
        w = image[target] + noise * rng.standard_normal(len(image[target])).astype(np.float32)
        bias = -float(np.median([image[p] @ w for p in ids]))
        return search_probes.Probe(word, search_probes.less_word(word), w, bias, 1.0, 0, 0)

    sleeves, straps = probe("sleeves", 0.02), probe("straps", 0.02)
    shows = {p: {q.word: float(image[p] @ q.weights) + q.bias > 0 for q in (sleeves, straps)} for p in ids}
    assert shows[target] == {"sleeves": True, "straps": True}

    probes = search_probes.Probes({"sleeves": sleeves, "straps": straps})
    want = {p for p in ids if (p in less or not shows[p]["sleeves"]) and not shows[p]["straps"]}
    on_products = set(Product.objects.filter(probes.products_q(version)).values_list("pk", flat=True))
    on_vectors = set(rows.filter(probes.vector_rows_q()).values_list("product_id", flat=True))
    assert on_products == want and on_vectors == want
    assert want < set(ids)


@pytest.mark.django_db
def test_probe_for_caches_and_uses_only_probes_above_the_bar(trained_catalog, monkeypatch):
    """A probe under ``PROBE_MIN_ACCURACY`` is never used; each is fitted once (then cached); a phrase of
    several words gets no probe."""
    calls = []

    def build(version, word, opposite):
        calls.append(word)
        accuracy = 0.6 if word == "weak" else 0.95
        return search_probes.Probe(word, opposite, np.zeros(4, np.float32), 0.0, accuracy, 10, 10)

    monkeypatch.setattr(search_probes, "probe_build", build)
    monkeypatch.setattr(
        search_probes, "_CACHE_PREFIX", f"test:probe:{np.random.default_rng().integers(1 << 30)}"
    )
    assert search_probes.probe_for(trained_catalog, "weak", "weakless") is None
    assert search_probes.probe_for(trained_catalog, "good", "goodless").accuracy == 0.95
    probes = search_probes.query_probes(["good", "weak", "long sleeves"], trained_catalog)
    assert set(probes.probes) == {"good"} and calls == ["weak", "good"]  # both cached, no phrase fitted
    assert search_probes.query_probes(["good"], None) is None  # no model: text only


@pytest.mark.django_db
def test_a_probe_another_process_is_fitting_is_not_fitted_again(trained_catalog, monkeypatch):
    """Two shoppers' first negated queries after an activation: the second goes without the probe
    (text-only) instead of fitting it a second time; once the first has cached it, everyone uses it."""
    calls = []

    def build(version, word, opposite):
        calls.append(word)
        return search_probes.Probe(word, opposite, np.zeros(4, np.float32), 0.0, 0.95, 10, 10)

    monkeypatch.setattr(search_probes, "probe_build", build)
    monkeypatch.setattr(
        search_probes, "_CACHE_PREFIX", f"test:probe:{np.random.default_rng().integers(1 << 30)}"
    )
    key = search_probes._key(trained_catalog, "good", "goodless")
    cache.add(f"{key}:fitting", 1, 60)  # the first shopper's process holds the fit
    assert search_probes.probe_for(trained_catalog, "good", "goodless") is None and calls == []
    cache.delete(f"{key}:fitting")  # it finished (and, here, cached nothing)
    assert search_probes.probe_for(trained_catalog, "good", "goodless").accuracy == 0.95
    assert calls == ["good"] and cache.get(f"{key}:fitting") is None  # the lock is given back
    assert search_probes.probe_for(trained_catalog, "good", "goodless").accuracy == 0.95
    assert calls == ["good"]  # cached


@pytest.mark.django_db
def test_probes_warm_fits_the_words_the_catalogs_less_words_negate(trained_catalog, monkeypatch):
    """Run at activation: every "-less" word of the catalog's texts ("sleeveless" on the slice) has its
    stem's probe fitted and cached before a shopper asks."""
    calls = []

    def build(version, word, opposite):
        calls.append((word, opposite))
        return search_probes.Probe(word, opposite, np.zeros(4, np.float32), 0.0, 0.95, 10, 10)

    monkeypatch.setattr(search_probes, "probe_build", build)
    monkeypatch.setattr(
        search_probes, "_CACHE_PREFIX", f"test:probe:{np.random.default_rng().integers(1 << 30)}"
    )
    warmed = search_probes.probes_warm(trained_catalog)
    assert ("sleeves", "sleeveless") in calls and warmed["sleeves"] == 0.95
    assert all(opposite.endswith("less") and opposite != "timeless" for _, opposite in calls)
    n = len(calls)
    search_probes.query_probes(["sleeves"], trained_catalog)
    assert len(calls) == n  # the shopper's query found it cached
