"""Held-out evaluation protocols: the FITB questions and negative outfits every model is scored on.

Both protocols are built from the held-out outfits of a :class:`~ml.dataset.TrainData`
(``data.test_outfits``, never trained on) and are deterministic for a seed (:data:`PROTOCOL_SEED` by
default, whatever seed a model was trained with), so every row of a table and every model version
answers the same questions.

* **Popularity-matched protocol** (:func:`matched_protocol`, the headline). In the H&M sample 60% of
  the articles are in no basket, so wrong candidates and negative items drawn from the whole catalog
  are mostly items no outfit ever held, while answers and positive items always come from outfits:
  "how many training outfits hold this item" then solves the task (FITB 0.77 / AUC 0.98 under the random
  protocol, ahead of the fine-tuned model). Here every wrong FITB candidate (3 per question) and every
  item of a negative outfit is drawn like the item it stands for: the same product type (its slot when
  the type has too few items) of the same catalog (``attrs["catalog"]`` when a file holds several: an
  H&M answer among MANGO candidates is told apart by its shop, not its fit), never the item's colour
  variant (same ``attrs["variant"]``), never an
  item of the outfit and never a *known partner* of the question items (an item that shares any
  outfit, of any split, with one of them); and by *popularity* (the number of training outfits it
  appears in) on a side drawn at random: the answer's popularity rank among the 4 candidates is
  uniform (k of the 3 wrong ones are the nearest at least as popular, the others the nearest at most as
  popular), a negative item as likely at least as popular as at most; nearest means the nearest count,
  then the nearest number of outfits of any split, then at random (seeded). A popularity scorer is at
  chance on it (FITB 1/4, AUC 1/2). And no pair asked about was ever seen together in a training
  outfit: a FITB answer is never a training partner of a question item, and a positive outfit keeps only
  items no training outfit paired with an item kept before them (:func:`novel_subset`). Stylists and
  shoppers reuse items, so without this a pair-memory scorer ("how many training outfits hold both")
  solves the task too (MANGO: FITB 0.66 / AUC 0.91 with the known-partner negatives). What is left to
  learn is compatibility of pairs the model has not seen. Items that cannot be matched
  on both sides (the most popular of their type and slot once partners are left out) are not blanked
  and leave a positive outfit with their replacement, so that which questions are kept never depends on
  the side drawn.
* **Random protocol** (:func:`random_protocol`, the earlier one, kept beside it for comparison): wrong
  FITB candidates of the answer's product type from the whole catalog (:func:`ml.dataset.fitb_questions`,
  the Polyvore Outfits convention of Vasileva et al., ECCV 2018) and negatives with every item replaced by
  a random held-out product of its slot.

Scores: :func:`fitb_scores` (a candidate's mean pair score with the question items),
:func:`outfit_scores` (an outfit's mean pair score) and :func:`protocol_metrics` (FITB accuracy with ties
split, compatibility ROC AUC; :mod:`ml.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ml.dataset import TrainData, fitb_questions
from ml.metrics import compatibility_auc, fitb_accuracy

__all__ = [
    "MATCHED",
    "N_CANDIDATES",
    "PROTOCOL_SEED",
    "RANDOM",
    "PairFn",
    "Protocol",
    "fitb_scores",
    "item_popularity",
    "known_partners",
    "matched_protocol",
    "novel_subset",
    "outfit_scores",
    "protocol_metrics",
    "random_protocol",
    "validation_questions",
    "variant_groups",
]

#: The seed of every protocol: fixed, so a retrained model answers the same questions.
PROTOCOL_SEED = 0
#: Candidates per FITB question (the answer and 3 wrong ones).
N_CANDIDATES = 4
MATCHED, RANDOM = "matched", "random"

#: ``pair_fn(a, b)``: (P,) int64 item indices, (P,) int64 item indices → (P,) float64 pair scores.
PairFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Protocol:
    """The questions and outfits of one protocol.

    Attributes:
        name: :data:`MATCHED` or :data:`RANDOM`.
        questions: FITB questions ``[(question_items (K,), candidates (C,)), ...]``, int64, answer at 0.
        positives: held-out outfits, each (K,) int64.
        negatives: one negative outfit per positive (same length, position by position), each (K,) int64.
    """

    name: str
    questions: list[tuple[np.ndarray, np.ndarray]]
    positives: list[np.ndarray]
    negatives: list[np.ndarray]


# -----------------------------------------------------------------------------
# what the matching reads


def item_popularity(outfits: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """(N,) int64: in how many of ``outfits`` each item appears (once per outfit)."""
    flat = [np.unique(o) for o in outfits]
    counts = np.bincount(np.concatenate(flat), minlength=n_items) if flat else np.zeros(n_items)
    return counts.astype(np.int64)


def known_partners(outfits: Sequence[np.ndarray], n_items: int) -> list[set[int]]:
    """``partners[i]``: every item that shares one of ``outfits`` with item i (i itself left out)."""
    partners: list[set[int]] = [set() for _ in range(n_items)]
    for o in outfits:
        items = [int(i) for i in o]
        for i in items:
            partners[i].update(items)
    for i, p in enumerate(partners):
        p.discard(i)
    return partners


def novel_subset(outfit: np.ndarray, train_partners: list[set[int]]) -> list[int]:
    """The items of an outfit, in order, less each item that a training outfit already paired with an
    item kept before it: no pair of the result was ever seen together in training (a pair-memory
    scorer, "how many training outfits hold both", then scores every kept pair 0)."""
    kept: list[int] = []
    for item in (int(i) for i in outfit):
        if not (train_partners[item] & set(kept)):
            kept.append(item)
    return kept


def variant_groups(data: TrainData) -> np.ndarray:
    """(N,) int64 colour-variant group of every item: ``data.attrs["variant"]``, else each item its own."""
    if "variant" in data.attrs:
        return np.asarray(data.attrs["variant"], dtype=np.int64)
    return np.arange(len(data.types), dtype=np.int64)


class _Matcher:
    """Draws items like a given one: same type (else slot), nearest popularity, never banned items, and
    of the same catalog when ``data.attrs`` has ``catalog`` (a file of several catalogs: otherwise the
    candidate from the other shop's photos and words is a giveaway)."""

    def __init__(self, data: TrainData, rng: np.random.Generator) -> None:
        n = len(data.types)
        every = [*data.outfits, *data.val_outfits, *data.test_outfits]
        self.pop = item_popularity(data.outfits, n)  # (N,) training outfits: the popularity
        self.seen = item_popularity(every, n)  # (N,) outfits of any split: the second key
        self.partners = known_partners(every, n)
        self.train_partners = known_partners(data.outfits, n)  # pairs a model could have memorised
        self.variant = variant_groups(data)
        # several catalogs in one file (the site's H&M and MANGO): draw within the item's own catalog
        self.catalog = np.asarray(data.attrs["catalog"]) if "catalog" in data.attrs else None
        self.types, self.slots, self.rng = data.types, data.slots, rng
        self.by_type = {int(t): np.flatnonzero(data.types == t) for t in np.unique(data.types)}
        self.by_slot = {int(s): np.flatnonzero(data.slots == s) for s in np.unique(data.slots)}
        self.banned = np.zeros(n, dtype=bool)  # scratch mask, cleared after each draw

    def draw(
        self,
        like: int,
        n_above: int,
        n_below: int,
        banned: set[int],
        pools: tuple[str, ...] = ("type", "slot"),
    ) -> np.ndarray | None:
        """``n_above`` items at least as popular as ``like`` and ``n_below`` at most as popular, each the
        nearest on its side (then the nearest count of outfits of any split, then at random), none in
        ``banned`` nor of ``like``'s variant: (n_above + n_below,) int64.

        The pool is ``like``'s product type, else its slot (``pools`` says which to try): the first that
        could serve *any* split of ``n_above + n_below`` between the sides; None when none could.
        (Deciding on one split only would keep the very popular items exactly when they are asked to be
        above the rest.)
        """
        idx = np.fromiter(banned, dtype=np.int64, count=len(banned))
        self.banned[idx] = True
        try:
            n = n_above + n_below
            same_slot = self.by_slot[int(self.slots[like])]
            if self.catalog is not None:
                same_slot = same_slot[self.catalog[same_slot] == self.catalog[like]]
            by = {  # a product type may span slots (a "Trousers" that is a jumpsuit): the slot always holds
                "type": np.intersect1d(self.by_type[int(self.types[like])], same_slot),
                "slot": same_slot,
            }
            for pool in (by[name] for name in pools):
                pool = pool[~self.banned[pool] & (self.variant[pool] != self.variant[like])]
                above = pool[self.pop[pool] >= self.pop[like]]
                below = pool[self.pop[pool] <= self.pop[like]]
                if len(above) >= n and len(below) >= n:
                    up = self._nearest(like, above, n_above)
                    down = self._nearest(like, below[~np.isin(below, up)], n_below)
                    return np.concatenate([up, down]).astype(np.int64)
            return None
        finally:
            self.banned[idx] = False

    def _nearest(self, like: int, side: np.ndarray, m: int) -> np.ndarray:
        """The m items of one side nearest to ``like`` in popularity, then in outfits of any split."""
        near_pop = np.abs(self.pop[side] - self.pop[like])
        near_seen = np.abs(self.seen[side] - self.seen[like])
        return side[np.lexsort((self.rng.random(len(side)), near_seen, near_pop))][:m]  # last key first

    def partners_of(self, items: Sequence[int]) -> set[int]:
        out: set[int] = set()
        for i in items:
            out |= self.partners[int(i)]
        return out


# -----------------------------------------------------------------------------
# the two protocols


def matched_protocol(
    data: TrainData, seed: int = PROTOCOL_SEED, n_candidates: int = N_CANDIDATES
) -> Protocol:
    """The popularity-matched protocol (module docstring) on ``data.test_outfits``.

    FITB: per held-out outfit, the answer's popularity rank k is drawn, then the first item (in a seeded
    order) that no training outfit paired with a question item and whose ``n_candidates - 1`` wrong
    candidates can be drawn within its product type is blanked, else the first within its slot; an
    outfit with no such item has no question. AUC: each held-out outfit's :func:`novel_subset` against
    a negative outfit whose item at each position is drawn like the positive's item there (a side drawn per item), and is no known partner of the positive's items nor of the negative
    items drawn before it; an item with nothing to draw on both sides leaves the positive too, and an
    outfit left with fewer than 2 items is dropped.

    Raises:
        ValueError: ``data`` has no held-out outfits.
    """
    if not data.test_outfits:
        raise ValueError("data has no test_outfits: build the features file with a held-out split")
    rng = np.random.default_rng(seed)
    match = _Matcher(data, rng)
    questions = []
    for o in data.test_outfits:
        o = np.asarray(o, dtype=np.int64)
        n_above = int(rng.integers(n_candidates))  # the answer's popularity rank among the candidates
        order = rng.permutation(o).tolist()
        # the first item that can be matched within its type is blanked, else within its slot; never
        # one a training outfit already paired with a question item (memorised, not inferred)
        for pools, ans in ((pools, ans) for pools in (("type",), ("slot",)) for ans in order):
            question = o[o != ans]
            if match.train_partners[ans] & set(question.tolist()):
                continue
            banned = {*o.tolist(), *match.partners_of(question)}
            wrong = match.draw(ans, n_above, n_candidates - 1 - n_above, banned, pools)
            if wrong is not None:
                questions.append((question, np.concatenate([[ans], wrong]).astype(np.int64)))
                break
    positives, negatives = [], []
    for o in data.test_outfits:
        o = np.asarray(o, dtype=np.int64)
        banned = {*o.tolist(), *match.partners_of(o)}
        pos, neg = [], []
        for item in novel_subset(o, match.train_partners):
            above = int(rng.integers(2))  # as likely more popular as less
            got = match.draw(item, above, 1 - above, banned)
            if got is not None:  # else the item leaves the positive too
                pos.append(item)
                neg.append(int(got[0]))
                banned |= {neg[-1], *match.partners[neg[-1]]}
        if len(pos) >= 2:
            positives.append(np.asarray(pos, dtype=np.int64))
            negatives.append(np.asarray(neg, dtype=np.int64))
    return Protocol(MATCHED, questions, positives, negatives)


def validation_questions(data: TrainData, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """FITB questions of the validation outfits on the popularity-matched protocol
    (:func:`ml.protocols.matched_protocol` with the validation outfits in the test outfits' place), so
    early stopping keeps the epoch that is best at compatibility, not at the popularity shortcut the
    random protocol rewards. ``[(question items (K,), candidates (4,))]`` int64, answer first; empty
    without validation outfits."""
    if not data.val_outfits:
        return []
    swapped = replace(data, test_outfits=data.val_outfits, val_outfits=data.test_outfits)
    return matched_protocol(swapped, seed).questions


def random_protocol(data: TrainData, seed: int = PROTOCOL_SEED) -> Protocol:
    """The earlier protocol: FITB candidates of the answer's type from the whole catalog
    (:func:`ml.dataset.fitb_questions`), negatives with every item replaced by a random other held-out
    product of its slot (of the whole catalog when no other held-out product has that slot; an item alone
    in its slot stays). Held-out products: ``data.heldout_items``, else the items of the held-out outfits.
    """
    if not data.test_outfits:
        raise ValueError("data has no test_outfits: build the features file with a held-out split")
    if len(data.heldout_items):
        pool = np.unique(np.asarray(data.heldout_items, dtype=np.int64))
    else:
        pool = np.unique(np.concatenate(data.test_outfits)).astype(np.int64)
    questions = fitb_questions(data.test_outfits, data.slots, data.types, seed)
    rng = np.random.default_rng(seed + 1)
    slots = data.slots
    in_pool = {int(s): pool[slots[pool] == s] for s in np.unique(slots)}
    in_all = {int(s): np.flatnonzero(slots == s) for s in np.unique(slots)}
    negatives = []
    for o in data.test_outfits:
        neg = np.array(o, dtype=np.int64)  # (K,)
        for pos, item in enumerate(o):
            s = int(slots[item])
            cands = in_pool[s][in_pool[s] != item]
            if len(cands) == 0:
                cands = in_all[s][in_all[s] != item]
            if len(cands):
                neg[pos] = rng.choice(cands)
        negatives.append(neg)
    return Protocol(RANDOM, questions, [np.asarray(o, dtype=np.int64) for o in data.test_outfits], negatives)


# -----------------------------------------------------------------------------
# scoring a protocol


def fitb_scores(pair_fn: PairFn, questions: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(Q, C) float64: each candidate's mean pair score with its question's items (``pair_fn(item, cand)``)."""
    a = np.concatenate([np.repeat(q, len(c)) for q, c in questions])  # (P,) question items
    b = np.concatenate([np.tile(c, len(q)) for q, c in questions])  # (P,) candidates
    s = pair_fn(a.astype(np.int64), b.astype(np.int64))  # (P,)
    rows, off = [], 0
    for q, c in questions:
        n = len(q) * len(c)
        rows.append(s[off : off + n].reshape(len(q), len(c)).mean(0))  # (C,)
        off += n
    return np.stack(rows)


def outfit_scores(pair_fn: PairFn, outfits: Sequence[np.ndarray]) -> np.ndarray:
    """(O,) float64: each outfit's mean pair score over all ordered pairs of distinct positions.

    For a symmetric ``pair_fn`` this is the mean over unordered pairs; for a directional one (the
    co-occurrence prior) both directions count.
    """
    a_parts, b_parts, owner = [], [], []
    for k, o in enumerate(outfits):
        i, j = np.meshgrid(np.arange(len(o)), np.arange(len(o)), indexing="ij")
        keep = i != j
        a_parts.append(np.asarray(o)[i[keep]])
        b_parts.append(np.asarray(o)[j[keep]])
        owner.append(np.full(int(keep.sum()), k))
    own = np.concatenate(owner)
    s = pair_fn(np.concatenate(a_parts).astype(np.int64), np.concatenate(b_parts).astype(np.int64))
    return np.bincount(own, weights=s, minlength=len(outfits)) / np.bincount(own, minlength=len(outfits))


def protocol_metrics(pair_fn: PairFn, protocol: Protocol) -> dict[str, float]:
    """``{"fitb", "auc", "n_fitb", "n_outfits"}`` of one pair function on one protocol.

    FITB accuracy splits ties (a tie among t candidates with the answer counts 1/t: the expected
    accuracy of a random tie-break, so a constant scorer gets 1/C); the AUC counts ties 1/2. NaN when
    the protocol has no question / no outfit.
    """
    out: dict[str, float] = {"fitb": math.nan, "auc": math.nan}
    if protocol.questions:
        scores = fitb_scores(pair_fn, protocol.questions)  # (Q, C)
        out["fitb"] = fitb_accuracy(scores, np.zeros(len(scores), dtype=np.int64), ties="split")
    if protocol.positives:
        pos = outfit_scores(pair_fn, protocol.positives)  # (O,)
        neg = outfit_scores(pair_fn, protocol.negatives)  # (O,)
        out["auc"] = compatibility_auc(pos, neg)
    out["n_fitb"] = float(len(protocol.questions))
    out["n_outfits"] = float(len(protocol.positives))
    return out


def split_protocol(protocol: Protocol, groups: np.ndarray) -> dict[int, Protocol]:
    """One protocol per group of items (e.g. per catalog, ``attrs["catalog"]``): each question goes with
    its answer's group, each outfit (and its negative) with its first item's.

    Args:
        protocol: the questions and outfits to split.
        groups: (N,) int64 group id of every item.

    Returns:
        ``{group id: Protocol}`` for every group that holds a question or an outfit, in id order.
    """
    out: dict[int, Protocol] = {}

    def part(g: int) -> Protocol:
        return out.setdefault(g, Protocol(protocol.name, [], [], []))

    for question, candidates in protocol.questions:
        part(int(groups[candidates[0]])).questions.append((question, candidates))
    for pos, neg in zip(protocol.positives, protocol.negatives, strict=True):
        p = part(int(groups[pos[0]]))
        p.positives.append(pos)
        p.negatives.append(neg)
    return dict(sorted(out.items()))
