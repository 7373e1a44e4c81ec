"""Catalog reads shared by the pages and the JSON API (HackSoft styleguide "selectors")."""

from __future__ import annotations

from django.db.models import Count, QuerySet

from catalog.models import ImportJob, Outfit, Product
from ml.audience import audience_group


def import_job_list(*, limit: int = 20) -> QuerySet[ImportJob]:
    """The latest import jobs, newest first, with who started them."""
    return ImportJob.objects.select_related("started_by").order_by("-id")[:limit]


def import_job_get(*, job_id: int) -> ImportJob:
    """One import job.

    Raises:
        ImportJob.DoesNotExist: no job with this id.
    """
    return ImportJob.objects.select_related("started_by").get(pk=job_id)


def outfit_list_curated() -> QuerySet[Outfit]:
    """Merchandiser-curated outfits, newest first, with their products prefetched and counted."""
    return (
        Outfit.objects.filter(source=Outfit.Source.CURATED)
        .annotate(n_items=Count("items"))
        .prefetch_related("items__product")
        .order_by("-id")
    )


def product_get(*, product_id: int) -> Product | None:
    """The product, or ``None``."""
    return Product.objects.filter(pk=product_id).first()


def product_audience_group(*, product: Product) -> str:
    """Who the product is for, one of :data:`ml.audience.AUDIENCE_GROUPS` ("women", "men", "kids", "baby",
    "unisex"): :func:`ml.audience.audience_group` of its audience, section and department (the stored
    ``audience_group`` once the product has one)."""
    stored = getattr(product, "audience_group", "")
    return stored or audience_group(product.audience, product.section, product.department)
