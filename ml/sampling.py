"""Compatibility training pairs and negatives that teach content: plain NumPy, no Django.

Co-purchase baskets are not outfits: a shopper buys a men's shirt with women's leggings and a child's
trainers, and a bra with jeans. And a negative drawn at random is often a real partner of the anchor,
or a rarely bought item that the model learns to reject for its rarity alone. So:

* :func:`training_pairs`: (anchor, positive) pairs of one outfit, of two different outfit slots
  (``ml.slots.OUTFIT_SLOTS``: no underwear, nightwear, swimwear or socks) and of audiences that fit
  (``ml.audience.audience_fits``: never women's with men's, adults' with children's...);
* :class:`OutfitNegativeSampler`: negatives of the positive's slot with the nearest training-outfit
  count (popularity-matched), never the anchor, the positive or a known outfit partner of the anchor;
* :func:`audience_mix`: the audience pairs a set of pairs teaches, to measure the cleaning.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from ml.audience import AUDIENCE_GROUPS, audience_fits
from ml.slots import OUTFIT_SLOTS, SLOT_INDEX

#: Slot indices that make up a dressed look (``ml.slots.OUTFIT_SLOTS``).
OUTFIT_SLOT_IDS: frozenset[int] = frozenset(SLOT_INDEX[s] for s in OUTFIT_SLOTS)
#: (G, G) bool: may items of audience ids a and b form a training pair (``ml.audience.audience_fits``)?
AUDIENCE_FITS = np.array([[audience_fits(a, b) for b in AUDIENCE_GROUPS] for a in AUDIENCE_GROUPS])


def all_pairs(outfits: Sequence[np.ndarray]) -> np.ndarray:
    """Every ordered pair of distinct items within each outfit: (P, 2) int64."""
    pairs = [(a, p) for o in outfits for a in o for p in o if a != p]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def training_pairs(
    outfits: Sequence[np.ndarray], slots: np.ndarray, audiences: np.ndarray | None = None
) -> np.ndarray:
    """The (anchor, positive) pairs a run learns compatibility from: (P, 2) int64.

    Ordered pairs of items of one outfit that are of two different slots, both outfit slots
    (:data:`OUTFIT_SLOT_IDS`), and whose audiences fit (:data:`AUDIENCE_FITS`; every pair fits when
    ``audiences`` is None).

    Args:
        outfits: training outfits, each (K,) int64 item indices.
        slots: (N,) int64 slot indices.
        audiences: (N,) int64 indices into ``ml.audience.AUDIENCE_GROUPS``, or None.
    """
    pairs = all_pairs(outfits)
    if not len(pairs):
        return pairs
    a, p = pairs[:, 0], pairs[:, 1]
    outfit_slot = np.isin(slots, list(OUTFIT_SLOT_IDS))
    keep = (slots[a] != slots[p]) & outfit_slot[a] & outfit_slot[p]
    if audiences is not None:
        keep &= AUDIENCE_FITS[audiences[a], audiences[p]]
    return pairs[keep]


def audience_mix(pairs: np.ndarray, audiences: np.ndarray) -> Counter[tuple[str, str]]:
    """How many pairs join each (unordered) pair of audience groups: ``{("men", "women"): 812, ...}``."""
    ga = np.asarray(AUDIENCE_GROUPS)[audiences[pairs[:, 0]]]
    gp = np.asarray(AUDIENCE_GROUPS)[audiences[pairs[:, 1]]]
    return Counter(tuple(sorted(t)) for t in zip(ga.tolist(), gp.tolist(), strict=True))


def outfit_counts(outfits: Sequence[np.ndarray], n: int) -> np.ndarray:
    """(N,) int64: in how many of ``outfits`` each item appears (its popularity)."""
    flat = np.concatenate([np.unique(o) for o in outfits]) if outfits else np.zeros(0, np.int64)
    return np.bincount(flat, minlength=n).astype(np.int64)


def known_partners(outfits: Sequence[np.ndarray], n: int) -> list[np.ndarray]:
    """``partners[i]``: (K_i,) int64 sorted items that share an outfit with item ``i`` (never ``i``)."""
    pairs = all_pairs(outfits)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    pairs = np.unique(pairs[order], axis=0) if len(pairs) else pairs
    starts = np.searchsorted(pairs[:, 0], np.arange(n + 1))
    return [pairs[starts[i] : starts[i + 1], 1] for i in range(n)]


class OutfitNegativeSampler:
    """Candidate negatives for (anchor, positive) pairs: of the positive's slot, popularity-matched, and
    never a known partner.

    Items of each slot are ranked by their training-outfit count (ties in a seeded random order); the
    candidates of a positive are drawn from the ``window`` items of its slot nearest to it in that
    ranking (the window widens until enough remain), leaving out the anchor, the positive and every
    item that shares a training outfit with the anchor (:func:`known_partners`). A frequent positive
    thus meets frequent negatives and a rare one rare negatives: popularity alone cannot tell them apart.

    Args:
        slots: (N,) int64 slot indices.
        outfits: the training outfits (counts and known partners come from them).
        rng: the run's NumPy generator (seeded: the same run draws the same negatives).
        window: items of the slot around the positive's rank to draw from (at least 2·M is sensible).
    """

    def __init__(
        self, slots: np.ndarray, outfits: Sequence[np.ndarray], rng: np.random.Generator, window: int = 128
    ) -> None:
        n = len(slots)
        self.rng, self.window, self.slots = rng, window, slots
        self.counts = outfit_counts(outfits, n)
        self.partners = known_partners(outfits, n)
        tie = rng.random(n)
        self.by_slot: dict[int, np.ndarray] = {}  # slot -> (S,) items by (count, tie)
        self.rank = np.zeros(n, dtype=np.int64)  # position of each item in its slot's order
        for s in np.unique(slots):
            items = np.flatnonzero(slots == s)
            items = items[np.lexsort((tie[items], self.counts[items]))]
            self.by_slot[int(s)] = items
            self.rank[items] = np.arange(len(items))

    def allowed(self, anchor: int, positive: int, pool: np.ndarray) -> np.ndarray:
        """The items of ``pool`` that may be negatives of this pair: not the anchor, not the positive,
        not a known partner of the anchor."""
        bad = np.concatenate([self.partners[anchor], [anchor, positive]])
        return pool[~np.isin(pool, bad)]

    def has_negatives(self, pairs: np.ndarray) -> np.ndarray:
        """(P,) bool: does the (anchor, positive) pair have at least one allowed negative in the positive's
        slot? (The positive is itself a partner of the anchor.) Pairs without any cannot be trained on."""
        n, n_slots = len(self.slots), int(self.slots.max(initial=0)) + 1
        partner_in_slot = np.zeros((n, n_slots), dtype=np.int64)  # (N, S)
        for i, part in enumerate(self.partners):
            if len(part):
                partner_in_slot[i] = np.bincount(self.slots[part], minlength=n_slots)
        slot_size = np.bincount(self.slots, minlength=n_slots)
        a, s = pairs[:, 0], self.slots[pairs[:, 1]]
        return slot_size[s] - partner_in_slot[a, s] - (self.slots[a] == s) > 0

    def sample(self, anchors: np.ndarray, positives: np.ndarray, m: int) -> np.ndarray:
        """(B,) anchors and (B,) positives → (B, M) int64 candidate negatives.

        Each row holds items of the positive's slot from its popularity window, none of them the anchor,
        the positive or a known partner of the anchor (without repeats while the window, widened up to
        the whole slot, holds M allowed items).

        Raises:
            ValueError: a pair has no allowed negative at all (filter pairs with :meth:`has_negatives`).
        """
        out = np.empty((len(positives), m), dtype=np.int64)
        for row, (a, p) in enumerate(zip(anchors.tolist(), positives.tolist(), strict=True)):
            order = self.by_slot[int(self.slots[p])]
            r, half = int(self.rank[p]), self.window // 2
            while True:
                pool = self.allowed(a, p, order[max(0, r - half) : r + half + 1])
                if len(pool) >= m or 2 * half >= len(order):
                    break
                half *= 2
            if not len(pool):
                raise ValueError(
                    f"no negative for anchor {a} / positive {p}: every item of its slot is a partner"
                )
            out[row] = self.rng.choice(pool, m, replace=len(pool) < m)
        return out
