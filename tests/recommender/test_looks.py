"""Complete-the-look and the swap keep to the outfit's audience and are re-ranked for hubness, on the
trained slice of the real H&M sample (160 articles: 140 women's, 15 men's, 5 kids')."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from catalog.models import Outfit, OutfitItem, Product
from catalog.selectors import product_audience_group
from ml.hubness import k_occurrence
from ml.slots import SLOT_INDEX
from recommender import hubness, looks, model_cache, selectors
from recommender.models import ProductEmbedding

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _model_ranking_only(settings):
    """These tests check the model's rankings (the audience filter, exact paths, hub offsets): the
    outfit memory's lifted picks are off unless a test turns them on (the last tests)."""
    settings.LOOKS_MEMORY_PICKS = 0


def _group(p: Product) -> str:
    return product_audience_group(product=p)


def _first(group: str, slot: str) -> Product:
    return next(
        p
        for p in Product.objects.filter(slot=slot).exclude(product_type__iexact="unknown").order_by("pk")
        if _group(p) == group
    )


def _pick_groups(picks: list[looks.SlotPicks]) -> list[str]:
    return [_group(h.product) for sp in picks for h in sp.hits]


def test_audience_filter_is_the_fits_table():
    assert looks.audience_filter(["men"]) == ["men", "unisex"]
    assert looks.audience_filter(["kids"]) == ["kids", "unisex"]
    assert looks.audience_filter(["baby"]) == ["baby", "unisex"]
    assert looks.audience_filter(["men", "unisex"]) == ["men", "unisex"]
    assert looks.audience_filter(["men", "women"]) == ["unisex"]
    assert looks.audience_filter(["unisex"]) is None


def test_vector_rows_carry_their_products_audience_group(trained_catalog):
    rows = ProductEmbedding.objects.filter(model_version=trained_catalog).select_related("product")
    assert all(e.audience_group == _group(e.product) for e in rows)
    assert Counter(e.audience_group for e in rows) == {"women": 140, "men": 15, "kids": 5}


def test_menswear_gets_no_womens_or_kids_items_unless_the_toggle_is_off(trained_catalog):
    shirt = _first("men", "top")
    picks = looks.complete_the_look(product_ids=[shirt.pk], k=4)
    assert set(_pick_groups(picks)) == {"men"}  # the slice has no unisex item
    # every men's bottom of the slice, colour variants once: the filter inside the index loses none
    men_bottoms = {p.variant_group for p in Product.objects.filter(slot="bottom") if _group(p) == "men"}
    bottoms = next(sp for sp in picks if sp.slot == "bottom").hits
    assert len(bottoms) == len(men_bottoms) == 2
    assert {h.product.variant_group for h in bottoms} == men_bottoms
    mixed = looks.complete_the_look(product_ids=[shirt.pk], k=4, audience="any")
    others = [g for g in _pick_groups(mixed) if g != "men"]
    assert len(others) >= 5 and set(others) <= {"women", "kids"}, others


def test_a_slot_the_audience_leaves_few_rows_in_is_ranked_exactly_with_the_same_picks(
    trained_catalog, settings
):
    """Men's items of a slot are few (15 of the slice's 160): the slot is ranked exactly, through the
    (version, slot, audience) B-tree, not by walking the slot's HNSW graph past the women's rows."""
    shirt = _first("men", "top")

    def run() -> tuple[list[list[int]], list[str]]:
        with CaptureQueriesContext(connection) as ctx:
            picks = looks.complete_the_look(product_ids=[shirt.pk], k=4)
        sqls = [
            q["sql"] for q in ctx.captured_queries if '"compat" <#>' in q["sql"] and "ORDER BY" in q["sql"]
        ]
        return [[h.product.pk for h in sp.hits] for sp in picks], sqls

    def plan(sql: str) -> str:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(selectors.ranking_settings_sql("complete", 100))
            cur.execute("EXPLAIN " + sql)
            return "\n".join(r[0] for r in cur.fetchall())

    exact_picks, exact_sqls = run()
    assert exact_sqls and all("_hnsw" not in plan(s) for s in exact_sqls)
    settings.LOOKS_EXACT_MAX_ROWS = 0  # the mechanism switched off: each slot's graph
    graph_picks, graph_sqls = run()
    assert any("_hnsw" in plan(s) for s in graph_sqls)  # (the planner may take the B-tree for a 1-row slot)
    assert exact_picks == graph_picks  # on 160 rows the graphs' answers are exact too


@pytest.mark.parametrize("group", ["women", "kids"])
def test_womens_and_kids_items_get_their_own_audience(trained_catalog, group):
    top = _first(group, "top")
    got = _pick_groups(looks.complete_the_look(product_ids=[top.pk], k=4))
    assert got and set(got) == {group}
    if group == "kids":  # a kids' top next to women's and men's items once the toggle is off
        assert {"women"} <= set(
            _pick_groups(looks.complete_the_look(product_ids=[top.pk], k=4, audience="any"))
        )


def _ranking_sqls(fn) -> list[str]:
    with CaptureQueriesContext(connection) as ctx:
        fn()
    return [q["sql"] for q in ctx.captured_queries if "<#>" in q["sql"] and "ORDER BY" in q["sql"]]


def test_the_audience_filter_runs_inside_each_slots_hnsw_scan(trained_catalog, settings):
    settings.LOOKS_EXACT_MAX_ROWS = 0  # the graph's path (the slice's few rows per slot are ranked exactly)
    shirt = _first("men", "top")
    sqls = _ranking_sqls(lambda: looks.complete_the_look(product_ids=[shirt.pk], k=4))
    assert len(sqls) == len(looks.missing_slots(["top"]))
    for sql in sqls:
        assert "\"audience_group\" IN ('men', 'unisex')" in sql, sql
        slot = re.search(r"\.\"slot\" = '([\w-]+)'", sql).group(1)
        with transaction.atomic(), connection.cursor() as cur:
            # on 160 rows the planner reads a slot's one or two men's rows through the exact rankings'
            # B-tree; without it (rolled back with the test), the graph path: at 100k the planner takes it
            cur.execute("DROP INDEX IF EXISTS emb_version_slot_audience")
            cur.execute("ANALYZE recommender_productembedding")
            cur.execute(selectors.ranking_settings_sql("complete", 50))
            cur.execute("EXPLAIN " + sql)
            plan = "\n".join(r[0] for r in cur.fetchall())
        assert f"Index Scan using emb_compat_{slot.split('-')[0]}_hnsw" in plan, plan
        assert "audience_group" in plan and "Sort" not in plan.split("Index Scan")[0], plan
    # the iterative scan is what keeps k rows coming past the filter (ranking_settings_sql)
    assert "SET LOCAL hnsw.iterative_scan = relaxed_order" in selectors.ranking_settings_sql("complete", 5)
    mixed = _ranking_sqls(lambda: looks.complete_the_look(product_ids=[shirt.pk], k=4, audience="any"))
    assert mixed and not any("audience_group" in sql for sql in mixed)


def test_filtered_pool_equals_the_exact_ranking_of_the_matching_rows(trained_catalog):
    """With the audience filter the index still returns every matching row, in exact order."""
    shirt = _first("men", "top")
    picks = looks.complete_the_look(product_ids=[shirt.pk], k=20, slots=["top"], reduce_hubs=False)
    heads = model_cache.heads_for(trained_catalog)
    emb = ProductEmbedding.objects.get(model_version=trained_catalog, product=shirt)
    f = torch.as_tensor(np.asarray(emb.compat, dtype=np.float32))[None]
    with torch.no_grad():
        q = heads.slot_query(f, torch.as_tensor([SLOT_INDEX["top"]]), SLOT_INDEX["top"]).numpy()
    rows = ProductEmbedding.objects.filter(
        model_version=trained_catalog, slot="top", audience_group__in=["men", "unisex"]
    ).exclude(product__variant_group=shirt.variant_group)
    exact = sorted(((float(np.dot(np.asarray(r.compat), q)), r.product_id) for r in rows), reverse=True)
    got = [h.product.pk for h in picks[0].hits]
    # colour variants of a pick are dropped after the ranking: compare against the first of each group
    seen, expected = set(), []
    for _, pid in exact:
        group = Product.objects.get(pk=pid).variant_group or pid
        if group not in seen:
            seen.add(group)
            expected.append(pid)
    assert got == expected and len(got) == 7


def test_the_swap_keeps_to_the_audience_of_the_rest_of_the_outfit(trained_catalog):
    shirt, trousers, shoes = _first("men", "top"), _first("men", "bottom"), _first("women", "shoes")
    ids = [shirt.pk, trousers.pk, shoes.pk]
    res = looks.outfit_compatibility(product_ids=ids)
    m = np.asarray(res.matrix)
    i, j = ids.index(res.weakest[0]), ids.index(res.weakest[1])
    weaker = i if m[i].sum() <= m[j].sum() else j  # the item the swap replaces
    rest = [_group(Product.objects.get(pk=pid)) for x, pid in enumerate(ids) if x != weaker]
    allowed = looks.audience_filter(rest)
    sqls = _ranking_sqls(lambda: looks.outfit_compatibility(product_ids=ids))
    assert len(sqls) == 1
    listed = ", ".join(f"'{g}'" for g in allowed)
    assert f'"audience_group" IN ({listed})' in sqls[0], sqls[0]
    if res.suggestion is not None:
        assert _group(res.suggestion.product) in allowed
    mixed = _ranking_sqls(lambda: looks.outfit_compatibility(product_ids=ids, audience="any"))
    assert len(mixed) == 1 and "audience_group" not in mixed[0]


def test_api_takes_audience_any_and_caches_each_mode_apart(trained_catalog):
    api = APIClient()
    shirt = _first("men", "top")
    match = api.post("/api/complete-the-look/", {"product_ids": [shirt.pk]}, format="json").json()
    mixed = api.post(
        "/api/complete-the-look/", {"product_ids": [shirt.pk], "audience": "any"}, format="json"
    ).json()
    groups = {
        mode: {_group(Product.objects.get(pk=h["product"]["id"])) for sp in answer for h in sp["hits"]}
        for mode, answer in (("match", match), ("any", mixed))
    }
    assert groups["match"] == {"men"} and {"women", "kids"} <= groups["any"]
    r = api.post("/api/compatibility/", {"product_ids": [shirt.pk, 1], "audience": "all"}, format="json")
    assert r.status_code == 400
    assert r.json()["error"]["message"] == 'audience: "all" is not a valid choice.'


def _lists(**kwargs) -> dict[str, list[list[int]]]:
    """Every product of the slice asks for a look: the top-5 lists of each open slot."""
    out: dict[str, list[list[int]]] = {}
    for pid in Product.objects.order_by("pk").values_list("pk", flat=True):
        for sp in looks.complete_the_look(product_ids=[pid], k=5, **kwargs):
            out.setdefault(sp.slot, []).append([h.product.pk for h in sp.hits])
    return out


def test_offsets_spread_the_picks_and_keep_them_relevant(trained_catalog, settings):
    """Every product of the slice asks for a look: the top most often suggested loses over 40% of its
    share, the bottom at least a tenth (and its three biggest hubs), at least as many distinct tops are
    suggested, and the picks
    stay (over 90%) among the plain ranking's top 20. With the offsets off the lists are the plain ones."""
    plain, spread = _lists(reduce_hubs=False), _lists()

    def share(lists, slot):
        return max(k_occurrence(lists[slot]).values())

    # hubs exist (the plain ranking repeats one top and one bottom in most lists), and the offsets cut
    # the top's share by over 40% (0.73 -> 0.28 on CI's machine, 0.66 -> 0.2 on another, 0.61 -> 0.34
    # trained on OpenVINO's bf16 tower features: float order differs between CPUs and backends, so the
    # bound is relative to the plain share of the same run)
    assert share(plain, "top") > 0.5 and share(spread, "top") < 0.6 * share(plain, "top")
    # bottoms (fewer, and offsets priced on the whole catalog's lists) lose at least a tenth of the share
    # (0.59 -> 0.46 on float32 features, 0.64 -> 0.54 on bf16 ones: the slice's scores lie so close
    # together that the ascent's fixed step moves a hub's whole share at once; the full catalog's audit,
    # docs/recommendations.md, is the measure of the 5% goal)
    assert share(plain, "bottom") > 0.5 and share(spread, "bottom") < 0.9 * share(plain, "bottom")

    # and the three biggest bottom hubs together too (0.51 -> 0.37 of the lists on average, 0.57 -> 0.48
    # on bf16 features); how many distinct bottoms appear moves by one or two on this slice of about 30
    def top3(lists, slot):
        return sum(sorted(k_occurrence(lists[slot]).values(), reverse=True)[:3]) / 3

    assert top3(spread, "bottom") < 0.9 * top3(plain, "bottom")
    for slot in ("outerwear", "one-piece"):  # 18 and 13 items: a high floor, still lower
        assert share(spread, slot) < share(plain, slot)
    # tops: the plain lists already reach 53 of the slice's 64 (the men's and kids' ones only in their
    # own audience's few lists), so the spread lists reach at least as many
    assert len(k_occurrence(spread["top"])) >= len(k_occurrence(plain["top"]))
    kept = n = 0
    for pid in Product.objects.order_by("pk").values_list("pk", flat=True):
        top20 = {
            sp.slot: {h.product.pk for h in sp.hits}
            for sp in looks.complete_the_look(product_ids=[pid], k=20, reduce_hubs=False)
        }
        for sp in looks.complete_the_look(product_ids=[pid], k=5):
            n += len(sp.hits)
            kept += sum(h.product.pk in top20[sp.slot] for h in sp.hits)
    assert kept / n > 0.85  # 0.92 on the slice
    settings.HUBNESS_PENALTY = 0.0  # the mechanism off: the plain order
    assert _lists() == plain


def test_caps_come_from_the_audience_not_from_the_pool(trained_catalog, settings):
    """An item's cap is raised to 1.5x its even-spread share over the items its queries may get (their
    audience's), never over their pools: the hubs are in the most pools, and a pool-based spread gave the
    biggest hub the biggest cap. With a pool of 10 that cap leaves the top hub unpriced (checked on the
    slice: its share stays where it was); priced on the audience, it loses over a quarter of it."""
    plain = _lists(reduce_hubs=False)["top"]
    settings.HUBNESS_POOL = 10
    hubness.hub_scores_refresh(version=trained_catalog)
    spread = _lists()["top"]
    # the slice's shares move with the tower features the slice is trained on (the fixed-step ascent,
    # docs/recommendations.md "The ascent's step"): 0.23 against 0.73 plain on float32 features, 0.27
    # against 0.61 with both towers in bf16, 0.37 against 0.60 on the default (photos float32, texts
    # bf16); with the pool-based spread 0.60 against 0.60, no price at all
    assert max(k_occurrence(spread).values()) < 0.75 * max(k_occurrence(plain).values())


@pytest.mark.parametrize("memory", [0, 3])
def test_the_population_audit_counts_the_served_lists(trained_catalog, settings, memory):
    """``audit_looks --population`` scores every product's lists in NumPy as the offsets are priced: on
    the slice (exact rankings served) its shares are those of the lists complete-the-look serves, with
    the outfit memory's lifted partners or without."""
    settings.LOOKS_MEMORY_PICKS = memory
    served = _lists()
    population = hubness.population_shares(version=trained_catalog, goal=0.05)
    assert set(population) == {slot for slot, ls in served.items() if any(ls)}  # the slice has no bag
    for slot, p in population.items():
        occ = k_occurrence(served[slot])
        assert p["lists"] == len(served[slot])
        assert p["max_share"] == pytest.approx(max(occ.values()), abs=1e-4), slot
        assert p["over_goal"] == sum(v > 0.05 for v in occ.values()), slot


def test_offsets_are_prices_of_the_few_items_over_capacity(trained_catalog):
    rows = ProductEmbedding.objects.filter(model_version=trained_catalog)
    priced = rows.filter(hub_score__gt=0)
    assert 0 < priced.count() < 0.4 * rows.count()
    assert not rows.filter(hub_score__lt=0).exists()
    assert set(priced.values_list("slot", flat=True)) <= set(looks.missing_slots([]))
    # the most often suggested top is priced: it would otherwise fill 66% of the top lists
    plain = _lists(reduce_hubs=False)["top"]
    hub, _ = max(k_occurrence(plain).items(), key=lambda kv: kv[1])
    assert rows.get(product_id=hub).hub_score > 0.03


def test_a_partial_write_prices_the_product_against_the_stored_prices(trained_catalog, settings):
    """An upload or an edit re-embeds one product: its offset is found again with the others' kept
    (priced at once: deferral off; the default defers it, next test)."""
    from recommender.services import embeddings_write

    settings.HUBNESS_DEFER_MAX_ROWS = 0
    settings.LOOKS_MEMORY_PICKS = 3  # the fixture's training priced the rows with the default memory

    top = ProductEmbedding.objects.filter(model_version=trained_catalog).order_by("-hub_score").first()
    before = {e.pk: e.hub_score for e in ProductEmbedding.objects.filter(model_version=trained_catalog)}
    vec = {c: np.asarray([getattr(top, c)], dtype=np.float32) for c in ("image", "text", "fused", "compat")}
    embeddings_write(version=trained_catalog, product_ids=[top.product_id], **vec)
    after = {e.pk: e.hub_score for e in ProductEmbedding.objects.filter(model_version=trained_catalog)}
    assert {pk: v for pk, v in after.items() if pk != top.pk} == {
        pk: v for pk, v in before.items() if pk != top.pk
    }
    assert after[top.pk] > 0.03  # priced again (alone, not necessarily at the same price)
    assert hubness.hub_scores_refresh(version=trained_catalog) == len(after)  # a full pricing again
    assert ProductEmbedding.objects.get(pk=top.pk).hub_score == pytest.approx(top.hub_score, abs=1e-6)


def test_an_upload_is_written_at_once_and_priced_by_one_refresh_later(
    trained_catalog, monkeypatch, django_capture_on_commit_callbacks
):
    """Pricing reads the whole catalog (about 1 s a write at 21,000 products): a small write keeps the
    stored offsets and queues one refresh of the version, whatever the number of writes meanwhile."""
    from django.core.cache import cache

    from recommender import tasks
    from recommender.services import embeddings_write

    queued = []
    monkeypatch.setattr(tasks.refresh_hub_scores, "apply_async", lambda **kw: queued.append(kw))
    cache.delete(hubness.hub_refresh_key(trained_catalog))
    rows = ProductEmbedding.objects.filter(model_version=trained_catalog)
    top = rows.order_by("-hub_score").first()
    plain = rows.filter(hub_score=0, slot=top.slot).first()
    for e in (top, plain, top):  # three small writes, e.g. uploads and an edit
        vec = {
            c: np.asarray([getattr(top, c)], dtype=np.float32) for c in ("image", "text", "fused", "compat")
        }
        with django_capture_on_commit_callbacks(execute=True):
            embeddings_write(version=trained_catalog, product_ids=[e.product_id], **vec)
    assert rows.get(pk=top.pk).hub_score == pytest.approx(top.hub_score)  # its stored price, kept
    assert rows.get(pk=plain.pk).hub_score == 0.0  # now the top's twin: unpriced until the refresh
    assert queued == [{"kwargs": {"version_id": trained_catalog.pk}, "countdown": 60}]  # one refresh
    tasks.refresh_hub_scores.run(version_id=trained_catalog.pk)
    assert rows.get(pk=plain.pk).hub_score > 0  # the twin of a hub is priced too
    cache.delete(hubness.hub_refresh_key(trained_catalog))


def test_the_audit_tells_the_shares_a_ranking_could_spread(trained_catalog):
    from recommender.looks_audit import audit_table, looks_audit

    report = looks_audit(products=160, pairs=20, configs={"default": {}})
    c = report["configs"]["default"]
    assert c["audience_coherence"] == 1.0 and c["slot_validity"] == 1.0
    # the slice's worst shares are men's and kids' items, in every list of their audience
    assert c["max_share_spreadable"] < c["max_share"]
    assert c["items_over_5pct_spreadable"] < c["items_over_5pct"]
    for slot in c["slots"].values():
        for item in slot["top"]:
            if item["audience"] != "women" and item["even_spread"] > 0.05:
                assert item["share"] == pytest.approx(item["even_spread"], abs=0.02), item
    assert "items the lists could spread" in audit_table(report)


def _pairs_in_training_outfits() -> list[tuple[Product, Product]]:
    """(a, b) of every training outfit: other slots, the same audience group, b typed, other variants."""
    out = []
    for outfit in Outfit.objects.filter(split=Outfit.Split.TRAIN).prefetch_related("products"):
        items = list(outfit.products.all())
        for a in items:
            for b in items:
                if (
                    a.slot != b.slot
                    and _group(a) == _group(b)
                    and b.product_type.lower() != "unknown"
                    and (not a.variant_group or a.variant_group != b.variant_group)
                ):
                    out.append((a, b))
    return out


def test_items_the_training_outfits_paired_come_first_and_say_so(trained_catalog, settings):
    """The model's own first pick is not the partner a training outfit holds; with the outfit memory
    on, that partner comes first and counts its outfits; off, every pick is the model's."""
    moved = 0
    for a, b in _pairs_in_training_outfits()[:40]:
        settings.LOOKS_MEMORY_PICKS = 0
        off = looks.complete_the_look(product_ids=[a.pk], k=4, slots=[b.slot])[0].hits
        assert all(h.worn_with == 0 for h in off)
        settings.LOOKS_MEMORY_PICKS = 3
        on = looks.complete_the_look(product_ids=[a.pk], k=4, slots=[b.slot])[0].hits
        memory = looks.outfit_memory([a.pk])
        assert on[0].worn_with == max(memory[h.product.pk].outfits for h in on if h.product.pk in memory) >= 1
        assert on[0].worn_with == memory[on[0].product.pk].outfits
        ranks = [h.worn_with for h in on]
        assert ranks == sorted(ranks, reverse=True)  # remembered partners first, then the model's picks
        moved += off[0].product.pk != on[0].product.pk
    assert moved >= 5, moved


def test_a_partner_of_another_audience_is_never_lifted_even_for_every_audience(trained_catalog, settings):
    """A men's item that a training basket holds with a women's one (a shopper buying for two): with
    ``audience=any`` the women's item may be a pick on its score, but is never lifted as remembered:
    no pick of the other audience ranks higher with the memory on than off (checked failing without)."""
    checked = 0
    for outfit in Outfit.objects.filter(split=Outfit.Split.TRAIN).prefetch_related("products"):
        items = list(outfit.products.all())
        for a in items:
            for b in items:
                if a.slot == b.slot or {_group(a), _group(b)} != {"men", "women"}:
                    continue
                if b.product_type.lower() == "unknown" or checked >= 10:
                    continue
                ranked = []
                for lift in (0, 3):
                    settings.LOOKS_MEMORY_PICKS = lift
                    look = looks.complete_the_look(product_ids=[a.pk], k=4, slots=[b.slot], audience="any")
                    ranked.append([h.product for h in look[0].hits])
                off = [p.pk for p in ranked[0]]
                for i, p in enumerate(ranked[1]):
                    if _group(p) != _group(a):
                        assert p.pk in off and off.index(p.pk) <= i, (a, b, p)
                checked += 1
    assert checked >= 3, checked


def test_the_outfit_memory_holds_no_held_out_outfit(trained_catalog):
    """A pair only a held-out outfit holds is not remembered (checked failing without the split filter)."""
    checked = 0
    for held in Outfit.objects.filter(split=Outfit.Split.TEST).prefetch_related("products")[:30]:
        items = [p.pk for p in held.products.all()]
        x = items[0]
        trained_with = set(
            OutfitItem.objects.filter(outfit__split=Outfit.Split.TRAIN, product_id=x).values_list(
                "outfit__items__product_id", flat=True
            )
        )
        memory = looks.outfit_memory([x])
        assert set(memory) == trained_with - {x}
        unseen = set(items[1:]) - trained_with
        assert not unseen & set(memory)
        checked += len(unseen)
    assert checked >= 10, checked


def test_the_outfit_memory_counts_pairs_and_outfits_by_hand(trained_catalog):
    """Two given items: ``pairs`` sums each one's shared training outfits, ``outfits`` counts an outfit
    holding both once (a join that multiplied rows would fail here)."""
    train = {
        o.pk: {p.pk for p in o.products.all()}
        for o in Outfit.objects.filter(split=Outfit.Split.TRAIN).prefetch_related("products")
    }
    x, y = next((a, b) for items in train.values() if len(items) >= 3 for a, b in [sorted(items)[:2]])
    pairs: Counter[int] = Counter()
    outfits: Counter[int] = Counter()
    for items in train.values():
        held = items & {x, y}
        for pid in items - {x, y}:
            pairs[pid] += len(held)
            outfits[pid] += bool(held)
    memory = looks.outfit_memory([x, y])
    assert {pid: (p.pairs, p.outfits) for pid, p in memory.items()} == {
        pid: (pairs[pid], outfits[pid]) for pid in pairs if pairs[pid]
    }
    assert any(p.pairs > p.outfits for p in memory.values())  # an outfit with both counts twice in pairs


def test_the_api_and_the_product_page_say_which_picks_outfits_paired(trained_catalog, settings, client):
    settings.LOOKS_MEMORY_PICKS = 3
    api, shown = APIClient(), 0
    for a, b in _pairs_in_training_outfits()[:10]:
        body = api.post("/api/complete-the-look/", {"product_ids": [a.pk], "k": 4}, format="json").json()
        hits = {h["product"]["id"]: h["worn_with"] for sp in body for h in sp["hits"]}
        memory = looks.outfit_memory([a.pk])
        assert all(n == (memory[pid].outfits if pid in memory else 0) for pid, n in hits.items())
        shown += hits.get(b.pk, 0) >= 1
        if hits.get(b.pk, 0) >= 1:
            paired = a
    assert shown >= 5, shown
    assert "Paired with this item in" in client.get(f"/products/{paired.pk}").content.decode()
    # the outfit builder's one suggestion per slot: the most often paired item first
    assert "Paired with these items in" in client.get(f"/outfit?ids={paired.pk}").content.decode()


def test_nothing_nobody_wears_is_suggested(trained_catalog):
    """A product of a group nobody wears (MANGO's Home: pillow cases, filed under accessory) is never a
    pick: the slice's accessory pick (its one accessory, a belt), refiled as Home, drops out (rolled back
    with the test)."""
    top = _first("women", "top")

    def accessories() -> list[int]:
        picks = looks.complete_the_look(product_ids=[top.pk], k=4, slots=["accessory"])
        return [h.product.pk for h in picks[0].hits]

    first = accessories()[0]
    Product.objects.filter(pk=first).update(product_group="Home")
    assert first not in accessories()
    Product.objects.filter(pk=first).update(product_group="HOME")  # any case
    assert first not in accessories()


def test_a_changed_memory_setting_never_serves_a_cached_answer(trained_catalog, settings):
    settings.RECOMMENDATION_CACHE_SECONDS = 60
    a, _ = _pairs_in_training_outfits()[0]
    api = APIClient()

    def counts() -> list[int]:
        body = api.post("/api/complete-the-look/", {"product_ids": [a.pk], "k": 4}, format="json").json()
        return [h["worn_with"] for sp in body for h in sp["hits"]]

    settings.LOOKS_MEMORY_PICKS = 3
    assert any(counts())
    settings.LOOKS_MEMORY_PICKS = 0  # cached under the other setting: computed again
    assert not any(counts())


def test_the_prices_see_the_partners_the_site_lifts(trained_catalog, settings):
    """Pricing counts the outfit memory's lifted picks in the shares (they hold their places at any
    price): for every product of the slice and each open slot, the items pricing lifts are the site's
    first picks, in the site's order, and after fewer than LOOKS_MEMORY_PICKS of them comes a model pick."""
    settings.LOOKS_MEMORY_PICKS = 3
    version = trained_catalog
    dim = len(ProductEmbedding.objects.filter(model_version=version).first().compat)
    cat, _ = hubness._catalog(version, [], np.zeros((0, dim), dtype=np.float32))
    masks2 = model_cache.heads_for(version).mask_table().detach().numpy()
    pairs = hubness.training_pairs()
    row_of = {int(p): i for i, p in enumerate(cat.pid)}
    lifted_seen = 0
    for pid in Product.objects.order_by("pk").values_list("pk", flat=True):
        for sp in looks.complete_the_look(product_ids=[pid], k=5):
            cands = np.flatnonzero((cat.slot == sp.slot) & cat.typed)
            queries = np.asarray([row_of[pid]])
            scores = hubness._slot_scores(cat, masks2, sp.slot, queries, cands)
            hubness._lift_remembered(cat, scores, queries, cands, pairs, 3)
            order = np.argsort(-scores[0])
            lifted = [int(cat.pid[cands[j]]) for j in order if scores[0, j] > hubness._REMEMBERED - 10]
            served = [h.product.pk for h in sp.hits]
            assert served[: len(lifted)] == lifted, (pid, sp.slot)
            if len(lifted) < 3 and len(served) > len(lifted):
                assert sp.hits[len(lifted)].worn_with == 0
            lifted_seen += len(lifted)
    assert lifted_seen >= 50, lifted_seen


def test_prices_leave_out_what_nobody_wears_and_make_room_for_lifted_picks(
    trained_catalog, settings, monkeypatch
):
    """A Home product is no candidate of the pricing, as it is no pick. A bottom the memory lifts for
    every item that asks for one holds its place at any price: it is not priced, and the other hub bottoms still are (with
    one cap for all, its share would stay over it and the ascent would keep its first step, no prices)."""
    version = trained_catalog
    rows = list(
        ProductEmbedding.objects.filter(model_version=version).values_list("product_id", "compat", "slot")
    )
    ids = [r[0] for r in rows]
    compat = np.stack([np.asarray(r[1], dtype=np.float32) for r in rows])
    acc = next(pid for pid, _, slot in rows if slot == "accessory")
    Product.objects.filter(pk=acc).update(product_group="Home")
    cat, _ = hubness._catalog(version, ids, compat)
    assert not cat.typed[ids.index(acc)]

    settings.LOOKS_MEMORY_PICKS = 3
    plain = hubness.hub_scores_for(version=version, product_ids=ids, compat=compat)
    bottoms = [i for i, (_, _, slot) in enumerate(rows) if slot == "bottom"]
    assert (plain[bottoms] > 0).sum() >= 2
    everyone = ids[min(bottoms, key=lambda i: plain[i])]  # an unpriced bottom, lifted for every top
    # lifted for every item that asks for a bottom (tops, shoes, bags...: every list it may be in)
    askers = [pid for pid, _, slot in rows if slot != "bottom"]
    monkeypatch.setattr(hubness, "training_pairs", lambda: {t: {everyone: 5} for t in askers})
    lifted = hubness.hub_scores_for(version=version, product_ids=ids, compat=compat)
    assert lifted[ids.index(everyone)] == 0
    assert (lifted[bottoms] > 0).sum() >= 1, "the other hub bottoms lost their prices"
