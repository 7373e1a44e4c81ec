"""Metric-learning losses: contrastive, triplet, type-aware triplet, InfoNCE / NT-Xent / CLIP, N-pair,
angular, center, softmax baseline; plus class centroids for centroid-based retrieval, and a small factory.

Every loss is an ``nn.Module`` whose docstring cites its paper and gives shapes and the formula. Unless
stated otherwise inputs are floating point (float32 / float64 / bf16), labels are int64 and the output
is a scalar of the input dtype. ``normalize=True`` L2-normalises the features onto the unit hypersphere
(``F.normalize``) before the loss, the project's convention (``TrainConfig.normalize``).

Pick a loss from config with :func:`build_loss` (``build_loss("triplet", margin=0.2)``). Online triplet
mining lives in :mod:`ml.mining`.

Modules:
    margin       -- contrastive, triplet margin and type-aware triplet losses (hinge on distances), and
                    the contrastive loss over an outfit pair's candidate negatives
    in_batch     -- InfoNCE, NT-Xent, CLIP, N-pair and angular losses (softmax over the batch), and
                    InfoNCE over an outfit pair's candidate negatives
    class_based  -- center loss, softmax classification baseline, class centroids
    factory      -- :data:`LOSSES` and :func:`build_loss`

Every public name is re-exported here: ``from ml.losses import TripletMarginLoss``. Distances live in
:mod:`ml.distances`. Plain PyTorch, no Django. Tests: ``python -m pytest tests/ml/test_losses.py``.
"""

from __future__ import annotations

from ml.losses.class_based import (
    CenterLoss,
    SoftmaxClassificationLoss,
    centroid_retrieval_query,
    class_centroids,
)
from ml.losses.factory import LOSSES, build_loss
from ml.losses.in_batch import (
    AngularLoss,
    CandidateInfoNCELoss,
    ClipLoss,
    InfoNCELoss,
    NPairLoss,
    NTXentLoss,
)
from ml.losses.margin import (
    CandidateContrastiveLoss,
    ContrastiveLoss,
    TripletMarginLoss,
    TypeAwareTripletLoss,
    contrastive_terms,
)

__all__ = [
    "LOSSES",
    "AngularLoss",
    "CandidateContrastiveLoss",
    "CandidateInfoNCELoss",
    "CenterLoss",
    "ClipLoss",
    "ContrastiveLoss",
    "InfoNCELoss",
    "NPairLoss",
    "NTXentLoss",
    "SoftmaxClassificationLoss",
    "TripletMarginLoss",
    "TypeAwareTripletLoss",
    "build_loss",
    "centroid_retrieval_query",
    "class_centroids",
    "contrastive_terms",
]
