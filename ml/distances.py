"""Distances between embeddings, shared by the miners (:mod:`ml.mining`) and the losses (:mod:`ml.losses`).

* :func:`pairwise_distances`: all pairs of rows of one matrix, (N, D) -> (N, N);
* :func:`paired_distances`: row by row, (..., D) with (..., D) -> (...);
* :func:`safe_sqrt`: a square root with a finite gradient at 0 (identical embeddings).

Three distances (:data:`DISTANCES`): ``"euclidean"`` ``‖a−b‖``, ``"squared_euclidean"`` ``‖a−b‖²`` and
``"inner_product"`` ``1 − <a, b>`` (cosine distance for unit vectors). Nothing here normalises its inputs.

Plain PyTorch, no Django. Tests: ``python -m pytest tests/ml/test_mining.py``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "DISTANCES",
    "Distance",
    "check_distance",
    "paired_distances",
    "pairwise_distances",
    "safe_sqrt",
]

Distance = Literal["euclidean", "squared_euclidean", "inner_product"]

#: The distances every function here understands. ``inner_product`` is ``1 - <a, b>``: cosine distance
#: for unit vectors, and for the type-aware masked vectors it ranks exactly like pgvector's
#: ``MaxInnerProduct`` (``<#>``) ordering.
DISTANCES: tuple[str, ...] = ("euclidean", "squared_euclidean", "inner_product")


def check_distance(distance: str) -> None:
    """ValueError unless ``distance`` is one of :data:`DISTANCES` (the message lists them)."""
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; valid distances: {', '.join(DISTANCES)}")


def safe_sqrt(sq: Tensor) -> Tensor:
    """Square root whose gradient is finite (zero) where the input is zero.

    ``torch.sqrt`` has an infinite derivative at 0, so identical embeddings (distance exactly 0)
    would put NaN into the gradients. This is the masked-sqrt ("double where") trick: entries ``<= 0``
    return exactly 0 with gradient 0; everywhere else it is ``sqrt``.

    Args:
        sq: squared distances, any shape, floating point; small negative values from round-off are
            treated as 0.

    Returns:
        Tensor of the same shape and dtype.
    """
    zero = sq <= 0
    safe = torch.where(zero, torch.ones_like(sq), sq)  # sqrt never sees a 0
    return torch.where(zero, torch.zeros_like(sq), torch.sqrt(safe))


def pairwise_distances(x: Tensor, squared: bool = False, distance: Distance = "euclidean") -> Tensor:
    """All pairwise distances between the rows of ``x``.

    Args:
        x: (N, D) floating point embeddings.
        squared: shorthand for ``distance="squared_euclidean"`` (the Hermans / FaceNet spelling);
            only valid with a Euclidean distance.
        distance: ``"euclidean"`` ``‖a−b‖``, ``"squared_euclidean"`` ``‖a−b‖²`` or ``"inner_product"``
            ``1 − <a, b>`` (cosine distance on the unit sphere; no normalisation is done here).

    Returns:
        (N, N) distances, same dtype as ``x``. For the Euclidean distances the diagonal is exactly 0,
        the matrix is clamped at 0 (round-off of the Gram-matrix formula) and the square root is
        :func:`safe_sqrt`, so gradients stay finite when two rows coincide. For ``inner_product``
        the diagonal is ``1 − ‖x_i‖²`` (0 only for unit vectors).

    Raises:
        ValueError: ``x`` is not 2-D, ``distance`` is unknown, or ``squared`` is combined with
            ``inner_product``.
    """
    check_distance(distance)
    if x.dim() != 2:
        raise ValueError(f"x must be (N, D), got shape {tuple(x.shape)}")
    if squared:
        if distance == "inner_product":
            raise ValueError("squared=True only applies to the Euclidean distances")
        distance = "squared_euclidean"
    gram = x @ x.t()  # (N, N)
    if distance == "inner_product":
        return 1.0 - gram
    sq_norm = torch.diagonal(gram)  # (N,)
    sq = sq_norm[:, None] - 2.0 * gram + sq_norm[None, :]  # (N, N)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    sq = sq.clamp(min=0.0).masked_fill(eye, 0.0)
    if distance == "squared_euclidean":
        return sq
    return safe_sqrt(sq)


def paired_distances(a: Tensor, b: Tensor, distance: Distance = "euclidean") -> Tensor:
    """Distances between corresponding rows of ``a`` and ``b`` (broadcast over leading dimensions).

    Computed from the difference vectors (not the Gram trick), so the value is exact at zero distance.
    Typical uses: (B, D) with (B, D) -> (B,); anchors (B, 1, D) with candidates (B, M, D) -> (B, M).

    Args:
        a: (..., D) floating point.
        b: (..., D) floating point, broadcastable with ``a``.
        distance: one of :data:`DISTANCES`.

    Returns:
        (...) distances in the dtype of the inputs; Euclidean uses :func:`safe_sqrt`.

    Raises:
        ValueError: unknown ``distance`` or last dimensions that differ.
    """
    check_distance(distance)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"feature dimensions differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if distance == "inner_product":
        return 1.0 - (a * b).sum(-1)
    sq = (a - b).pow(2).sum(-1)
    if distance == "squared_euclidean":
        return sq
    return safe_sqrt(sq)
