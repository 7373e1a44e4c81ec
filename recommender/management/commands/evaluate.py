"""``python manage.py evaluate``: held-out evaluation of model versions against the zero-shot model and baselines.

Builds the features file (tower outputs from the feature cache, slots, types, outfits, the fixed held-out
split) from the database, optionally saves it for ``python -m ml.train`` / ``python -m ml.evaluate``,
evaluates every asked version on the features of its own towers (a version with fine-tuned towers or
another model gets its own, through the feature cache), prints the tables (the popularity-matched
protocol first) and writes ``metrics.json``, ``report.md`` and plots.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ml.evaluate import HeldOut, evaluate_all, held_out_protocols, markdown_report, write_report
from ml.heads import RecommenderHeads, load_heads
from ml.protocols import PROTOCOL_SEED, protocol_metrics, split_protocol
from ml.scorers import ATTRIBUTE_MATCH, ATTRIBUTE_PMI, POPULARITY, baseline_scorers, heads_scorer
from recommender import ml_bridge
from recommender.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Evaluate model versions on the held-out split: popularity-matched and random FITB/AUC, "
        "complementary-item retrieval, text→item Recall@K/MRR, P@10, against the baselines."
    )

    def add_arguments(self, parser):
        parser.add_argument("--versions", default="active", help="'active', 'all', or comma-separated ids")
        parser.add_argument("--out", default=str(Path(settings.VAR_DIR) / "evaluation"))
        parser.add_argument("--export", default=None, help="also save the features file (.npz) here")
        parser.add_argument("--seed", type=int, default=PROTOCOL_SEED, help="protocol seed (default fixed)")

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
        heads: dict[str, RecommenderHeads] = {}
        features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for v in versions:
            if not v.artifact_path:
                continue
            name = f"v{v.pk} {v.name}"
            heads[name], meta = load_heads(v.artifact_path)
            model = meta.get("model") or (v.config or {}).get("model") or {}
            own = ml_bridge.own_features(heads[name], model, products, base=(data.image, data.text))
            if own[0] is not data.image:
                features[name] = own
        held = held_out_protocols(data, opts["seed"])  # every table below reads the same questions
        results = evaluate_all(
            data,
            heads,
            seed=opts["seed"],
            features=features,
            memory_picks=settings.LOOKS_MEMORY_PICKS,
            held=held,
        )
        last = next(reversed(heads), None)
        plot_data = (
            replace(data, image=features[last][0], text=features[last][1]) if last in features else data
        )
        paths = write_report(results, Path(opts["out"]), data=plot_data, heads=heads.get(last))
        self.stdout.write(markdown_report(results))
        sources = list(dict.fromkeys(p.source for p in products))  # attrs["catalog"] ids, in this order
        if len(sources) > 1:  # a combined figure can hide a catalog the model does not help
            table = by_catalog(data, heads, features, sources, held)
            (Path(opts["out"]) / "by_catalog.md").write_text(table)
            self.stdout.write(table)
        self.stdout.write(f"report: {', '.join(str(p) for p in paths.values())}")


def by_catalog(
    data,
    heads: dict[str, RecommenderHeads],
    features: dict[str, tuple[np.ndarray, np.ndarray]],
    sources: list[str],
    held: HeldOut,
) -> str:
    """The popularity-matched FITB / AUC of the popularity, attribute-match and attribute co-occurrence
    baselines and of every version on each catalog's own held-out questions and outfits (``held.matched``
    split by :func:`ml.protocols.split_protocol`), as a Markdown table."""
    shown = (POPULARITY, ATTRIBUTE_MATCH, ATTRIBUTE_PMI)
    scorers = {k: v for k, v in baseline_scorers(data).items() if k in shown}
    for name, h in heads.items():
        image, text = features.get(name, (data.image, data.text))
        scorers[name] = heads_scorer(h, image, text, data.slots)
    parts = split_protocol(held.matched, data.attrs["catalog"])
    lines = [
        "### Popularity-matched protocol by catalog (FITB / AUC)\n",
        "| model | "
        + " | ".join(f"{sources[g]} ({len(p.questions)} q, {len(p.positives)} o)" for g, p in parts.items())
        + " |",
        "|---|" + "---:|" * len(parts),
    ]
    for name, scorer in scorers.items():
        cells = [protocol_metrics(scorer.pair, p) for p in parts.values()]
        lines.append(f"| {name} | " + " | ".join(f"{c['fitb']:.3f} / {c['auc']:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"
