"""What the imports of the real samples share (:mod:`catalog.hm_import`, :mod:`catalog.mango_import`):
the summary, the upsert of one product with its photo, and the creation of outfits keyed by an external id.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction
from tqdm import tqdm

from catalog.images import ImageError, clean_image
from catalog.models import Outfit, OutfitItem, Product
from catalog.services import store_image


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
    changed_ids: list[int] = field(default_factory=list)  # products created or updated

    def lines(self) -> list[str]:
        """Human-readable closing summary."""
        out = [
            f"products: {self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{len(self.skipped)} skipped",
            f"outfits: {self.outfits_created} created, {self.outfits_unchanged} unchanged, "
            f"{self.outfits_test} held out for evaluation, {self.outfits_dropped} dropped "
            "(fewer than 2 of their products imported, colour variants counted once)",
        ]
        reasons = Counter(r.split(":")[0] for _, r in self.skipped)
        for where, reason in self.skipped[:50]:
            out.append(f"  skipped {where}: {reason}")
        if len(self.skipped) > 50:
            out.append(f"  ... and {len(self.skipped) - 50} more ({dict(reasons)})")
        return out


@dataclass(frozen=True)
class SampleRow:
    """One product of a sample, as its import wants it stored: ``where`` names it in skip reasons."""

    sku: str
    values: dict[str, Any]
    image_path: Path
    where: str


def products_upsert_from_files(rows: Sequence[SampleRow], *, summary: ImportSummary, progress: bool) -> None:
    """Create or update (by SKU) the products of ``rows`` with their photos (:func:`_product_upsert_from_file`
    each), one query for the existing ones, with a tqdm bar when ``progress``."""
    existing = {p.sku: p for p in Product.objects.filter(sku__in=[r.sku for r in rows])}
    for row in tqdm(rows, desc="import products", unit="item", disable=not progress):
        _product_upsert_from_file(
            sku=row.sku,
            values=row.values,
            image_path=row.image_path,
            existing=existing.get(row.sku),
            summary=summary,
            where=row.where,
        )


def _product_upsert_from_file(
    *,
    sku: str,
    values: dict[str, Any],
    image_path: Path,
    existing: Product | None,
    summary: ImportSummary,
    where: str,
) -> None:
    """Create or update one product from a dataset row and its photo file; count it in ``summary``.

    Unchanged (every field of ``values`` equal and the same photo SHA-256) writes nothing. A new or
    changed photo is decoded and re-encoded by :func:`catalog.images.clean_image`; a missing or broken
    photo skips the row with its reason (``summary.skipped``). Created and updated ids are appended to
    ``summary.changed_ids`` (the caller announces them once).
    """
    try:
        raw = image_path.read_bytes()
    except OSError as exc:
        summary.skipped.append((where, f"image missing: {image_path} ({exc.strerror})"))
        return
    product = existing
    sha = hashlib.sha256(raw).hexdigest()
    if product is not None and sha == product.image_sha256 and product.image:
        if all(getattr(product, k) == v for k, v in values.items()):
            summary.unchanged += 1
            return
        for k, v in values.items():
            setattr(product, k, v)
        product.save()
        summary.updated += 1
        summary.changed_ids.append(product.pk)
        return
    try:
        img = clean_image(raw, name=str(image_path))
    except ImageError as exc:
        summary.skipped.append((where, f"broken image: {exc}"))
        return
    with transaction.atomic():
        is_new = product is None
        if is_new:
            product = Product(sku=sku)
        for k, v in values.items():
            setattr(product, k, v)
        store_image(product, img)
        product.save()
    summary.changed_ids.append(product.pk)
    if is_new:
        summary.created += 1
    else:
        summary.updated += 1


def outfits_create(
    *,
    source: str,
    outfits: Sequence[tuple[str, str, Sequence[int], bool]],
    summary: ImportSummary,
) -> None:
    """Create the outfits not there yet, keyed by external id (idempotent), in one transaction.

    Args:
        source: the :class:`catalog.models.Outfit.Source` of them all.
        outfits: ``(external_id, name, product ids in order, is_test)``, each with ≥ 2 products.
    """
    existing = set(Outfit.objects.filter(source=source).values_list("external_id", flat=True))
    new: list[tuple[Outfit, Sequence[int]]] = []
    for ext, name, product_ids, is_test in outfits:
        summary.outfits_test += int(is_test)
        if ext in existing:
            summary.outfits_unchanged += 1
            continue
        split = Outfit.Split.TEST if is_test else Outfit.Split.TRAIN
        new.append((Outfit(external_id=ext, name=name, source=source, split=split), product_ids))
    with transaction.atomic():
        Outfit.objects.bulk_create([o for o, _ in new])
        OutfitItem.objects.bulk_create(
            [
                OutfitItem(outfit=o, product_id=pid, position=pos)
                for o, ids in new
                for pos, pid in enumerate(ids)
            ]
        )
    summary.outfits_created += len(new)
