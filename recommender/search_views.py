"""The search pages: text search with what it understood as removable chips and facets with counts
(:func:`recommender.search.product_search`), and search by photo.

Like :mod:`recommender.views`, they validate a form, call a selector and shape the answer for the
template; shoppers see no raw scores.
"""

from __future__ import annotations

import base64
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_safe

from recommender.filters import Filters
from recommender.forms import SEARCH_K, PhotoSearchForm, SearchForm
from recommender.replicas import replica_reads
from recommender.search import SearchAnswer, product_search, variant_counts
from recommender.selectors import NoActiveModel, photo_search
from recommender.views import NO_MODEL

# --- search -------------------------------------------------------------------------------------------


#: Facets of the search page: (parameter, heading); how many values each shows.
SEARCH_FACETS = (("audience_group", "For"), ("colour", "Colour"), ("product_type", "Type"))
FACET_VALUES = 8
#: Explicit filters shown as removable chips: (parameter, label).
FILTER_CHIPS = (
    ("audience_group", "for {}"),
    ("audience", "audience: {}"),
    ("colour", "colour: {}"),
    ("product_type", "type: {}"),
    ("slot", "slot: {}"),
)


def _url_with(request: HttpRequest, **changes: str | None) -> str:
    """This page's URL with parameters changed (``None`` removes one) and back on page 1."""
    query = request.GET.copy()
    query.pop("page", None)
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return f"{request.path}?{query.urlencode()}"


def _search_chips(
    request: HttpRequest, answer: SearchAnswer, cleaned: dict[str, Any]
) -> list[dict[str, str]]:
    """What the search understood and the filters chosen, each with the link that removes it."""
    off = cleaned.get("off") or []
    chips = [
        {"label": c.label, "remove_url": _url_with(request, off=",".join(sorted({*off, c.key})))}
        for c in answer.parsed.chips
    ]
    for name, label in FILTER_CHIPS:
        if cleaned.get(name):
            chips.append(
                {"label": label.format(cleaned[name]), "remove_url": _url_with(request, **{name: None})}
            )
    return chips


def _search_facets(
    request: HttpRequest, answer: SearchAnswer, cleaned: dict[str, Any]
) -> list[dict[str, Any]]:
    """Facet values with counts, each a link that filters on it (facets already chosen left out)."""
    out = []
    for name, heading in SEARCH_FACETS:
        values = answer.facets.get(name, [])[:FACET_VALUES]
        if cleaned.get(name) or len(values) < 2:
            continue
        links = [{"value": v, "count": n, "url": _url_with(request, **{name: v})} for v, n in values]
        out.append({"name": name, "heading": heading, "values": links})
    return out


@require_safe  # a read-only page: POST/PUT/DELETE answer 405
def search_page(request: HttpRequest) -> HttpResponse:
    """``/search?q=...&slot=...&off=...&page=2``: text search (:func:`recommender.search.product_search`)
    with what it understood as removable chips and facets with counts; a bad filter (an unknown slot, a
    price that is no number) is said next to its field."""
    form = SearchForm(request.GET)
    valid = form.is_valid()
    q = form.cleaned_data.get("q", "")
    context: dict[str, Any] = {"form": form, "q": q, "slots": form.options("slot")["slot"]}
    if not q:
        context["message"] = "Type what you are looking for, e.g. “black denim jacket”, or search by photo."
    elif valid:
        page = form.cleaned_data["page"]
        cleaned = form.cleaned_data
        try:
            answer = product_search(
                query=q, k=SEARCH_K * page, filters=Filters.from_params(cleaned), off=cleaned["off"]
            )
        except NoActiveModel:
            context["notice"] = NO_MODEL
        else:
            hits = answer.hits
            context["chips"] = _search_chips(request, answer, cleaned)
            context["facets"] = _search_facets(request, answer, cleaned)
            context["no_close_matches"] = answer.weak
            context["relaxed"] = [c.label for c in answer.relaxed]
            context["corrected"] = answer.corrected
            context["results"] = [
                {"product": h.product, "variants": h.variants} for h in hits[(page - 1) * SEARCH_K :]
            ]
            context["page"] = page
            context["has_next"] = len(hits) == SEARCH_K * page and page < form.fields["page"].last
    return render(request, "recommender/search.html", context)


@replica_reads  # a POST that only reads: read replicas may answer it
def photo_search_page(request: HttpRequest) -> HttpResponse:
    """``POST /search/photo``: search by an uploaded photo; an unreadable file is an inline error."""
    if request.method != "POST":
        return redirect("search")
    photo_form = PhotoSearchForm(request.POST, request.FILES)
    context: dict[str, Any] = {
        "form": SearchForm(),
        "photo_form": photo_form,
        "slots": SearchForm.options("slot")["slot"],
        "photo_mode": True,
    }
    if photo_form.is_valid():
        clean = photo_form.cleaned_data["image"]
        context["photo_preview"] = "data:image/jpeg;base64," + base64.b64encode(clean.thumbnail).decode()
        try:
            answer = photo_search(
                image=clean.image,
                k=SEARCH_K,
                type_first=photo_form.cleaned_data["type_first"],
                group_variants=True,
            )
            counts = variant_counts([h.product for h in answer.hits])
            context["results"] = [
                {"product": h.product, "variants": counts.get(h.product.variant_group, 1)}
                for h in answer.hits
            ]
            context["photo_type"] = answer.product_type
        except NoActiveModel:
            context["notice"] = NO_MODEL
    return render(request, "recommender/search.html", context)
