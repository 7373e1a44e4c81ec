"""Margin (hinge) losses on pairs and triplets: contrastive, triplet margin, and the type-aware triplet
loss that ``ml.train`` optimises in the compatibility space.

Plain PyTorch, no Django. Tests: ``python -m pytest tests/ml/test_losses.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.distances import DISTANCES, Distance, paired_distances, safe_sqrt
from ml.losses._common import (
    _check_candidates,
    _check_reduction,
    _check_same_shape,
    _maybe_normalize,
    _reduce,
)
from ml.mining import mine_hard_negatives


def contrastive_terms(d: Tensor, dissimilar: Tensor, margin: float) -> Tensor:
    """Hadsell et al.'s per-pair contrastive loss ``½ [(1 − Y) D² + Y max(0, m − D)²]``, elementwise.

    Args:
        d: distances D >= 0, any shape, floating point.
        dissimilar: Y of the same shape (1 = dissimilar pair, 0 = similar), any numeric/bool dtype.
        margin: m.

    Returns:
        The per-pair losses, shape and dtype of ``d``.
    """
    y = dissimilar.to(d.dtype)
    return 0.5 * ((1.0 - y) * d.pow(2) + y * (margin - d).clamp(min=0.0).pow(2))


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
        d = safe_sqrt((x1 - x2).pow(2).sum(-1))  # (B,), finite gradient at D = 0
        return _reduce(contrastive_terms(d, y, self.margin), self.reduction)


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


class TypeAwareTripletLoss(nn.Module):
    """Type-aware triplet loss of Vasileva, Plummer, Dusad, Rajpal, Kumar & Forsyth, "Learning Type-Aware
    Embeddings for Fashion Compatibility", ECCV 2018, with a negative mined among candidates.

    An (anchor, positive) pair is two items of one outfit, of slots (s_a, s_p); their type-specific
    subspace is the mask ``m = m_{s_a s_p}`` (``RecommenderHeads.pair_mask``). Distances are inner-product
    distances of the masked vectors,

        d(a, x) = 1 − <a ⊙ m, x ⊙ m>

    so training ranks exactly as pgvector's inner-product (``<#>``) queries serve. Each anchor has M
    candidate negatives (items of the positive's slot, ``ml.dataset.NegativeSampler``). With
    ``miner="batch-all"`` every candidate is a negative and the loss is the mean over the violating ones,

        L = Σ_{b,j} max(0, d(a_b, p_b) − d(a_b, c_bj) + m) / #{terms > 0}

    otherwise :func:`ml.mining.mine_hard_negatives` picks one candidate per anchor (``"batch-hard"``,
    ``"semi-hard"`` or ``"random"``; mined on the CPU, where ``generator`` lives) and

        L = mean_b max(0, d(a_b, p_b) − d(a_b, n_b) + m)        (:class:`TripletMarginLoss`)

    Shapes:
        anchor, positive: (B, C) floating point compatibility vectors (unit norm; not normalised here).
        candidates: (B, M, C), same dtype. mask: (B, C) ≥ 0, the pair's mask (not squared).
        Output: scalar, dtype of anchor.

    Args:
        margin: m.
        miner: ``"batch-hard"``, ``"semi-hard"``, ``"random"`` or ``"batch-all"``; an unknown name
            raises ValueError from :func:`ml.mining.mine_hard_negatives` at the first forward.
    """

    def __init__(self, margin: float = 0.2, miner: str = "semi-hard") -> None:
        super().__init__()
        self.margin = margin
        self.miner = miner
        self.triplet = TripletMarginLoss(margin=margin, distance="inner_product", normalize=False)

    def forward(
        self,
        anchor: Tensor,
        positive: Tensor,
        candidates: Tensor,
        mask: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        b = anchor.shape[0]
        d_ap = 1 - (anchor * mask * positive * mask).sum(-1)  # (B,)
        d_an = 1 - ((anchor * mask).unsqueeze(1) * candidates * mask.unsqueeze(1)).sum(-1)  # (B, M)
        if self.miner == "batch-all":  # mean over all candidate triplets with a positive loss
            viol = F.relu(d_ap.unsqueeze(1) - d_an + self.margin)  # (B, M)
            return viol.sum() / (viol > 0).sum().clamp(min=1)
        valid = torch.ones(d_an.shape, dtype=torch.bool)
        # mined on the CPU, where the seeded generator lives (a no-op copy on the CPU)
        neg_pos = mine_hard_negatives(
            d_ap.detach().cpu(),
            d_an.detach().cpu(),
            valid,
            strategy=self.miner,
            margin=self.margin,
            generator=generator,
        ).to(anchor.device)  # (B,)
        negative = candidates[torch.arange(b, device=anchor.device), neg_pos]  # (B, C)
        return self.triplet(anchor * mask, positive * mask, negative * mask)


class CandidateContrastiveLoss(nn.Module):
    """Contrastive loss (Hadsell, Chopra & LeCun 2006) of an outfit pair and its candidate negatives in the
    pair's type-aware subspace: the compatibility loss of ``TrainConfig(compat_loss="contrastive")``.

    With the pair's mask m (``RecommenderHeads.pair_mask``) and D(a, x) = ‖a ⊙ m − x ⊙ m‖₂,

        L = mean_b ½ D(a_b, p_b)²  +  mean_{b,j} ½ max(0, margin − D(a_b, c_bj))²

    the similar and the dissimilar pairs averaged separately (as pytorch-metric-learning's reducer does), so
    the M negatives per anchor do not drown the one positive. Each pair is judged alone: no negative is
    compared with the positive, unlike the triplet and InfoNCE losses.

    Shapes:
        anchor, positive: (B, C) floating point. candidates: (B, M, C). mask: (B, C) >= 0. Output: scalar.

    Args:
        margin: m > 0.

    Raises:
        ValueError: shapes that do not match or margin <= 0.
    """

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = margin

    def forward(self, anchor: Tensor, positive: Tensor, candidates: Tensor, mask: Tensor) -> Tensor:
        _check_same_shape(anchor=anchor, positive=positive, mask=mask)
        _check_candidates(anchor, candidates)
        a = anchor * mask  # (B, C)
        d_ap = safe_sqrt((a - positive * mask).pow(2).sum(-1))  # (B,)
        d_an = safe_sqrt((a.unsqueeze(1) - candidates * mask.unsqueeze(1)).pow(2).sum(-1))  # (B, M)
        pos = contrastive_terms(d_ap, torch.zeros_like(d_ap), self.margin).mean()
        return pos + contrastive_terms(d_an, torch.ones_like(d_an), self.margin).mean()
