"""Pick a loss by name from config: :func:`build_loss` (``build_loss("triplet", margin=0.2)``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ml.losses.class_based import CenterLoss, SoftmaxClassificationLoss
from ml.losses.in_batch import AngularLoss, CandidateInfoNCELoss, ClipLoss, InfoNCELoss, NPairLoss, NTXentLoss
from ml.losses.margin import (
    CandidateContrastiveLoss,
    ContrastiveLoss,
    TripletMarginLoss,
    TypeAwareTripletLoss,
)

#: Loss names accepted by :func:`build_loss`.
LOSSES: dict[str, type[nn.Module]] = {
    "contrastive": ContrastiveLoss,
    "triplet": TripletMarginLoss,
    "infonce": InfoNCELoss,
    "ntxent": NTXentLoss,
    "clip": ClipLoss,
    "npair": NPairLoss,
    "angular": AngularLoss,
    "center": CenterLoss,
    "softmax": SoftmaxClassificationLoss,
    "type_aware_triplet": TypeAwareTripletLoss,
    "candidate_infonce": CandidateInfoNCELoss,
    "candidate_contrastive": CandidateContrastiveLoss,
}


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a loss by name, e.g. ``build_loss("triplet", margin=0.2, distance="inner_product")``.

    Args:
        name: one of :data:`LOSSES` (case-insensitive).
        **kwargs: passed to the loss's constructor.

    Returns:
        The loss module.

    Raises:
        ValueError: unknown name (the message lists the valid names).
    """
    key = name.strip().lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    return LOSSES[key](**kwargs)
