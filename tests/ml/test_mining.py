"""Distances, miners and batch triplet losses on batches whose answers are known by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ml.distances import paired_distances, pairwise_distances, safe_sqrt
from ml.mining import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    mine_batch_all,
    mine_batch_hard,
    mine_hard_negatives,
    mine_semi_hard,
    sample_offline_triplets,
    semi_hard_triplet_loss,
)


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def assert_matrix(actual: torch.Tensor, expected: list[list[float]]) -> None:
    torch.testing.assert_close(actual, t(expected))


# ---------------------------------------------------------------- distances

X = t([[0, 0], [3, 4], [0, 1]])


def test_pairwise_distances_by_hand() -> None:
    # (0,0)-(3,4): 5; (0,0)-(0,1): 1; (3,4)-(0,1) = (3,3): √18
    r18 = math.sqrt(18)
    assert_matrix(pairwise_distances(X), [[0, 5, 1], [5, 0, r18], [1, r18, 0]])
    squared = [[0, 25, 1], [25, 0, 18], [1, 18, 0]]
    assert_matrix(pairwise_distances(X, squared=True), squared)
    assert_matrix(pairwise_distances(X, distance="squared_euclidean"), squared)
    # 1 - x xᵀ: x xᵀ = [[0,0,0],[0,25,4],[0,4,1]]
    expected_ip = [[1, 1, 1], [1, -24, -3], [1, -3, 0]]
    assert_matrix(pairwise_distances(X, distance="inner_product"), expected_ip)


def test_paired_distances_by_hand_and_broadcast() -> None:
    assert paired_distances(X[:2], X[1:]).tolist() == pytest.approx([5, math.sqrt(18)])
    assert paired_distances(X[:2], X[1:], "inner_product").tolist() == pytest.approx([1, -3])
    anchors = t([[0, 0], [1, 0]])[:, None, :]  # (2, 1, 2)
    cands = X[None].expand(2, 3, 2)  # (2, 3, 2)
    assert paired_distances(anchors, cands, "squared_euclidean").tolist() == [[0, 25, 1], [1, 20, 2]]


def test_distance_errors() -> None:
    with pytest.raises(ValueError):
        pairwise_distances(X, distance="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pairwise_distances(X[0])
    with pytest.raises(ValueError):
        pairwise_distances(X, squared=True, distance="inner_product")
    with pytest.raises(ValueError):
        paired_distances(X, torch.zeros(3, 3, dtype=torch.float64))


def test_gradients_finite_at_zero_distance() -> None:
    # identical embeddings: every distance is 0, where plain sqrt has an infinite derivative
    labels = torch.tensor([0, 0, 1, 1])
    for normalize in (False, True):
        for fn in (batch_hard_triplet_loss, semi_hard_triplet_loss):
            x = torch.ones(4, 3, requires_grad=True)
            loss = fn(x, labels, 0.2, normalize=normalize)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        x = torch.ones(4, 3, requires_grad=True)
        loss, _ = batch_all_triplet_loss(x, labels, 0.2, normalize=normalize)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    x = torch.ones(3, 2, requires_grad=True)
    pairwise_distances(x).sum().backward()
    assert x.grad.tolist() == [[0, 0]] * 3
    z = torch.zeros(2, requires_grad=True)
    safe_sqrt(z).sum().backward()
    assert z.grad.tolist() == [0, 0]


# ---------------------------------------------------------------- index miners

# 2-D points; labels 0,0,0,1,1
#   0:(0,0) 1:(1,0) 2:(3,0) 3:(0,2) 4:(5,5)
# anchor 0: pos d(0,1)=1, d(0,2)=3 -> p=2;  neg d(0,3)=2, d(0,4)=√50 -> n=3
# anchor 1: pos d(1,0)=1, d(1,2)=2 -> p=2;  neg d(1,3)=√5, d(1,4)=√41 -> n=3
# anchor 2: pos d(2,0)=3, d(2,1)=2 -> p=0;  neg d(2,3)=√13, d(2,4)=√29 -> n=3
# anchor 3: pos d(3,4)=√34 -> p=4;          neg d(3,0)=2, d(3,1)=√5, d(3,2)=√13 -> n=0
# anchor 4: pos d(4,3)=√34 -> p=3;          neg d(4,0)=√50, d(4,1)=√41, d(4,2)=√29 -> n=2
HARD_X = t([[0, 0], [1, 0], [3, 0], [0, 2], [5, 5]])
HARD_Y = torch.tensor([0, 0, 0, 1, 1])


def test_mine_batch_hard_exact_indices() -> None:
    a, p, n = mine_batch_hard(pairwise_distances(HARD_X), HARD_Y)
    assert a.tolist() == [0, 1, 2, 3, 4]
    assert p.tolist() == [2, 2, 0, 4, 3]
    assert n.tolist() == [3, 3, 3, 0, 2]
    assert a.dtype == p.dtype == n.dtype == torch.int64


def test_mine_batch_hard_skips_anchor_without_positive() -> None:
    # add item 5 with a label of its own: it is nobody's anchor, but is the closest negative of anchor 4
    x = torch.cat([HARD_X, t([[5, 4]])])
    a, _, n = mine_batch_hard(pairwise_distances(x), torch.tensor([0, 0, 0, 1, 1, 2]))
    assert a.tolist() == [0, 1, 2, 3, 4]
    assert n.tolist() == [3, 3, 3, 0, 5]


def test_batch_hard_loss_by_hand() -> None:
    # margin 0.2 with the triplets above:
    # a0: 3 - 2 + .2 = 1.2; a1: 2 - √5 + .2 < 0; a2: 3 - √13 + .2 < 0; a3: √34 - 2 + .2; a4: √34 - √29 + .2
    expected = (1.2 + 0 + 0 + (math.sqrt(34) - 1.8) + (math.sqrt(34) - math.sqrt(29) + 0.2)) / 5
    loss = batch_hard_triplet_loss(HARD_X, HARD_Y, 0.2, normalize=False)
    assert loss.item() == pytest.approx(expected)


# 1-D points, labels 0,0,1,1, margin 1:
#   0:0  1:1  2:1.5  3:4
# triplets (a,p,n): loss = d(a,p) - d(a,n) + 1
#   (0,1,2): 1 - 1.5 + 1 = 0.5   (0,1,3): 1 - 4 + 1 < 0
#   (1,0,2): 1 - 0.5 + 1 = 1.5   (1,0,3): 1 - 3 + 1 < 0
#   (2,3,0): 2.5 - 1.5 + 1 = 2   (2,3,1): 2.5 - 0.5 + 1 = 3
#   (3,2,0): 2.5 - 4 + 1 < 0     (3,2,1): 2.5 - 3 + 1 = 0.5
ALL_X = t([[0], [1], [1.5], [4]])
ALL_Y = torch.tensor([0, 0, 1, 1])


def test_mine_batch_all_exact() -> None:
    dist = pairwise_distances(ALL_X)
    a, p, n = mine_batch_all(dist, ALL_Y)
    every = [(0, 1, 2), (0, 1, 3), (1, 0, 2), (1, 0, 3), (2, 3, 0), (2, 3, 1), (3, 2, 0), (3, 2, 1)]
    assert list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == every
    a, p, n = mine_batch_all(dist, ALL_Y, margin=1.0)
    assert list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == [
        (0, 1, 2),
        (1, 0, 2),
        (2, 3, 0),
        (2, 3, 1),
        (3, 2, 1),
    ]


def test_batch_all_loss_by_hand() -> None:
    # positive losses 0.5, 1.5, 2, 3, 0.5 -> sum 7.5 over 5 = 1.5; fraction 5 / 8
    loss, fraction = batch_all_triplet_loss(ALL_X, ALL_Y, 1.0, normalize=False)
    assert loss.item() == pytest.approx(1.5)
    assert fraction.item() == pytest.approx(0.625)
    assert not fraction.requires_grad


def test_batch_hard_loss_second_example() -> None:
    # a0: p=1 (1), n=2 (1.5) -> 0.5; a1: p=0 (1), n=2 (0.5) -> 1.5
    # a2: p=3 (2.5), n=1 (0.5) -> 3;  a3: p=2 (2.5), n=1 (3) -> 0.5; mean 5.5 / 4
    assert batch_hard_triplet_loss(ALL_X, ALL_Y, 1.0, normalize=False).item() == pytest.approx(1.375)


# semi-hard, margin 0.5, 1-D points, labels 0,0,1,1,1,1:
#   0:0  1:1 | 2:0.5  3:1.3  4:1.4  5:3
# (a=0, p=1): d_ap = 1; negatives at 0.5 (hard), 1.3 and 1.4 (in the band (1, 1.5)), 3 (easy)
#             -> the closest semi-hard one: item 3 (batch-hard would pick item 2)
# (a=1, p=0): d_ap = 1; negatives at 0.5, 0.3, 0.4, 2: none in (1, 1.5) -> fallback hardest: item 3 (0.3)
SEMI_X = t([[0], [1], [0.5], [1.3], [1.4], [3]])
SEMI_Y = torch.tensor([0, 0, 1, 1, 1, 1])


def test_mine_semi_hard_picks_designed_negative() -> None:
    dist = pairwise_distances(SEMI_X)
    a, p, n = mine_semi_hard(dist, SEMI_Y, margin=0.5)
    picked = {(ai, pi): ni for ai, pi, ni in zip(a.tolist(), p.tolist(), n.tolist(), strict=True)}
    assert len(picked) == 2 + 4 * 3  # every positive pair
    assert picked[(0, 1)] == 3
    assert picked[(1, 0)] == 3
    # anchor 2 (0.5), positive 5 (3): d_ap = 2.5; negatives at 0.5 and 0.5 -> no semi-hard -> hardest, item 0
    assert picked[(2, 5)] == 0
    # contrast with batch-hard for anchor 0
    _, _, n_hard = mine_batch_hard(dist, SEMI_Y)
    assert n_hard[0].item() == 2


def test_semi_hard_loss_by_hand() -> None:
    # points 0, 1, 1.3; labels 0, 0, 1; margin 0.5
    # (0,1): d_ap 1, negative 2 at 1.3 is semi-hard -> 1 - 1.3 + .5 = 0.2
    # (1,0): d_ap 1, negative 2 at 0.3 not in (1, 1.5) -> fallback hardest -> 1 - 0.3 + .5 = 1.2
    loss = semi_hard_triplet_loss(t([[0], [1], [1.3]]), torch.tensor([0, 0, 1]), 0.5, normalize=False)
    assert loss.item() == pytest.approx(0.7)


def test_no_valid_triplet_gives_zero_with_grad() -> None:
    labels = torch.tensor([3, 3, 3])  # no negatives
    for fn in (batch_hard_triplet_loss, semi_hard_triplet_loss):
        x = torch.randn(3, 4, requires_grad=True)
        loss = fn(x, labels, 0.2)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert x.grad.abs().sum().item() == 0.0
    x = torch.randn(3, 4, requires_grad=True)
    loss, fraction = batch_all_triplet_loss(x, torch.tensor([0, 1, 2]), 0.2)  # no positives
    assert loss.item() == 0.0 and fraction.item() == 0.0
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_batch_loss_shape_errors() -> None:
    with pytest.raises(ValueError):
        batch_hard_triplet_loss(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        batch_all_triplet_loss(torch.zeros(3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError):
        mine_batch_hard(torch.zeros(3, 2), torch.tensor([0, 1, 1]))


# ---------------------------------------------------------------- candidate miner

D_AP = torch.tensor([1.0, 1.0])
D_AC = torch.tensor([[0.5, 1.3, 1.4, 3.0], [0.2, 0.3, 5.0, 0.1]])
VALID = torch.tensor([[True, True, True, True], [True, True, True, False]])


def test_mine_hard_negatives_strategies() -> None:
    # row 1: 0.1 is invalid, so the closest valid is 0.2 (col 0); no valid candidate in (1, 1.5)
    assert mine_hard_negatives(D_AP, D_AC, VALID, strategy="batch-hard").tolist() == [0, 0]
    # row 0: 1.3 is the closest in (1, 1.5) -> col 1; row 1 falls back to the hardest valid -> col 0
    assert mine_hard_negatives(D_AP, D_AC, VALID, strategy="semi-hard", margin=0.5).tolist() == [1, 0]
    # margin 0.2: band (1, 1.2) is empty in row 0 too -> hardest
    assert mine_hard_negatives(D_AP, D_AC, VALID, strategy="semi-hard", margin=0.2).tolist() == [0, 0]


def test_mine_hard_negatives_random_is_valid_and_seeded() -> None:
    valid = torch.tensor([[False, False, True, False], [True, True, True, False]])
    draws = [
        mine_hard_negatives(D_AP, D_AC, valid, strategy="random", generator=torch.Generator().manual_seed(s))
        for s in range(20)
    ]
    assert all(d[0].item() == 2 and d[1].item() in (0, 1, 2) for d in draws)
    assert len({d[1].item() for d in draws}) > 1
    again = mine_hard_negatives(
        D_AP, D_AC, valid, strategy="random", generator=torch.Generator().manual_seed(3)
    )
    assert again.tolist() == draws[3].tolist()


def test_mine_hard_negatives_errors() -> None:
    with pytest.raises(ValueError, match="without any valid"):
        mine_hard_negatives(D_AP, D_AC, torch.tensor([[True] * 4, [False] * 4]))
    with pytest.raises(ValueError):
        mine_hard_negatives(D_AP, D_AC, VALID, strategy="hardest")
    with pytest.raises(ValueError):
        mine_hard_negatives(torch.ones(3), D_AC, VALID)
    with pytest.raises(ValueError):
        mine_hard_negatives(D_AP, D_AC, VALID[:, :3])


# ---------------------------------------------------------------- offline sampling


def test_sample_offline_triplets_valid_and_reproducible() -> None:
    labels = torch.tensor([0, 1, 0, 1, 1, 2, 0])  # item 5 (label 2) is a singleton: never an anchor
    trips = sample_offline_triplets(labels, 2000, torch.Generator().manual_seed(0))
    assert trips.shape == (2000, 3) and trips.dtype == torch.int64
    a, p, n = trips.unbind(1)
    assert (labels[a] == labels[p]).all() and (a != p).all() and (labels[a] != labels[n]).all()
    assert set(a.tolist()) == {0, 1, 2, 3, 4, 6}
    assert set(p.tolist()) == {0, 1, 2, 3, 4, 6}
    assert set(n.tolist()) == set(range(7))  # the singleton is a negative
    again = sample_offline_triplets(labels, 2000, torch.Generator().manual_seed(0))
    assert torch.equal(trips, again)


def test_sample_offline_triplets_errors() -> None:
    with pytest.raises(ValueError):
        sample_offline_triplets(torch.tensor([0, 1, 2]), 5)  # all singletons
    with pytest.raises(ValueError):
        sample_offline_triplets(torch.tensor([4, 4, 4]), 5)  # one label, no negatives
    assert sample_offline_triplets(torch.tensor([0, 0, 1]), 0).shape == (0, 3)
