"""Complementary-item retrieval, audience groups and the scorers, on catalogs worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.audience import AUDIENCE_GROUPS, audience_fits, audience_group, audience_ids
from ml.dataset import TrainData
from ml.heads import zero_shot_heads
from ml.retrieval import complementary_metrics, complementary_set
from ml.scorers import (
    Scorer,
    attribute_scorer,
    baseline_scorers,
    heads_scorer,
    memory_first,
    pair_memory_scorer,
    popularity_scorer,
)
from ml.slots import SLOT_INDEX, missing_slots

TOP, BOTTOM, SHOES = SLOT_INDEX["top"], SLOT_INDEX["bottom"], SLOT_INDEX["shoes"]
W, M, K, B, U = range(5)  # audience ids: women, men, kids, baby, unisex


def test_audience_groups() -> None:
    assert AUDIENCE_GROUPS == ("women", "men", "kids", "baby", "unisex")
    cases = {
        "Ladieswear": "women",
        "Divided": "women",
        "Menswear": "men",
        "Baby/Children": "kids",
        "Baby Sizes 50-98": "baby",
        "Sport": "unisex",
        "": "unisex",
        "Women's shoes": "women",
        "MEN": "men",
        "Girls 2-8": "kids",
        "newborn": "baby",
        "Unisex": "unisex",
        "garden": "unisex",
    }
    assert {raw: audience_group(raw) for raw in cases} == cases
    assert audience_ids(["Menswear", "Ladieswear", "Sport"]).tolist() == [M, W, U]
    assert (
        audience_fits("women", "women") and audience_fits("unisex", "men") and audience_fits("kids", "unisex")
    )
    assert not audience_fits("men", "women") and not audience_fits("baby", "kids")


def test_missing_slots() -> None:
    assert missing_slots(["top", "bottom"]) == ["outerwear", "shoes", "bag", "accessory", "jewellery"]
    assert "top" not in missing_slots(["one-piece"]) and "one-piece" in missing_slots(["shoes"])


def catalog() -> TrainData:
    """Tops 0-3, bottoms 4-7, shoes 8-9. Held-out outfit [0, 4]; 5 is 4's colour variant.
    Audience: 0 women, 4 women, tops 1-3 men, men, women; bottoms 5-7 women, men, unisex; shoes men."""
    slots = np.array([TOP] * 4 + [BOTTOM] * 4 + [SHOES] * 2, dtype=np.int64)
    variant = np.arange(10)
    variant[5] = variant[4]
    z = np.zeros((10, 2), dtype=np.float32)
    return TrainData(
        image=z,
        text=z.copy(),
        slots=slots,
        types=slots.copy(),
        outfits=[np.array([1, 6]), np.array([1, 7]), np.array([2, 6])],
        test_outfits=[np.array([0, 4])],
        attrs={"variant": variant, "audience": np.array([W, M, M, W, W, W, M, U, M, M])},
    )


def test_complementary_retrieval_by_hand() -> None:
    # A scorer that ranks every candidate by a fixed weight, whatever the query.
    weight = np.array([0.5, 0.9, 0.1, 0.0, 0.7, 0.8, 0.3, 0.6, 0.95, 0.2])
    scorer = Scorer(lambda a, b: weight[b])
    cset = complementary_set(catalog())
    assert [(g.tolist(), t) for g, t in cset.queries] == [([4], 0), ([0], 4)]
    tops, everything = cset.galleries(0)
    assert tops.tolist() == [0, 1, 2, 3] and 4 not in everything and 5 not in everything
    bottoms, _ = cset.galleries(1)
    assert bottoms.tolist() == [4, 6, 7]  # 5 is the answer's variant
    m = complementary_metrics(scorer, cset, ks=(1, 2))
    # Query 1: top 0 (0.5) ranks 2nd after 1 (0.9). Query 2: bottom 4 (0.7) ranks 1st of 4, 6, 7.
    assert m["ctl_recall@1"] == 0.5 and m["ctl_recall@2"] == 1.0
    assert m["ctl_median_rank"] == 1.5 and m["n_ctl"] == 2
    # Audience of the top 10 picks. Query 1 (women): tops 1 (men), 0 (women), 2 (men), 3 (women) -> 2/4.
    # Query 2 (women): bottoms 4 (women), 7 (unisex), 6 (men) -> 2/3.
    assert m["audience@10"] == pytest.approx((2 / 4 + 2 / 3) / 2)
    # Slot validity, unfiltered. Query 1 (a bottom given): everything but 4, 5: 8 of them, of which the
    # top 10 holds all; valid = tops and shoes = 6/8. Query 2 (a top given): all but 0: valid bottoms
    # and shoes 6/9.
    assert m["slot_valid@10"] == pytest.approx((6 / 8 + 6 / 9) / 2)


def test_novel_queries_are_those_no_training_outfit_answers() -> None:
    """Held-out outfit [0, 4, 8] with a training outfit [0, 8]: asking for 0 given 4 and 8, or for 8
    given 0 and 4, a pair-memory scorer recalls the answer; asking for bottom 4 it has nothing."""
    data = catalog()
    data = TrainData(**{**data.__dict__, "outfits": [*data.outfits, np.array([0, 8])]})
    data.test_outfits[:] = [np.array([0, 4, 8])]
    cset = complementary_set(data)
    assert [t for _, t in cset.queries] == [0, 4, 8] and cset.novel.tolist() == [False, True, False]
    weight = np.array([0.5, 0.9, 0.1, 0.0, 0.2, 0.8, 0.3, 0.6, 0.95, 0.99])
    m = complementary_metrics(Scorer(lambda a, b: weight[b]), cset)
    # bottom 4 (0.2) ranks last of 4, 6 (0.3), 7 (0.6): the novel query's rank is 3
    assert m["novel_median_rank"] == 3.0 and m["novel_recall@10"] == 1.0 and m["n_ctl_novel"] == 1
    assert m["n_ctl"] == 3


def test_ties_count_as_the_expected_rank() -> None:
    cset = complementary_set(catalog())
    m = complementary_metrics(Scorer(lambda a, b: np.zeros(len(b))), cset, ks=(1, 2))
    # every candidate tied: rank = (G + 1) / 2 -> 2.5 among 4 tops, 2 among 3 bottoms; recall@1 = 1/G
    assert m["ctl_median_rank"] == pytest.approx(2.25)
    assert m["ctl_recall@1"] == pytest.approx((1 / 4 + 1 / 3) / 2)
    assert m["ctl_recall@2"] == pytest.approx((2 / 4 + 2 / 3) / 2)


def test_popularity_and_attribute_scorers() -> None:
    data = catalog()
    pop = popularity_scorer(data)  # 1: 2 outfits, 2, 6: 1 and 2, 7: 1
    assert pop.pair(np.array([1, 0]), np.array([6, 3])).tolist() == [4.0, 0.0]
    assert pop.items(np.array([0, 4]), np.array([1, 2, 3])).tolist() == [4.0, 2.0, 0.0]
    attr = attribute_scorer(data)  # audience only (no section/department/colour here)
    assert attr.pair(np.array([0, 0]), np.array([3, 1])).tolist() == [1.0, 0.0]


def test_heads_items_are_the_summed_pair_scores_and_the_serving_query() -> None:
    rng = np.random.default_rng(0)
    n, e = 30, 8
    image = rng.normal(size=(n, e)).astype(np.float32)
    text = rng.normal(size=(n, e)).astype(np.float32)
    slots = rng.integers(0, 5, n)
    heads = zero_shot_heads(e, 6, seed=1)
    with torch.no_grad():  # untrained masks are all alike: make them differ per slot pair
        heads.mask_logits.copy_(
            torch.randn(heads.mask_logits.shape, generator=torch.Generator().manual_seed(2))
        )
    scorer = heads_scorer(heads, image, text, slots)
    given, cands = np.array([3, 7, 11]), np.arange(n)
    summed = sum(scorer.pair(np.full(n, g), cands) for g in given)
    assert np.allclose(scorer.items(given, cands), summed, atol=1e-5)
    with torch.no_grad():
        f = heads.compat(torch.from_numpy(image), torch.from_numpy(text))
        q = heads.slot_query(f[given], torch.from_numpy(slots[given]), int(slots[5]))
    assert scorer.items(given, np.array([5]))[0] == pytest.approx(float(q @ f[5]), abs=1e-5)
    # the batched form: every item for several given sets at once, each row the summed pair scores
    sets = [given, np.array([0]), np.array([4, 9, 28, 29])]
    rows = scorer.items_of_every(sets, n)
    assert rows.shape == (3, n)
    for row, g in zip(rows, sets, strict=True):
        assert np.allclose(row, sum(scorer.pair(np.full(n, x), cands) for x in g), atol=1e-5)


def test_a_scorer_without_a_batched_form_scores_every_item_one_set_at_a_time() -> None:
    pop = Scorer(popularity_scorer(catalog()).pair)
    rows = pop.items_of_every([np.array([0, 4]), np.array([1])], 10)
    assert rows[0, [1, 2, 3]].tolist() == [4.0, 2.0, 0.0] and rows[1, 6] == 4.0
    assert pop.items_of_every([], 10).shape == (0, 10)


def test_memory_first_lifts_the_training_outfits_partners_then_the_model() -> None:
    """Training outfits [1, 6], [1, 7], [2, 6]: given top 1, bottoms 6 and 7 are remembered once each;
    with 2 picks per slot both come first (by the model's score between them), with 1 only 7; given
    top 2 only 6 is remembered. The rest keeps the model's order, and pairs keep the model's score."""
    data = catalog()
    weight = np.array([0.5, 0.9, 0.1, 0.0, 0.7, 0.8, 0.3, 0.6, 0.95, 0.2])
    model = Scorer(lambda a, b: weight[b], every=lambda gs: np.tile(weight, (len(gs), 1)))
    memory = pair_memory_scorer(data)
    bottoms = np.array([4, 5, 6, 7])

    def order(hybrid: Scorer, given: int) -> list[int]:
        return bottoms[np.argsort(-hybrid.items(np.array([given]), bottoms), kind="stable")].tolist()

    two, one = memory_first(model, memory, data.slots, 2), memory_first(model, memory, data.slots, 1)
    assert order(two, 1) == [7, 6, 5, 4] and order(one, 1) == [7, 5, 4, 6]
    assert order(two, 2) == [6, 5, 4, 7] and order(one, 2) == [6, 5, 4, 7]
    assert order(memory_first(model, memory, data.slots, 0), 1) == [5, 4, 7, 6]  # the model alone
    tops = np.array([0, 1, 2, 3])  # given bottom 6: tops 1 and 2 are remembered, lifted in its own slot
    assert tops[np.argsort(-two.items(np.array([6]), tops), kind="stable")].tolist() == [1, 2, 0, 3]
    rows = two.items_of_every([np.array([1]), np.array([2])], 10)
    assert np.allclose(rows[:, bottoms], [two.items(np.array([g]), bottoms) for g in (1, 2)])
    assert two.pair(np.array([1, 3]), np.array([6, 6])).tolist() == [0.3, 0.3]  # the model's pair score
    with pytest.raises(ValueError, match="batched"):
        memory_first(Scorer(lambda a, b: weight[b]), memory, data.slots, 2)


def test_memory_first_lifts_only_what_the_site_could_suggest() -> None:
    """Training outfits [1, 2, 4] and [1, 5, 6]: given top 1, top 2 is remembered but the look has a top
    (no lift); bottoms 4 and 5 are one product in two colours (one lift, the more often paired first);
    given bottom 4, its own colour variant 5 is never lifted."""
    data = catalog()
    data = TrainData(**{**data.__dict__, "outfits": [np.array([1, 2, 4]), np.array([1, 5, 6])]})
    variant = np.asarray(data.attrs["variant"])
    weight = np.array([0.5, 0.9, 0.1, 0.0, 0.7, 0.8, 0.3, 0.6, 0.95, 0.2])
    model = Scorer(lambda a, b: weight[b], every=lambda gs: np.tile(weight, (len(gs), 1)))
    hybrid = memory_first(model, pair_memory_scorer(data), data.slots, 3, variant)
    row = hybrid.items_of_every([np.array([1])], 10)[0]
    assert row[2] == weight[2] and row[3] == weight[3]  # tops: the model's scores, nothing lifted
    lifted = [i for i in range(10) if row[i] > 1]
    assert lifted == [5, 6]  # 5 (0.8) over its variant 4 (0.7), both paired once; 6 paired once
    row4 = hybrid.items_of_every([np.array([4])], 10)[0]
    assert row4[5] == weight[5]  # 4's own colour variant


def test_every_baselines_batched_scores_are_its_summed_pair_scores() -> None:
    data = catalog()
    data.attrs["colour"] = np.array([0, 1, 1, 2, 0, 0, 1, 2, 2, 0])
    sets = [np.array([0, 4]), np.array([1]), np.array([2, 6, 9])]
    for name, scorer in baseline_scorers(data).items():
        assert scorer.every is not None, name
        slow = Scorer(scorer.pair).items_of_every(sets, 10)  # one pair call per given item
        assert np.allclose(scorer.items_of_every(sets, 10), slow), name


def test_open_queries_are_those_whose_answer_slot_the_look_misses() -> None:
    """Held-out outfit [0, 1, 4] (two tops and a bottom): asking for top 0 or top 1 next to the other
    top is a question complete-the-look never answers (the look has a top); asking for bottom 4 is."""
    data = catalog()
    data.test_outfits[:] = [np.array([0, 1, 4])]
    cset = complementary_set(data)
    assert [t for _, t in cset.queries] == [0, 1, 4] and cset.open.tolist() == [False, False, True]
    weight = np.array([0.5, 0.9, 0.1, 0.0, 0.2, 0.8, 0.3, 0.6, 0.95, 0.99])
    m = complementary_metrics(Scorer(lambda a, b: weight[b]), cset, ks=(1, 10))
    # tops 0 and 1 each rank first among the tops left (recall@1 1); bottom 4 (0.2) last of 4, 6, 7 (0)
    assert m["ctl_recall@1"] == pytest.approx(2 / 3)
    assert m["open_recall@10"] == 1.0 and m["n_ctl_open"] == 1  # the one open query, within 10
