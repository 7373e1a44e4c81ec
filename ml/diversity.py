"""Diversity re-ranking for retrieval results: Maximal Marginal Relevance, and one item per group
(:func:`first_of_each`: a product's colour variants are alternatives of one product). No Django.

Carbonell & Goldstein (1998), "The use of MMR, diversity-based reranking for reordering documents and
producing summaries", SIGIR: pick items one at a time, each maximising

    MMR(d) = λ · sim(d, q) − (1 − λ) · max_{s ∈ S} sim(d, s)

over the candidates d not yet chosen, S the items chosen so far. λ = 1 is the plain relevance order,
λ = 0 maximal novelty. Here both similarities are inner products of unit vectors (cosine).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def first_of_each(items: Iterable[T], key: Callable[[T], Hashable]) -> list[T]:
    """The first item of each ``key`` value, in the given order (e.g. the best-ranked product of each
    variant group, with the key a product's group or, without one, its own id)."""
    seen: set[Hashable] = set()
    out = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def mmr(*, relevance: np.ndarray, vectors: np.ndarray, k: int, lambda_: float) -> list[int]:
    """Greedy MMR selection of k candidates.

    Args:
        relevance: (P,) float32 similarity of each candidate to the query (cosine, higher = better).
        vectors: (P, D) float32 unit vectors of the candidates (their pairwise inner product is the
            redundancy term).
        k: how many to choose (fewer when P < k).
        lambda_: trade-off in [0, 1]; 1 = relevance only, 0 = novelty only.

    Returns:
        Indices into the candidates, in selection order (the first is always the most relevant).

    Raises:
        ValueError: λ outside [0, 1], or relevance and vectors of different lengths.
    """
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"lambda must be in [0, 1] (got {lambda_})")
    rel = np.asarray(relevance, dtype=np.float64)  # (P,)
    vec = np.asarray(vectors, dtype=np.float64)  # (P, D)
    if rel.shape[0] != vec.shape[0]:
        raise ValueError(f"{rel.shape[0]} relevance scores but {vec.shape[0]} vectors")
    n = min(k, rel.shape[0])
    chosen: list[int] = []
    redundancy = np.full(rel.shape[0], -np.inf)  # (P,) max similarity to the chosen items so far
    available = np.ones(rel.shape[0], dtype=bool)
    for _ in range(n):
        red = np.where(np.isfinite(redundancy), redundancy, 0.0)  # nothing chosen yet: no penalty
        score = lambda_ * rel - (1.0 - lambda_) * red
        score[~available] = -np.inf
        best = int(np.argmax(score))
        chosen.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, vec @ vec[best])
    return chosen
