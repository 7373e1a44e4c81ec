"""Server-rendered pages that need the model: product page, outfit builder (the search pages are
:mod:`recommender.search_views`), and the model registry (versions, training runs, activation and rollback); merchandisers sign in here.

Views validate a form (``recommender.forms``), call selectors (``recommender.selectors``) and shape their
answers for the templates (percentages, heat-map colours, links). When no model version is active they
still render, with a notice instead of recommendations. The catalog's own pages are ``catalog.views``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.contrib import messages
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.shortcuts import redirect, render
from django.urls import Resolver404, resolve, reverse
from django.views import defaults
from django.views.decorators.http import require_safe

from catalog.forms import ConfirmForm
from catalog.models import Product
from catalog.permissions import MERCHANDISER_PERM, merchandiser_required
from catalog.selectors import product_audience_group, product_get
from catalog.views import not_found
from ml.audience import UNISEX
from ml.config import TrainConfig
from ml.evaluate import COUNTS, ZERO_SHOT
from ml.plots import plot_metric_bars
from recommender.filters import Filters
from recommender.forms import (
    OutfitIdsForm,
    ProductPageForm,
    SignInForm,
    TrainingStartForm,
)
from recommender.looks import audience_filter, complete_the_look, one_look, outfit_compatibility
from recommender.model_words import (
    METRIC_HELP,
    early_stop_note,
    expected_duration,
    learned_row_name,
    metric_order,
    verdict,
)
from recommender.models import ModelVersion, TrainingRun
from recommender.selectors import (
    Hit,
    NoActiveModel,
    UnknownProducts,
    active_version,
    product_index_status,
    similar_items,
)
from recommender.services import (
    VersionNotReady,
    model_version_activate,
    model_version_rollback,
    training_run_start,
)

MAX_OUTFIT = 8
NO_MODEL = "No model is active yet: run make demo"
NOT_EMBEDDED = "Recommendations for this item are not ready yet: its vectors are still being computed."


# --- helpers ------------------------------------------------------------------------------------------


def _model_notice() -> str:
    """The notice for a :class:`NoActiveModel`: no version at all, or this item not embedded yet."""
    try:
        active_version()
    except NoActiveModel:
        return NO_MODEL
    return NOT_EMBEDDED


def _pct(score: float) -> int:
    """A [0, 1] score as a whole percentage, clamped."""
    return round(100 * min(max(float(score), 0.0), 1.0))


def _hue(score: float) -> int:
    """Red (0) to green (120) HSL hue for a [0, 1] score."""
    return round(120 * min(max(float(score), 0.0), 1.0))


def _scored(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    return [
        {
            "product": h.product,
            "score": h.score,
            "pct": _pct(h.score),
            "hue": _hue(h.score),
            "worn_with": getattr(h, "worn_with", 0),  # complete-the-look: outfits that held it with the item
        }
        for h in hits
    ]


def _outfit_url(ids: Sequence[int], audience: str = "match") -> str:
    any_ = "&audience=any" if audience == "any" else ""
    return f"{reverse('outfit')}?ids={','.join(str(i) for i in ids)}{any_}"


#: How the audience note names each group ("men's and unisex items").
AUDIENCE_WORDS = {"women": "women's", "men": "men's", "kids": "kids'", "baby": "baby", "unisex": "unisex"}


def _audience_note(request: HttpRequest, mode: str, products: Sequence[Product]) -> dict[str, Any]:
    """What the complete-the-look audience note says: the given products' groups, the groups picks keep
    to (None: every group fits), the mode and the link that toggles it (the page's other parameters kept)."""
    query = request.GET.copy()
    if mode == "any":
        query.pop("audience", None)
    else:
        query["audience"] = "any"
    groups = sorted({product_audience_group(product=p) for p in products})
    allowed = audience_filter(groups)
    return {
        "mode": mode,
        "items": len(products),
        "groups": [AUDIENCE_WORDS[g] for g in groups],
        "allowed": [AUDIENCE_WORDS[g] for g in allowed] if allowed else None,
        "toggle_url": f"{request.path}?{query.urlencode(safe=',')}",
    }


# --- product page and outfit builder ---------------------------------------------------------------------


@require_safe  # a read-only page: POST/PUT/DELETE answer 405
def product_page(request: HttpRequest, pk: int) -> HttpResponse:
    """``/products/<pk>``: details, similar items and complete-the-look picks for one product."""
    product = product_get(product_id=pk)
    if product is None:
        return not_found(request, f"There is no product with id {pk}.")
    form = ProductPageForm(request.GET)
    form.is_valid()  # never invalid: ids that are not ids are ignored
    outfit_ids = [i for i in form.cleaned_data["outfit"] if i != pk][: MAX_OUTFIT - 1]
    audience = form.cleaned_data["audience"]
    context: dict[str, Any] = {
        "product": product,
        "add_url": _outfit_url([*outfit_ids, pk], audience),
        "has_outfit": bool(outfit_ids),
        "audience": _audience_note(request, audience, [product]),
    }
    if request.user.has_perm(MERCHANDISER_PERM):  # merchandisers see whether the item is indexed yet
        context["can_edit"] = True
        context["index"] = product_index_status(product_id=pk)
    try:
        # similar items keep to the product's audience too (a kids' top: kids' tops), unless audience=any
        group = product_audience_group(product=product)
        keep = Filters(audience_group=group) if audience != "any" and group != UNISEX else None
        context["similar"] = _scored(similar_items(product_id=pk, k=8, filters=keep))
        looks = complete_the_look(product_ids=[pk], k=4, audience=audience)
    except UnknownProducts as exc:
        return not_found(request, f"Unknown product id(s): {', '.join(map(str, exc.ids))}.")
    except NoActiveModel:
        context["notice"] = _model_notice()
    else:
        context["looks"] = [
            {"slot": sp.slot, "pick": _scored(sp.hits[:1])[0], "alternates": _scored(sp.hits[1:])}
            for sp in looks
            if sp.hits
        ]
        context["look_url"] = _outfit_url([pk, *(h.product.pk for h in one_look(looks))], audience)
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
    form = OutfitIdsForm(request.GET)
    form.is_valid()  # never invalid: tokens that are not ids are ignored, and named
    requested, bad_tokens = form.cleaned_data["ids"], form.cleaned_data["ignored"]
    audience = form.cleaned_data["audience"]
    products = Product.objects.in_bulk(requested)
    unknown = [i for i in requested if i not in products]
    ids = [i for i in requested if i in products]
    notes: list[str] = []
    if bad_tokens:
        notes.append(f"Ignored {', '.join(repr(t) for t in bad_tokens)}: not product ids.")
    if unknown:
        notes.append(f"Unknown product id(s) {', '.join(map(str, unknown))}: ignored.")
    if len(ids) > MAX_OUTFIT:
        notes.append(f"An outfit holds at most {MAX_OUTFIT} items; the rest were dropped.")
        ids = ids[:MAX_OUTFIT]
    items = [
        {"product": products[i], "remove_url": _outfit_url([j for j in ids if j != i], audience)} for i in ids
    ]
    context: dict[str, Any] = {
        "items": items,
        "ids": ids,
        "messages_list": notes,
        "ids_csv": ",".join(map(str, ids)),
        "can_curate": request.user.has_perm(MERCHANDISER_PERM),
        "audience": _audience_note(request, audience, [products[i] for i in ids]),
    }
    try:
        if len(ids) >= 2:
            compat = outfit_compatibility(product_ids=ids, audience=audience)
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
                        "url": _outfit_url([new.pk if i == out else i for i in ids], audience),
                    }
        if 1 <= len(ids) < MAX_OUTFIT:
            context["additions"] = [
                {
                    **_scored(sp.hits[:1])[0],
                    "slot": sp.slot,
                    "add_url": _outfit_url([*ids, sp.hits[0].product.pk], audience),
                }
                for sp in complete_the_look(product_ids=ids, k=1, audience=audience)
                if sp.hits
            ]
    except UnknownProducts as exc:  # a product deleted between the two queries
        return not_found(request, f"Unknown product id(s): {', '.join(map(str, exc.ids))}.")
    except NoActiveModel:
        context["notice"] = _model_notice()
    return render(request, "recommender/outfit.html", context)


# --- model registry -------------------------------------------------------------------------------------


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


def _evaluation(evaluation: Any) -> dict[str, Any] | None:
    """``metrics["evaluation"]`` for the template: a table (a row per evaluated model, a column per
    metric, counts last) when it maps model names to flat metric dicts, else flat ``key: value`` pairs.
    """
    if not evaluation:
        return None
    by_model = isinstance(evaluation, dict) and all(isinstance(v, dict) for v in evaluation.values())
    if by_model and not any(isinstance(x, dict) for v in evaluation.values() for x in v.values()):
        keys = list(dict.fromkeys(k for v in evaluation.values() for k in v))
        keys.sort(key=metric_order)
        rows = [(name, [_fmt(m.get(k)) for k in keys]) for name, m in evaluation.items()]
        return {"columns": keys, "rows": rows, "verdict": verdict(evaluation)}
    return {"pairs": _flatten(evaluation)}


def _learned_row(version: ModelVersion | None) -> tuple[str, dict[str, float]] | None:
    """The version's own row of its held-out evaluation (``"fine-tuned"``, else the last row that is not
    a baseline or zero-shot), without counts and missing values: ``(row name, {metric: value})``."""
    evaluation = ((version.metrics or {}).get("evaluation") if version else None) or {}
    if not isinstance(evaluation, dict):
        return None
    name = learned_row_name(evaluation)
    if name is None:
        return None
    row = {
        k: float(v)
        for k, v in evaluation[name].items()
        if isinstance(v, int | float) and k not in COUNTS and not k.startswith("n_") and v == v
    }
    return name, dict(sorted(row.items(), key=lambda kv: metric_order(kv[0])))


def _reference(version: ModelVersion) -> tuple[str, dict[str, float]] | None:
    """What a version is compared with: the active version's learned row (completed by the metrics this
    version's run measured the active version on and it lacks, such as photo search), or for the active
    version (or when none is active) its own zero-shot row."""
    active = ModelVersion.objects.filter(is_active=True).first()
    if active is not None and active.pk != version.pk:
        own = _learned_row(active)
        if not own:
            return None
        # metrics the active version was measured on only in this version's run (e.g. photo search)
        name = f"active v{active.pk}"
        same_run = ((version.metrics or {}).get("evaluation") or {}).get(name)
        extra = {
            k: float(v)
            for k, v in (same_run if isinstance(same_run, dict) else {}).items()
            if k not in own[1] and isinstance(v, int | float) and v == v
        }
        return name, {**own[1], **extra}
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
            "stopped_early": early_stop_note(
                status=r.status, params=r.params, history=r.history, default_patience=TrainConfig.patience
            ),
        }
        for r in TrainingRun.objects.select_related("model_version")[:10]
    ]
    last = (
        TrainingRun.objects.filter(status=TrainingRun.Status.SUCCEEDED, started_at__isnull=False)
        .exclude(finished_at=None)
        .order_by("-finished_at")
        .first()
    )
    can_train = request.user.has_perm(MERCHANDISER_PERM)
    context = {
        "versions": versions,
        "runs": runs,
        "can_train": can_train,
        "can_rollback": can_train and ModelVersion.objects.filter(activated_at__isnull=False).count() > 1,
        "train_form": TrainingStartForm().check_photo_tuning() if can_train else None,
        "metric_help": METRIC_HELP,
        "expected_duration": expected_duration(last.finished_at - last.started_at if last else None),
    }
    return render(request, "recommender/models.html", context)


@merchandiser_required
def training_start_page(request: HttpRequest) -> HttpResponse:
    """``POST /models/train``: start a training run from the models page (one at a time); what was
    wrong comes back as a message on the models page."""
    if request.method != "POST":
        return redirect("models")
    form = TrainingStartForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"The run was not started: {form.errors_text()}")
        return redirect("models")
    try:
        run = training_run_start(params=form.params(), user=request.user)
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Training run {run.pk} queued.")
    return redirect("models")


@merchandiser_required
def model_version_activate_page(request: HttpRequest, pk: int) -> HttpResponse:
    """``POST /models/<pk>/activate``: serve this version (refused, with the reason, unless complete)."""
    if request.method == "POST" and ConfirmForm(request.POST).is_valid():
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


@merchandiser_required
def model_version_rollback_page(request: HttpRequest) -> HttpResponse:
    """``POST /models/rollback``: back to the previously active version."""
    if request.method == "POST" and ConfirmForm(request.POST).is_valid():
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


class SignInView(LoginView):
    """``/accounts/login/``: merchandisers sign in (no staff status needed)."""

    authentication_form = SignInForm
    redirect_authenticated_user = True


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """The site's 404 (``handler404``): a page's address typed with a trailing slash (``/products/12/``)
    is a permanent redirect to the page (``/products/12``, query string kept) on GET and HEAD; anything
    else is ``templates/404.html`` (Django's own APPEND_SLASH only ever adds a slash)."""
    path = request.path
    if request.method in ("GET", "HEAD") and len(path) > 1 and path.endswith("/"):
        try:
            resolve(path.rstrip("/"))
        except Resolver404:
            pass
        else:
            query = request.META.get("QUERY_STRING", "")
            return HttpResponsePermanentRedirect(path.rstrip("/") + ("?" + query if query else ""))
    return defaults.page_not_found(request, exception)
