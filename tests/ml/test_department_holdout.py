"""The held-out department protocol (ml.department_holdout) on a slice of the real H&M sample (no towers)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ml.dataset import hm_articles, hm_train_data
from ml.department_holdout import group_rows, paraphrases, without_rows

REPO = Path(__file__).resolve().parents[2]
HM_ROOT = Path(os.environ.get("HM_DATA_DIR", REPO.parent / "shared" / "data" / "hm"))


def test_a_held_out_index_group_is_out_of_every_training_signal() -> None:
    if not (HM_ROOT / "articles.csv").exists():
        pytest.fail(f"H&M sample not found at {HM_ROOT}; set HM_DATA_DIR")
    arts, baskets = hm_articles(HM_ROOT, 600)
    zeros = np.zeros((len(arts), 4), np.float32)  # features play no part in the split
    data = hm_train_data(arts, baskets, zeros, zeros)
    rows = group_rows(data, arts, "Menswear")
    assert len(rows) == 51 and all(arts[r].audience == "Menswear" for r in rows)
    held = without_rows(data, rows)
    assert set(rows) <= set(held.heldout_items) and len(held.heldout_items) == 100  # 53 + 51 - 4 shared
    assert not set(rows) & set(held.val_items)
    assert len(held.outfits) == 3141 and len(held.val_outfits) == 366  # of 3593 and 416
    assert not any(set(o) & set(rows) for o in held.outfits + held.val_outfits)
    assert held.test_outfits == data.test_outfits  # evaluation outfits untouched
    with pytest.raises(ValueError, match="no product of index group 'Mens'"):
        group_rows(data, arts, "Mens")


def test_paraphrases_drop_the_house_division_words() -> None:
    arts, _ = hm_articles(HM_ROOT, 600)
    shirt = next(a for a in arts if a.title == "TD Hugo slim fit Stretch PQ")
    assert shirt.text.startswith(
        "TD Hugo slim fit Stretch PQ. White. Shirt. Menswear. Men Suits & Tailoring. "
    )
    full, short = paraphrases(shirt)
    assert full.startswith("TD Hugo slim fit Stretch PQ. White. Shirt. Shirt in a stretch")
    assert "Menswear" not in full and "Men Suits" not in full
    assert short == "White shirt: td hugo slim fit stretch pq"
