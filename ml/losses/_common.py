"""Input checks, reductions and normalisation shared by the losses of :mod:`ml.losses`."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

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


def _check_candidates(anchor: Tensor, candidates: Tensor) -> None:
    """Raise ValueError unless ``candidates`` is (B, M, C) with the B and C of ``anchor`` (B, C)."""
    if candidates.dim() != 3 or candidates.shape[::2] != anchor.shape:
        raise ValueError(
            f"candidates must be (B, M, C) with B, C of anchor {tuple(anchor.shape)}, got {tuple(candidates.shape)}"
        )


def _check_labels(x: Tensor, labels: Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"features must be (B, D), got shape {tuple(x.shape)}")
    if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be (B,) with B = {x.shape[0]}, got shape {tuple(labels.shape)}")


def _maybe_normalize(normalize: bool, *xs: Tensor) -> tuple[Tensor, ...]:
    return tuple(F.normalize(x, dim=-1) for x in xs) if normalize else xs
