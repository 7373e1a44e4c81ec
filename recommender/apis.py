"""The JSON API (DRF). Every error answers ``{"error": {"code", "message", "details"}}``.

Views only validate input and call selectors/services; the OpenAPI 3 schema is at ``/api/schema/``
with Swagger UI at ``/api/docs/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import APIException, Throttled, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from catalog.images import ImageError, clean_upload, read_upload
from catalog.models import Product
from catalog.services import product_create
from recommender import answer_cache, selectors
from recommender import serializers as s
from recommender.models import ModelVersion, TrainingRun
from recommender.permissions import MERCHANDISER_PERM
from recommender.services import (
    TrainingRunBusy,
    VersionNotReady,
    model_version_activate,
    model_version_rollback,
    training_run_cancel,
    training_run_start,
)

logger = logging.getLogger(__name__)


def exception_handler(exc, context):
    """DRF exception handler producing the single JSON error format, also for selector errors."""
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
        if getattr(exc, "unknown_ids", None):  # see _unknown_ids_are_400
            code, details = "unknown_products", {"ids": exc.unknown_ids}
        response.data = {
            "error": {"code": code, "message": _flatten_errors(response.data), "details": details}
        }
    else:
        detail = (
            response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
        )
        code = getattr(exc, "default_code", None) or _STATUS_CODES.get(response.status_code, "error")
        details = {"retry_after_s": exc.wait} if isinstance(exc, Throttled) and exc.wait is not None else {}
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


def _flatten_errors(details, prefix: str = "") -> str:
    """DRF's nested error structure → one readable line: ``"product_ids[0]: A valid integer is required."``."""
    if isinstance(details, dict):
        parts = []
        for key, value in details.items():
            where = (
                f"{prefix}[{key}]" if isinstance(key, int) else (f"{prefix}.{key}" if prefix else str(key))
            )
            parts.append(_flatten_errors(value, where))
        return "; ".join(p for p in parts if p)
    if isinstance(details, list):
        if all(not isinstance(v, (dict, list)) for v in details):
            text = " ".join(str(v) for v in details)
            return f"{prefix}: {text}" if prefix else text
        return "; ".join(_flatten_errors(v, f"{prefix}[{i}]") for i, v in enumerate(details) if v)
    return f"{prefix}: {details}" if prefix else str(details)


def api_not_found(request, *args, **kwargs):
    """Unknown ``/api/`` paths answer the JSON error format, not Django's HTML 404 page."""
    from django.http import JsonResponse

    return JsonResponse(
        {"error": {"code": "not_found", "message": f"no API endpoint at {request.path}", "details": {}}},
        status=404,
    )


def _get_or_404(model, pk: int, label: str):
    """The row, or a JSON 404 naming what was not found."""
    try:
        return model.objects.get(pk=pk)
    except model.DoesNotExist as exc:
        raise Http404(f"no {label} {pk}") from exc


def _filters(data: dict) -> selectors.Filters:
    return selectors.Filters(
        **{k: data.get(k) for k in ("slot", "product_type", "colour", "audience", "price_min", "price_max")}
    )


class ScopedThrottle(ScopedRateThrottle):
    """DRF's scoped throttle (``throttle_scope`` on the view), rates read from settings at request time.

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
    answer. Any cache error degrades to computing the answer (logged),
    never to a 500.

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


def _page(request: Request, *, hits: list, page: int, k: int) -> dict[str, Any]:
    """The page ``page`` (k hits) of a ranked answer that holds ``page * k`` hits at most."""
    results = hits[(page - 1) * k : page * k]
    has_next = len(hits) == page * k and (page + 1) * k <= s.MAX_WINDOW
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
        "results": s.HitSerializer(results, many=True).data,
    }


def _unknown_ids_are_400(exc: selectors.UnknownProducts) -> ValidationError:
    """Unknown ids in a request body are invalid input (400), not a missing resource (404)."""
    err = ValidationError({"product_ids": [f"unknown product id(s): {exc.ids}"]})
    err.unknown_ids = exc.ids
    return err


_ERRORS = {
    400: OpenApiResponse(s.ErrorSerializer, description="invalid input; the message names the field"),
    409: OpenApiResponse(s.ErrorSerializer, description="no active model version"),
}
_NOT_FOUND = {404: OpenApiResponse(s.ErrorSerializer, description="unknown product id")}
_THROTTLED = {429: OpenApiResponse(s.ErrorSerializer, description="too many requests; details.retry_after_s")}


class ProductListApi(generics.ListAPIView):
    """Products, filterable by ``slot``, ``colour``, ``audience``, ``product_type``. POST (merchandisers,
    multipart) creates a product from a photo and its details and queues its embedding."""

    serializer_class = s.ProductSerializer
    parser_classes = [MultiPartParser]
    throttle_scope = "upload"

    def get_throttles(self):
        return [ScopedThrottle()] if self.request.method == "POST" else []

    @extend_schema(parameters=[s.FilterSerializer])
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        f = s.FilterSerializer(data=self.request.query_params)
        f.is_valid(raise_exception=True)
        qs = Product.objects.all()
        for key in ("slot", "colour", "audience", "product_type"):
            value = f.validated_data.get(key)
            if value:
                qs = qs.filter(**{f"{key}__iexact": value})
        if f.validated_data.get("price_min") is not None:
            qs = qs.filter(price__gte=f.validated_data["price_min"])
        if f.validated_data.get("price_max") is not None:
            qs = qs.filter(price__lte=f.validated_data["price_max"])
        return qs

    @extend_schema(
        request=s.ProductCreateSerializer, responses={201: s.ProductSerializer, **_ERRORS, **_THROTTLED}
    )
    def post(self, request: Request) -> Response:
        ser = s.ProductCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = dict(ser.validated_data)
        image = data.pop("image")
        try:
            product = product_create(image_bytes=read_upload(image, name=data["sku"]), **data)
        except ImageError as exc:  # the photo: name the field, like every other validation error
            raise ValidationError({"image": [str(exc)]}) from exc
        except ValueError as exc:  # product_validate / a duplicate SKU: "<field>: <reason>"
            field, sep, reason = str(exc).partition(": ")
            if sep and field in ser.fields:
                raise ValidationError({field: [reason]}) from exc
            raise
        return Response(s.ProductSerializer(product).data, status=status.HTTP_201_CREATED)


class ProductDetailApi(generics.RetrieveAPIView):
    """One product."""

    queryset = Product.objects.all()
    serializer_class = s.ProductSerializer

    def get_object(self):
        try:
            return Product.objects.get(pk=self.kwargs["pk"])
        except Product.DoesNotExist as exc:
            raise selectors.UnknownProducts([self.kwargs["pk"]]) from exc


class SimilarApi(APIView):
    """Items most similar to a product (cosine similarity in the general space), paginated.

    Filters (slot, product type, colour, audience, price range) run inside the indexed query;
    ``mmr=<λ>`` re-ranks a candidate pool for diversity; hot answers are cached per model version.
    """

    @extend_schema(
        parameters=[s.SimilarQuerySerializer], responses={200: s.HitPageSerializer, **_ERRORS, **_NOT_FOUND}
    )
    def get(self, request: Request, pk: int) -> Response:
        q = s.SimilarQuerySerializer(data=request.query_params)
        q.is_valid(raise_exception=True)
        d = q.validated_data

        def compute() -> list[dict]:
            hits = selectors.similar_items(
                product_id=pk,
                k=d["k"] * d["page"],
                space=d["space"],
                exclude_variants=d["exclude_variants"],
                filters=_filters(d),
                mmr_lambda=d["mmr"],
            )
            return _page(request, hits=hits, page=d["page"], k=d["k"])

        return Response(cached_answer(name="similar", params={"pk": pk, **d}, compute=compute))


class SearchApi(APIView):
    """Free-text search ("black leather ankle boots") with optional filters, paginated (throttled)."""

    throttle_classes = [ScopedThrottle]
    throttle_scope = "search"

    @extend_schema(
        parameters=[s.SearchQuerySerializer], responses={200: s.HitPageSerializer, **_ERRORS, **_THROTTLED}
    )
    def get(self, request: Request) -> Response:
        q = s.SearchQuerySerializer(data=request.query_params)
        q.is_valid(raise_exception=True)
        d = q.validated_data

        def compute() -> dict:
            hits = selectors.text_search(
                query=d["q"], k=d["k"] * d["page"], filters=_filters(d), mmr_lambda=d["mmr"]
            )
            return _page(request, hits=hits, page=d["page"], k=d["k"])

        params = {**d, "q": " ".join(d["q"].split()).lower()}  # the text tower lower-cases anyway
        return Response(cached_answer(name="search", params=params, compute=compute))


class PhotoSearchApi(APIView):
    """Search by photo: upload an image (multipart field ``image``, optional ``k`` and filters), throttled."""

    parser_classes = [MultiPartParser]
    public_post = True
    throttle_classes = [ScopedThrottle]
    throttle_scope = "photo_search"

    @extend_schema(
        request={"multipart/form-data": s.PhotoSearchSerializer},
        responses={200: s.HitSerializer(many=True), **_ERRORS, **_THROTTLED},
    )
    def post(self, request: Request) -> Response:
        upload = request.FILES.get("image")
        if upload is None:
            raise ValidationError({"image": ["upload a photo in the multipart field 'image'"]})
        ser = s.PhotoSearchSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        d = ser.validated_data
        try:  # the same checks as product uploads: size, decoding, shape limits, EXIF, RGB
            clean = clean_upload(upload, name="photo")
        except ImageError as exc:
            raise ValidationError({"image": [str(exc)]}) from exc
        hits = selectors.photo_search(image=clean.image, k=d["k"], filters=_filters(d))
        return Response(s.HitSerializer(hits, many=True).data)


class CompleteTheLookApi(APIView):
    """Given 1..8 products, the best items for each missing slot (pick + alternates), ranked by total
    compatibility with all of them; never an item of a slot the outfit already has."""

    public_post = True

    @extend_schema(
        request=s.ProductIdsSerializer, responses={200: s.SlotPicksSerializer(many=True), **_ERRORS}
    )
    def post(self, request: Request) -> Response:
        ser = s.ProductIdsSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        ids, k = ser.validated_data["product_ids"], ser.validated_data["k"]

        def compute() -> list[dict]:
            try:
                picks = selectors.complete_the_look(product_ids=ids, k=k)
            except selectors.UnknownProducts as exc:
                raise _unknown_ids_are_400(exc) from exc
            return s.SlotPicksSerializer(picks, many=True).data

        return Response(cached_answer(name="complete", params={"ids": sorted(ids), "k": k}, compute=compute))


class CompatibilityApi(APIView):
    """Compatibility score in [0, 1] of a set of 2..8 products, with the pairwise matrix, the weakest
    pair and a suggested replacement for its weaker item."""

    public_post = True

    @extend_schema(request=s.ProductIdsSerializer, responses={200: s.CompatibilitySerializer, **_ERRORS})
    def post(self, request: Request) -> Response:
        ser = s.ProductIdsSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        ids = ser.validated_data["product_ids"]
        if len(ids) < 2:  # a set needs a pair; said like the serializer's own limits, on the field
            raise ValidationError(
                {"product_ids": [f"give 2 to {s.MAX_OUTFIT_ITEMS} distinct product ids (got {len(ids)})"]}
            )

        def compute() -> dict:
            try:
                result = selectors.outfit_compatibility(product_ids=ids)
            except selectors.UnknownProducts as exc:
                raise _unknown_ids_are_400(exc) from exc
            return s.CompatibilitySerializer(result).data

        return Response(cached_answer(name="compatibility", params={"ids": ids}, compute=compute))


class ModelVersionListApi(generics.ListAPIView):
    """Model versions with their evaluation metrics; the active one serves."""

    queryset = ModelVersion.objects.all()
    serializer_class = s.ModelVersionSerializer


class TrainingRunListApi(generics.ListAPIView):
    """Training runs with live progress. POST (merchandisers) starts one."""

    queryset = TrainingRun.objects.all()
    serializer_class = s.TrainingRunSerializer

    @extend_schema(request=s.TrainingRunCreateSerializer, responses={202: s.TrainingRunSerializer})
    def post(self, request: Request) -> Response:
        ser = s.TrainingRunCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        run = training_run_start(params=ser.validated_data, user=request.user)
        return Response(s.TrainingRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class TrainingRunDetailApi(generics.RetrieveAPIView):
    """One training run (poll it for progress)."""

    queryset = TrainingRun.objects.all()
    serializer_class = s.TrainingRunSerializer

    def get_object(self):
        return _get_or_404(TrainingRun, self.kwargs["pk"], "training run")


class ModelVersionActivateApi(APIView):
    """Serve this model version (merchandisers). 409 unless every product has its vectors."""

    @extend_schema(request=None, responses=s.ModelVersionSerializer)
    def post(self, request: Request, pk: int) -> Response:
        version = _get_or_404(ModelVersion, pk, "model version")
        return Response(
            s.ModelVersionSerializer(
                model_version_activate(version=version, require_complete=True, queue_missing=True)
            ).data
        )


class ModelVersionRollbackApi(APIView):
    """Roll back to the previously active model version (merchandisers), in one transaction."""

    @extend_schema(request=None, responses=s.ModelVersionSerializer)
    def post(self, request: Request) -> Response:
        return Response(s.ModelVersionSerializer(model_version_rollback(queue_missing=True)).data)


class TrainingRunCancelApi(APIView):
    """Cancel a queued or running training run (merchandisers); the active version keeps serving."""

    @extend_schema(request=None, responses=s.TrainingRunSerializer)
    def post(self, request: Request, pk: int) -> Response:
        run = _get_or_404(TrainingRun, pk, "training run")
        return Response(s.TrainingRunSerializer(training_run_cancel(run=run)).data)


# --- small JSON endpoints the pages poll --------------------------------------------------------------


class IsMerchandiser(BasePermission):
    """Logged-in users with the merchandiser permission, for every method (reads too)."""

    message = "this needs a logged-in merchandiser"

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm(MERCHANDISER_PERM))


class ImportJobDetailApi(APIView):
    """One bulk import job (merchandisers): status, counts, progress percent and the first 50 rejections.

    The import page polls it every second for its progress bar.
    """

    permission_classes = [IsMerchandiser]

    @extend_schema(responses={200: dict})
    def get(self, request: Request, pk: int) -> Response:
        from catalog.models import ImportJob
        from catalog.selectors import import_job_get

        try:
            job = import_job_get(job_id=pk)
        except ImportJob.DoesNotExist as exc:
            raise Http404(f"no import job {pk}") from exc
        return Response(
            {
                "id": job.pk,
                "status": job.status,
                "percent": job.percent,
                "total": job.total,
                "processed": job.processed,
                "created": job.created,
                "updated": job.updated,
                "unchanged": job.unchanged,
                "rejected": job.rejected,
                "file_error": job.file_error,
                "notes": job.notes,
                "rejections": job.rejections[:50],
                "finished": job.status in (ImportJob.Status.SUCCEEDED, ImportJob.Status.FAILED),
            }
        )


class TrainingRunLiveApi(APIView):
    """One training run's live state with its per-epoch history (``{"loss": [...], "val": [...], ...}``)
    for the models page's progress bar and loss curve."""

    @extend_schema(responses={200: dict})
    def get(self, request: Request, pk: int) -> Response:
        run = _get_or_404(TrainingRun, pk, "training run")
        return Response(
            {
                "id": run.pk,
                "status": run.status,
                "phase": run.phase,
                "progress": run.progress,
                "step": run.step,
                "loss": run.loss,
                "history": run.history or {},
                "log_tail": run.log_tail,
                "error": run.error,
                "finished": run.status not in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING),
            }
        )


class ProductIndexStatusApi(APIView):
    """Whether a product has its vectors for the active model version (searchable and recommendable)."""

    @extend_schema(responses={200: dict})
    def get(self, request: Request, pk: int) -> Response:
        from recommender.selectors import product_index_status

        _get_or_404(Product, pk, "product")
        return Response(product_index_status(product_id=pk).as_dict())
