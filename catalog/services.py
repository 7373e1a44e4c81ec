"""Catalog writes: product create/update, the H&M import, outfits (HackSoft styleguide "services").

Every write that changes what a product looks like or says queues its embedding with
``transaction.on_commit`` so a worker never sees a row that was rolled back.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from django.core.files.base import ContentFile
from django.db import transaction
from tqdm import tqdm

from catalog.images import CleanImage, ImageError, clean_image
from catalog.models import Outfit, OutfitItem, Product
from ml import data as hm
from ml.slots import SLOTS

logger = logging.getLogger(__name__)

#: SKUs: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.
SKU_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def queue_embedding(product_ids: Sequence[int]) -> None:
    """Queue ``ml.tasks.embed_products`` for these ids once the transaction commits.

    Never raises into the request and gives up within ~2 s when the broker (Redis) is down
    (``CELERY_BROKER_CONNECTION_TIMEOUT``, ``CELERY_TASK_PUBLISH_RETRY_POLICY``): the product is
    committed without vectors and ``ml.tasks.reconcile`` (beat, worker start) embeds it later.
    """
    ids = list(product_ids)
    if not ids:
        return

    def send() -> None:
        from ml.tasks import embed_products

        try:
            embed_products.delay(product_ids=ids)
        except Exception as exc:  # broker down: the reconciliation task embeds them later
            logger.warning(
                "could not queue embedding of %d products (%s); reconcile will catch up", len(ids), exc
            )

    transaction.on_commit(send)


def _store_image(product: Product, img: CleanImage) -> None:
    for old in (product.image, product.thumbnail):  # replace, never pile up renamed copies
        if old:
            old.delete(save=False)
    name = f"{img.sha256[:24]}.jpg"  # file names never come from user input
    product.image.save(name, ContentFile(img.jpeg), save=False)
    product.thumbnail.save(name, ContentFile(img.thumbnail), save=False)
    product.image_sha256 = img.sha256


def product_create(
    *,
    sku: str,
    title: str,
    slot: str,
    image_bytes: bytes,
    description: str = "",
    product_type: str = "",
    colour: str = "",
    audience: str = "",
    price: Decimal | None = None,
    variant_group: str = "",
    source: str = Product.Source.UPLOAD,
    embed: bool = True,
) -> Product:
    """Create a product from an uploaded photo and its details, and queue its embedding.

    Raises:
        ImageError: the photo is empty, not an image, truncated or too large (nothing is created).
        ValueError: unknown slot, empty title or SKU, or the SKU exists already.
    """
    sku = sku.strip()
    if not SKU_RE.match(sku):
        raise ValueError(f"sku: {sku!r} is not valid (use 1-64 letters, digits, '.', '_' or '-')")
    if not title.strip():
        raise ValueError("title: must not be empty")
    if price is not None and price < 0:
        raise ValueError(f"price: {price} is negative")
    if slot not in SLOTS:
        raise ValueError(f"slot: {slot!r} is not one of {', '.join(SLOTS)}")
    if Product.objects.filter(sku=sku).exists():
        raise ValueError(f"sku: a product with SKU {sku!r} exists already")
    img = clean_image(image_bytes, name=sku)  # validate before anything is written
    with transaction.atomic():
        product = Product(
            sku=sku, title=title.strip(), slot=slot, description=description, product_type=product_type,
            colour=colour, audience=audience, price=price, variant_group=variant_group, source=source,
        )  # fmt: skip
        _store_image(product, img)
        product.save()
        if embed:
            queue_embedding([product.pk])
    return product


@dataclass
class ImportSummary:
    """What an import did: counts and the reason for every skipped row."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)
    outfits_created: int = 0
    outfits_unchanged: int = 0
    outfits_test: int = 0
    outfits_dropped: int = 0

    def lines(self) -> list[str]:
        """Human-readable closing summary."""
        out = [
            f"products: {self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{len(self.skipped)} skipped",
            f"outfits: {self.outfits_created} created, {self.outfits_unchanged} unchanged, "
            f"{self.outfits_test} held out for evaluation, {self.outfits_dropped} baskets dropped "
            "(fewer than 2 distinct products after removing colour variants)",
        ]
        reasons = Counter(r.split(":")[0] for _, r in self.skipped)
        for where, reason in self.skipped[:50]:
            out.append(f"  skipped {where}: {reason}")
        if len(self.skipped) > 50:
            out.append(f"  ... and {len(self.skipped) - 50} more ({dict(reasons)})")
        return out


def catalog_import_hm(
    *,
    root: Path | str,
    limit: int | None = None,
    test_fraction: float = 0.15,
    seed: int = 0,
    progress: bool = True,
) -> ImportSummary:
    """Import (upsert by SKU) the H&M sample's articles, photos and basket outfits.

    Idempotent: a second run with the same files changes no row (products compare every field and the
    photo's SHA-256; outfits are keyed by basket index). Each photo is decoded with Pillow; a broken
    or missing photo skips that article with the reason, and the rest is imported.

    Args:
        root: the dataset folder (``articles.csv``, ``baskets.json``, ``images/``).
        limit: import at most this many articles, chosen so that whole baskets survive.
        test_fraction: share of outfits held out for evaluation (seeded, stable per basket).
        seed: seed of the article selection and of the outfit split.
        progress: show a tqdm progress bar.

    Raises:
        FileNotFoundError / ValueError: from :func:`ml.data.read_articles` (missing file or columns).
    """
    root = Path(root)
    summary = ImportSummary()
    articles, row_errors = hm.read_articles(root)
    for err in row_errors:
        summary.skipped.append((f"articles.csv line {err.line}", f"bad row: {err.reason}"))
    baskets = hm.read_baskets(root)
    articles = hm.select_articles(articles, baskets, limit, seed=seed)
    existing = {p.sku: p for p in Product.objects.filter(sku__in=[a.article_id for a in articles])}
    changed_ids: list[int] = []
    for art in tqdm(articles, desc="import products", unit="item", disable=not progress):
        where = f"article {art.article_id} (line {art.line})"
        try:
            raw = art.image_path.read_bytes()
        except OSError as exc:
            summary.skipped.append((where, f"image missing: {art.image_path} ({exc.strerror})"))
            continue
        values = {
            "title": art.title, "description": art.description, "slot": art.slot,
            "product_type": art.product_type, "product_group": art.product_group, "colour": art.colour,
            "audience": art.audience, "department": art.department, "section": art.section,
            "variant_group": art.product_code, "source": Product.Source.HM,
        }  # fmt: skip
        product = existing.get(art.article_id)
        sha = hashlib.sha256(raw).hexdigest()
        if product is not None and sha == product.image_sha256 and product.image:
            if all(getattr(product, k) == v for k, v in values.items()):
                summary.unchanged += 1
                continue
            for k, v in values.items():
                setattr(product, k, v)
            product.save()
            summary.updated += 1
            changed_ids.append(product.pk)
            continue
        try:
            img = clean_image(raw, name=str(art.image_path))
        except ImageError as exc:
            summary.skipped.append((where, f"broken image: {exc}"))
            continue
        with transaction.atomic():
            is_new = product is None
            if is_new:
                product = Product(sku=art.article_id)
            for k, v in values.items():
                setattr(product, k, v)
            _store_image(product, img)
            product.save()
        changed_ids.append(product.pk)
        if is_new:
            summary.created += 1
        else:
            summary.updated += 1
    _import_outfits(baskets, summary, test_fraction=test_fraction, seed=seed)
    from recommender.models import ModelVersion

    if changed_ids and ModelVersion.objects.filter(is_active=True).exists():
        for i in range(0, len(changed_ids), 256):
            queue_embedding(changed_ids[i : i + 256])
    return summary


def _import_outfits(
    baskets: list[list[str]], summary: ImportSummary, *, test_fraction: float, seed: int
) -> None:
    products = dict(Product.objects.filter(source=Product.Source.HM).values_list("sku", "id"))
    codes = dict(Product.objects.filter(source=Product.Source.HM).values_list("sku", "variant_group"))
    existing = set(Outfit.objects.filter(source=Outfit.Source.BASKET).values_list("external_id", flat=True))
    new_outfits: list[tuple[Outfit, list[str]]] = []
    for i, basket in enumerate(baskets):
        items = hm.clean_basket(basket, codes)
        if len(items) < 2:
            summary.outfits_dropped += 1
            continue
        ext = f"hm-basket-{i}"
        is_test = hm.split_is_test(ext, test_fraction, seed)
        summary.outfits_test += int(is_test)
        if ext in existing:
            summary.outfits_unchanged += 1
            continue
        split = Outfit.Split.TEST if is_test else Outfit.Split.TRAIN
        new_outfits.append((Outfit(external_id=ext, name=f"H&M basket {i}", source=Outfit.Source.BASKET,
                                   split=split), items))  # fmt: skip
    with transaction.atomic():
        Outfit.objects.bulk_create([o for o, _ in new_outfits])
        OutfitItem.objects.bulk_create(
            [OutfitItem(outfit=o, product_id=products[sku], position=pos)
             for o, items in new_outfits for pos, sku in enumerate(items)]
        )  # fmt: skip
    summary.outfits_created = len(new_outfits)


def outfit_create(*, product_ids: Sequence[int], name: str = "") -> Outfit:
    """Create a curated outfit (training data) from at least two distinct existing products.

    Raises:
        ValueError: fewer than two distinct ids, or unknown ids (listed in the message).
    """
    ids = list(dict.fromkeys(int(i) for i in product_ids))
    if len(ids) < 2:
        raise ValueError("an outfit needs at least two distinct products")
    found = set(Product.objects.filter(pk__in=ids).values_list("pk", flat=True))
    unknown = [i for i in ids if i not in found]
    if unknown:
        raise ValueError(f"unknown product id(s): {unknown}")
    with transaction.atomic():
        outfit = Outfit.objects.create(name=name, source=Outfit.Source.CURATED)
        OutfitItem.objects.bulk_create(
            [OutfitItem(outfit=outfit, product_id=pid, position=i) for i, pid in enumerate(ids)]
        )
    return outfit
