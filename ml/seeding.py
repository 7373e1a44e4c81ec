"""The random streams of a training run: seeding them all, and saving and restoring them for an exact
resume from a checkpoint."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["rng_restore", "rng_state", "seed_everything"]


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
