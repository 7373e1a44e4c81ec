"""Complementary-item retrieval on the held-out outfits: complete-the-look as the site serves it.

For every held-out outfit and every item x of it, the rest of the outfit is the query and x's whole slot
the gallery: every catalog item of that slot, less the query items and their colour variants (the
serving leaves those out) and less x's own variants (they would be the same answer). Items rank by the
complete-the-look score, the summed pair score with the query items (``Scorer.items``; for the heads the
serving's ``<q_t, f_x>`` with ``q_t = Σ_i f_i ⊙ m_{s_i t}²``, ``ml.heads``). Metrics (:func:`complementary_metrics`):

* ``ctl_recall@10``, ``ctl_recall@50``: the share of queries whose x ranks within the top k;
* ``ctl_median_rank``: the median rank of x (1 = first; lower is better);
* ``audience@10``: the share of the top-10 picks whose audience group (``ml.audience``) fits the query
  items' (their most common group, unisex aside; unisex fits every group);
* ``slot_valid@10``: the share of the top-10 picks of an *unfiltered* ranking (the whole catalog, no
  slot filter) that lie in a slot the query still misses (``ml.slots.missing_slots``): does the score
  alone keep a second pair of trousers out of a look that has trousers?

* ``novel_recall@10``, ``novel_median_rank``: the same over the *novel* queries only, those whose answer
  no training outfit ever paired with a query item (``ml.protocols.known_partners`` of the training
  outfits): the memorisation control of the matched protocol (``novel_subset``) applied here, where a
  pair-memory scorer has nothing to recall and what ranks the answer is content.
* ``open_recall@10``, ``open_novel_recall@10``: Recall@10 over the *open* queries only, those whose
  answer's slot the query items leave open (``missing_slots``): the queries complete-the-look answers.
  The others ask for a second top next to a top, which the site never suggests.

Ties (coarse baselines score many items alike) are broken at random: a rank is the expected rank of x
among the items tied with it, a recall the expected share, and the items tied at the top-10 cut are
drawn with a seeded generator.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ml.audience import AUDIENCE_GROUPS, UNISEX, audience_fits
from ml.dataset import TrainData
from ml.protocols import PROTOCOL_SEED, known_partners, variant_groups
from ml.scorers import Scorer
from ml.slots import SLOT_INDEX, SLOTS, missing_slots

__all__ = ["CTL_METRICS", "ComplementarySet", "complementary_metrics", "complementary_set"]

#: The metrics of :func:`complementary_metrics`, in table order (``n_ctl`` counts the queries).
CTL_METRICS: tuple[str, ...] = (
    "ctl_recall@10",
    "ctl_recall@50",
    "ctl_median_rank",
    "audience@10",
    "slot_valid@10",
    "novel_recall@10",
    "novel_median_rank",
    "open_recall@10",
    "open_novel_recall@10",
)
_PICKS = 10
#: Queries scored together (a (B, N) float64 block: 256 x 21k products is 43 MB).
_BATCH = 256


@dataclass(frozen=True)
class ComplementarySet:
    """The queries of complementary-item retrieval, built once per dataset (:func:`complementary_set`).

    Attributes:
        queries: ``[(query items (K,), answer), ...]``: a held-out outfit less one item, and that item.
        open_slots: one (S,) bool per query: the slots the query items still miss (``missing_slots``).
        slots: (N,) int64 slot of every item.
        variant: (N,) int64 colour-variant group of every item (``ml.protocols.variant_groups``).
        audience: (N,) int64 group ids (``ml.audience.AUDIENCE_GROUPS``), or None without the attribute.
        novel: (Q,) bool per query: no training outfit holds the answer with any query item.
    """

    @property
    def open(self) -> np.ndarray:
        """(Q,) bool per query: the answer's slot is one the query items leave open."""
        return np.asarray(
            [bool(o[self.slots[t]]) for o, (_, t) in zip(self.open_slots, self.queries, strict=True)],
            dtype=bool,
        )

    queries: list[tuple[np.ndarray, int]]
    open_slots: list[np.ndarray]
    slots: np.ndarray
    variant: np.ndarray
    audience: np.ndarray | None
    novel: np.ndarray

    def galleries(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        """``(slot gallery (G,), unfiltered gallery (M,))`` int64 of query q: the answer's slot less the
        query items' and the answer's other variants (the answer is in it), and the whole catalog less the
        query items' variants."""
        given, target = self.queries[q]
        given_variants = self.variant[given]
        everything = np.flatnonzero(~np.isin(self.variant, given_variants))
        pool = everything[self.slots[everything] == self.slots[target]]
        keep = (self.variant[pool] != self.variant[target]) | (pool == target)
        return pool[keep], everything


def complementary_set(data: TrainData) -> ComplementarySet:
    """Every (held-out outfit less one item, that item) of ``data.test_outfits``.

    Raises:
        ValueError: ``data`` has no held-out outfits.
    """
    if not data.test_outfits:
        raise ValueError("data has no test_outfits: build the features file with a held-out split")
    slots = np.asarray(data.slots, dtype=np.int64)
    partners = known_partners(data.outfits, len(slots))  # pairs of the training outfits
    queries, open_slots, novel = [], [], []
    for o in data.test_outfits:
        o = np.asarray(o, dtype=np.int64)
        for pos, target in enumerate(o.tolist()):
            given = np.delete(o, pos)
            missing = [SLOT_INDEX[s] for s in missing_slots(SLOTS[int(s)] for s in slots[given])]
            open_slots.append(np.isin(np.arange(len(SLOTS)), missing))
            queries.append((given, int(target)))
            novel.append(not partners[target] & set(given.tolist()))
    audience = np.asarray(data.attrs["audience"], dtype=np.int64) if "audience" in data.attrs else None
    return ComplementarySet(
        queries, open_slots, slots, variant_groups(data), audience, np.asarray(novel, dtype=bool)
    )


def _top(scores: np.ndarray, items: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The k best items, those tied at the cut drawn at random: (min(k, G),) int64, in no order."""
    if len(scores) <= k:
        return items
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]  # the k-th highest score
    above = np.flatnonzero(scores > kth)
    tied = np.flatnonzero(scores == kth)
    return items[np.concatenate([above, rng.permutation(tied)[: k - len(above)]])]


def _query_group(groups: np.ndarray) -> str:
    """The query items' audience group: the most common one that is not unisex (else unisex)."""
    named = [AUDIENCE_GROUPS[int(g)] for g in groups if AUDIENCE_GROUPS[int(g)] != UNISEX]
    return Counter(named).most_common(1)[0][0] if named else UNISEX


def complementary_metrics(
    scorer: Scorer, cset: ComplementarySet, ks: tuple[int, ...] = (10, 50), seed: int = PROTOCOL_SEED
) -> dict[str, float]:
    """Complementary-item retrieval of one scorer (module docstring).

    Args:
        scorer: the row's :class:`~ml.scorers.Scorer` (``items(query, gallery)`` scores the gallery).
        cset: the queries (:func:`complementary_set`).
        ks: the recall cut-offs.
        seed: the tie-break draws of the top-10 picks (the same for every row).

    Returns:
        ``{"ctl_recall@k" for k in ks, "ctl_median_rank", "audience@10" (NaN without an audience
        attribute), "slot_valid@10", "novel_recall@10" (NaN unless 10 in ks), "novel_median_rank"
        (NaN without a novel query), "open_recall@10", "open_novel_recall@10" (NaN unless 10 in ks or
        without such a query), "n_ctl", "n_ctl_novel", "n_ctl_open": float}``.
    """
    rng = np.random.default_rng(seed)
    recalls = {k: [] for k in ks}
    ranks, fits, valid = [], [], []
    n = len(cset.slots)
    for start in range(0, len(cset.queries), _BATCH):
        block = cset.queries[start : start + _BATCH]
        scores = scorer.items_of_every([given for given, _ in block], n)  # (B, N)
        for b, (given, target) in enumerate(block):
            gallery, everything = cset.galleries(start + b)
            s_all = scores[b, everything]  # (M,)
            s = scores[b, gallery]  # (G,)
            s_x = scores[b, target]
            above = int((s > s_x).sum())
            tied = int((s == s_x).sum()) - 1  # others tied with the answer
            ranks.append(above + 1 + tied / 2)  # expected rank under a random tie-break
            for k in ks:
                recalls[k].append(min(max((k - above) / (tied + 1), 0.0), 1.0))
            picks = _top(s, gallery, _PICKS, rng)
            if cset.audience is not None:
                want = _query_group(cset.audience[given])
                fits.append(
                    np.mean([audience_fits(AUDIENCE_GROUPS[int(g)], want) for g in cset.audience[picks]])
                )
            anywhere = _top(s_all, everything, _PICKS, rng)
            valid.append(float(cset.open_slots[start + b][cset.slots[anywhere]].mean()))
    out = {f"ctl_recall@{k}": float(np.mean(v)) for k, v in recalls.items()}
    out["ctl_median_rank"] = float(np.median(ranks))
    out["audience@10"] = float(np.mean(fits)) if fits else math.nan
    out["slot_valid@10"] = float(np.mean(valid))
    novel = cset.novel
    out["novel_recall@10"] = (
        float(np.mean(np.asarray(recalls[10])[novel])) if 10 in recalls and novel.any() else math.nan
    )
    out["novel_median_rank"] = float(np.median(np.asarray(ranks)[novel])) if novel.any() else math.nan
    r10 = np.asarray(recalls[10]) if 10 in recalls else None
    is_open = cset.open
    for name, mask in (("open_recall@10", is_open), ("open_novel_recall@10", is_open & novel)):
        out[name] = float(np.mean(r10[mask])) if r10 is not None and mask.any() else math.nan
    out["n_ctl"] = float(len(cset.queries))
    out["n_ctl_novel"] = float(novel.sum())
    out["n_ctl_open"] = float(is_open.sum())
    return out
