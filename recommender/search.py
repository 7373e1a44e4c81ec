"""Text search for shoppers: query understanding, then full-text and vector rankings fused by reciprocal
rank fusion in one SQL statement, one product per variant group, facets.

One statement (pgvector-python's hybrid search example, ``examples/hybrid_search``):

* ``semantic``: the query's text vector against the products' fused vectors, ``ORDER BY fused <#> q
  LIMIT pool`` on the HNSW index (the settings of :func:`recommender.selectors.ranking_settings_sql`);
* ``keyword``: PostgreSQL full-text search on ``catalog_product.search_vector`` (weighted title and type
  A, colour B, description C, section and department D; GIN index), ranked by how many of the query's
  words a product matches, then ``ts_rank_cd``;
* ``exact``: a product whose SKU or whole title is the query, which always ranks first;
* ``score = Σ 1 / (60 + rank)`` over the rankings a product is in (Cormack, Clarke & Büttcher 2009,
  "Reciprocal rank fusion outperforms Condorcet and individual rank learning methods"), plus 1 for
  an exact match.

What the query says (:mod:`recommender.search_query`) filters both rankings inside the statement: its
audience group, colours and product types, and the colours, types and words it does not want. A
query of which nothing is understood and no word matches any product's text answers nothing and says
so (``weak``) when no word of it is one the catalog knows or its best vector match is below
``settings.SEARCH_WEAK_COSINE``. A word the catalog does not know is first searched as the closest one
it does (:func:`recommender.search_query.spelling_corrected`, in ``SearchAnswer.corrected``).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict, namedtuple
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields

import numpy as np
from django.conf import settings
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connections, transaction
from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    FloatField,
    IntegerField,
    OuterRef,
    Q,
    Value,
    When,
)
from django.db.models.expressions import RawSQL

from catalog.models import SEARCH_CONFIG, Product
from ml.diversity import first_of_each
from recommender.filters import Filters
from recommender.model_cache import embedder_for
from recommender.models import ModelVersion, ProductEmbedding
from recommender.replicas import read_alias
from recommender.search_probes import Probes, less_word, query_probes, says
from recommender.search_query import (
    Chip,
    ParsedQuery,
    Vocabulary,
    query_parse,
    spelling_corrected,
    tokens,
    vocabulary_build,
)
from recommender.selectors import (
    NoActiveModel,
    active_version,
    distance_expression,
    distance_order,
    ranking_settings_sql,
)

MODES = ("hybrid", "lexical", "vector")
#: The k of reciprocal rank fusion (the constant of Cormack et al. and of pgvector's example).
RRF_K = 60
#: Facets shown with counts, in order: (the parameter that filters on it, the product field).
FACETS = (("audience_group", "audience_group"), ("colour", "colour"), ("product_type", "product_type"))


@dataclass
class SearchHit:
    """A ranked product: its fused score (reciprocal-rank sum, 1+ for an exact SKU or title match) and
    how many products its variant group holds (1 without a group)."""

    product: Product
    score: float
    variants: int = 1


@dataclass
class SearchAnswer:
    """A search's hits, what was understood, whether the match is too weak to show, and facet counts
    (``{facet: [(value, count)]}`` over the ranked candidates, most frequent first)."""

    hits: list[SearchHit]
    parsed: ParsedQuery
    weak: bool = False
    facets: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    relaxed: list[Chip] = field(default_factory=list)
    corrected: dict[str, str] = field(default_factory=dict)  # misspelled word → the catalog word searched


def _conditions(parsed: ParsedQuery, filters: Filters, prefix: str = "") -> Q:
    """What the query understood, as one ``Q`` on products (``prefix="product__"`` from vector rows).

    An explicit filter of the same facet (the shopper's own choice) replaces the understood one.
    """
    q = Q()
    p = prefix
    if parsed.values("audience") and not (filters.audience or filters.audience_group):
        q &= Q(**{f"{p}audience_group__in": parsed.values("audience")})
    if parsed.values("colour") and not filters.colour:
        q &= Q(**{f"{p}colour__in": parsed.values("colour")})
    if parsed.values("type") and not filters.product_type:
        q &= Q(**{f"{p}product_type__in": parsed.values("type")})
    if parsed.values("not_colour"):
        q &= ~Q(**{f"{p}colour__in": parsed.values("not_colour")})
    if parsed.values("not_type"):
        q &= ~Q(**{f"{p}product_type__in": parsed.values("not_type")})
    for words in sorted(parsed.values("not_words")):
        less = says(less_word(words))  # "sleeveless" is no mention of sleeves
        q &= ~Q(**{f"{p}search_vector": says(words)}) | Q(**{f"{p}search_vector": less})
    return q


def _vector_sql(
    version: ModelVersion,
    query: np.ndarray,
    where: Q,
    filters: Filters,
    pool: int,
    *,
    among: list[int] | None = None,
    probes: Probes | None = None,
):
    """The vector ranking: the ``pool`` products closest to ``query`` among those ``where`` and
    ``filters`` allow; from the HNSW index, or, given ``among`` (exactly those products, few), by
    computing their distances and sorting (``product_id = ANY(...)`` read by the ``(product, version)``
    index; :func:`recommender.selectors.distance_order`). ``probes`` leave out the rows whose photo
    shows a negated word (:mod:`recommender.search_probes`)."""
    if among is not None:  # exactly the products allowed: no filter to evaluate again
        qs = ProductEmbedding.objects.filter(model_version=version, product_id__in=among)
    else:
        qs = filters.apply(ProductEmbedding.objects.filter(model_version=version).filter(where))
    if probes is not None:
        qs = qs.filter(probes.vector_rows_q())
    qs = qs.annotate(d=distance_expression("fused", query)).order_by(distance_order(exact=among is not None))
    return qs.values_list("product_id", "d")[:pool].query.sql_with_params()


def _few_products(parsed: ParsedQuery, filters: Filters) -> list[int] | None:
    """Every product what the query says (its audience, colours, types and negations) and the shopper's
    filters allow, when they are at most ``settings.SEARCH_EXACT_MAX_ROWS``; else None.

    Ranking that few exactly is cheaper than an HNSW scan that must walk past every product the filter
    rejects (pgvector's README, "Filtering"): "women shirt without sleeves" leaves a few dozen of
    100,000, and the scan stopped at ``hnsw.max_scan_tuples``. Only asked when something narrows the
    catalog; the planner's row estimate (``EXPLAIN``, no execution) first rules out a filter that leaves
    far more, then one bounded query (``LIMIT``) fetches the ids. (A larger limit for negated queries,
    whose vector cannot steer the scan, measured slower at 100k: exact ranking costs ~8 µs a row.)
    """
    limit = int(settings.SEARCH_EXACT_MAX_ROWS)
    if limit <= 0 or not _narrows(parsed, filters):
        return None
    qs = Product.objects.filter_facets(**_facet_values(filters)).filter(_conditions(parsed, filters))
    qs = qs.order_by().values_list("id", flat=True)
    if json.loads(qs.explain(format="json"))[0]["Plan"]["Plan Rows"] > 3 * limit:
        return None
    ids = list(qs[: limit + 1])
    return ids if len(ids) <= limit else None


def _one_slot(parsed: ParsedQuery, filters: Filters, vocab: Vocabulary | None) -> str | None:
    """The one slot whose vector rows hold every product of the understood types, when the shopper chose
    no slot or type: the vector ranking then walks that slot's partial HNSW graph (migration 0004) instead
    of the whole table's, where a type is a few percent of the rows and the scan walks past the rest
    ("sleeveless top" at 100k: 2,172 rows visited for 100). The same rows pass either way. None when a
    type has no vector rows yet or the types span slots."""
    if vocab is None or filters.slot or filters.product_type:
        return None
    return vocab.slot_of(parsed.values("type"))


def _narrows(parsed: ParsedQuery, filters: Filters) -> bool:
    """Does the query (a chip: audience, colour, type, a negation) or a shopper's filter narrow the
    catalog?"""
    return bool(parsed.chips) or any(v not in (None, "") for v in _facet_values(filters).values())


def _keyword_sql(
    terms: list[str],
    where: Q,
    filters: Filters,
    version: ModelVersion | None,
    pool: int,
    *,
    require: bool,
    frequent: Iterable[str] = (),
    semantic: bool = False,
    probes: Probes | None = None,
):
    """The full-text ranking: products matching any term (every product passing ``where`` unless
    ``require``), by matched terms then ``ts_rank_cd``; the ``pool`` best, as ``(id, m, r)`` rows.

    With ``require``, a term in ``frequent`` (one that thousands of products say: "cotton") brings no
    product by itself: the candidates are those matching another term, or, when every term is
    frequent and ``semantic``, the vector ranking's own (the ``semantic`` CTE of :func:`_fused`);
    frequent terms still count in ``m`` and ``ts_rank_cd``. Ranking every product that says "cotton"
    costs more than the answer can use: the vector ranking brings the closest of them anyway.
    """
    unique = list(dict.fromkeys(terms))
    queries = [SearchQuery(t, config=SEARCH_CONFIG) for t in unique]
    qs = Product.objects.filter_facets(**_facet_values(filters)).filter(where)
    frequent = set(frequent)
    rare = [sq for t, sq in zip(unique, queries, strict=True) if t not in frequent]
    if require and queries and rare and len(rare) < len(queries):
        bring = rare[0]
        for sq in rare[1:]:
            bring = bring | sq
        qs = qs.filter(search_vector=bring)
    elif require and queries and not rare and semantic:
        qs = qs.filter(id__in=RawSQL("SELECT id FROM semantic", ()))
    if version is not None:  # only what the active model serves
        qs = qs.filter(Exists(ProductEmbedding.objects.filter(product=OuterRef("pk"), model_version=version)))
        if probes is not None:  # and whose photo shows no negated word (or whose text says its "-less")
            qs = qs.filter(probes.products_q(version))
    if not queries:  # nothing but understood words ("men"): what the filters allow, in catalog order
        qs = qs.annotate(m=Value(0), r=Value(0.0, output_field=FloatField()))
        return qs.order_by("id").values_list("id", "m", "r")[:pool].query.sql_with_params()
    anyq, allq = queries[0], queries[0]
    for sq in queries[1:]:
        anyq, allq = anyq | sq, allq & sq
    rank = SearchRank(F("search_vector"), anyq, cover_density=True)
    matched = sum(
        (
            Case(When(search_vector=sq, then=Value(1)), default=Value(0), output_field=IntegerField())
            for sq in queries
        ),
        Value(0),
    )
    if not require:
        qs = qs.annotate(m=matched, r=rank)
        return qs.order_by("-m", "-r", "id").values_list("id", "m", "r")[:pool].query.sql_with_params()
    # the same order (matched terms, then rank) in two parts: what matches every term, by rank, then the
    # rest; the outer LIMIT stops before the second part runs when the first fills the pool, so a query
    # of common words ("wide trousers": 16,000 trousers at 100k) does not rank every partial match
    every = qs.filter(search_vector=allq).annotate(m=Value(len(queries)), r=rank)
    sql, params = every.order_by("-r", "id").values_list("id", "m", "r")[:pool].query.sql_with_params()
    if len(queries) == 1:
        return sql, params
    some = qs.filter(search_vector=anyq).exclude(search_vector=allq).annotate(m=matched, r=rank)
    sql2, params2 = some.order_by("-m", "-r", "id").values_list("id", "m", "r")[:pool].query.sql_with_params()
    return f"SELECT * FROM (({sql}) UNION ALL ({sql2})) kw LIMIT {int(pool)}", (*params, *params2)


def _implied(parsed: ParsedQuery, filters: Filters) -> set[str]:
    """The query's words that its understood type or colour filter already implies: a word of the chip's
    own phrase that is a word of every catalog value it filters on ("trousers" for the type Trousers,
    "black" for the colour Black; not "jeans" for Trousers). The value is in every such product's full
    text (``search_vector`` holds type and colour), so the word cannot rank them. A facet the shopper
    chose explicitly replaces the chip (:func:`_conditions`): nothing is implied then."""
    explicit = {"type": filters.product_type, "colour": filters.colour}
    implied: set[str] = set()
    for chip in parsed.chips:
        if chip.kind not in explicit or explicit[chip.kind]:
            continue
        values = [set(tokens(v)) for v in chip.values]
        for word in tokens(chip.words):
            forms = {word, word.removesuffix("s"), word.removesuffix("es"), f"{word}s", f"{word}es"}
            if values and all(forms & v for v in values):
                implied.add(word)
    return implied


def _facet_values(filters: Filters) -> dict:
    return {f.name: getattr(filters, f.name) for f in dataclass_fields(filters)}


def _exact_sql(text: str, filters: Filters):
    """Products whose SKU or whole title (any case: the ``UPPER(title)`` index) is the query, among
    those the shopper's explicit ``filters`` allow (what the query itself seems to say does not apply:
    a title is no description)."""
    exact = Product.objects.filter(Q(sku__in=_sku_spellings(text)) | Q(title__iexact=text))
    qs = exact.filter_facets(**_facet_values(filters)).order_by()  # no sort: a BitmapOr
    return qs.values_list("id")[:5].query.sql_with_params()


#: One word with a digit in it: what a SKU looks like ("0316085001", "MNG-17064036").
_IDENTIFIER = re.compile(r"[\w-]*\d[\w-]*")


def _sku_spellings(text: str) -> list[str]:
    """The query as typed and in capitals: a shopper types "mng-41085800-02" for MANGO's
    "MNG-41085800-02" (both probe the SKU's unique index, unlike a case-folded comparison)."""
    return list(dict.fromkeys([text, text.upper()]))


def _names_a_sku(text: str) -> bool:
    """Is the query exactly some product's SKU (as typed or in capitals; whatever the filters)? One
    index probe, only for a query shaped like one."""
    return bool(_IDENTIFIER.fullmatch(text)) and Product.objects.filter(sku__in=_sku_spellings(text)).exists()


def _in_full_text(word: str) -> bool:
    """Does any product's full text (``search_vector``, the GIN index) match ``word``?"""
    return Product.objects.filter(search_vector=SearchQuery(word, config=SEARCH_CONFIG)).exists()


def _fused(parts: list[tuple[str, str, tuple]], limit: int, cover: int = 0) -> tuple[str, list]:
    """The one statement: each part's ranking numbered, ``Σ 1/(RRF_K + rank)`` per product, plus
    ``1/RRF_K`` for a product whose full-text match covers ``cover`` or more of the query's words (when
    ``cover`` > 0): it then ranks before every product that covers fewer (no single ranking gives more
    than ``1/(RRF_K + 1)``), in fused order among them."""
    ctes, unions, params = [], [], []
    for name, sql, p in parts:
        params.extend(p)
        if name == "semantic":
            ctes.append(
                f"semantic AS (SELECT product_id AS id, d, ROW_NUMBER() OVER (ORDER BY d) AS r FROM ({sql}) s)"
            )
            unions.append(f"SELECT id, 1.0 / ({RRF_K} + r) AS score, -d AS cos, 0 AS lex FROM semantic")
        elif name == "keyword":
            ctes.append(
                f"keyword AS (SELECT id, m, ROW_NUMBER() OVER (ORDER BY m DESC, r DESC, id) AS r FROM ({sql}) k)"
            )
            unions.append(
                f"SELECT id, 1.0 / ({RRF_K} + r) AS score, NULL::float AS cos, m AS lex FROM keyword"
            )
        else:
            ctes.append(f"exact AS ({sql})")
            unions.append("SELECT id, 1.0 AS score, NULL::float AS cos, 0 AS lex FROM exact")
    body = " UNION ALL ".join(unions)
    bonus = f" + CASE WHEN MAX(lex) >= {int(cover)} THEN 1.0 / {RRF_K} ELSE 0 END" if cover > 0 else ""
    sql = (
        f"WITH {', '.join(ctes)} SELECT id, SUM(score){bonus} AS score, MAX(cos) AS cos, MAX(lex) AS lex "
        f"FROM ({body}) u GROUP BY id ORDER BY score DESC, id LIMIT {int(limit)}"
    )
    return sql, params


def search_settings_sql(pool: int) -> str:
    """The ``SET LOCAL`` statements of the fused statement: the vector rankings' own
    (:func:`recommender.selectors.ranking_settings_sql`, so the ``semantic`` part is an HNSW index scan),
    with bitmap scans allowed again: a GIN index is only ever read by a bitmap scan, and the vector part
    still cannot use one (sorts stay off, and only the HNSW scan yields rows in distance order).

    The vector part's filtered scan stops after ``settings.SEARCH_MAX_SCAN_TUPLES`` graph tuples: past
    a negation the query vector cannot steer ("sleeveless top": most tops near it mention sleeves) it
    would otherwise walk thousands of rows to fill its pool, while the full-text part already brings
    what says the wanted word. It then gives fewer rows, never others."""
    budget = int(settings.SEARCH_MAX_SCAN_TUPLES)
    return ranking_settings_sql("search", pool, max_scan_tuples=budget) + "; SET LOCAL enable_bitmapscan = on"


def product_search(
    *,
    query: str,
    k: int = 24,
    filters: Filters | None = None,
    off: Iterable[str] = (),
    mode: str = "hybrid",
    understand: bool = True,
    group_variants: bool = True,
) -> SearchAnswer:
    """Search the catalog as a shopper types (see the module docstring).

    Args:
        query: free text, a SKU or a title.
        k: how many hits (after variant grouping).
        filters: the shopper's explicit filters (they replace what the query says of the same facet).
        off: chip keys (:class:`recommender.search_query.Chip`) the shopper switched off.
        mode: ``hybrid`` (default), ``lexical`` (full text only: needs no model) or ``vector``.
        understand: read audience, colour, type and negations from the query (False: plain text).
        group_variants: one product per variant group, its best-ranked one.

    Returns:
        A :class:`SearchAnswer`. When what was understood leaves nothing (one catalog's type "Jeans"
        with another's men's denim filed as "Trousers"), the type, then the colour, is read as plain
        words instead and named in ``relaxed``; the audience always holds.

    Raises:
        ValueError: empty query or unknown mode; NoActiveModel (hybrid and vector modes).
    """
    text = query.strip()
    if not text:
        raise ValueError("query must not be empty")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (got {mode!r})")
    vocab, corrected = None, {}
    if understand:  # once for every pass below: the relaxation changes the chips, not the words
        vocab = vocabulary_build()
        text, corrected = spelling_corrected(text, vocab, in_catalog=_in_full_text)
    answer = _search(text, k, filters, off, mode, vocab, group_variants)
    relaxed: list[Chip] = []
    for kind in RELAXABLE if settings.SEARCH_RELAX else ():
        chips = [c for c in answer.parsed.chips if c.kind == kind]
        if answer.hits or answer.weak or not chips:
            continue
        relaxed += chips
        off = [*off, *(c.key for c in chips)]
        kept = _slot_kept(chips, filters, vocab) if kind == "type" else filters  # men's tops, not trousers
        answer = _search(text, k, kept, off, mode, vocab, group_variants)
        if kept is not filters and not answer.hits:  # nothing of its kind either ("men dress"): any kind
            answer = _search(text, k, filters, off, mode, vocab, group_variants)
    answer.relaxed = relaxed if answer.hits else []
    answer.corrected = corrected
    return answer


def _slot_kept(chips: list[Chip], filters: Filters | None, vocab: Vocabulary | None) -> Filters | None:
    """``filters`` with the one slot of the relaxed type chips' types (the shopper chose no slot or type):
    a type that gives way keeps to its kind of garment. ``filters`` itself when there is none."""
    chosen = filters is not None and bool(filters.slot or filters.product_type)
    slot = None if vocab is None or chosen else vocab.slot_of(t for c in chips for t in c.values)
    return replace(filters or Filters(), slot=slot) if slot else filters


#: Chip kinds read as plain words when, as filters, they leave no product: the least certain first.
RELAXABLE: tuple[str, ...] = ("type", "colour")


def _search(
    text: str,
    k: int,
    filters: Filters | None,
    off: Iterable[str],
    mode: str,
    vocab: Vocabulary | None,
    group_variants: bool,
) -> SearchAnswer:
    """One pass of :func:`product_search` on the (corrected) ``text``, with the chips in ``off`` read as
    plain words; ``vocab`` None: nothing is understood."""
    filters = filters or Filters()
    if vocab is not None:
        parsed = query_parse(text, vocab=vocab, off=off)
    else:
        parsed = ParsedQuery(text=text, terms=tokens(text), vector_text=text)
    # a SKU names one product: the answer is that product where the shopper's filters allow it, not what
    # a vector or the full text of its digits happen to lie near (nothing, said so, where they do not)
    sku = mode != "vector" and _names_a_sku(text)
    version = active_version() if mode != "lexical" and not sku else None
    pool = int(settings.SEARCH_POOL)  # never k's: page 2 must continue the very ranking of page 1
    parts = []
    # negated words that the photos tell (recommender.search_probes): "without sleeves"
    probes = query_probes(parsed.values("not_words"), version) if settings.SEARCH_PHOTO_NEGATION else None
    if mode != "lexical" and not sku:
        q = embedder_for(version).embed_query_text(parsed.vector_text)
        where = _conditions(parsed, filters, "product__")
        slot = _one_slot(parsed, filters, vocab)
        if slot is not None:
            where &= Q(slot=slot)
        among = _few_products(parsed, filters)
        vpool = min(pool, int(settings.SEARCH_VECTOR_POOL)) if _narrows(parsed, filters) else pool
        if among != []:  # [] : what the query says leaves no product, nothing to rank
            vector = _vector_sql(version, q, where, filters, vpool, among=among, probes=probes)
            parts.append(("semantic", *vector))
    positive = any(c.kind in ("audience", "colour", "type") for c in parsed.chips)
    # hybrid: a word the understood type or colour filter implies ("trousers" with type Trousers) ranks
    # nothing among what that filter allows, and matching it would rank every trouser
    implied = _implied(parsed, filters) if mode == "hybrid" else set()
    free = [t for t in parsed.terms if t not in implied]
    if mode != "vector" and not sku and (free or (mode == "lexical" and positive)):
        # lexical-only with an understood audience, colour or type ranks every product they allow
        require = mode == "hybrid" or not positive
        where = _conditions(parsed, filters)
        # a product that says "sleeveless" is known to have none; one silent on sleeves may have them
        terms = free + [less_word(w) for w in sorted(parsed.values("not_words")) if " " not in w]
        limit = int(settings.SEARCH_KEYWORD_MAX_ROWS)
        frequent = [t for t in terms if vocab is not None and limit and vocab.products_with(t) > limit]
        semantic = any(name == "semantic" for name, *_ in parts)
        sql, params = _keyword_sql(
            terms, where, filters, version, pool, require=require, frequent=frequent, semantic=semantic,
            probes=probes,
        )  # fmt: skip
        parts.append(("keyword", sql, params))
    if mode != "vector":
        parts.append(("exact", *_exact_sql(text, filters)))
    # hybrid: what says every free word of the query ranks first ("sports leggings": leggings that say
    # sport before those the vector ranking finds close)
    cover = len(set(free)) if mode == "hybrid" and settings.SEARCH_COVER_FIRST else 0
    rows: list[tuple] = []  # (id, score, cos, lex)
    if parts:
        sql, params = _fused(parts, 2 * pool + 5, cover)  # all of the union: grouping and facets need it
        alias = read_alias(Product)  # a replica in a shopper's request (recommender.replicas)
        with transaction.atomic(using=alias), connections[alias].cursor() as cur:
            cur.execute(search_settings_sql(pool))
            cur.execute(sql, params)
            rows = cur.fetchall()
    # a lexical match counts when it covers half the query's words ("lorem ipsum dolor" matching
    # "Dolores" does not), or a SKU or title matched exactly
    said = [t for t in parsed.terms if not (t.isdigit() and len(t) < 3)]  # "' OR 1=1 --": "1" says nothing
    need = (len(set(said)) + 1) // 2
    lexical = bool(said) and any((lex or 0) >= max(need, 1) for *_, lex in rows)
    lexical = lexical or any(score >= 1 for _, score, *_ in rows)
    best = max((cos for _, _, cos, _ in rows if cos is not None), default=None)
    # no word the catalog knows (nor a misspelling of one), or a vector match too weak: no close matches
    unknown = vocab is not None and not any(vocab.known(w) for w in said)
    weak = (sku and not rows) or (
        mode == "hybrid"
        and not parsed.chips
        and not lexical
        and (unknown or best is None or best < settings.SEARCH_WEAK_COSINE)
    )
    if weak:
        return SearchAnswer(hits=[], parsed=parsed, weak=True)
    # grouping and facets need four short columns of every candidate; whole rows only for the page
    light = {
        r[0]: _Light(*r[1:])
        for r in Product.objects.filter(pk__in=[r[0] for r in rows])
        .order_by()
        .values_list("id", "variant_group", *(attr for _, attr in FACETS))
    }
    ranked = [(pid, light[pid], float(score)) for pid, score, _, _ in rows if pid in light]
    if group_variants:
        ranked = first_of_each(ranked, lambda r: r[1].variant_group or f"#{r[0]}")  # best of each group
    page = ranked[:k]
    products = Product.objects.in_bulk([pid for pid, _, _ in page])
    page = [(products[pid], score) for pid, _, score in page if pid in products]
    counts = variant_counts([p for p, _ in page]) if group_variants else {}
    hits = [SearchHit(p, s, counts.get(p.variant_group, 1)) for p, s in page]
    facets = {name: _facet_counts(getattr(row, attr) for _, row, _ in ranked) for name, attr in FACETS}
    return SearchAnswer(hits=hits, parsed=parsed, facets=facets)


#: What grouping and facets read of a candidate product: its variant group and the facets' fields.
_Light = namedtuple("_Light", ["variant_group", *(attr for _, attr in FACETS)])


def _facet_counts(values: Iterable[str | None]) -> list[tuple[str, int]]:
    """``[(value, count)]``, most frequent first, spellings that differ only in case counted as one (two
    catalogs' "black" and "Black"; the filters match either) under their most common spelling."""
    spellings: dict[str, Counter] = defaultdict(Counter)
    for v in values:
        if v:
            spellings[v.casefold()][v] += 1
    merged = [(c.most_common(1)[0][0], sum(c.values())) for c in spellings.values()]
    return sorted(merged, key=lambda vc: -vc[1])


def variant_counts(products: list[Product]) -> dict[str, int]:
    """``{variant_group: products in it}`` of the given products' groups (one query)."""
    groups = {p.variant_group for p in products if p.variant_group}
    rows = Product.objects.filter(variant_group__in=groups).values("variant_group").annotate(n=Count("id"))
    return {r["variant_group"]: r["n"] for r in rows}


__all__ = ["MODES", "SearchAnswer", "SearchHit", "product_search", "NoActiveModel"]
