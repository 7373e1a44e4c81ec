"""How trustworthy complete-the-look is on the catalog as it stands (``python manage.py audit_looks``).

Complete-the-look runs, through the real selector (:func:`recommender.looks.complete_the_look`), for
``products`` random products under each configuration of :data:`CONFIGS`, and the answers are measured:

* **hubness**: per slot, the share of the top-k lists that hold its most frequent item (the k-occurrence
  of Radovanović et al. 2010 over the number of lists) and the number of distinct items suggested;
* **audience coherence**: the share of picks whose audience group fits the product's
  (:func:`ml.audience.audience_fits`: the same group, or unisex on either side);
* **slot validity**: the share of picks of the asked slot, that slot being one the product leaves open;
* **relevance kept**: the share of picks that the plain ranking (no hubness re-ranking, same audience
  rule) also puts in its top ``depth``;
* **held-out relevance**: over pairs of items bought together in held-out baskets (``Outfit.split =
  test``, never trained on), how often complete-the-look for one item puts the other in its top k and
  top ``depth`` for the other's slot.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from typing import Any

import numpy as np
from django.db.models import Count

from catalog.models import Outfit, Product
from catalog.selectors import product_audience_group
from ml.audience import AUDIENCE_GROUPS, audience_fits
from ml.hubness import k_occurrence
from ml.slots import missing_slots
from recommender.looks import audience_filter, complete_the_look
from recommender.models import ProductEmbedding
from recommender.selectors import active_version

#: The issue's goal: no item in more than this share of its slot's top-k lists.
GOAL_SHARE = 0.05

#: The configurations compared: before (plain), each mechanism alone, and both (the default).
CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {"audience": "any", "reduce_hubs": False},
    "audience": {"audience": "match", "reduce_hubs": False},
    "hubness": {"audience": "any", "reduce_hubs": True},
    "audience+hubness": {"audience": "match", "reduce_hubs": True},
}


def _sample(version, n: int, seed: int) -> list[int]:
    ids = sorted(ProductEmbedding.objects.filter(model_version=version).values_list("product_id", flat=True))
    return random.Random(seed).sample(ids, min(n, len(ids)))


def _heldout_pairs(version, n: int, seed: int) -> list[tuple[int, int]]:
    """(given, partner) pairs of held-out baskets, the partner's slot one the given item leaves open."""
    embedded = set(
        ProductEmbedding.objects.filter(model_version=version).values_list("product_id", flat=True)
    )
    pairs = set()
    for outfit in Outfit.objects.filter(split=Outfit.Split.TEST).prefetch_related("products"):
        items = [p for p in outfit.products.all() if p.pk in embedded]
        for a in items:
            for b in items:
                if (
                    a.pk != b.pk
                    and b.slot in missing_slots([a.slot])
                    and b.product_type.lower() != "unknown"
                    and (not a.variant_group or a.variant_group != b.variant_group)
                ):
                    pairs.add((a.pk, b.pk))
    ordered = sorted(pairs)
    return random.Random(seed).sample(ordered, min(n, len(ordered)))


def _group_sizes(version) -> dict[tuple[str, str], int]:
    """``{(slot, audience group): number of typed rows}``: the candidates complete-the-look may pick."""
    rows = (
        ProductEmbedding.objects.filter(model_version=version)
        .exclude(product__product_type__iexact="unknown")
        .values_list("slot", "audience_group")
        .annotate(n=Count("pk"))
    )
    return {(slot, group): n for slot, group, n in rows}


def _even_spread(
    asks: dict[str, list[str]], sizes: dict[tuple[str, str], int], k: int, audience: str
) -> dict[str, dict[str, float]]:
    """``{slot: {audience group: share}}``: the share of the slot's lists an item of that group fills when
    every list spreads its k picks evenly over the items it may get (:func:`ml.hubness.even_spread_shares`
    on the audit's own lists). ``asks`` maps each slot to the audience group of each list's product."""
    out: dict[str, dict[str, float]] = {}
    for slot, groups in asks.items():
        acc: dict[str, float] = defaultdict(float)
        for group in groups:
            allowed = audience_filter([group]) if audience == "match" else None
            allowed = allowed if allowed is not None else list(AUDIENCE_GROUPS)
            m = sum(sizes.get((slot, g), 0) for g in allowed)
            for g in allowed:
                acc[g] += min(1.0, k / max(m, 1))
        out[slot] = {g: v / len(groups) for g, v in acc.items()}
    return out


def _slot_stats(
    lists: dict[str, list[list[int]]], products: dict[int, Product], even: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Per slot: lists, distinct items, the max share, the top 3 items, and the max share among the items
    whose even-spread share leaves room for :data:`GOAL_SHARE` (``1.5 × even ≤ goal``; the others,
    e.g. an audience's only few bags, fill their lists at any ranking)."""
    out = {}
    for slot, ls in sorted(lists.items()):
        occ = k_occurrence(ls)
        top = sorted(occ.items(), key=lambda kv: -kv[1])[:3]

        shares = even.get(slot, {})

        def even_of(pid: int, shares: dict[str, float] = shares) -> float:
            return shares.get(product_audience_group(product=products[pid]), 0.0)

        spreadable = [share for pid, share in occ.items() if 1.5 * even_of(pid) <= GOAL_SHARE]
        out[slot] = {
            "lists": len(ls),
            "distinct": len(occ),
            "max_share": round(top[0][1], 4) if top else 0.0,
            "max_even_spread": round(max(shares.values(), default=0.0), 4),
            "max_share_spreadable": round(max(spreadable, default=0.0), 4),
            "over_goal_spreadable": sum(share > GOAL_SHARE for share in spreadable),
            "top": [
                {
                    "id": pid,
                    "title": products[pid].title,
                    "audience": product_audience_group(product=products[pid]),
                    "share": round(share, 4),
                    "even_spread": round(even_of(pid), 4),
                }
                for pid, share in top
            ],
        }
    return out


def looks_audit(
    *,
    products: int = 300,
    k: int = 5,
    depth: int = 20,
    pairs: int = 500,
    seed: int = 0,
    configs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Audit complete-the-look for ``products`` random embedded products (seeded) under each config.

    Args:
        products: how many random products ask for a look (each: one list of k per open slot).
        k: picks per slot (the lists hubness is measured on).
        depth: the plain ranking's depth for "relevance kept", and the held-out hit depth.
        pairs: held-out (given, partner) pairs sampled for the held-out relevance.
        configs: name → keyword arguments of :func:`complete_the_look` (default :data:`CONFIGS`).

    Returns:
        ``{"version", "products", "k", "depth", "pairs", "configs": {name: {...}}}``; each config holds
        ``slots`` (per slot: lists, distinct, max_share, top items), ``max_share`` (the worst slot),
        ``audience_coherence``, ``slot_validity``, ``relevance_kept`` (None for a plain ranking),
        ``heldout_hit@k``, ``heldout_hit@depth`` and ``seconds``.
    """
    configs = configs or CONFIGS
    version = active_version()
    sample = _sample(version, products, seed)
    heldout = _heldout_pairs(version, pairs, seed)
    by_id = Product.objects.in_bulk(sample + [i for pair in heldout for i in pair])
    group = {pid: product_audience_group(product=p) for pid, p in by_id.items()}
    sizes = _group_sizes(version)
    report: dict[str, Any] = {
        "version": version.pk,
        "products": len(sample),
        "k": k,
        "depth": depth,
        "pairs": len(heldout),
        "configs": {},
    }
    for name, kwargs in configs.items():
        t = time.perf_counter()
        lists: dict[str, list[list[int]]] = defaultdict(list)
        asks: dict[str, list[str]] = defaultdict(list)  # slot -> the audience group of each list's product
        picks = coherent = valid = kept = kept_n = 0
        for pid in sample:
            looks = complete_the_look(product_ids=[pid], k=k, **kwargs)
            plain = None
            if kwargs.get(
                "reduce_hubs", True
            ):  # what the plain order (same audience rule) puts in its top depth
                plain_kwargs = {**kwargs, "reduce_hubs": False}
                plain = {
                    sp.slot: {h.product.pk for h in sp.hits}
                    for sp in complete_the_look(product_ids=[pid], k=depth, **plain_kwargs)
                }
            open_slots = set(missing_slots([by_id[pid].slot]))
            for sp in looks:
                lists[sp.slot].append([h.product.pk for h in sp.hits])
                asks[sp.slot].append(group[pid])
                for h in sp.hits:
                    by_id.setdefault(h.product.pk, h.product)
                    picks += 1
                    coherent += audience_fits(product_audience_group(product=h.product), group[pid])
                    valid += h.product.slot == sp.slot and sp.slot in open_slots
                    if plain is not None:
                        kept_n += 1
                        kept += h.product.pk in plain.get(sp.slot, set())
        hits_k = hits_depth = 0
        for given, partner in heldout:
            slot = by_id[partner].slot
            ranked = complete_the_look(product_ids=[given], k=depth, slots=[slot], **kwargs)[0].hits
            order = [h.product.pk for h in ranked]
            hits_k += partner in order[:k]
            hits_depth += partner in order
        even = _even_spread(asks, sizes, k, kwargs.get("audience", "match"))
        slots = _slot_stats(lists, by_id, even)
        report["configs"][name] = {
            "kwargs": kwargs,
            "slots": slots,
            "max_share": max((s["max_share"] for s in slots.values()), default=0.0),
            "items_over_5pct": sum(
                1 for ls in lists.values() for share in k_occurrence(ls).values() if share > GOAL_SHARE
            ),
            "max_share_spreadable": max((s["max_share_spreadable"] for s in slots.values()), default=0.0),
            "items_over_5pct_spreadable": sum(s["over_goal_spreadable"] for s in slots.values()),
            "picks": picks,
            "audience_coherence": round(coherent / max(picks, 1), 4),
            "slot_validity": round(valid / max(picks, 1), 4),
            "relevance_kept": round(kept / kept_n, 4) if kept_n else None,
            f"heldout_hit@{k}": round(hits_k / max(len(heldout), 1), 4),
            f"heldout_hit@{depth}": round(hits_depth / max(len(heldout), 1), 4),
            "seconds": round(time.perf_counter() - t, 1),
        }
    return report


def audit_table(report: dict[str, Any]) -> str:
    """The report's headline figures as a Markdown table (one row per configuration)."""
    k, depth = report["k"], report["depth"]
    head = (
        f"| config | max share of one item in a slot's top-{k} lists | items over 5% | the same, items the "
        f"lists could spread¹ | audience coherence | slot validity | picks in the plain top-{depth} "
        f"| held-out hit@{k} | held-out hit@{depth} |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for name, c in report["configs"].items():
        worst = max(c["slots"].items(), key=lambda kv: kv[1]["max_share"], default=(None, None))[0]
        kept = "—" if c["relevance_kept"] is None else f"{c['relevance_kept']:.1%}"
        rows.append(
            f"| {name} | {c['max_share']:.1%} ({worst}) | {c['items_over_5pct']} | "
            f"{c['max_share_spreadable']:.1%}, {c['items_over_5pct_spreadable']} over 5% | "
            f"{c['audience_coherence']:.1%} | {c['slot_validity']:.1%} | {kept} | "
            f"{c[f'heldout_hit@{k}']:.1%} | {c[f'heldout_hit@{depth}']:.1%} |"
        )
    distinct = " · ".join(
        f"{name}: " + ", ".join(f"{s} {v['distinct']}" for s, v in c["slots"].items())
        for name, c in report["configs"].items()
    )
    note = (
        "\n\n¹ Items whose even-spread share (every list spreading its picks evenly over the items it may "
        f"get) is at most {GOAL_SHARE / 1.5:.1%}; the others, e.g. an audience's only few items of a slot, "
        "fill their lists at any ranking."
    )
    return head + "\n".join(rows) + note + f"\n\nDistinct items per slot ({distinct}).\n" + _mean_line(report)


def _mean_line(report: dict[str, Any]) -> str:
    means = {
        name: float(np.mean([v["max_share"] for v in c["slots"].values()])) if c["slots"] else 0.0
        for name, c in report["configs"].items()
    }
    return "Mean over slots of the max share: " + ", ".join(f"{n} {m:.1%}" for n, m in means.items()) + "\n"


def population_table(population: dict[str, dict]) -> str:
    """:func:`recommender.hubness.population_shares` as a Markdown table, one row per slot."""
    rows = [
        f"| {slot} | {p['lists']:,} | {p['max_share']:.1%} (#{p['max_item']}) | {p['over_goal']} | "
        f"{p['max_share_spreadable']:.1%} (#{p['spreadable_item']}) | {p['over_goal_spreadable']} |"
        for slot, p in population.items()
    ]
    return (
        "Every product as a query (exact scores, as the offsets are priced):\n\n"
        f"| slot | lists | max share | items over {GOAL_SHARE:.0%} | max share, spreadable¹ | "
        f"spreadable items over {GOAL_SHARE:.0%} |\n|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows)
    )
