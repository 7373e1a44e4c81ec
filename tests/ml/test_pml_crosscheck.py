"""Our losses and miners against pytorch-metric-learning's on the same tensors.

For each loss both libraries have, the value must agree (float64, to 1e-6 relative); where the
conventions differ the test states the difference and compares after converting. Losses with no library
counterpart: :class:`~ml.losses.CenterLoss` (PML has none), :class:`~ml.losses.SoftmaxClassificationLoss`
(plain ``F.cross_entropy``), the type-aware masked triplet and the candidate InfoNCE (per-anchor candidate
pools, not a labelled batch), and the clamped learnable scale of :class:`~ml.losses.ClipLoss` (its value at
a fixed scale is checked below).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances as D
from pytorch_metric_learning import losses as L
from pytorch_metric_learning import miners as M
from pytorch_metric_learning import reducers as R

from ml.losses import (
    AngularLoss,
    ClipLoss,
    ContrastiveLoss,
    InfoNCELoss,
    NPairLoss,
    NTXentLoss,
    TripletMarginLoss,
)
from ml.mining import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    mine_semi_hard,
    semi_hard_triplet_loss,
)

B, DIM = 8, 6


@pytest.fixture
def pairs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three (B, D) float64 tensors: anchors, positives, negatives."""
    g = torch.Generator().manual_seed(14)
    return tuple(torch.randn(B, DIM, generator=g, dtype=torch.float64) for _ in range(3))


def same(ours: torch.Tensor, lib: torch.Tensor) -> None:
    assert ours.item() == pytest.approx(lib.item(), rel=1e-6), (ours.item(), lib.item())


def test_triplet_margin_equals_pml_with_a_mean_reducer(pairs):
    """PML's default reducer averages the non-zero triplets only; ours (FaceNet) averages all of them."""
    a, p, n = pairs
    idx = torch.arange(B)
    for normalize in (True, False):
        ours = TripletMarginLoss(margin=0.3, normalize=normalize)(a, p, n)
        lib = L.TripletMarginLoss(
            margin=0.3, distance=D.LpDistance(normalize_embeddings=normalize), reducer=R.MeanReducer()
        )(torch.cat([a, p, n]), indices_tuple=(idx, idx + B, idx + 2 * B))
        same(ours, lib)
        assert ours.item() > 0


def test_contrastive_equals_pml_after_squaring(pairs):
    """Convention: ours is Hadsell et al.'s ½D² / ½max(0, m − D)²; PML's is D / max(0, m − D) (pos_margin
    0, neg_margin m). Per pair: ours = ½ · PML² on both sides."""
    a, p, _ = pairs
    y = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])  # 0 = similar (the paper's convention)
    ours = ContrastiveLoss(margin=1.2, reduction="none")(a, p, y)  # (B,)
    lib = L.ContrastiveLoss(
        pos_margin=0.0,
        neg_margin=1.2,
        distance=D.LpDistance(normalize_embeddings=True),
        reducer=R.DoNothingReducer(),
    )
    pos, neg = (y == 0).nonzero()[:, 0], (y == 1).nonzero()[:, 0]
    out = lib(torch.cat([a, p]), indices_tuple=(pos, pos + B, neg, neg + B))
    assert torch.allclose(ours[pos], 0.5 * out["pos_loss"]["losses"] ** 2)
    assert torch.allclose(ours[neg], 0.5 * out["neg_loss"]["losses"] ** 2)
    assert (ours[neg] > 0).any() and (ours[neg] == 0).any()  # both sides of the hinge are exercised


def test_ntxent_equals_pml(pairs):
    """Both views in one batch, labelled by item: PML's NT-Xent averages over the 2N positive pairs."""
    a, p, _ = pairs
    labels = torch.arange(B).repeat(2)
    same(NTXentLoss(temperature=0.1)(a, p), L.NTXentLoss(temperature=0.1)(torch.cat([a, p]), labels))


def test_infonce_and_clip_equal_pml_ntxent_over_the_other_modality(pairs):
    """One-directional InfoNCE = PML's NT-Xent with the keys as reference embeddings
    (``SelfSupervisedLoss(symmetric=False)``); CLIP at a fixed scale is the mean of both directions."""
    a, p, _ = pairs
    one_way = L.SelfSupervisedLoss(L.NTXentLoss(temperature=0.1), symmetric=False)
    same(InfoNCELoss(temperature=0.1)(a, p), one_way(a, p))
    clip = ClipLoss(init_temperature=0.1, learnable=False)(a, p)
    same(clip, 0.5 * (one_way(a, p) + one_way(p, a)))


def test_npair_equals_pml_on_the_same_distance(pairs):
    """PML's N-pairs normalises by default (``DotProductSimilarity(normalize_embeddings=True)``); ours
    follows Sohn 2016 (raw inner products). Compared on one distance each way."""
    a, p, _ = pairs
    labels = torch.arange(B).repeat(2)
    for normalize in (True, False):
        lib = L.NPairsLoss(
            distance=D.DotProductSimilarity(normalize_embeddings=normalize), reducer=R.MeanReducer()
        )
        same(NPairLoss(normalize=normalize)(a, p), lib(torch.cat([a, p]), labels))


def test_angular_equals_pml(pairs):
    """PML's angular loss (N-pair form) normalises the anchor and positive but not the negatives; on unit
    vectors both agree."""
    a, p, _ = (F.normalize(x, dim=-1) for x in pairs)
    labels = torch.arange(B).repeat(2)
    same(AngularLoss(alpha_degrees=40.0)(a, p), L.AngularLoss(alpha=40)(torch.cat([a, p]), labels))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(12, 4) float64 embeddings with repeated labels, the input of online miners."""
    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 3, 3, 1])
    return torch.randn(12, 4, generator=g, dtype=torch.float64), labels


def test_batch_all_equals_pml_triplet_over_all_triplets(batch):
    """Batch-all = PML's triplet loss on every valid triplet with its default AvgNonZeroReducer."""
    e, labels = batch
    same(batch_all_triplet_loss(e, labels, 0.2)[0], L.TripletMarginLoss(margin=0.2)(e, labels))


def test_batch_hard_equals_pml_batch_hard_miner(batch):
    e, labels = batch
    lib = L.TripletMarginLoss(margin=0.2, reducer=R.MeanReducer())
    same(batch_hard_triplet_loss(e, labels, 0.2), lib(e, labels, M.BatchHardMiner()(e, labels)))


def test_semi_hard_picks_among_pml_semi_hard_triplets(batch):
    """PML's semi-hard miner returns every triplet in the band d(a,p) < d(a,n) < d(a,p) + m; ours (FaceNet)
    keeps one per positive pair, the closest in the band (else the hardest negative). Every triplet of ours
    whose negative lies in the band is one of PML's, and the losses agree on them."""
    e, labels = batch
    e = F.normalize(e, dim=-1)
    dist = torch.cdist(e, e)
    a, p, n = mine_semi_hard(dist, labels, margin=0.5)
    lib = set(zip(*(t.tolist() for t in M.TripletMarginMiner(0.5, type_of_triplets="semihard")(e, labels))))
    in_band = (dist[a, n] > dist[a, p]) & (dist[a, n] < dist[a, p] + 0.5)
    ours = {(i, j, k) for i, j, k, b in zip(a.tolist(), p.tolist(), n.tolist(), in_band.tolist()) if b}
    assert ours and ours <= lib
    # the loss over our triplets, recomputed by PML on the same indices
    pml = L.TripletMarginLoss(margin=0.5, reducer=R.MeanReducer())(e, labels, (a, p, n))
    same(semi_hard_triplet_loss(e, labels, 0.5), pml)
