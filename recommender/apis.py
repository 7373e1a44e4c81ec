"""The JSON API (DRF). Every error answers ``{"error": {"code", "message", "details"}}``.

Views only validate input and call selectors/services; the OpenAPI 3 schema is at ``/api/schema/``
with Swagger UI at ``/api/docs/``.
"""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from catalog.images import ImageError, clean_upload, read_upload
from catalog.models import Product
from catalog.services import product_create
from recommender import selectors
from recommender import serializers as s
from recommender.models import ModelVersion, TrainingRun
from recommender.permissions import MERCHANDISER_PERM
from recommender.services import (
    VersionNotReady,
    model_version_activate,
    model_version_rollback,
    training_run_cancel,
    training_run_start,
)


def exception_handler(exc, context):
    """DRF exception handler producing the single JSON error format, also for selector errors."""
    if isinstance(exc, selectors.UnknownProducts):
        return Response({"error": {"code": "unknown_products", "message": str(exc), "details": {"ids": exc.ids}}},
                        status=status.HTTP_404_NOT_FOUND)  # fmt: skip
    if isinstance(exc, selectors.NoActiveModel):
        return Response({"error": {"code": "no_active_model", "message": str(exc), "details": {}}},
                        status=status.HTTP_409_CONFLICT)  # fmt: skip
    if isinstance(exc, VersionNotReady):
        return Response({"error": {"code": "version_not_ready", "message": str(exc), "details": {}}},
                        status=status.HTTP_409_CONFLICT)  # fmt: skip
    if isinstance(exc, (ValueError, ImageError)) and not isinstance(exc, APIException):
        return Response({"error": {"code": "invalid", "message": str(exc), "details": {}}},
                        status=status.HTTP_400_BAD_REQUEST)  # fmt: skip
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, ValidationError):
        details = response.data
        response.data = {
            "error": {"code": "invalid", "message": _flatten_errors(details), "details": details}
        }
    else:
        detail = (
            response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
        )
        code = getattr(exc, "default_code", None) or _STATUS_CODES.get(response.status_code, "error")
        response.data = {"error": {"code": code, "message": str(detail), "details": {}}}
    return response


_STATUS_CODES = {400: "invalid", 401: "not_authenticated", 403: "permission_denied", 404: "not_found",
                 405: "method_not_allowed", 415: "unsupported_media_type", 429: "throttled"}  # fmt: skip


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

    return JsonResponse({"error": {"code": "not_found", "message": f"no API endpoint at {request.path}",
                                   "details": {}}}, status=404)  # fmt: skip


def _get_or_404(model, pk: int, label: str):
    """The row, or a JSON 404 naming what was not found."""
    try:
        return model.objects.get(pk=pk)
    except model.DoesNotExist as exc:
        raise Http404(f"no {label} {pk}") from exc


def _filters(data: dict) -> selectors.Filters:
    return selectors.Filters(**{k: data.get(k) for k in ("slot", "product_type", "colour", "audience",
                                                          "price_min", "price_max")})  # fmt: skip


class ProductListApi(generics.ListAPIView):
    """Products, filterable by ``slot``, ``colour``, ``audience``, ``product_type``. POST (merchandisers,
    multipart) creates a product from a photo and its details and queues its embedding."""

    serializer_class = s.ProductSerializer
    parser_classes = [MultiPartParser]

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

    @extend_schema(request=s.ProductCreateSerializer, responses={201: s.ProductSerializer})
    def post(self, request: Request) -> Response:
        ser = s.ProductCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = dict(ser.validated_data)
        image = data.pop("image")
        product = product_create(image_bytes=read_upload(image, name=data["sku"]), **data)
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
    """Items most similar to a product (cosine similarity in the general space)."""

    @extend_schema(parameters=[s.SimilarQuerySerializer], responses=s.HitSerializer(many=True))
    def get(self, request: Request, pk: int) -> Response:
        q = s.SimilarQuerySerializer(data=request.query_params)
        q.is_valid(raise_exception=True)
        d = q.validated_data
        hits = selectors.similar_items(product_id=pk, k=d["k"], space=d["space"],
                                       exclude_variants=d["exclude_variants"], filters=_filters(d))  # fmt: skip
        return Response(s.HitSerializer(hits, many=True).data)


class SearchApi(APIView):
    """Free-text search ("black leather ankle boots") with optional filters."""

    @extend_schema(parameters=[s.SearchQuerySerializer], responses=s.HitSerializer(many=True))
    def get(self, request: Request) -> Response:
        q = s.SearchQuerySerializer(data=request.query_params)
        q.is_valid(raise_exception=True)
        d = q.validated_data
        hits = selectors.text_search(query=d["q"], k=d["k"], filters=_filters(d))
        return Response(s.HitSerializer(hits, many=True).data)


class PhotoSearchApi(APIView):
    """Search by photo: upload an image (multipart field ``image``), get similar catalog items."""

    parser_classes = [MultiPartParser]
    public_post = True

    @extend_schema(request={"multipart/form-data": {"type": "object", "properties": {
        "image": {"type": "string", "format": "binary"}}}}, responses=s.HitSerializer(many=True))  # fmt: skip
    def post(self, request: Request) -> Response:
        upload = request.FILES.get("image")
        if upload is None:
            raise ValidationError({"image": ["upload a photo in the multipart field 'image'"]})
        try:  # the same checks as product uploads: size, decoding, shape limits, EXIF, RGB
            clean = clean_upload(upload, name="photo")
        except ImageError as exc:
            raise ValidationError({"image": [str(exc)]}) from exc
        return Response(s.HitSerializer(selectors.photo_search(image=clean.image, k=24), many=True).data)


class CompleteTheLookApi(APIView):
    """Given 1..8 products, the best items for each missing slot (pick + alternates)."""

    public_post = True

    @extend_schema(request=s.ProductIdsSerializer, responses=s.SlotPicksSerializer(many=True))
    def post(self, request: Request) -> Response:
        ser = s.ProductIdsSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        picks = selectors.complete_the_look(
            product_ids=ser.validated_data["product_ids"], k=ser.validated_data["k"]
        )
        return Response(s.SlotPicksSerializer(picks, many=True).data)


class CompatibilityApi(APIView):
    """Compatibility score in [0, 1] of a set of 2..8 products, with the pairwise matrix and weakest pair."""

    public_post = True

    @extend_schema(request=s.ProductIdsSerializer, responses=s.CompatibilitySerializer)
    def post(self, request: Request) -> Response:
        ser = s.ProductIdsSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        result = selectors.outfit_compatibility(product_ids=ser.validated_data["product_ids"])
        return Response(s.CompatibilitySerializer(result).data)


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
            s.ModelVersionSerializer(model_version_activate(version=version, require_complete=True)).data
        )


class ModelVersionRollbackApi(APIView):
    """Roll back to the previously active model version (merchandisers), in one transaction."""

    @extend_schema(request=None, responses=s.ModelVersionSerializer)
    def post(self, request: Request) -> Response:
        return Response(s.ModelVersionSerializer(model_version_rollback()).data)


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
        return Response({
            "id": job.pk, "status": job.status, "percent": job.percent, "total": job.total,
            "processed": job.processed, "created": job.created, "updated": job.updated,
            "unchanged": job.unchanged, "rejected": job.rejected, "file_error": job.file_error,
            "notes": job.notes, "rejections": job.rejections[:50],
            "finished": job.status in (ImportJob.Status.SUCCEEDED, ImportJob.Status.FAILED),
        })  # fmt: skip


class TrainingRunLiveApi(APIView):
    """One training run's live state with its per-epoch history (``{"loss": [...], "val": [...], ...}``)
    for the models page's progress bar and loss curve."""

    @extend_schema(responses={200: dict})
    def get(self, request: Request, pk: int) -> Response:
        run = _get_or_404(TrainingRun, pk, "training run")
        return Response({
            "id": run.pk, "status": run.status, "phase": run.phase, "progress": run.progress,
            "step": run.step, "loss": run.loss, "history": run.history or {}, "log_tail": run.log_tail,
            "error": run.error, "finished": run.status not in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING),
        })  # fmt: skip


class ProductIndexStatusApi(APIView):
    """Whether a product has its vectors for the active model version (searchable and recommendable)."""

    @extend_schema(responses={200: dict})
    def get(self, request: Request, pk: int) -> Response:
        from catalog.selectors import product_index_status

        _get_or_404(Product, pk, "product")
        return Response(product_index_status(product_id=pk).as_dict())
