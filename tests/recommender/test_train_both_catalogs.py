"""Training data from a catalog holding both real samples: H&M baskets and MANGO stylist outfits together."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from catalog.hm_import import catalog_import_hm
from catalog.mango_import import catalog_import_mango
from catalog.models import Outfit, Product
from ml.audience import AUDIENCE_GROUPS
from ml.config import TrainConfig
from ml.evaluate import held_out_protocols
from ml.protocols import matched_protocol, split_protocol
from ml.sampling import audience_mix
from ml.train import _Run, train
from recommender import ml_bridge
from recommender.management.commands.evaluate import by_catalog

pytestmark = pytest.mark.django_db


def _both_catalogs(hm_root: Path, settings, tmp_path: Path, *, hm: int, mango: int) -> list[Product]:
    """A database of only the first ``hm`` H&M and ``mango`` MANGO products, with their outfits."""
    settings.MEDIA_ROOT = tmp_path / "media"
    Outfit.objects.all().delete()
    Product.objects.all().delete()
    catalog_import_hm(root=hm_root, limit=hm, progress=False)
    mango_root = Path(os.environ.get("MANGO_DATA_DIR", hm_root.parent / "mango"))
    catalog_import_mango(root=mango_root, limit=mango, progress=False)
    return ml_bridge.catalog_products()


def test_one_run_learns_from_baskets_and_stylist_outfits(hm_root, settings, tmp_path):
    products = _both_catalogs(hm_root, settings, tmp_path, hm=200, mango=120)
    n = len(products)
    feats = (
        np.random.default_rng(0).standard_normal((n, 32)).astype(np.float32)
    )  # pairs need no real features
    data = ml_bridge.train_data(products, feats, feats.copy(), val_fraction=0.1)
    groups = [AUDIENCE_GROUPS[i] for i in data.attrs["audience"]]
    assert groups == [p.audience_group for p in products]
    source = np.asarray([p.source for p in products])
    run = _Run(data, TrainConfig(batch_size=32, seed=0, compat_dim=8), None)
    pair_sources = {tuple(sorted(s)) for s in source[run.pairs].tolist()}
    assert pair_sources == {("hm", "hm"), ("mango", "mango")}  # both kinds of outfit, never mixed
    assert audience_mix(run.pairs, data.attrs["audience"])[("men", "women")] == 0
    result = train(data, TrainConfig(epochs=1, max_steps=3, batch_size=32, seed=0, compat_dim=8, patience=0))
    assert (
        result.steps == 3 and np.isfinite(result.history["compat"][-1]) and result.history["compat"][-1] > 0
    )


def test_matched_candidates_and_negatives_keep_to_the_answers_catalog(hm_root, settings, tmp_path):
    """On a catalog of both shops, an H&M answer among MANGO candidates is told apart by its shop: the
    matched protocol draws every wrong candidate and negative item from the item's own catalog (on the
    demo's database, 659 of 1,493 questions had a candidate from the other one before)."""
    products = _both_catalogs(hm_root, settings, tmp_path, hm=400, mango=400)
    Outfit.objects.update(split=Outfit.Split.TEST)  # every outfit asks: enough questions of both shops
    feats = np.zeros((len(products), 8), dtype=np.float32)
    data = ml_bridge.train_data(products, feats, feats.copy(), val_fraction=0.0)
    source = np.asarray([p.source for p in products])
    protocol = matched_protocol(data)
    asked = {source[c[0]] for _, c in protocol.questions}
    assert asked == {"hm", "mango"}, asked
    for question, candidates in protocol.questions:
        assert set(source[candidates]) == set(source[question[:1]])
    for pos, neg in zip(protocol.positives, protocol.negatives, strict=True):
        assert (source[pos] == source[neg]).all()
    # manage.py evaluate reports each catalog on its own questions: the two parts are the whole protocol
    parts = split_protocol(protocol, data.attrs["catalog"])
    assert sum(len(p.questions) for p in parts.values()) == len(protocol.questions)
    assert sum(len(p.positives) for p in parts.values()) == len(protocol.positives)
    for p in parts.values():
        assert len({source[c[0]] for _, c in p.questions} | {source[o[0]] for o in p.positives}) == 1
    table = by_catalog(data, {}, {}, list(dict.fromkeys(source.tolist())), held_out_protocols(data, 0))
    assert "hm (" in table and "mango (" in table
    assert "| popularity |" in table and "| attribute-match |" in table
