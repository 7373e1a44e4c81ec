"""``python manage.py import_products products.csv [--images photos.zip] [--report rejected.csv]``.

The same bulk import as the merchandiser page (:func:`catalog.imports.product_import_csv`), run in
this process with a progress bar; rejected rows are printed and optionally written as a CSV report.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from catalog.imports import ImportFileError, product_import_csv


class Command(BaseCommand):
    help = "Create or update products (by SKU) from a CSV and a zip of their photos."

    def add_arguments(self, parser):
        parser.add_argument("csv", type=Path, help="the products CSV (UTF-8; columns as on /manage/import)")
        parser.add_argument("--images", type=Path, default=None, help="zip of the photos the CSV names")
        parser.add_argument("--report", type=Path, default=None, help="write rejected rows to this CSV")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **opts):
        try:
            csv_bytes = opts["csv"].read_bytes()
            zip_bytes = opts["images"].read_bytes() if opts["images"] else None
        except OSError as exc:
            raise CommandError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        t0 = time.perf_counter()
        bar = tqdm(desc="import rows", unit="row", disable=opts["no_progress"])

        def on_progress(done: int, total: int, _result) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            result = product_import_csv(csv_bytes=csv_bytes, zip_bytes=zip_bytes, on_progress=on_progress)
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
