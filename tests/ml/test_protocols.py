"""The fixed held-out split and the popularity-matched protocol: a catalog worked by hand, then the real
H&M sample (metadata only, no tower features), where a popularity scorer must be at chance."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from ml.data import SPLIT_SALT, held_out, split_is_test
from ml.dataset import TrainData, hm_articles, hm_train_data, split_items, split_outfits
from ml.protocols import (
    item_popularity,
    known_partners,
    matched_protocol,
    protocol_metrics,
    random_protocol,
    variant_groups,
)
from ml.scorers import pair_memory_scorer, popularity_scorer

TOP, BOTTOM = 0, 1  # slot indices (ml.slots.SLOTS)
HM_ROOT = Path(os.environ.get("HM_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data" / "hm"))


# -----------------------------------------------------------------------------
# the fixed split


def test_held_out_is_a_salted_sha256_of_the_key() -> None:
    for key in ("hm-basket-7", "item-0108775015", "val-42"):
        u = int.from_bytes(hashlib.sha256(f"{SPLIT_SALT}:{key}".encode()).digest()[:8], "big") / 2**64
        assert held_out(key, 0.15) == (u < 0.15)
        assert held_out(key, u + 1e-12) and not held_out(key, u)
    share = np.mean([held_out(f"hm-basket-{i}", 0.15) for i in range(20_000)])
    assert share == pytest.approx(0.15, abs=0.01)
    # the catalog import's split (seed 0) is the same function; another import seed another split
    keys = [f"hm-basket-{i}" for i in range(2000)]
    assert [split_is_test(k, 0.15) for k in keys] == [held_out(k, 0.15) for k in keys]
    assert [split_is_test(k, 0.15, seed=1) for k in keys] != [held_out(k, 0.15) for k in keys]


def test_splits_depend_on_the_keys_alone() -> None:
    """No seed moves them, and a key keeps its side when other keys come and go (the catalog grows)."""
    keys = [f"{i:010d}" for i in range(3000)]
    held, val = split_items(keys, heldout_fraction=0.1, val_fraction=0.1)
    grown_held, grown_val = split_items(
        [*keys, *(f"new-{i}" for i in range(500))], heldout_fraction=0.1, val_fraction=0.1
    )
    assert (
        grown_held[: len(held)].tolist() == held.tolist() and grown_val[: len(val)].tolist() == val.tolist()
    )
    assert 250 < len(held) < 350 and not set(held) & set(val)
    shuffled = keys[::-1]
    assert sorted(
        shuffled[i] for i in split_items(shuffled, heldout_fraction=0.1, val_fraction=0.1)[0]
    ) == sorted(keys[i] for i in held)
    outfits = [(str(i), np.array([i, i + 1]), i % 7 == 0) for i in range(300)]
    train, val_o, test = split_outfits(outfits, val_fraction=0.2)
    assert len(test) == 43 and len(train) + len(val_o) == 257 and 30 < len(val_o) < 75


# -----------------------------------------------------------------------------
# the matched protocol, by hand


def hand_data() -> TrainData:
    """Items: 0 bottom (the question item), 1 top (the answer, popularity 2); tops of the answer's type:
    2 (pop 2), 3 (pop 3), 4 (pop 1), 5 (pop 5), 6 (pop 0), 7 (pop 2, the answer's colour variant),
    8 (pop 2, a partner of 0 through a validation outfit); bottoms 9, 10 (partners of the answer),
    11 (in every popularity outfit), 12 and 13 (in none)."""
    n = 14
    slots = np.array([BOTTOM, *[TOP] * 8, *[BOTTOM] * 5], dtype=np.int64)
    types = np.where(slots == TOP, 1, 0).astype(np.int64)
    pop = {2: 2, 3: 3, 4: 1, 5: 5, 7: 2, 8: 2}
    train = [[1, 9], [1, 10]] + [[item, 11] for item, k in pop.items() for _ in range(k)]
    variant = np.arange(n)
    variant[7] = variant[1]
    z = np.zeros((n, 4), dtype=np.float32)
    return TrainData(
        image=z,
        text=z.copy(),
        slots=slots,
        types=types,
        outfits=[np.array(o) for o in train],
        val_outfits=[np.array([0, 8])],
        test_outfits=[np.array([0, 1])],
        attrs={"variant": variant},
    )


def test_popularity_and_partners_by_hand() -> None:
    data = hand_data()
    pop = item_popularity(data.outfits, 14)
    assert pop.tolist() == [0, 2, 2, 3, 1, 5, 0, 2, 2, 1, 1, 15, 0, 0]
    partners = known_partners([*data.outfits, *data.val_outfits, *data.test_outfits], 14)
    assert partners[0] == {1, 8} and partners[1] == {0, 9, 10}
    assert (
        variant_groups(data)[7] == 1 and variant_groups(TrainData(**{**data.__dict__, "attrs": {}}))[7] == 7
    )


def test_matched_fitb_by_hand() -> None:
    # Blanking 0 fails (bottoms not banned: 11, 12, 13; only 12 and 13 are at most as popular: not 3),
    # so 1 is blanked. Its type, less 7 (variant) and 8 (partner of 0): at least as popular 2, 3, 5;
    # at most as popular 2, 4, 6. With k drawn above, nearest first: k=0 or 1 -> {2, 4, 6}, k=2 ->
    # {2, 3, 4}, k=3 -> {2, 3, 5}. Popularity ties with 2 (1/2) for k = 0, 1, loses otherwise:
    # expected FITB (1/2 + 1/2 + 0 + 0) / 4 = 1/4.
    data = hand_data()
    scorer = popularity_scorer(data)
    seen, fitb = set(), []
    for seed in range(200):
        (question, cands), *_ = matched_protocol(data, seed=seed).questions
        assert question.tolist() == [0] and cands[0] == 1
        seen.add(frozenset(cands[1:].tolist()))
        fitb.append(protocol_metrics(scorer.pair, matched_protocol(data, seed=seed))["fitb"])
    assert seen == {frozenset({2, 4, 6}), frozenset({2, 3, 4}), frozenset({2, 3, 5})}
    assert set(fitb) == {0.0, 0.5} and np.mean(fitb) == pytest.approx(0.25, abs=0.05)


def test_matched_negatives_by_hand() -> None:
    # Positive [0, 1]. Item 0 (pop 0): bottoms not banned 11 (pop 15), 12, 13 (pop 0): both sides have
    # one, the nearest is 12 or 13. Item 1: the nearest on either side is 2 (pop 2, a tie).
    data = hand_data()
    for seed in range(20):
        m = matched_protocol(data, seed=seed)
        assert [p.tolist() for p in m.positives] == [[0, 1]]
        (neg,) = m.negatives
        assert neg[0] in (12, 13) and neg[1] == 2
        assert protocol_metrics(popularity_scorer(data).pair, m)["auc"] == 0.5  # 0 + 2 against 0 + 2
    assert (
        matched_protocol(data, seed=3).negatives[0].tolist()
        == matched_protocol(data, seed=3).negatives[0].tolist()
    )


# -----------------------------------------------------------------------------
# the real H&M sample: popularity is at chance on the matched protocol, not on the random one


@pytest.fixture(scope="module")
def hm_data() -> TrainData:
    if not (HM_ROOT / "articles.csv").exists():
        pytest.fail(f"H&M sample not found at {HM_ROOT}; set HM_DATA_DIR")
    arts, baskets = hm_articles(HM_ROOT)  # the whole catalog: 60% of it in no basket
    z = np.zeros((len(arts), 2), dtype=np.float32)  # no features needed
    return hm_train_data(arts, baskets, z, z.copy())


def test_popularity_is_at_chance_on_the_matched_protocol_of_the_hm_sample(hm_data: TrainData) -> None:
    scorer = popularity_scorer(hm_data)
    matched = protocol_metrics(scorer.pair, matched_protocol(hm_data))
    # questions whose answer a training basket already paired with a question item are left out
    assert matched["n_fitb"] > 0.6 * len(hm_data.test_outfits) and matched["n_outfits"] > 0.6 * len(
        hm_data.test_outfits
    )
    assert matched["fitb"] == pytest.approx(0.25, abs=0.03)
    assert matched["auc"] == pytest.approx(0.5, abs=0.03)
    # the random protocol rewards popularity: what the matched one removes
    rand = protocol_metrics(scorer.pair, random_protocol(hm_data))
    assert rand["fitb"] > 0.7 and rand["auc"] > 0.95


def test_pair_memory_is_at_chance_on_the_matched_protocol_of_the_hm_sample(hm_data: TrainData) -> None:
    """Baskets repeat pairs: "how many training baskets hold both" must not solve the matched protocol."""
    m = matched_protocol(hm_data)
    metrics = protocol_metrics(pair_memory_scorer(hm_data).pair, m)
    assert metrics["fitb"] == pytest.approx(0.25, abs=0.005) and metrics["auc"] == pytest.approx(
        0.5, abs=0.005
    )
    train_partners = known_partners(hm_data.outfits, len(hm_data.types))
    for question, cands in m.questions:
        assert not (train_partners[int(cands[0])] & set(question.tolist()))
    for pos in m.positives:
        assert all(not (train_partners[int(a)] & set(pos.tolist())) for a in pos)
    # the random protocol keeps memorised pairs: there pair memory is far above chance
    assert protocol_metrics(pair_memory_scorer(hm_data).pair, random_protocol(hm_data))["auc"] > 0.6


def test_matched_candidates_obey_the_rules_on_the_hm_sample(hm_data: TrainData) -> None:
    m = matched_protocol(hm_data)
    every = [*hm_data.outfits, *hm_data.val_outfits, *hm_data.test_outfits]
    partners = known_partners(every, len(hm_data.types))
    variant, types, slots = hm_data.attrs["variant"], hm_data.types, hm_data.slots
    same_type = 0
    for question, cands in m.questions:
        ans, wrong = int(cands[0]), cands[1:]
        assert len(set(wrong.tolist())) == 3 and ans not in wrong
        assert (slots[wrong] == slots[ans]).all() and (variant[wrong] != variant[ans]).all()
        banned = set().union(*(partners[int(q)] for q in question)) | set(question.tolist())
        assert not banned & set(wrong.tolist())
        same_type += int((types[wrong] == types[ans]).all())
    assert same_type > 0.9 * len(m.questions)
    for pos, neg in zip(m.positives, m.negatives, strict=True):
        assert len(pos) == len(neg) >= 2 and (slots[pos] == slots[neg]).all()
        assert not set(neg.tolist()) & (set(pos.tolist()) | set().union(*(partners[int(i)] for i in pos)))
    again = matched_protocol(hm_data)
    assert all((a[1] == b[1]).all() for a, b in zip(m.questions, again.questions, strict=True))
