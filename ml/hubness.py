"""Hubness of the type-aware compatibility space, and the CSLS re-ranking that reduces it. No Django.

In a high-dimensional space a few points, *hubs*, are among the nearest neighbours of very many
queries (Radovanović, Nanopoulos & Ivanović 2010, "Hubs in space", JMLR): complete-the-look on the
H&M slice suggested one bottom for 39% of 300 random products. Cross-domain similarity local scaling
(CSLS; Conneau et al. 2018, "Word translation without parallel data", ICLR) discounts a candidate ``c``
by its mean similarity to its k nearest queries, ``r(c)``:

    CSLS(q, c) = 2·s(q, c) − r(q) − r(c)

``r(q)`` is the same for every candidate of one query, so ranking by ``2·s(q, c) − r(c)``, or by
``s(q, c) − β·r(c)`` with β = 1/2, is ranking by CSLS; :func:`rerank` takes β as a knob.

Here ``s`` is the type-aware pair score ``<f_q ⊙ m_{ab}², f_c>`` (:mod:`ml.heads`), and the queries of
a candidate of slot ``t`` are the items of every slot ``s`` that asks for ``t`` (a top asks for a
bottom, a dress does not): ``r(c)`` is the mean, over those slots weighted by their number of items, of
the mean of its k highest pair scores with the items of that slot (:func:`hub_scores`), i.e. its
expected local density for a query drawn at random from the catalog.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: Neighbours per slot in ``r(c)`` (Conneau et al. use 10).
HUB_K = 10
#: Most pair scores held in memory at once by :func:`hub_scores` (float32: 256 MiB).
_CHUNK_SCORES = 1 << 26


def hub_scores(
    *,
    compat: np.ndarray,
    slots: np.ndarray,
    ref_compat: np.ndarray,
    ref_slots: np.ndarray,
    masks2: np.ndarray,
    sources: Mapping[int, Sequence[int]],
    k: int = HUB_K,
) -> np.ndarray:
    """``r(c)`` of each candidate: its mean pair score with its k most compatible query items.

    Args:
        compat: (N, C) float32 unit compatibility vectors of the candidates.
        slots: (N,) int64 slot index of each candidate.
        ref_compat: (M, C) float32 unit compatibility vectors of the catalog (the queries; may hold
            the candidates themselves: an item is never its own query, its slot never asks for itself).
        ref_slots: (M,) int64 their slot indices.
        masks2: (S, S, C) float32 squared pair masks, ``RecommenderHeads.mask_table()``.
        sources: for a slot index t, the slot indices whose items ask for t; a slot absent or with no
            source items gets r = 0 (never a candidate, nothing to discount).
        k: neighbours per source slot (fewer when a slot has fewer items).

    Returns:
        (N,) float32: ``Σ_s n_s · mean(top-k_{i ∈ s} <f_c ⊙ m_{ts}², f_i>) / Σ_s n_s``, n_s the number of
        items of source slot s.
    """
    compat = np.asarray(compat, dtype=np.float32)
    ref_compat = np.asarray(ref_compat, dtype=np.float32)
    slots = np.asarray(slots).reshape(-1)
    ref_slots = np.asarray(ref_slots).reshape(-1)
    assert compat.shape[0] == slots.shape[0] and ref_compat.shape[0] == ref_slots.shape[0]
    out = np.zeros(compat.shape[0], dtype=np.float32)
    for t in np.unique(slots):
        rows = np.flatnonzero(slots == t)
        total = np.zeros(rows.shape[0], dtype=np.float64)
        weight = 0
        for s in sources.get(int(t), ()):
            ref = ref_compat[ref_slots == s]  # (M_s, C)
            if ref.shape[0] == 0:
                continue
            kk = min(k, ref.shape[0])
            step = max(1, _CHUNK_SCORES // ref.shape[0])
            means = np.empty(rows.shape[0], dtype=np.float64)
            for start in range(0, rows.shape[0], step):
                q = compat[rows[start : start + step]] * masks2[t, s]  # (B, C)
                sc = q @ ref.T  # (B, M_s)
                top = np.partition(sc, sc.shape[1] - kk, axis=1)[:, -kk:]  # (B, kk)
                means[start : start + step] = top.mean(axis=1)
            total += ref.shape[0] * means
            weight += ref.shape[0]
        if weight:
            out[rows] = (total / weight).astype(np.float32)
    return out


def rerank(*, scores: np.ndarray, hub: np.ndarray, beta: float) -> np.ndarray:
    """Order of candidates by ``score − β·r(c)`` (β = 1/2: CSLS; β = 0: the plain order), best first.

    Args:
        scores: (P,) compatibility of each candidate with the query (the mean pair score).
        hub: (P,) ``r(c)`` of each candidate (:func:`hub_scores`).
        beta: the weight of the hub penalty, ≥ 0.

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
