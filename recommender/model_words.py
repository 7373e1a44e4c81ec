"""The models page in plain words: what each metric means (with its chance baseline), the order of its
columns, whether a version beats its baselines, why a run stopped before its epochs, and how long a new
run is expected to take."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from ml.evaluate import BASELINES, ZERO_SHOT

#: One line per metric of the held-out evaluation, with what chance (a random model) scores.
METRIC_HELP: dict[str, str] = {
    "fitb": "Fill in the blank: how often the right missing item of an outfit is picked among 4 "
    "(the 3 wrong ones of the same type and popularity). Chance: 0.25.",
    "auc": "How often a real outfit scores above a made-up one (items of the same types and popularity). "
    "Chance: 0.50.",
    "fitb_random": "Fill in the blank with the wrong candidates drawn from the whole catalog (easier). Chance: 0.25.",
    "auc_random": "Real outfits against outfits of random catalog items (easier). Chance: 0.50.",
    "recall@1": "Text-to-photo search: how often a product's own photo is the first hit for its text. "
    "Chance: 1 in the catalog's size.",
    "recall@5": "The same, among the first 5 hits.",
    "recall@10": "The same, among the first 10 hits.",
    "mrr": "Mean reciprocal rank of the product's own photo for its text (1 = always first).",
    "p@10_type": "Similar items: the share of the 10 nearest items of the same product type as the item. "
    "Chance: that type's share of the catalog.",
    "photo_p@10_type": "Photo search with phone photos of held-out products (measured for a version that "
    "tuned the image tower, and for the active one on the same photos): the share of the first 10 results "
    "of the photographed product's type.",
    "photo_recall@10": "The same photos: how often the photographed product itself is among the first 10 results.",
    "n_fitb": "Number of fill-in-the-blank questions asked (more = a steadier figure).",
    "n_outfits": "Number of held-out outfits scored.",
}


def early_stop_note(
    *, status: str, params: dict[str, Any], history: dict[str, Any], default_patience: int
) -> str:
    """``"stopped early at epoch 15 of 30: no better validation score for 5 epochs"`` for a finished run
    that trained fewer epochs than asked (``history["loss"]`` has one value per epoch); else ``""``."""
    done, asked = len((history or {}).get("loss") or []), (params or {}).get("epochs")
    patience = (params or {}).get("patience", default_patience)
    if status != "succeeded" or not asked or not done or done >= int(asked) or not patience:
        return ""
    return f"stopped early at epoch {done} of {asked}: no better validation score for {patience} epochs"


def expected_duration(last: timedelta | None) -> str:
    """A new run's expected duration in words, from the last finished run's (``"about 15 minutes"``);
    ``"unknown (no run has finished yet)"`` without one."""
    if last is None:
        return "unknown (no run has finished yet)"
    minutes = max(1, round(last.total_seconds() / 60))
    return f"about {minutes} minute{'s' if minutes != 1 else ''}"


#: The models page's first columns: the popularity-matched protocol (the quality gate's), then
#: complementary-item retrieval and audience coherence (docs/evaluation.md).
HEADLINE_METRICS = ("fitb", "auc", "open_recall@10", "ctl_recall@10", "novel_recall@10", "audience@10")


def metric_order(key: str) -> tuple:
    """Sort metric names: :data:`HEADLINE_METRICS` first, the random protocol's (``*_random``) after the
    rest, counts (``n_*``, sizes) last; naturally within each (recall@5 before recall@10).

    JSONB does not keep key order, so the columns are ordered here.
    """
    is_count = key.startswith("n_") or key.endswith("_size")
    rank = (
        HEADLINE_METRICS.index(key)
        if key in HEADLINE_METRICS
        else len(HEADLINE_METRICS) + key.endswith("_random")
    )
    return (is_count, rank, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)])


def learned_row_name(evaluation: dict[str, Any]) -> str | None:
    """The name of a version's own row of its held-out evaluation: ``"fine-tuned"``, else the last row
    that is not a baseline or zero-shot; None when there is none."""
    learned = [
        n for n, row in evaluation.items() if isinstance(row, dict) and n not in (*BASELINES, ZERO_SHOT)
    ]
    if not learned:
        return None
    return "fine-tuned" if "fine-tuned" in learned else learned[-1]


def verdict(evaluation: dict[str, Any]) -> str | None:
    """In words, whether a version's own row (:func:`learned_row_name`) beats the best baseline or
    zero-shot row on the popularity-matched FITB and AUC; None without those figures."""
    name = learned_row_name(evaluation)
    if name is None:
        return None
    parts, wins = [], []
    for metric, shown in (("fitb", "FITB"), ("auc", "AUC")):
        own = evaluation[name].get(metric)
        others = {
            n: row[metric]
            for n, row in evaluation.items()
            if n in (*BASELINES, ZERO_SHOT)
            and isinstance(row, dict)
            and isinstance(row.get(metric), int | float)
        }
        if not isinstance(own, int | float) or not others:
            continue
        best = max(others, key=others.get)
        wins.append(own > others[best])
        parts.append(f"{shown} {own:.3f} against {others[best]:.3f} ({best})")
    if not parts:
        return None
    says = "beats" if all(wins) else ("does not beat" if not any(wins) else "beats only in part")
    return f"{name.capitalize()} {says} the best baseline on the popularity-matched protocol: {', '.join(parts)}."
