"""The recommender's JSON API (DRF): similar items, search, complete-the-look, compatibility, the model
registry and training runs. The catalog's endpoints (products, import jobs) are ``catalog.apis``.

Views only validate input and call selectors/services; what every endpoint shares (the error format
``{"error": {"code", "message", "details"}}``, the throttle, ranked pages, the answer cache) is
:mod:`recommender.api`. The OpenAPI 3 schema is at ``/api/schema/`` with Swagger UI at ``/api/docs/``.
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.images import ImageError, clean_upload
from catalog.models import Product
from catalog.serializers import ErrorSerializer
from recommender import looks, search, selectors
from recommender import serializers as s
from recommender.api import cached_answer, get_or_404, ranked_page, unknown_ids_are_400
from recommender.filters import Filters
from recommender.models import ModelVersion, TrainingRun
from recommender.services import (
    model_version_activate,
    model_version_rollback,
    training_run_cancel,
    training_run_start,
)

_ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="invalid input; the message names the field"),
    409: OpenApiResponse(ErrorSerializer, description="no active model version"),
}
_NOT_FOUND = {404: OpenApiResponse(ErrorSerializer, description="unknown product id")}
_THROTTLED = {429: OpenApiResponse(ErrorSerializer, description="too many requests; details.retry_after_s")}


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
                filters=Filters.from_params(d),
                mmr_lambda=d["mmr"],
            )
            return ranked_page(request, hits=hits, page=d["page"], k=d["k"])

        return Response(cached_answer(name="similar", params={"pk": pk, **d}, compute=compute))


class SearchApi(APIView):
    """Free-text search ("men black chelsea boots", "dress without sleeves", a SKU) with optional
    filters, paginated (throttled): audience, colour, type and negations are read from the query
    (``understood``, each switched off with ``off``), full-text and vector rankings are fused, one
    product per variant group. ``mmr`` re-ranks the plain vector ranking instead (nothing understood)."""

    throttle_scope = "search"

    @extend_schema(
        parameters=[s.SearchQuerySerializer], responses={200: s.SearchPageSerializer, **_ERRORS, **_THROTTLED}
    )
    def get(self, request: Request) -> Response:
        q = s.SearchQuerySerializer(data=request.query_params)
        q.is_valid(raise_exception=True)
        d = q.validated_data

        def compute() -> dict:
            filters, k = Filters.from_params(d), d["k"] * d["page"]
            if d["mmr"] is not None:
                hits = [
                    search.SearchHit(h.product, h.score)
                    for h in selectors.text_search(query=d["q"], k=k, filters=filters, mmr_lambda=d["mmr"])
                ]
                chips, weak, facets, relaxed, corrected = [], False, {}, [], {}
            else:
                answer = search.product_search(
                    query=d["q"], k=k, filters=filters, off=d["off"], group_variants=d["group_variants"]
                )
                hits, weak, facets = answer.hits, answer.weak, answer.facets
                chips = [c.as_dict() for c in answer.parsed.chips]
                relaxed = [c.as_dict() for c in answer.relaxed]
                corrected = answer.corrected
            page = ranked_page(request, hits=hits, page=d["page"], k=d["k"], serializer=s.SearchHitSerializer)
            return {
                **page,
                "understood": chips,
                "relaxed": relaxed,
                "no_close_matches": weak,
                "corrected": corrected,
                "facets": facets,
            }

        params = {**d, "q": " ".join(d["q"].split()).lower()}  # the text tower lower-cases anyway
        return Response(cached_answer(name="search", params=params, compute=compute))


class PhotoSearchApi(APIView):
    """Search by photo: upload an image (multipart field ``image``, optional ``k`` and filters), throttled."""

    parser_classes = [MultiPartParser]
    public_post = True
    replica_reads = True  # a POST that only reads: read replicas may answer it (recommender.replicas)
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
        answer = selectors.photo_search(
            image=clean.image,
            k=d["k"],
            filters=Filters.from_params(d),
            type_first=d["type_first"],
            group_variants=d["group_variants"],
        )
        return Response(s.HitSerializer(answer.hits, many=True).data)


class CompleteTheLookApi(APIView):
    """Given 1..8 products, the best items for each missing slot (pick + alternates), ranked by total
    compatibility with all of them (re-ranked so that no item is everyone's pick); never an item of a
    slot the outfit already has; only items of an audience that fits theirs unless ``audience=any``."""

    public_post = True
    replica_reads = True  # a POST that only reads (recommender.replicas)

    @extend_schema(
        request=s.ProductIdsSerializer, responses={200: s.SlotPicksSerializer(many=True), **_ERRORS}
    )
    def post(self, request: Request) -> Response:
        ser = s.ProductIdsSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        d = ser.validated_data
        ids, k, audience = d["product_ids"], d["k"], d["audience"]

        def compute() -> list[dict]:
            try:
                picks = looks.complete_the_look(product_ids=ids, k=k, audience=audience)
            except selectors.UnknownProducts as exc:
                raise unknown_ids_are_400(exc) from exc
            return s.SlotPicksSerializer(picks, many=True).data

        # the remembered picks change the answer: a changed LOOKS_MEMORY_PICKS never serves an older one
        params = {"ids": sorted(ids), "k": k, "audience": audience, "memory": settings.LOOKS_MEMORY_PICKS}
        return Response(cached_answer(name="complete", params=params, compute=compute))


class CompatibilityApi(APIView):
    """Compatibility score in [0, 1] of a set of 2..8 products, with the pairwise matrix, the weakest
    pair and a suggested replacement for its weaker item (of an audience that fits the others' unless
    ``audience=any``)."""

    public_post = True
    replica_reads = True  # a POST that only reads (recommender.replicas)

    @extend_schema(request=s.ProductIdsSerializer, responses={200: s.CompatibilitySerializer, **_ERRORS})
    def post(self, request: Request) -> Response:
        ser = s.ProductIdsSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        ids, audience = ser.validated_data["product_ids"], ser.validated_data["audience"]
        if len(ids) < 2:  # a set needs a pair; said like the serializer's own limits, on the field
            raise ValidationError(
                {"product_ids": [f"give 2 to {s.MAX_OUTFIT_ITEMS} distinct product ids (got {len(ids)})"]}
            )

        def compute() -> dict:
            try:
                result = looks.outfit_compatibility(product_ids=ids, audience=audience)
            except selectors.UnknownProducts as exc:
                raise unknown_ids_are_400(exc) from exc
            return s.CompatibilitySerializer(result).data

        params = {"ids": ids, "audience": audience, "memory": settings.LOOKS_MEMORY_PICKS}  # the swap's picks
        return Response(cached_answer(name="compatibility", params=params, compute=compute))


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
        return get_or_404(TrainingRun, self.kwargs["pk"], "training run")


class ModelVersionActivateApi(APIView):
    """Serve this model version (merchandisers). 409 unless every product has its vectors."""

    @extend_schema(request=None, responses=s.ModelVersionSerializer)
    def post(self, request: Request, pk: int) -> Response:
        version = get_or_404(ModelVersion, pk, "model version")
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
        run = get_or_404(TrainingRun, pk, "training run")
        return Response(s.TrainingRunSerializer(training_run_cancel(run=run)).data)


# --- small JSON endpoints the pages poll --------------------------------------------------------------


class TrainingRunLiveApi(APIView):
    """One training run's live state with its per-epoch history (``{"loss": [...], "val": [...], ...}``)
    for the models page's progress bar and loss curve."""

    @extend_schema(responses={200: dict})
    def get(self, request: Request, pk: int) -> Response:
        run = get_or_404(TrainingRun, pk, "training run")
        return Response(
            {
                "id": run.pk,
                "status": run.status,
                "phase": run.phase,
                "progress": run.progress,
                "phase_progress": run.phase_progress or {},
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
        get_or_404(Product, pk, "product")
        return Response(selectors.product_index_status(product_id=pk).as_dict())
