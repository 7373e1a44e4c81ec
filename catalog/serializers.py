"""DRF serializers of the catalog API: products, their filters, import jobs and the JSON error format."""

from __future__ import annotations

from rest_framework import serializers

from catalog.models import PRODUCT_FIELDS, ImportJob, Product
from ml.audience import AUDIENCE_GROUPS
from ml.slots import SLOTS


class ProductSerializer(serializers.ModelSerializer):
    image_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Product
        fields = [
            "id",
            *PRODUCT_FIELDS,
            "audience_group",
            "image_url",
            "thumbnail_url",
            "created_at",
            "updated_at",
        ]

    def get_image_url(self, obj: Product) -> str | None:
        return obj.image.url if obj.image else None

    def get_thumbnail_url(self, obj: Product) -> str | None:
        return obj.thumbnail.url if obj.thumbnail else None


SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ProductCreateSerializer(serializers.Serializer):
    """A new product: :data:`~catalog.models.PRODUCT_FIELDS` and its photo (multipart)."""

    sku = serializers.RegexField(
        SKU_PATTERN, max_length=64, error_messages={"invalid": "use 1-64 letters, digits, '.', '_' or '-'"}
    )
    title = serializers.CharField(max_length=255)
    slot = serializers.ChoiceField(choices=SLOTS)
    colour = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    product_type = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    audience = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    price = serializers.DecimalField(
        max_digits=10, decimal_places=2, min_value=0, required=False, allow_null=True, default=None
    )
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)
    variant_group = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    image = serializers.FileField()


class FilterSerializer(serializers.Serializer):
    """The product filters of the API (how each matches: ``catalog.models.PRODUCT_FILTER_LOOKUPS``)."""

    slot = serializers.ChoiceField(choices=SLOTS, required=False, help_text="outfit slot, e.g. shoes")
    product_type = serializers.CharField(required=False, max_length=64, help_text="e.g. Trousers")
    colour = serializers.CharField(required=False, max_length=64, help_text="e.g. Black")
    audience = serializers.CharField(required=False, max_length=64, help_text="e.g. Ladieswear")
    audience_group = serializers.ChoiceField(
        choices=AUDIENCE_GROUPS,
        required=False,
        help_text="who it is for, normalised: women, men, kids, baby, unisex",
    )
    price_min = serializers.FloatField(required=False, min_value=0, help_text="lowest price, inclusive")
    price_max = serializers.FloatField(required=False, min_value=0, help_text="highest price, inclusive")

    def validate(self, attrs):
        lo, hi = attrs.get("price_min"), attrs.get("price_max")
        if lo is not None and hi is not None and lo > hi:
            raise serializers.ValidationError({"price_min": [f"price_min {lo} is above price_max {hi}"]})
        return attrs


class ImportJobSerializer(serializers.ModelSerializer):
    """One bulk import job: status, counts, progress percent and the first 50 rejections."""

    rejections = serializers.SerializerMethodField()
    finished = serializers.SerializerMethodField()

    class Meta:
        model = ImportJob
        fields = [
            "id",
            "status",
            "percent",
            "total",
            "processed",
            "created",
            "updated",
            "unchanged",
            "rejected",
            "file_error",
            "notes",
            "rejections",
            "finished",
        ]
        read_only_fields = fields

    def get_rejections(self, job: ImportJob) -> list[dict]:
        return job.rejections[:50]

    def get_finished(self, job: ImportJob) -> bool:
        return job.status in (ImportJob.Status.SUCCEEDED, ImportJob.Status.FAILED)


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField()


class ErrorSerializer(serializers.Serializer):
    """The one JSON error format of the API (written by ``REST_FRAMEWORK["EXCEPTION_HANDLER"]``)."""

    error = ErrorBodySerializer()
