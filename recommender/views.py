"""Server-rendered shopper pages: catalog, search, product, outfit builder and the model registry.

Views only parse the request, call selectors (``recommender.selectors``) and shape their answers for
the templates (percentages, heat-map colours, links). When no model version is active they still
render, with a notice instead of recommendations.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_safe

from catalog.images import ImageError, clean_upload, read_upload
from catalog.models import Product
from ml.slots import SLOT_INDEX
from recommender.models import ModelVersion, TrainingRun
from recommender.permissions import MERCHANDISER_PERM
from recommender.selectors import (
    Filters,
    Hit,
    NoActiveModel,
    UnknownProducts,
    active_version,
    complete_the_look,
    outfit_compatibility,
    photo_search,
    similar_items,
    text_search,
)

PAGE_SIZE = 24
SEARCH_K = 24
MAX_OUTFIT = 8
NO_MODEL = "No model is active yet: run make demo"
NOT_EMBEDDED = "Recommendations for this item are not ready yet: its vectors are still being computed."
FILTER_FIELDS = ("slot", "colour", "audience", "product_type")


# --- helpers ------------------------------------------------------------------------------------------


def _model_notice() -> str:
    """The notice for a :class:`NoActiveModel`: no version at all, or this item not embedded yet."""
    try:
        active_version()
    except NoActiveModel:
        return NO_MODEL
    return NOT_EMBEDDED


def _not_found(request: HttpRequest, message: str) -> HttpResponse:
    return render(request, "recommender/not_found.html", {"message": message}, status=404)


def _param(params, key: str, max_len: int = 500) -> str:
    """A query parameter as clean text: NUL bytes (which PostgreSQL text cannot hold) removed, trimmed."""
    return (params.get(key) or "").replace("\x00", "").strip()[:max_len]


def _filters_from(params) -> Filters:
    return Filters(**{f: _param(params, f, 64) or None for f in FILTER_FIELDS})


def _filter_options() -> dict[str, list[str]]:
    """Distinct non-empty values of each filterable column (slots in their canonical order)."""
    options = {}
    for f in FILTER_FIELDS:
        values = Product.objects.exclude(**{f: ""}).order_by(f).values_list(f, flat=True).distinct()
        options[f] = list(values)
    options["slot"].sort(key=lambda s: SLOT_INDEX.get(s, len(SLOT_INDEX)))
    return options


def _pct(score: float) -> int:
    """A [0, 1] score as a whole percentage, clamped."""
    return round(100 * min(max(float(score), 0.0), 1.0))


def _hue(score: float) -> int:
    """Red (0) to green (120) HSL hue for a [0, 1] score."""
    return round(120 * min(max(float(score), 0.0), 1.0))


def _scored(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    return [
        {"product": h.product, "score": h.score, "pct": _pct(h.score), "hue": _hue(h.score)} for h in hits
    ]


def _parse_ids(raw: str) -> tuple[list[int], list[str]]:
    """``"1, 2,x,2"`` -> ``([1, 2], ["x"])``: distinct ids in order, and the tokens that are not ids."""
    ids: list[int] = []
    bad: list[str] = []
    for token in (t.strip() for t in raw.split(",")):
        if not token:
            continue
        if token.isascii() and token.isdigit() and len(token) <= 18:  # fits a bigint
            if int(token) not in ids:
                ids.append(int(token))
        else:
            bad.append(token)
    return ids, bad


def _outfit_url(ids: Sequence[int]) -> str:
    return f"{reverse('outfit')}?ids={','.join(str(i) for i in ids)}"


# --- pages ------------------------------------------------------------------------------------------


@require_safe  # a read-only page: POST/PUT/DELETE answer 405
def catalog_page(request: HttpRequest) -> HttpResponse:
    """``/``: the product grid, filterable by slot, colour, audience and type, 24 per page."""
    chosen = {f: _param(request.GET, f, 64) for f in FILTER_FIELDS}
    qs = Product.objects.filter(**{f: v for f, v in chosen.items() if v}).order_by("id")
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "recommender/catalog.html",
        {"page": page, "options": _filter_options(), "chosen": chosen, "filtered": any(chosen.values())},
    )


@require_safe  # a read-only page: POST/PUT/DELETE answer 405
def search_page(request: HttpRequest) -> HttpResponse:
    """``/search?q=...&slot=...``: free-text search over the active model's vectors."""
    q = _param(request.GET, "q")
    context: dict[str, Any] = {
        "q": q,
        "slot": _param(request.GET, "slot", 64),
        "slots": _filter_options()["slot"],
    }
    if not q:
        context["message"] = "Type what you are looking for, e.g. “black denim jacket”, or search by photo."
    else:
        try:
            context["results"] = _scored(text_search(query=q, k=SEARCH_K, filters=_filters_from(request.GET)))
        except NoActiveModel:
            context["notice"] = NO_MODEL
    return render(request, "recommender/search.html", context)


def photo_search_page(request: HttpRequest) -> HttpResponse:
    """``POST /search/photo``: search by an uploaded photo; an unreadable file is an inline error."""
    if request.method != "POST":
        return redirect("search")
    context: dict[str, Any] = {"q": "", "slot": "", "slots": _filter_options()["slot"], "photo_mode": True}
    upload = request.FILES.get("image")
    try:
        if upload is None:
            raise ImageError("choose a photo to upload")
        clean = clean_upload(upload)
    except ImageError as exc:
        context["photo_error"] = f"That file could not be used as a photo ({exc})."
        return render(request, "recommender/search.html", context)
    context["photo_preview"] = "data:image/jpeg;base64," + base64.b64encode(clean.thumbnail).decode()
    try:
        hits = photo_search(image=clean.image, k=SEARCH_K)
        context["results"] = _scored(hits)
    except NoActiveModel:
        context["notice"] = NO_MODEL
    return render(request, "recommender/search.html", context)


@require_safe  # a read-only page: POST/PUT/DELETE answer 405
def product_page(request: HttpRequest, pk: int) -> HttpResponse:
    """``/products/<pk>``: details, similar items and complete-the-look picks for one product."""
    product = Product.objects.filter(pk=pk).first()
    if product is None:
        return _not_found(request, f"There is no product with id {pk}.")
    outfit_ids, _ = _parse_ids(request.GET.get("outfit", ""))
    outfit_ids = [i for i in outfit_ids if i != pk][: MAX_OUTFIT - 1]
    context: dict[str, Any] = {
        "product": product,
        "add_url": _outfit_url([*outfit_ids, pk]),
        "has_outfit": bool(outfit_ids),
    }
    try:
        context["similar"] = _scored(similar_items(product_id=pk, k=8))
        looks = complete_the_look(product_ids=[pk], k=4)
    except UnknownProducts as exc:
        return _not_found(request, f"Unknown product id(s): {', '.join(map(str, exc.ids))}.")
    except NoActiveModel:
        context["notice"] = _model_notice()
    else:
        context["looks"] = [
            {"slot": sp.slot, "pick": _scored(sp.hits[:1])[0], "alternates": _scored(sp.hits[1:])}
            for sp in looks
            if sp.hits
        ]
        context["look_url"] = _outfit_url([pk, *(sp.hits[0].product.pk for sp in looks if sp.hits)])
    return render(request, "recommender/product.html", context)


def _heatmap(ids: list[int], matrix: list[list[float]], weakest: tuple[int, int] | None) -> list[list[dict]]:
    weak = {weakest, weakest[::-1]} if weakest else set()
    return [
        [
            {
                "diagonal": i == j,
                "pct": _pct(v),
                "hue": _hue(v),
                "exact": f"{v:.3f}",
                "weakest": (ids[i], ids[j]) in weak,
            }
            for j, v in enumerate(row)
        ]
        for i, row in enumerate(matrix)
    ]


def _weaker_of_pair(ids: list[int], matrix: list[list[float]], pair: tuple[int, int]) -> int:
    """The member of the weakest pair with the lower mean score against the rest (the one to swap)."""

    def mean_row(pid: int) -> float:
        i = ids.index(pid)
        others = [v for j, v in enumerate(matrix[i]) if j != i]
        return sum(others) / len(others)

    a, b = pair
    return a if mean_row(a) <= mean_row(b) else b


@require_safe  # a read-only page: POST/PUT/DELETE answer 405
def outfit_page(request: HttpRequest) -> HttpResponse:
    """``/outfit?ids=1,2,3``: the outfit builder; all of its state is in ``?ids=`` (shareable)."""
    requested, bad_tokens = _parse_ids(request.GET.get("ids", ""))
    products = Product.objects.in_bulk(requested)
    unknown = [i for i in requested if i not in products]
    ids = [i for i in requested if i in products]
    messages: list[str] = []
    if bad_tokens:
        messages.append(f"Ignored {', '.join(repr(t) for t in bad_tokens)}: not product ids.")
    if unknown:
        messages.append(f"Unknown product id(s) {', '.join(map(str, unknown))}: ignored.")
    if len(ids) > MAX_OUTFIT:
        messages.append(f"An outfit holds at most {MAX_OUTFIT} items; the rest were dropped.")
        ids = ids[:MAX_OUTFIT]
    items = [{"product": products[i], "remove_url": _outfit_url([j for j in ids if j != i])} for i in ids]
    context: dict[str, Any] = {
        "items": items,
        "ids": ids,
        "messages_list": messages,
        "ids_csv": ",".join(map(str, ids)),
    }
    try:
        if len(ids) >= 2:
            compat = outfit_compatibility(product_ids=ids)
            context.update(score=compat.score, pct=_pct(compat.score), hue=_hue(compat.score))
            context["heatmap"] = list(
                zip(compat.products, _heatmap(ids, compat.matrix, compat.weakest), strict=True)
            )
            context["columns"] = compat.products
            if compat.weakest:
                context["weakest"] = [products[i] for i in compat.weakest]
                out = _weaker_of_pair(ids, compat.matrix, compat.weakest)
                context["swap_out"] = products[out]
                new = compat.suggestion.product if compat.suggestion else None
                if new is not None and new.pk not in ids:
                    context["swap"] = {
                        "in": new,
                        "pct": _pct(compat.suggestion.score),
                        "url": _outfit_url([new.pk if i == out else i for i in ids]),
                    }
        if 1 <= len(ids) < MAX_OUTFIT:
            context["additions"] = [
                {
                    **_scored(sp.hits[:1])[0],
                    "slot": sp.slot,
                    "add_url": _outfit_url([*ids, sp.hits[0].product.pk]),
                }
                for sp in complete_the_look(product_ids=ids, k=1)
                if sp.hits
            ]
    except UnknownProducts as exc:  # a product deleted between the two queries
        return _not_found(request, f"Unknown product id(s): {', '.join(map(str, exc.ids))}.")
    except NoActiveModel:
        context["notice"] = _model_notice()
    return render(request, "recommender/outfit.html", context)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) >= 2 else f"{value:.3f}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _flatten(metrics: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested metrics -> ``[("fine-tuned › fitb", "0.412"), ...]``."""
    if isinstance(metrics, dict):
        out: list[tuple[str, str]] = []
        for key, value in metrics.items():
            out += _flatten(value, f"{prefix} › {key}" if prefix else str(key))
        return out
    return [(prefix, _fmt(metrics))]


def _metric_order(key: str) -> tuple:
    """Sort metric names naturally (recall@5 before recall@10), counts (``n_*``, sizes) last.

    JSONB does not keep key order, so the columns are ordered here.
    """
    is_count = key.startswith("n_") or key.endswith("_size")
    return (is_count, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)])


def _evaluation(evaluation: Any) -> dict[str, Any] | None:
    """``metrics["evaluation"]`` for the template: a table (a row per evaluated model, a column per
    metric, counts last) when it maps model names to flat metric dicts, else flat ``key: value`` pairs.
    """
    if not evaluation:
        return None
    by_model = isinstance(evaluation, dict) and all(isinstance(v, dict) for v in evaluation.values())
    if by_model and not any(isinstance(x, dict) for v in evaluation.values() for x in v.values()):
        keys = list(dict.fromkeys(k for v in evaluation.values() for k in v))
        keys.sort(key=_metric_order)
        rows = [(name, [_fmt(m.get(k)) for k in keys]) for name, m in evaluation.items()]
        return {"columns": keys, "rows": rows}
    return {"pairs": _flatten(evaluation)}


@require_safe  # a read-only page: POST/PUT/DELETE answer 405
def models_page(request: HttpRequest) -> HttpResponse:
    """``/models``: the model versions with their evaluation metrics, and the last 10 training runs."""
    versions = [
        {"version": v, "evaluation": _evaluation((v.metrics or {}).get("evaluation"))}
        for v in ModelVersion.objects.all()[:50]
    ]
    runs = [
        {"run": r, "pct": round(min(max(r.progress, 0.0), 100.0))}
        for r in TrainingRun.objects.select_related("model_version")[:10]
    ]
    context = {
        "versions": versions,
        "runs": runs,
        "can_train": request.user.has_perm(MERCHANDISER_PERM),
        "train_error": _param(request.GET, "error"),
    }
    return render(request, "recommender/models.html", context)


# --- merchandiser pages ----------------------------------------------------------------------------


@login_required
@permission_required(MERCHANDISER_PERM, raise_exception=True)
def product_upload_page(request: HttpRequest) -> HttpResponse:
    """``/manage/upload``: a merchandiser adds one product; errors show inline and nothing is created."""
    from catalog.services import product_create
    from ml.slots import SLOTS

    fields = ("sku", "title", "slot", "product_type", "colour", "audience", "price", "description")
    values = {f: _param(request.POST, f, 5000 if f == "description" else 255) for f in fields}
    errors: list[str] = []
    if request.method == "POST":
        upload = request.FILES.get("image")
        price = None
        if values["price"]:
            try:
                price = Decimal(values["price"])
            except InvalidOperation:
                errors.append(f"price: {values['price']!r} is not a number")
        if upload is None:
            errors.append("image: choose a product photo")
        if not errors:
            try:
                product = product_create(
                    sku=values["sku"], title=values["title"], slot=values["slot"], image_bytes=read_upload(upload),
                    description=values["description"], product_type=values["product_type"],
                    colour=values["colour"], audience=values["audience"], price=price,
                )  # fmt: skip
            except (ImageError, ValueError) as exc:
                errors.append(str(exc))
            else:
                return redirect(reverse("product", args=[product.pk]) + "?uploaded=1")
    return render(request, "recommender/upload.html", {"values": values, "errors": errors, "slots": SLOTS})


@login_required
@permission_required(MERCHANDISER_PERM, raise_exception=True)
def training_start_page(request: HttpRequest) -> HttpResponse:
    """``POST /models/train``: start a training run from the models page (one at a time)."""
    from recommender.services import training_run_start

    if request.method != "POST":
        return redirect("models")
    try:
        epochs = min(max(int(request.POST.get("epochs", "30")), 1), 500)
    except ValueError:
        epochs = 30
    try:
        training_run_start(params={"epochs": epochs}, user=request.user)
    except ValueError as exc:
        return redirect(reverse("models") + "?" + urlencode({"error": str(exc)}))
    return redirect("models")
