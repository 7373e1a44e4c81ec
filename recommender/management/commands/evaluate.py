"""``python manage.py evaluate``: held-out evaluation of model versions against the zero-shot model and baselines.

Builds the features file (tower outputs from the feature cache, slots, types, outfits, the seeded
splits) from the database, optionally saves it for ``python -m ml.train`` / ``python -m ml.evaluate``,
and writes ``metrics.json``, ``report.md`` and plots.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ml.evaluate import evaluate_all, markdown_table, write_report
from ml.heads import load_heads
from recommender import ml_bridge
from recommender.models import ModelVersion


class Command(BaseCommand):
    help = "Evaluate model versions on the held-out split (text→item Recall@K/MRR, FITB, AUC, P@10)."

    def add_arguments(self, parser):
        parser.add_argument("--versions", default="active", help="'active', 'all', or comma-separated ids")
        parser.add_argument("--out", default=str(Path(settings.VAR_DIR) / "evaluation"))
        parser.add_argument("--export", default=None, help="also save the features file (.npz) here")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, **opts):
        products = ml_bridge.catalog_products()
        if len(products) < 10:
            raise CommandError(f"{len(products)} products: import the catalog first")
        img, txt, _ = ml_bridge.tower_features(ml_bridge.zero_shot_embedder(), products, progress=True)
        data = ml_bridge.train_data(products, img, txt, val_fraction=0.1)
        if opts["export"]:
            data.save(opts["export"])
            self.stdout.write(f"features file: {opts['export']}")
        if opts["versions"] == "active":
            versions = ModelVersion.objects.filter(is_active=True)
        elif opts["versions"] == "all":
            versions = ModelVersion.objects.exclude(artifact_path="")
        else:
            versions = ModelVersion.objects.filter(pk__in=[int(v) for v in opts["versions"].split(",")])
        heads = {f"v{v.pk} {v.name}": load_heads(v.artifact_path)[0] for v in versions if v.artifact_path}
        results = evaluate_all(data, heads, seed=opts["seed"])
        last = next(iter(heads.values()), None)
        paths = write_report(results, Path(opts["out"]), data=data, heads=last)
        self.stdout.write(markdown_table(results))
        self.stdout.write(f"report: {', '.join(str(p) for p in paths.values())}")
