"""Phone-photo augmentations (ml.augment) and the photo-search evaluation (ml.photo_robustness) on real
H&M photos. No Django: ``.venv/bin/python -m pytest tests/ml/test_photo_robustness.py -q``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.augment import PHONE_SIZE, foreground_mask, garment_crop, item_rng, phone_photo
from ml.photo_robustness import evaluate_photo_search, phone_photo_features, photo_catalog, type_vote

REPO = Path(__file__).resolve().parents[2]
HM_ROOT = Path(os.environ.get("HM_DATA_DIR", REPO.parent / "shared" / "data" / "hm"))
#: The gallery of the metric test: the first articles of the sample (their held-out ones are the queries).
SLICE = 240


@pytest.fixture(scope="module")
def catalog():
    if not (HM_ROOT / "articles.csv").exists():
        pytest.fail(f"H&M sample not found at {HM_ROOT}; set HM_DATA_DIR")
    return photo_catalog(HM_ROOT)


def test_phone_photos_are_the_same_for_a_seed_and_item_in_any_order(catalog) -> None:
    keys, paths = catalog.keys[:3], catalog.paths[:3]
    photos = [Image.open(p) for p in paths]
    first = [np.asarray(phone_photo(im, item_rng(5, k))) for k, im in zip(keys, photos, strict=True)]
    # again, in reverse order: each photo depends only on (seed, item)
    again = [
        np.asarray(phone_photo(im, item_rng(5, k)))
        for k, im in reversed(list(zip(keys, photos, strict=True)))
    ]
    for a, b in zip(first, reversed(again), strict=True):
        assert a.shape == (PHONE_SIZE[1], PHONE_SIZE[0], 3)
        assert np.array_equal(a, b)
    other = np.asarray(phone_photo(photos[0], item_rng(6, keys[0])))
    assert np.abs(first[0].astype(int) - other).mean() > 30  # another seed, another photo (73.4 here)
    # the real values of the first article's photo (0111565001, a black tights-like shape on white)
    assert first[0].mean() == pytest.approx(97.98, abs=0.05)


def test_the_garment_mask_and_crop_of_a_studio_photo(catalog) -> None:
    im = Image.open(catalog.paths[0]).convert("RGB")
    mask = foreground_mask(np.asarray(im))
    assert mask.mean() == pytest.approx(0.569, abs=0.002)
    assert garment_crop(im).size == (230, 347)  # of 240x360: the border colour is cropped away
    blank = Image.new("RGB", (240, 360), (240, 240, 240))
    assert garment_crop(blank).size == (240, 360)  # no garment: the photo is kept whole


@pytest.mark.slow
def test_photo_search_metrics_on_a_slice(catalog) -> None:
    from ml.config import ModelConfig
    from ml.features import FeatureExtractor
    from ml.model import build_model

    ex = FeatureExtractor(build_model(ModelConfig(device="cpu")), batch_size=16, trace=False)
    gallery, _ = ex.encode_images(catalog.paths[:SLICE])  # (240, E)
    rows = catalog.heldout[catalog.heldout < SLICE]
    queries = phone_photo_features(
        ex,
        [catalog.paths[i] for i in rows],
        [catalog.keys[i] for i in rows],
        [1000],
        crop=True,
        progress=False,
    )  # (Q, 2, E)
    res = evaluate_photo_search(
        gallery, queries, rows, catalog.types[:SLICE], {"tower": None}, seed=1000, vote_ks=(20,)
    )
    assert len(rows) == 24
    # a clean photo finds itself
    assert res["tower (clean photo)"]["recall@10"] == 1.0
    # the real figures of this slice (24 phone photos against 240 catalog photos, seed 1000)
    assert res["tower"]["p@10_type"] == pytest.approx(0.450, abs=0.005)
    assert res["tower"]["recall@10"] == pytest.approx(19 / 24)
    assert res["tower+crop"]["recall@10"] == pytest.approx(21 / 24)
    assert res["random"]["p@10_type"] == pytest.approx(0.058, abs=0.001)
    assert res["type-majority"]["p@10_type"] == pytest.approx(4 / 24)
    # the served re-ranking (the best match's type first) adds 0.175 and loses no exact match here;
    # a 20-item vote loses 7 of the 19 exact matches
    assert res["tower+type first (served)"]["p@10_type"] == pytest.approx(0.625)
    assert res["tower+type first (served)"]["recall@10"] == pytest.approx(19 / 24)
    assert res["tower+type vote k=20"]["p@10_type"] == pytest.approx(0.5125)
    assert res["tower+type vote k=20"]["recall@10"] == pytest.approx(12 / 24)
    # far above the trivial rankings on the same queries
    assert (
        res["tower"]["p@10_type"] > max(res["random"]["p@10_type"], res["type-majority"]["p@10_type"]) + 0.25
    )


def test_type_first_ranks_the_best_matchs_type_first() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1]], dtype=np.float32)  # one query, four catalog photos
    types = np.array(["Hat/beanie", "Socks", "Socks", "Hat/beanie"])
    # k = 1 (served): the best match's type first, each group in score order; the best match stays first
    assert np.argsort(-type_vote(scores, types, 1)[0], kind="stable").tolist() == [0, 3, 1, 2]
    # k = 3: the top three vote by score (Socks 1.5 against Hat 0.9), so socks come first
    assert np.argsort(-type_vote(scores, types, 3)[0], kind="stable").tolist() == [1, 2, 0, 3]
