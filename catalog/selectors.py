"""Catalog reads shared by the pages and the JSON API (HackSoft styleguide "selectors")."""

from __future__ import annotations

from django.db.models import Case, Count, IntegerField, QuerySet, Value, When

from catalog.models import ImportJob, Outfit, Product
from ml.audience import audience_group
from ml.slots import ACCESSORY, BAG, BOTTOM, JEWELLERY, ONE_PIECE, OUTERWEAR, SHOES, TOP

#: Slots a shop window shows first (what an outfit is made of), then bags, accessories and jewellery;
#: underwear, nightwear, swimwear, socks and tights come last.
SHOP_FIRST = (TOP, BOTTOM, ONE_PIECE, OUTERWEAR, SHOES)
SHOP_THEN = (BAG, ACCESSORY, JEWELLERY)


def shop_order(qs: QuerySet[Product]) -> QuerySet[Product]:
    """``qs`` in shop-window order: :data:`SHOP_FIRST` slots, then :data:`SHOP_THEN`, then the rest, each
    by id."""
    rank = Case(
        When(slot__in=SHOP_FIRST, then=Value(0)),
        When(slot__in=SHOP_THEN, then=Value(1)),
        default=Value(2),
        output_field=IntegerField(),
    )
    return qs.annotate(shop_rank=rank).order_by("shop_rank", "id")


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
