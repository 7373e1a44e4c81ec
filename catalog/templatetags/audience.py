"""``{% load audience %}``: who a product is for, on product cards and pages."""

from __future__ import annotations

from django import template

from catalog.models import Product
from catalog.selectors import product_audience_group

register = template.Library()


@register.filter
def audience_group(product: Product) -> str:
    """``{{ product|audience_group }}``: "women", "men", "kids", "baby" or "unisex"."""
    return product_audience_group(product=product)
