"""DRF serializers of recommendation answers, their queries and model registry rows (the product and
filter serializers are the catalog's)."""

from __future__ import annotations

from rest_framework import serializers

from catalog.serializers import FilterSerializer, ProductSerializer
from ml.config import COMPAT_LOSSES, GENERAL_LOSSES, MINERS, TrainConfig
from recommender.looks import AUDIENCE_MODES
from recommender.models import ModelVersion, TrainingRun
from recommender.services import init_from_active_refusal


class HitSerializer(serializers.Serializer):
    product = ProductSerializer()
    score = serializers.FloatField()


#: The deepest result a ranked answer pages into (page × k), so a page never asks the index for more.
MAX_WINDOW = 500


class RankedQuerySerializer(FilterSerializer):
    """Filters + page size ``k``, ``page`` and optional MMR diversity for ranked answers."""

    k = serializers.IntegerField(
        required=False, default=24, min_value=1, max_value=100, help_text="page size"
    )
    page = serializers.IntegerField(required=False, default=1, min_value=1, help_text="1-based page")
    mmr = serializers.FloatField(
        required=False,
        min_value=0.0,
        max_value=1.0,
        default=None,
        allow_null=True,
        help_text="MMR diversity re-ranking (Carbonell & Goldstein 1998): λ in [0, 1], 1 = plain relevance, "
        "lower = more diverse; omitted = no re-ranking",
    )

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if attrs["page"] * attrs["k"] > MAX_WINDOW:
            raise serializers.ValidationError(
                {"page": [f"page × k must be at most {MAX_WINDOW} (got {attrs['page']} × {attrs['k']})"]}
            )
        return attrs


class SimilarQuerySerializer(RankedQuerySerializer):
    k = serializers.IntegerField(
        required=False, default=12, min_value=1, max_value=100, help_text="page size"
    )
    space = serializers.ChoiceField(
        choices=["fused", "image", "text"],
        required=False,
        default="fused",
        help_text="which vector of the product is the query",
    )
    exclude_variants = serializers.BooleanField(
        required=False, default=True, help_text="drop colour variants of the same product"
    )


class SearchQuerySerializer(RankedQuerySerializer):
    q = serializers.CharField(max_length=500, help_text="free text, a SKU or a title; at most 500 characters")
    off = serializers.CharField(
        required=False,
        default="",
        allow_blank=True,
        max_length=500,
        help_text="comma-separated keys of understood chips to switch off (e.g. 'audience,not:sleeves'): "
        "their words are then plain text",
    )
    group_variants = serializers.BooleanField(
        required=False, default=True, help_text="one product per variant group (its best colour); false: all"
    )

    def validate_off(self, value: str) -> list[str]:
        return sorted({k.strip() for k in value.split(",") if k.strip()})


class SearchHitSerializer(HitSerializer):
    """A search hit: ``score`` is the fused relevance (reciprocal-rank sum; 1 or more for an exact SKU
    or title match), ``variants`` the products of its variant group (its other colours)."""

    variants = serializers.IntegerField()


class ChipSerializer(serializers.Serializer):
    key = serializers.CharField(help_text="what to put in 'off' to switch it off")
    kind = serializers.CharField(help_text="audience, colour, type, not_colour, not_type or not_words")
    label = serializers.CharField(help_text="what the page shows, e.g. 'for men', 'without sleeves'")
    values = serializers.ListField(child=serializers.CharField(), help_text="catalog values or words")


class SearchPageSerializer(serializers.Serializer):
    """One page of a search: a ranked page plus what was understood, facet counts and whether there
    was no close match."""

    page = serializers.IntegerField()
    k = serializers.IntegerField()
    next = serializers.CharField(allow_null=True, help_text="URL of the next page, or null")
    previous = serializers.CharField(allow_null=True, help_text="URL of the previous page, or null")
    results = SearchHitSerializer(many=True)
    understood = ChipSerializer(many=True)
    relaxed = ChipSerializer(
        many=True,
        help_text="understood chips that, as filters, left nothing with the rest of the query and were "
        "read as plain words instead (type first, then colour; the audience always holds)",
    )
    no_close_matches = serializers.BooleanField(
        help_text="true: nothing understood and no word in any product's text, and no word the catalog "
        "knows or only weak vector matches (results are then empty)"
    )
    corrected = serializers.DictField(
        child=serializers.CharField(),
        help_text="{word typed: catalog word searched instead}: spelling corrections (empty: none)",
    )
    facets = serializers.DictField(
        child=serializers.ListField(child=serializers.ListField()),
        help_text="{audience_group|colour|product_type: [[value, count]]} over the ranked candidates",
    )


class PhotoSearchSerializer(FilterSerializer):
    image = serializers.FileField(help_text="JPEG/PNG/WebP photo, at most 10 MB")
    k = serializers.IntegerField(required=False, default=24, min_value=1, max_value=100)
    type_first = serializers.BooleanField(
        required=False,
        default=True,
        help_text="rank the products of the best match's product type first (the default); false: by "
        "image similarity alone",
    )
    group_variants = serializers.BooleanField(
        required=False,
        default=False,
        help_text="one product per variant group (its best-ranked colour), as the search page shows",
    )


class HitPageSerializer(serializers.Serializer):
    """One page of a ranked answer."""

    page = serializers.IntegerField()
    k = serializers.IntegerField()
    next = serializers.CharField(allow_null=True, help_text="URL of the next page, or null")
    previous = serializers.CharField(allow_null=True, help_text="URL of the previous page, or null")
    results = HitSerializer(many=True)


MAX_OUTFIT_ITEMS = 8


class ProductIdsSerializer(serializers.Serializer):
    product_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        min_length=1,
        max_length=100,
        help_text=f"1 to {MAX_OUTFIT_ITEMS} distinct product ids (repeats count once)",
        error_messages={
            "max_length": f"give at most {MAX_OUTFIT_ITEMS} distinct product ids "
            "(and at most 100 entries, repeats included)"
        },
    )
    k = serializers.IntegerField(
        required=False,
        default=4,
        min_value=1,
        max_value=20,
        help_text="items per slot (complete-the-look: the pick and k-1 alternates)",
    )
    audience = serializers.ChoiceField(
        choices=AUDIENCE_MODES,
        required=False,
        default="match",
        help_text="match: only items whose audience (women, men, kids, baby, unisex) fits every given "
        "item's (the same group, or unisex); any: every audience",
    )

    def validate_product_ids(self, value: list[int]) -> list[int]:
        ids = list(dict.fromkeys(value))  # repeated ids count once
        if len(ids) > MAX_OUTFIT_ITEMS:
            raise serializers.ValidationError(
                f"give at most {MAX_OUTFIT_ITEMS} distinct product ids (got {len(ids)})"
            )
        return ids


class LookHitSerializer(HitSerializer):
    """A complete-the-look pick: ``worn_with`` counts the training outfits that hold it with the given
    products (0: the model's own pick)."""

    worn_with = serializers.IntegerField()


class SlotPicksSerializer(serializers.Serializer):
    slot = serializers.CharField()
    hits = LookHitSerializer(many=True)


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
        fields = [
            "id",
            "status",
            "phase",
            "progress",
            "phase_progress",
            "step",
            "loss",
            "params",
            "log_tail",
            "error",
            "model_version",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class TrainingRunCreateSerializer(serializers.Serializer):
    epochs = serializers.IntegerField(required=False, min_value=1, max_value=500)
    max_steps = serializers.IntegerField(required=False, min_value=0)
    batch_size = serializers.IntegerField(required=False, min_value=2, max_value=4096)
    lr = serializers.FloatField(required=False, min_value=1e-6, max_value=1.0)
    # the losses (ml.objectives; TrainConfig refuses invalid combinations, validate() passes that on)
    general_loss = serializers.ChoiceField(choices=list(GENERAL_LOSSES), required=False)
    temperature = serializers.FloatField(required=False, min_value=0.001, max_value=1.0)
    learn_temperature = serializers.BooleanField(required=False)
    compat_loss = serializers.ChoiceField(choices=list(COMPAT_LOSSES), required=False)
    compat_temperature = serializers.FloatField(required=False, min_value=0.001, max_value=1.0)
    margin = serializers.FloatField(required=False, min_value=0.0, max_value=2.0)
    miner = serializers.ChoiceField(choices=list(MINERS), required=False)
    normalize = serializers.BooleanField(required=False)
    w_type = serializers.FloatField(required=False, min_value=0.0, max_value=10.0)
    w_center = serializers.FloatField(required=False, min_value=0.0, max_value=10.0)
    seed = serializers.IntegerField(required=False, min_value=0, max_value=2**31 - 1)
    # Tower fine-tuning (ml.towers): > 0 trains the last blocks/layers end to end (meant for a GPU worker).
    unfreeze_last_blocks = serializers.IntegerField(required=False, min_value=0, max_value=16)
    unfreeze_text_layers = serializers.IntegerField(required=False, min_value=0, max_value=6)
    tower_lr = serializers.FloatField(required=False, min_value=1e-8, max_value=1e-2)
    amp = serializers.ChoiceField(choices=["bf16", "fp16", "off"], required=False)
    # ... on the CPU: the image tower's top on cached prefix activations, with phone-photo views (ml.tower_prefix)
    cache_tower_prefix = serializers.BooleanField(required=False)
    tuning_views = serializers.IntegerField(required=False, min_value=0, max_value=8)
    tuning_view_photos = serializers.IntegerField(required=False, min_value=0, max_value=1_000_000)
    w_view = serializers.FloatField(required=False, min_value=0.0, max_value=10.0)
    view_type_loss = serializers.BooleanField(required=False)
    init_from_active = serializers.BooleanField(
        required=False, help_text="start from the active version's heads (not a TrainConfig field)"
    )

    def validate(self, attrs):
        """Refuse fields this serializer does not know (``{"params": {...}}``, a misspelt ``epoch``):
        silently ignoring them would start a run with defaults the merchandiser did not ask for.

        Raises:
            ValidationError: ``{"<field>": ["unknown field; the parameters are: ..."]}``.
        """
        unknown = sorted(set(getattr(self, "initial_data", {}) or {}) - set(self.fields))
        if unknown:
            known = ", ".join(self.fields)
            raise serializers.ValidationError(
                {f: [f"unknown field; the parameters are: {known}"] for f in unknown}
            )
        if attrs.get("init_from_active") and (why := init_from_active_refusal()):  # now, not in the worker
            raise serializers.ValidationError({"init_from_active": [why]})
        try:  # the combination: what ml.config.TrainConfig refuses, with its message
            TrainConfig.from_params(attrs)
        except ValueError as exc:
            field, sep, reason = str(exc).partition(": ")
            if sep and field in self.fields:
                raise serializers.ValidationError({field: [reason]}) from exc
            raise serializers.ValidationError(str(exc)) from exc
        return attrs
