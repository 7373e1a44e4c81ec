"""How each row of the evaluation tables scores items: the learned heads and the non-learned baselines.

A :class:`Scorer` gives two views of one compatibility score:

* ``pair(a, b)``: (P,) item indices, (P,) item indices → (P,) pair scores; FITB and AUC average them
  (:mod:`ml.protocols`);
* ``items(given, candidates)``: the summed pair score of every candidate with all given items, the
  complete-the-look score of the serving side (:mod:`ml.retrieval`).

Rows:

* ``popularity``: an item's popularity, the number of training outfits it appears in; a pair scores
  ``pop[a] + pop[b]``, so a FITB candidate ranks by its own popularity and an outfit by its items' mean.
* ``attribute-match``: the number of equal attributes among :data:`ATTRIBUTE_KEYS` (section,
  department, colour, audience group) present in ``data.attrs``; a FITB candidate scores the mean over
  question items (the same ranking as the majority/overlap count).
* ``pair-memory``: how many training outfits hold both items (``summed``: the candidate's count with
  the given items): memorised pairs, what a collaborative model knows; scores 0 on every pair the
  matched protocol asks about (``ml.protocols.novel_subset``), so it sits at chance there.
* ``<model> + memory`` (:func:`memory_first`): complete-the-look as the site serves it: in each slot
  the few items training outfits paired most often with the given ones first, then the model's order;
  its pair scores (both protocols) are the model's.
* ``co-occurrence``: a category prior ``log P(type_b | type_a)`` from the training outfits
  (:func:`cooccurrence_log_prob`); no features.
* ``attribute-pmi``: attribute co-occurrence, ``Σ_k PMI_k(v_k[a], v_k[b])`` over :data:`ATTRIBUTE_KEYS`
  with each PMI table counted on the training outfits (:func:`attribute_pmi_scorer`); no features. It
  learns from the outfits, so it is the reference a model must beat to show it sees more than
  attributes.
* heads (zero-shot or fine-tuned, :func:`heads_scorer`): the type-aware pair score
  ``<f_a ⊙ m_ab², f_b>`` of :class:`ml.heads.RecommenderHeads`; ``items`` is the serving's query
  ``q_t = Σ_i f_i ⊙ m_{s_i t}²`` dotted with each candidate (``RecommenderHeads.slot_query``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse

from ml.dataset import TrainData
from ml.heads import RecommenderHeads
from ml.protocols import PairFn, item_popularity
from ml.slots import SLOT_INDEX, SLOTS, missing_slots

__all__ = [
    "ATTRIBUTE_KEYS",
    "ATTRIBUTE_PMI",
    "BASELINES",
    "Scorer",
    "attribute_pmi",
    "attribute_pmi_scorer",
    "attribute_scorer",
    "baseline_scorers",
    "cooccurrence_log_prob",
    "cooccurrence_scorer",
    "heads_scorer",
    "memory_first",
    "outfit_pair_counts",
    "pair_memory_scorer",
    "popularity_scorer",
]

POPULARITY, ATTRIBUTE_MATCH, COOCCURRENCE = "popularity", "attribute-match", "co-occurrence"
PAIR_MEMORY, ATTRIBUTE_PMI = "pair-memory", "attribute-pmi"
#: Row names of the non-learned baselines, in table order.
BASELINES: tuple[str, ...] = (POPULARITY, ATTRIBUTE_MATCH, PAIR_MEMORY, COOCCURRENCE, ATTRIBUTE_PMI)
#: ``TrainData.attrs`` keys the attribute-match baseline compares (missing keys are skipped).
ATTRIBUTE_KEYS: tuple[str, ...] = ("section", "department", "colour", "audience")

_CHUNK_PAIRS = 65536  # item pairs per heads.pair_score call


@dataclass(frozen=True)
class Scorer:
    """A pair score, and the summed score of candidates with given items.

    Attributes:
        pair: ``pair(a (P,), b (P,)) → (P,)`` float64 pair scores.
        summed: optional fast ``summed(given (K,), candidates (G,)) → (G,)`` float64; without it
            :meth:`items` sums ``pair`` over the given items.
        every: optional batched form, ``every([given (K_b,) for b in B]) → (B, N)`` float64: the summed
            score of every item of the catalog for each given set (:meth:`items_of_every`).
    """

    pair: PairFn
    summed: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    every: Callable[[Sequence[np.ndarray]], np.ndarray] | None = None

    def items(self, given: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(G,) float64: ``Σ_i pair(given_i, c)`` for every candidate c."""
        if self.summed is not None:
            return self.summed(given, candidates)
        total = np.zeros(len(candidates), dtype=np.float64)
        for g in given:
            total += self.pair(np.full(len(candidates), int(g), dtype=np.int64), candidates)
        return total

    def items_of_every(self, givens: Sequence[np.ndarray], n: int) -> np.ndarray:
        """(B, N) float64: :meth:`items` of every one of the N catalog items, for each given set (one
        matrix product per slot where the scorer has ``every``, else one :meth:`items` call per set)."""
        if not givens:
            return np.zeros((0, n))
        if self.every is not None:
            return self.every(givens)
        everything = np.arange(n, dtype=np.int64)
        return np.stack([self.items(g, everything) for g in givens])


# -----------------------------------------------------------------------------
# baselines


def popularity_scorer(data: TrainData) -> Scorer:
    """Popularity: ``pop[a] + pop[b]``, pop = number of training outfits (``data.outfits``) an item is in."""
    pop = item_popularity(data.outfits, len(data.types)).astype(np.float64)  # (N,)

    def every(givens: Sequence[np.ndarray]) -> np.ndarray:  # Σ_i pop[g_i] + K·pop[c]
        return np.stack([pop[np.asarray(g)].sum() + len(g) * pop for g in givens])

    return Scorer(lambda a, b: pop[a] + pop[b], every=every)


def attribute_scorer(data: TrainData) -> Scorer | None:
    """Attribute match: the number of equal :data:`ATTRIBUTE_KEYS`; None when ``data.attrs`` has none."""
    attrs = [np.asarray(data.attrs[k]) for k in ATTRIBUTE_KEYS if k in data.attrs]
    if not attrs:
        return None

    def every(givens: Sequence[np.ndarray]) -> np.ndarray:
        # Σ_i Σ_attr [v[c] == v[g_i]] = Σ_attr (how many given items share c's value)
        out = np.zeros((len(givens), len(attrs[0])))
        for v in attrs:
            for b, g in enumerate(givens):
                values, counts = np.unique(v[np.asarray(g)], return_counts=True)
                hit = np.searchsorted(values, v).clip(0, len(values) - 1)
                out[b] += np.where(values[hit] == v, counts[hit], 0)
        return out

    return Scorer(lambda a, b: sum((v[a] == v[b]).astype(np.float64) for v in attrs), every=every)


def pair_memory_scorer(data: TrainData) -> Scorer:
    """Pair memory: the number of training outfits (``data.outfits``) that hold both items, (P,) float64
    (a sparse (N, N) count matrix; ``summed`` adds the given items' rows)."""
    n = len(data.types)
    rows, cols = [], []
    for o in data.outfits:
        items = np.unique(np.asarray(o, dtype=np.int64))
        i, j = np.meshgrid(items, items, indexing="ij")
        rows.append(i[i != j])
        cols.append(j[i != j])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    counts = sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(n, n))  # duplicates summed

    def pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(counts[np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)]).ravel()

    def every(givens: Sequence[np.ndarray]) -> np.ndarray:
        # one sparse product: (B, N) given-item indicator @ (N, N) counts; a repeated item counts once
        rows = np.concatenate([np.full(len(np.unique(g)), b) for b, g in enumerate(givens)] or [[]])
        cols = np.concatenate([np.unique(np.asarray(g, dtype=np.int64)) for g in givens] or [[]])
        pick = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(givens), n))
        return (pick @ counts).toarray()

    def summed(given: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return every([given])[0][candidates]

    return Scorer(pair, summed, every)


#: A remembered pick's lift in :func:`memory_first`: above any summed model score (a pair score is a
#: cosine-like value in [-1, 1] and a query holds at most a few dozen items).
MEMORY_WEIGHT = 1e4


def memory_first(
    model: Scorer, memory: Scorer, slots: np.ndarray, picks: int, variant: np.ndarray | None = None
) -> Scorer:
    """Complete-the-look as the site serves it with ``LOOKS_MEMORY_PICKS = picks``: in each slot the
    given items still miss (``ml.slots.missing_slots``), the ``picks`` items the training outfits paired
    most often with the given ones (the model's score breaking ties; never a given item or a colour
    variant of one; one item per variant group) first, then every other item in the model's order.

    Args:
        model: the learned row's scorer (needs ``every``).
        memory: :func:`pair_memory_scorer` of the training outfits (needs ``every``).
        slots: (N,) int64 slot index (``ml.slots.SLOTS``) of every item.
        picks: remembered items lifted per slot (0: the model alone).
        variant: (N,) int64 colour-variant group of every item (default: every item its own group).

    Returns:
        A :class:`Scorer` whose ``pair`` is the model's (an outfit's score stays the model's; the
        protocols' rows equal the model's) and whose ``items`` / ``every`` rank as described.

    Raises:
        ValueError: ``model`` or ``memory`` has no batched ``every``, or ``picks`` < 0.
    """
    if model.every is None or memory.every is None:
        raise ValueError("memory_first needs scorers with a batched `every`")
    if picks < 0:
        raise ValueError(f"picks must be >= 0 (got {picks})")
    slots = np.asarray(slots, dtype=np.int64)
    variant = np.arange(len(slots)) if variant is None else np.asarray(variant, dtype=np.int64)

    def lift(given: np.ndarray, counts: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The items to lift for one given set, best first: (≤ picks · slots,) int64."""
        given = np.asarray(given, dtype=np.int64)
        open_slots = [SLOT_INDEX[x] for x in missing_slots(SLOTS[int(t)] for t in slots[given])]
        known = np.flatnonzero(counts > 0)
        known = known[~np.isin(variant[known], variant[given]) & np.isin(slots[known], open_slots)]
        order = known[np.lexsort((-scores[known], -counts[known]))]  # by count, then the model
        out, taken, seen = [], {}, set()
        for item in order.tolist():
            s = int(slots[item])
            if taken.get(s, 0) < picks and int(variant[item]) not in seen:
                seen.add(int(variant[item]))
                taken[s] = taken.get(s, 0) + 1
                out.append(item)
        return np.asarray(out, dtype=np.int64)

    def every(givens: Sequence[np.ndarray]) -> np.ndarray:
        scores = model.every(givens)  # (B, N)
        if picks == 0:
            return scores
        counts = memory.every(givens)  # (B, N) times paired in training outfits
        lifted = scores.copy()
        for b, given in enumerate(givens):
            top = lift(given, counts[b], scores[b])
            lifted[b, top] += MEMORY_WEIGHT * (1 + counts[b, top])
        return lifted

    def summed(given: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return every([given])[0][candidates]

    return Scorer(model.pair, summed, every)


def outfit_pair_counts(outfits: Sequence[np.ndarray], labels: np.ndarray, n_labels: int) -> np.ndarray:
    """(L, L) float64 counts of the labels of every ordered pair of distinct items of each outfit (each
    unordered pair once in each direction, so the table is symmetric).

    Args:
        outfits: training outfits, each (K,) int64 item indices.
        labels: (N,) int64 label of every item, in ``[0, n_labels)``.
        n_labels: L.
    """
    counts = np.zeros((n_labels, n_labels), dtype=np.float64)  # (L, L)
    for o in outfits:
        t = labels[np.asarray(o)]  # (K,)
        i, j = np.meshgrid(np.arange(len(t)), np.arange(len(t)), indexing="ij")
        keep = i != j
        np.add.at(counts, (t[i[keep]], t[j[keep]]), 1.0)
    return counts


def cooccurrence_log_prob(outfits: Sequence[np.ndarray], type_index: np.ndarray, n_types: int) -> np.ndarray:
    """Category co-occurrence prior ``log P(type_b | type_a)`` with add-one smoothing.

    Args:
        outfits: training outfits, each (K,) int64 item indices.
        type_index: (N,) int64 contiguous type index in ``[0, n_types)`` of every item.
        n_types: T, the number of product types (the smoothing vocabulary).

    Returns:
        (T, T) float64 ``log((c_ab + 1) / (Σ_b c_ab + T))``, where ``c_ab`` counts every unordered pair
        of distinct outfit items once in each direction (symmetric counts).
    """
    counts = outfit_pair_counts(outfits, type_index, n_types)  # (T, T)
    return np.log((counts + 1.0) / (counts.sum(1, keepdims=True) + n_types))


def cooccurrence_scorer(data: TrainData) -> Scorer:
    """Co-occurrence: ``log P(type_b | type_a)`` estimated on ``data.outfits`` (:func:`cooccurrence_log_prob`).
    It cannot tell apart items of one product type."""
    _, type_index = np.unique(data.types, return_inverse=True)  # (N,) contiguous type ids
    type_index = type_index.reshape(-1).astype(np.int64)
    logp = cooccurrence_log_prob(data.outfits, type_index, int(type_index.max()) + 1)  # (T, T)

    def every(givens: Sequence[np.ndarray]) -> np.ndarray:  # Σ_i logp[t(g_i), t(c)]
        rows = np.stack([logp[type_index[np.asarray(g)]].sum(0) for g in givens])  # (B, T)
        return rows[:, type_index]

    return Scorer(lambda a, b: logp[type_index[a], type_index[b]], every=every)


def attribute_pmi(outfits: Sequence[np.ndarray], values: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Pointwise mutual information of attribute values over training outfit pairs, add-α smoothed.

    Args:
        outfits: training outfits, each (K,) int64 item indices.
        values: (N,) int64 contiguous attribute value of every item, in ``[0, V)``.
        alpha: pseudo-count added to every (value, value) cell.

    Returns:
        (V, V) float64 ``log p(u, v) - log p(u) - log p(v)``, with ``p(u, v)`` the smoothed share of
        ordered pairs of distinct outfit items whose values are (u, v) and ``p(u)`` its marginal
        (Church & Hanks 1990).
    """
    v_n = int(values.max()) + 1 if len(values) else 1
    counts = outfit_pair_counts(outfits, values, v_n) + alpha  # (V, V)
    p = counts / counts.sum()
    marg = p.sum(1)  # (V,) symmetric counts: rows and columns agree
    return np.log(p) - np.log(marg)[:, None] - np.log(marg)[None, :]


def attribute_pmi_scorer(data: TrainData) -> Scorer | None:
    """Attribute co-occurrence: ``Σ_k PMI_k(v_k[a], v_k[b])`` over :data:`ATTRIBUTE_KEYS`, each PMI table
    learned from the training outfits (:func:`attribute_pmi`): which departments, sections, colours and
    audiences are bought or styled together. None when ``data.attrs`` has none of the keys."""
    tables = []
    for k in ATTRIBUTE_KEYS:
        if k in data.attrs:
            _, v = np.unique(np.asarray(data.attrs[k]), return_inverse=True)
            v = v.reshape(-1).astype(np.int64)
            tables.append((v, attribute_pmi(data.outfits, v)))
    if not tables:
        return None

    def every(givens: Sequence[np.ndarray]) -> np.ndarray:  # Σ_k Σ_i pmi_k[v(g_i), v(c)]
        return sum(np.stack([pmi[v[np.asarray(g)]].sum(0) for g in givens])[:, v] for v, pmi in tables)

    return Scorer(lambda a, b: sum(pmi[v[a], v[b]] for v, pmi in tables), every=every)


def baseline_scorers(data: TrainData) -> dict[str, Scorer]:
    """The baselines of :data:`BASELINES` that ``data`` supports, in table order."""
    out = {POPULARITY: popularity_scorer(data)}
    attr = attribute_scorer(data)
    if attr is not None:
        out[ATTRIBUTE_MATCH] = attr
    out[PAIR_MEMORY] = pair_memory_scorer(data)
    out[COOCCURRENCE] = cooccurrence_scorer(data)
    pmi = attribute_pmi_scorer(data)
    if pmi is not None:
        out[ATTRIBUTE_PMI] = pmi
    return out


# -----------------------------------------------------------------------------
# learned heads


@torch.no_grad()
def heads_scorer(heads: RecommenderHeads, image: np.ndarray, text: np.ndarray, slots: np.ndarray) -> Scorer:
    """The type-aware compatibility score of ``heads`` on tower features.

    Args:
        heads: trained or zero-shot heads (eval mode is set).
        image, text: (N, E) float32 tower outputs of every item (the towers the heads were trained with).
        slots: (N,) int64 slot indices.
    """
    heads.eval()
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))  # (N, E)
    txt = torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32))  # (N, E)
    compat = heads.compat(img, txt)  # (N, C) unit norm
    slot_t = torch.from_numpy(np.asarray(slots, dtype=np.int64))  # (N,)
    f = compat.double().numpy()  # (N, C)
    m2 = heads.mask_table().double().numpy()  # (S, S, C) squared pair masks, symmetric in the slots
    item_slots = np.asarray(slots, dtype=np.int64)

    @torch.no_grad()
    def pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(a), _CHUNK_PAIRS):
            ai = torch.from_numpy(a[start : start + _CHUNK_PAIRS])
            bi = torch.from_numpy(b[start : start + _CHUNK_PAIRS])
            parts.append(heads.pair_score(compat[ai], compat[bi], slot_t[ai], slot_t[bi]).double().numpy())
        return np.concatenate(parts) if parts else np.zeros(0)

    order = np.argsort(item_slots, kind="stable")  # items grouped by slot
    f_by_slot = f[order]  # (N, C)
    bounds = np.searchsorted(item_slots[order], np.arange(m2.shape[0] + 1))  # (S + 1,)

    def every(givens: Sequence[np.ndarray]) -> np.ndarray:
        # q[b, s] = Σ_i f_i ⊙ m²[s_i, s]: the serving's slot query of given set b for every slot s
        q = np.stack([np.einsum("kc,ksc->sc", f[g], m2[item_slots[g]]) for g in givens])  # (B, S, C)
        out = np.empty((len(givens), len(f)))  # (B, N) every item against its own slot's query
        for s in range(len(bounds) - 1):
            out[:, order[bounds[s] : bounds[s + 1]]] = q[:, s, :] @ f_by_slot[bounds[s] : bounds[s + 1]].T
        return out

    def summed(given: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return every([given])[0][candidates]

    return Scorer(pair, summed, every)
