"""ml.hubness on vectors small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ml.hubness import hub_scores, k_occurrence, rerank


def _masks(s: int = 3, c: int = 2) -> np.ndarray:
    return np.ones((s, s, c), dtype=np.float32)


def test_hub_score_is_the_mean_of_the_k_best_pair_scores_weighted_by_source_slot_size():
    ref = np.array([[1, 0], [0, 1], [0.6, 0.8], [0, 1]], dtype=np.float32)  # slot 0 x3, slot 2 x1
    ref_slots = np.array([0, 0, 0, 2])
    cand = np.array([[1, 0], [0, 1]], dtype=np.float32)
    r = hub_scores(
        compat=cand,
        slots=np.array([1, 1]),
        ref_compat=ref,
        ref_slots=ref_slots,
        masks2=_masks(),
        sources={1: [0, 2]},
        k=2,
    )
    # [1, 0]: slot 0 scores 1, 0, 0.6 -> top-2 mean 0.8; slot 2 (one item, k = 1): 0 -> (3*0.8 + 1*0) / 4
    # [0, 1]: slot 0 scores 0, 1, 0.8 -> 0.9; slot 2: 1 -> (3*0.9 + 1*1) / 4
    assert r == pytest.approx([0.6, 0.925], abs=1e-6)


def test_hub_score_uses_the_pair_mask_of_the_two_slots():
    masks = _masks()
    masks[1, 0] = [2.0, 0.0]
    r = hub_scores(
        compat=np.array([[1, 0]], dtype=np.float32),
        slots=np.array([1]),
        ref_compat=np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32),
        ref_slots=np.array([0, 0, 0]),
        masks2=masks,
        sources={1: [0]},
        k=2,
    )
    assert r == pytest.approx([(2.0 + 1.2) / 2], abs=1e-6)  # q = [2, 0]: scores 2, 0, 1.2


def test_a_slot_nobody_asks_for_has_no_hub_score():
    r = hub_scores(
        compat=np.array([[1, 0]], dtype=np.float32),
        slots=np.array([2]),
        ref_compat=np.array([[1, 0]], dtype=np.float32),
        ref_slots=np.array([0]),
        masks2=_masks(),
        sources={1: [0]},
    )
    assert r.tolist() == [0.0]


def test_rerank_by_score_minus_beta_times_hub():
    scores, hub = np.array([0.9, 0.8, 0.5]), np.array([0.8, 0.1, 0.0])
    assert rerank(scores=scores, hub=hub, beta=0.5).tolist() == [1, 0, 2]  # keys 0.5, 0.75, 0.5 (stable)
    assert rerank(scores=scores, hub=hub, beta=0.0).tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        rerank(scores=scores, hub=hub, beta=-1)


def test_k_occurrence_counts_an_item_once_per_list():
    assert k_occurrence([[1, 2], [1, 1, 3], [4]]) == {1: 2 / 3, 2: 1 / 3, 3: 1 / 3, 4: 1 / 3}
