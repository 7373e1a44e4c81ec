"""Metrics against numbers computed by hand, and the evaluation plots (PNG size and dimensions)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ml.metrics import (
    compatibility_auc,
    fitb_accuracy,
    mean_reciprocal_rank,
    precision_at_k_by_label,
    recall_at_k,
)
from ml.plots import plot_embedding_2d, plot_loss_curves, plot_metric_bars

# 4 queries x 4 gallery items; positives = [2, 1, 0, 0].
SCORES = np.array(
    [
        [0.9, 0.1, 0.5, 0.3],  # pos 2 (0.5): {0.9, 0.5} >= 0.5 -> rank 2
        [0.2, 0.8, 0.8, 0.1],  # pos 1 (0.8): {0.8, 0.8} >= 0.8 -> rank 2 (tie ranks pessimistically)
        [0.7, 0.6, 0.5, 0.4],  # pos 0 (0.7): only itself     -> rank 1
        [0.1, 0.2, 0.3, 0.4],  # pos 0 (0.1): all four        -> rank 4
    ]
)
POSITIVES = np.array([2, 1, 0, 0])


def test_recall_at_k_by_hand() -> None:
    # ranks = [2, 2, 1, 4]: @1 -> 1/4, @2 -> 3/4, @3 -> 3/4, @4 -> 4/4, @10 -> 4/4
    assert recall_at_k(SCORES, POSITIVES, ks=(1, 2, 3, 4, 10)) == {1: 0.25, 2: 0.75, 3: 0.75, 4: 1.0, 10: 1.0}


def test_recall_default_ks() -> None:
    assert recall_at_k(SCORES, POSITIVES) == {1: 0.25, 5: 1.0, 10: 1.0}


def test_mrr_by_hand() -> None:
    # (1/2 + 1/2 + 1/1 + 1/4) / 4 = 2.25 / 4 = 0.5625
    assert mean_reciprocal_rank(SCORES, POSITIVES) == pytest.approx(0.5625)


def test_constant_scores_rank_last() -> None:
    # every item ties with the positive -> rank G = 3 for each query: recall@1 = 0, MRR = 1/3
    scores = np.zeros((2, 3))
    assert recall_at_k(scores, np.array([0, 2]), ks=(1, 3)) == {1: 0.0, 3: 1.0}
    assert mean_reciprocal_rank(scores, np.array([0, 2])) == pytest.approx(1 / 3)


def test_fitb_accuracy_with_tie() -> None:
    scores = np.array(
        [
            [0.9, 0.2, 0.3, 0.1],  # answer 0, unique max          -> right
            [0.5, 0.5, 0.1, 0.0],  # answer 0, tied with candidate 1 -> wrong
            [0.1, 0.2, 0.8, 0.3],  # answer 0, candidate 2 is higher -> wrong
            [0.1, 0.2, 0.8, 0.3],  # answer 2, unique max          -> right
        ]
    )
    # 2 right of 4 = 0.5
    assert fitb_accuracy(scores, np.array([0, 0, 0, 2])) == 0.5


def test_compatibility_auc_by_hand() -> None:
    # positive/negative pairs: 0.9 beats 0.5, 0.1, 0.4 (3); 0.4 loses to 0.5 (0), beats 0.1 (1),
    # ties 0.4 (1/2) -> 4.5 / (2 * 3) = 0.75
    assert compatibility_auc(np.array([0.9, 0.4]), np.array([0.5, 0.1, 0.4])) == pytest.approx(0.75)


GALLERY_LABELS = np.array(["top", "top", "bottom", "shoes", "top"])
P_SCORES = np.array(
    [
        [1.0, 0.9, 0.8, 0.2, 0.7],  # query = gallery 0 ("top")
        [0.8, 0.1, 1.0, 0.6, 0.3],  # query = gallery 2 ("bottom")
    ]
)
QUERY_LABELS = np.array(["top", "bottom"])


def test_precision_at_k_exclude_self() -> None:
    # q0 without item 0: best 1 (top), 2 (bottom) -> 1/2; q1 without item 2: best 0 (top), 3 (shoes) -> 0/2
    # mean = 0.25
    got = precision_at_k_by_label(P_SCORES, QUERY_LABELS, GALLERY_LABELS, k=2, exclude_self=np.array([0, 2]))
    assert got == pytest.approx(0.25)


def test_precision_at_k_without_exclusion() -> None:
    # q0: 0 (top), 1 (top) -> 2/2; q1: 2 (bottom), 0 (top) -> 1/2; mean = 0.75
    assert precision_at_k_by_label(P_SCORES, QUERY_LABELS, GALLERY_LABELS, k=2) == pytest.approx(0.75)
    # a negative exclude_self entry excludes nothing: q0 as above (1.0); q1 excludes 2 -> 0/2; mean 0.5
    got = precision_at_k_by_label(P_SCORES, QUERY_LABELS, GALLERY_LABELS, k=2, exclude_self=np.array([-1, 2]))
    assert got == pytest.approx(0.5)


def test_precision_k_larger_than_gallery() -> None:
    # k=10 but 4 items left: q0 tops among {1, 2, 3, 4} = {1, 4} -> 2/4; q1 bottoms among {0, 1, 3, 4} -> 0/4
    got = precision_at_k_by_label(P_SCORES, QUERY_LABELS, GALLERY_LABELS, k=10, exclude_self=np.array([0, 2]))
    assert got == pytest.approx(0.25)


def test_shape_mismatch_errors_name_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        recall_at_k(SCORES, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        mean_reciprocal_rank(SCORES, np.array([0, 1, 2, 9]))  # index 9 outside the gallery
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        fitb_accuracy(np.zeros((2, 4)), np.array([0]))
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        compatibility_auc(np.zeros((2, 2)), np.zeros(3))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        precision_at_k_by_label(P_SCORES, QUERY_LABELS, GALLERY_LABELS[:3])
    with pytest.raises(ValueError, match=r"\(1,\)"):
        precision_at_k_by_label(P_SCORES, QUERY_LABELS, GALLERY_LABELS, exclude_self=np.array([0]))
    with pytest.raises(ValueError, match="2-D"):
        recall_at_k(np.zeros(4), np.array([0]))


def test_empty_and_non_finite_inputs_raise() -> None:
    with pytest.raises(ValueError, match="empty"):
        recall_at_k(np.zeros((0, 4)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="empty"):
        fitb_accuracy(np.zeros((3, 0)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="at least one"):
        compatibility_auc(np.array([0.5]), np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        mean_reciprocal_rank(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="positive integer"):
        recall_at_k(SCORES, POSITIVES, ks=(0,))


# --- plots -------------------------------------------------------------------------------------------


def _assert_png(path, size=(800, 500)) -> None:
    assert path.is_file() and path.stat().st_size > 1024
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == size


def test_plot_loss_curves(tmp_path) -> None:
    out = plot_loss_curves(
        {"train_loss": [1.0, 0.7, 0.5, 0.4], "val_loss": [1.1, 0.9, 0.8]}, tmp_path / "a" / "loss.png"
    )
    _assert_png(out)


def test_plot_embedding_2d(tmp_path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 16))
    labels = ["top"] * 10 + ["shoes"] * 10 + ["bag"] * 10
    _assert_png(plot_embedding_2d(vectors, labels, tmp_path / "emb.png"))
    _assert_png(plot_embedding_2d(vectors[:, :1], labels, tmp_path / "emb1d.png"))  # D=1 pads to 2-D
    with pytest.raises(ValueError, match="labels"):
        plot_embedding_2d(vectors, labels[:5], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="tsne"):
        plot_embedding_2d(vectors, labels, tmp_path / "bad.png", method="tsne")


def test_plot_metric_bars(tmp_path) -> None:
    table = {
        "zero-shot": {"fitb": 0.41, "auc": 0.62, "recall@10": 0.30},
        "fine-tuned": {"fitb": 0.55, "auc": 0.81},  # missing recall@10 leaves a gap
    }
    _assert_png(plot_metric_bars(table, tmp_path / "bars.png"))
    _assert_png(
        plot_metric_bars(table, tmp_path / "bars_small.png", figsize=(4, 3), dpi=100), size=(400, 300)
    )


def test_fitb_split_ties_counts_expected_accuracy():
    from ml.metrics import fitb_accuracy

    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # unique max at the answer -> 1
            [0.5, 0.5, 0.1, 0.1],  # answer tied with one other -> 1/2
            [0.2, 0.2, 0.2, 0.2],  # 4-way tie -> 1/4
            [0.1, 0.9, 0.0, 0.0],
        ]
    )  # wrong -> 0
    answers = np.zeros(4, dtype=np.int64)
    assert fitb_accuracy(scores, answers, ties="split") == pytest.approx((1 + 0.5 + 0.25 + 0) / 4)
    assert fitb_accuracy(scores, answers) == pytest.approx(0.25)  # default: ties are wrong
    with pytest.raises(ValueError, match="ties"):
        fitb_accuracy(scores, answers, ties="random")
