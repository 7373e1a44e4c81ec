"""``python manage.py bench_import [--rows 300]``: bulk-import throughput, as ratios measured in one run.

On N real H&M articles and photos (``../shared/data/hm``), on this machine:

* photo cleaning alone: :func:`catalog.images.clean_image` (decode, EXIF, RGB, JPEG re-encode,
  thumbnail) of each photo: photos/s, the floor of any import;
* one by one: :func:`catalog.services.product_create` per article (validation, photo, row): items/s;
* bulk: :func:`catalog.imports.product_import_csv` of a CSV + zip of the same articles (CSV parsing,
  zip reads, per-row validation, the photo checked before the write, then ``product_create``): rows/s.

Everything runs inside one transaction that is rolled back, with photos written to a temporary media
folder, so the database and the media folder are unchanged (and no embedding is queued). Writes
``ml/benchmarks/results/import.json``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction
from django.test.utils import override_settings

from catalog.images import clean_image
from catalog.imports import product_import_csv
from catalog.services import product_create
from ml.data import read_articles

RESULTS = Path(__file__).resolve().parents[3] / "ml" / "benchmarks" / "results" / "import.json"


class Command(BaseCommand):
    help = "Benchmark the bulk import against one-by-one product_create and bare photo cleaning."

    def add_arguments(self, parser):
        parser.add_argument("--rows", type=int, default=300, help="articles to import")
        parser.add_argument("--data", default=str(settings.BASE_DIR.parent / "shared" / "data" / "hm"))
        parser.add_argument("--out", default=str(RESULTS))

    def handle(self, *args, **opts):

        articles, _ = read_articles(Path(opts["data"]))
        arts = articles[: opts["rows"]]
        photos = [a.image_path.read_bytes() for a in arts]  # read once: disk speed is not measured
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["sku", "title", "slot", "image", "colour", "product_type", "description"])
        for a in arts:
            w.writerow(
                [
                    f"BENCH-B-{a.article_id}",
                    a.title,
                    a.slot,
                    f"photos/{a.article_id}.jpg",
                    a.colour,
                    a.product_type,
                    a.description,
                ]
            )
        csv_bytes = buf.getvalue().encode()
        zbuf = io.BytesIO()
        with zipfile.ZipFile(zbuf, "w", compression=zipfile.ZIP_STORED) as zf:  # JPEGs do not deflate
            for a, data in zip(arts, photos, strict=True):
                zf.writestr(f"photos/{a.article_id}.jpg", data)
        zip_bytes = zbuf.getvalue()
        n = len(arts)
        times: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as media, override_settings(MEDIA_ROOT=media):
            t = time.perf_counter()
            for a, data in zip(arts, photos, strict=True):
                clean_image(data, name=a.article_id)
            times["clean_image"] = time.perf_counter() - t
            with transaction.atomic():
                t = time.perf_counter()
                for a, data in zip(arts, photos, strict=True):
                    product_create(
                        sku=f"BENCH-A-{a.article_id}",
                        title=a.title,
                        slot=a.slot,
                        image_bytes=data,
                        colour=a.colour,
                        product_type=a.product_type,
                        description=a.description,
                    )
                times["product_create"] = time.perf_counter() - t
                t = time.perf_counter()
                result = product_import_csv(csv_bytes=csv_bytes, zip_bytes=zip_bytes)
                times["product_import_csv"] = time.perf_counter() - t
                transaction.set_rollback(True)
        assert result.created == n and not result.rejections, result.rejections[:3]
        rate = {k: n / v for k, v in times.items()}
        out = {
            "rows": n,
            "csv_bytes": len(csv_bytes),
            "zip_bytes": len(zip_bytes),
            "photos_per_s_clean_image": round(rate["clean_image"], 1),
            "items_per_s_product_create": round(rate["product_create"], 1),
            "rows_per_s_bulk_import": round(rate["product_import_csv"], 1),
            "bulk_vs_one_by_one": round(rate["product_import_csv"] / rate["product_create"], 3),
            "bulk_vs_clean_image": round(rate["product_import_csv"] / rate["clean_image"], 3),
            "cpu_count": os.cpu_count(),
            "measured": time.strftime("%Y-%m-%d"),
        }
        Path(opts["out"]).parent.mkdir(parents=True, exist_ok=True)
        Path(opts["out"]).write_text(json.dumps(out, indent=2) + "\n")
        for k, v in out.items():
            self.stdout.write(f"{k}: {v}")
        self.stdout.write(self.style.SUCCESS(f"wrote {opts['out']}"))
