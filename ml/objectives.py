"""The losses a training run optimises, built from :class:`~ml.config.TrainConfig`.

* general space (``cfg.general_loss``): :func:`general_loss` returns a module called as
  ``loss(image_vec, text_vec)`` on (B, E) vectors where row i of each is one product (a positive pair)
  and every other row a negative: CLIP / one-directional InfoNCE (:class:`~ml.losses.ClipLoss`, fixed or
  learnable τ), NT-Xent, N-pair, angular (their ``ml.losses`` classes), or a pairwise contrastive or a
  mined triplet loss over the batch (:class:`PairwiseContrastiveLoss`, :class:`MinedTripletLoss`);
* compatibility space (``cfg.compat_loss``): :func:`compat_loss` returns a module called as
  ``loss(anchor, positive, candidates, mask)`` (see :class:`~ml.losses.CandidateInfoNCELoss`), plus
  ``generator=`` for a triplet's miner (:func:`takes_generator`).

Every vector here is already on the unit sphere when ``cfg.normalize`` (``RecommenderHeads``); the losses
normalise again only where the loss itself defines it. Plain PyTorch, no Django.
Tests: ``python -m pytest tests/ml/test_objectives.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ml.config import TrainConfig
from ml.distances import pairwise_distances, safe_sqrt
from ml.losses import (
    AngularLoss,
    CandidateContrastiveLoss,
    CandidateInfoNCELoss,
    ClipLoss,
    NPairLoss,
    NTXentLoss,
    TypeAwareTripletLoss,
    contrastive_terms,
)
from ml.mining import mine_hard_negatives


class PairwiseContrastiveLoss(nn.Module):
    """Contrastive loss (Hadsell, Chopra & LeCun 2006) over every (image, text) pair of a batch: the B
    matching pairs are similar, the B(B − 1) others dissimilar; D is the Euclidean distance,

        L = mean_i ½ D(x_i, y_i)² + mean_{i≠j} ½ max(0, m − D(x_i, y_j))²

    (the two kinds averaged separately, pytorch-metric-learning's convention, so the B² − B negatives do
    not drown the B positives).

    Shapes: image, text (B, E) floating point, B >= 2. Output: scalar.
    """

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        d = safe_sqrt((image.unsqueeze(1) - text.unsqueeze(0)).pow(2).sum(-1))  # (B, B)
        eye = torch.eye(len(d), dtype=torch.bool, device=d.device)
        terms = contrastive_terms(d, ~eye, self.margin)  # (B, B)
        return terms[eye].mean() + terms[~eye].mean()


class MinedTripletLoss(nn.Module):
    """Triplet margin loss (Schroff et al. 2015) over a batch of (image, text) pairs with an online miner.

    The 2B vectors ``[image; text]`` are labelled by product, so each has one positive (its other
    modality) and 2B − 2 negatives. With Euclidean distances d on those vectors:

    * ``"batch-all"`` (Hermans et al. 2017): every (a, p, n), ``Σ max(0, d_ap − d_an + m) / #{> 0}``;
    * ``"batch-hard"``, ``"semi-hard"``, ``"random"`` (offline: a uniform negative): one negative per anchor
      picked by :func:`ml.mining.mine_hard_negatives`, ``mean_a max(0, d_ap − d_an + m)``.

    O(B²) memory (each anchor has a single positive, so batch-all needs no (2B)³ mask).

    Shapes: image, text (B, E) floating point, B >= 2. Output: scalar.
    """

    def __init__(self, margin: float, miner: str) -> None:
        super().__init__()
        self.margin = margin
        self.miner = miner

    def forward(self, image: Tensor, text: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b = image.shape[0]
        dist = pairwise_distances(torch.cat([image, text]))  # (2B, 2B) Euclidean
        idx = torch.arange(2 * b, device=dist.device)
        pos = (idx + b) % (2 * b)  # (2B,) the other modality of the same product
        d_ap = dist[idx, pos]  # (2B,)
        neg = (idx[None, :] != idx[:, None]) & (idx[None, :] != pos[:, None])  # (2B, 2B)
        if self.miner == "batch-all":
            viol = torch.relu(d_ap[:, None] - dist + self.margin) * neg  # (2B, 2B)
            return viol.sum() / (viol > 0).sum().clamp(min=1)
        n = mine_hard_negatives(
            d_ap.detach().cpu(),
            dist.detach().cpu(),
            neg.cpu(),
            strategy=self.miner,
            margin=self.margin,
            generator=generator,
        ).to(dist.device)  # (2B,)
        return torch.relu(d_ap - dist[idx, n] + self.margin).mean()


def general_loss(cfg: TrainConfig) -> nn.Module:
    """The image↔text loss of ``cfg.general_loss`` (see the module docstring); its ``temperature``
    attribute, where it has one, is what ``ml.train`` records per epoch."""
    name = cfg.general_loss
    if name in ("clip", "infonce"):
        return ClipLoss(
            init_temperature=cfg.temperature,
            learnable=cfg.learn_temperature,
            normalize=cfg.normalize,
            symmetric=name == "clip",
        )
    if name == "ntxent":
        return NTXentLoss(temperature=cfg.temperature, normalize=cfg.normalize)
    if name == "npair":
        return NPairLoss(normalize=cfg.normalize)
    if name == "contrastive":
        return PairwiseContrastiveLoss(cfg.margin)
    if name == "triplet":
        return MinedTripletLoss(cfg.margin, cfg.miner)
    if name == "angular":
        return AngularLoss(normalize=True)
    raise ValueError(f"general_loss {name!r} has no builder")  # TrainConfig refuses it before


def compat_loss(cfg: TrainConfig) -> nn.Module:
    """The compatibility loss of ``cfg.compat_loss``: candidate InfoNCE (``compat_temperature``), the
    type-aware triplet (``margin``, ``miner``) or candidate contrastive (``margin``)."""
    if cfg.compat_loss == "infonce":
        return CandidateInfoNCELoss(cfg.compat_temperature)
    if cfg.compat_loss == "triplet":
        return TypeAwareTripletLoss(margin=cfg.margin, miner=cfg.miner)
    return CandidateContrastiveLoss(margin=cfg.margin)


def takes_generator(loss: nn.Module) -> bool:
    """Does ``loss`` mine with a seeded ``generator=`` keyword (the triplet losses)?"""
    return isinstance(loss, TypeAwareTripletLoss | MinedTripletLoss)
