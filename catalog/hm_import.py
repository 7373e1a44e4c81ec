"""Import of the H&M sample (``../shared/data/hm``): articles, photos and co-purchase baskets as outfits.

Read at run time from the dataset folder, never copied into the repository (``manage.py
import_catalog hm PATH``, ``make import``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction
from tqdm import tqdm

from catalog.images import ImageError, clean_image
from catalog.models import Outfit, OutfitItem, Product
from catalog.services import store_image
from catalog.signals import products_changed_on_commit
from ml import data as hm


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
            "title": art.title,
            "description": art.description,
            "slot": art.slot,
            "product_type": art.product_type,
            "product_group": art.product_group,
            "colour": art.colour,
            "audience": art.audience,
            "department": art.department,
            "section": art.section,
            "variant_group": art.product_code,
            "source": Product.Source.HM,
        }
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
            store_image(product, img)
            product.save()
        changed_ids.append(product.pk)
        if is_new:
            summary.created += 1
        else:
            summary.updated += 1
    _import_outfits(baskets, summary, test_fraction=test_fraction, seed=seed)
    products_changed_on_commit(product_ids=changed_ids, change="updated", vectors_stale=True)
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
        new_outfits.append(
            (Outfit(external_id=ext, name=f"H&M basket {i}", source=Outfit.Source.BASKET, split=split), items)
        )
    with transaction.atomic():
        Outfit.objects.bulk_create([o for o, _ in new_outfits])
        OutfitItem.objects.bulk_create(
            [
                OutfitItem(outfit=o, product_id=products[sku], position=pos)
                for o, items in new_outfits
                for pos, sku in enumerate(items)
            ]
        )
    summary.outfits_created = len(new_outfits)
