"""Training pairs and negatives (ml.sampling) on the real outfits of both samples (no features needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ml import mango
from ml.audience import audience_ids
from ml.data import outfits_from_baskets, read_articles, read_baskets
from ml.sampling import (
    OUTFIT_SLOT_IDS,
    OutfitNegativeSampler,
    all_pairs,
    audience_mix,
    known_partners,
    outfit_counts,
    training_pairs,
)
from ml.slots import SLOT_INDEX

ROOT = Path(__file__).resolve().parents[2]
HM = Path(os.environ.get("HM_DATA_DIR", ROOT.parent / "shared" / "data" / "hm"))
MANGO = Path(os.environ.get("MANGO_DATA_DIR", HM.parent / "mango"))


@pytest.fixture(scope="module")
def hm():
    """(outfits, slots, audiences) of every H&M basket (indices into the article list)."""
    arts, _ = read_articles(HM)
    index = {a.article_id: i for i, a in enumerate(arts)}
    codes = {a.article_id: a.product_code for a in arts}
    outfits = [
        np.asarray([index[i] for i in items]) for _, items in outfits_from_baskets(read_baskets(HM), codes)
    ]
    slots = np.asarray([SLOT_INDEX[a.slot] for a in arts])
    return outfits, slots, audience_ids((a.audience, a.section, a.department) for a in arts)


@pytest.fixture(scope="module")
def both(hm):
    """H&M baskets and MANGO stylist outfits in one index space (H&M rows first)."""
    outfits, slots, audiences = hm
    products, _ = mango.read_products(MANGO)
    index = {p.product_id: len(slots) + i for i, p in enumerate(products)}
    model_of = {p.product_id: p.model for p in products}
    styled = [mango.clean_outfit(items, model_of) for _, items in mango.read_outfits(MANGO)]
    styled = [np.asarray([index[p] for p in o]) for o in styled if len(o) >= 2]
    return (
        outfits + styled,
        np.concatenate([slots, [SLOT_INDEX[p.slot] for p in products]]),
        np.concatenate([audiences, audience_ids(p.audience_group for p in products)]),
        len(outfits),
    )


def test_cleaning_drops_cross_audience_and_non_outfit_pairs(hm):
    outfits, slots, audiences = hm
    raw = all_pairs(outfits)
    raw = raw[slots[raw[:, 0]] != slots[raw[:, 1]]]  # what training used before: pairs of two slots
    clean = training_pairs(outfits, slots, audiences)
    before, after = audience_mix(raw, audiences), audience_mix(clean, audiences)
    print("\nbefore", before.most_common(), "\nafter", after.most_common())
    assert (len(raw), len(clean)) == (110614, 69136)
    assert before[("men", "women")] == 8866 and before[("kids", "women")] == 1832
    assert set(after) == {("women", "women"), ("men", "men"), ("kids", "kids"), ("baby", "baby")}
    assert after[("men", "men")] == 734
    assert np.isin(slots[clean], list(OUTFIT_SLOT_IDS)).all()  # no underwear, swimwear, socks
    assert (slots[clean[:, 0]] != slots[clean[:, 1]]).all()
    assert len(training_pairs(outfits, slots)) > len(clean)  # without audiences: slots only


def test_sampler_keeps_to_the_slot_and_never_offers_a_partner(both):
    outfits, slots, audiences, _ = both
    rng = np.random.default_rng(0)
    sampler = OutfitNegativeSampler(slots, outfits, rng)
    pairs = training_pairs(outfits, slots, audiences)
    pairs = pairs[sampler.has_negatives(pairs)]
    partners = [set(p.tolist()) for p in known_partners(outfits, len(slots))]
    pick = pairs[rng.integers(len(pairs), size=2000)]
    cand = sampler.sample(pick[:, 0], pick[:, 1], 32)  # (2000, 32)
    assert cand.shape == (2000, 32)
    assert (slots[cand] == slots[pick[:, 1]][:, None]).all()
    assert not (cand == pick[:, :1]).any() and not (cand == pick[:, 1:]).any()
    clashes = sum(int(c) in partners[a] for a, row in zip(pick[:, 0], cand, strict=True) for c in row)
    assert clashes == 0
    # the anchors' real partners of the positive's slot are many: a random draw would hit them
    same_slot_partners = [
        sum(slots[q] == slots[p] for q in partners[a]) for a, p in zip(pick[:, 0], pick[:, 1], strict=True)
    ]
    assert max(same_slot_partners) >= 5


def test_negatives_match_the_positives_popularity(both):
    outfits, slots, audiences, _ = both
    rng = np.random.default_rng(1)
    sampler = OutfitNegativeSampler(slots, outfits, rng, window=64)
    counts = outfit_counts(outfits, len(slots))
    pairs = training_pairs(outfits, slots, audiences)
    pick = pairs[rng.integers(len(pairs), size=2000)]
    cand = sampler.sample(pick[:, 0], pick[:, 1], 8)
    gap = np.abs(np.log1p(counts[cand]) - np.log1p(counts[pick[:, 1]])[:, None]).mean()
    same_slot = np.stack([rng.choice(np.flatnonzero(slots == slots[p]), 8) for p in pick[:, 1]])
    random_gap = np.abs(np.log1p(counts[same_slot]) - np.log1p(counts[pick[:, 1]])[:, None]).mean()
    print(f"\nmean |log popularity gap|: matched {gap:.3f}, random of the slot {random_gap:.3f}")
    assert gap < random_gap / 3


def test_stylist_outfits_are_kept_and_counted(both):
    outfits, slots, audiences, n_baskets = both
    pairs = training_pairs(outfits, slots, audiences)
    n_hm = int(np.concatenate(outfits[:n_baskets]).max()) + 1
    mango_pairs = pairs[pairs[:, 0] >= n_hm]
    assert len(mango_pairs) > 100_000  # MANGO outfits: 5-6 items of distinct slots
    assert not ((pairs[:, 0] >= n_hm) ^ (pairs[:, 1] >= n_hm)).any()  # no pair across the catalogs
    mix = audience_mix(mango_pairs, audiences)
    assert set(mix) <= {("women", "women"), ("unisex", "women"), ("kids", "kids"), ("kids", "unisex")}


def test_a_pair_with_only_partners_left_has_no_negatives():
    slots = np.array([0, 1, 1])  # one top, two bottoms: both bottoms are partners of the top
    outfits = [np.array([0, 1]), np.array([0, 2])]
    sampler = OutfitNegativeSampler(slots, outfits, np.random.default_rng(0))
    pairs = np.array([[0, 1], [1, 0]])
    assert sampler.has_negatives(pairs).tolist() == [False, False]
    with pytest.raises(ValueError, match="no negative"):
        sampler.sample(pairs[:1, 0], pairs[:1, 1], 4)


def test_a_training_run_learns_from_the_cleaned_pairs_of_both_catalogs(both):
    import torch

    from ml.config import TrainConfig
    from ml.dataset import TrainData
    from ml.train import _Run

    outfits, slots, audiences, _ = both
    n = len(slots)
    feats = (
        np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)
    )  # pairs need no real features
    data = TrainData(
        image=feats,
        text=feats.copy(),
        slots=slots,
        types=slots.copy(),
        outfits=outfits,
        attrs={"audience": audiences},
    )
    run = _Run(data, TrainConfig(batch_size=64, seed=0, compat_dim=8), None)
    expected = training_pairs(outfits, slots, audiences)
    assert np.array_equal(run.pairs, expected[run.sampler.has_negatives(expected)])
    assert len(run.pairs) > 0.99 * len(expected)
    assert audience_mix(run.pairs, audiences)[("men", "women")] == 0
    loss = run.compat_loss_of_batch()
    assert loss.shape == () and torch.isfinite(loss)
