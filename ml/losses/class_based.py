"""Class-based losses (center loss, softmax classification baseline) and class centroids for
centroid-based retrieval.

Plain PyTorch, no Django. Tests: ``python -m pytest tests/ml/test_losses.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.losses._common import _check_labels, _maybe_normalize


class CenterLoss(nn.Module):
    """Center loss of Wen, Zhang, Li & Qiao, "A Discriminative Feature Learning Approach for Deep Face
    Recognition", ECCV 2016: an auxiliary term pulling each feature towards its class center.

        L = 1/B Σ_i ½ ‖x_i − c_{y_i}‖²

    (the paper sums over the batch; here it is the mean so the weight does not depend on B.) The centers
    are an ``nn.Parameter`` (C, D) learnt by the optimiser, rather than the paper's separate update rule
    with rate α; give them their own learning rate if needed. Use it with a main loss:
    ``L = L_main + λ · center_loss(x, y)``.

    Shapes:
        x: (B, D) floating point.  labels: (B,) int64 in [0, num_classes). Output: scalar.

    Args:
        num_classes: C.
        dim: D.
        normalize: L2-normalise both x and the centers first (then ½‖x − c‖² = 1 − cos).

    Raises:
        ValueError: shape mismatch or a label outside [0, C).
    """

    def __init__(self, num_classes: int, dim: int, normalize: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dim = dim
        self.normalize = normalize
        self.centers = nn.Parameter(torch.randn(num_classes, dim))  # (C, D)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        _check_labels(x, labels)
        if x.shape[1] != self.dim:
            raise ValueError(f"features must have dim {self.dim}, got {x.shape[1]}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes})")
        centers = self.centers[labels]  # (B, D)
        x, centers = _maybe_normalize(self.normalize, x, centers)
        return 0.5 * (x - centers).pow(2).sum(-1).mean()


class SoftmaxClassificationLoss(nn.Module):
    """Classification baseline: a linear head over the features + softmax cross-entropy, e.g. over product
    types. Not a metric loss; the features of a model trained with it are the baseline embedding.

        logits = W x + b          (B, C)
        L = CE(logits, y)

    Shapes:
        x: (B, D) floating point.  labels: (B,) int64 in [0, num_classes). Output: scalar.

    Args:
        dim: D.
        num_classes: C.
        normalize: L2-normalise x before the head.

    Attributes:
        head: the ``nn.Linear(dim, num_classes)``; :meth:`logits` gives its output.

    Raises:
        ValueError: shape mismatch.
    """

    def __init__(self, dim: int, num_classes: int, normalize: bool = True) -> None:
        super().__init__()
        self.head = nn.Linear(dim, num_classes)
        self.normalize = normalize

    def logits(self, x: Tensor) -> Tensor:
        """(B, D) -> (B, C) class logits."""
        (x,) = _maybe_normalize(self.normalize, x)
        return self.head(x)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        _check_labels(x, labels)
        return F.cross_entropy(self.logits(x), labels)


# -----------------------------------------------------------------------------
# centroids (Wieczorek et al. 2021)


def class_centroids(embeddings: Tensor, labels: Tensor, *, normalize: bool = False) -> tuple[Tensor, Tensor]:
    """Mean embedding per class (Wieczorek, Rychalska & Dąbrowski, "On the Unreasonable Effectiveness of
    Centroids in Image Retrieval", ICONIP 2021).

    Args:
        embeddings: (N, D) floating point.
        labels: (N,) integer labels.
        normalize: L2-normalise each centroid (to query a cosine / inner-product index with it).

    Returns:
        ``(centroids, classes)``: (C, D) in the dtype of ``embeddings``, and the (C,) sorted distinct
        labels; ``centroids[k]`` is the mean of the rows with label ``classes[k]``.

    Raises:
        ValueError: shape mismatch or N = 0.
    """
    _check_labels(embeddings, labels)
    if embeddings.shape[0] == 0:
        raise ValueError("class_centroids needs at least one embedding")
    classes, inverse, counts = torch.unique(labels, sorted=True, return_inverse=True, return_counts=True)
    sums = embeddings.new_zeros(classes.shape[0], embeddings.shape[1])  # (C, D)
    sums = sums.index_add(0, inverse, embeddings)
    centroids = sums / counts[:, None].to(embeddings.dtype)  # (C, D)
    if normalize:
        centroids = F.normalize(centroids, dim=-1)
    return centroids, classes


def centroid_retrieval_query(vectors: Tensor, normalize: bool = True) -> Tensor:
    """One query vector for a set of items: their mean, re-normalised onto the unit sphere (Wieczorek
    et al. 2021). Use it to retrieve "more like this outfit" or "more of this class".

    Args:
        vectors: (K, D) floating point, K >= 1 (e.g. an outfit's item vectors).
        normalize: L2-normalise the mean.

    Returns:
        (D,) query vector, dtype of ``vectors``.

    Raises:
        ValueError: ``vectors`` is not 2-D or K = 0.
    """
    if vectors.dim() != 2 or vectors.shape[0] == 0:
        raise ValueError(f"vectors must be (K, D) with K >= 1, got shape {tuple(vectors.shape)}")
    query = vectors.mean(dim=0)  # (D,)
    return F.normalize(query, dim=-1) if normalize else query
