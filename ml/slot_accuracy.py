"""Accuracy of slot inference when a catalog has no product types (no Django).

The H&M sample's slots (from its product types, :func:`ml.slots.slot_for`) are the truth; the
inference sees what a merchandiser's file without types gives: the product group, the title and the
description (:func:`ml.slots.slot_with_evidence` with the type hidden). Photos are not used.

Run::

    python -m ml.slot_accuracy --data ../shared/data/hm --out reports/slot_accuracy

writes ``slot_accuracy.json`` (accuracy, per-slot confusion, accuracy per evidence, the low-confidence
rows) and ``slot_accuracy.md`` under ``--out`` and prints the accuracy.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ml.data import HMArticle, read_articles
from ml.slots import EVIDENCE, LOW_CONFIDENCE, SLOTS, slot_with_evidence


def slot_accuracy(articles: Sequence[HMArticle]) -> dict:
    """Infer each article's slot with its product type hidden and compare with its slot.

    Returns:
        ``{"n", "accuracy", "confusion": {truth: {predicted: count}}, "per_slot": {slot: {"n",
        "recall"}}, "by_evidence": {evidence: {"n", "accuracy"}}, "review": [rows of low confidence]}``;
        a row not placed counts as wrong and is predicted ``"none"``.

    Raises:
        ValueError: ``articles`` is empty.
    """
    if not articles:
        raise ValueError("slot_accuracy: no articles")
    confusion: dict[str, Counter[str]] = {s: Counter() for s in SLOTS}
    evidence: dict[str, Counter[bool]] = {e: Counter() for e in EVIDENCE}
    review = []
    for a in articles:
        slot, how = slot_with_evidence(a.product_group, "", a.title, a.description)
        predicted = slot or "none"
        confusion[a.slot][predicted] += 1
        evidence[how][predicted == a.slot] += 1
        if how in LOW_CONFIDENCE:
            review.append(
                {"id": a.article_id, "title": a.title, "group": a.product_group, "predicted": predicted,
                 "evidence": how, "slot": a.slot}
            )  # fmt: skip
    right = sum(confusion[s][s] for s in SLOTS)
    return {
        "n": len(articles),
        "accuracy": right / len(articles),
        "confusion": {s: dict(c.most_common()) for s, c in confusion.items() if c},
        "per_slot": {
            s: {"n": sum(c.values()), "recall": c[s] / sum(c.values())} for s, c in confusion.items() if c
        },
        "by_evidence": {
            e: {"n": c.total(), "accuracy": c[True] / c.total()} for e, c in evidence.items() if c.total()
        },
        "review": review,
    }


def to_markdown(report: dict, *, max_review: int = 50) -> str:
    """The report as Markdown: the accuracy, the confusion table (rows: true slot), accuracy per
    evidence and the first ``max_review`` low-confidence rows."""
    cols = [s for s in (*SLOTS, "none") if any(s in row for row in report["confusion"].values())]
    lines = [
        "# Slot inference without product types (H&M sample)",
        "",
        f"Accuracy **{report['accuracy']:.3f}** on {report['n']:,} articles (group, title and description given).",
        "",
        "| true \\ predicted | " + " | ".join(cols) + " | recall |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for slot, row in report["confusion"].items():
        cells = " | ".join(str(row.get(c, "")) for c in cols)
        lines.append(f"| {slot} | {cells} | {report['per_slot'][slot]['recall']:.3f} |")
    lines += ["", "| evidence | rows | accuracy |", "|---|---|---|"]
    lines += [f"| {e} | {v['n']:,} | {v['accuracy']:.3f} |" for e, v in report["by_evidence"].items()]
    lines += ["", f"## Low confidence, for review ({len(report['review'])} rows)", ""]
    lines += ["| id | title | group | predicted | evidence | true slot |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['id']} | {r['title']} | {r['group']} | {r['predicted']} | {r['evidence']} | {r['slot']} |"
        for r in report["review"][:max_review]
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line: ``--data`` (the H&M sample folder), ``--out`` (folder for the JSON and Markdown),
    ``--limit`` (first N articles). Returns the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="folder with the H&M sample's articles.csv")
    parser.add_argument("--out", type=Path, help="folder for slot_accuracy.json and slot_accuracy.md")
    parser.add_argument("--limit", type=int, default=0, help="only the first N articles")
    args = parser.parse_args(argv)
    articles, _errors = read_articles(args.data)
    report = slot_accuracy(articles[: args.limit] if args.limit else articles)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "slot_accuracy.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        (args.out / "slot_accuracy.md").write_text(to_markdown(report), encoding="utf-8")
    print(
        f"slot accuracy {report['accuracy']:.3f} on {report['n']} articles; {len(report['review'])} to review"
    )
    return report


if __name__ == "__main__":
    main()
