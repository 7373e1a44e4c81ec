"""Bulk import: a CSV of products and a zip of their photos, row by row, bad rows reported.

The merchandiser's import page stores both files in an :class:`catalog.models.ImportJob` and a
Celery task (:mod:`catalog.tasks`) runs it; ``manage.py import_products`` runs it in the foreground.
Every valid row is kept; a rejected row names its row number, SKU, field and reason.
"""

from __future__ import annotations

import csv
import io
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from catalog.archives import ImageArchive, ImageFolder, ImportFileError
from catalog.images import ImageError
from catalog.mapping import PRESETS, ColumnMapping, MappedRow, mapping_rows, slot_infer
from catalog.models import PRODUCT_FIELDS, ImportJob, ImportMapping, Product
from catalog.services import TEXT_FIELDS, product_create, product_update
from catalog.signals import products_changed_on_commit
from catalog.vocabulary import VOCABULARY_FIELDS, aliases_record, canonical_spellings
from ml.vocab import is_unknown, vocab_key

logger = logging.getLogger(__name__)

#: Columns every import CSV needs (header names are matched without case or surrounding spaces).
IMPORT_REQUIRED_COLUMNS = ("sku", "title", "slot", "image")
#: Columns an import CSV may add; others are ignored (and named in the job's notes).
IMPORT_OPTIONAL_COLUMNS = tuple(f for f in PRODUCT_FIELDS if f not in IMPORT_REQUIRED_COLUMNS)
IMPORT_MAX_CSV_BYTES = 20 * 1024 * 1024
IMPORT_MAX_ZIP_BYTES = 1024 * 1024 * 1024
IMPORT_MAX_ROWS = 50_000
_EMBED_BATCH = 256


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


def csv_preview(csv_bytes: bytes, *, rows: int = 5) -> tuple[list[str], list[list[str]], int]:
    """The header (as written), the first ``rows`` data rows and the number of data rows of a CSV, for the
    mapping page.

    Raises:
        ImportFileError: as :func:`_csv_table`.
    """
    notes: list[str] = []
    _, table, _ = _csv_table(csv_bytes, notes, required=())
    reader = csv.reader(io.StringIO(csv_bytes.decode("utf-8-sig"), newline=""))
    header = [h.strip() for h in next(reader)]
    return header, [f for _, f in table[:rows]], len(table)


def _csv_table(
    csv_bytes: bytes, notes: list[str], *, required: Sequence[str] = IMPORT_REQUIRED_COLUMNS
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
    missing = [c for c in required if c not in header]
    if missing:
        raise ImportFileError(
            f"CSV: missing required column(s): {', '.join(missing)} "
            f"(required: {', '.join(IMPORT_REQUIRED_COLUMNS)}; or import it with a column mapping)"
        )
    repeated = sorted({h for h in header if h and header.count(h) > 1})
    if repeated:
        raise ImportFileError(f"CSV: column(s) named more than once: {', '.join(repeated)}")
    known = set(IMPORT_REQUIRED_COLUMNS) | set(IMPORT_OPTIONAL_COLUMNS)
    ignored = [h for h in header if h not in known]
    if ignored and required:
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
    mapping: ColumnMapping | None = None,
    image_folder: Path | str | None = None,
    limit: int | None = None,
    on_progress: Callable[[int, int, CsvImportResult], None] | None = None,
) -> CsvImportResult:
    """Create or update (by SKU) products from a CSV, with photos from a zip; bad rows are reported.

    Columns: :data:`IMPORT_REQUIRED_COLUMNS` (``image`` is the photo's path inside the zip; it may be
    empty for an existing SKU, which keeps its photo) and :data:`IMPORT_OPTIONAL_COLUMNS`, or any columns
    read through a ``mapping`` (:mod:`catalog.mapping`). A row without a slot gets one from its product
    type (:func:`catalog.mapping.slot_infer`) or is rejected as needing a review, with the reason.
    Colour, product type and audience take the catalog's spelling of the same value
    (:mod:`catalog.vocabulary`; "Unknown" becomes empty), and what each source value became is kept.
    Each row is validated completely (fields by :func:`product_validate`, photo by :func:`clean_image`,
    named by its path in the zip) before it is written in its own transaction (:func:`product_create` /
    :func:`product_update`), so a bad row never half-writes a product and every valid row is kept.
    Created and changed products have their embedding queued in batches of 256 once committed.

    Args:
        csv_bytes: the CSV file (UTF-8, optional BOM; comma-separated, ``"``-quoted).
        zip_bytes: a zip of the photos, or ``None``.
        mapping: how the columns become our fields; ``None``: the file has our own columns.
        image_folder: a folder of the photos instead of a zip (the command line's ``--images-dir``).
        limit: import only the first ``limit`` product rows.
        on_progress: called as ``on_progress(processed, total, result)`` after each row.

    Returns:
        Counts, the rejected rows with their reasons (row number, SKU, field, message), file notes.

    Raises:
        ImportFileError: the CSV, the zip or the mapping is unusable as a whole (see :func:`_csv_table`,
            :class:`ImageArchive`, :func:`catalog.mapping.mapping_rows`); nothing is written.
    """
    result = CsvImportResult()
    header, table, unreadable = _csv_table(
        csv_bytes, result.notes, required=() if mapping is not None else IMPORT_REQUIRED_COLUMNS
    )
    archive = ImageFolder(image_folder) if image_folder is not None else None
    archive = ImageArchive(zip_bytes) if zip_bytes is not None else archive
    if archive is not None and archive.unsafe:
        shown = ", ".join(repr(n) for n in archive.unsafe[:10])
        result.notes.append(f"ignored {len(archive.unsafe)} zip member(s) with unsafe paths: {shown}")
    try:
        rows = list(_rows(header, table, mapping, result.notes))[:limit]
    except ValueError as exc:
        raise ImportFileError(f"CSV: {exc}") from exc
    result.total = len(rows)
    first_row_of: dict[str, int] = {}
    skus = list({r.values["sku"][:64] for r in rows if r.values})
    existing: set[str] = set()
    for i in range(0, len(skus), 1000):  # one query per 1,000 SKUs instead of one per row
        existing.update(Product.objects.filter(sku__in=skus[i : i + 1000]).values_list("sku", flat=True))
    known = {f: canonical_spellings(f) for f in VOCABULARY_FIELDS}
    aliases: dict[str, dict[str, str]] = {f: {} for f in VOCABULARY_FIELDS}
    known_before = {f: set(known[f]) for f in VOCABULARY_FIELDS}
    catalog_types = _catalog_types()
    pending: list[int] = []
    columns = [*header, *PRODUCT_FIELDS, "image"]

    def flush() -> None:  # one announcement per batch: the recommender embeds them together
        products_changed_on_commit(product_ids=pending, change="updated", vectors_stale=True)
        pending.clear()

    for done, row in enumerate(rows, start=1):
        values = row.values
        sku = values.get("sku", "")[:64]
        try:
            if row.error:
                raise ValueError(row.error)
            if sku and sku in first_row_of:
                raise ValueError(f"sku: SKU {sku!r} appears again (first on row {first_row_of[sku]})")
            first_row_of.setdefault(sku, row.row)
            if not values["slot"] and not (sku in existing and not values["image"]):
                slot, how = slot_infer(values, catalog_types)
                if slot is None:
                    raise ValueError(f"slot: {how}")
                values["slot"] = slot
            sources = {f: values[f] for f in VOCABULARY_FIELDS}
            for f, raw in sources.items():
                values[f] = "" if is_unknown(raw) else known[f].get(vocab_key(raw), raw)
            outcome, pid = _import_row(values, archive, exists=sku in existing)
            for f in VOCABULARY_FIELDS:  # the first spelling imported is the one later rows take
                if values[f]:
                    known[f].setdefault(vocab_key(values[f]), values[f])
                aliases[f][row.sources.get(f, sources[f])] = values[f]
        except (ImageError, ValueError) as exc:
            where, message = _split_error(exc, columns)
            result.rejections.append(Rejection(row.row, sku, where, message))
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
    for f in VOCABULARY_FIELDS:
        aliases_record(f, aliases[f].items())
        added = sorted(v for k, v in known[f].items() if k not in known_before[f])
        if added:
            shown = ", ".join(added[:12]) + (f" and {len(added) - 12} more" if len(added) > 12 else "")
            result.notes.append(f"new {f.replace('_', ' ')} value(s) added to the catalog: {shown}")
    result.rejections.extend(unreadable)
    result.rejections.sort(key=lambda r: r.row)
    return result


def _rows(
    header: list[str], table: list[tuple[int, list[str]]], mapping: ColumnMapping | None, notes: list[str]
) -> Iterator[MappedRow]:
    """The CSV rows as our fields: through the mapping, or by our own column names."""
    if mapping is not None:
        yield from mapping_rows(mapping, header, table, notes)
        return
    col = {h: i for i, h in enumerate(header)}
    for number, fields in table:
        if len(fields) != len(header):
            sku = fields[col["sku"]].strip() if len(fields) > col["sku"] else ""
            yield MappedRow(
                number, {"sku": sku}, error=f"has {len(fields)} fields; the header has {len(header)}"
            )
            continue
        values = {
            c: fields[col[c]].strip() if c in col else ""
            for c in (*IMPORT_REQUIRED_COLUMNS, *IMPORT_OPTIONAL_COLUMNS)
        }
        yield MappedRow(number, values)


def _catalog_types() -> dict[str, str]:
    """``{vocab_key(product type): the slot most products of that type have}``, over the catalog (one query)."""
    votes: dict[str, Counter[str]] = {}
    for ptype, slot, n in (
        Product.objects.values_list("product_type", "slot").annotate(n=Count("id")).order_by()
    ):
        if not is_unknown(ptype):
            votes.setdefault(vocab_key(ptype), Counter())[slot] += n
    return {k: c.most_common(1)[0][0] for k, c in votes.items()}


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


def _is_own_format(head: bytes) -> bool:
    """Does a CSV's first line name all of :data:`IMPORT_REQUIRED_COLUMNS` (our own format, no mapping)?"""
    line = head.decode("utf-8-sig", errors="replace").splitlines()[:1]
    try:
        header = {h.strip().lower() for h in next(csv.reader(line))} if line else set()
    except csv.Error:
        return False
    return set(IMPORT_REQUIRED_COLUMNS) <= header


def import_job_create(
    *, csv_upload, zip_upload=None, user=None, mapping: ColumnMapping | None = None
) -> ImportJob:
    """Store the uploaded CSV (and zip); queue ``catalog.tasks.import_job_run_task`` once committed when
    the CSV has our own columns or a ``mapping`` is given, else leave the job a draft waiting for its
    column mapping (:func:`import_job_confirm`, after the mapping page).

    Args:
        csv_upload, zip_upload: Django ``UploadedFile`` objects (the zip may be ``None``).
        mapping: the column mapping to read the CSV with (a saved one or a preset chosen on the page).

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
    csv_upload.seek(0)
    own = _is_own_format(csv_upload.read(65536))
    csv_upload.seek(0)
    with transaction.atomic():
        job = ImportJob(
            csv_name=csv_upload.name[:255],
            zip_name=zip_upload.name[:255] if zip_upload else "",
            started_by=user if user is not None and user.pk else None,
            mapping=mapping.as_dict() if mapping is not None else None,
            status=ImportJob.Status.QUEUED if own or mapping is not None else ImportJob.Status.DRAFT,
        )
        token = uuid.uuid4().hex  # stored names never come from user input
        job.csv_file.save(f"{token}.csv", csv_upload, save=False)
        if zip_upload is not None:
            job.zip_file.save(f"{token}.zip", zip_upload, save=False)
        job.save()
        if job.status == ImportJob.Status.QUEUED:
            _queue(job)
    return job


def _queue(job: ImportJob) -> None:
    def send() -> None:
        from catalog.tasks import import_job_run_task

        import_job_run_task.delay(job_id=job.pk)

    transaction.on_commit(send)


def import_job_confirm(*, job: ImportJob, mapping: ColumnMapping, save_as: str = "", user=None) -> ImportJob:
    """Give a draft job its column mapping and queue it once committed; ``save_as`` also keeps the mapping
    under that name (:class:`catalog.models.ImportMapping`, replacing one of the same name).

    Raises:
        ValueError: the job is not a draft any more (already confirmed or run).
    """
    with transaction.atomic():
        updated = ImportJob.objects.filter(pk=job.pk, status=ImportJob.Status.DRAFT).update(
            mapping=mapping.as_dict(), status=ImportJob.Status.QUEUED
        )
        if not updated:
            raise ValueError(f"import #{job.pk} has started already; its columns cannot be changed now")
        if save_as:
            ImportMapping.objects.update_or_create(
                name=save_as[:100],
                defaults={
                    "spec": {**mapping.as_dict(), "name": save_as[:100]},
                    "created_by": user if user and user.pk else None,
                },
            )
        _queue(job)
    job.refresh_from_db()
    return job


def import_mapping_get(name: str) -> ColumnMapping:
    """A saved mapping by name, else a preset by name or label (:data:`catalog.mapping.PRESETS`).

    Raises:
        ValueError: no saved mapping or preset has this name (naming those there are).
    """
    saved = ImportMapping.objects.filter(name=name).first()
    if saved is not None:
        return ColumnMapping.from_dict(saved.spec, where=f"saved mapping {name!r}")
    for key, (label, _cols, mapping) in PRESETS.items():
        if name in (key, label):
            return mapping
    names = [*PRESETS, *ImportMapping.objects.values_list("name", flat=True)]
    raise ValueError(f"no mapping named {name!r}; there are: {', '.join(names)}")


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
        mapping = ColumnMapping.from_dict(job.mapping) if job.mapping is not None else None
        result = product_import_csv(
            csv_bytes=csv_bytes, zip_bytes=zip_bytes, mapping=mapping, on_progress=on_progress
        )
    except (ImportFileError, ValueError) as exc:
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
