"""Complete-the-look and outfit compatibility: the type-aware compatibility space (``ProductEmbedding.compat``).

Complete-the-look asks one indexed pgvector query per missing slot (``ORDER BY compat <#> q_t`` on that
slot's partial HNSW graph, :func:`recommender.selectors.ranked_many`); outfit compatibility scores every
pair of a set with the version's heads and asks complete-the-look for a replacement of its weakest item.

Both keep to the outfit's audience by default: a pick's ``audience_group`` must fit every given item's
(:func:`audience_filter`, the table being :func:`ml.audience.audience_fits`: the same group, or unisex),
a filter inside the indexed query (pgvector's iterative index scan keeps k rows coming); ``audience="any"``
turns it off. Both re-rank each slot's candidates for hubness (:mod:`ml.hubness`).

In each slot, at most ``settings.LOOKS_MEMORY_PICKS`` items that training outfits already paired with the
given ones (:func:`outfit_memory`, under the same filters) come first, then the model's ranking: what a
stylist or the shop's shoppers put together is the strongest evidence there is, and the model keeps the
other places for what they never paired (``ml.scorers.memory_first`` is the same order in the evaluation).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import Count

from catalog.models import Outfit, OutfitItem, Product
from ml.audience import AUDIENCE_GROUPS, audience_fits
from ml.diversity import first_of_each
from ml.hubness import rerank
from ml.slots import BOTTOM, NOT_WORN_GROUPS, ONE_PIECE, SLOT_INDEX, TOP, missing_slots
from recommender import answer_cache
from recommender.model_cache import heads_for
from recommender.models import ModelVersion, ProductEmbedding
from recommender.selectors import Hit, NoActiveModel, UnknownProducts, active_version, ranked_many

#: ``product_group`` values (any case) complete-the-look never suggests (:data:`ml.slots.NOT_WORN_GROUPS`).
NOT_WORN_PATTERN = r"^\s*(" + "|".join(NOT_WORN_GROUPS) + r")\s*$"


@dataclass
class LookHit(Hit):
    """A complete-the-look pick: ``worn_with`` training outfits hold it and at least one of the given
    items (0: none; with ``LOOKS_MEMORY_PICKS`` 0 always 0)."""

    worn_with: int = 0


def outfit_embeddings(version: ModelVersion, product_ids: Sequence[int]) -> list[ProductEmbedding]:
    ids = list(dict.fromkeys(int(i) for i in product_ids))
    found = set(Product.objects.filter(pk__in=ids).values_list("pk", flat=True))
    unknown = [i for i in ids if i not in found]
    if unknown:
        raise UnknownProducts(unknown)
    embs = {
        e.product_id: e for e in ProductEmbedding.objects.filter(model_version=version, product_id__in=ids)
    }
    missing = [i for i in ids if i not in embs]
    if missing:
        raise NoActiveModel(f"product(s) {missing} have no vectors for model version {version.pk} yet")
    return [embs[i] for i in ids]


@dataclass
class SlotPicks:
    """Complete-the-look answer for one slot: the best pick and its alternates."""

    slot: str
    hits: list[LookHit] = field(default_factory=list)


#: ``audience`` of complete-the-look and the swap: ``match`` keeps to the outfit's audience, ``any`` mixes.
AUDIENCE_MODES = ("match", "any")


def audience_filter(given: Sequence[str]) -> list[str] | None:
    """The audience groups a pick may have next to items of the ``given`` groups: those that fit every
    one of them (:func:`ml.audience.audience_fits`); ``None`` when that is every group (no filter).

    >>> audience_filter(["men"])
    ['men', 'unisex']
    >>> audience_filter(["men", "women"])
    ['unisex']
    >>> audience_filter(["unisex"]) is None
    True
    """
    fits = [g for g in AUDIENCE_GROUPS if all(audience_fits(g, x) for x in given)]
    return None if len(fits) == len(AUDIENCE_GROUPS) else fits


def compat_to_unit(score_sum: float, n: int) -> float:
    """Mean pair score in [-1, 1] → [0, 1]."""
    return float(np.clip((score_sum / max(n, 1) + 1) / 2, 0, 1))


def complete_the_look(
    *,
    product_ids: Sequence[int],
    k: int = 4,
    slots: Sequence[str] | None = None,
    exclude_ids: Sequence[int] = (),
    audience: str = "match",
    reduce_hubs: bool = True,
) -> list[SlotPicks]:
    """Best items for each missing slot, ranked by total compatibility with all given items.

    One indexed pgvector query per slot: ``ORDER BY compat <#> q_t`` with ``q_t = Σ_i f_i ⊙ m²`` (see
    ``ml.heads``) and a slot filter. Items of the given products' variant groups are excluded. With
    ``reduce_hubs`` the slot's top ``settings.HUBNESS_POOL`` rows are re-ranked by
    ``mean compatibility − settings.HUBNESS_PENALTY · hub_score`` (the item's offset,
    :mod:`recommender.hubness`), so an item compatible with everything (a hub) stops being everyone's
    pick. Then at most ``settings.LOOKS_MEMORY_PICKS`` items training outfits paired with the given
    ones (:func:`outfit_memory`, same filters) are lifted to the top, the most often paired first and
    the model's score among equals. With ``audience="match"``
    only items whose audience group fits every given item's are candidates (:func:`audience_filter`,
    ``audience_group IN (...)`` inside the indexed query). Never a product of unknown type or of a
    group nobody wears (:data:`NOT_WORN_PATTERN`: home, beauty, stationery).

    Args:
        product_ids: the partial outfit (1..8 products).
        k: hits per slot.
        slots: the slots to fill (default: :func:`missing_slots`, never a slot the outfit has).
        exclude_ids: products never to suggest (e.g. the item a replacement is sought for).
        audience: ``match`` (keep to the given items' audience) or ``any`` (:data:`AUDIENCE_MODES`).
        reduce_hubs: re-rank for hubness (False: the plain compatibility order).

    Returns:
        One :class:`SlotPicks` per missing slot (k :class:`LookHit` each: the pick and k-1 alternates);
        scores are mean pair compatibilities in [0, 1] (the re-ranking and the outfit memory change
        the order, not the scores).

    Raises:
        ValueError: empty set or unknown audience mode; UnknownProducts; NoActiveModel.
    """
    if not product_ids:
        raise ValueError("give at least one product id")
    if audience not in AUDIENCE_MODES:
        raise ValueError(f"audience must be one of {AUDIENCE_MODES} (got {audience!r})")
    version = active_version()
    embs = outfit_embeddings(version, product_ids)
    heads = heads_for(version)
    f = torch.from_numpy(np.stack([np.asarray(e.compat, dtype=np.float32) for e in embs]))  # (K, C)
    s = torch.as_tensor([SLOT_INDEX[e.slot] for e in embs])
    targets = list(slots) if slots else missing_slots([e.slot for e in embs])
    variants = [
        v
        for v in Product.objects.filter(pk__in=[e.product_id for e in embs]).values_list(
            "variant_group", flat=True
        )
        if v
    ]
    given = [*(e.product_id for e in embs), *exclude_ids]
    fit = audience_filter([e.audience_group for e in embs])  # None: the given items are unisex
    groups = fit if audience == "match" else None
    counts = slot_audience_counts(version) if groups is not None else {}
    pool = pool_size(k, reduce_hubs)
    candidates = (
        ProductEmbedding.objects.filter(model_version=version)
        .exclude(product_id__in=given)
        .exclude(product__variant_group__in=variants)
        .exclude(product__product_type__iexact="unknown")  # untyped source rows make poor picks
        .exclude(product__product_group__iregex=NOT_WORN_PATTERN)  # a pillow case is no accessory
    )
    if groups is not None:
        candidates = candidates.filter(audience_group__in=groups)
    queries, jobs, exact = {}, [], []
    for slot in targets:
        with torch.no_grad():
            queries[slot] = heads.slot_query(f, s, SLOT_INDEX[slot]).numpy()  # (C,)
        jobs.append((candidates.filter(slot=slot), queries[slot]))
        exact.append(groups is not None and _exact_is_cheaper(counts, slot, groups, pool))
    beta = settings.HUBNESS_PENALTY if reduce_hubs else 0.0
    extra = ("hub_score", "product__variant_group")
    ranked = ranked_many(jobs, "compat", pool, kind="complete", extra=extra, exact=exact)
    lift = int(settings.LOOKS_MEMORY_PICKS)
    memory = outfit_memory([e.product_id for e in embs]) if lift > 0 else {}
    # a remembered partner of an audience that does not fit was bought for someone else (training drops
    # such pairs too): never lifted, even when the shopper asked for every audience
    kept = candidates.filter(audience_group__in=fit) if groups is None and fit is not None else candidates
    remembered = _remembered(kept, memory, queries)
    n = len(embs)
    chosen: list[list[tuple[int, float, int]]] = []
    for slot, rows in zip(targets, ranked, strict=True):
        mean = np.asarray([v / n for _, v, _, _ in rows], dtype=np.float64)  # (P,) mean pair score
        order = rerank(scores=mean, hub=np.asarray([r[2] for r in rows]), beta=beta) if rows else []
        first = _distinct_variants(remembered.get(slot, []))[:lift]
        model = [(rows[i][0], rows[i][1], rows[i][3]) for i in order]
        picks = _distinct_variants(first + model)[:k]
        chosen.append([(pid, v, memory[pid].outfits if pid in memory else 0) for pid, v, _ in picks])
    products = Product.objects.in_bulk([pid for picks in chosen for pid, _, _ in picks])  # k per slot
    return [
        SlotPicks(
            slot,
            [LookHit(products[pid], compat_to_unit(v, n), c) for pid, v, c in picks if pid in products],
        )
        for slot, picks in zip(targets, chosen, strict=True)
    ]


class Paired(NamedTuple):
    """How the training outfits paired a product with the given ones: ``pairs`` = Σ_i outfits holding
    it and given item i (the order; ``ml.scorers.pair_memory_scorer`` in the evaluation), ``outfits`` =
    outfits holding it and at least one given item (what the card says)."""

    pairs: int
    outfits: int


def outfit_memory(product_ids: Sequence[int]) -> dict[int, Paired]:
    """How often the training outfits (``Outfit.split`` train; the held-out ones stay unseen, as in
    training) paired each product with the given ones: ``{product_id: Paired}``, the given products
    left out. One grouped query over ``catalog_outfititem``."""
    ids = [int(i) for i in product_ids]
    rows = (
        OutfitItem.objects.filter(outfit__split=Outfit.Split.TRAIN, outfit__items__product_id__in=ids)
        .exclude(product_id__in=ids)
        .values_list("product_id")
        .annotate(pairs=Count("pk"), outfits=Count("outfit_id", distinct=True))
        .order_by()
    )
    return {pid: Paired(pairs, outfits) for pid, pairs, outfits in rows}


def _remembered(
    candidates, memory: dict[int, Paired], queries: dict[str, np.ndarray]
) -> dict[str, list[tuple[int, float, str]]]:
    """The remembered partners among ``candidates`` (the picks' filters), per target slot: ``[(product_id,
    summed score <q_slot, f>, variant_group)]``, the most often paired first (``Paired.pairs``), then the
    higher score."""
    if not memory:
        return {}
    rows = candidates.filter(product_id__in=list(memory), slot__in=list(queries)).values_list(
        "product_id", "slot", "compat", "product__variant_group"
    )
    out: dict[str, list[tuple[int, float, str]]] = {}
    for pid, slot, vec, variant in rows:
        score = float(np.dot(queries[slot], np.asarray(vec, dtype=np.float32)))
        out.setdefault(slot, []).append((pid, score, variant))
    for picks in out.values():
        picks.sort(key=lambda r: (-memory[r[0]].pairs, -r[1], r[0]))
    return out


def pool_size(k: int, reduce_hubs: bool) -> int:
    """Rows each slot's ranking fetches: at least 3k (room to drop colour variants of a pick), and the
    hub re-ranking's ``settings.HUBNESS_POOL`` when it is on."""
    return max(3 * k, settings.HUBNESS_POOL) if reduce_hubs and settings.HUBNESS_PENALTY > 0 else 3 * k


#: An HNSW tuple walked past a filter costs about this many exact rows (distance and sort: ~20 µs
#: against ~8 µs a row at 100k products on 2 cores, docs/benchmarks.md).
TUPLE_COST_IN_ROWS = 2.5


def _exact_is_cheaper(
    counts: dict[tuple[str, str], int], slot: str, groups: Sequence[str], pool: int
) -> bool:
    """Rank ``slot`` exactly for an outfit whose audience allows ``groups``? The iterative scan of the
    slot's graph walks about ``pool / share`` tuples (``share``: the allowed rows' share of the slot) to
    keep ``pool`` of them; the exact ranking reads the allowed rows. Exact when that is cheaper, and at
    most ``settings.LOOKS_EXACT_MAX_ROWS`` rows (0: never): a men's bag among 100k products (150 rows of
    5,000), not a women's (4,700 of 5,000, whose rows nearly all pass the filter)."""
    limit = int(settings.LOOKS_EXACT_MAX_ROWS)
    rows = sum(counts.get((slot, g), 0) for g in groups)
    total = sum(n for (s, _), n in counts.items() if s == slot)
    return limit > 0 and rows <= limit and rows * rows <= TUPLE_COST_IN_ROWS * pool * total


def slot_audience_counts(version: ModelVersion) -> dict[tuple[str, str], int]:
    """``{(slot, audience_group): rows}`` of the version's vectors, cached for
    :data:`COUNTS_CACHE_SECONDS` (a stale count only chooses between an exact and an indexed ranking,
    both correct; a cache that is down means counting every time)."""
    key = f"looks:slot-audience:{connection.settings_dict['NAME']}:v{version.pk}"
    with contextlib.suppress(*answer_cache.CACHE_ERRORS):
        hit = cache.get(key)
        if hit is not None:
            return hit
    rows = (
        ProductEmbedding.objects.filter(model_version=version)
        .values_list("slot", "audience_group")
        .annotate(n=Count("pk"))
        .order_by()
    )
    counts = {(slot, group): n for slot, group, n in rows}
    with contextlib.suppress(*answer_cache.CACHE_ERRORS):
        cache.set(key, counts, COUNTS_CACHE_SECONDS)
    return counts


#: How long :func:`slot_audience_counts` is cached.
COUNTS_CACHE_SECONDS = 600


def one_look(picks: Sequence[SlotPicks]) -> list[Hit]:
    """The best pick of each slot, as one wearable look: when both a one-piece and a top or bottom were
    suggested (a partial outfit with neither), keep the one-piece or the top + bottom, whichever has the
    higher mean compatibility; never a dress together with a top and trousers.

    Returns:
        One :class:`Hit` per kept slot, in the order of ``picks``.
    """
    best = {sp.slot: sp.hits[0] for sp in picks if sp.hits}
    separates = [best[s] for s in (TOP, BOTTOM) if s in best]
    if ONE_PIECE in best and separates:
        drop = (
            (TOP, BOTTOM) if best[ONE_PIECE].score >= np.mean([h.score for h in separates]) else (ONE_PIECE,)
        )
        best = {slot: hit for slot, hit in best.items() if slot not in drop}
    return [best[sp.slot] for sp in picks if sp.slot in best]


def _distinct_variants(rows: list[tuple[int, float, str]]) -> list[tuple[int, float, str]]:
    """Keep the first ``(product_id, score, variant_group)`` of each variant group (colour variants are
    alternatives of one product)."""
    return first_of_each(rows, lambda row: row[2] or f"pk-{row[0]}")


@dataclass
class Compatibility:
    """Compatibility of a set: mean pairwise score in [0, 1], the matrix and the weakest pair."""

    products: list[Product]
    score: float
    matrix: list[list[float]]
    weakest: tuple[int, int] | None
    suggestion: Hit | None = None


#: Candidates complete-the-look offers for the swap of :func:`outfit_compatibility`.
SWAP_CANDIDATES = 5


def outfit_compatibility(
    *, product_ids: Sequence[int], suggest: bool = True, audience: str = "match", reduce_hubs: bool = True
) -> Compatibility:
    """Score a set of 2..8 products: pair scores ``(1 + <f_i ⊙ m², f_j>) / 2`` and their mean.

    The weakest pair is the lowest off-diagonal entry; the suggested replacement is the first of
    complete-the-look's :data:`SWAP_CANDIDATES` picks for that pair's less compatible member's slot
    given all the others (one indexed query, re-ranked for hubness unless ``reduce_hubs`` is False,
    of an audience that fits the others' unless ``audience="any"``) that raises the score; never that
    item itself (else ``suggestion`` is None).

    Raises:
        ValueError: fewer than 2 or more than 8 distinct products; UnknownProducts; NoActiveModel.
    """
    ids = list(dict.fromkeys(int(i) for i in product_ids))
    if not 2 <= len(ids) <= 8:
        raise ValueError(f"give 2 to 8 distinct product ids (got {len(ids)})")
    if audience not in AUDIENCE_MODES:
        raise ValueError(f"audience must be one of {AUDIENCE_MODES} (got {audience!r})")
    version = active_version()
    embs = outfit_embeddings(version, ids)
    heads = heads_for(version)
    f = torch.from_numpy(np.stack([np.asarray(e.compat, dtype=np.float32) for e in embs]))
    s = torch.as_tensor([SLOT_INDEX[e.slot] for e in embs])
    n = len(ids)
    mat = np.ones((n, n), dtype=np.float64)
    pairs = list(itertools.combinations(range(n), 2))
    with torch.no_grad():
        a = torch.as_tensor([i for i, _ in pairs])
        b = torch.as_tensor([j for _, j in pairs])
        sc = ((heads.pair_score(f[a], f[b], s[a], s[b]) + 1) / 2).clamp(0, 1).numpy()
    for (i, j), v in zip(pairs, sc, strict=True):
        mat[i, j] = mat[j, i] = float(v)
    score = float(np.mean(sc))
    wi, wj = pairs[int(np.argmin(sc))]
    products = Product.objects.in_bulk(ids)
    suggestion = None
    if suggest:
        off = mat.copy()
        np.fill_diagonal(off, np.nan)
        weaker = wi if np.nanmean(off[wi]) <= np.nanmean(off[wj]) else wj
        others = [ids[x] for x in range(n) if x != weaker]
        picks = complete_the_look(
            product_ids=others,
            k=SWAP_CANDIDATES,
            slots=[embs[weaker].slot],
            exclude_ids=[ids[weaker]],
            audience=audience,
            reduce_hubs=reduce_hubs,
        )
        # Only a swap that raises the outfit's score: the pick's mean pair score with the others must
        # beat the weaker item's (same [0, 1] scale), else the weaker item is already the best fit. The
        # first such candidate in complete-the-look's order (re-ranked for hubness, so not always the
        # most compatible one).
        bar = float(np.nanmean(off[weaker]))
        suggestion = next((h for h in (picks[0].hits if picks else []) if h.score > bar), None)
    return Compatibility(
        [products[i] for i in ids], score, mat.round(4).tolist(), (ids[wi], ids[wj]), suggestion
    )
