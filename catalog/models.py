"""Catalog models: products (with photo and text), outfits and their ordered items."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from django.db.models.functions import Upper

from ml.audience import AUDIENCE_GROUPS, UNISEX
from ml.data import product_text
from ml.slots import SLOTS
from ml.vocab import key_regex

#: The details a merchandiser gives a product, in the order the upload and edit pages, the API and the
#: example import CSV show them: the one list that forms, serializers and templates read.
PRODUCT_FIELDS = (
    "sku",
    "title",
    "slot",
    "colour",
    "product_type",
    "audience",
    "price",
    "description",
    "variant_group",
)

#: How each product filter matches, the one rule of the catalog page, the product list API and the
#: vector queries: the slot and who it is for exactly (canonical names, validated as choices), the
#: vocabulary facets by every spelling of the value (case and plural merged: :func:`ml.vocab.key_regex`),
#: the price range inclusively. Build the filter with :func:`product_filter_kwargs`.
PRODUCT_FILTER_LOOKUPS = {
    "slot": "slot",
    "audience_group": "audience_group",
    "product_type": "product_type__iregex",
    "colour": "colour__iregex",
    "audience": "audience__iregex",
    "price_min": "price__gte",
    "price_max": "price__lte",
}
_REGEX_LOOKUPS = {"product_type", "colour", "audience"}


def product_filter_kwargs(values: dict, *, prefix: str = "") -> dict:
    """ORM filter keyword arguments for the product filters among ``values``
    (:data:`PRODUCT_FILTER_LOOKUPS`): ``{"colour": "black"}`` -> ``{"colour__iregex": "^...black...$"}``;
    ``prefix`` puts them on a relation (``"product__"``). ``None`` and ``""`` mean "any"; other names are
    left out."""
    return {
        prefix + PRODUCT_FILTER_LOOKUPS[name]: key_regex(str(value)) if name in _REGEX_LOOKUPS else value
        for name, value in values.items()
        if name in PRODUCT_FILTER_LOOKUPS and value not in (None, "")
    }


#: The text search configuration of :attr:`Product.search_vector` and of every query against it.
SEARCH_CONFIG = "english"


def _search_document():
    """The weighted document of full-text search: title and product type (A), colour (B), description (C),
    section and department (D); PostgreSQL's ``english`` configuration (stemming, stop words)."""
    return (
        SearchVector("title", "product_type", weight="A", config=SEARCH_CONFIG)
        + SearchVector("colour", weight="B", config=SEARCH_CONFIG)
        + SearchVector("description", weight="C", config=SEARCH_CONFIG)
        + SearchVector("section", "department", weight="D", config=SEARCH_CONFIG)
    )


class ProductQuerySet(models.QuerySet):
    def filter_facets(self, **values) -> ProductQuerySet:
        """The products matching the filters given (:data:`PRODUCT_FILTER_LOOKUPS`); ``None`` and ``""``
        mean "any"."""
        return self.filter(**product_filter_kwargs(values))


class Product(models.Model):
    """A catalog item (an H&M article, a MANGO product or an uploaded product).

    ``sku`` is the external id (H&M ``article_id``, 10 digits with its leading zero; MANGO
    ``MNG-<cod_modelo_color>``) and is unique; imports upsert on it. ``variant_group`` is the source's
    product code: articles sharing it are colour/pattern variants of one product (alternatives, not
    outfit partners). ``audience`` is the source's own value (H&M index group such as "Divided",
    MANGO "Female Adult", a merchandiser's text); ``audience_group`` is who it is for, normalised by
    :func:`ml.audience.audience_group` from ``audience``, ``section`` and ``department`` on every write.
    """

    class Source(models.TextChoices):
        HM = "hm", "H&M sample"
        MANGO = "mango", "MANGO sample"
        UPLOAD = "upload", "Merchandiser upload"

    sku = models.CharField("SKU", max_length=64, unique=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.UPLOAD)
    title = models.CharField(max_length=255)
    description = models.TextField(blank=True)
    slot = models.CharField(max_length=32, choices=[(s, s) for s in SLOTS], db_index=True)
    product_type = models.CharField(max_length=64, blank=True, db_index=True)
    product_group = models.CharField(max_length=64, blank=True)
    colour = models.CharField(max_length=64, blank=True, db_index=True)
    audience = models.CharField(max_length=64, blank=True, db_index=True)
    audience_group = models.CharField(
        max_length=8, choices=[(g, g) for g in AUDIENCE_GROUPS], default=UNISEX, db_index=True
    )
    department = models.CharField(max_length=128, blank=True)
    section = models.CharField(max_length=128, blank=True)
    variant_group = models.CharField(max_length=64, blank=True, db_index=True)
    price = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    image = models.ImageField(upload_to="products/", blank=True)
    thumbnail = models.ImageField(upload_to="thumbs/", blank=True)
    image_sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    #: Full-text search document, kept by PostgreSQL itself (a stored generated column, GIN index).
    search_vector = models.GeneratedField(
        expression=_search_document(), output_field=SearchVectorField(), db_persist=True
    )

    objects = ProductQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [
            GinIndex(fields=["search_vector"], name="product_search_gin"),
            models.Index(Upper("title"), name="product_title_upper"),  # exact-title lookups of search
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.sku})"

    @property
    def text(self) -> str:
        """The text the text tower embeds (:func:`ml.data.product_text`)."""
        return product_text(
            self.title, self.colour, self.product_type, self.audience, self.section, self.description
        )


class Outfit(models.Model):
    """A set of products worn together: an H&M co-purchase basket, a MANGO stylist's outfit or a
    merchandiser's curated look.

    ``split`` keeps a seeded part of the outfits for evaluation only (never trained on).
    """

    class Split(models.TextChoices):
        TRAIN = "train", "train"
        TEST = "test", "test (held out)"

    class Source(models.TextChoices):
        BASKET = "basket", "Co-purchase basket"
        STYLIST = "stylist", "Composed by a stylist"
        CURATED = "curated", "Curated by a merchandiser"

    external_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    name = models.CharField(max_length=255, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.CURATED)
    split = models.CharField(max_length=8, choices=Split.choices, default=Split.TRAIN, db_index=True)
    products = models.ManyToManyField(Product, through="OutfitItem", related_name="outfits")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name or f"Outfit {self.pk}"


class OutfitItem(models.Model):
    """One product at one position of an outfit."""

    outfit = models.ForeignKey(Outfit, on_delete=models.CASCADE, related_name="items")
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="outfit_items")
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["outfit_id", "position"]
        constraints = [models.UniqueConstraint(fields=["outfit", "product"], name="uniq_outfit_product")]


class ImportJob(models.Model):
    """One bulk import of products from a CSV (and a zip of their photos), run on a Celery worker.

    The page polls ``processed`` / ``total`` for its progress bar. ``rejections`` lists every row that
    was not imported as ``{"row", "sku", "field", "message"}`` (``row`` counts the header as row 1, as
    a spreadsheet does); ``file_error`` says why a whole file was refused (then nothing was written).
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "waiting for its column mapping"
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "finished"
        FAILED = "failed", "failed"

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    csv_file = models.FileField(upload_to="imports/")
    zip_file = models.FileField(upload_to="imports/", blank=True)
    csv_name = models.CharField(max_length=255, blank=True)
    zip_name = models.CharField(max_length=255, blank=True)
    total = models.PositiveIntegerField(default=0)  # data rows in the CSV
    processed = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    unchanged = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    rejections = models.JSONField(default=list, blank=True)
    notes = models.JSONField(default=list, blank=True)  # file-level remarks, e.g. unsafe zip paths ignored
    # the column mapping the CSV is read with (catalog.mapping.ColumnMapping.as_dict), None: our own format
    mapping = models.JSONField(null=True, blank=True)
    file_error = models.TextField(blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="import_jobs"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"ImportJob {self.pk} ({self.status})"

    @property
    def percent(self) -> int:
        """Progress in whole percent (100 once finished, whatever the counts)."""
        if self.status in (self.Status.SUCCEEDED, self.Status.FAILED):
            return 100
        return round(100 * self.processed / self.total) if self.total else 0


class ImportMapping(models.Model):
    """A saved column mapping (``catalog.mapping.ColumnMapping.as_dict()``): how a source's CSV columns
    become product fields, reusable by name on the import page and by ``import_products --mapping NAME``."""

    name = models.CharField(max_length=100, unique=True)
    spec = models.JSONField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class VocabularyAlias(models.Model):
    """What a source value of a vocabulary field became in the catalog ("NEGRO" -> "black", "Dog wear"
    -> "Dog Wear"), kept by imports (:func:`catalog.vocabulary.aliases_record`)."""

    field = models.CharField(max_length=32)
    source_value = models.CharField(max_length=128)
    value = models.CharField(max_length=64)

    class Meta:
        ordering = ["field", "source_value"]
        constraints = [models.UniqueConstraint(fields=["field", "source_value"], name="uniq_vocab_alias")]

    def __str__(self) -> str:
        return f"{self.field}: {self.source_value} -> {self.value}"
