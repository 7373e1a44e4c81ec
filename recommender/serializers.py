"""DRF serializers for products, recommendation answers and model registry rows."""

from __future__ import annotations

from rest_framework import serializers

from catalog.models import Product
from ml.slots import SLOTS
from recommender.models import ModelVersion, TrainingRun


class ProductSerializer(serializers.ModelSerializer):
    image_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Product
        fields = ["id", "sku", "title", "description", "slot", "product_type", "colour", "audience",
                  "variant_group", "price", "image_url", "thumbnail_url", "created_at", "updated_at"]  # fmt: skip

    def get_image_url(self, obj: Product) -> str | None:
        return obj.image.url if obj.image else None

    def get_thumbnail_url(self, obj: Product) -> str | None:
        return obj.thumbnail.url if obj.thumbnail else None


SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ProductCreateSerializer(serializers.Serializer):
    sku = serializers.RegexField(
        SKU_PATTERN, max_length=64, error_messages={"invalid": "use 1-64 letters, digits, '.', '_' or '-'"}
    )
    title = serializers.CharField(max_length=255)
    slot = serializers.ChoiceField(choices=SLOTS)
    image = serializers.FileField()
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)
    product_type = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    colour = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    audience = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    price = serializers.DecimalField(
        max_digits=10, decimal_places=2, min_value=0, required=False, allow_null=True, default=None
    )


class HitSerializer(serializers.Serializer):
    product = ProductSerializer()
    score = serializers.FloatField()


class FilterSerializer(serializers.Serializer):
    slot = serializers.ChoiceField(choices=SLOTS, required=False)
    product_type = serializers.CharField(required=False, max_length=64)
    colour = serializers.CharField(required=False, max_length=64)
    audience = serializers.CharField(required=False, max_length=64)
    price_min = serializers.FloatField(required=False, min_value=0)
    price_max = serializers.FloatField(required=False, min_value=0)

    def validate(self, attrs):
        lo, hi = attrs.get("price_min"), attrs.get("price_max")
        if lo is not None and hi is not None and lo > hi:
            raise serializers.ValidationError({"price_min": [f"price_min {lo} is above price_max {hi}"]})
        return attrs


class SimilarQuerySerializer(FilterSerializer):
    k = serializers.IntegerField(required=False, default=12, min_value=1, max_value=100)
    space = serializers.ChoiceField(choices=["fused", "image", "text"], required=False, default="fused")
    exclude_variants = serializers.BooleanField(required=False, default=True)


class SearchQuerySerializer(FilterSerializer):
    q = serializers.CharField(max_length=500)
    k = serializers.IntegerField(required=False, default=24, min_value=1, max_value=100)


class ProductIdsSerializer(serializers.Serializer):
    product_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), min_length=1, max_length=100
    )
    k = serializers.IntegerField(required=False, default=4, min_value=1, max_value=20)

    def validate_product_ids(self, value: list[int]) -> list[int]:
        ids = list(dict.fromkeys(value))  # repeated ids count once
        if len(ids) > 8:
            raise serializers.ValidationError(f"give at most 8 distinct product ids (got {len(ids)})")
        return ids


class SlotPicksSerializer(serializers.Serializer):
    slot = serializers.CharField()
    hits = HitSerializer(many=True)


class CompatibilitySerializer(serializers.Serializer):
    product_ids = serializers.SerializerMethodField()
    score = serializers.FloatField()
    matrix = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()))
    weakest = serializers.ListField(child=serializers.IntegerField(), allow_null=True)
    suggestion = HitSerializer(allow_null=True)

    def get_product_ids(self, obj) -> list[int]:
        return [p.pk for p in obj.products]


class ModelVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = ["id", "name", "status", "is_active", "config", "metrics", "created_at", "activated_at"]


class TrainingRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = TrainingRun
        fields = ["id", "status", "phase", "progress", "step", "loss", "params", "log_tail", "error",
                  "model_version", "created_at", "started_at", "finished_at"]  # fmt: skip
        read_only_fields = fields


class TrainingRunCreateSerializer(serializers.Serializer):
    epochs = serializers.IntegerField(required=False, min_value=1, max_value=500)
    max_steps = serializers.IntegerField(required=False, min_value=0)
    batch_size = serializers.IntegerField(required=False, min_value=2, max_value=4096)
    lr = serializers.FloatField(required=False, min_value=1e-6, max_value=1.0)
    temperature = serializers.FloatField(required=False, min_value=0.001, max_value=1.0)
    margin = serializers.FloatField(required=False, min_value=0.0, max_value=2.0)
    miner = serializers.ChoiceField(
        choices=["batch-hard", "semi-hard", "batch-all", "random"], required=False
    )
    seed = serializers.IntegerField(required=False, min_value=0, max_value=2**31 - 1)
