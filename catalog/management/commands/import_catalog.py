"""``python manage.py import_catalog {hm,mango} PATH [--limit N]``: import a real catalog sample."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from catalog.hm_import import catalog_import_hm
from catalog.mango_import import catalog_import_mango

IMPORTERS = {"hm": catalog_import_hm, "mango": catalog_import_mango}


class Command(BaseCommand):
    help = (
        "Import a catalog (upsert by SKU). Sources: hm (the H&M sample folder), "
        "mango (the MANGO sample folder)."
    )

    def add_arguments(self, parser):
        parser.add_argument("source", choices=sorted(IMPORTERS), help="dataset format")
        parser.add_argument("path", help="dataset folder, e.g. ../shared/data/hm or ../shared/data/mango")
        parser.add_argument(
            "--limit", type=int, default=None, help="import at most N products (whole outfits)"
        )
        parser.add_argument("--test-fraction", type=float, default=0.15, help="share of outfits held out")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **opts):
        if opts["limit"] is not None and opts["limit"] < 0:
            raise CommandError(f"--limit must be 0 (all) or positive, got {opts['limit']}")
        if not 0.0 <= opts["test_fraction"] < 1.0:
            raise CommandError(f"--test-fraction must be in [0, 1), got {opts['test_fraction']}")
        t0 = time.perf_counter()
        try:
            summary = IMPORTERS[opts["source"]](
                root=opts["path"],
                limit=opts["limit"] or None,
                test_fraction=opts["test_fraction"],
                seed=opts["seed"],
                progress=not opts["no_progress"],
            )
        except (FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        for line in summary.lines():
            self.stdout.write(line)
        self.stdout.write(self.style.SUCCESS(f"import finished in {time.perf_counter() - t0:.1f} s"))
