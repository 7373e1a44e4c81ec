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


@pytest.mark.slow
def test_a_tuning_variant_is_measured_on_its_own_tuned_photos(small_data, tmp_path, monkeypatch) -> None:
    """The ``tuned-top`` row searches the group's photos as the tuned image tower encodes them, not the
    frozen features the other rows read; and the group gives none of the phone-photo views."""
    from dataclasses import replace

    import ml.department_holdout as dh
    from ml.config import PHOTO_TUNING_CONFIG, TrainConfig

    data = replace(
        small_data,
        item_ids=np.arange(108000, 108016),
        heldout_items=np.array([0, 1]),
        val_items=np.array([2, 3]),
    )
    rows = np.array([4, 5, 6, 7])
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = dh.text_to_photo
    monkeypatch.setattr(dh, "text_to_photo", lambda h, d, r: seen.append((d.image, r)) or real(h, d, r))
    tuning = {**PHOTO_TUNING_CONFIG, "unfreeze_last_blocks": 2, "tuning_view_photos": 6}
    out = dh.run(
        data,
        rows,
        {"today": {}, "tuned-top": tuning},
        base=TrainConfig(epochs=1, batch_size=8),
        cache_dir=tmp_path,
    )
    assert list(out) == ["random", "zero-shot", "today", "tuned-top", "today, other half trained"]
    # zero-shot, today, tuned-top: the group, the in-domain products, the probe half; then the ceiling
    (zs, _), _, _, (today, _), _, _, (tuned, r), _, (_, probe), (ceiling, probe2) = seen
    assert today is data.image and zs is data.image and ceiling is data.image
    np.testing.assert_array_equal(r, rows)
    assert len(probe) == 2 and set(probe) < set(rows) and probe2 is probe
    assert out["today, other half trained"]["half_recall@10"] == 1.0  # 2 photos: both in any top 10
    moved = 1 - (tuned * data.image).sum(1) / np.linalg.norm(tuned, axis=1) / np.linalg.norm(
        data.image, axis=1
    )
    assert moved.max() > 1e-3  # the tuned top encodes every photo anew
    assert PHOTO_TUNING_CONFIG["view_type_loss"] and dh.VARIANTS["tuned-top"] is PHOTO_TUNING_CONFIG
    held = dh.without_rows(data, rows)
    from ml.tower_prefix import view_rows

    assert not set(view_rows(held, 6, 0)) & set(rows)  # the views are drawn among trained rows only
