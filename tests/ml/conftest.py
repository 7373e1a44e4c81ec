"""Fixtures of the ml tests that run the real towers: 16 real H&M articles with features, photos and texts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ml.config import ModelConfig
from ml.data import outfits_from_baskets, read_articles, read_baskets, select_articles
from ml.dataset import TrainData
from ml.slots import SLOT_INDEX

ROOT = Path(__file__).resolve().parents[2]
HM = Path(os.environ.get("HM_DATA_DIR", ROOT.parent / "shared" / "data" / "hm"))


def fresh_bundle(device: str = "cpu"):
    from ml.model import build_model

    return build_model(ModelConfig(device=device))


@pytest.fixture(scope="module")
def small_data() -> TrainData:
    """16 real articles (whole baskets), their frozen-tower features, photos and texts."""
    from ml.features import FeatureCache, FeatureExtractor

    articles, _ = read_articles(HM)
    baskets = read_baskets(HM)
    arts = select_articles(articles, baskets, 16, seed=0)
    index = {a.article_id: i for i, a in enumerate(arts)}
    outfits = [
        np.asarray([index[i] for i in items])
        for _, items in outfits_from_baskets(baskets, {a.article_id: a.product_code for a in arts})
    ]
    cache = FeatureCache(ROOT / "var" / "features")
    ex = FeatureExtractor(fresh_bundle(), batch_size=16)
    paths, texts = [str(a.image_path) for a in arts], [a.text for a in arts]
    types = {t: i for i, t in enumerate(sorted({a.product_type for a in arts}))}
    return TrainData(
        image=cache.get_or_compute_images(ex, paths),
        text=cache.get_or_compute_texts(ex, texts),
        slots=np.asarray([SLOT_INDEX[a.slot] for a in arts]),
        types=np.asarray([types[a.product_type] for a in arts]),
        outfits=outfits[:-1],
        val_outfits=outfits[-1:],
        image_paths=paths,
        texts=texts,
    )
