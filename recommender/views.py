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
from pathlib import Path
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_safe

from catalog.images import ImageError, clean_upload, read_upload
from catalog.models import Product
from catalog.permissions import MERCHANDISER_PERM
from catalog.selectors import (
    import_job_get,
    import_job_list,
    outfit_list_curated,
    product_get,
    product_index_status,
)
from ml.slots import SLOT_INDEX, SLOTS
from recommender.models import ModelVersion, TrainingRun
from recommender.selectors import (
    Filters,
    Hit,
    NoActiveModel,
    UnknownProducts,
    active_version,
    complete_the_look,
    one_look,
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


def _merchandiser(view):
    """Login (redirect to the admin login) and the merchandiser permission (403 otherwise)."""
    return login_required(permission_required(MERCHANDISER_PERM, raise_exception=True)(view))


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
    elif context["slot"] and context["slot"] not in SLOTS:  # say so rather than answer "nothing found"
        context["message"] = f"There is no slot “{context['slot']}”; choose one of: {', '.join(SLOTS)}."
    else:
        # Pages are consecutive slices of one ranking (the API's paging): page p ranks p × 24 and shows
        # the last 24, up to the API's window of MAX_WINDOW ranked items.
        from recommender.serializers import MAX_WINDOW

        last = MAX_WINDOW // SEARCH_K
        raw = _param(request.GET, "page", 6)
        page = min(max(int(raw), 1), last) if raw.isdigit() else 1
        try:
            hits = text_search(query=q, k=SEARCH_K * page, filters=_filters_from(request.GET))
        except NoActiveModel:
            context["notice"] = NO_MODEL
        else:
            context["results"] = _scored(hits[(page - 1) * SEARCH_K :])
            context["page"] = page
            context["has_next"] = len(hits) == SEARCH_K * page and page < last
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
    if request.user.has_perm(MERCHANDISER_PERM):  # merchandisers see whether the item is indexed yet
        context["can_edit"] = True
        context["index"] = product_index_status(product_id=pk)
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
        context["look_url"] = _outfit_url([pk, *(h.product.pk for h in one_look(looks))])
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
        "can_curate": request.user.has_perm(MERCHANDISER_PERM),
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


def _learned_row(version: ModelVersion | None) -> tuple[str, dict[str, float]] | None:
    """The version's own row of its held-out evaluation (``"fine-tuned"``, else the last row that is not
    a baseline or zero-shot), without counts and missing values: ``(row name, {metric: value})``."""
    from ml.evaluate import BASELINES, COUNTS, ZERO_SHOT

    evaluation = ((version.metrics or {}).get("evaluation") if version else None) or {}
    if not isinstance(evaluation, dict):
        return None
    names = [n for n, row in evaluation.items() if isinstance(row, dict) and n not in (*BASELINES, ZERO_SHOT)]
    if not names:
        return None
    name = "fine-tuned" if "fine-tuned" in names else names[-1]
    row = {
        k: float(v)
        for k, v in evaluation[name].items()
        if isinstance(v, int | float) and k not in COUNTS and not k.startswith("n_") and v == v
    }
    return name, dict(sorted(row.items(), key=lambda kv: _metric_order(kv[0])))


def _reference(version: ModelVersion) -> tuple[str, dict[str, float]] | None:
    """What a version is compared with: the active version's learned row, or for the active version
    (or when none is active) its own zero-shot row."""
    from ml.evaluate import ZERO_SHOT

    active = ModelVersion.objects.filter(is_active=True).first()
    if active is not None and active.pk != version.pk:
        own = _learned_row(active)
        return (f"active v{active.pk}", own[1]) if own else None
    zero = ((version.metrics or {}).get("evaluation") or {}).get(ZERO_SHOT)
    if isinstance(zero, dict):
        return ZERO_SHOT, {k: float(v) for k, v in zero.items() if isinstance(v, int | float)}
    return None


def _comparison_table(version: ModelVersion) -> dict[str, dict[str, float]] | None:
    """``{"v3": {...}, "active v2": {...}}`` for :func:`ml.plots.plot_metric_bars`, or None."""
    own, ref = _learned_row(version), _reference(version)
    if not own or not ref:
        return None
    return {f"v{version.pk}": own[1], ref[0]: {k: ref[1][k] for k in own[1] if k in ref[1]}}


def _comparison(version: ModelVersion) -> dict[str, Any] | None:
    """Rows ``metric, this, reference, delta`` for the models page (all metrics: higher is better)."""
    own, ref = _learned_row(version), _reference(version)
    if not own or not ref:
        return None
    rows = []
    for metric, value in own[1].items():
        other = ref[1].get(metric)
        delta = None if other is None else value - other
        rows.append(
            {
                "metric": metric,
                "value": f"{value:.3f}",
                "other": "—" if other is None else f"{other:.3f}",
                "delta": "—" if delta is None else f"{delta:+.3f}",
                "sign": "" if delta is None or abs(delta) < 5e-4 else ("up" if delta > 0 else "down"),
            }
        )
    return {"against": ref[0], "rows": rows}


@require_safe  # a read-only page: POST/PUT/DELETE answer 405
def models_page(request: HttpRequest) -> HttpResponse:
    """``/models``: model versions (evaluation, comparison with the active one, activate/rollback), the
    last 10 training runs with live progress and loss curve, and the start-a-run form."""
    versions = [
        {
            "version": v,
            "evaluation": _evaluation((v.metrics or {}).get("evaluation")),
            "compare": _comparison(v),
        }
        for v in ModelVersion.objects.all()[:50]
    ]
    runs = [
        {
            "run": r,
            "pct": round(min(max(r.progress, 0.0), 100.0)),
            "live": r.status in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING),
            "has_history": bool((r.history or {}).get("loss")),
        }
        for r in TrainingRun.objects.select_related("model_version")[:10]
    ]
    can_train = request.user.has_perm(MERCHANDISER_PERM)
    context = {
        "versions": versions,
        "runs": runs,
        "can_train": can_train,
        "can_rollback": can_train and ModelVersion.objects.filter(activated_at__isnull=False).count() > 1,
        "train_defaults": TRAIN_DEFAULTS,
        "miners": ["semi-hard", "batch-hard", "batch-all", "random"],
    }
    return render(request, "recommender/models.html", context)


# --- merchandiser pages ----------------------------------------------------------------------------


@_merchandiser
def product_upload_page(request: HttpRequest) -> HttpResponse:
    """``/manage/upload``: a merchandiser adds one product; errors show inline and nothing is created."""
    from catalog.services import product_create

    values = _product_form_values(request.POST)
    errors: list[str] = []
    if request.method == "POST":
        upload = request.FILES.get("image")
        price = _price(values["price"], errors)
        if upload is None:
            errors.append("image: choose a product photo")
        if not errors:
            try:
                product = product_create(
                    sku=values["sku"],
                    title=values["title"],
                    slot=values["slot"],
                    image_bytes=read_upload(upload),
                    description=values["description"],
                    product_type=values["product_type"],
                    colour=values["colour"],
                    audience=values["audience"],
                    price=price,
                    variant_group=values["variant_group"],
                )
            except (ImageError, ValueError) as exc:
                errors.append(str(exc))
            else:
                return redirect(reverse("product", args=[product.pk]) + "?uploaded=1")
    return render(request, "recommender/upload.html", {"values": values, "errors": errors, "slots": SLOTS})


#: The training parameters the models page offers (the API's ``TrainingRunCreateSerializer`` validates them).
TRAIN_FIELDS = ("epochs", "batch_size", "lr", "temperature", "margin", "miner")
TRAIN_DEFAULTS = {
    "epochs": "30",
    "batch_size": "256",
    "lr": "0.001",
    "temperature": "0.07",
    "margin": "0.2",
    "miner": "semi-hard",
}


@_merchandiser
def training_start_page(request: HttpRequest) -> HttpResponse:
    """``POST /models/train``: start a training run from the models page (one at a time).

    The fields are validated by the API's ``TrainingRunCreateSerializer``; errors come back as messages.
    """
    from recommender.api import flatten_errors
    from recommender.serializers import TrainingRunCreateSerializer
    from recommender.services import training_run_start

    if request.method != "POST":
        return redirect("models")
    data = {f: request.POST[f].strip() for f in TRAIN_FIELDS if request.POST.get(f, "").strip()}
    ser = TrainingRunCreateSerializer(data=data)
    if not ser.is_valid():
        messages.error(request, f"The run was not started: {flatten_errors(ser.errors)}")
        return redirect("models")
    try:
        run = training_run_start(params=dict(ser.validated_data), user=request.user)
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Training run {run.pk} queued.")
    return redirect("models")


@_merchandiser
def model_version_activate_page(request: HttpRequest, pk: int) -> HttpResponse:
    """``POST /models/<pk>/activate``: serve this version (refused, with the reason, unless complete)."""
    from recommender.services import VersionNotReady, model_version_activate

    if request.method == "POST":
        version = ModelVersion.objects.filter(pk=pk).first()
        if version is None:
            messages.error(request, f"There is no model version {pk}.")
        else:
            try:
                model_version_activate(version=version, require_complete=True, queue_missing=True)
            except VersionNotReady as exc:
                messages.error(request, f"Not activated: {exc}.")
            else:
                messages.success(request, f"{version.name} (v{version.pk}) now serves the site.")
    return redirect("models")


@_merchandiser
def model_version_rollback_page(request: HttpRequest) -> HttpResponse:
    """``POST /models/rollback``: back to the previously active version."""
    from recommender.services import VersionNotReady, model_version_rollback

    if request.method == "POST":
        try:
            version = model_version_rollback(queue_missing=True)
        except VersionNotReady as exc:
            messages.error(request, f"No rollback: {exc}.")
        else:
            messages.success(request, f"Rolled back: {version.name} (v{version.pk}) serves the site again.")
    return redirect("models")


@require_safe  # a read-only image: POST answers 405
def model_compare_png(request: HttpRequest, pk: int) -> HttpResponse:
    """``/models/<pk>/compare.png``: bars of this version's held-out metrics next to the active one's
    (:func:`ml.plots.plot_metric_bars`, drawn on request; 404 when either has no evaluation)."""
    import tempfile

    from ml.plots import plot_metric_bars

    version = ModelVersion.objects.filter(pk=pk).first()
    table = _comparison_table(version) if version else None
    if not table:
        return HttpResponse(status=404)
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_metric_bars(
            table, Path(tmp) / "compare.png", title="Held-out evaluation", figsize=(7.0, 3.6)
        )
        png = path.read_bytes()
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "max-age=60"
    return response


def _product_form_values(post) -> dict[str, str]:
    fields = (
        "sku",
        "title",
        "slot",
        "product_type",
        "colour",
        "audience",
        "price",
        "description",
        "variant_group",
    )
    # Not cut to the fields' limits: product_validate reports an over-long value with its real length
    # ("title: 5000 characters is over the limit of 255") instead of storing it silently shortened.
    return {f: _param(post, f, max_len=100_000) for f in fields}


def _price(raw: str, errors: list[str]) -> Decimal | None:
    if not raw:
        return None
    try:
        return Decimal(raw)
    except InvalidOperation:
        errors.append(f"price: {raw!r} is not a number")
        return None


@_merchandiser
def product_edit_page(request: HttpRequest, pk: int) -> HttpResponse:
    """``/manage/products/<pk>/edit``: change details and optionally the photo; errors inline, nothing
    written on error; a changed photo, text or slot re-queues the product's embedding."""
    from catalog.services import EDITABLE_FIELDS, product_update

    product = product_get(product_id=pk)
    if product is None:
        return _not_found(request, f"There is no product with id {pk}.")
    errors: list[str] = []
    if request.method == "POST":
        values = _product_form_values(request.POST)
        price = _price(values["price"], errors)
        upload = request.FILES.get("image")
        if not errors:
            try:
                image_bytes = read_upload(upload) if upload is not None else None
                changed = product_update(
                    product=product,
                    data={**{f: values[f] for f in EDITABLE_FIELDS if f != "price"}, "price": price},
                    image_bytes=image_bytes,
                )
            except (ImageError, ValueError) as exc:
                errors.append(str(exc))
            else:
                if changed:
                    messages.success(request, f"Saved: {', '.join(changed)} changed.")
                else:
                    messages.info(request, "Nothing changed.")
                return redirect("product", pk=product.pk)
    else:
        values = {f: "" if getattr(product, f) is None else str(getattr(product, f)) for f in EDITABLE_FIELDS}
        values["sku"] = product.sku
    values["sku"] = product.sku
    return render(
        request,
        "recommender/product_edit.html",
        {"product": product, "values": values, "errors": errors, "slots": SLOTS},
    )


@_merchandiser
def product_delete_page(request: HttpRequest, pk: int) -> HttpResponse:
    """``/manage/products/<pk>/delete``: GET asks for confirmation, POST deletes."""
    from catalog.services import product_delete

    product = product_get(product_id=pk)
    if product is None:
        return _not_found(request, f"There is no product with id {pk}.")
    if request.method == "POST":
        title = str(product)
        product_delete(product=product)
        messages.success(request, f"Deleted {title}.")
        return redirect("catalog")
    return render(
        request, "recommender/product_delete.html", {"product": product, "n_outfits": product.outfits.count()}
    )


@_merchandiser
def outfit_list_page(request: HttpRequest) -> HttpResponse:
    """``/manage/outfits``: curated outfits (training data), 24 per page, each with a delete button."""
    page = Paginator(outfit_list_curated(), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "recommender/outfits.html", {"page": page})


@_merchandiser
def outfit_save_page(request: HttpRequest) -> HttpResponse:
    """``POST /manage/outfits/new`` (from the outfit builder): save ``ids`` as a curated outfit."""
    from catalog.services import outfit_create

    if request.method != "POST":
        return redirect("outfit-list")
    ids, bad = _parse_ids(request.POST.get("ids", ""))
    name = _param(request.POST, "name", 255)
    try:
        if bad:
            raise ValueError(f"not product ids: {', '.join(repr(t) for t in bad)}")
        outfit = outfit_create(product_ids=ids, name=name)
    except ValueError as exc:
        messages.error(request, f"The outfit was not saved: {exc}.")
        return redirect(_outfit_url(ids))
    messages.success(request, f"Saved “{outfit}” ({len(ids)} items) as a curated outfit for training.")
    return redirect("outfit-list")


@_merchandiser
def outfit_delete_page(request: HttpRequest, pk: int) -> HttpResponse:
    """``POST /manage/outfits/<pk>/delete``: delete a curated outfit."""
    from catalog.models import Outfit
    from catalog.services import outfit_delete

    if request.method == "POST":
        outfit = Outfit.objects.filter(pk=pk).first()
        if outfit is None:
            messages.error(request, f"There is no outfit {pk}.")
        else:
            outfit_delete(outfit=outfit)
            messages.success(request, f"Deleted {outfit}.")
    return redirect("outfit-list")


#: The example CSV offered on the import page (real H&M articles; the zip holds their photos).
EXAMPLE_CSV = (
    "sku,title,slot,image,colour,product_type,audience,price,description,variant_group\n"
    "0108775015,Strap top,top,0108775015.jpg,Black,Vest top,Ladieswear,9.99,"
    '"Jersey top with narrow shoulder straps.",0108775\n'
    "0110065001,OP T-shirt (Idro),top,photos/0110065001.jpg,Black,Bra,Lingeries/Tights,,"
    '"Microfibre T-shirt bra with underwired, moulded, lightly padded cups.",0110065\n'
)


@_merchandiser
def import_page(request: HttpRequest) -> HttpResponse:
    """``/manage/import``: upload a CSV and a zip of photos; the import runs on a worker (ImportJob)."""
    from catalog.services import (
        IMPORT_MAX_CSV_BYTES,
        IMPORT_MAX_ZIP_BYTES,
        IMPORT_OPTIONAL_COLUMNS,
        IMPORT_REQUIRED_COLUMNS,
        ImportFileError,
        import_job_create,
    )
    from ml.slots import SLOTS

    errors: list[str] = []
    if request.method == "POST":
        csv_upload = request.FILES.get("csv")
        if csv_upload is None:
            errors.append("csv: choose the products CSV")
        else:
            try:
                job = import_job_create(
                    csv_upload=csv_upload, zip_upload=request.FILES.get("images"), user=request.user
                )
            except ImportFileError as exc:
                errors.append(str(exc))
            else:
                return redirect("import-job", pk=job.pk)
    context = {
        "errors": errors,
        "jobs": import_job_list(limit=10),
        "required": IMPORT_REQUIRED_COLUMNS,
        "optional": IMPORT_OPTIONAL_COLUMNS,
        "slots": SLOTS,
        "max_csv_mb": IMPORT_MAX_CSV_BYTES // 2**20,
        "max_zip_mb": IMPORT_MAX_ZIP_BYTES // 2**20,
    }
    return render(request, "recommender/import.html", context)


@_merchandiser
def import_example_csv(request: HttpRequest) -> HttpResponse:
    """``/manage/import/example.csv``: a CSV with every column, to copy."""
    response = HttpResponse(EXAMPLE_CSV, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="products-example.csv"'
    return response


@_merchandiser
def import_job_page(request: HttpRequest, pk: int) -> HttpResponse:
    """``/manage/import/<pk>``: progress (polled by static/js/progress.js), counts and rejected rows."""
    from catalog.models import ImportJob

    try:
        job = import_job_get(job_id=pk)
    except ImportJob.DoesNotExist:
        return _not_found(request, f"There is no import job {pk}.")
    return render(request, "recommender/import_job.html", {"job": job, "rejections": job.rejections[:200]})


@_merchandiser
def import_report_csv(request: HttpRequest, pk: int) -> HttpResponse:
    """``/manage/import/<pk>/rejected.csv``: the rejected rows (row, sku, field, message) as CSV."""
    import csv
    import io

    from catalog.models import ImportJob

    try:
        job = import_job_get(job_id=pk)
    except ImportJob.DoesNotExist:
        return _not_found(request, f"There is no import job {pk}.")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["row", "sku", "field", "message"])
    if job.file_error:
        writer.writerow(["", "", "file", job.file_error])
    writer.writerows([r["row"], r["sku"], r["field"], r["message"]] for r in job.rejections)
    response = HttpResponse(buf.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="import-{job.pk}-rejected.csv"'
    return response


class SignInForm(AuthenticationForm):
    """Django's sign-in form, refusing a user name locked out for password guessing
    (:mod:`recommender.login_guard`) before the password is even checked."""

    def clean(self):
        from recommender import login_guard

        username = self.cleaned_data.get("username") or ""
        if username and login_guard.locked_out(self.request, username):
            raise forms.ValidationError(login_guard.lockout_message(), code="locked_out")
        return super().clean()


class SignInView(LoginView):
    """``/accounts/login/``: merchandisers sign in (no staff status needed)."""

    authentication_form = SignInForm
    redirect_authenticated_user = True
