"""What every JSON endpoint shares (both apps' ``apis``): the error format, the throttle, ranked pages
and the cache of hot answers.

``REST_FRAMEWORK`` names :func:`exception_handler` and :class:`ScopedThrottle` by their dotted paths, so
the catalog's endpoints answer the same way without importing this app. Every error answers
``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseServerError,
    JsonResponse,
)
from django.template import loader
from rest_framework import status
from rest_framework.exceptions import APIException, Throttled, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle

from catalog.images import ImageError
from recommender import answer_cache, selectors
from recommender.models import ModelVersion
from recommender.serializers import MAX_WINDOW, HitSerializer
from recommender.services import TrainingRunBusy, VersionNotReady

logger = logging.getLogger(__name__)

# --- the error format -------------------------------------------------------------------------------------


def exception_handler(exc, context):
    """DRF exception handler producing the single JSON error format, also for selector errors.

    An :class:`APIException` may carry ``details`` (a dict) for the error body.
    """
    # Imported here, not at the top: DRF imports this module (DEFAULT_THROTTLE_CLASSES) while it defines
    # APIView in rest_framework.views, so importing that module first would be a cycle.
    from rest_framework.views import exception_handler as drf_exception_handler

    if isinstance(exc, selectors.UnknownProducts):
        return Response(
            {"error": {"code": "unknown_products", "message": str(exc), "details": {"ids": exc.ids}}},
            status=status.HTTP_404_NOT_FOUND,
        )
    if isinstance(exc, selectors.NoActiveModel):
        return Response(
            {"error": {"code": "no_active_model", "message": str(exc), "details": {}}},
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, TrainingRunBusy):
        return Response(
            {"error": {"code": "training_busy", "message": str(exc), "details": {"run": exc.run.pk}}},
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, VersionNotReady):
        return Response(
            {"error": {"code": "version_not_ready", "message": str(exc), "details": {}}},
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, (ValueError, ImageError)) and not isinstance(exc, APIException):
        return Response(
            {"error": {"code": "invalid", "message": str(exc), "details": {}}},
            status=status.HTTP_400_BAD_REQUEST,
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, ValidationError):
        details = response.data
        code = "invalid"
        if getattr(exc, "unknown_ids", None):  # see unknown_ids_are_400
            code, details = "unknown_products", {"ids": exc.unknown_ids}
        response.data = {
            "error": {"code": code, "message": flatten_errors(response.data), "details": details}
        }
    else:
        detail = (
            response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
        )
        code = getattr(exc, "default_code", None) or _STATUS_CODES.get(response.status_code, "error")
        if isinstance(exc, Throttled) and exc.wait is not None:
            details = {"retry_after_s": exc.wait}
        else:
            details = getattr(exc, "details", None) or {}
        response.data = {"error": {"code": code, "message": str(detail), "details": details}}
    return response


_STATUS_CODES = {
    400: "invalid",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    415: "unsupported_media_type",
    429: "throttled",
}


def flatten_errors(details, prefix: str = "") -> str:
    """DRF's nested error structure → one readable line: ``"product_ids[0]: A valid integer is required."``."""
    if isinstance(details, dict):
        parts = []
        for key, value in details.items():
            where = (
                f"{prefix}[{key}]" if isinstance(key, int) else (f"{prefix}.{key}" if prefix else str(key))
            )
            parts.append(flatten_errors(value, where))
        return "; ".join(p for p in parts if p)
    if isinstance(details, list):
        if all(not isinstance(v, (dict, list)) for v in details):
            text = " ".join(str(v) for v in details)
            return f"{prefix}: {text}" if prefix else text
        return "; ".join(flatten_errors(v, f"{prefix}[{i}]") for i, v in enumerate(details) if v)
    return f"{prefix}: {details}" if prefix else str(details)


def api_not_found(request: HttpRequest, *args, **kwargs) -> JsonResponse:
    """Unknown ``/api/`` paths answer the JSON error format, not Django's HTML 404 page."""
    return JsonResponse(
        {"error": {"code": "not_found", "message": f"no API endpoint at {request.path}", "details": {}}},
        status=404,
    )


def server_error(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    """``handler500``: a JSON error under ``/api/``, else ``templates/500.html``; never internals.

    The answer holds no traceback, path or setting (the error is logged with its traceback and the
    request id by ``recommender.middleware``); Django calls it whenever ``DEBUG`` is off, which is every
    server the project starts unless ``manage.py demo --debug`` asks for the debug page. It renders without a
    request context, so it touches neither the database nor the cache, which may be what failed.
    """
    if request.path.startswith("/api/"):
        message = "the server failed to answer; try again in a moment"
        body = {"error": {"code": "server_error", "message": message, "details": {}}}
        return JsonResponse(body, status=500)
    return HttpResponseServerError(loader.get_template("500.html").render({}))


def get_or_404(model, pk: int, label: str):
    """The row, or a JSON 404 naming what was not found (``"no training run 7"``)."""
    try:
        return model.objects.get(pk=pk)
    except model.DoesNotExist as exc:
        raise Http404(f"no {label} {pk}") from exc


def unknown_ids_are_400(exc: selectors.UnknownProducts) -> ValidationError:
    """Unknown ids in a request body are invalid input (400), not a missing resource (404)."""
    err = ValidationError({"product_ids": [f"unknown product id(s): {exc.ids}"]})
    err.unknown_ids = exc.ids
    return err


# --- throttling -----------------------------------------------------------------------------------------


class ScopedThrottle(ScopedRateThrottle):
    """DRF's scoped throttle (``throttle_scope`` on the view), rates read from settings at request time;
    ``REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"]`` puts it on every view (views without a scope are not
    throttled).

    Rates come from ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` (env ``THROTTLE_RATE_SEARCH``,
    ``THROTTLE_RATE_PHOTO_SEARCH``, ``THROTTLE_RATE_UPLOAD``; e.g. ``"120/min"``), counted per user
    when logged in, else per client IP, in the Django cache (Redis). When the cache is down the request
    is let through (logged): a broken cache must not turn reads into 500s.
    """

    def get_rate(self) -> str | None:
        return settings.REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {}).get(self.scope)

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except answer_cache.CACHE_ERRORS as exc:
            logger.warning(
                "throttle %s skipped, cache unavailable: %s", getattr(view, "throttle_scope", "?"), exc
            )
            return True


# --- ranked answers: pages and the cache ----------------------------------------------------------------


def ranked_page(
    request: Request, *, hits: list, page: int, k: int, serializer: type = HitSerializer
) -> dict[str, Any]:
    """The page ``page`` (k hits) of a ranked answer that holds ``page * k`` hits at most."""
    results = hits[(page - 1) * k : page * k]
    has_next = len(hits) == page * k and (page + 1) * k <= MAX_WINDOW
    base = request.build_absolute_uri(request.path)

    def url(p: int) -> str:
        query = request.query_params.copy()
        query["page"] = str(p)
        return f"{base}?{query.urlencode()}"

    return {
        "page": page,
        "k": k,
        "next": url(page + 1) if has_next else None,
        "previous": url(page - 1) if page > 1 else None,
        "results": serializer(results, many=True).data,
    }


def _cache_key(
    *, version: ModelVersion, name: str, params: dict[str, Any], generation: int | None = None
) -> str:
    """``answer:v<id>-<created µs>:g<generation>:<name>:<sha256 of the params>``.

    Activating a version changes every key, and so does any catalog change shoppers must see
    (:mod:`recommender.answer_cache` bumps the generation). The creation time makes keys unique even when a
    rebuilt database reuses version ids.

    Raises:
        RedisError, OSError: reading the generation from a cache that is down.
    """
    gen = answer_cache.generation() if generation is None else generation
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    stamp = int(version.created_at.timestamp() * 1e6)
    return f"answer:v{version.pk}-{stamp}:g{gen}:{name}:{hashlib.sha256(blob).hexdigest()[:32]}"


def cached_answer(*, name: str, params: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """A JSON-ready answer from the cache, or ``compute()`` stored for ``RECOMMENDATION_CACHE_SECONDS``.

    The key carries the active model version and the catalog generation (:func:`_cache_key`), so
    activation, rollback, a new product becoming searchable, an edit or a deletion never serve an older
    answer. Any cache error degrades to computing the answer (logged), never to a 500.

    Raises:
        whatever ``compute`` raises (e.g. :class:`selectors.NoActiveModel` when no version is active).
    """
    seconds = settings.RECOMMENDATION_CACHE_SECONDS
    if seconds <= 0:
        return compute()
    version = selectors.active_version()
    try:
        key = _cache_key(version=version, name=name, params=params)
        hit = cache.get(key)
    except answer_cache.CACHE_ERRORS as exc:  # connection refused, timeout: answer without the cache
        logger.warning("cache read failed (%s); answering without the cache", exc)
        return compute()
    if hit is not None:
        return hit
    data = compute()
    try:
        cache.set(key, data, seconds)
    except answer_cache.CACHE_ERRORS as exc:
        logger.warning("cache write failed (%s)", exc)
    return data
