"""Catalog reads shared by the pages and the JSON API (HackSoft styleguide "selectors")."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, QuerySet

from catalog.models import ImportJob, Outfit, Product


@dataclass(frozen=True)
class IndexStatus:
    """Whether a product has its vectors for the active model version (``version_id`` None: no model)."""

    product_id: int
    version_id: int | None
    embedded: bool

    def as_dict(self) -> dict:
        return {"product_id": self.product_id, "version_id": self.version_id, "embedded": self.embedded}


def product_index_status(*, product_id: int) -> IndexStatus:
    """Is the product embedded for the active model version (searchable, recommendable)? One query each."""
    from recommender.models import ModelVersion, ProductEmbedding

    version_id = ModelVersion.objects.filter(is_active=True).values_list("pk", flat=True).first()
    embedded = version_id is not None and (
        ProductEmbedding.objects.filter(product_id=product_id, model_version_id=version_id).exists()
    )
    return IndexStatus(product_id=product_id, version_id=version_id, embedded=embedded)


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
