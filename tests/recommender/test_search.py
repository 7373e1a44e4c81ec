"""Text search on the real H&M slice: query understanding as filters, hybrid ranking in one statement,
SKU first, one product per variant group, removable chips, the JSON answer.

Each guard is checked against its own mechanism switched off in the same test (the chip switched off,
variant grouping off), so a test that could not fail would say so.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from catalog.models import Product
from recommender import search, selectors
from recommender.filters import Filters

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

LONG_SLEEVES = re.compile(r"\blong[- ]sleeve")
SLEEVES = re.compile(r"\bsleeves?\b")


def _type_word(product_type: str) -> str:
    return product_type.split("/")[0].lower()


def test_men_queries_return_only_menswear(trained_catalog):
    rows = Product.objects.values_list("product_type", "audience_group")
    men = Counter(t for t, g in rows if g == "men")
    others = Counter(t for t, g in rows if g != "men")
    type_ = max(
        (t for t in men if others[t] and not t.startswith(("Other", "Unknown"))), key=lambda t: men[t]
    )
    query = f"men {_type_word(type_)}"
    answer = search.product_search(query=query, k=24)
    assert answer.hits, query
    assert {h.product.audience_group for h in answer.hits} == {"men"}, query
    assert [c.label for c in answer.parsed.chips][:1] == ["for men"]
    plain = search.product_search(query=query, k=24, off=["audience"])  # the mechanism switched off
    assert {h.product.audience_group for h in plain.hits} - {"men"}, (
        "the slice cannot tell: pick another type"
    )


def test_without_sleeves_returns_no_item_whose_text_says_long_sleeves(trained_catalog):
    texts = [(p.product_type, p.text.lower()) for p in Product.objects.all()]
    long_ = Counter(t for t, x in texts if LONG_SLEEVES.search(x))
    bare = Counter(t for t, x in texts if not SLEEVES.search(x))
    type_ = max((t for t in long_ if bare[t]), key=lambda t: min(long_[t], bare[t]))
    query = f"{_type_word(type_)} without sleeves"
    answer = search.product_search(query=query, k=48)
    assert answer.hits, query
    said = [h.product.title for h in answer.hits if LONG_SLEEVES.search(h.product.text.lower())]
    assert said == [], (query, said)
    plain = search.product_search(query=query, k=48, off=["not:sleeves"])
    assert any(LONG_SLEEVES.search(h.product.text.lower()) for h in plain.hits), "the guard could not fail"


def test_without_sleeves_ranks_what_says_sleeveless_before_what_is_silent(trained_catalog):
    """A product that says "sleeveless" is a sure answer; one silent on sleeves (MANGO's texts never
    name them) only may be, and comes after."""
    texts = [(p.product_type, p.text.lower()) for p in Product.objects.all()]
    sure = Counter(t for t, x in texts if "sleeveless" in x)
    silent = Counter(t for t, x in texts if not SLEEVES.search(x) and "sleeveless" not in x)
    type_ = max((t for t in sure if silent[t]), key=lambda t: min(sure[t], silent[t]))
    for mode in ("hybrid", "lexical"):  # lexical: the word ranking alone, where the boost is
        answer = search.product_search(query=f"{_type_word(type_)} without sleeves", k=24, mode=mode)
        said = [h for h in answer.hits if "sleeveless" in h.product.text.lower()]
        assert len(said) == sure[type_] and len(answer.hits) > len(said), (mode, type_)
        assert answer.hits[: len(said)] == said, (mode, [h.product.title for h in answer.hits])


def test_a_sku_or_an_exact_title_ranks_first(trained_catalog):
    for product in Product.objects.order_by("?")[:3]:
        assert [h.product for h in search.product_search(query=product.sku, k=5).hits] == [product]
        first = search.product_search(query=product.title.upper(), k=5).hits[0].product
        assert first.title.lower() == product.title.lower()
    lettered = Product.objects.order_by("-id").first()
    Product.objects.filter(pk=lettered.pk).update(sku="MNG-41085800-02")  # a MANGO SKU (rolled back after)
    for typed in ("mng-41085800-02", "MNG-41085800-02"):  # as a shopper may type it
        assert [h.product for h in search.product_search(query=typed, k=5).hits] == [lettered], typed
    product = Product.objects.order_by("id").first()
    vector_only = selectors.text_search(query=product.sku, k=5)  # what the search did before
    assert [h.product for h in vector_only][:1] != [product]


def test_a_sku_answers_that_product_only_where_the_filters_allow_it(trained_catalog):
    """The shopper's explicit filters hold for the exact SKU match too, and a SKU brings no filler."""
    product = Product.objects.exclude(audience_group="").order_by("id").first()
    other = Product.objects.exclude(audience_group=product.audience_group).exclude(audience_group="")
    elsewhere = Filters(audience_group=other.values_list("audience_group", flat=True).first())
    answer = search.product_search(query=product.sku, k=24, filters=elsewhere)
    assert not answer.hits and answer.weak  # no other audience's items near its digits: "no close matches"
    mine = Filters(audience_group=product.audience_group)
    assert [h.product for h in search.product_search(query=product.sku, k=5, filters=mine).hits] == [product]


def test_one_product_per_variant_group_with_its_count(trained_catalog):
    groups = Counter(Product.objects.exclude(variant_group="").values_list("variant_group", flat=True))
    group, size = groups.most_common(1)[0]
    assert size >= 2, "the slice has no colour variants"
    title = Product.objects.filter(variant_group=group).first().title
    answer = search.product_search(query=title, k=24)
    seen = [h.product.variant_group for h in answer.hits if h.product.variant_group]
    assert len(seen) == len(set(seen)), seen
    hit = next(h for h in answer.hits if h.product.variant_group == group)
    assert hit.variants == size
    every = search.product_search(query=title, k=24, group_variants=False)  # grouping switched off
    assert sum(h.product.variant_group == group for h in every.hits) >= 2


def test_hybrid_is_one_statement_served_by_the_hnsw_and_gin_indexes(trained_catalog):
    words = Counter(
        w for p in Product.objects.all() for w in set(re.findall(r"[a-z]{7,}", p.description.lower()))
    )
    rare = sorted(w for w, n in words.items() if n == 1)[0]  # selective: the planner reads the GIN index
    with CaptureQueriesContext(connection) as ctx:
        search.product_search(query=rare, k=10)
    fused = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("WITH semantic AS")]
    assert len(fused) == 1 and "keyword AS" in fused[0] and "exact AS" in fused[0]
    with connection.cursor() as cur:
        cur.execute("ANALYZE catalog_product; ANALYZE recommender_productembedding")

    def plan(extra: str = "") -> str:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(search.search_settings_sql(100) + extra)
            cur.execute("EXPLAIN " + fused[0])
            return "\n".join(r[0] for r in cur.fetchall())

    assert "Index Scan using emb_fused_hnsw" in plan(), plan()
    # at 160 rows the planner may read the whole product table by its primary key instead (on the full
    # sample it takes the GIN index: docs/recommendations.md); without plain index scans it must be GIN
    assert "Bitmap Index Scan on product_search_gin" in plan("; SET LOCAL enable_indexscan = off")


def _fused_search(query: str) -> tuple[str, list[int]]:
    """The fused statement a search ran, and its hits' product ids."""
    with CaptureQueriesContext(connection) as ctx:
        ids = [h.product.pk for h in search.product_search(query=query, k=24).hits]
    return next(q["sql"] for q in ctx.captured_queries if q["sql"].startswith("WITH semantic AS")), ids


def _search_plan(sql: str) -> str:
    """EXPLAIN the fused statement under its own settings, without the ``(version, slot, audience)``
    B-tree (dropped, rolled back): on the slice's 160 rows the planner would read a slot's rows through it
    (at 100k it keeps to the graphs: test_serving's ``_plan``)."""
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("DROP INDEX IF EXISTS emb_version_slot_audience")
        cur.execute(search.search_settings_sql(100))
        cur.execute("EXPLAIN " + sql)
        return "\n".join(r[0] for r in cur.fetchall())


def test_a_selective_filter_ranks_exactly_with_the_same_answer(trained_catalog, settings):
    """A query whose type (or audience, colour) leaves few products ranks their vectors exactly instead
    of walking the HNSW graph past every product the filter rejects; the answer is the graph's."""
    type_ = Counter(Product.objects.values_list("product_type", flat=True)).most_common(1)[0][0]
    query = _type_word(type_)
    exact_sql, exact_ids = _fused_search(query)
    assert [c.kind for c in search.product_search(query=query, k=1).parsed.chips] == ["type"]
    assert "emb_fused_hnsw" not in _search_plan(exact_sql)
    settings.SEARCH_EXACT_MAX_ROWS = 0  # the mechanism switched off: the graph serves it (its slot's)
    graph_sql, graph_ids = _fused_search(query)
    assert re.search(r"Index Scan using emb_fused_(\w+_)?hnsw", _search_plan(graph_sql))
    assert exact_ids == graph_ids  # 160 rows: the graph's search is exact too


def test_a_type_in_one_slot_walks_that_slots_graph_with_the_same_answer(
    trained_catalog, settings, monkeypatch
):
    """Every product of an understood type in one slot: the vector ranking walks that slot's partial
    graph, not the whole table's (where the type is a few percent of the rows), and answers the same."""
    settings.SEARCH_EXACT_MAX_ROWS = 0  # the graphs, not the exact ranking of few rows
    type_ = Counter(Product.objects.values_list("product_type", flat=True)).most_common(1)[0][0]
    (slot,) = set(Product.objects.filter(product_type=type_).values_list("slot", flat=True))
    query = _type_word(type_)
    sql, ids = _fused_search(query)
    assert f"Index Scan using emb_fused_{slot}_hnsw" in _search_plan(sql), _search_plan(sql)
    monkeypatch.setattr(search, "_one_slot", lambda *args: None)  # the mechanism switched off
    whole_sql, whole_ids = _fused_search(query)
    assert "Index Scan using emb_fused_hnsw" in _search_plan(whole_sql), _search_plan(whole_sql)
    assert ids == whole_ids and ids


def test_nonsense_says_no_close_matches(trained_catalog, settings):
    answer = search.product_search(query="xyzzy plugh frobozz", k=10)
    assert answer.weak and answer.hits == []
    assert not search.product_search(query="black dress", k=10).weak
    # with the vector threshold off, no word the catalog knows is what says so (a model whose nonsense
    # matches score like real ones, as the two-catalog demo model's do, 0.35-0.49)
    settings.SEARCH_WEAK_COSINE = -1.0
    assert search.product_search(query="xyzzy plugh frobozz", k=10).weak
    assert not search.product_search(query="black dress", k=10).weak
    # an injection attempt's digits are no words ("1" is in many texts: "1 pack", "Size 1")
    assert search.product_search(query="' OR 1=1 --", k=10).weak
    assert not search.product_search(query="2 pack socks", k=10).weak


def test_a_misspelled_word_is_searched_as_the_catalog_word_it_is_closest_to(trained_catalog, client):
    answer = search.product_search(query="blak trowsers", k=10)
    assert answer.corrected == {"blak": "black", "trowsers": "trousers"}
    assert {c.label for c in answer.parsed.chips} == {"colour: black", "type: trousers"}
    assert answer.hits and all(h.product.product_type == "Trousers" for h in answer.hits)
    assert not answer.weak
    body = client.get("/api/search/", {"q": "blak trowsers"}).json()
    assert body["corrected"] == {"blak": "black", "trowsers": "trousers"} and body["results"]
    page = client.get("/search", {"q": "blak trowsers"}).content.decode()
    assert "Showing results for “black”, “trousers”" in page
    # a word of the catalog is never "corrected" (the slice's titles have "Tilly" and "Bobby")
    assert search.product_search(query="trousers", k=3).corrected == {}


def test_page_shows_understood_chips_that_remove_themselves(trained_catalog, client):
    men = Product.objects.filter(audience_group="men").values_list("product_type", flat=True)
    query = f"men {_type_word(Counter(men).most_common(1)[0][0])}"
    html = client.get("/search", {"q": query}).content.decode()
    assert "for men" in html and "score 0." not in html  # no raw scores for shoppers
    link = re.search(r'<a href="([^"]+)" class="chip-remove" aria-label="Remove “for men”"', html)
    assert link and "off=audience" in link.group(1)
    again = client.get(link.group(1).replace("&amp;", "&")).content.decode()
    assert "for men" not in again and "Results for" in again
    assert 'data-facet="colour"' in html  # facets with counts


def test_api_answer_keeps_its_fields_and_adds_understood_and_facets(trained_catalog, client):
    r = client.get("/api/search/", {"q": "men black trousers", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert {"page", "k", "next", "previous", "results"} <= set(body)
    assert {"understood", "facets", "no_close_matches"} <= set(body)
    assert {c["key"] for c in body["understood"]} >= {"audience", "colour"}
    assert {"product", "score", "variants"} <= set(body["results"][0])
    off = client.get("/api/search/", {"q": "men black trousers", "k": 5, "off": "audience"}).json()
    assert "audience" not in {c["key"] for c in off["understood"]}


def test_a_type_that_leaves_nothing_is_read_as_words_and_the_audience_holds(
    trained_catalog, client, settings
):
    """Two catalogs file the same garment under different types (MANGO's men-less "Jeans", H&M's men's
    jeans under "Trousers"): "men <a type only women have>" answers men's items and says so, instead of
    "Nothing found"."""
    rows = Product.objects.values_list("product_type", "audience_group")
    men = {t for t, g in rows if g == "men"}
    type_ = Counter(t for t, g in rows if g == "women" and t not in men and "/" not in t).most_common(1)[0][0]
    query = f"men {_type_word(type_)}"
    answer = search.product_search(query=query, k=10)
    assert [c.label for c in answer.relaxed] == [f"type: {_type_word(type_)}"], query
    assert answer.hits and {h.product.audience_group for h in answer.hits} == {"men"}
    html = client.get("/search", {"q": query}).content.decode()
    assert f"Nothing matched “type: {_type_word(type_)}”" in html and 'class="card-link"' in html
    body = client.get("/api/search/", {"q": query, "k": 5}).json()
    assert [c["key"] for c in body["relaxed"]] == ["type"] and body["results"]
    # the mechanism off: the filters leave nothing
    settings.SEARCH_RELAX = False
    assert search.product_search(query=query, k=10).hits == []


def test_facets_count_spellings_that_differ_only_in_case_as_one():
    assert search._facet_counts(["black", "Black", "black", "Dark Blue", None, ""]) == [
        ("black", 3),
        ("Dark Blue", 1),
    ]


@pytest.mark.parametrize("query", ["slim jeans"])
def test_what_says_every_free_word_ranks_first(trained_catalog, settings, query):
    """Hybrid: the products whose text has every free word ("slim" and "jeans" of "slim jeans", the
    type Trousers being a filter) come before those only the vector ranking finds close. (A word the
    type implies, "top" of "cotton top", is no term: :func:`search._implied`.)"""

    def says_all(hits, words) -> list[bool]:
        return [all(re.search(rf"\b{w}", h.product.text.lower()) for w in words) for h in hits]

    answer = search.product_search(query=query, k=20)
    flags = says_all(answer.hits, answer.parsed.terms)
    assert any(flags) and not all(flags), (query, flags)
    assert flags == sorted(flags, reverse=True), (query, flags)  # every True before every False
    settings.SEARCH_COVER_FIRST = False  # fused order only: what the vector finds close mixes in
    off = search.product_search(query=query, k=20)
    assert says_all(off.hits, off.parsed.terms) != sorted(says_all(off.hits, off.parsed.terms), reverse=True)


def test_a_large_catalogs_vocabulary_reads_a_sample_and_never_corrects_a_word_it_has(
    trained_catalog, monkeypatch
):
    """Above ``SPELLING_SAMPLE`` products the words come from a random sample, their counts scaled
    back; a word the sample missed but the full text has is kept as typed, not "corrected"."""
    from recommender import search_query

    def built() -> search_query.Vocabulary:  # not the cached one
        search_query.vocabulary_forget()
        return search_query.vocabulary_build()

    full = built()
    monkeypatch.setattr(search_query, "SPELLING_SAMPLE", 40)  # about a quarter of the slice's 160
    sampled = built()
    monkeypatch.undo()
    assert built() == full  # and the cache holds the whole catalog's again for the next tests
    assert 0 < len(sampled.words) < len(full.words)
    assert set(sampled.words) <= set(full.words)
    # words of the catalog the sample missed, that it would "correct" into one it has
    missed = [
        w for w in sorted(full.words - sampled.words) if sampled.correction(w) and search._in_full_text(w)
    ]
    assert missed, "the sample missed no correctable word: sample less"
    word = missed[0]
    assert search_query.spelling_corrected(word, sampled)[1] == {word: sampled.correction(word)}
    assert search_query.spelling_corrected(word, sampled, in_catalog=search._in_full_text)[1] == {}
    assert search_query.spelling_corrected("trowsers", sampled, in_catalog=search._in_full_text)[1] == {
        "trowsers": "trousers"
    }


@pytest.mark.parametrize(
    ("kind", "values", "words", "explicit", "implied"),
    [
        ("type", ("Trousers",), "trousers", {}, {"trousers"}),
        ("type", ("Dress",), "dresses", {}, {"dresses"}),
        ("type", ("Trousers", "Jeans"), "jeans", {}, set()),  # H&M files its jeans as Trousers
        ("type", ("Vest top", "Top"), "top", {}, {"top"}),
        ("colour", ("Black",), "black", {}, {"black"}),
        ("colour", ("Dark Blue",), "navy", {}, set()),
        ("type", ("Trousers",), "trousers", {"product_type": "Shorts"}, set()),  # the shopper's own choice
    ],
)
def test_a_word_the_understood_filter_implies_is_no_full_text_term(kind, values, words, explicit, implied):
    """Every product of type Trousers has "trousers" in its full text: as a term it would rank every one
    of them (16,000 at 100k products) for nothing; a word the values do not all say stays a term."""
    from recommender.search_query import Chip, ParsedQuery

    chip = Chip(key=kind, kind=kind, label="", values=values, words=words)
    parsed = ParsedQuery(text=words, chips=[chip], terms=[words], vector_text=words)
    assert search._implied(parsed, Filters(**explicit)) == implied


def test_a_query_of_only_understood_words_ranks_by_vector_within_its_filters(trained_catalog):
    colour, type_ = Counter(Product.objects.values_list("colour", "product_type")).most_common(1)[0][0]
    query = f"{colour} {type_}".lower()
    with CaptureQueriesContext(connection) as ctx:
        answer = search.product_search(query=query, k=10)
    fused = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("WITH semantic AS")]
    assert len(fused) == 1 and "keyword AS" not in fused[0]
    assert answer.hits and {(h.product.colour, h.product.product_type) for h in answer.hits} == {
        (colour, type_)
    }
    lexical = search.product_search(query=query, k=10, mode="lexical")  # ranks by its words still
    assert lexical.hits


def test_a_word_thousands_of_products_say_brings_none_into_the_full_text_ranking(
    trained_catalog, settings, monkeypatch
):
    """A frequent word ranks what the vector ranking (or a rarer word) brings, instead of every product
    that says it; the answer still puts what says every word first. (On the 160-product slice "frequent"
    is scaled down: words of more than 10 products.)"""
    from recommender import search_query

    words = Counter(
        w for p in Product.objects.all() for w in set(re.findall(r"[a-z]{5,}", p.description.lower()))
    )
    common = [w for w, n in words.most_common(40) if n > 10 and search_query.tokens(w) == [w]][:2]
    query = " ".join(common)
    monkeypatch.setattr(search_query, "FREQUENT_MIN_PRODUCTS", 1)
    search_query.vocabulary_forget()
    settings.SEARCH_KEYWORD_MAX_ROWS = 10

    def fused(query: str) -> tuple[str, search.SearchAnswer]:
        with CaptureQueriesContext(connection) as ctx:
            answer = search.product_search(query=query, k=10)
        return next(q["sql"] for q in ctx.captured_queries if q["sql"].startswith("WITH semantic AS")), answer

    sql, answer = fused(query)
    assert "SELECT id FROM semantic" in sql, query
    assert answer.hits and not answer.weak
    says = [all(w in h.product.text.lower() for w in common) for h in answer.hits]
    assert says == sorted(says, reverse=True) and says[0], (query, says)
    settings.SEARCH_KEYWORD_MAX_ROWS = 0  # the mechanism switched off
    assert "SELECT id FROM semantic" not in fused(query)[0]
    monkeypatch.undo()
    search_query.vocabulary_forget()


@pytest.mark.django_db
def test_a_slot_word_means_every_type_of_that_slot(trained_catalog):
    """ "shoes" is sneakers, boots and sandals, not only a type called Shoes; "bag" every kind of bag."""
    from recommender import search_query
    from recommender.models import ProductEmbedding
    from recommender.search_query import SLOT_WORDS

    search_query._LOCAL.clear()
    vocab = search_query.vocabulary_build()
    rows = ProductEmbedding.objects.filter(model_version=trained_catalog).values_list(
        "product__product_type", "slot"
    )
    for slot, words in SLOT_WORDS.items():
        want = {t for t, s in rows if s == slot and t and not t.lower().startswith(("other", "unknown"))}
        if not want:
            continue
        for word in words:
            assert want <= vocab.type[(word,)], (word, want - vocab.type.get((word,), frozenset()))
    answer = search.product_search(query="shoes", k=20)
    assert answer.hits and {h.product.slot for h in answer.hits} == {"shoes"}
    assert len({h.product.product_type for h in answer.hits}) > 1


def test_a_type_that_gives_way_keeps_to_its_slot(trained_catalog, monkeypatch):
    """ "men <a type only women have>" answers men's items of the type's slot (men's tops for a women's
    top type), not whatever men's items lie near the words."""
    rows = list(Product.objects.values_list("product_type", "audience_group", "slot"))
    men = {t for t, g, _ in rows if g == "men"}
    men_slots = Counter(s for _, g, s in rows if g == "men")
    slot_of = {t: s for t, _, s in rows}
    women_only = Counter(t for t, g, _ in rows if g == "women" and t not in men and "/" not in t)
    type_ = next(t for t, _ in women_only.most_common() if men_slots[slot_of[t]] >= 3)
    query = f"men {_type_word(type_)}"
    answer = search.product_search(query=query, k=24)
    assert [c.kind for c in answer.relaxed] == ["type"] and answer.hits, query
    assert {h.product.slot for h in answer.hits} == {slot_of[type_]}, query
    monkeypatch.setattr(search, "_slot_kept", lambda chips, filters, vocab: filters)  # the mechanism off
    plain = search.product_search(query=query, k=24)
    assert {h.product.slot for h in plain.hits} - {slot_of[type_]}, "the guard could not fail"
