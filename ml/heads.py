"""Trainable heads on top of the (frozen) open_clip towers.

Two spaces, because similar is not compatible (two tops look alike; a top and jeans go together):

* **General space** (``E`` = the model's embed_dim): image and text vectors aligned by the symmetric
  InfoNCE/CLIP loss, used for similar items and text search. Each head is a linear map initialised
  to the identity, so an untrained head reproduces the model's own (zero-shot) space.
* **Type-aware compatibility space** (``C`` = compat_dim), after Vasileva et al. 2018, "Learning
  Type-Aware Embeddings for Fashion Compatibility" (ECCV): an item vector ``f`` (unit norm) and, for
  every unordered pair of slots (a, b), a non-negative mask ``m_ab`` whose square has mean 1. The pair
  score is ``s(i, j) = <f_i ⊙ m_ab, f_j ⊙ m_ab> = <f_i ⊙ m_ab², f_j>``, a weighted cosine.

  Because the score is linear in ``f_j``, the total score of a candidate ``x`` of slot ``t`` with an
  outfit ``{i}`` is ``Σ_i s(i, x) = <Σ_i f_i ⊙ m_{s_i t}², f_x> = <q_t, f_x>``: complete-the-look is
  one pgvector inner-product query per missing slot, with the query vector ``q_t`` from
  :meth:`RecommenderHeads.slot_query`.

Heads are saved and loaded with :func:`save_heads` / :func:`load_heads` (what serving needs, without the
trainer); :func:`zero_shot_heads` gives untrained ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ml.slots import SLOTS


class RecommenderHeads(nn.Module):
    """General image/text projections and the type-aware compatibility embedding.

    Args:
        embed_dim: E, dimension of the towers' outputs and of the general space.
        compat_dim: C, dimension of the compatibility space.
        num_slots: S, number of outfit slots (``len(ml.slots.SLOTS)``).
        hidden: width of the compatibility MLP.
        normalize: L2-normalise outputs onto the unit hypersphere (on by default).

    Attributes:
        tower_state: fine-tuned tower weights that go with these heads (a partial model state dict from
            ``ml.towers.TowerTuner.state_dict``), or ``None`` for frozen towers. Saved and loaded with the
            heads (:func:`save_heads` / :func:`load_heads`); ``ml.inference.Embedder`` serves with them.
            Not part of ``state_dict()``.
    """

    def __init__(
        self,
        embed_dim: int,
        compat_dim: int = 128,
        num_slots: int = len(SLOTS),
        hidden: int = 512,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.compat_dim = compat_dim
        self.num_slots = num_slots
        self.normalize = normalize
        self.tower_state: dict[str, torch.Tensor] | None = None
        self.image_proj = nn.Linear(embed_dim, embed_dim)
        self.text_proj = nn.Linear(embed_dim, embed_dim)
        for lin in (self.image_proj, self.text_proj):
            nn.init.eye_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.compat_mlp = nn.Sequential(
            nn.Linear(2 * embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, compat_dim)
        )
        # mask logits for ordered pairs; symmetrised in pair_mask(); sigmoid(2)≈0.88 starts near all-ones
        self.mask_logits = nn.Parameter(torch.full((num_slots, num_slots, compat_dim), 2.0))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def general(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project tower outputs into the general space.

        Args:
            image: (N, E) float32 image-tower outputs (unnormalised).
            text: (N, E) float32 text-tower outputs (unnormalised).

        Returns:
            ``(image_vec, text_vec)``, each (N, E) float32, unit norm when ``normalize``.
        """
        return self.image_vec(image), self.text_vec(text)

    def image_vec(self, image: torch.Tensor) -> torch.Tensor:
        """The image side of :meth:`general`: (N, E) float32 image-tower outputs → (N, E) float32."""
        return self._norm(self.image_proj(F.normalize(image, dim=-1)))

    def text_vec(self, text: torch.Tensor) -> torch.Tensor:
        """The text side of :meth:`general`: (N, E) float32 text-tower outputs → (N, E) float32."""
        return self._norm(self.text_proj(F.normalize(text, dim=-1)))

    def compat(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Item vectors in the compatibility space: (N, E), (N, E) float32 → (N, C) float32, unit norm."""
        x = torch.cat([F.normalize(image, dim=-1), F.normalize(text, dim=-1)], dim=-1)  # (N, 2E)
        return self._norm(self.compat_mlp(x))  # (N, C)

    def pair_mask(self, slot_a: torch.Tensor, slot_b: torch.Tensor) -> torch.Tensor:
        """Masks m_ab for slot pairs: (B,) int64, (B,) int64 → (B, C) float32 ≥ 0, symmetric in a, b.

        ``m² = w / mean(w)`` with ``w = sigmoid(logits)``: the squared mask has mean 1 over the C
        dimensions, so a pair score is a *weighted cosine* and the masks cannot shrink to zero (with
        free-scale masks a triplet loss is minimised by collapsing every score to 0, stalling at the margin).
        """
        logits = self.mask_logits[slot_a, slot_b] + self.mask_logits[slot_b, slot_a]  # (B, C)
        w = torch.sigmoid(0.5 * logits)
        return (w / w.mean(-1, keepdim=True)).sqrt()

    def pair_score(
        self, f_a: torch.Tensor, f_b: torch.Tensor, slot_a: torch.Tensor, slot_b: torch.Tensor
    ) -> torch.Tensor:
        """Compatibility scores ``<f_a ⊙ m², f_b>``: (B, C), (B, C), (B,), (B,) → (B,) float32 (a weighted
        cosine: 1 for identical vectors, typically within [-1, 1])."""
        m2 = self.pair_mask(slot_a, slot_b).pow(2)  # (B, C)
        return (f_a * m2 * f_b).sum(-1)

    def slot_query(self, f_items: torch.Tensor, item_slots: torch.Tensor, target_slot: int) -> torch.Tensor:
        """Query vector for complete-the-look in ``target_slot``: ``q_t = Σ_i f_i ⊙ m_{s_i t}²``.

        Args:
            f_items: (K, C) float32 compatibility vectors of the given items.
            item_slots: (K,) int64 their slot indices.
            target_slot: the slot index t to fill.

        Returns:
            (C,) float32; ``<q_t, f_x>`` is the summed pair score of candidate x with all K items.
        """
        t = torch.full_like(item_slots, target_slot)
        return (f_items * self.pair_mask(item_slots, t).pow(2)).sum(0)

    def mask_table(self) -> torch.Tensor:
        """All squared pair masks, (S, S, C) float32: what the serving side needs besides item vectors."""
        s = torch.arange(self.num_slots)
        a, b = torch.meshgrid(s, s, indexing="ij")
        return self.pair_mask(a.reshape(-1), b.reshape(-1)).pow(2).reshape(self.num_slots, self.num_slots, -1)


def zero_shot_heads(embed_dim: int, compat_dim: int, seed: int = 0) -> RecommenderHeads:
    """Untrained heads (identity general projections, seeded random compatibility MLP).

    Args:
        embed_dim: E, the towers' output dimension.
        compat_dim: C, the compatibility space's dimension.
        seed: passed to ``torch.manual_seed`` (the global torch RNG) before the weights are drawn.

    Returns:
        :class:`RecommenderHeads` in eval mode, float32 on the CPU: the towers' own (zero-shot) space.
    """
    torch.manual_seed(seed)
    return RecommenderHeads(embed_dim, compat_dim).eval()


def save_heads(path: Path, heads: RecommenderHeads, meta: dict[str, Any]) -> None:
    """Save trained heads with their metadata (model config, train config, metrics) atomically.

    Fine-tuned tower weights (``heads.tower_state``, from tower fine-tuning) are saved with them.

    Args:
        path: the file to write (its folder is created); written as ``path.with_suffix(".tmp")``, then
            renamed, so a reader never sees half a file.
        heads: the heads; their float32 ``state_dict()``, dimensions and ``tower_state`` are saved.
        meta: any picklable metadata, returned as is by :func:`load_heads`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "state_dict": heads.state_dict(),
            "embed_dim": heads.embed_dim,
            "compat_dim": heads.compat_dim,
            "num_slots": heads.num_slots,
            "normalize": heads.normalize,
            "meta": meta,
            "towers": heads.tower_state,
        },
        tmp,
    )
    tmp.replace(path)


def load_heads(path: Path | str) -> tuple[RecommenderHeads, dict[str, Any]]:
    """Load heads saved by :func:`save_heads`, for inference (serving loads weights with this alone).

    Returns:
        ``(heads, meta)``: :class:`RecommenderHeads` on the CPU (float32, eval mode, no gradients) with
        their tuned tower weights in ``heads.tower_state`` (``None`` for frozen towers), and the metadata
        dict given to :func:`save_heads`.

    Raises:
        FileNotFoundError: the file is missing.
    """
    ck = torch.load(path, map_location="cpu", weights_only=False)
    heads = RecommenderHeads(ck["embed_dim"], ck["compat_dim"], ck["num_slots"], normalize=ck["normalize"])
    heads.load_state_dict(ck["state_dict"])
    heads.eval().requires_grad_(False)  # loaded for inference
    heads.tower_state = ck.get("towers")
    return heads, ck["meta"]
