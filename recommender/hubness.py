"""Hub offsets of products under a model version (``ProductEmbedding.hub_score``), computed when their
vectors are written, so that complete-the-look stops suggesting the same few items to everyone
(:func:`ml.hubness.capacity_offsets`, :mod:`recommender.looks`).

For each outfit slot, every product of the catalog whose slot asks for it (a top asks for a bottom)
is a query, scored against the slot's candidates as complete-the-look scores them (the type-aware pair
score, the default audience rule, never a colour variant of the query, never a product nobody wears);
each candidate's offset is its price in "no candidate fills more than ``HUBNESS_MAX_SHARE`` of the
top-``HUBNESS_K`` lists". The items the outfit memory lifts above the model's order
(``LOOKS_MEMORY_PICKS``, :func:`recommender.looks.outfit_memory`) hold their places in those lists at
any price, so they count in the shares and the prices make room around them. A full
write (a training run embeds the whole catalog) prices every product; a partial write (an upload, an
edit) prices the written products against the stored prices of the others, which it leaves as they are
until the next full write or :func:`hub_scores_refresh`.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction

from catalog.models import Outfit, OutfitItem, Product
from catalog.selectors import product_audience_group
from ml.hubness import capacity_offsets, even_spread_shares, pooled
from ml.slots import OUTFIT_SLOTS, SLOT_INDEX, missing_slots
from recommender import answer_cache
from recommender.looks import NOT_WORN_PATTERN, audience_filter
from recommender.model_cache import heads_for
from recommender.models import ModelVersion, ProductEmbedding

logger = logging.getLogger(__name__)


@dataclass
class _Catalog:
    """The catalog of one version as complete-the-look sees it: one entry per product."""

    compat: np.ndarray  # (N, C) float32 unit vectors
    slot: np.ndarray  # (N,) str
    group: np.ndarray  # (N,) str audience group
    variant: np.ndarray  # (N,) str variant group (the product's own key when it has none)
    pid: np.ndarray  # (N,) int64 product ids
    typed: np.ndarray  # (N,) bool: a possible pick (type known, a group people wear)
    hub: np.ndarray  # (N,) float32 current offsets
    free: np.ndarray  # (N,) bool: the offsets being computed (the products being written)


def _catalog(
    version: ModelVersion, product_ids: Sequence[int], compat: np.ndarray
) -> tuple[_Catalog, list[int]]:
    """The written products (first, in order; deleted ones left out) and the version's other stored
    rows; with the positions in ``product_ids`` of the written products kept."""
    written = Product.objects.in_bulk(list(product_ids))
    keep = [i for i, pid in enumerate(product_ids) if int(pid) in written]
    rows = [
        (
            compat[i],
            written[int(product_ids[i])].slot,
            product_audience_group(product=written[int(product_ids[i])]),
            written[int(product_ids[i])].variant_group or f"pk-{product_ids[i]}",
            _pickable(written[int(product_ids[i])].product_type, written[int(product_ids[i])].product_group),
            0.0,
            True,
            int(product_ids[i]),
        )
        for i in keep
    ]
    stored = ProductEmbedding.objects.filter(model_version=version).values_list(
        "product_id",
        "compat",
        "slot",
        "audience_group",
        "hub_score",
        "product__variant_group",
        "product__product_type",
        "product__product_group",
    )
    ids = {int(p) for p in product_ids}
    rows += [
        (
            np.asarray(vec, dtype=np.float32),
            slot,
            group,
            variant or f"pk-{pid}",
            _pickable(ptype, pgroup),
            hub,
            False,
            pid,
        )
        for pid, vec, slot, group, hub, variant, ptype, pgroup in stored
        if pid not in ids
    ]
    dim = compat.shape[1]
    return _Catalog(
        compat=np.asarray([r[0] for r in rows], dtype=np.float32).reshape(-1, dim),
        slot=np.asarray([r[1] for r in rows], dtype=object),
        group=np.asarray([r[2] for r in rows], dtype=object),
        variant=np.asarray([r[3] for r in rows], dtype=object),
        pid=np.asarray([r[7] for r in rows], dtype=np.int64),
        typed=np.asarray([r[4] for r in rows], dtype=bool),
        hub=np.asarray([r[5] for r in rows], dtype=np.float32),
        free=np.asarray([r[6] for r in rows], dtype=bool),
    ), keep


_NOT_WORN = re.compile(NOT_WORN_PATTERN, re.IGNORECASE)


def _pickable(product_type: str, product_group: str) -> bool:
    """May complete-the-look pick this product (its query's filters: a known type, a group people wear)?"""
    return product_type.lower() != "unknown" and not _NOT_WORN.match(product_group or "")


def training_pairs() -> dict[int, dict[int, int]]:
    """``{a: {b: n}}``: the number of training outfits that hold both products a and b (a ≠ b), the
    count :func:`recommender.looks.outfit_memory` orders one given item's remembered partners by."""
    items, outfits = OutfitItem._meta.db_table, Outfit._meta.db_table
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT a.product_id, b.product_id, count(*) FROM {items} a"  # noqa: S608 (table names)
            f" JOIN {items} b ON b.outfit_id = a.outfit_id AND b.product_id <> a.product_id"
            f" JOIN {outfits} o ON o.id = a.outfit_id WHERE o.split = %s GROUP BY 1, 2",
            [Outfit.Split.TRAIN],
        )
        out: dict[int, dict[int, int]] = {}
        for a, b, n in cur.fetchall():
            out.setdefault(a, {})[b] = n
    return out


def _served_memory() -> tuple[int, dict[int, dict[int, int]]]:
    """How many remembered partners complete-the-look lifts per slot (``LOOKS_MEMORY_PICKS``) and, when
    any, the training outfits' pairs (:func:`training_pairs`) to find them in."""
    lift = max(int(settings.LOOKS_MEMORY_PICKS), 0)
    return lift, (training_pairs() if lift else {})


def _candidates(cat: _Catalog, target: str) -> np.ndarray:
    """Catalog rows complete-the-look may pick for slot ``target``."""
    return np.flatnonzero((cat.slot == target) & cat.typed)


def _asking(cat: _Catalog, target: str) -> np.ndarray:
    """Catalog rows whose slot leaves ``target`` open: the products that ask for it."""
    return np.flatnonzero([target in missing_slots([s]) for s in cat.slot])


#: The score a remembered pick stands in for: above any pair score less any offset.
_REMEMBERED = np.float32(1e4)


def _lift_remembered(
    cat: _Catalog, scores: np.ndarray, queries: np.ndarray, cands: np.ndarray, pairs: dict, lift: int
) -> np.ndarray:
    """Put in each query's row of ``scores`` (Q, N_t) the partners complete-the-look lifts for it: at most
    ``lift`` allowed candidates the training outfits paired with it, one per variant group, the most often
    paired first, then the higher score (:func:`recommender.looks.complete_the_look`); scored
    ``_REMEMBERED − rank``. Returns (N_t,) float64 the share of the queries each candidate is lifted for."""
    lifted = np.zeros(len(cands))
    if lift <= 0 or not pairs or not len(queries):
        return lifted
    column = {int(p): j for j, p in enumerate(cat.pid[cands])}
    for row, q in enumerate(queries):
        partners = [(n, column[b]) for b, n in pairs.get(int(cat.pid[q]), {}).items() if b in column]
        partners = [(n, j) for n, j in partners if scores[row, j] > -np.inf]
        partners.sort(key=lambda r: (-r[0], -float(scores[row, r[1]]), int(cat.pid[cands[r[1]]])))
        seen: set[str] = set()
        for _, j in partners:
            if len(seen) == lift:
                break
            if cat.variant[cands[j]] not in seen:
                seen.add(cat.variant[cands[j]])
                scores[row, j] = _REMEMBERED - len(seen)
                lifted[j] += 1
    return lifted / len(queries)


def _slot_scores(cat: _Catalog, masks2: np.ndarray, target: str, queries: np.ndarray, cands: np.ndarray):
    """(Q, N_t) complete-the-look scores of the candidates for each query, ``-inf`` where not allowed."""
    scores = np.empty((len(queries), len(cands)), dtype=np.float32)
    for source in set(cat.slot[queries]):
        rows = cat.slot[queries] == source
        q = cat.compat[queries[rows]] * masks2[SLOT_INDEX[target], SLOT_INDEX[source]]  # (Q_s, C)
        scores[rows] = q @ cat.compat[cands].T
    scores[cat.variant[queries][:, None] == cat.variant[cands][None, :]] = -np.inf
    for group in set(cat.group[queries]):
        allowed = audience_filter([group])
        if allowed is not None:
            scores[np.ix_(cat.group[queries] == group, ~np.isin(cat.group[cands], allowed))] = -np.inf
    return scores


def hub_scores_for(*, version: ModelVersion, product_ids: Sequence[int], compat: np.ndarray) -> np.ndarray:
    """Offsets of the products being written under ``version`` (this module's docstring says how).

    Args:
        product_ids: N distinct product ids (a deleted product gets 0).
        compat: (N, C) float32 their unit compatibility vectors.

    Returns:
        (N,) float32 offsets ≥ 0, in the pair score's units; zeros when the version has no heads on disk
        (a benchmark's or a test's bare version: nothing to score pairs with) or ``HUBNESS_K`` is 0.
    """
    n = len(product_ids)
    out = np.zeros(n, dtype=np.float32)
    if not n or settings.HUBNESS_K <= 0:
        return out
    if not version.artifact_path or not Path(version.artifact_path).exists():
        logger.info("model version %s has no heads on disk: hub offsets left at 0", version.pk)
        return out
    masks2 = heads_for(version).mask_table().detach().numpy()  # (S, S, C)
    cat, keep = _catalog(version, product_ids, np.asarray(compat, dtype=np.float32))
    rng = random.Random(version.pk)
    lift, pairs = _served_memory()
    for target in OUTFIT_SLOTS:
        cands = _candidates(cat, target)
        if not cat.free[cands].any():
            continue
        queries = _asking(cat, target)
        if len(queries) > settings.HUBNESS_QUERIES:  # shares estimated on a fixed sample of queries
            queries = np.sort(rng.sample(list(queries), settings.HUBNESS_QUERIES))
        if not len(queries):
            continue
        scores = _slot_scores(cat, masks2, target, queries, cands)
        lifted = _lift_remembered(cat, scores, queries, cands, pairs, lift)  # shares no price lowers
        # the even spread over all the items each query may get (its audience's), not over its pool:
        # the items in the most pools are the hubs, and a pool-based spread raised their caps
        even = even_spread_shares(scores, settings.HUBNESS_K)
        # each query's HUBNESS_POOL best candidates: the rows complete-the-look re-ranks by the offsets
        scores, index = pooled(scores, settings.HUBNESS_POOL)
        cap = np.maximum.reduce([np.full(len(cands), settings.HUBNESS_MAX_SHARE), 1.5 * even, lifted])
        cat.hub[cands] = capacity_offsets(
            scores,
            k=settings.HUBNESS_K,
            cap=cap,
            free=cat.free[cands],
            start=cat.hub[cands],
            index=index,
        )
    out[keep] = cat.hub[: len(keep)]  # the written products come first in the catalog
    return out


def hub_refresh_deferred(*, version: ModelVersion, rows: int) -> bool:
    """Is a write of ``rows`` rows into ``version`` left unpriced until a refresh? When it is at most
    ``settings.HUBNESS_DEFER_MAX_ROWS`` rows (0: never) and the version already holds more: pricing
    reads and scores the whole catalog, about 1 s a write at 21,000 products (docs/benchmarks.md), and
    one product's offset moves the others' little."""
    limit = int(settings.HUBNESS_DEFER_MAX_ROWS)
    if limit <= 0 or rows > limit or settings.HUBNESS_K <= 0:
        return False
    return ProductEmbedding.objects.filter(model_version=version)[: rows + 1].count() > rows


def hub_refresh_key(version: ModelVersion) -> str:
    """The cache key held while a refresh of ``version`` is pending (this database's)."""
    return f"hubness:refresh:{connection.settings_dict['NAME']}:v{version.pk}"


def hub_refresh_schedule(*, version: ModelVersion) -> bool:
    """Queue one :func:`hub_scores_refresh` of ``version`` ``settings.HUBNESS_REFRESH_DELAY_S`` after the
    current transaction commits, unless one is pending already (a cache key held for that delay), so a
    bulk of uploads costs one pricing. Returns whether this call queued it; a cache or broker that is
    down is logged and skipped (the next training run or ``audit_looks --refresh-hubs`` prices them)."""
    delay = int(settings.HUBNESS_REFRESH_DELAY_S)
    try:
        if not cache.add(hub_refresh_key(version), 1, timeout=max(delay, 1)):
            return False
    except answer_cache.CACHE_ERRORS as exc:
        logger.warning("hub offsets of version %s not scheduled (%s)", version.pk, exc)
        return False

    def send() -> None:
        from recommender.tasks import refresh_hub_scores

        try:
            refresh_hub_scores.apply_async(kwargs={"version_id": version.pk}, countdown=delay)
        except Exception as exc:  # broker down: the offsets wait for the next full pricing
            logger.warning("hub offsets of version %s not queued (%s)", version.pk, exc)

    transaction.on_commit(send)
    return True


def hub_scores_refresh(*, version: ModelVersion) -> int:
    """Price every stored row of ``version`` again from its stored vectors, as a full write would (after
    products were added one by one, or for vectors written before offsets existed); no tower runs.

    Returns:
        The number of rows priced (only those whose offset changed are written).
    """
    rows = list(
        ProductEmbedding.objects.filter(model_version=version).values_list(
            "pk", "product_id", "compat", "hub_score"
        )
    )
    if not rows:
        return 0
    compat = np.stack([np.asarray(r[2], dtype=np.float32) for r in rows])  # (N, C)
    hub = hub_scores_for(version=version, product_ids=[r[1] for r in rows], compat=compat)
    # most offsets stay 0 and most others move little: only the changed rows are written (each update
    # of a row is a new tuple in every HNSW graph of the table)
    changed = [
        ProductEmbedding(pk=r[0], hub_score=float(h))
        for r, h in zip(rows, hub, strict=True)
        if abs(float(h) - r[3]) > 1e-6
    ]
    ProductEmbedding.objects.bulk_update(changed, ["hub_score"], batch_size=2000)
    logger.info(
        "hub offsets of version %s priced again: %d of %d rows changed", version.pk, len(changed), len(rows)
    )
    if version.is_active:
        answer_cache.invalidate()  # the served order changes
    return len(rows)


def population_shares(*, version: ModelVersion, goal: float) -> dict[str, dict]:
    """Hubness over **every** product of the catalog as a query, in the lists the offsets are priced on:
    each product's top-``HUBNESS_K`` of every slot it leaves open (exact scores, default audience rule,
    the outfit memory's lifted partners first, ranked by ``score − offset`` in each query's
    ``HUBNESS_POOL``, one item per variant group, as served). ``audit_looks --population``: the shares a
    sample of 300 products estimates, without its sampling noise.

    Returns:
        ``{slot: {"lists", "max_share", "max_item", "max_share_spreadable", "spreadable_item",
        "over_goal_spreadable", "over_goal"}}``; an item is *spreadable* when 1.5× its even-spread share
        (over the items its queries may get) is at most ``goal`` (the audit's ``GOAL_SHARE``), as in
        :mod:`recommender.looks_audit`.
    """
    k = settings.HUBNESS_K
    dim = len(ProductEmbedding.objects.filter(model_version=version).values_list("compat", flat=True)[0])
    cat, _ = _catalog(version, [], np.zeros((0, dim), dtype=np.float32))
    masks2 = heads_for(version).mask_table().detach().numpy()
    lift, pairs = _served_memory()
    out: dict[str, dict] = {}
    for target in OUTFIT_SLOTS:
        cands, queries = _candidates(cat, target), _asking(cat, target)
        if not len(cands) or not len(queries):
            continue
        counts, even = np.zeros(len(cands)), np.zeros(len(cands))
        for lo in range(0, len(queries), 4096):  # (4096, N_t) scores at a time
            q = queries[lo : lo + 4096]
            scores = _slot_scores(cat, masks2, target, q, cands)
            _lift_remembered(cat, scores, q, cands, pairs, lift)
            even += even_spread_shares(scores, k) * len(q)
            scores, index = pooled(scores, settings.HUBNESS_POOL)
            lowered = scores - cat.hub[cands][index]
            for row, order in enumerate(np.argsort(-lowered, axis=1)):
                seen: set[str] = set()
                for col in order:  # not-allowed candidates (-inf) sort last
                    if len(seen) == k or not np.isfinite(lowered[row, col]):
                        break
                    j = index[row, col]
                    if cat.variant[cands[j]] not in seen:
                        seen.add(cat.variant[cands[j]])
                        counts[j] += 1
        share, even = counts / len(queries), even / len(queries)
        spreadable = 1.5 * even <= goal
        best = int(np.argmax(share))
        best_sp = int(np.argmax(np.where(spreadable, share, -1.0)))
        out[target] = {
            "lists": int(len(queries)),
            "max_share": round(float(share[best]), 4),
            "max_item": int(cat.pid[cands[best]]),
            "max_share_spreadable": round(float(share[best_sp]), 4) if spreadable.any() else 0.0,
            "spreadable_item": int(cat.pid[cands[best_sp]]) if spreadable.any() else None,
            "over_goal": int((share > goal).sum()),
            "over_goal_spreadable": int((share[spreadable] > goal).sum()),
        }
    return out
