"""Recommendation queries (HackSoft "selectors"): every ranking is one pgvector query on an HNSW index.

All stored vectors are unit norm, so ordering by ``<#>`` (negative inner product) ascending ranks by
cosine similarity and uses the ``vector_ip_ops`` HNSW indexes. Filtered queries run with pgvector 0.8
iterative index scans (``hnsw.iterative_scan``, ``hnsw.max_scan_tuples``) set with ``SET LOCAL``
inside a transaction, so a filter that matches few rows still returns k of them; ``hnsw.ef_search`` is
set per query type (``settings.HNSW_EF_SEARCH_BY_QUERY``). With ``settings.PGVECTOR_HALFVEC`` the
``fused`` and ``compat`` rankings order by ``column::halfvec(d) <#> q::halfvec(d)``, which the
half-precision expression indexes of migration ``0003_serving`` serve (half the index memory).

Similar items and text search can be re-ranked for diversity with MMR (:func:`ml.diversity.mmr`)
over a candidate pool fetched from the same index.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from django.conf import settings
from django.db import connection, transaction
from django.db.models import FloatField, QuerySet
from django.db.models.expressions import RawSQL
from pgvector.django import MaxInnerProduct

from catalog.models import Product
from ml.diversity import mmr
from ml.slots import BOTTOM, ONE_PIECE, SLOT_INDEX, TOP, missing_slots
from recommender.model_cache import embedder_for, heads_for
from recommender.models import ModelVersion, ProductEmbedding

SPACES = ("fused", "image", "text")
MAX_K = 100
#: Query types with their own ``hnsw.ef_search`` (``settings.HNSW_EF_SEARCH_BY_QUERY``).
QUERY_TYPES = ("similar", "search", "photo", "complete")
#: Columns that have a half-precision HNSW expression index (migration ``0003_serving``).
HALFVEC_COLUMNS = ("fused", "compat")


class NoActiveModel(LookupError):
    """No model version is active yet (train one first)."""


class UnknownProducts(LookupError):
    """Some product ids do not exist; ``ids`` lists them."""

    def __init__(self, ids: Sequence[int]) -> None:
        super().__init__(f"unknown product id(s): {list(ids)}")
        self.ids = list(ids)


@dataclass
class Hit:
    """A ranked product with its score (cosine similarity, or compatibility in [0, 1])."""

    product: Product
    score: float


@dataclass
class Filters:
    """Optional catalog filters applied inside the vector query."""

    slot: str | None = None
    product_type: str | None = None
    colour: str | None = None
    audience: str | None = None
    price_min: float | None = None
    price_max: float | None = None

    def apply(self, qs: QuerySet) -> QuerySet:
        if self.slot:
            qs = qs.filter(slot=self.slot)
        if self.product_type:
            qs = qs.filter(product__product_type__iexact=self.product_type)
        if self.colour:
            qs = qs.filter(product__colour__iexact=self.colour)
        if self.audience:
            qs = qs.filter(product__audience__iexact=self.audience)
        if self.price_min is not None:
            qs = qs.filter(product__price__gte=self.price_min)
        if self.price_max is not None:
            qs = qs.filter(product__price__lte=self.price_max)
        return qs


def active_version() -> ModelVersion:
    """The model version the site serves. Raises :class:`NoActiveModel` when there is none."""
    version = ModelVersion.objects.filter(is_active=True).first()
    if version is None:
        raise NoActiveModel("no model version is active yet: run `make demo` or start a training run")
    return version


def ef_search_for(kind: str, k: int) -> int:
    """``hnsw.ef_search`` for a query type (settings; at least k, at most pgvector's 1000)."""
    base = settings.HNSW_EF_SEARCH_BY_QUERY.get(kind, settings.HNSW_EF_SEARCH)
    return int(min(max(base, k), 1000))


def distance_expression(column: str, query: np.ndarray):
    """The bare ``column <#> query`` distance (negative inner product), in halfvec when configured.

    Args:
        column: a vector column of ``ProductEmbedding``.
        query: (D,) float32 unit vector.

    Returns:
        An expression to order by ascending; with ``settings.PGVECTOR_HALFVEC`` and a column in
        :data:`HALFVEC_COLUMNS` it is ``column::halfvec(D) <#> q::halfvec(D)``, the exact expression
        of the half-precision HNSW index (PostgreSQL only uses an expression index for the same
        expression).
    """
    if settings.PGVECTOR_HALFVEC and column in HALFVEC_COLUMNS:
        dim = int(query.shape[0])
        literal = "[" + ",".join(f"{float(v):.7g}" for v in query) + "]"
        table = ProductEmbedding._meta.db_table
        return RawSQL(
            f'"{table}"."{column}"::halfvec({dim}) <#> %s::halfvec({dim})',
            (literal,),
            output_field=FloatField(),
        )
    return MaxInnerProduct(column, query.tolist())


def _ranked(
    qs: QuerySet,
    column: str,
    query: np.ndarray,
    k: int,
    *,
    kind: str = "similar",
    vectors: bool = False,
) -> list[tuple]:
    """Run ``ORDER BY column <#> query LIMIT k`` with the HNSW settings of ``kind``.

    With ``settings.HNSW_FORCE_INDEX`` (the default) the transaction switches sequential scans, bitmap
    scans and sorts off (``SET LOCAL``), which leaves an HNSW index scan as the planner's only way to
    produce rows in distance order. Without that, pgvector 0.8's cost model (which charges for
    ``hnsw.ef_search``) makes PostgreSQL prefer reading every row of the model version through the
    B-tree on ``model_version_id`` (or on ``slot``) and sorting them: exact, but 19 ms instead of 1.2 ms
    at 10k rows at ef_search 100, and seconds at 1M rows (``bench_serving``). JIT is switched off too
    (compiling costs more than these sub-millisecond plans ever run). A slot filter uses the slot's
    partial index (migration 0004). Every query uses ``hnsw.iterative_scan`` (all filter on the model
    version, and the table keeps the vectors of up to ``ML_KEEP_VERSIONS`` versions): the scan
    continues until k rows pass the filters or ``hnsw.max_scan_tuples`` were visited; with
    ``relaxed_order`` rows come back in approximately distance order and are re-sorted exactly here.

    Returns:
        ``[(product_id, inner_product)]`` best first, or ``[(product_id, ip, vector (D,) float32)]``
        with ``vectors=True`` (for MMR).
    """
    return _ranked_many([(qs, query)], column, k, kind=kind, vectors=vectors)[0]


def ranking_settings_sql(kind: str, k: int) -> str:
    """The ``SET LOCAL`` statements of a ranking transaction (:func:`_ranked`), as one string (one round
    trip; integers and a validated setting, nothing to quote)."""
    sets = [f"SET LOCAL hnsw.ef_search = {ef_search_for(kind, k)}"]
    if settings.HNSW_FORCE_INDEX:  # only an HNSW scan yields rows in distance order
        sets += [
            "SET LOCAL enable_seqscan = off",
            "SET LOCAL enable_bitmapscan = off",
            "SET LOCAL enable_sort = off",
            "SET LOCAL jit = off",
        ]
    sets += [
        f"SET LOCAL hnsw.iterative_scan = {settings.HNSW_ITERATIVE_SCAN}",
        f"SET LOCAL hnsw.max_scan_tuples = {int(settings.HNSW_MAX_SCAN_TUPLES)}",
    ]
    return "; ".join(sets)


def _ranked_many(
    jobs: Sequence[tuple[QuerySet, np.ndarray]],
    column: str,
    k: int,
    *,
    kind: str,
    vectors: bool = False,
) -> list[list[tuple]]:
    """Several rankings (one per ``(queryset, query)``) in one transaction with one set of HNSW
    settings (:func:`_ranked`), so complete-the-look pays the round trips once, not once per slot."""
    out: list[list[tuple]] = []
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(ranking_settings_sql(kind, k))
        fields = ("product_id", "d", column) if vectors else ("product_id", "d")
        for qs, query in jobs:
            rows = qs.annotate(d=distance_expression(column, query)).order_by("d").values_list(*fields)[:k]
            if vectors:
                ranked = [(pid, -float(d), np.asarray(v, dtype=np.float32)) for pid, d, v in rows]
            else:
                ranked = [(pid, -float(d)) for pid, d in rows]
            ranked.sort(key=lambda r: -r[1])
            out.append(ranked)
    return out


def _diverse(
    qs: QuerySet, column: str, query: np.ndarray, k: int, *, kind: str, lambda_: float
) -> list[tuple[int, float]]:
    """MMR re-ranking (:func:`ml.diversity.mmr`) of a candidate pool fetched from the index.

    The pool is ``settings.MMR_POOL_FACTOR * k`` candidates (at least ``settings.MMR_POOL_MIN``, at
    most 1000); returns the k chosen ``[(product_id, inner_product)]`` in MMR order.
    """
    pool = int(min(max(settings.MMR_POOL_FACTOR * k, settings.MMR_POOL_MIN), 1000))
    cands = _ranked(qs, column, query, pool, kind=kind, vectors=True)
    if not cands:
        return []
    vecs = np.stack([c[2] for c in cands])  # (P, D)
    rel = np.asarray([c[1] for c in cands], dtype=np.float32)  # (P,)
    order = mmr(relevance=rel, vectors=vecs, k=k, lambda_=lambda_)
    return [(cands[i][0], cands[i][1]) for i in order]


def _hits(pairs: list[tuple[int, float]], transform=lambda s: s) -> list[Hit]:
    products = Product.objects.in_bulk([pid for pid, _ in pairs])
    return [Hit(products[pid], transform(s)) for pid, s in pairs if pid in products]


def _embedding(version: ModelVersion, product_id: int) -> ProductEmbedding:
    if not Product.objects.filter(pk=product_id).exists():
        raise UnknownProducts([product_id])
    emb = ProductEmbedding.objects.filter(model_version=version, product_id=product_id).first()
    if emb is None:
        raise NoActiveModel(f"product {product_id} has no vectors for model version {version.pk} yet")
    return emb


def similar_items(
    *,
    product_id: int,
    k: int = 12,
    space: str = "fused",
    exclude_variants: bool = True,
    filters: Filters | None = None,
    mmr_lambda: float | None = None,
) -> list[Hit]:
    """Items most similar to a product in the general space (cosine similarity, highest first).

    Args:
        space: ``fused`` (photo + text), ``image`` or ``text`` vector of the product as the query.
        exclude_variants: drop colour variants of the same product (same ``variant_group``).
        filters: catalog filters applied inside the indexed query (iterative scan).
        mmr_lambda: if given (0..1), MMR re-ranking for diversity (1 = plain relevance); the hits
            keep their cosine score but come in MMR order.

    Raises:
        UnknownProducts, NoActiveModel, ValueError (bad space or lambda).
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}")
    _check_lambda(mmr_lambda)
    version = active_version()
    emb = _embedding(version, product_id)
    product = Product.objects.get(pk=product_id)
    qs = ProductEmbedding.objects.filter(model_version=version).exclude(product_id=product_id)
    if exclude_variants and product.variant_group:
        qs = qs.exclude(product__variant_group=product.variant_group)
    filters = filters or Filters()
    qs = filters.apply(qs)
    query = np.asarray(getattr(emb, space), dtype=np.float32)
    if mmr_lambda is not None:
        return _hits(_diverse(qs, space, query, k, kind="similar", lambda_=mmr_lambda))
    return _hits(_ranked(qs, space, query, k, kind="similar"))


def _check_lambda(mmr_lambda: float | None) -> None:
    if mmr_lambda is not None and not 0.0 <= mmr_lambda <= 1.0:
        raise ValueError(f"mmr must be between 0 and 1 (got {mmr_lambda})")


def text_search(
    *, query: str, k: int = 24, filters: Filters | None = None, mmr_lambda: float | None = None
) -> list[Hit]:
    """Free-text search: the query's text vector against the products' fused (photo + text) vectors.

    Args:
        query: free text (the text tower's tokenizer truncates long input).
        filters: catalog filters applied inside the indexed query (iterative scan).
        mmr_lambda: MMR re-ranking for diversity, as in :func:`similar_items`.

    Raises:
        ValueError: empty query or bad lambda; NoActiveModel.
    """
    query = query.strip()
    if not query:
        raise ValueError("query must not be empty")
    _check_lambda(mmr_lambda)
    version = active_version()
    q = embedder_for(version).embed_query_text(query)
    filters = filters or Filters()
    qs = filters.apply(ProductEmbedding.objects.filter(model_version=version))
    if mmr_lambda is not None:
        return _hits(_diverse(qs, "fused", q, k, kind="search", lambda_=mmr_lambda))
    return _hits(_ranked(qs, "fused", q, k, kind="search"))


def photo_search(*, image, k: int = 24, filters: Filters | None = None) -> list[Hit]:
    """Search by a shopper's photo (a PIL image): nearest products by image vector.

    Raises:
        NoActiveModel.
    """
    version = active_version()
    q = embedder_for(version).embed_query_image(image)
    filters = filters or Filters()
    qs = filters.apply(ProductEmbedding.objects.filter(model_version=version))
    return _hits(_ranked(qs, "image", q, k, kind="photo"))


def _outfit_embeddings(version: ModelVersion, product_ids: Sequence[int]) -> list[ProductEmbedding]:
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
    hits: list[Hit] = field(default_factory=list)


def compat_to_unit(score_sum: float, n: int) -> float:
    """Mean pair score in [-1, 1] → [0, 1]."""
    return float(np.clip((score_sum / max(n, 1) + 1) / 2, 0, 1))


def complete_the_look(
    *,
    product_ids: Sequence[int],
    k: int = 4,
    slots: Sequence[str] | None = None,
    exclude_ids: Sequence[int] = (),
) -> list[SlotPicks]:
    """Best items for each missing slot, ranked by total compatibility with all given items.

    One indexed pgvector query per slot: ``ORDER BY compat <#> q_t`` with ``q_t = Σ_i f_i ⊙ m²`` (see
    ``ml.heads``) and a slot filter. Items of the given products' variant groups are excluded.

    Args:
        product_ids: the partial outfit (1..8 products).
        k: hits per slot.
        slots: the slots to fill (default: :func:`missing_slots`, never a slot the outfit has).
        exclude_ids: products never to suggest (e.g. the item a replacement is sought for).

    Returns:
        One :class:`SlotPicks` per missing slot (k hits each: the pick and k-1 alternates); scores
        are mean pair compatibilities in [0, 1].

    Raises:
        ValueError: empty set; UnknownProducts; NoActiveModel.
    """
    if not product_ids:
        raise ValueError("give at least one product id")
    version = active_version()
    embs = _outfit_embeddings(version, product_ids)
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
    jobs = []
    for slot in targets:
        with torch.no_grad():
            q = heads.slot_query(f, s, SLOT_INDEX[slot]).numpy()  # (C,)
        qs = (
            ProductEmbedding.objects.filter(model_version=version, slot=slot)
            .exclude(product_id__in=given)
            .exclude(product__variant_group__in=variants)
            .exclude(product__product_type__iexact="unknown")
        )  # untyped source rows make poor picks
        jobs.append((qs, q))
    # 3k rows per slot: room to drop colour variants of a pick
    ranked = _ranked_many(jobs, "compat", 3 * k, kind="complete")
    products = Product.objects.in_bulk([pid for pairs in ranked for pid, _ in pairs])
    out = []
    for slot, pairs in zip(targets, ranked, strict=True):
        hits = [Hit(products[pid], compat_to_unit(v, len(embs))) for pid, v in pairs if pid in products]
        out.append(SlotPicks(slot, _distinct_variants(hits)[:k]))
    return out


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


def _distinct_variants(hits: list[Hit]) -> list[Hit]:
    """Keep the best hit of each variant group (colour variants are alternatives of one product)."""
    seen: set[str] = set()
    out = []
    for h in hits:
        key = h.product.variant_group or f"pk-{h.product.pk}"
        if key not in seen:
            seen.add(key)
            out.append(h)
    return out


@dataclass
class Compatibility:
    """Compatibility of a set: mean pairwise score in [0, 1], the matrix and the weakest pair."""

    products: list[Product]
    score: float
    matrix: list[list[float]]
    weakest: tuple[int, int] | None
    suggestion: Hit | None = None


def outfit_compatibility(*, product_ids: Sequence[int], suggest: bool = True) -> Compatibility:
    """Score a set of 2..8 products: pair scores ``(1 + <f_i ⊙ m², f_j>) / 2`` and their mean.

    The weakest pair is the lowest off-diagonal entry; the suggested replacement is the best item of
    that pair's less compatible member's slot given all the others (one indexed query), never that
    item itself, and only when swapping it in raises the score (else ``suggestion`` is None).

    Raises:
        ValueError: fewer than 2 or more than 8 distinct products; UnknownProducts; NoActiveModel.
    """
    ids = list(dict.fromkeys(int(i) for i in product_ids))
    if not 2 <= len(ids) <= 8:
        raise ValueError(f"give 2 to 8 distinct product ids (got {len(ids)})")
    version = active_version()
    embs = _outfit_embeddings(version, ids)
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
            product_ids=others, k=1, slots=[embs[weaker].slot], exclude_ids=[ids[weaker]]
        )
        best = picks[0].hits[0] if picks and picks[0].hits else None
        # Only a swap that raises the outfit's score: the pick's mean pair score with the others must
        # beat the weaker item's (same [0, 1] scale), else the weaker item is already the best fit.
        if best is not None and best.score > float(np.nanmean(off[weaker])):
            suggestion = best
    return Compatibility(
        [products[i] for i in ids], score, mat.round(4).tolist(), (ids[wi], ids[wj]), suggestion
    )


@dataclass(frozen=True)
class IndexStatus:
    """Whether a product has its vectors for the active model version (``version_id`` None: no model)."""

    product_id: int
    version_id: int | None
    embedded: bool

    def as_dict(self) -> dict:
        return {"product_id": self.product_id, "version_id": self.version_id, "embedded": self.embedded}


def product_index_status(*, product_id: int) -> IndexStatus:
    """Is the product embedded for the active model version (searchable, recommendable)? One query each."""
    version_id = ModelVersion.objects.filter(is_active=True).values_list("pk", flat=True).first()
    embedded = version_id is not None and (
        ProductEmbedding.objects.filter(product_id=product_id, model_version_id=version_id).exists()
    )
    return IndexStatus(product_id=product_id, version_id=version_id, embedded=embedded)
