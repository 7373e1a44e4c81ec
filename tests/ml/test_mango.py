"""The MANGO sample reader (ml.mango) on the real files: products, composed texts, outfits, splits."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ml import mango

ROOT = Path(__file__).resolve().parents[2]
HM = Path(os.environ.get("HM_DATA_DIR", ROOT.parent / "shared" / "data" / "hm"))
MANGO = Path(os.environ.get("MANGO_DATA_DIR", HM.parent / "mango"))


@pytest.fixture(scope="module")
def sample():
    products, errors = mango.read_products(MANGO)
    return products, errors, mango.read_outfits(MANGO)


def test_products_and_their_composed_text(sample):
    products, errors, _ = sample
    assert len(products) == 9222 and errors == []
    first = products[0]
    assert (first.sku, first.variant_group) == ("MNG-41085800-02", "MNG-41085800")
    assert first.title == "Female adult off-white trousers, flat weave"
    assert (first.slot, first.audience, first.audience_group) == ("bottom", "Female Adult", "women")
    assert first.image_path == MANGO / "images" / "2019_41085800_02.jpg" and first.image_path.exists()
    jeans = next(p for p in products if p.product_id == "53000586-TO")
    assert jeans.title == "Female adult dark denim jeans, denim"
    assert jeans.text.startswith("Female adult dark denim jeans, denim. dark denim. Jeans. Female Adult")
    assert jeans.description == "Bottoms: Jeans."
    untranslated = Counter(w for p in products for w in p.colour.split() if w.isupper())
    assert untranslated == {}  # every Spanish colour word of the sample has its English name
    assert len({p.sku for p in products}) == 9222


def test_colour_names():
    assert mango.colour_name("TEJANO OSCURO") == "dark denim"
    assert mango.colour_name("GRIS CLARO VIGORE") == "light grey marl"
    assert mango.colour_name("TEJANO GRIS OSCURO") == "dark grey denim"
    assert mango.colour_name("NEGRO") == "black"
    assert mango.colour_name("") == ""


def test_outfits_split_and_colour_variants(sample):
    products, _, outfits = sample
    assert len(outfits) == 6642 and sum(len(items) for _, items in outfits) == 36915
    model_of = {p.product_id: p.model for p in products}
    cleaned = [mango.clean_outfit(items, model_of) for _, items in outfits]
    shrunk = [(o, c) for (_, o), c in zip(outfits, cleaned, strict=True) if len(c) < len(o)]
    assert len(shrunk) == 39  # outfits holding two colours of one model keep one
    for _, c in shrunk:
        assert len({model_of[p] for p in c}) == len(c)
    test = [oid for oid, _ in outfits if mango.outfit_is_test(oid, 0.15, 0)]
    assert 0.13 < len(test) / len(outfits) < 0.17
    assert test == [oid for oid, _ in outfits if mango.outfit_is_test(oid, 0.15, 0)]  # fixed per id
    assert mango.outfit_key("2") == "mango-outfit-2"


def test_limit_keeps_whole_outfits(sample):
    products, _, outfits = sample
    chosen = mango.select_products(products, outfits, 300, seed=0)
    assert 250 < len(chosen) <= 300
    ids = {p.product_id for p in chosen}
    whole = [set(items) for _, items in outfits if set(items) <= ids]
    assert set().union(*whole) == ids  # every chosen product comes with a whole outfit of its own
    assert mango.select_products(products, outfits, None) == products


def test_missing_file_and_columns(tmp_path):
    with pytest.raises(FileNotFoundError):
        mango.read_products(tmp_path)
    (tmp_path / "products.csv").write_text("cod_modelo_color,image\n41085800-02,images/x.jpg\n")
    with pytest.raises(ValueError, match="missing column"):
        mango.read_products(tmp_path)


def test_train_data_keeps_the_import_split_and_clean_outfits(sample):
    products, _, outfits = sample
    chosen = mango.select_products(products, outfits, 600)
    z = np.zeros((len(chosen), 2), dtype=np.float32)
    data = mango.mango_train_data(chosen, outfits, z, z.copy())
    index = {p.product_id: i for i, p in enumerate(chosen)}
    model = np.asarray([p.model for p in chosen])
    held = {
        tuple(
            sorted(index[pid] for pid in mango.clean_outfit(items, {p.product_id: p.model for p in chosen}))
        )
        for oid, items in outfits
        if mango.outfit_is_test(oid, 0.15, 0)
    }
    assert data.test_outfits and {tuple(sorted(o.tolist())) for o in data.test_outfits} <= held
    for o in [*data.outfits, *data.val_outfits, *data.test_outfits]:
        assert len(o) >= 2 and len(set(model[o])) == len(o)  # one product per model
    assert set(np.unique(data.attrs["audience"]).tolist()) and len(data.texts) == len(chosen)
    assert data.texts[0] == chosen[0].text and data.item_ids.tolist() == list(range(len(chosen)))
