"""Catalog writes: product create/update, the H&M import, outfits (HackSoft styleguide "services").

Every write that changes what a product looks like or says queues its embedding with
``transaction.on_commit`` so a worker never sees a row that was rolled back.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone
from tqdm import tqdm

from catalog.images import MAX_UPLOAD_BYTES, CleanImage, ImageError, clean_image, too_big_message
from catalog.models import ImportJob, Outfit, OutfitItem, Product
from ml import data as hm
from ml.slots import SLOTS

logger = logging.getLogger(__name__)

#: SKUs: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.
SKU_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def queue_embedding(product_ids: Sequence[int], version_id: int | None = None) -> None:
    """Queue ``ml.tasks.embed_products`` for these ids once the transaction commits, for the active
    model version (or ``version_id``, e.g. the rollback target).

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
            embed_products.delay(product_ids=ids, version_id=version_id)
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


#: Largest price the ``price`` column holds (``max_digits=10, decimal_places=2``).
MAX_PRICE = Decimal("99999999.99")
_MAX_LENGTHS = {
    "title": 255,
    "product_type": 64,
    "colour": 64,
    "audience": 64,
    "variant_group": 64,
    "description": 20_000,
}


def product_validate(
    *,
    sku: str,
    title: str,
    slot: str,
    price: Decimal | None = None,
    **texts: str,
) -> None:
    """Check a product's fields before anything is written (shared by create, update and bulk import).

    Args:
        texts: the other text fields (``description``, ``product_type``, ``colour``, ``audience``,
            ``variant_group``), checked for length and NUL bytes.

    Raises:
        ValueError: ``"<field>: <what is wrong>"`` for the first bad field (SKU pattern, empty title,
            unknown slot, negative or too large price, text too long or holding a NUL byte).
    """
    if not SKU_RE.match(sku):
        raise ValueError(f"sku: {sku!r} is not valid (use 1-64 letters, digits, '.', '_' or '-')")
    if not title.strip():
        raise ValueError("title: must not be empty")
    if slot not in SLOTS:
        raise ValueError(f"slot: {slot!r} is not one of {', '.join(SLOTS)}")
    if price is not None:
        if not price.is_finite():
            raise ValueError(f"price: {price} is not a number")
        if price < 0:
            raise ValueError(f"price: {price} is negative")
        if price > MAX_PRICE:
            raise ValueError(f"price: {price} is over the maximum {MAX_PRICE}")
        if price != price.quantize(Decimal("0.01")):
            raise ValueError(f"price: {price} has more than 2 decimal places")
    for name, value in {"title": title, **texts}.items():
        if "\x00" in value:
            raise ValueError(f"{name}: contains a NUL byte")
        limit = _MAX_LENGTHS.get(name)
        if limit is not None and len(value) > limit:
            raise ValueError(f"{name}: {len(value)} characters is over the limit of {limit}")


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
    image_name: str | None = None,
) -> Product:
    """Create a product from an uploaded photo and its details, and queue its embedding.

    ``image_name`` names the photo in error messages (default: the SKU).

    Raises:
        ImageError: the photo is empty, not an image, truncated or too large (nothing is created).
        ValueError: a field fails :func:`product_validate`, or the SKU exists already.
    """
    sku = sku.strip()
    product_validate(
        sku=sku,
        title=title,
        slot=slot,
        price=price,
        description=description,
        product_type=product_type,
        colour=colour,
        audience=audience,
        variant_group=variant_group,
    )
    if Product.objects.filter(sku=sku).exists():
        raise ValueError(f"sku: a product with SKU {sku!r} exists already")
    img = clean_image(image_bytes, name=image_name or sku)  # validate before anything is written
    with transaction.atomic():
        product = Product(
            sku=sku,
            title=title.strip(),
            slot=slot,
            description=description,
            product_type=product_type,
            colour=colour,
            audience=audience,
            price=price,
            variant_group=variant_group,
            source=source,
        )
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


# --- edit, delete, curated outfits ------------------------------------------------------------------

#: Fields a merchandiser may edit (the SKU is the product's identity and stays).
EDITABLE_FIELDS = (
    "title",
    "slot",
    "description",
    "product_type",
    "colour",
    "audience",
    "price",
    "variant_group",
)
#: Fields whose change alters the product's vectors (the text tower reads :attr:`Product.text`; the slot
#: is copied onto the vector rows), so they re-queue its embedding, as a new photo does.
EMBEDDED_FIELDS = ("title", "slot", "description", "product_type", "colour", "audience")


def product_update(
    *,
    product: Product,
    data: dict[str, Any],
    image_bytes: bytes | None = None,
    embed: bool = True,
    image_name: str | None = None,
) -> list[str]:
    """Change a product's details and optionally its photo; re-queue its embedding when text, slot or
    photo changed.

    Args:
        data: new values of :data:`EDITABLE_FIELDS` (keys left out keep their value; ``price`` is a
            ``Decimal`` or ``None``).
        image_bytes: a new photo, or ``None`` to keep the current one (the same file is no change).
        embed: queue ``ml.tasks.embed_products`` on commit when something embedded changed.
        image_name: names the photo in error messages (default: the SKU).

    Returns:
        The names of the fields that changed (``"image"`` for a new photo); empty when nothing did.

    Raises:
        ValueError: an unknown field, or a value failing :func:`product_validate` (nothing is written).
        ImageError: the new photo is not usable (nothing is written).
    """
    unknown = sorted(set(data) - set(EDITABLE_FIELDS))
    if unknown:
        raise ValueError(f"cannot edit {', '.join(unknown)}; editable: {', '.join(EDITABLE_FIELDS)}")
    values = {f: getattr(product, f) for f in EDITABLE_FIELDS}
    values.update({k: (v.strip() if isinstance(v, str) and k == "title" else v) for k, v in data.items()})
    for key in EDITABLE_FIELDS:
        if key != "price" and values[key] is None:
            values[key] = ""
    texts = {k: values[k] for k in ("description", "product_type", "colour", "audience", "variant_group")}
    product_validate(
        sku=product.sku, title=values["title"], slot=values["slot"], price=values["price"], **texts
    )
    img = clean_image(image_bytes, name=image_name or product.sku) if image_bytes is not None else None
    changed = [f for f in EDITABLE_FIELDS if getattr(product, f) != values[f]]
    if img is not None and (img.sha256 != product.image_sha256 or not product.image):
        changed.append("image")
    if not changed:
        return []
    with transaction.atomic():
        for f in EDITABLE_FIELDS:
            setattr(product, f, values[f])
        if "image" in changed:
            _store_image(product, img)
        product.save()
        if embed and any(f in changed for f in (*EMBEDDED_FIELDS, "image")):
            queue_embedding([product.pk])
        _retire_cached_answers()  # the old title, price or photo must not be served from the cache
    return changed


def product_delete(*, product: Product) -> None:
    """Delete a product with its vectors and its places in outfits; its photo files go once committed.

    An outfit left with fewer than two items is deleted too (it no longer teaches compatibility).
    """
    files = [f.name for f in (product.image, product.thumbnail) if f]
    storage = product.image.storage
    with transaction.atomic():
        outfit_ids = list(product.outfit_items.values_list("outfit_id", flat=True))
        product.delete()
        Outfit.objects.filter(pk__in=outfit_ids).annotate(n=Count("items")).filter(n__lt=2).delete()

        def remove_files() -> None:
            for name in files:
                if not Product.objects.filter(Q(image=name) | Q(thumbnail=name)).exists():  # shared photo
                    storage.delete(name)

        transaction.on_commit(remove_files)
        _retire_cached_answers()  # cached answers must not list the deleted product


def _retire_cached_answers() -> None:
    from recommender.answer_cache import invalidate  # the serving cache lives in the recommender app

    invalidate()


def outfit_delete(*, outfit: Outfit) -> None:
    """Delete an outfit (its products stay)."""
    outfit.delete()


# --- bulk import: a CSV of products and a zip of their photos ----------------------------------------

#: Columns every import CSV needs (header names are matched without case or surrounding spaces).
IMPORT_REQUIRED_COLUMNS = ("sku", "title", "slot", "image")
#: Columns an import CSV may add; others are ignored (and named in the job's notes).
IMPORT_OPTIONAL_COLUMNS = ("description", "product_type", "colour", "audience", "price", "variant_group")
IMPORT_MAX_CSV_BYTES = 20 * 1024 * 1024
IMPORT_MAX_ZIP_BYTES = 1024 * 1024 * 1024
IMPORT_MAX_ROWS = 50_000
_EMBED_BATCH = 256


class ImportFileError(ValueError):
    """A whole import file is unusable (not UTF-8, missing columns, not a zip...); nothing is written."""


@dataclass(frozen=True)
class Rejection:
    """A CSV row that was not imported: ``row`` counts the header as row 1 (as a spreadsheet does);
    ``field`` is the column at fault, or ``""`` for the row as a whole."""

    row: int
    sku: str
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "sku": self.sku, "field": self.field, "message": self.message}


@dataclass
class CsvImportResult:
    """What :func:`product_import_csv` did."""

    total: int = 0  # data rows (blank lines not counted)
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    product_ids: list[int] = field(default_factory=list)  # created or changed


def _zip_path(name: str) -> str | None:
    """A zip member or CSV image path, normalised (``/`` separators, no ``.`` parts), or ``None`` when it
    is absolute, has a drive letter or climbs out with ``..`` (never trusted, never opened)."""
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


class ImageArchive:
    """The photos of an import: a zip read in memory by member name, never extracted to disk.

    Members with unsafe names (absolute, drive letters, ``..``) are ignored and listed in
    :attr:`unsafe`. A CSV ``image`` value matches a member by its normalised path, else by file name
    when exactly one member has it.

    Raises:
        ImportFileError: ``data`` is not a readable zip archive.
    """

    def __init__(self, data: bytes, *, name: str = "images zip") -> None:
        self.name = name
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
            raise ImportFileError(f"{name}: not a zip archive ({exc})") from exc
        self.members: dict[str, zipfile.ZipInfo] = {}
        self.unsafe: list[str] = []
        by_base: dict[str, list[str]] = {}
        for info in infos:
            if info.is_dir():
                continue
            path = _zip_path(info.filename)
            if path is None:
                self.unsafe.append(info.filename)
                continue
            self.members[path] = info
            by_base.setdefault(path.rsplit("/", 1)[-1], []).append(path)
        self._by_base = {b: paths[0] for b, paths in by_base.items() if len(paths) == 1}
        self._ambiguous = {b: sorted(paths) for b, paths in by_base.items() if len(paths) > 1}

    def read(self, ref: str) -> tuple[str, bytes]:
        """The member a CSV ``image`` value names, and its bytes (at most :data:`MAX_UPLOAD_BYTES`).

        Raises:
            ValueError: the path is unsafe or not in the zip.
            ImageError: the member is over the size limit or cannot be decompressed.
        """
        path = _zip_path(ref)
        if path is None:
            raise ValueError(f"{ref!r} is not a safe path inside the zip (absolute or with '..'); not opened")
        path = path if path in self.members else self._by_base.get(path, path)
        info = self.members.get(path)
        if info is None and path in self._ambiguous:
            raise ValueError(
                f"{ref!r} matches {len(self._ambiguous[path])} files in {self.name} "
                f"({', '.join(self._ambiguous[path][:3])}); give its path inside the zip"
            )
        if info is None:
            raise ValueError(f"{ref!r} is not in {self.name}")
        if info.file_size > MAX_UPLOAD_BYTES:
            raise ImageError(too_big_message(path, info.file_size))
        try:
            with self._zip.open(info) as fh:
                return path, fh.read(MAX_UPLOAD_BYTES + 1)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
            raise ImageError(f"{path}: cannot be read from the zip ({exc})") from exc


def _csv_table(
    csv_bytes: bytes, notes: list[str]
) -> tuple[list[str], list[tuple[int, list[str]]], list[Rejection]]:
    """Decode and split the CSV: (header, [(row number, fields)], rejections of unreadable rows).

    Raises:
        ImportFileError: empty, too large, not UTF-8, missing or repeated columns, too many rows.
    """
    if len(csv_bytes) > IMPORT_MAX_CSV_BYTES:
        raise ImportFileError(
            f"CSV: {len(csv_bytes)} bytes is over the {IMPORT_MAX_CSV_BYTES // 2**20} MB limit"
        )
    try:
        text = csv_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = csv_bytes[: exc.start].count(b"\n") + 1
        raise ImportFileError(
            f"CSV: not UTF-8 text (byte 0x{csv_bytes[exc.start]:02x} on line {line}); save the file as UTF-8"
        ) from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ImportFileError("CSV: the file is empty") from None
    except csv.Error as exc:
        raise ImportFileError(f"CSV: the header cannot be read ({exc})") from exc
    missing = [c for c in IMPORT_REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ImportFileError(
            f"CSV: missing required column(s): {', '.join(missing)} "
            f"(required: {', '.join(IMPORT_REQUIRED_COLUMNS)})"
        )
    repeated = sorted({h for h in header if h and header.count(h) > 1})
    if repeated:
        raise ImportFileError(f"CSV: column(s) named more than once: {', '.join(repeated)}")
    known = set(IMPORT_REQUIRED_COLUMNS) | set(IMPORT_OPTIONAL_COLUMNS)
    ignored = [h for h in header if h not in known]
    if ignored:
        shown = ", ".join(repr(h) for h in ignored[:10]) + (
            f" and {len(ignored) - 10} more" if len(ignored) > 10 else ""
        )
        notes.append(f"ignored unknown column(s): {shown}")
    rows: list[tuple[int, list[str]]] = []
    rejected: list[Rejection] = []
    number = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rejected.append(
                Rejection(number + 1, "", "", f"unreadable CSV ({exc}); the rest of the file was not read")
            )
            break
        number += 1
        if not any(f.strip() for f in fields):
            continue  # blank line
        rows.append((number, fields))
        if len(rows) > IMPORT_MAX_ROWS:
            raise ImportFileError(f"CSV: more than {IMPORT_MAX_ROWS} rows; split the file")
    return header, rows, rejected


def _split_error(exc: Exception, columns: Sequence[str]) -> tuple[str, str]:
    """``ValueError("price: -1 is negative")`` -> ``("price", "-1 is negative")``; image errors -> ``"image"``."""
    if isinstance(exc, ImageError):
        return "image", str(exc)
    where, sep, rest = str(exc).partition(": ")
    if sep and where in columns:
        return where, rest
    return "", str(exc)


def product_import_csv(
    *,
    csv_bytes: bytes,
    zip_bytes: bytes | None = None,
    on_progress: Callable[[int, int, CsvImportResult], None] | None = None,
) -> CsvImportResult:
    """Create or update (by SKU) products from a CSV, with photos from a zip; bad rows are reported.

    Columns: :data:`IMPORT_REQUIRED_COLUMNS` (``image`` is the photo's path inside the zip; it may be
    empty for an existing SKU, which keeps its photo) and :data:`IMPORT_OPTIONAL_COLUMNS`. Each row is
    validated completely (fields by :func:`product_validate`, photo by :func:`clean_image`, named by its
    path in the zip) before it is
    written in its own transaction (:func:`product_create` / :func:`product_update`), so a bad row never
    half-writes a product and every valid row is kept. Created and changed products have their
    embedding queued in batches of 256 once committed.

    Args:
        csv_bytes: the CSV file (UTF-8, optional BOM; comma-separated, ``"``-quoted).
        zip_bytes: a zip of the photos, or ``None``.
        on_progress: called as ``on_progress(processed, total, result)`` after each row.

    Returns:
        Counts, the rejected rows with their reasons (row number, SKU, field, message), file notes.

    Raises:
        ImportFileError: the CSV or the zip is unusable as a whole (see :func:`_csv_table`,
            :class:`ImageArchive`); nothing is written.
    """
    result = CsvImportResult()
    header, rows, unreadable = _csv_table(csv_bytes, result.notes)
    archive = ImageArchive(zip_bytes) if zip_bytes is not None else None
    if archive is not None and archive.unsafe:
        shown = ", ".join(repr(n) for n in archive.unsafe[:10])
        result.notes.append(f"ignored {len(archive.unsafe)} zip member(s) with unsafe paths: {shown}")
    result.total = len(rows)
    col = {h: i for i, h in enumerate(header)}
    first_row_of: dict[str, int] = {}
    skus = list({f[col["sku"]].strip() for _, f in rows if len(f) > col["sku"]})
    existing: set[str] = set()
    for i in range(0, len(skus), 1000):  # one query per 1,000 SKUs instead of one per row
        existing.update(Product.objects.filter(sku__in=skus[i : i + 1000]).values_list("sku", flat=True))
    pending: list[int] = []

    def flush() -> None:
        queue_embedding(pending)
        pending.clear()

    for done, (number, fields) in enumerate(rows, start=1):
        sku = fields[col["sku"]].strip()[:64] if len(fields) > col["sku"] else ""
        try:
            if len(fields) != len(header):
                raise ValueError(f"has {len(fields)} fields; the header has {len(header)}")
            values = {
                c: fields[col[c]].strip() if c in col else ""
                for c in (*IMPORT_REQUIRED_COLUMNS, *IMPORT_OPTIONAL_COLUMNS)
            }
            if sku and sku in first_row_of:
                raise ValueError(f"sku: SKU {sku!r} appears again (first on row {first_row_of[sku]})")
            first_row_of.setdefault(sku, number)
            outcome, pid = _import_row(values, archive, exists=sku in existing)
        except (ImageError, ValueError) as exc:
            where, message = _split_error(exc, header)
            result.rejections.append(Rejection(number, sku, where, message))
        else:
            setattr(result, outcome, getattr(result, outcome) + 1)
            if outcome != "unchanged":
                result.product_ids.append(pid)
                pending.append(pid)
                if len(pending) >= _EMBED_BATCH:
                    flush()
        if on_progress is not None:
            on_progress(done, result.total, result)
    flush()
    result.rejections.extend(unreadable)
    result.rejections.sort(key=lambda r: r.row)
    return result


def _import_row(values: dict[str, str], archive: ImageArchive | None, *, exists: bool) -> tuple[str, int]:
    """Validate one CSV row completely, then write it in one transaction: ``("created" | "updated" |
    "unchanged", product id)``. Raises ``ValueError`` / ``ImageError`` naming the bad field."""
    price = None
    if values["price"]:
        try:
            price = Decimal(values["price"])
        except InvalidOperation:
            raise ValueError(f"price: {values['price']!r} is not a number") from None
    image_bytes, member = None, None
    if values["image"]:
        if archive is None:
            raise ValueError(f"image: {values['image']!r} is named but no zip of images was uploaded")
        try:
            member, image_bytes = archive.read(values["image"])
        except ImageError:
            raise
        except ValueError as exc:
            raise ValueError(f"image: {exc}") from None
    data = {
        k: values[k]
        for k in ("title", "slot", "description", "product_type", "colour", "audience", "variant_group")
    }
    existing = Product.objects.filter(sku=values["sku"]).first() if exists else None
    if existing is None:
        if image_bytes is None:
            raise ValueError("image: a new product needs a photo (give its path inside the zip)")
        product = product_create(
            sku=values["sku"], image_bytes=image_bytes, image_name=member, price=price, embed=False, **data
        )
        return "created", product.pk
    changed = product_update(
        product=existing,
        data={**data, "price": price},
        image_bytes=image_bytes,
        image_name=member,
        embed=False,
    )
    return ("updated" if changed else "unchanged"), existing.pk


def import_job_create(*, csv_upload, zip_upload=None, user=None) -> ImportJob:
    """Store the uploaded CSV (and zip) and queue ``catalog.tasks.import_job_run_task`` once committed.

    Args:
        csv_upload, zip_upload: Django ``UploadedFile`` objects (the zip may be ``None``).

    Raises:
        ImportFileError: a file is over its size limit (:data:`IMPORT_MAX_CSV_BYTES`,
            :data:`IMPORT_MAX_ZIP_BYTES`); nothing is stored.
    """
    if csv_upload.size > IMPORT_MAX_CSV_BYTES:
        raise ImportFileError(
            f"CSV: {csv_upload.size} bytes is over the {IMPORT_MAX_CSV_BYTES // 2**20} MB limit"
        )
    if zip_upload is not None and zip_upload.size > IMPORT_MAX_ZIP_BYTES:
        raise ImportFileError(
            f"images zip: {zip_upload.size} bytes is over the {IMPORT_MAX_ZIP_BYTES // 2**20} MB limit"
        )
    with transaction.atomic():
        job = ImportJob(
            csv_name=csv_upload.name[:255],
            zip_name=zip_upload.name[:255] if zip_upload else "",
            started_by=user if user is not None and user.pk else None,
        )
        token = uuid.uuid4().hex  # stored names never come from user input
        job.csv_file.save(f"{token}.csv", csv_upload, save=False)
        if zip_upload is not None:
            job.zip_file.save(f"{token}.zip", zip_upload, save=False)
        job.save()

        def send() -> None:
            from catalog.tasks import import_job_run_task

            import_job_run_task.delay(job_id=job.pk)

        transaction.on_commit(send)
    return job


def import_job_run(*, job_id: int, progress_every_s: float = 0.5) -> ImportJob:
    """Run a queued :class:`ImportJob` (the Celery task calls this): import, with the counts written to
    the job at most every ``progress_every_s`` seconds and at the end.

    A job that is not queued any more (already run) is returned unchanged. A file-level problem
    (:class:`ImportFileError`) fails the job with its message; nothing was written then.
    """
    updated = ImportJob.objects.filter(pk=job_id, status=ImportJob.Status.QUEUED).update(
        status=ImportJob.Status.RUNNING, started_at=timezone.now()
    )
    job = ImportJob.objects.get(pk=job_id)
    if not updated:
        return job
    last = 0.0

    def on_progress(done: int, total: int, res: CsvImportResult) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= progress_every_s or done == total:
            last = now
            ImportJob.objects.filter(pk=job_id).update(
                total=total,
                processed=done,
                created=res.created,
                updated=res.updated,
                unchanged=res.unchanged,
                rejected=len(res.rejections),
            )

    try:
        csv_bytes = _read_field_file(job.csv_file)
        zip_bytes = _read_field_file(job.zip_file) if job.zip_file else None
        result = product_import_csv(csv_bytes=csv_bytes, zip_bytes=zip_bytes, on_progress=on_progress)
    except ImportFileError as exc:
        ImportJob.objects.filter(pk=job_id).update(
            status=ImportJob.Status.FAILED, file_error=str(exc), finished_at=timezone.now()
        )
    except Exception as exc:
        logger.exception("import job %s failed", job_id)
        ImportJob.objects.filter(pk=job_id).update(
            status=ImportJob.Status.FAILED,
            file_error=f"the import stopped: {exc}",
            finished_at=timezone.now(),
        )
    else:
        ImportJob.objects.filter(pk=job_id).update(
            status=ImportJob.Status.SUCCEEDED,
            total=result.total,
            processed=result.total,
            created=result.created,
            updated=result.updated,
            unchanged=result.unchanged,
            rejected=len(result.rejections),
            rejections=[r.as_dict() for r in result.rejections],
            notes=result.notes,
            finished_at=timezone.now(),
        )
        logger.info(
            "import job %s: %d created, %d updated, %d unchanged, %d rejected",
            job_id,
            result.created,
            result.updated,
            result.unchanged,
            len(result.rejections),
        )
    job.refresh_from_db()
    return job


def _read_field_file(f) -> bytes:
    with f.open("rb") as fh:
        return fh.read()
