"""Evaluation metrics for retrieval, fill-in-the-blank and outfit compatibility.

Pure functions: NumPy arrays in, Python floats out; at the end, two torch wrappers score the heads'
vectors with them (:func:`fitb_accuracy_heads`, :func:`text_to_image_recall`, validation in ``ml.train``).
Higher scores always mean "more similar / more compatible" (pass ``-distance`` if you have distances).
Every function checks shapes and raises ``ValueError`` (with the offending shapes in the message) on a
mismatch, on empty input or on non-finite scores.

Protocols:
    * Recall@K and MRR: the standard single-relevant-item retrieval metrics (Manning, Raghavan &
      Schütze, *Introduction to Information Retrieval*, 2008, ch. 8; MRR from Voorhees, TREC-8 QA, 1999).
    * FITB accuracy: the fill-in-the-blank task of Polyvore Outfits (Vasileva et al., "Learning
      Type-Aware Embeddings for Fashion Compatibility", ECCV 2018; first posed by Han et al. 2017).
    * Compatibility AUC: ROC AUC of outfit scores, real outfits positive and random ones negative
      (same papers).
    * Precision@K by label: the fraction of the K nearest gallery items that share the query's
      product type (a similar-item sanity check, as in Deep Fashion retrieval evaluations).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ml.heads import RecommenderHeads

__all__ = [
    "compatibility_auc",
    "fitb_accuracy",
    "fitb_accuracy_heads",
    "mean_reciprocal_rank",
    "precision_at_k_by_label",
    "recall_at_k",
    "text_to_image_recall",
]


def _check_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    """Return ``scores`` as a finite, non-empty float64 matrix (Q, G)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"{name} must be 2-D (Q, G); got shape {s.shape}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"{name} is empty; got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return s


def _check_index(index: np.ndarray, scores: np.ndarray, name: str) -> np.ndarray:
    """Return ``index`` as an int64 vector (Q,) of valid column indices into ``scores`` (Q, G)."""
    idx = np.asarray(index)
    if idx.ndim != 1 or idx.shape[0] != scores.shape[0]:
        raise ValueError(
            f"{name} must have shape ({scores.shape[0]},) to match scores {scores.shape}; got {idx.shape}"
        )
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must hold integer indices; got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if np.any(idx < 0) or np.any(idx >= scores.shape[1]):
        raise ValueError(f"{name} holds indices outside [0, {scores.shape[1]}) for scores {scores.shape}")
    return idx


def _pessimistic_ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """1-based rank of each query's positive: the number of gallery items scoring >= it. (Q,) int64."""
    s = _check_scores(scores)  # (Q, G)
    pos = _check_index(positives, s, "positives")  # (Q,)
    pos_scores = s[np.arange(s.shape[0]), pos]  # (Q,)
    return (s >= pos_scores[:, None]).sum(axis=1).astype(np.int64)  # (Q,), >= 1 (the positive itself)


def recall_at_k(
    scores: np.ndarray, positives: np.ndarray, ks: Iterable[int] = (1, 5, 10)
) -> dict[int, float]:
    """Recall@K with one relevant gallery item per query.

    Args:
        scores: (Q, G) float, ``scores[q, g]`` = similarity of query q to gallery item g (higher is better).
        positives: (Q,) int, the gallery index of the single correct item of each query.
        ks: the cut-offs K (positive ints); K > G simply gives recall 1.0.

    Returns:
        ``{K: fraction of queries whose positive ranks within the top K}``.

    Ties are ranked pessimistically: the positive's rank is the number of gallery items whose score is
    ``>=`` its own (itself included), so a gallery item tied with the positive ranks ahead of it. A
    constant scorer therefore gets recall@K = 0 for K < G rather than a lucky 1.
    """
    ks = list(ks)
    if not ks:
        raise ValueError("ks is empty")
    for k in ks:
        if int(k) != k or k < 1:
            raise ValueError(f"every K must be a positive integer; got {k!r}")
    ranks = _pessimistic_ranks(scores, positives)  # (Q,)
    return {int(k): float(np.mean(ranks <= k)) for k in ks}


def mean_reciprocal_rank(scores: np.ndarray, positives: np.ndarray) -> float:
    """Mean reciprocal rank (MRR) with one relevant gallery item per query.

    Args:
        scores: (Q, G) float, higher is better.
        positives: (Q,) int, the gallery index of each query's correct item.

    Returns:
        ``mean_q 1 / rank_q`` in (0, 1], with the pessimistic tie rule of :func:`recall_at_k`.
    """
    ranks = _pessimistic_ranks(scores, positives)  # (Q,)
    return float(np.mean(1.0 / ranks))


def fitb_accuracy(scores: np.ndarray, answers: np.ndarray, ties: str = "wrong") -> float:
    """Fill-in-the-blank accuracy (Polyvore Outfits, Vasileva et al. 2018).

    Each question is an outfit with one item removed and C candidates (4 in Polyvore Outfits); the
    model scores each candidate against the remaining items and picks the highest.

    Args:
        scores: (Q, C) float, ``scores[q, c]`` = how well candidate c completes question q.
        answers: (Q,) int, index of the correct candidate of each question.
        ties: ``"wrong"``: a tie for the maximum counts as wrong (a constant scorer gets 0);
            ``"split"``: a tie among t candidates that include the answer counts 1/t, the expected
            accuracy of breaking ties at random (a constant scorer gets 1/C). Use ``"split"`` to compare
            coarse scorers (baselines that score many candidates equally) fairly.

    Returns:
        The accuracy in [0, 1].

    Raises:
        ValueError: bad shapes, empty input, non-finite scores, or an unknown ``ties`` mode.
    """
    if ties not in ("wrong", "split"):
        raise ValueError(f"ties must be 'wrong' or 'split', got {ties!r}")
    ranks = _pessimistic_ranks(scores, answers)  # (Q,); rank 1 <=> strictly highest
    if ties == "wrong":
        return float(np.mean(ranks == 1))
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(answers, dtype=np.int64)
    ans = s[np.arange(len(s)), a]  # (Q,)
    is_max = ans >= s.max(axis=1)
    n_tied = (s == s.max(axis=1, keepdims=True)).sum(axis=1)
    return float(np.mean(np.where(is_max, 1.0 / n_tied, 0.0)))


def compatibility_auc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """Outfit compatibility ROC AUC (Polyvore Outfits, Vasileva et al. 2018).

    Args:
        pos_scores: (P,) float, scores of real (compatible, label 1) outfits.
        neg_scores: (N,) float, scores of random (incompatible, label 0) outfits.

    Returns:
        ``sklearn.metrics.roc_auc_score``: the probability that a random positive outscores a random
        negative, ties counting 1/2.
    """
    pos = np.asarray(pos_scores, dtype=np.float64)
    neg = np.asarray(neg_scores, dtype=np.float64)
    if pos.ndim != 1 or neg.ndim != 1:
        raise ValueError(f"pos_scores and neg_scores must be 1-D; got shapes {pos.shape} and {neg.shape}")
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            f"need at least one positive and one negative; got shapes {pos.shape} and {neg.shape}"
        )
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        raise ValueError("pos_scores or neg_scores contains NaN or infinite values")
    y_true = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])  # (P + N,)
    y_score = np.concatenate([pos, neg])  # (P + N,)
    return float(roc_auc_score(y_true, y_score))


def precision_at_k_by_label(
    scores: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    k: int = 10,
    exclude_self: np.ndarray | None = None,
) -> float:
    """Similar-item precision@K: the share of the top-K gallery items with the query's label.

    Args:
        scores: (Q, G) float, higher is better.
        query_labels: (Q,) labels (any comparable dtype, e.g. product type strings).
        gallery_labels: (G,) labels of the gallery items.
        k: the cut-off K (positive int).
        exclude_self: optional (Q,) int, a gallery index to leave out for each query (the query item
            itself when queries are drawn from the gallery); a negative entry excludes nothing.

    Returns:
        The mean over queries of (matching items in the top K) / K. When fewer than K gallery items are
        left after the exclusion, the denominator is the number left. Ties in score are broken by
        gallery index (lower first), so the result is deterministic.
    """
    s = _check_scores(scores)  # (Q, G)
    q_labels = np.asarray(query_labels)
    g_labels = np.asarray(gallery_labels)
    if q_labels.shape != (s.shape[0],):
        raise ValueError(
            f"query_labels must have shape ({s.shape[0]},) to match scores {s.shape}; got {q_labels.shape}"
        )
    if g_labels.shape != (s.shape[1],):
        raise ValueError(
            f"gallery_labels must have shape ({s.shape[1]},) to match scores {s.shape}; got {g_labels.shape}"
        )
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    k = int(k)
    keep = np.ones(s.shape, dtype=bool)  # (Q, G)
    if exclude_self is not None:
        ex = np.asarray(exclude_self)
        if ex.shape != (s.shape[0],):
            raise ValueError(
                f"exclude_self must have shape ({s.shape[0]},) to match scores {s.shape}; got {ex.shape}"
            )
        if not np.issubdtype(ex.dtype, np.integer):
            raise ValueError(f"exclude_self must hold integer indices; got dtype {ex.dtype}")
        if np.any(ex >= s.shape[1]):
            raise ValueError(f"exclude_self holds indices >= {s.shape[1]} for scores {s.shape}")
        rows = np.flatnonzero(ex >= 0)
        keep[rows, ex[rows]] = False
    if not np.all(keep.any(axis=1)):
        raise ValueError("a query has no gallery item left after exclude_self")
    masked = np.where(keep, s, -np.inf)  # (Q, G)
    order = np.argsort(-masked, axis=1, kind="stable")[:, :k]  # (Q, k) best first, ties by index
    n_left = np.minimum(keep.sum(axis=1), k)  # (Q,)
    valid = np.arange(order.shape[1])[None, :] < n_left[:, None]  # (Q, k) ignore excluded slots
    hits = (g_labels[order] == q_labels[:, None]) & valid  # (Q, k)
    return float(np.mean(hits.sum(axis=1) / n_left))


# -----------------------------------------------------------------------------
# the heads' vectors (torch): validation metrics of ml.train


@torch.no_grad()
def fitb_accuracy_heads(
    heads: RecommenderHeads, compat: torch.Tensor, slots: torch.Tensor, questions
) -> float:
    """FITB accuracy of the compatibility space: candidate score = mean pair score with the question items.

    Args:
        heads: the heads whose :meth:`~ml.heads.RecommenderHeads.pair_score` scores item pairs.
        compat: (N, C) float32 item vectors from ``heads.compat``, on the heads' device.
        slots: (N,) int64 slot indices, on the same device.
        questions: from :func:`ml.dataset.fitb_questions`: ``[(question_items (K,), candidates (M,))]``
            int64, answer at index 0 (ties count as wrong, :func:`fitb_accuracy`).

    Returns:
        The accuracy in [0, 1]; NaN when there is no question.
    """
    if not questions:
        return float("nan")
    scores = []
    for q, cands in questions:
        qi = torch.as_tensor(q).repeat_interleave(len(cands)).to(compat.device)
        ci = torch.as_tensor(cands).repeat(len(q)).to(compat.device)
        s = heads.pair_score(compat[qi], compat[ci], slots[qi], slots[ci]).view(len(q), len(cands)).mean(0)
        scores.append(s.cpu().numpy())
    return fitb_accuracy(np.stack(scores), np.zeros(len(scores), dtype=np.int64), ties="wrong")


@torch.no_grad()
def text_to_image_recall(img: torch.Tensor, txt: torch.Tensor, k: int = 10) -> float:
    """Recall@k of text→image retrieval, item i's text against all G images (:func:`recall_at_k`).

    Args:
        img: (G, E) float image vectors; txt: (G, E) float text vectors, row i of each the same item
            (unit norm, so ``txt @ img.T`` are cosines).
        k: the cut-off.

    Returns:
        The fraction of texts whose own image ranks within the top k (ties count against it).
    """
    sims = (txt @ img.T).cpu().numpy()  # (G, G); ties rank against the positive (ml.metrics)
    return recall_at_k(sims, np.arange(len(sims)), ks=(k,))[k]
