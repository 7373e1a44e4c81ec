"""Every loss and miner TrainConfig offers: refused combinations, the batch forms against ml.mining, and a
few steps of each on real tower features of the H&M slice (``tests/ml/test_train.py``'s ``real_data``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ml.config import COMPAT_LOSSES, GENERAL_LOSSES, MINERS, TrainConfig
from ml.losses import CandidateContrastiveLoss, ContrastiveLoss
from ml.mining import batch_all_triplet_loss, batch_hard_triplet_loss, semi_hard_triplet_loss
from ml.objectives import MinedTripletLoss, PairwiseContrastiveLoss
from ml.train import train
from tests.ml.test_train import real_data  # noqa: F401  (module fixture)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"general_loss": "arcface"}, "general_loss 'arcface': expected one of clip, infonce, ntxent"),
        ({"compat_loss": "arcface"}, "compat_loss 'arcface': expected one of infonce, triplet, contrastive"),
        ({"miner": "hardest"}, "miner 'hardest': expected one of semi-hard, batch-hard"),
        ({"general_loss": "ntxent"}, "general_loss 'ntxent' has a fixed temperature"),
        ({"general_loss": "angular", "normalize": False}, "'angular' needs normalize=True"),
        ({"compat_loss": "triplet", "margin": 0.0}, "margin must be > 0"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"w_center": -1.0}, "w_center must be >= 0"),
    ],
)
def test_config_refuses_invalid_combinations_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_config_accepts_the_valid_neighbours():
    """The refusals are about the combination: each neighbour trains."""
    TrainConfig(general_loss="ntxent", learn_temperature=False)
    TrainConfig(general_loss="angular")
    TrainConfig(margin=0.0)  # no margin loss in the default (clip + candidate InfoNCE)


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(
        6, 4, generator=g, dtype=torch.float64
    )


def test_mined_triplet_equals_the_batch_losses_of_ml_mining_on_labelled_pairs():
    """[image; text] labelled by product is a batch where each vector has one positive: the O(B²) forms
    agree with ml.mining's (N, N, N) batch losses, themselves cross-checked against pytorch-metric-learning."""
    img, txt = _pairs()
    emb, labels = torch.cat([img, txt]), torch.arange(6).repeat(2)
    for miner, ref in (
        ("batch-all", batch_all_triplet_loss(emb, labels, 0.3, normalize=False)[0]),
        ("batch-hard", batch_hard_triplet_loss(emb, labels, 0.3, normalize=False)),
        ("semi-hard", semi_hard_triplet_loss(emb, labels, 0.3, normalize=False)),
    ):
        assert MinedTripletLoss(0.3, miner)(img, txt).item() == pytest.approx(ref.item(), rel=1e-9), miner
    rnd = MinedTripletLoss(0.3, "random")(img, txt, generator=torch.Generator().manual_seed(0))
    assert 0 < rnd.item() < MinedTripletLoss(0.3, "batch-hard")(img, txt).item()


def test_pairwise_contrastive_is_the_mean_of_the_similar_plus_the_mean_of_the_dissimilar():
    img, txt = _pairs()
    per_pair = ContrastiveLoss(margin=2.5, normalize=False, reduction="none")
    ii, jj = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    off = ii != jj
    pos = per_pair(img, txt, torch.zeros(6)).mean()
    neg = per_pair(img[ii[off]], txt[jj[off]], torch.ones(30)).mean()
    got = PairwiseContrastiveLoss(2.5)(img, txt)
    assert got.item() == pytest.approx((pos + neg).item(), rel=1e-9) and neg.item() > 0


def test_candidate_contrastive_on_masked_vectors():
    """D is the Euclidean distance of the masked vectors; worked by hand on one anchor, one candidate."""
    a = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    p = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    c = torch.tensor([[[1.0, 0.5]]], dtype=torch.float64)
    m = torch.tensor([[1.0, 2.0]], dtype=torch.float64)  # D(a,p) = ‖(1,0) − (0,2)‖ = √5, D(a,c) = 1
    got = CandidateContrastiveLoss(margin=1.5)(a, p, c, m)
    assert got.item() == pytest.approx(0.5 * 5 + 0.5 * 0.5**2, rel=1e-12)


CASES = [(g, c, MINERS[i % len(MINERS)]) for i, (g, c) in enumerate(zip(GENERAL_LOSSES, COMPAT_LOSSES * 3))]
CASES += [("triplet", "triplet", m) for m in MINERS]


@pytest.mark.parametrize(("general", "compat", "miner"), CASES)
def test_each_loss_and_miner_trains_on_real_features(real_data, general, compat, miner):  # noqa: F811
    cfg = TrainConfig(
        general_loss=general,
        compat_loss=compat,
        miner=miner,
        learn_temperature=general != "ntxent",
        margin=0.5,
        w_center=0.1 if general == "npair" else 0.0,
        epochs=1,
        max_steps=3,
        batch_size=32,
        seed=0,
        patience=0,
    )
    result = train(real_data, cfg)
    h = result.history
    assert result.steps == 3
    assert all(math.isfinite(h[k][-1]) for k in ("loss", "infonce", "compat", "type"))
    assert h["infonce"][-1] > 0 and h["compat"][-1] > 0
    assert np.isfinite(result.best_val)
