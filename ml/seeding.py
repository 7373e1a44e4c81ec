"""The random streams of a training run: seeding them all, and saving and restoring them for an exact
resume from a checkpoint."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

__all__ = ["deterministic_algorithms", "rng_restore", "rng_state", "seed_everything"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def rng_state(gen: torch.Generator, rng: np.random.Generator) -> dict[str, Any]:
    """Every random stream a run draws from (for an exact resume)."""
    state = {
        "gen": gen.get_state(),
        "numpy": rng.bit_generator.state,
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "np_global": np.random.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_restore(state: dict[str, Any], gen: torch.Generator, rng: np.random.Generator) -> None:
    """Put every random stream back where :func:`rng_state` saw it."""
    gen.set_state(state["gen"].cpu())
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(state["np_global"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Within the block torch runs the deterministic implementation of every op that has one
    (``torch.use_deterministic_algorithms(True, warn_only=True)``: an op without one warns instead of
    failing); the previous setting is restored after.

    Without it, a CPU run with several threads accumulated some gradients in a varying order: two
    trainings of the same data and seed differed from the first epoch (compatibility loss 2.8530 and
    2.8542), and early stopping ended ``make demo``'s training after 21, 22 or 30 epochs. With it, or with
    one thread, they repeat exactly. On CUDA, cuBLAS also needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` to
    be deterministic (torch's "Reproducibility" notes); without it, torch warns.
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
