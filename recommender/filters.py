"""Catalog filters of the vector queries (similar items, text and photo search).

The pages clean them with a form (``catalog.forms.ProductFilterForm``, errors next to the field) and the
API with a serializer (``catalog.serializers.FilterSerializer``, the JSON error format); both hand the
cleaned values to :meth:`Filters.from_params`, and every filter matches as
``catalog.models.PRODUCT_FILTER_LOOKUPS`` says, as on the catalog page and in the product list API: the
slot exactly, product type, colour and audience by every spelling of the value (case and plural merged), the
price range inclusively.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from django.db.models import QuerySet

from catalog.models import PRODUCT_FILTER_LOOKUPS, product_filter_kwargs


@dataclass
class Filters:
    """Optional catalog filters applied inside the vector query."""

    slot: str | None = None
    product_type: str | None = None
    colour: str | None = None
    audience: str | None = None
    audience_group: str | None = None
    price_min: float | None = None
    price_max: float | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Filters:
        """The filters among cleaned parameters (a form's ``cleaned_data``, a serializer's
        ``validated_data``); other keys are ignored, ``None`` and ``""`` mean "any"."""
        given = {f.name: params.get(f.name) for f in fields(cls)}
        return cls(**{name: None if value in (None, "") else value for name, value in given.items()})

    def apply(self, qs: QuerySet) -> QuerySet:
        """Filter a ``ProductEmbedding`` queryset: the slot on the vector rows themselves (it is copied
        there, for the per-slot indexes), the other filters on their product."""
        values = {name: getattr(self, name, None) for name in PRODUCT_FILTER_LOOKUPS}
        slot = values.pop("slot")
        if slot not in (None, ""):
            qs = qs.filter(slot=slot)
        return qs.filter(**product_filter_kwargs(values, prefix="product__"))
