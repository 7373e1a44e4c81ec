"""Margin (hinge) losses on pairs and triplets: contrastive and triplet margin.

Plain PyTorch, no Django. Tests: ``python -m pytest tests/ml/test_losses.py``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ml.distances import DISTANCES, Distance, paired_distances, safe_sqrt
from ml.losses._common import _check_reduction, _check_same_shape, _maybe_normalize, _reduce


class ContrastiveLoss(nn.Module):
    """Contrastive (siamese) loss of Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an
    Invariant Mapping", CVPR 2006.

    Label convention (the paper's): **Y = 0 for a similar pair, Y = 1 for a dissimilar pair**.

        L = ½ [ (1 − Y) · D² + Y · max(0, m − D)² ],   D = ‖x1 − x2‖₂

    Similar pairs are pulled together; dissimilar pairs are pushed apart until they are m apart.

    Shapes:
        x1, x2: (B, D) floating point.  y: (B,) any numeric/bool dtype with values in {0, 1}.
        Output: scalar (``reduction="mean"``/``"sum"``) or (B,) (``"none"``), dtype of x1.

    Args:
        margin: m > 0.
        normalize: L2-normalise x1 and x2 first (then D ∈ [0, 2]).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Raises:
        ValueError: shape mismatch or unknown reduction.
    """

    def __init__(self, margin: float = 1.0, normalize: bool = True, reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.margin = margin
        self.normalize = normalize
        self.reduction = reduction

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor) -> Tensor:
        _check_same_shape(x1=x1, x2=x2)
        if y.shape != x1.shape[:1]:
            raise ValueError(f"y must be (B,) = ({x1.shape[0]},), got shape {tuple(y.shape)}")
        x1, x2 = _maybe_normalize(self.normalize, x1, x2)
        y = y.to(x1.dtype)  # (B,)
        d_sq = (x1 - x2).pow(2).sum(-1)  # (B,)
        d = safe_sqrt(d_sq)  # (B,), finite gradient at D = 0
        losses = 0.5 * ((1.0 - y) * d_sq + y * (self.margin - d).clamp(min=0.0).pow(2))  # (B,)
        return _reduce(losses, self.reduction)


class TripletMarginLoss(nn.Module):
    """Triplet margin loss of Schroff, Kalenichenko & Philbin, "FaceNet: A Unified Embedding for Face
    Recognition and Clustering", CVPR 2015.

        L = max(0, D(a, p) − D(a, n) + m)

    with D one of:

    * ``"euclidean"``: ‖a − b‖₂ (Hermans et al. 2017 found the non-squared distance trains better);
    * ``"squared_euclidean"``: ‖a − b‖₂², FaceNet's own form;
    * ``"inner_product"``: 1 − <a, b>. On the unit sphere this is the cosine distance. The project uses
      it with ``normalize=False`` for type-aware masked vectors, where the ranking must equal pgvector's
      inner-product (``<#>``) ranking.

    Shapes:
        anchor, positive, negative: (B, D) floating point.
        Output: scalar (``"mean"``/``"sum"``) or (B,) (``"none"``), dtype of anchor.

    Args:
        margin: m (FaceNet: 0.2).
        distance: see above.
        normalize: L2-normalise the three inputs first.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Raises:
        ValueError: shape mismatch, unknown distance or reduction.
    """

    def __init__(
        self,
        margin: float = 0.2,
        distance: Distance = "euclidean",
        normalize: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; valid distances: {', '.join(DISTANCES)}")
        _check_reduction(reduction)
        self.margin = margin
        self.distance = distance
        self.normalize = normalize
        self.reduction = reduction

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        _check_same_shape(anchor=anchor, positive=positive, negative=negative)
        anchor, positive, negative = _maybe_normalize(self.normalize, anchor, positive, negative)
        d_ap = paired_distances(anchor, positive, self.distance)  # (B,)
        d_an = paired_distances(anchor, negative, self.distance)  # (B,)
        losses = (d_ap - d_an + self.margin).clamp(min=0.0)  # (B,)
        return _reduce(losses, self.reduction)
