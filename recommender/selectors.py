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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import connections, transaction
from django.db.models import ExpressionWrapper, F, FloatField, QuerySet, Value
from django.db.models.expressions import RawSQL
from pgvector.django import MaxInnerProduct

from catalog.models import Product
from ml.diversity import first_of_each, mmr
from recommender.filters import Filters
from recommender.model_cache import embedder_for
from recommender.models import ModelVersion, ProductEmbedding
from recommender.replicas import read_alias

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
    return ranked_many([(qs, query)], column, k, kind=kind, vectors=vectors)[0]


def distance_order(*, exact: bool = False):
    """What a ranking orders by: the annotated distance ``d`` (the HNSW index serves ``ORDER BY d``),
    or with ``exact`` ``d + 0``, no index's expression, so the planner computes the distance of every
    row the filter allows and sorts them (for a filter that leaves few rows)."""
    return ExpressionWrapper(F("d") + Value(0.0), output_field=FloatField()) if exact else F("d")


def ranking_settings_sql(kind: str, k: int, *, max_scan_tuples: int | None = None) -> str:
    """The ``SET LOCAL`` statements of a ranking transaction (:func:`_ranked`), as one string (one round
    trip; integers and a validated setting, nothing to quote). ``max_scan_tuples``: the most tuples a
    filtered iterative scan visits (default ``settings.HNSW_MAX_SCAN_TUPLES``)."""
    budget = settings.HNSW_MAX_SCAN_TUPLES if max_scan_tuples is None else max_scan_tuples
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
        f"SET LOCAL hnsw.max_scan_tuples = {int(budget)}",
        # a ranking reads at most a few thousand rows: starting parallel workers costs more than that
        "SET LOCAL max_parallel_workers_per_gather = 0",
    ]
    return "; ".join(sets)


def ranked_many(
    jobs: Sequence[tuple[QuerySet, np.ndarray]],
    column: str,
    k: int,
    *,
    kind: str,
    vectors: bool = False,
    extra: Sequence[str] = (),
    exact: Sequence[bool] = (),
) -> list[list[tuple]]:
    """Several rankings (one per ``(queryset, query)``) in one transaction with one set of HNSW
    settings (:func:`_ranked`), so complete-the-look pays the round trips once, not once per slot.

    ``exact[i]`` true: job ``i`` is ranked exactly (:func:`distance_order`), for a filter that leaves
    few rows, where an iterative HNSW scan would walk past many it rejects.

    Returns:
        Per job, ``[(product_id, inner_product, *extra)]`` best first (``extra``: more columns of the
        row, e.g. ``hub_score``), or ``[(product_id, inner_product, vector)]`` with ``vectors=True``.
    """
    assert not (vectors and extra), "vectors or extra columns, not both"
    out: list[list[tuple]] = []
    alias = read_alias(ProductEmbedding)  # a replica in a shopper's request: settings and queries on it
    with transaction.atomic(using=alias), connections[alias].cursor() as cur:
        cur.execute(ranking_settings_sql(kind, k))
        fields = ("product_id", "d", column) if vectors else ("product_id", "d", *extra)
        for i, (qs, query) in enumerate(jobs):
            rows = (
                qs.using(alias)
                .annotate(d=distance_expression(column, query))
                .order_by(distance_order(exact=i < len(exact) and exact[i]))
                .values_list(*fields)[:k]
            )
            if vectors:
                ranked = [(pid, -float(d), np.asarray(v, dtype=np.float32)) for pid, d, v in rows]
            else:
                ranked = [(pid, -float(d), *rest) for pid, d, *rest in rows]
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


@dataclass(frozen=True)
class PhotoAnswer:
    """Photo search results: ``hits`` best first; ``product_type``, the best match's product type when its
    items were ranked first (None when that was off, a type filter was given, or nothing matched)."""

    hits: list[Hit]
    product_type: str | None = None


def photo_search(
    *,
    image,
    k: int = 24,
    filters: Filters | None = None,
    type_first: bool = True,
    group_variants: bool = False,
) -> PhotoAnswer:
    """Search by a shopper's photo (a PIL image): nearest products by image vector.

    With ``type_first`` the products of the best match's product type come first (each group in
    similarity order), then the rest: a phone photo's nearest catalog photos drift to other kinds of
    garment after the first few, while the very best match usually has the right kind (the same
    re-ranking as ``ml.photo_robustness.type_vote`` with k = 1, chosen on validation products' phone
    photos; docs/evaluation.md#photo-search-on-phone-photos). The best match itself never moves.
    With ``group_variants`` (the search page), one product per variant group, its best-ranked one, from
    3 k candidates: a photo's colour variants look alike and would fill the page.

    Raises:
        NoActiveModel.
    """
    version = active_version()
    q = embedder_for(version).embed_query_image(image)
    filters = filters or Filters()
    qs = filters.apply(ProductEmbedding.objects.filter(model_version=version))
    n = 3 * k if group_variants else k

    def answer(hits: list[Hit], guess: str | None = None) -> PhotoAnswer:
        if group_variants:  # colour variants look alike: the best-ranked of each group
            hits = first_of_each(hits, lambda h: h.product.variant_group or f"#{h.product.pk}")
        return PhotoAnswer(hits[:k], guess)

    hits = _hits(_ranked(qs, "image", q, n, kind="photo"))
    guess = hits[0].product.product_type if hits else ""
    if not type_first or filters.product_type or not guess:
        return answer(hits)
    if all(h.product.product_type == guess for h in hits):  # already in that order (always so for k = 1)
        return answer(hits, guess)
    same = _hits(_ranked(qs.filter(product__product_type=guess), "image", q, n, kind="photo"))
    ids = {h.product.pk for h in same}
    return answer(same + [h for h in hits if h.product.pk not in ids], guess)


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
