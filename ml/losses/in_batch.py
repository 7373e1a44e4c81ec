"""Softmax-over-the-batch losses: InfoNCE, NT-Xent (SimCLR), CLIP, N-pair and angular. The other items
of the batch are the negatives.

Plain PyTorch, no Django. Tests: ``python -m pytest tests/ml/test_losses.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.losses._common import _check_candidates, _check_same_shape, _maybe_normalize


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
        symmetric: average both directions (CLIP); False keeps image→text only, i.e. one-directional
            InfoNCE (:class:`InfoNCELoss`) with a learnable temperature (``TrainConfig.general_loss="infonce"``).

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
        symmetric: bool = True,
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
        self.symmetric = symmetric

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
        if not self.symmetric:
            return F.cross_entropy(logits, targets)
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


class CandidateInfoNCELoss(nn.Module):
    """InfoNCE of an (anchor, positive) pair against its own candidate negatives, in the pair's type-aware
    subspace: the compatibility loss of ``TrainConfig(compat_loss="infonce")``.

    Oord et al. 2018's InfoNCE with sampled negatives, as in the complementary-item retrieval objective
    of Sarkar et al., "OutfitTransformer", WACV 2023: with the squared pair mask ``m²`` of the anchor's
    and positive's slots (``RecommenderHeads.pair_mask``) and ``s(a, x) = <a ⊙ m², x>`` (the served
    pair score, pgvector's inner product),

        logits_b = [s(a_b, p_b), s(a_b, c_b1), …, s(a_b, c_bM)] / τ          (B, 1 + M)
        L = mean_b −log softmax(logits_b)_0

    a smooth maximum over the negatives (LogSumExp), where a triplet loss looks at one of them.

    Shapes:
        anchor, positive: (B, C) floating point (unit norm; not normalised here).
        candidates: (B, M, C), same dtype. mask: (B, C) ≥ 0, the pair's mask (not squared).
        Output: scalar, dtype of anchor.

    Args:
        temperature: τ > 0, fixed.

    Raises:
        ValueError: τ <= 0, or shapes that do not match.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, anchor: Tensor, positive: Tensor, candidates: Tensor, mask: Tensor) -> Tensor:
        _check_same_shape(anchor=anchor, positive=positive, mask=mask)
        _check_candidates(anchor, candidates)
        q = anchor * mask.pow(2)  # (B, C)
        s_pos = (q * positive).sum(-1, keepdim=True)  # (B, 1)
        s_neg = torch.einsum("bc,bmc->bm", q, candidates)  # (B, M)
        logits = torch.cat([s_pos, s_neg], dim=1) / self.temperature  # (B, 1 + M)
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
