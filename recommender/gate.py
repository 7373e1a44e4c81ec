"""The quality gate a new model version passes before it serves, and the photo-search check of a version
that tuned the image tower.

A version is activated automatically only when it beats the active one on the popularity-matched
protocol (FITB and AUC, both evaluated on the same fixed held-out split, each on the features of its own
towers), or, when none is active, the best baseline (:func:`quality_gate`).

A version whose image tower was tuned (the models page's "Tune the image tower for phone photos", the
second run of ``make demo``) is there for photo search, and it starts from the active version's heads: its
compatibility scores move little either way. Its gate (:func:`photo_gate`) asks instead that photo search
improves on the same phone photos (:func:`photo_search_check`: the served ranking, best match's type first)
while each compatibility metric stays within :data:`PHOTO_COMPAT_TOLERANCE` of the active version's.
While the active version has a tuned image tower, a version without one must also keep its photo search
(:func:`photo_kept`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from catalog.models import Product
from ml.augment import donor_photos, phone_photo_features
from ml.dataset import TrainData
from ml.evaluate import REFERENCES, best_reference
from ml.heads import RecommenderHeads, load_heads
from ml.inference import Embedder
from ml.photo_robustness import EVAL_SEED, TYPE_VOTE_K, search_metrics
from ml.scorers import ATTRIBUTE_PMI
from recommender import ml_bridge
from recommender.models import ModelVersion

#: The popularity-matched metrics a new version must improve to be activated automatically.
GATE_METRICS = ("fitb", "auc")
#: Rows the first version must beat (no active version): every reference but the attribute co-occurrence,
#: which a basket-only shop's model may not beat (docs/evaluation.md) and which serves nothing itself.
GATE_REFERENCES: tuple[str, ...] = tuple(n for n in REFERENCES if n != ATTRIBUTE_PMI)
#: How far below the active version's each matched compatibility metric an image-tower tuning version
#: may score and still be activated for its better photo search (:func:`photo_gate`).
PHOTO_COMPAT_TOLERANCE = 0.01
#: How much photo search's P@10 of the same type a version without a tuned image tower may lose against an
#: active version with one (:func:`photo_kept`).
PHOTO_KEEP_TOLERANCE = 0.02
#: Held-out products whose phone photos query the photo-search check (a seeded sample).
PHOTO_QUERIES = 1000
#: The evaluation row names of the photo-search check's two metrics.
PHOTO_METRICS = ("photo_p@10_type", "photo_recall@10")


class Incumbent(NamedTuple):
    """The active version a new one is measured against."""

    name: str  # its row in the evaluation table, "active v<pk>"
    version: ModelVersion
    heads: RecommenderHeads
    features: tuple[np.ndarray, np.ndarray]  # (N, E) float32 image and text features of its own towers


def incumbent(
    version: ModelVersion, products: list[Product], base: tuple[np.ndarray, np.ndarray]
) -> Incumbent | None:
    """The active version to beat, or None when no version other than ``version`` is active. Its towers
    are the base ones (``base``: (N, E) float32 image and text features of ``products``) unless it was
    trained with another model or tuned towers; then their features are computed (feature cache)."""
    active = ModelVersion.objects.filter(is_active=True).exclude(pk=version.pk).first()
    if active is None or not active.artifact_path or not Path(active.artifact_path).exists():
        return None
    heads, meta = load_heads(active.artifact_path)
    model = meta.get("model") or (active.config or {}).get("model") or {}
    feats = ml_bridge.own_features(heads, model, products, base=base)
    return Incumbent(f"active v{active.pk}", active, heads, feats)


def quality_gate(results: dict[str, dict[str, Any]], *, incumbent: str | None) -> dict[str, Any]:
    """May the new version (row ``"fine-tuned"``) be activated automatically?

    It must beat, on every metric of :data:`GATE_METRICS` (popularity-matched FITB and AUC), the active
    version's row ``incumbent`` evaluated on the same protocol, or, when no version is active, the best
    baseline of that metric among :data:`GATE_REFERENCES` (popularity, attribute match, pair memory,
    co-occurrence, zero-shot; the attribute co-occurrence row is reported beside the model but does not
    keep a shop's first version off: a shop whose outfits tell little beyond the attributes, such as
    co-purchase baskets, would otherwise get no active version at all). Strictly: a tie is not better.

    Returns:
        ``{"passed": bool, "reason": str, "against": {metric: [reference row, value]},
        "model": {metric: value}}``.
    """
    own = results["fine-tuned"]
    against: dict[str, list[Any]] = {}
    worse = []
    for m in GATE_METRICS:
        ref = (
            (incumbent, results[incumbent].get(m))
            if incumbent
            else best_reference(results, m, GATE_REFERENCES)
        )
        value = own.get(m)
        if ref is None or ref[1] is None or value is None or value != value:
            return {
                "passed": False,
                "reason": f"matched {m} could not be measured",
                "against": {},
                "model": {},
            }
        against[m] = [ref[0], float(ref[1])]
        if not value > ref[1]:
            worse.append(f"{m} {value:.3f} ≤ {ref[1]:.3f} ({ref[0]})")
    shown = ", ".join(f"{m} {own[m]:.3f} vs {v:.3f} ({n})" for m, (n, v) in against.items())
    target = incumbent or "the best baseline"
    reason = (
        f"beats {target} on the matched protocol: {shown}"
        if not worse
        else f"does not beat {target} on the matched protocol: " + "; ".join(worse)
    )
    if not incumbent and ATTRIBUTE_PMI in results:  # the table's best baseline may be one the gate skips
        reason += f" ({ATTRIBUTE_PMI}, in the table, is not a gate baseline: docs/evaluation.md#quality-gate)"
    return {
        "passed": not worse,
        "reason": reason,
        "against": against,
        "model": {m: own[m] for m in GATE_METRICS},
    }


def tunes_photos(heads: RecommenderHeads) -> bool:
    """Were the image tower's weights tuned in the run that made these heads?"""
    return any(k.startswith("visual.") for k in heads.tower_state or {})


class _Towers:
    """Several image towers as one extractor (``encode_pil`` concatenates their features), so each phone
    photo is made once and encoded by all of them."""

    def __init__(self, extractors: list[Any]) -> None:
        self.extractors = extractors
        self.embed_dim = sum(e.embed_dim for e in extractors)
        self.batch_size = extractors[0].batch_size

    def encode_pil(self, images: Sequence[Any]) -> np.ndarray:
        return np.concatenate([e.encode_pil(images) for e in self.extractors], axis=1)


def photo_search_check(
    data: TrainData,
    versions: dict[str, tuple[RecommenderHeads, Embedder, np.ndarray]],
    *,
    skip: Sequence[int] = (),
    queries: int = PHOTO_QUERIES,
    seed: int = EVAL_SEED,
) -> dict[str, dict[str, float]]:
    """Photo search with shoppers' phone photos, as the site serves it, for each version on the same photos.

    Each of ``queries`` held-out products (``data.heldout_items``, a seeded sample; unreadable photos in
    ``skip`` left out) becomes one phone photo (:func:`ml.augment.phone_photo`, seeded per product), encoded
    by each version's own image tower and searched among the image vectors of the whole catalog, best
    match's product type first (``ml.photo_robustness.type_vote`` of :data:`~ml.photo_robustness.TYPE_VOTE_K`).
    The protocol of ``python -m ml.photo_robustness evaluate`` (docs/evaluation.md), on this catalog.

    Args:
        data: the run's :class:`~ml.dataset.TrainData` (``image_paths``, ``types``, ``item_ids``).
        versions: row name → (heads, an embedder of its towers, (N, E) float32 image-tower features of
            every catalog row through those towers).

    Returns:
        ``{row name: {"photo_p@10_type": P@10 of the query's product type, "photo_recall@10": the share
        of queries whose own product is in the top 10}}``; ``{}`` when no held-out photo can be read.

    Raises:
        ValueError: ``data`` has no ``image_paths``.
    """
    if data.image_paths is None:
        raise ValueError("photo_search_check needs data.image_paths")
    rows = np.setdiff1d(np.asarray(data.heldout_items, dtype=np.int64), np.asarray(skip, dtype=np.int64))
    if not len(rows):
        return {}
    rows = np.sort(np.random.default_rng(seed).choice(rows, size=min(queries, len(rows)), replace=False))
    donor_pool = [data.image_paths[i] for i in np.setdiff1d(np.arange(len(data.types)), data.heldout_items)]
    names = list(versions)
    towers = _Towers([versions[n][1].extractor for n in names])
    feats = phone_photo_features(
        towers,
        [data.image_paths[i] for i in rows],
        [str(data.item_ids[i] if data.item_ids is not None else i) for i in rows],
        [seed],
        donors=donor_photos(donor_pool, 200, seed + 7),
        desc="photo search check",
    )[:, 0]  # (Q, sum of E)
    out, start = {}, 0
    with torch.no_grad():
        for name in names:
            heads, embedder, gallery = versions[name]
            e = embedder.extractor.embed_dim
            q = heads.image_vec(torch.from_numpy(np.ascontiguousarray(feats[:, start : start + e]))).numpy()
            g = heads.image_vec(torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))).numpy()
            start += e
            m = search_metrics(q, g, rows, np.asarray(data.types), vote=TYPE_VOTE_K)
            out[name] = {"photo_p@10_type": m["p@10_type"], "photo_recall@10": m["recall@10"]}
    return out


def photo_gate(
    results: dict[str, dict[str, Any]], photo: dict[str, dict[str, float]], *, incumbent: str
) -> dict[str, Any]:
    """The gate of a version that tuned the image tower: it passes when the served photo search's P@10 of
    the same product type beats the active version's (``photo``: :func:`photo_search_check`, rows
    ``"fine-tuned"`` and ``incumbent``) and each metric of :data:`GATE_METRICS` stays above the active
    version's less :data:`PHOTO_COMPAT_TOLERANCE`.

    Returns:
        The dict of :func:`quality_gate`, ``against`` and ``model`` holding the photo metric too.
    """
    own, ref = results["fine-tuned"], results[incumbent]
    p_own, p_ref = (photo.get(n, {}).get("photo_p@10_type") for n in ("fine-tuned", incumbent))
    if p_own is None or p_ref is None:
        return {"passed": False, "reason": "photo search could not be measured", "against": {}, "model": {}}
    against = {m: [incumbent, float(ref[m])] for m in GATE_METRICS}
    against["photo_p@10_type"] = [incumbent, p_ref]
    model = {**{m: own[m] for m in GATE_METRICS}, "photo_p@10_type": p_own}
    lost = [
        f"{m} {own[m]:.3f} < {ref[m]:.3f} − {PHOTO_COMPAT_TOLERANCE}"
        for m in GATE_METRICS
        if not own[m] > ref[m] - PHOTO_COMPAT_TOLERANCE
    ]
    if not p_own > p_ref:
        lost.insert(0, f"photo search P@10 same type {p_own:.3f} ≤ {p_ref:.3f}")
    if lost:
        reason = f"a tuned image tower that does not improve on {incumbent}: " + "; ".join(lost)
    else:
        compat = ", ".join(f"{m} {own[m]:.3f} vs {ref[m]:.3f}" for m in GATE_METRICS)
        reason = (
            f"a tuned image tower that improves photo search on {incumbent}: P@10 same type "
            f"{p_own:.3f} vs {p_ref:.3f} on phone photos of held-out products; compatibility kept "
            f"within {PHOTO_COMPAT_TOLERANCE} ({compat})"
        )
    return {"passed": not lost, "reason": reason, "against": against, "model": model}


def photo_kept(
    verdict: dict[str, Any], photo: dict[str, dict[str, float]], *, incumbent: str
) -> dict[str, Any]:
    """The gate of a version without a tuned image tower while the active one has one: ``verdict`` (of
    :func:`quality_gate`) stands only if the served photo search's P@10 of the same type (``photo``, rows
    ``"fine-tuned"`` and ``incumbent``) stays above the active version's less :data:`PHOTO_KEEP_TOLERANCE`;
    a retrain of the heads alone would otherwise undo the photo tuning unnoticed.

    Returns:
        ``verdict``, refused with the reason when photo search would be lost.
    """
    p_own, p_ref = (photo.get(n, {}).get("photo_p@10_type") for n in ("fine-tuned", incumbent))
    if not verdict["passed"] or (
        p_own is not None and p_ref is not None and p_own > p_ref - PHOTO_KEEP_TOLERANCE
    ):
        return verdict
    lost = (
        "could not be measured"
        if p_own is None or p_ref is None
        else f"P@10 same type {p_own:.3f} vs {p_ref:.3f}"
    )
    return {
        **verdict,
        "passed": False,
        "reason": f"{verdict['reason']}; but it loses {incumbent}'s tuned photo search ({lost}): "
        "train it with the image tower tuned for phone photos",
    }
