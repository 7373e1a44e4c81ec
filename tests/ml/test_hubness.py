"""ml.hubness on scores small enough to follow by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ml.hubness import capacity_offsets, even_spread_shares, k_occurrence, pooled, rerank, top_k_shares

# Four queries, three candidates: every query's best is candidate 0, by margins 0.12, 0.22, 0.07, 0.17.
SCORES = np.array(
    [[1.0, 0.88, 0.5], [1.0, 0.78, 0.7], [1.0, 0.93, 0.1], [1.0, 0.6, 0.83]],
    dtype=np.float32,
)


def test_top_k_shares_count_allowed_candidates_once_per_query():
    s = np.array([[1.0, -np.inf, 0.5], [-np.inf, -np.inf, -np.inf]], dtype=np.float32)
    assert top_k_shares(s, 2).tolist() == [0.5, 0.0, 0.5]  # the second query has nothing allowed
    assert top_k_shares(SCORES, 1).tolist() == [1.0, 0.0, 0.0]


def test_the_price_of_a_hub_is_just_enough_to_give_away_its_excess_lists():
    b = capacity_offsets(SCORES, k=1, cap=0.5, lr=0.1)
    # steps: share 1 -> b 0.05 (loses nothing), 0.10 (loses the 0.07 margin: share 0.75),
    # 0.125 (loses the 0.12 margin: share 0.5 = cap) -> stop
    assert b == pytest.approx([0.125, 0.0, 0.0], abs=1e-6)
    assert top_k_shares(SCORES - b, 1).tolist() == [0.5, 0.5, 0.0]


def test_fixed_prices_stay_as_given():
    start = np.array([0.2, 0.0, 0.0], dtype=np.float32)
    b = capacity_offsets(SCORES, k=1, cap=0.5, free=np.array([False, True, True]), start=start)
    assert b.tolist() == pytest.approx([0.2, 0.0, 0.0])  # candidate 0 keeps only the 0.22 margin
    assert top_k_shares(SCORES - b, 1).tolist() == [0.25, 0.5, 0.25]


NO = -np.inf
# Six queries, four candidates, k = 1. The three men's queries may only get candidate 0 (the one men's
# bag); the three women's queries may get 1, 2 or 3 and all prefer 1 (by 0.1, 0.15 and 0.5).
AUDIENCES = np.array(
    [[0.9, NO, NO, NO]] * 3 + [[NO, 1.0, 0.9, 0.5], [NO, 1.0, 0.5, 0.85], [NO, 1.0, 0.5, 0.5]],
    dtype=np.float32,
)


def test_even_spread_shares():
    # candidate 0: 3 queries x 1 pick / 6; candidates 1..3: 3 queries x 1/3 pick / 6
    assert even_spread_shares(AUDIENCES, 1) == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6])
    assert even_spread_shares(SCORES, 2) == pytest.approx([2 / 3] * 3)  # k/N when all are allowed
    assert even_spread_shares(np.zeros((0, 3), dtype=np.float32), 1).tolist() == [0, 0, 0]


def test_an_item_no_price_can_move_gets_none_and_the_others_are_still_capped():
    cap = np.maximum(0.2, 1.5 * even_spread_shares(AUDIENCES, 1))  # [0.75, 0.25, 0.25, 0.25]
    b = capacity_offsets(AUDIENCES, k=1, cap=cap, lr=0.1)
    shares = top_k_shares(AUDIENCES - b, 1)
    assert b[0] == 0.0  # in every men's list at any price
    assert shares[1] <= 0.25 and shares.tolist() == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6])
    # one cap for all: the men's bag stays over it whatever its price, so no step lowers the largest
    # excess and the women's hub keeps half the lists
    uniform = capacity_offsets(AUDIENCES, k=1, cap=0.2, lr=0.1)
    assert uniform.tolist() == [0.0] * 4 and top_k_shares(AUDIENCES - uniform, 1)[1] == 0.5


def test_rerank_by_score_minus_beta_times_offset():
    scores, hub = np.array([0.9, 0.8, 0.5]), np.array([0.4, 0.05, 0.0])
    assert rerank(scores=scores, hub=hub).tolist() == [1, 0, 2]  # keys 0.5, 0.75, 0.5 (stable)
    assert rerank(scores=scores, hub=hub, beta=0.0).tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        rerank(scores=scores, hub=hub, beta=-1)


def test_k_occurrence_counts_an_item_once_per_list():
    assert k_occurrence([[1, 2], [1, 1, 3], [4]]) == {1: 2 / 3, 2: 1 / 3, 3: 1 / 3, 4: 1 / 3}


def test_pooled_prices_see_only_each_querys_pool():
    scores, index = pooled(SCORES, 2)  # each query's two best: {0, 1}, {0, 1}, {0, 1} and {0, 2}
    assert [sorted(row) for row in index.tolist()] == [[0, 1], [0, 1], [0, 1], [0, 2]]
    assert top_k_shares(scores, 1, index, 3).tolist() == top_k_shares(SCORES, 1).tolist()
    # a query spreads its pick over its pool only: candidate 2 is in one pool of four
    assert even_spread_shares(scores, 1, index, 3) == pytest.approx([0.5, 0.375, 0.125])
    # the hub's price comes from margins inside the pools, as over the whole matrix
    b = capacity_offsets(scores, k=1, cap=0.5, lr=0.1, index=index, free=np.ones(3, dtype=bool))
    assert b == pytest.approx(capacity_offsets(SCORES, k=1, cap=0.5, lr=0.1), abs=1e-6)
    assert pooled(SCORES, 5)[0] is SCORES  # a pool as large as the slot: the whole matrix
    with pytest.raises(ValueError, match="pool must be"):
        pooled(SCORES, 0)
    with pytest.raises(ValueError, match="free"):
        capacity_offsets(scores, k=1, cap=0.5, index=index)
