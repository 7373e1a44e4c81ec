"""Triplet mining: online miners over a labelled batch, batch triplet losses, and offline triplet sampling.

A *triplet* (a, p, n) is an anchor, a positive (same label as the anchor) and a negative (different
label). Which triplets a batch trains on matters as much as the loss itself:

* **batch-all** (Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person
  Re-Identification", 2017): every valid triplet of the batch; the loss averages only the triplets
  whose loss is positive.
* **batch-hard** (Hermans et al. 2017): per anchor, the farthest positive and the closest negative.
* **semi-hard** (Schroff, Kalenichenko & Philbin, "FaceNet", CVPR 2015): per anchor-positive pair, a
  negative farther than the positive but within the margin, ``d(a,p) < d(a,n) < d(a,p) + m``.
* **offline**: random valid triplets drawn once, before training (:func:`sample_offline_triplets`).

Three layers, so a caller with its own distances (e.g. a candidate pool per outfit slot) can reuse
the selection logic:

1. distances -- :func:`ml.distances.pairwise_distances` (N, N), :func:`ml.distances.paired_distances`
   (row by row), in :mod:`ml.distances`;
2. index miners -- :func:`mine_batch_all`, :func:`mine_batch_hard`, :func:`mine_semi_hard` take a
   distance matrix and return ``(anchor_idx, pos_idx, neg_idx)``; :func:`mine_hard_negatives` picks
   one negative per anchor out of that anchor's own candidates;
3. batch losses -- :func:`batch_all_triplet_loss`, :func:`batch_hard_triplet_loss`,
   :func:`semi_hard_triplet_loss` take embeddings and labels and return a scalar loss.

Conventions: embeddings are floating point (N, D); labels are int64 (N,); indices returned are int64.
When a batch holds no valid triplet the losses return a zero that is still attached to the graph
(``backward()`` works and gives zero gradients), never NaN.

Plain PyTorch, no Django. Tests: ``python -m pytest tests/ml/test_mining.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ml.distances import Distance, check_distance, pairwise_distances

__all__ = [
    "MINING_STRATEGIES",
    "batch_all_triplet_loss",
    "batch_hard_triplet_loss",
    "mine_batch_all",
    "mine_batch_hard",
    "mine_hard_negatives",
    "mine_semi_hard",
    "sample_offline_triplets",
    "semi_hard_triplet_loss",
    "triplet_mask",
]

#: Strategies of :func:`mine_hard_negatives`.
MINING_STRATEGIES: tuple[str, ...] = ("batch-hard", "semi-hard", "random")


# -----------------------------------------------------------------------------
# masks and input checks


def _check_batch(embeddings: Tensor, labels: Tensor) -> None:
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must be (N,) with N = {embeddings.shape[0]}, got shape {tuple(labels.shape)}"
        )


def _check_dist(dist: Tensor, labels: Tensor) -> None:
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"dist must be a square (N, N) matrix, got shape {tuple(dist.shape)}")
    if labels.dim() != 1 or labels.shape[0] != dist.shape[0]:
        raise ValueError(f"labels must be (N,) with N = {dist.shape[0]}, got shape {tuple(labels.shape)}")


def _pos_neg_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(N, N) bool masks: positive pairs (same label, i != j) and negative pairs (different label)."""
    same = labels[:, None] == labels[None, :]  # (N, N)
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def triplet_mask(labels: Tensor) -> Tensor:
    """(N, N, N) bool mask of valid triplets: ``mask[a, p, n]`` iff a != p, y_a == y_p, y_a != y_n.

    Args:
        labels: (N,) integer labels.

    Returns:
        (N, N, N) bool tensor. Memory is O(N³) bytes (16 MB for N = 256).
    """
    pos, neg = _pos_neg_masks(labels)
    return pos[:, :, None] & neg[:, None, :]  # (N, N, N)


def _zero_with_grad(t: Tensor) -> Tensor:
    """A scalar 0 that is still part of ``t``'s graph, so ``backward()`` gives zero gradients."""
    return t.sum() * 0.0


# -----------------------------------------------------------------------------
# index miners over a distance matrix


@torch.no_grad()
def mine_batch_all(
    dist: Tensor, labels: Tensor, margin: float | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """All valid triplets of a batch (Hermans et al. 2017, "batch all").

    Args:
        dist: (N, N) distances, any of :data:`ml.distances.DISTANCES` (smaller = more similar).
        labels: (N,) int64 labels; equal labels are positives.
        margin: if given, keep only the triplets with a positive loss,
            ``d(a,p) − d(a,n) + margin > 0``.

    Returns:
        ``(anchor_idx, pos_idx, neg_idx)``, each (T,) int64, in lexicographic (a, p, n) order; T may be 0.

    Raises:
        ValueError: ``dist`` is not (N, N) or ``labels`` is not (N,).
    """
    _check_dist(dist, labels)
    mask = triplet_mask(labels)  # (N, N, N)
    if margin is not None:
        mask &= dist[:, :, None] - dist[:, None, :] + margin > 0
    a, p, n = mask.nonzero(as_tuple=True)
    return a, p, n


@torch.no_grad()
def mine_batch_hard(dist: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per anchor, the hardest positive (farthest) and the hardest negative (closest) (Hermans et al. 2017).

    Args:
        dist: (N, N) distances (smaller = more similar).
        labels: (N,) int64 labels.

    Returns:
        ``(anchor_idx, pos_idx, neg_idx)``, each (T,) int64: one triplet per anchor that has at least one
        positive and one negative, in increasing anchor order. Ties go to the lowest index.

    Raises:
        ValueError: ``dist`` is not (N, N) or ``labels`` is not (N,).
    """
    _check_dist(dist, labels)
    pos, neg = _pos_neg_masks(labels)
    hardest_pos = dist.masked_fill(~pos, float("-inf")).argmax(dim=1)  # (N,)
    hardest_neg = dist.masked_fill(~neg, float("inf")).argmin(dim=1)  # (N,)
    anchors = (pos.any(dim=1) & neg.any(dim=1)).nonzero(as_tuple=True)[0]  # (T,)
    return anchors, hardest_pos[anchors], hardest_neg[anchors]


@torch.no_grad()
def mine_semi_hard(dist: Tensor, labels: Tensor, margin: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per anchor-positive pair, a semi-hard negative (Schroff et al. 2015, FaceNet).

    Every positive pair (a, p) is used (FaceNet's "all anchor-positive" method). Its negative is the
    *closest* negative inside the semi-hard band ``d(a,p) < d(a,n) < d(a,p) + margin``.

    Fallback: when no negative of the anchor lies in the band, the **hardest negative** (the closest
    one, ``argmin d(a,n)``) is used instead. That negative is either closer than the positive (a hard
    negative, positive loss) or farther than ``d(a,p) + margin`` (zero loss).

    Args:
        dist: (N, N) distances (smaller = more similar).
        labels: (N,) int64 labels.
        margin: the triplet margin m (> 0).

    Returns:
        ``(anchor_idx, pos_idx, neg_idx)``, each (T,) int64: one triplet per positive pair whose anchor
        has at least one negative, in lexicographic (a, p) order. Ties go to the lowest index.

    Raises:
        ValueError: ``dist`` is not (N, N) or ``labels`` is not (N,).
    """
    _check_dist(dist, labels)
    pos, neg = _pos_neg_masks(labels)
    pos &= neg.any(dim=1, keepdim=True)  # anchors without a negative give no triplet
    a, p = pos.nonzero(as_tuple=True)  # (T,), (T,)
    d_ap = dist[a, p][:, None]  # (T, 1)
    d_an = dist[a]  # (T, N)
    is_neg = neg[a]  # (T, N)
    semi = is_neg & (d_an > d_ap) & (d_an < d_ap + margin)  # (T, N)
    semi_idx = d_an.masked_fill(~semi, float("inf")).argmin(dim=1)  # (T,)
    hard_idx = d_an.masked_fill(~is_neg, float("inf")).argmin(dim=1)  # (T,)
    n = torch.where(semi.any(dim=1), semi_idx, hard_idx)
    return a, p, n


@torch.no_grad()
def mine_hard_negatives(
    anchor_pos_dist: Tensor,
    anchor_cand_dist: Tensor,
    valid: Tensor,
    *,
    strategy: str = "batch-hard",
    margin: float = 0.2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one negative per anchor out of that anchor's own candidates.

    This is the miner for outfits: for each (anchor, positive) pair, the candidates are M items of the
    positive's slot (e.g. other items of the batch of that type), and one of them becomes the negative.

    Args:
        anchor_pos_dist: (B,) distance of each anchor to its positive.
        anchor_cand_dist: (B, M) distance of each anchor to each of its M candidates.
        valid: (B, M) bool; False for padding or for candidates that must not be negatives (e.g. the
            positive itself, or items of the same outfit).
        strategy: ``"batch-hard"`` -- the closest valid candidate; ``"semi-hard"`` -- the closest
            candidate with ``d(a,p) < d(a,n) < d(a,p) + margin``, falling back to the closest valid
            candidate when none is in that band (as :func:`mine_semi_hard`); ``"random"`` -- uniform
            among the valid candidates (seeded by ``generator``).
        margin: the triplet margin, used by ``"semi-hard"``.
        generator: optional ``torch.Generator`` for ``"random"`` (same device as the inputs).

    Returns:
        (B,) int64 column indices into the candidates.

    Raises:
        ValueError: shapes that do not match, an unknown strategy, or a row with no valid candidate
            (filter those rows out first, e.g. with ``valid.any(1)``).
    """
    if strategy not in MINING_STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid strategies: {', '.join(MINING_STRATEGIES)}")
    if anchor_cand_dist.dim() != 2:
        raise ValueError(f"anchor_cand_dist must be (B, M), got shape {tuple(anchor_cand_dist.shape)}")
    if anchor_pos_dist.shape != anchor_cand_dist.shape[:1]:
        b = anchor_cand_dist.shape[0]
        raise ValueError(f"anchor_pos_dist must be (B,) = ({b},), got {tuple(anchor_pos_dist.shape)}")
    if valid.shape != anchor_cand_dist.shape or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be a bool tensor of shape {tuple(anchor_cand_dist.shape)}, "
            f"got {valid.dtype} {tuple(valid.shape)}"
        )
    if not bool(valid.any(dim=1).all()):
        rows = (~valid.any(dim=1)).nonzero(as_tuple=True)[0].tolist()
        raise ValueError(f"rows without any valid candidate: {rows[:10]}")

    if strategy == "random":
        return torch.multinomial(valid.to(anchor_cand_dist.dtype), 1, generator=generator).squeeze(1)  # (B,)
    hard_idx = anchor_cand_dist.masked_fill(~valid, float("inf")).argmin(dim=1)  # (B,)
    if strategy == "batch-hard":
        return hard_idx
    d_ap = anchor_pos_dist[:, None]  # (B, 1)
    semi = valid & (anchor_cand_dist > d_ap) & (anchor_cand_dist < d_ap + margin)  # (B, M)
    semi_idx = anchor_cand_dist.masked_fill(~semi, float("inf")).argmin(dim=1)  # (B,)
    return torch.where(semi.any(dim=1), semi_idx, hard_idx)


# -----------------------------------------------------------------------------
# online batch losses


def _batch_dist(embeddings: Tensor, labels: Tensor, distance: Distance, normalize: bool) -> Tensor:
    _check_batch(embeddings, labels)
    check_distance(distance)
    if normalize:
        embeddings = F.normalize(embeddings, dim=-1)
    return pairwise_distances(embeddings, distance=distance)  # (N, N)


def batch_all_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    *,
    distance: Distance = "euclidean",
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """Batch-all triplet loss (Hermans, Beyer & Leibe 2017).

    ``L = Σ_{valid (a,p,n)} max(0, d(a,p) − d(a,n) + m) / #{triplets with loss > 0}`` -- the mean over
    the triplets that still contribute, so easy triplets do not dilute the gradient.

    Args:
        embeddings: (N, D) floating point.
        labels: (N,) int64; same label = positive.
        margin: m.
        distance: one of :data:`ml.distances.DISTANCES` (Hermans et al. recommend the plain Euclidean distance).
        normalize: L2-normalise the embeddings onto the unit hypersphere first.

    Returns:
        ``(loss, fraction_positive)``: the scalar loss, and the detached fraction of valid triplets with
        a positive loss (0 when there is no valid triplet). A batch without a valid triplet, or where
        every triplet is already satisfied, gives a loss of 0 that still backpropagates (zero
        gradients), not NaN. Memory is O(N³).

    Raises:
        ValueError: embeddings not (N, D), labels not (N,), or an unknown distance.
    """
    dist = _batch_dist(embeddings, labels, distance, normalize)  # (N, N)
    mask = triplet_mask(labels)  # (N, N, N)
    losses = (dist[:, :, None] - dist[:, None, :] + margin).clamp(min=0.0) * mask  # (N, N, N)
    num_positive = (losses > 1e-16).sum()
    num_valid = mask.sum()
    fraction = (num_positive.to(dist.dtype) / num_valid.clamp(min=1).to(dist.dtype)).detach()
    loss = losses.sum() / num_positive.clamp(min=1).to(dist.dtype)
    return loss, fraction


def batch_hard_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    *,
    distance: Distance = "euclidean",
    normalize: bool = True,
) -> Tensor:
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017).

    ``L = mean_a max(0, max_{p: y_p = y_a} d(a,p) − min_{n: y_n ≠ y_a} d(a,n) + m)`` over the anchors
    that have at least one positive and one negative (see :func:`mine_batch_hard`).

    Args:
        embeddings: (N, D) floating point.
        labels: (N,) int64; same label = positive.
        margin: m.
        distance: one of :data:`ml.distances.DISTANCES`.
        normalize: L2-normalise the embeddings onto the unit hypersphere first.

    Returns:
        Scalar loss. No valid anchor -> 0 that still backpropagates (zero gradients), not NaN.

    Raises:
        ValueError: embeddings not (N, D), labels not (N,), or an unknown distance.
    """
    dist = _batch_dist(embeddings, labels, distance, normalize)  # (N, N)
    a, p, n = mine_batch_hard(dist.detach(), labels)
    if a.numel() == 0:
        return _zero_with_grad(dist)
    return (dist[a, p] - dist[a, n] + margin).clamp(min=0.0).mean()


def semi_hard_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    *,
    distance: Distance = "euclidean",
    normalize: bool = True,
) -> Tensor:
    """Triplet loss on semi-hard negatives (Schroff, Kalenichenko & Philbin 2015, FaceNet).

    For every positive pair (a, p) the negative is chosen by :func:`mine_semi_hard`: the closest
    negative with ``d(a,p) < d(a,n) < d(a,p) + m``, or -- when there is none -- the hardest (closest)
    negative of the anchor. ``L = mean_{(a,p)} max(0, d(a,p) − d(a,n) + m)``. FaceNet itself uses the
    squared Euclidean distance (``distance="squared_euclidean"``).

    Args:
        embeddings: (N, D) floating point.
        labels: (N,) int64; same label = positive.
        margin: m.
        distance: one of :data:`ml.distances.DISTANCES`.
        normalize: L2-normalise the embeddings onto the unit hypersphere first (FaceNet does).

    Returns:
        Scalar loss. No valid triplet -> 0 that still backpropagates (zero gradients), not NaN.

    Raises:
        ValueError: embeddings not (N, D), labels not (N,), or an unknown distance.
    """
    dist = _batch_dist(embeddings, labels, distance, normalize)  # (N, N)
    a, p, n = mine_semi_hard(dist.detach(), labels, margin)
    if a.numel() == 0:
        return _zero_with_grad(dist)
    return (dist[a, p] - dist[a, n] + margin).clamp(min=0.0).mean()


# -----------------------------------------------------------------------------
# offline mining


def sample_offline_triplets(labels: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n`` random valid triplets up front (offline mining), uniformly at each step.

    The anchor is uniform over the items whose label has at least one other item and whose label is not
    the only one; the positive is uniform over the anchor's other same-label items; the negative is
    uniform over all items with a different label. O(N + n) time and memory (no N×N matrix).

    Args:
        labels: (N,) integer labels (int64).
        n: number of triplets to draw (>= 0).
        generator: optional ``torch.Generator`` (same device as ``labels``) for reproducibility.

    Returns:
        (n, 3) int64 tensor of ``(anchor, positive, negative)`` indices into ``labels``.

    Raises:
        ValueError: ``labels`` is not 1-D, ``n < 0``, or no valid triplet exists (every label is a
            singleton, or there is only one label).
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be (N,), got shape {tuple(labels.shape)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    device = labels.device
    num = labels.shape[0]
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)  # (N,) item indices grouped by label
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num, device=device)  # (N,) position of each item in `order`
    starts = torch.cumsum(counts, 0) - counts  # (C,) first position of each label in `order`

    item_count = counts[inverse]  # (N,)
    candidates = ((item_count >= 2) & (item_count < num)).nonzero(as_tuple=True)[0]
    if candidates.numel() == 0:
        raise ValueError("no valid triplet: need a label with >= 2 items and at least two labels")

    def uniform_below(k: Tensor) -> Tensor:  # an integer in [0, k) per entry of k
        u = torch.rand(k.shape, generator=generator, device=device, dtype=torch.float64)
        return torch.minimum((u * k).long(), k - 1)

    pick = torch.randint(candidates.numel(), (n,), generator=generator, device=device)
    anchors = candidates[pick]  # (n,)
    cls = inverse[anchors]  # (n,)
    start, count = starts[cls], counts[cls]  # (n,), (n,)
    # positive: one of the count-1 other items of the class, skipping the anchor's own position
    r = uniform_below(count - 1)
    r = r + (r >= rank[anchors] - start).long()
    positives = order[start + r]
    # negative: one of the num-count items outside the class's block [start, start + count)
    r = uniform_below(num - count)
    r = r + (r >= start).long() * count
    negatives = order[r]
    return torch.stack([anchors, positives, negatives], dim=1)  # (n, 3)
