"""``python manage.py import_products products.csv [--images photos.zip | --images-dir DIR] [--mapping M]``.

The same bulk import as the merchandiser page (:func:`catalog.imports.product_import_csv`), run in
this process with a progress bar; rejected rows are printed and optionally written as a CSV report.
``--mapping`` reads any CSV through a column mapping: a JSON file (``--propose`` prints the one the
page would propose, to edit), a saved mapping's name or a preset (``shopify``, ``mango``,
``fashion-product-images``); see docs/importing.md.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from catalog.imports import ImportFileError, csv_preview, import_mapping_get, product_import_csv
from catalog.mapping import ColumnMapping, mapping_propose


class Command(BaseCommand):
    help = "Create or update products (by SKU) from a CSV and a zip of their photos."

    def add_arguments(self, parser):
        parser.add_argument("csv", type=Path, help="the products CSV (UTF-8; columns as on /manage/import)")
        parser.add_argument("--images", type=Path, default=None, help="zip of the photos the CSV names")
        parser.add_argument(
            "--images-dir", type=Path, default=None, help="folder of the photos (instead of a zip)"
        )
        parser.add_argument(
            "--mapping",
            default=None,
            help="column mapping: a JSON file, a saved mapping's name or a preset (shopify, mango, "
            "fashion-product-images); without it the CSV needs this site's own columns",
        )
        parser.add_argument(
            "--propose", action="store_true", help="print the proposed mapping as JSON and stop"
        )
        parser.add_argument("--limit", type=int, default=None, help="import only the first N product rows")
        parser.add_argument("--report", type=Path, default=None, help="write rejected rows to this CSV")
        parser.add_argument("--no-progress", action="store_true")

    def _mapping(self, ref: str) -> ColumnMapping:
        path = Path(ref)
        if path.suffix == ".json" or path.exists():
            try:
                return ColumnMapping.from_dict(json.loads(path.read_text(encoding="utf-8")), where=str(path))
            except OSError as exc:
                raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
            except json.JSONDecodeError as exc:
                raise CommandError(f"{path}: not JSON ({exc})") from exc
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
        try:
            return import_mapping_get(ref)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

    def handle(self, *args, **opts):
        try:
            csv_bytes = opts["csv"].read_bytes()
            zip_bytes = opts["images"].read_bytes() if opts["images"] else None
        except OSError as exc:
            raise CommandError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        if opts["propose"]:
            try:
                header, sample, _ = csv_preview(csv_bytes, rows=50)
            except ImportFileError as exc:
                raise CommandError(str(exc)) from exc
            proposal = mapping_propose(header, sample)
            self.stdout.write(json.dumps(proposal.mapping.as_dict(), indent=2, ensure_ascii=False))
            return
        mapping = self._mapping(opts["mapping"]) if opts["mapping"] else None
        if opts["limit"] is not None and opts["limit"] < 1:
            raise CommandError(f"--limit must be positive, got {opts['limit']}")
        t0 = time.perf_counter()
        bar = tqdm(desc="import rows", unit="row", disable=opts["no_progress"])

        def on_progress(done: int, total: int, _result) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            result = product_import_csv(
                csv_bytes=csv_bytes,
                zip_bytes=zip_bytes,
                mapping=mapping,
                image_folder=opts["images_dir"],
                limit=opts["limit"],
                on_progress=on_progress,
            )
        except ImportFileError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bar.close()
        for note in result.notes:
            self.stdout.write(f"note: {note}")
        for r in result.rejections:
            self.stdout.write(f"  rejected row {r.row} (SKU {r.sku or '—'}) {r.field or 'row'}: {r.message}")
        if opts["report"]:
            with opts["report"].open("w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["row", "sku", "field", "message"])
                w.writerows([r.row, r.sku, r.field, r.message] for r in result.rejections)
        self.stdout.write(
            self.style.SUCCESS(
                f"{result.total} rows: {result.created} created, {result.updated} updated, {result.unchanged} "
                f"unchanged, {len(result.rejections)} rejected in {time.perf_counter() - t0:.1f} s"
            )
        )
