"""Hub scores of products under a model version (``ProductEmbedding.hub_score``), computed when their
vectors are written, for the CSLS re-ranking of complete-the-look (:mod:`ml.hubness`, :mod:`recommender.looks`).

``r(c)`` of a product is its mean compatibility with its :data:`ml.hubness.HUB_K` most compatible
items of every slot that asks for its slot (a top asks for a bottom), over the catalog as it stands:
the products being written plus the version's stored rows. A product written later does not refresh
the scores of the products already stored; the next full embedding (a training run) does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from django.conf import settings

from catalog.models import Product
from ml.hubness import hub_scores
from ml.slots import SLOT_INDEX, SLOTS
from recommender.looks import missing_slots
from recommender.model_cache import heads_for
from recommender.models import ModelVersion, ProductEmbedding

logger = logging.getLogger(__name__)


def slot_sources() -> dict[int, list[int]]:
    """For each slot index t, the slot indices s whose items ask complete-the-look for t
    (``t in missing_slots([s])``): a bottom's sources are every slot but bottom and one-piece."""
    return {
        SLOT_INDEX[t]: [SLOT_INDEX[s] for s in SLOTS if t in missing_slots([s])]
        for t in SLOTS
        if any(t in missing_slots([s]) for s in SLOTS)
    }


def hub_scores_for(*, version: ModelVersion, product_ids: Sequence[int], compat: np.ndarray) -> np.ndarray:
    """``r(c)`` of the products being written under ``version`` (:func:`ml.hubness.hub_scores`).

    Args:
        product_ids: N distinct product ids (a deleted product gets 0).
        compat: (N, C) float32 their unit compatibility vectors.

    Returns:
        (N,) float32; zeros when the version has no heads on disk (a benchmark's or a test's bare
        version: nothing to compute the pair masks from) or ``settings.HUBNESS_K`` is 0.
    """
    n = len(product_ids)
    zeros = np.zeros(n, dtype=np.float32)
    if not n or settings.HUBNESS_K <= 0:
        return zeros
    if not version.artifact_path or not Path(version.artifact_path).exists():
        logger.info("model version %s has no heads on disk: hub scores left at 0", version.pk)
        return zeros
    masks2 = heads_for(version).mask_table().detach().numpy()  # (S, S, C)
    slot_of = dict(Product.objects.filter(pk__in=list(product_ids)).values_list("pk", "slot"))
    slots = np.asarray([SLOT_INDEX.get(slot_of.get(int(pid), ""), -1) for pid in product_ids])
    given = {int(pid) for pid in product_ids}
    stored = [
        (SLOT_INDEX[slot], vec)
        for pid, slot, vec in ProductEmbedding.objects.filter(model_version=version).values_list(
            "product_id", "slot", "compat"
        )
        if pid not in given and slot in SLOT_INDEX
    ]
    compat = np.asarray(compat, dtype=np.float32)
    ref_compat = np.concatenate(
        [compat, np.asarray([v for _, v in stored], dtype=np.float32).reshape(-1, compat.shape[1])]
    )
    ref_slots = np.concatenate([slots, np.asarray([s for s, _ in stored], dtype=np.int64)])
    out = hub_scores(
        compat=compat,
        slots=slots,
        ref_compat=ref_compat,
        ref_slots=ref_slots,
        masks2=masks2,
        sources=slot_sources(),
        k=settings.HUBNESS_K,
    )
    out[slots < 0] = 0.0
    return out
