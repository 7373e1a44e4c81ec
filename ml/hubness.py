"""Hubness of complete-the-look, and per-item offsets that cap it. No Django.

In a high-dimensional space a few points, *hubs*, are among the nearest neighbours of very many
queries (Radovanović, Nanopoulos & Ivanović 2010, "Hubs in space", JMLR): on 3,000 H&M articles,
complete-the-look put one bag in 92% of the top-5 bag lists of 300 random products, one bottom in 29%.

CSLS (Conneau et al. 2018, "Word translation without parallel data") discounts each candidate by its
mean similarity to its k nearest queries, ``2·s(q, c) − r(c)``. Measured on that catalog it cuts the
worst shares by a third to a half (tops 42% → 18%, bottoms 29% → 19%) but no weight of ``r(c)`` gets near
5%: a large weight turns the items with the lowest ``r`` into new hubs (``docs/recommendations.md``).

So the offsets here target the share itself. Each candidate ``c`` of a slot gets a price ``b(c) ≥ 0``
and lists rank by ``s(q, c) − b(c)``; the prices are the dual variables of "every query gets its top k,
no candidate fills more than ``cap`` of the lists" (a capacitated assignment), found by dual ascent on
the catalog's own products as queries (:func:`capacity_offsets`): an item over capacity gets dearer,
one under it with a price gets cheaper, as in Bertsekas' auction algorithm. Only items that would
otherwise be everyone's pick get a price; the rest keep the plain order.

Some shares no price can lower: a men's query sees only the men's bags, so where there are three, each
is in every men's list. Each candidate's cap is therefore at least 1.5× its *even-spread share*
(:func:`even_spread_shares`, the share it has when every query spreads its k picks evenly over the
candidates it may get); under one cap for all, such an item stays over it for ever, and the ascent,
which keeps the step with the smallest largest excess, returns its first step's prices for everyone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pooled(scores: np.ndarray, pool: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``pool`` best candidates, the rows complete-the-look re-ranks (``HUBNESS_POOL`` from
    the index): prices computed on them see what serving sees, and each ascent step sorts P, not N, scores.

    Args:
        scores: (Q, N) float32, ``-inf`` where not allowed.
        pool: candidates kept per query (P = min(pool, N)).

    Returns:
        (Q, P) float32 their scores and (Q, P) int64 their candidate indices, unordered within a row.

    Raises:
        ValueError: ``pool`` < 1.
    """
    if pool < 1:
        raise ValueError(f"pool must be >= 1 (got {pool})")
    q, n = scores.shape
    p = min(pool, n)
    if p == n or q == 0:
        return scores, np.broadcast_to(np.arange(n), (q, n))
    index = np.argpartition(-scores, p - 1, axis=1)[:, :p]
    return np.take_along_axis(scores, index, axis=1), index


def top_k_shares(
    scores: np.ndarray, k: int, index: np.ndarray | None = None, n: int | None = None
) -> np.ndarray:
    """The share of queries whose top k holds each candidate.

    Args:
        scores: (Q, M) float32 score of each candidate for each query, ``-inf`` where a candidate is
            not allowed for that query (never counted).
        k: list length (fewer candidates than k: all allowed ones).
        index: (Q, M) int, the candidate of each column per query (:func:`pooled`); default column j is
            candidate j.
        n: number of candidates when ``index`` is given.

    Returns:
        (N,) float64 shares in [0, 1] (0 for an empty query set).
    """
    q, m = scores.shape
    n = m if index is None else int(n)
    if q == 0 or m == 0:
        return np.zeros(n)
    kk = min(k, m)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]  # (Q, kk) unordered top kk
    valid = np.take_along_axis(scores, part, axis=1) > -np.inf
    cols = part if index is None else np.take_along_axis(index, part, axis=1)
    return np.bincount(cols[valid], minlength=n) / q


def even_spread_shares(
    scores: np.ndarray, k: int, index: np.ndarray | None = None, n: int | None = None
) -> np.ndarray:
    """The share of the queries' top-k lists each candidate fills when every query spreads its k picks
    evenly over the candidates it may get: ``(1/Q) Σ_{q allows c} min(1, k / m_q)``, ``m_q`` the number
    of candidates query ``q`` allows. Exact for a candidate whose queries allow at most k candidates
    (it is in all their lists, at any price); ``k/N`` for every candidate when all are allowed.

    Args:
        scores: (Q, M) float32 scores, ``-inf`` where a candidate is not allowed for that query.
        k: list length.
        index, n: as in :func:`top_k_shares` (pooled scores: a query may get only its pool).

    Returns:
        (N,) float64 shares in [0, 1] (0 for an empty query set).
    """
    q, m = scores.shape
    n = m if index is None else int(n)
    if q == 0 or m == 0:
        return np.zeros(n)
    allowed = scores > -np.inf  # (Q, M)
    per_pick = np.minimum(1.0, k / np.maximum(allowed.sum(axis=1), 1))  # (Q,)
    if index is None:
        return (per_pick @ allowed) / q
    weights = np.broadcast_to(per_pick[:, None], allowed.shape)[allowed]
    return np.bincount(np.asarray(index)[allowed], weights=weights, minlength=n) / q


def capacity_offsets(
    scores: np.ndarray,
    *,
    k: int,
    cap: float | np.ndarray,
    free: np.ndarray | None = None,
    start: np.ndarray | None = None,
    steps: int = 300,
    lr: float = 0.2,
    index: np.ndarray | None = None,
) -> np.ndarray:
    """Prices ``b ≥ 0`` such that ranking by ``scores − b`` puts no candidate in more than ``cap`` of
    the queries' top-k lists, by projected dual ascent ``b ← max(0, b + lr·(share − cap))``.

    Args:
        scores: (Q, N) float32 compatibility of each candidate with each query, ``-inf`` where not allowed.
        k: list length.
        cap: the largest share of lists one candidate may fill, one for all or (N,) one each (below its
            :func:`even_spread_shares` no prices can reach it).
        free: (N,) bool, the prices that may change (default all); the others keep ``start``.
        start: (N,) initial prices (default 0).
        steps: most ascent steps; stops early once no free candidate is over ``cap``.
        lr: step size (score units per unit of excess share).
        index: (Q, M) int, the candidate of each column of ``scores`` (:func:`pooled`); then
            ``scores`` is (Q, M) and the number of candidates is ``len(free)`` (required).

    Returns:
        (N,) float32 prices, 0 for candidates never over capacity: the first prices that bring every free
        candidate within its cap, else (caps the lists cannot meet) the prices of the step with the
        smallest largest excess over the caps, never worse than ``start``.

    Raises:
        ValueError: ``index`` given without ``free``.
    """
    if index is not None and free is None:
        raise ValueError("pooled scores need free (one flag per candidate)")
    n = scores.shape[1] if index is None else len(free)
    b = np.zeros(n, dtype=np.float64) if start is None else np.asarray(start, dtype=np.float64).copy()
    free = np.ones(n, dtype=bool) if free is None else np.asarray(free, dtype=bool)
    cap = np.broadcast_to(np.asarray(cap, dtype=np.float64), (n,))
    best, best_excess = b.copy(), np.inf
    for _ in range(steps):
        price = b.astype(np.float32)
        lowered = scores - (price[None] if index is None else price[index])
        excess = top_k_shares(lowered, k, index, n) - cap  # (N,)
        worst = float(excess[free].max(initial=0.0))
        if worst < best_excess:
            best, best_excess = b.copy(), worst
        if worst <= 0:
            break
        b[free] = np.maximum(0.0, b[free] + lr * excess[free])
    return best.astype(np.float32)


def rerank(*, scores: np.ndarray, hub: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """Order of candidates by ``score − β·hub(c)`` (β = 0: the plain order), best first.

    Args:
        scores: (P,) compatibility of each candidate with the query (the mean pair score).
        hub: (P,) each candidate's offset (:func:`capacity_offsets`).
        beta: the weight of the offsets, ≥ 0.

    Returns:
        (P,) int64 indices into the candidates; ties keep the plain order (a stable sort).
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0 (got {beta})")
    key = np.asarray(scores, dtype=np.float64) - beta * np.asarray(hub, dtype=np.float64)
    return np.argsort(-key, kind="stable")


def k_occurrence(lists: Sequence[Sequence[int]]) -> dict[int, float]:
    """The share of ``lists`` that contain each item (the k-occurrence N_k of Radovanović et al. 2010,
    over the number of lists): ``{item: share}``, an item counted once per list."""
    counts: dict[int, int] = {}
    for items in lists:
        for item in set(items):
            counts[item] = counts.get(item, 0) + 1
    n = max(len(lists), 1)
    return {item: c / n for item, c in counts.items()}
