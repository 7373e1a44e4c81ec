"""``python manage.py audit_looks --products 300``: how trustworthy complete-the-look is on this catalog.

Hubness (the share of one item across a slot's top-k lists), audience coherence, slot validity and
relevance of complete-the-look for random products, before (plain ranking) and after the audience
filter and the hubness re-ranking (:mod:`recommender.looks_audit`). Writes the JSON report and a
Markdown table to ``--out``; ``--population`` adds the shares over every product as a query
(:func:`recommender.hubness.population_shares`).
"""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from recommender.hubness import hub_scores_refresh, population_shares
from recommender.looks_audit import GOAL_SHARE, audit_table, looks_audit, population_table
from recommender.selectors import NoActiveModel, active_version


class Command(BaseCommand):
    help = "Audit complete-the-look (hubness, audience coherence, slot validity, relevance) before/after."

    def add_arguments(self, parser):
        parser.add_argument("--products", type=int, default=300, help="random products asking for a look")
        parser.add_argument("--k", type=int, default=5, help="picks per slot")
        parser.add_argument("--depth", type=int, default=20, help="plain-ranking depth for relevance kept")
        parser.add_argument("--pairs", type=int, default=500, help="held-out basket pairs")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", default=str(Path(settings.VAR_DIR) / "audit_looks"))
        parser.add_argument(
            "--refresh-hubs",
            action="store_true",
            help="first recompute the active version's hub scores from its stored vectors",
        )
        parser.add_argument(
            "--population",
            action="store_true",
            help="also the shares over every product as a query (exact, as priced; no sampling noise)",
        )

    def handle(self, *args, **opts):
        try:
            version = active_version()
        except NoActiveModel as exc:
            raise CommandError(str(exc)) from exc
        if opts["refresh_hubs"]:
            n = hub_scores_refresh(version=version)
            self.stdout.write(f"hub scores of {n} rows of version {version.pk} recomputed")
        report = looks_audit(
            products=opts["products"],
            k=opts["k"],
            depth=opts["depth"],
            pairs=opts["pairs"],
            seed=opts["seed"],
        )
        if opts["population"]:
            report["population"] = population_shares(version=version, goal=GOAL_SHARE)
        out = Path(opts["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "looks_audit.json").write_text(json.dumps(report, indent=1))
        table = audit_table(report)
        if opts["population"]:
            table += "\n\n" + population_table(report["population"])
        (out / "looks_audit.md").write_text(table)
        self.stdout.write(table)
        self.stdout.write(f"report: {out / 'looks_audit.json'}, {out / 'looks_audit.md'}")
