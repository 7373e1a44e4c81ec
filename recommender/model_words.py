"""The models page in plain words: what each metric means (with its chance baseline), why a run stopped
before its epochs, and how long a new run is expected to take."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

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
