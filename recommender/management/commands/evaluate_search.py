"""``python manage.py evaluate_search --out DIR``: the text search benchmark (:mod:`recommender.search_eval`):
P@10 per query and overall for vector-only, lexical-only and hybrid search, written as JSON + Markdown."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from catalog.models import Product
from recommender.search_eval import QUERIES, search_evaluate


class Command(BaseCommand):
    help = "Text search benchmark: P@10 per query and overall, vector-only vs lexical-only vs hybrid."

    def add_arguments(self, parser):
        parser.add_argument("--out", default=str(Path(settings.VAR_DIR) / "search_eval"))
        parser.add_argument("--queries", default=str(QUERIES), help="the benchmark's queries (JSON)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the generated queries")

    def handle(self, *args, **opts):
        if not Product.objects.exists():
            raise CommandError("the catalog is empty: import one first (manage.py import_catalog hm PATH)")
        search_evaluate(
            out=Path(opts["out"]),
            queries_path=Path(opts["queries"]),
            seed=opts["seed"],
            log=self.stdout.write,
        )
