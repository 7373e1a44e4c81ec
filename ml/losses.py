"""Metric-learning losses: contrastive, triplet, InfoNCE / NT-Xent / CLIP, N-pair, angular, center,
softmax baseline; plus class centroids for centroid-based retrieval, and a small factory.

Every loss is an ``nn.Module`` whose docstring cites its paper and gives shapes and the formula. Unless
stated otherwise inputs are floating point (float32 / float64 / bf16), labels are int64 and the output
is a scalar of the input dtype. ``normalize=True`` L2-normalises the features onto the unit hypersphere
(``F.normalize``) before the loss, the project's convention (``TrainConfig.normalize``).

Pick a loss from config with :func:`build_loss` (``build_loss("triplet", margin=0.2)``). Online triplet
mining lives in :mod:`ml.mining`.

Plain PyTorch, no Django. Tests: ``python -m pytest tests/ml/test_losses.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.distances import DISTANCES, Distance, paired_distances, safe_sqrt

__all__ = [
    "LOSSES",
    "AngularLoss",
    "CenterLoss",
    "ClipLoss",
    "ContrastiveLoss",
    "InfoNCELoss",
    "NPairLoss",
    "NTXentLoss",
    "SoftmaxClassificationLoss",
    "TripletMarginLoss",
    "build_loss",
    "centroid_retrieval_query",
    "class_centroids",
]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(_REDUCTIONS)}")


def _reduce(losses: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _check_same_shape(**tensors: Tensor) -> None:
    """ValueError unless all tensors are 2-D (B, D) of one shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(tensors.values()))
    if first.dim() != 2 or any(t.shape != first.shape for t in tensors.values()):
        raise ValueError(f"expected (B, D) tensors of one shape, got {shapes}")


def _check_labels(x: Tensor, labels: Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"features must be (B, D), got shape {tuple(x.shape)}")
    if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be (B,) with B = {x.shape[0]}, got shape {tuple(labels.shape)}")


def _maybe_normalize(normalize: bool, *xs: Tensor) -> tuple[Tensor, ...]:
    return tuple(F.normalize(x, dim=-1) for x in xs) if normalize else xs


# -----------------------------------------------------------------------------
# pair and triplet losses


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


# -----------------------------------------------------------------------------
# softmax-over-the-batch losses


class InfoNCELoss(nn.Module):
    """InfoNCE: Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive Coding", 2018
    (the multi-class form of Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
    Objective", NeurIPS 2016).

    Row i of ``query`` and row i of ``key`` are a positive pair; the other B − 1 keys are negatives:

        logits = q kᵀ / τ          (B, B)
        L = mean_i −log softmax(logits_i)_i   = cross_entropy(logits, arange(B))

    With ``symmetric=True`` the key→query direction is added and the two are averaged.

    Shapes:
        query, key: (B, D) floating point. Output: scalar, dtype of query.

    Args:
        temperature: τ > 0, fixed (see :class:`ClipLoss` for a learnable one). Default = TrainConfig's.
        normalize: L2-normalise query and key first (logits are then cosine similarities / τ).
        symmetric: average query→key and key→query.

    Raises:
        ValueError: shape mismatch or τ <= 0.
    """

    def __init__(self, temperature: float = 0.07, normalize: bool = True, symmetric: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.normalize = normalize
        self.symmetric = symmetric

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        _check_same_shape(query=query, key=key)
        query, key = _maybe_normalize(self.normalize, query, key)
        logits = query @ key.t() / self.temperature  # (B, B)
        targets = torch.arange(query.shape[0], device=query.device)  # (B,)
        loss = F.cross_entropy(logits, targets)
        if self.symmetric:
            loss = 0.5 * (loss + F.cross_entropy(logits.t(), targets))
        return loss


class NTXentLoss(nn.Module):
    """NT-Xent, the normalised temperature-scaled cross entropy of Chen, Kornblith, Norouzi & Hinton,
    "A Simple Framework for Contrastive Learning of Visual Representations" (SimCLR), ICML 2020.

    Two views z1[i], z2[i] of item i; the 2N vectors z = [z1; z2] each have one positive (the other view)
    and 2N − 2 negatives (every other vector except itself):

        s = z zᵀ / τ  with the diagonal removed      (2N, 2N)
        ℓ(i, j) = −log exp(s_ij) / Σ_{k≠i} exp(s_ik)
        L = 1/(2N) Σ_k [ℓ(k, k+N) + ℓ(k+N, k)]

    Shapes:
        z1, z2: (N, D) floating point. Output: scalar, dtype of z1.

    Args:
        temperature: τ > 0. Default = TrainConfig's.
        normalize: L2-normalise first (SimCLR's cosine similarity).

    Raises:
        ValueError: shape mismatch or τ <= 0.
    """

    def __init__(self, temperature: float = 0.07, normalize: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.normalize = normalize

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        _check_same_shape(z1=z1, z2=z2)
        n = z1.shape[0]
        z = torch.cat(_maybe_normalize(self.normalize, z1, z2), dim=0)  # (2N, D)
        sim = z @ z.t() / self.temperature  # (2N, 2N)
        eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        sim = sim.masked_fill(eye, float("-inf"))  # a vector is not its own negative
        idx = torch.arange(n, device=z.device)
        targets = torch.cat([idx + n, idx])  # (2N,) the other view
        return F.cross_entropy(sim, targets)


class ClipLoss(nn.Module):
    """Symmetric image↔text contrastive loss of CLIP: Radford et al., "Learning Transferable Visual Models
    From Natural Language Supervision", ICML 2021.

        s = exp(logit_scale)                        (= 1/τ, clamped so that s <= max_logit_scale)
        logits = s · image textᵀ                    (B, B)
        L = ½ [CE(logits, arange(B)) + CE(logitsᵀ, arange(B))]

    The logit scale is stored as ``log(1/τ)``, initialised from ``init_temperature`` (CLIP: 0.07) and
    clamped at ``log(max_logit_scale)`` (CLIP: 100) both at init and in every forward. Call
    :meth:`clamp_` after an optimiser step to clamp the stored value too (as open_clip does).

    Shapes:
        image, text: (B, D) floating point. Output: scalar, dtype of image.

    Args:
        init_temperature: initial τ > 0.
        max_logit_scale: upper bound on exp(logit_scale), i.e. τ >= 1/max_logit_scale.
        learnable: ``logit_scale`` is an ``nn.Parameter`` (else a buffer).
        normalize: L2-normalise image and text first (CLIP does).

    Attributes:
        logit_scale: scalar parameter (or buffer), log(1/τ), not clamped itself except by :meth:`clamp_`.
        temperature: the effective τ = 1 / exp(clamped logit_scale), a Python float.

    Raises:
        ValueError: shape mismatch, τ <= 0 or max_logit_scale <= 0.
    """

    def __init__(
        self,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learnable: bool = True,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if init_temperature <= 0 or max_logit_scale <= 0:
            raise ValueError(
                f"init_temperature and max_logit_scale must be > 0, got {init_temperature}, {max_logit_scale}"
            )
        self.max_log_scale = math.log(max_logit_scale)
        init = torch.tensor(min(math.log(1.0 / init_temperature), self.max_log_scale))
        if learnable:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)
        self.normalize = normalize

    def scale(self) -> Tensor:
        """exp(logit_scale) clamped at max_logit_scale: a scalar tensor, differentiable below the clamp."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.scale().detach())

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the stored logit_scale in place into [0, log(max_logit_scale)], i.e. τ ∈ [1/max, 1]."""
        self.logit_scale.clamp_(0.0, self.max_log_scale)

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        _check_same_shape(image=image, text=text)
        image, text = _maybe_normalize(self.normalize, image, text)
        logits = self.scale() * image @ text.t()  # (B, B) image -> text
        targets = torch.arange(image.shape[0], device=image.device)  # (B,)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


class NPairLoss(nn.Module):
    """Multi-class N-pair loss of Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
    Objective", NeurIPS 2016.

    N pairs (f_i, f_i⁺) from N different classes; each f_i has its positive f_i⁺ and the other positives
    f_j⁺ (j ≠ i) as negatives:

        L = 1/N Σ_i log(1 + Σ_{j≠i} exp(f_iᵀ f_j⁺ − f_iᵀ f_i⁺))  +  λ · 1/N Σ_i (‖f_i‖² + ‖f_i⁺‖²)

    (the first term is cross-entropy over f f⁺ᵀ with targets on the diagonal). The paper trains
    un-normalised embeddings and keeps them small with the L2 term λ, so ``normalize`` defaults to
    False here (with ``normalize=True`` the λ term is a constant).

    Shapes:
        anchors, positives: (N, D) floating point; row i of each is one pair. Output: scalar.

    Args:
        l2_reg: λ >= 0.
        normalize: L2-normalise first.

    Raises:
        ValueError: shape mismatch or λ < 0.
    """

    def __init__(self, l2_reg: float = 0.0, normalize: bool = False) -> None:
        super().__init__()
        if l2_reg < 0:
            raise ValueError(f"l2_reg must be >= 0, got {l2_reg}")
        self.l2_reg = l2_reg
        self.normalize = normalize

    def forward(self, anchors: Tensor, positives: Tensor) -> Tensor:
        _check_same_shape(anchors=anchors, positives=positives)
        anchors, positives = _maybe_normalize(self.normalize, anchors, positives)
        logits = anchors @ positives.t()  # (N, N)
        targets = torch.arange(anchors.shape[0], device=anchors.device)
        loss = F.cross_entropy(logits, targets)
        if self.l2_reg > 0:
            loss = loss + self.l2_reg * (anchors.pow(2).sum(-1) + positives.pow(2).sum(-1)).mean()
        return loss


class AngularLoss(nn.Module):
    """Angular loss, N-pair form, of Wang, Zhou, Wen, Liu & Lin, "Deep Metric Learning with Angular
    Loss", ICCV 2017.

    Constrains the angle at the negative of the triangle (a, p, n) to be <= α. With N pairs (a_i, p_i) of
    N different classes, the negatives of anchor i are the 2(N − 1) vectors a_j, p_j of the other pairs:

        f(a, p, n) = 4 tan²α · (a + p)ᵀ n − 2 (1 + tan²α) · aᵀ p
        L = 1/N Σ_i log(1 + Σ_{n ∈ {a_j, p_j : j≠i}} exp(f(a_i, p_i, n)))

    The paper combines it with the N-pair loss (L_npair + λ L_ang, λ = 2); add :class:`NPairLoss`
    separately for that.

    Shapes:
        anchors, positives: (N, D) floating point, N >= 2. Output: scalar.

    Args:
        alpha_degrees: α in degrees, 0 < α < 90 (the paper reports 36°–55° work; 45° by default).
        normalize: L2-normalise first.

    Raises:
        ValueError: shape mismatch, N < 2, or α outside (0, 90).
    """

    def __init__(self, alpha_degrees: float = 45.0, normalize: bool = True) -> None:
        super().__init__()
        if not 0.0 < alpha_degrees < 90.0:
            raise ValueError(f"alpha_degrees must be in (0, 90), got {alpha_degrees}")
        self.alpha_degrees = alpha_degrees
        self.tan_sq = math.tan(math.radians(alpha_degrees)) ** 2
        self.normalize = normalize

    def forward(self, anchors: Tensor, positives: Tensor) -> Tensor:
        _check_same_shape(anchors=anchors, positives=positives)
        n = anchors.shape[0]
        if n < 2:
            raise ValueError("AngularLoss needs at least 2 pairs (negatives come from the other pairs)")
        anchors, positives = _maybe_normalize(self.normalize, anchors, positives)
        negatives = torch.cat([anchors, positives], dim=0)  # (2N, D)
        ap = (anchors * positives).sum(-1, keepdim=True)  # (N, 1)
        f = (
            4.0 * self.tan_sq * (anchors + positives) @ negatives.t() - 2.0 * (1.0 + self.tan_sq) * ap
        )  # (N, 2N)
        own = torch.eye(n, dtype=torch.bool, device=anchors.device).repeat(1, 2)  # (N, 2N): a_i and p_i
        f = f.masked_fill(own, float("-inf"))
        zero = f.new_zeros(n, 1)  # the "1 +" inside the log
        return torch.logsumexp(torch.cat([zero, f], dim=1), dim=1).mean()


# -----------------------------------------------------------------------------
# class-based losses


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


# -----------------------------------------------------------------------------
# factory

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
