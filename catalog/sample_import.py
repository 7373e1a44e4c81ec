"""What the imports of the real samples share (:mod:`catalog.hm_import`, :mod:`catalog.mango_import`):
the summary, the upsert of one product with its photo, and the creation of outfits keyed by an external id.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from django.db import transaction
from tqdm import tqdm

from catalog.images import CleanImage, ImageError, clean_image
from catalog.models import Outfit, OutfitItem, Product
from catalog.services import store_image
from catalog.signals import products_changed_on_commit
from catalog.vocabulary import canonical_spellings, vocab_key


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


#: Threads that read, hash, decode and re-encode the next photos while the current product is written
#: (Pillow releases the GIL while it decodes and encodes), and how many photos they may run ahead.
PHOTO_THREADS = 2
PHOTO_LOOKAHEAD = 16


@dataclass(frozen=True)
class _Photo:
    """A row's photo, made ready off the writing thread: its SHA-256, the cleaned image when the row
    needs one (new or changed photo), or why the row is skipped."""

    sha: str = ""
    img: CleanImage | None = None
    error: str | None = None


def _photo(row: SampleRow, existing: Product | None) -> _Photo:
    """Read and hash the row's photo; decode and re-encode it (:func:`catalog.images.clean_image`) unless
    ``existing`` already has this very photo. Never raises: a missing or broken photo is ``error``."""
    try:
        raw = row.image_path.read_bytes()
    except OSError as exc:
        return _Photo(error=f"image missing: {row.image_path} ({exc.strerror})")
    sha = hashlib.sha256(raw).hexdigest()
    if existing is not None and sha == existing.image_sha256 and existing.image:
        return _Photo(sha=sha)
    try:
        return _Photo(sha=sha, img=clean_image(raw, name=str(row.image_path)))
    except ImageError as exc:
        return _Photo(sha=sha, error=f"broken image: {exc}")


def products_upsert_from_files(rows: Sequence[SampleRow], *, summary: ImportSummary, progress: bool) -> None:
    """Create or update (by SKU) the products of ``rows`` with their photos (:func:`_product_upsert` each,
    in order, on this thread), one query for the existing ones, with a tqdm bar when ``progress``.

    The photos are read and cleaned up to :data:`PHOTO_LOOKAHEAD` rows ahead on :data:`PHOTO_THREADS`
    threads (:func:`_photo`), so decoding overlaps the database writes. Colours and product types take
    the catalog's spelling of the same value (:func:`catalog.vocabulary.canonical_spellings`, or the first
    row's of this import), as a bulk import's do: MANGO's "red" and "Earrings" become H&M's "Red" and
    "Earring" when H&M's sample came first."""
    rows = _canonical_rows(rows)
    existing = {p.sku: p for p in Product.objects.filter(sku__in=[r.sku for r in rows])}
    with ThreadPoolExecutor(max_workers=PHOTO_THREADS, thread_name_prefix="photo") as pool:
        ahead: deque[Future[_Photo]] = deque()
        pending = iter(rows)
        for row in itertools.islice(pending, PHOTO_LOOKAHEAD):
            ahead.append(pool.submit(_photo, row, existing.get(row.sku)))
        for row in tqdm(rows, desc="import products", unit="item", disable=not progress):
            photo = ahead.popleft().result()
            nxt = next(pending, None)
            if nxt is not None:
                ahead.append(pool.submit(_photo, nxt, existing.get(nxt.sku)))
            _product_upsert(row, photo, existing=existing.get(row.sku), summary=summary)


def _canonical_rows(rows: Sequence[SampleRow]) -> list[SampleRow]:
    known = {f: canonical_spellings(f) for f in ("colour", "product_type")}
    out = []
    for row in rows:
        values = dict(row.values)
        for f, spellings in known.items():
            if values.get(f):
                values[f] = spellings.setdefault(vocab_key(values[f]), values[f])
        out.append(replace(row, values=values))
    return out


def _product_upsert(
    row: SampleRow, photo: _Photo, *, existing: Product | None, summary: ImportSummary
) -> None:
    """Create or update one product from a dataset row and its prepared photo; count it in ``summary``.

    Unchanged (every field of ``row.values`` equal and the same photo SHA-256) writes nothing. A new or
    changed photo was decoded and re-encoded by :func:`_photo`; a missing or broken photo skips the row
    with its reason (``summary.skipped``). Created and updated ids are appended to
    ``summary.changed_ids`` (the caller announces them once).
    """
    if photo.error is not None:
        summary.skipped.append((row.where, photo.error))
        return
    product = existing
    if photo.img is None:  # the stored photo is this one
        if all(getattr(product, k) == v for k, v in row.values.items()):
            summary.unchanged += 1
            return
        for k, v in row.values.items():
            setattr(product, k, v)
        product.save()
        summary.updated += 1
        summary.changed_ids.append(product.pk)
        return
    with transaction.atomic():
        is_new = product is None
        if is_new:
            product = Product(sku=row.sku)
        for k, v in row.values.items():
            setattr(product, k, v)
        store_image(product, photo.img)
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
        # complete-the-look lifts items training outfits paired (recommender.looks.outfit_memory):
        # cached answers change, as after outfit_create
        paired = {pid for o, ids in new if o.split == Outfit.Split.TRAIN for pid in ids}
        products_changed_on_commit(product_ids=sorted(paired), change="updated", vectors_stale=False)
    summary.outfits_created += len(new)
