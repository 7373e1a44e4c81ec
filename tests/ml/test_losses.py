"""Losses against values computed by hand on tiny tensors (normalize=False unless the test says so)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ml.losses import (
    LOSSES,
    AngularLoss,
    CandidateInfoNCELoss,
    CenterLoss,
    ClipLoss,
    ContrastiveLoss,
    InfoNCELoss,
    NPairLoss,
    NTXentLoss,
    SoftmaxClassificationLoss,
    TripletMarginLoss,
    TypeAwareTripletLoss,
    build_loss,
    centroid_retrieval_query,
    class_centroids,
)

E = math.e


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def close(value: torch.Tensor, expected: float) -> None:
    assert value.dim() == 0
    assert value.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- contrastive


def test_contrastive_by_hand() -> None:
    # pair 0: D = ‖(0,0)-(3,4)‖ = 5, Y=0 (similar)    -> ½·25          = 12.5
    # pair 1: D = ‖(0,0)-(1,0)‖ = 1, Y=1 (dissimilar) -> ½·max(0,2-1)² = 0.5
    # pair 2: D = 0,                 Y=1 (dissimilar) -> ½·max(0,2-0)² = 2.0
    # mean = 15 / 3 = 5.0
    x1 = t([[0, 0], [0, 0], [1, 0]])
    x2 = t([[3, 4], [1, 0], [1, 0]])
    y = torch.tensor([0, 1, 1])
    loss = ContrastiveLoss(margin=2.0, normalize=False)
    close(loss(x1, x2, y), 5.0)
    per_pair = ContrastiveLoss(margin=2.0, normalize=False, reduction="none")(x1, x2, y)
    assert per_pair.tolist() == pytest.approx([12.5, 0.5, 2.0])
    # dissimilar pair beyond the margin costs nothing: D = 5 > m = 2
    close(loss(x1[:1], x2[:1], torch.tensor([1])), 0.0)


def test_contrastive_normalize_and_finite_grad_at_zero() -> None:
    # normalize: (2,0)->(1,0), (0,3)->(0,1): D = √2, Y=0 -> ½·2 = 1
    close(ContrastiveLoss(normalize=True)(t([[2, 0]]), t([[0, 3]]), torch.tensor([0])), 1.0)
    x = torch.ones(2, 3, requires_grad=True)
    ContrastiveLoss(margin=1.0, normalize=False)(x, x.detach().clone(), torch.tensor([1, 0])).backward()
    assert torch.isfinite(x.grad).all()


def test_contrastive_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        ContrastiveLoss()(torch.zeros(2, 3), torch.zeros(3, 3), torch.zeros(2))
    with pytest.raises(ValueError):
        ContrastiveLoss()(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))


# ---------------------------------------------------------------- triplet

A = t([[0, 0], [1, 1]])
P = t([[3, 4], [1, 1]])
N = t([[0, 1], [4, 5]])


def test_triplet_euclidean_by_hand() -> None:
    # row 0: D(a,p)=5, D(a,n)=1 -> max(0, 5-1+1) = 5
    # row 1: D(a,p)=0, D(a,n)=‖(3,4)‖=5 -> max(0, 0-5+1) = 0
    loss = TripletMarginLoss(margin=1.0, distance="euclidean", normalize=False)
    close(loss(A, P, N), 2.5)
    close(TripletMarginLoss(margin=1.0, normalize=False, reduction="sum")(A, P, N), 5.0)
    assert TripletMarginLoss(margin=1.0, normalize=False, reduction="none")(A, P, N).tolist() == [5.0, 0.0]


def test_triplet_squared_euclidean_by_hand() -> None:
    # FaceNet form: row 0: 25 - 1 + 1 = 25; row 1: 0 - 25 + 1 -> 0; mean 12.5
    close(TripletMarginLoss(margin=1.0, distance="squared_euclidean", normalize=False)(A, P, N), 12.5)


def test_triplet_inner_product_by_hand() -> None:
    # D(a,b) = 1 - <a,b>
    # row 0: a=(1,0) p=(.6,.8) n=(0,1): D(a,p)=0.4, D(a,n)=1 -> 0.4 - 1 + 1 = 0.4
    # row 1: a=(1,0) p=(1,0) n=(-1,0):  D(a,p)=0,   D(a,n)=2 -> 0 - 2 + 1 < 0 -> 0
    a, p, n = t([[1, 0], [1, 0]]), t([[0.6, 0.8], [1, 0]]), t([[0, 1], [-1, 0]])
    close(TripletMarginLoss(margin=1.0, distance="inner_product", normalize=False)(a, p, n), 0.2)
    # normalize=True maps the scaled inputs back onto the same unit vectors: same 0.2
    close(TripletMarginLoss(margin=1.0, distance="inner_product")(2 * a, 5 * p, 3 * n), 0.2)


def test_triplet_errors_and_zero_distance_grad() -> None:
    with pytest.raises(ValueError):
        TripletMarginLoss(distance="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TripletMarginLoss(reduction="max")
    with pytest.raises(ValueError):
        TripletMarginLoss()(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4))
    x = torch.ones(3, 4, requires_grad=True)
    TripletMarginLoss(margin=0.5)(x, x, x).backward()  # D(a,p) = D(a,n) = 0
    assert torch.isfinite(x.grad).all()


def test_type_aware_triplet_by_hand() -> None:
    # D(a,x) = 1 - <a⊙m, x⊙m>, margin 0.5, candidates c1=(1,0), c2=(0,1) for both rows
    # row 0: a=(1,0) p=(0,1) m=(1,1): D(a,p)=1, D(a,c)=(0, 1)
    #   hard: c1 -> 1 - 0 + .5 = 1.5; semi-hard band (1, 1.5) empty -> hardest c1 -> 1.5
    # row 1: a=p=(.6,.8) m=(1,0): D(a,p)=1-.36=.64, D(a,c)=(.4, 1)
    #   hard: c1 -> .64 - .4 + .5 = .74; semi-hard band (.64, 1.14): c2 -> .64 - 1 + .5 = .14
    # batch-all: mean of the positive terms 1.5, .5, .74, .14 = 2.88 / 4
    a, p = t([[1, 0], [0.6, 0.8]]), t([[0, 1], [0.6, 0.8]])
    cands = t([[1, 0], [0, 1]]).expand(2, 2, 2)  # (B, M, C)
    m = t([[1, 1], [1, 0]])
    close(TypeAwareTripletLoss(margin=0.5, miner="batch-hard")(a, p, cands, m), (1.5 + 0.74) / 2)
    close(TypeAwareTripletLoss(margin=0.5, miner="semi-hard")(a, p, cands, m), (1.5 + 0.14) / 2)
    close(TypeAwareTripletLoss(margin=0.5, miner="batch-all")(a, p, cands, m), 2.88 / 4)
    with pytest.raises(ValueError):
        TypeAwareTripletLoss(miner="hardest")(a, p, cands, m)


def test_candidate_infonce_by_hand() -> None:
    # τ = 0.5, s(a, x) = <a ⊙ m², x>. row 0: a=(1,0) p=(0,1) m=(1,1): s_p = 0, s_c = (1, 0)
    #   -> -0/τ + log(e^0 + e^2 + e^0); row 1: a=p=(.6,.8) m=(1,0): s_p = .36, s_c = (.6, 0)
    #   -> -.72 + log(e^.72 + e^1.2 + e^0)
    a, p = t([[1, 0], [0.6, 0.8]]), t([[0, 1], [0.6, 0.8]])
    cands = t([[1, 0], [0, 1]]).expand(2, 2, 2)  # (B, M, C)
    m = t([[1, 1], [1, 0]])
    row0 = math.log(2 + math.e**2)
    row1 = -0.72 + math.log(math.exp(0.72) + math.exp(1.2) + 1)
    close(CandidateInfoNCELoss(temperature=0.5)(a, p, cands, m), (row0 + row1) / 2)
    # a positive far above every candidate costs ~0; the loss is a smooth max over the candidates
    easy = CandidateInfoNCELoss(temperature=0.01)(t([[1, 0]]), t([[1, 0]]), t([[[0, 1]]]), t([[1, 1]]))
    assert float(easy) < 1e-6
    with pytest.raises(ValueError, match="temperature"):
        CandidateInfoNCELoss(temperature=0)
    with pytest.raises(ValueError, match="candidates"):
        CandidateInfoNCELoss()(a, p, cands[:, :, :1], m)


# ---------------------------------------------------------------- InfoNCE / NT-Xent / CLIP


def test_infonce_by_hand() -> None:
    # τ = 1, logits = q kᵀ = [[1,0,0],[0,1,1],[1,0,0]], targets 0,1,2
    # row 0: -1 + log(e+1+1);  row 1: -1 + log(1+e+e);  row 2: -0 + log(e+1+1)
    q = t([[1, 0], [0, 1], [1, 0]])
    k = t([[1, 0], [0, 1], [0, 1]])
    expected = (math.log(E + 2) - 1 + math.log(1 + 2 * E) - 1 + math.log(E + 2)) / 3
    close(InfoNCELoss(temperature=1.0, normalize=False)(q, k), expected)
    # τ = 0.5 on the identity: logits 2I, each row log(e²+1) - 2 = log(1 + e^-2)
    eye = t([[1, 0], [0, 1]])
    close(InfoNCELoss(temperature=0.5, normalize=False)(eye, eye), math.log(1 + E**-2))


def test_infonce_symmetric_by_hand() -> None:
    # logitsᵀ = [[1,0,1],[0,1,0],[0,1,0]]:
    # row 0: -1 + log(e+1+e); row 1: -1 + log(1+e+1); row 2: -0 + log(1+e+1)
    q = t([[1, 0], [0, 1], [1, 0]])
    k = t([[1, 0], [0, 1], [0, 1]])
    q_to_k = (math.log(E + 2) - 1 + math.log(1 + 2 * E) - 1 + math.log(E + 2)) / 3
    k_to_q = (math.log(2 * E + 1) - 1 + math.log(E + 2) - 1 + math.log(E + 2)) / 3
    close(InfoNCELoss(temperature=1.0, normalize=False, symmetric=True)(q, k), (q_to_k + k_to_q) / 2)


def test_ntxent_by_hand() -> None:
    # z = [e1, e2, e1, e2], τ=1. Row 0 (e1): logits to rows 1,2,3 = 0,1,0; positive is row 2 (logit 1)
    # -> -1 + log(1 + e + 1); every row is the same by symmetry.
    e = t([[1, 0], [0, 1]])
    close(NTXentLoss(temperature=1.0, normalize=False)(e, e), math.log(2 + E) - 1)
    # swapped views z = [e1, e2, e2, e1]: row 0 (e1) positive is row 2 = e2 (logit 0); others 0 and 1
    # -> -0 + log(1 + 1 + e); again every row alike.
    swapped = t([[0, 1], [1, 0]])
    close(NTXentLoss(temperature=1.0, normalize=False)(e, swapped), math.log(2 + E))


def test_clip_2x2_by_hand() -> None:
    # τ = 1 (scale 1). image = [e1, e2], text = [(.6,.8), e2]
    # logits = image textᵀ = [[.6, 0], [.8, 1]]
    # image->text: row 0: -0.6 + log(e^.6 + e^0); row 1: -1 + log(e^.8 + e^1)
    # text->image (logitsᵀ = [[.6,.8],[0,1]]): row 0: -0.6 + log(e^.6 + e^.8); row 1: -1 + log(1 + e)
    image = t([[1, 0], [0, 1]])
    text = t([[0.6, 0.8], [0, 1]])
    i2t = (-0.6 + math.log(E**0.6 + 1) - 1 + math.log(E**0.8 + E)) / 2
    t2i = (-0.6 + math.log(E**0.6 + E**0.8) - 1 + math.log(1 + E)) / 2
    loss = ClipLoss(init_temperature=1.0, normalize=False).double()
    close(loss(image, text), (i2t + t2i) / 2)
    assert loss.temperature == pytest.approx(1.0)
    assert isinstance(loss.logit_scale, nn.Parameter)


def test_clip_default_temperature_and_learnable() -> None:
    loss = ClipLoss()
    assert loss.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    assert loss.temperature == pytest.approx(0.07, rel=1e-6)
    image = torch.randn(4, 8)
    loss(image, torch.randn(4, 8)).backward()
    assert loss.logit_scale.grad is not None and torch.isfinite(loss.logit_scale.grad)
    fixed = ClipLoss(learnable=False)
    assert list(fixed.parameters()) == [] and "logit_scale" in dict(fixed.named_buffers())


def test_clip_clamps_logit_scale() -> None:
    # τ = 0.001 would be a scale of 1000: clamped at init to 100 (τ = 0.01)
    loss = ClipLoss(init_temperature=0.001, max_logit_scale=100.0, normalize=False).double()
    assert loss.logit_scale.exp().item() == pytest.approx(100.0)
    assert loss.temperature == pytest.approx(0.01)
    # pushed past the clamp by an optimiser: forward still uses 100, and no gradient flows into it
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)
    eye = t([[1, 0], [0, 1]])
    value = loss(eye, eye)  # logits 100·I -> every row log(1 + e^-100)
    close(value, math.log1p(math.exp(-100)))
    value.backward()
    assert loss.logit_scale.grad.item() == 0.0
    assert loss.temperature == pytest.approx(0.01)
    loss.clamp_()
    assert loss.logit_scale.item() == pytest.approx(math.log(100.0))


# ---------------------------------------------------------------- N-pair and angular


def test_npair_by_hand() -> None:
    # f = [(2,0),(0,1)], f⁺ = [(1,0),(1,1)]; f f⁺ᵀ = [[2,2],[0,1]]
    # row 0: log(1 + e^(2-2)) = log 2;  row 1: log(1 + e^(0-1))
    # L2 term: mean(‖f_i‖² + ‖f_i⁺‖²) = ((4+1) + (1+2)) / 2 = 4
    f, fp = t([[2, 0], [0, 1]]), t([[1, 0], [1, 1]])
    base = (math.log(2) + math.log(1 + E**-1)) / 2
    close(NPairLoss()(f, fp), base)
    close(NPairLoss(l2_reg=0.01)(f, fp), base + 0.01 * 4)


def test_angular_by_hand_45_degrees() -> None:
    # α = 45° -> tan²α = 1:  f(a,p,n) = 4 (a+p)·n - 4 a·p
    # pair 0: a=p=(1,0); negatives a1=(0,1), p1=(1,1): (a+p)=(2,0)
    #   f = 4·0 - 4·1 = -4  and  f = 4·2 - 4 = 4  -> log(1 + e^-4 + e^4)
    # pair 1: a=(0,1), p=(1,1), a·p = 1, (a+p)=(1,2); negatives (1,0),(1,0): f = 4·1 - 4 = 0 twice -> log 3
    a, p = t([[1, 0], [0, 1]]), t([[1, 0], [1, 1]])
    expected = (math.log(1 + E**-4 + E**4) + math.log(3)) / 2
    close(AngularLoss(alpha_degrees=45, normalize=False)(a, p), expected)


def test_angular_by_hand_30_degrees() -> None:
    # α = 30° -> tan²α = 1/3: f = (4/3)(a+p)·n - (8/3) a·p
    # a_i = p_i = e_i, negatives e_j, e_j: (a+p)·n = 0, a·p = 1 -> f = -8/3 twice -> log(1 + 2e^(-8/3))
    e = t([[1, 0], [0, 1]])
    close(AngularLoss(alpha_degrees=30, normalize=False)(e, e), math.log(1 + 2 * math.exp(-8 / 3)))


def test_angular_errors() -> None:
    with pytest.raises(ValueError):
        AngularLoss(alpha_degrees=90)
    with pytest.raises(ValueError):
        AngularLoss()(torch.ones(1, 2), torch.ones(1, 2))


# ---------------------------------------------------------------- center and softmax


def test_center_by_hand() -> None:
    # centers c0=(0,0), c1=(1,1); x=(3,4)|0, (1,1)|1, (1,2)|1
    # ½‖x-c‖² = ½·25, ½·0, ½·1 -> mean (12.5 + 0 + 0.5) / 3 = 13/3
    loss = CenterLoss(num_classes=2, dim=2, normalize=False).double()
    with torch.no_grad():
        loss.centers.copy_(t([[0, 0], [1, 1]]))
    x = t([[3, 4], [1, 1], [1, 2]])
    labels = torch.tensor([0, 1, 1])
    close(loss(x, labels), 13 / 3)
    loss(x, labels).backward()
    # d/dc0 of (1/3)·½‖x0 - c0‖² = -(x0 - c0)/3 = (-1, -4/3)
    assert loss.centers.grad[0].tolist() == pytest.approx([-1.0, -4 / 3])
    with pytest.raises(ValueError):
        loss(x, torch.tensor([0, 1, 2]))


def test_softmax_classification_by_hand() -> None:
    # W = I, b = 0; x0=(1,0) -> logits (1,0), y=0: log(1 + e^-1); x1=(0,2) -> logits (0,2), y=0: log(1 + e^2)
    loss = SoftmaxClassificationLoss(dim=2, num_classes=2, normalize=False).double()
    with torch.no_grad():
        loss.head.weight.copy_(t([[1, 0], [0, 1]]))
        loss.head.bias.zero_()
    expected = (math.log(1 + E**-1) + math.log(1 + E**2)) / 2
    close(loss(t([[1, 0], [0, 2]]), torch.tensor([0, 0])), expected)


# ---------------------------------------------------------------- centroids


def test_class_centroids_by_hand() -> None:
    # label 1: (1,0); label 3: mean((0,0),(2,2)) = (1,1); label 7: (5,5)
    emb = t([[0, 0], [2, 2], [1, 0], [5, 5]])
    centroids, classes = class_centroids(emb, torch.tensor([3, 3, 1, 7]))
    assert classes.tolist() == [1, 3, 7]
    assert centroids.tolist() == [[1, 0], [1, 1], [5, 5]]
    normed, _ = class_centroids(emb, torch.tensor([3, 3, 1, 7]), normalize=True)
    assert normed[1].tolist() == pytest.approx([1 / math.sqrt(2)] * 2)


def test_centroid_retrieval_query() -> None:
    # mean((1,0),(0,1)) = (.5,.5) -> normalised (1/√2, 1/√2)
    v = t([[1, 0], [0, 1]])
    assert centroid_retrieval_query(v).tolist() == pytest.approx([1 / math.sqrt(2)] * 2)
    assert centroid_retrieval_query(v, normalize=False).tolist() == [0.5, 0.5]
    with pytest.raises(ValueError):
        centroid_retrieval_query(torch.zeros(0, 2))


# ---------------------------------------------------------------- factory


def test_build_loss_names() -> None:
    assert isinstance(build_loss("triplet", margin=0.3), TripletMarginLoss)
    assert build_loss("Triplet", margin=0.3).margin == 0.3
    assert isinstance(build_loss("center", num_classes=3, dim=4), CenterLoss)
    assert isinstance(build_loss("softmax", dim=4, num_classes=3), SoftmaxClassificationLoss)
    for name in ("contrastive", "infonce", "ntxent", "clip", "npair", "angular"):
        assert isinstance(build_loss(name), LOSSES[name])


def test_build_loss_unknown_name() -> None:
    with pytest.raises(ValueError, match="valid names: contrastive, triplet"):
        build_loss("arcface")
