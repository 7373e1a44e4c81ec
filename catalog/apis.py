"""The catalog's JSON API (DRF): products (list, create, detail) and bulk import jobs.

Views only validate input and call selectors/services. The error format, the throttle and the default
permission come from ``REST_FRAMEWORK`` (``EXCEPTION_HANDLER``, ``DEFAULT_THROTTLE_CLASSES`` with this
view's ``throttle_scope``, ``DEFAULT_PERMISSION_CLASSES``), like every endpoint of the site.
"""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.images import ImageError, read_upload
from catalog.models import PRODUCT_FIELDS, ImportJob, Product
from catalog.permissions import IsMerchandiser
from catalog.selectors import import_job_get
from catalog.serializers import (
    ErrorSerializer,
    FilterSerializer,
    ImportJobSerializer,
    ProductCreateSerializer,
    ProductSerializer,
)
from catalog.services import product_create

_ERRORS = {400: OpenApiResponse(ErrorSerializer, description="invalid input; the message names the field")}
_NOT_FOUND = {404: OpenApiResponse(ErrorSerializer, description="unknown product id")}
_THROTTLED = {429: OpenApiResponse(ErrorSerializer, description="too many requests; details.retry_after_s")}


class UnknownProduct(NotFound):
    """A product id that does not exist, said as the recommendation endpoints say unknown ids."""

    default_code = "unknown_products"

    def __init__(self, pk: int) -> None:
        super().__init__(f"unknown product id(s): [{pk}]")
        self.details = {"ids": [pk]}


class ProductPages(PageNumberPagination):
    """``?page=`` and ``?page_size=`` (1–100, default 24)."""

    page_size_query_param = "page_size"
    max_page_size = 100

    def paginate_queryset(self, queryset, request, view=None):
        """As DRF's, but a page that is no number is a 400 naming it (DRF answers 404 "Invalid page.",
        as for a page past the last)."""
        raw = request.query_params.get(self.page_query_param, "1")
        if raw not in self.last_page_strings and not raw.isdigit():
            raise ValidationError({self.page_query_param: [f"{raw!r} is not a page number"]})
        return super().paginate_queryset(queryset, request, view)


class ProductListApi(generics.ListAPIView):
    """Products, filterable by ``slot``, ``colour``, ``audience``, ``product_type`` and price, paged by
    ``page`` and ``page_size``. POST (merchandisers, multipart) creates a product from a photo and its
    details and queues its embedding."""

    serializer_class = ProductSerializer
    pagination_class = ProductPages
    parser_classes = [MultiPartParser]
    throttle_scope = "upload"

    def get_throttles(self):
        return super().get_throttles() if self.request.method == "POST" else []

    @extend_schema(parameters=[FilterSerializer])
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        f = FilterSerializer(data=self.request.query_params)
        f.is_valid(raise_exception=True)
        return Product.objects.filter_facets(**f.validated_data)

    @extend_schema(
        request=ProductCreateSerializer, responses={201: ProductSerializer, **_ERRORS, **_THROTTLED}
    )
    def post(self, request: Request) -> Response:
        ser = ProductCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = {f: ser.validated_data[f] for f in PRODUCT_FIELDS}
        try:
            product = product_create(
                image_bytes=read_upload(ser.validated_data["image"], name=data["sku"]), **data
            )
        except ImageError as exc:  # the photo: name the field, like every other validation error
            raise ValidationError({"image": [str(exc)]}) from exc
        except ValueError as exc:  # product_validate / a duplicate SKU: "<field>: <reason>"
            field, sep, reason = str(exc).partition(": ")
            if sep and field in ser.fields:
                raise ValidationError({field: [reason]}) from exc
            raise
        return Response(ProductSerializer(product).data, status=status.HTTP_201_CREATED)


class ProductDetailApi(generics.RetrieveAPIView):
    """One product."""

    queryset = Product.objects.all()
    serializer_class = ProductSerializer

    @extend_schema(responses={200: ProductSerializer, **_NOT_FOUND})
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_object(self) -> Product:
        try:
            return Product.objects.get(pk=self.kwargs["pk"])
        except Product.DoesNotExist as exc:
            raise UnknownProduct(self.kwargs["pk"]) from exc


class ImportJobDetailApi(APIView):
    """One bulk import job (merchandisers): status, counts, progress percent and the first 50 rejections.

    The import page polls it every second for its progress bar.
    """

    permission_classes = [IsMerchandiser]

    @extend_schema(responses={200: ImportJobSerializer})
    def get(self, request: Request, pk: int) -> Response:
        try:
            job = import_job_get(job_id=pk)
        except ImportJob.DoesNotExist as exc:
            raise Http404(f"no import job {pk}") from exc
        return Response(ImportJobSerializer(job).data)
