"""Catalog forms: one product field list everywhere, the page price parser, service errors on their field."""

from __future__ import annotations

from decimal import Decimal

import pytest

from catalog.forms import PageForm, PriceField, ProductEditForm, ProductForm, split_ids
from catalog.images import ImageError
from catalog.imports import IMPORT_REQUIRED_COLUMNS
from catalog.models import PRODUCT_FIELDS
from catalog.serializers import ProductCreateSerializer, ProductSerializer
from catalog.views import EXAMPLE_CSV


def test_every_product_form_and_serializer_reads_the_one_field_list():
    assert list(ProductForm.base_fields) == [*PRODUCT_FIELDS, "image"]
    assert list(ProductEditForm.base_fields) == [*(f for f in PRODUCT_FIELDS if f != "sku"), "image"]
    assert list(ProductCreateSerializer().fields) == [*PRODUCT_FIELDS, "image"]
    assert ProductSerializer.Meta.fields[1 : 1 + len(PRODUCT_FIELDS)] == list(PRODUCT_FIELDS)
    header = EXAMPLE_CSV.splitlines()[0].split(",")
    assert header[: len(IMPORT_REQUIRED_COLUMNS)] == list(IMPORT_REQUIRED_COLUMNS)
    assert sorted(header) == sorted({*PRODUCT_FIELDS, "image"})


def test_price_field_parses_decimals_and_names_what_is_not_a_number():
    field = PriceField()
    assert field.clean(" 19.99 ") == Decimal("19.99") and field.clean("") is None
    for text in ("abc", "NaN", "Infinity"):
        try:
            field.clean(text)
        except Exception as exc:  # ValidationError
            assert exc.messages == [f"{text!r} is not a number"]
        else:
            raise AssertionError(text)


@pytest.mark.django_db  # the form reads the catalog's vocabularies
def test_a_service_error_lands_on_the_field_it_names():
    form = ProductForm(data={"sku": "A-1", "title": "T", "slot": "top"}, files={"image": None})
    form.is_valid()
    form.add_service_error(ValueError("title: 5000 characters is over the limit of 255"))
    form.add_service_error(ImageError("A-1: broken or truncated image"))
    form.add_service_error(ValueError("an outfit needs at least two distinct products"))
    assert form.errors["title"] == ["5000 characters is over the limit of 255"]
    assert "A-1: broken or truncated image" in form.errors["image"]
    assert form.error_lines()[-1] == "an outfit needs at least two distinct products"
    assert "title: 5000 characters is over the limit of 255" in form.error_lines()


def test_errors_text_is_one_line_by_field():
    form = PageForm(data={})
    form.is_valid()
    form.add_error(None, "whole form")
    assert form.errors_text() == "whole form"


def test_split_ids_keeps_distinct_ids_in_order_and_names_the_rest():
    assert split_ids("3, 1,x,3,,99999999999999999999") == ([3, 1], ["x", "99999999999999999999"])
