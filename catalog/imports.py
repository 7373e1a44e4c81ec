"""Bulk import: a CSV of products and a zip of their photos, row by row, bad rows reported.

The merchandiser's import page stores both files in an :class:`catalog.models.ImportJob` and a
Celery task (:mod:`catalog.tasks`) runs it; ``manage.py import_products`` runs it in the foreground.
Every valid row is kept; a rejected row names its row number, SKU, field and reason.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.utils import timezone

from catalog.images import MAX_UPLOAD_BYTES, ImageError, too_big_message
from catalog.models import PRODUCT_FIELDS, ImportJob, Product
from catalog.services import TEXT_FIELDS, product_create, product_update
from catalog.signals import products_changed_on_commit

logger = logging.getLogger(__name__)

#: Columns every import CSV needs (header names are matched without case or surrounding spaces).
IMPORT_REQUIRED_COLUMNS = ("sku", "title", "slot", "image")
#: Columns an import CSV may add; others are ignored (and named in the job's notes).
IMPORT_OPTIONAL_COLUMNS = tuple(f for f in PRODUCT_FIELDS if f not in IMPORT_REQUIRED_COLUMNS)
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

    def flush() -> None:  # one announcement per batch: the recommender embeds them together
        products_changed_on_commit(product_ids=pending, change="updated", vectors_stale=True)
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
    data = {k: values[k] for k in ("title", "slot", *TEXT_FIELDS)}
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
