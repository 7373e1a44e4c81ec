"""Fine-tuning loop: symmetric image↔text InfoNCE + a type-aware compatibility loss (candidate InfoNCE or triplet).

By default the towers are frozen and their outputs cached (``ml.features``), so a run trains only the
heads (``ml.heads``). No Django: ``python -m ml.train --features f.npz`` (a ``TrainData.save`` file),
``--hm-root ../shared/data/hm`` or ``--mango-root ../shared/data/mango`` (a sample folder).
With ``--unfreeze-last-blocks k`` / ``--unfreeze-text-layers k`` (a GPU run) the last blocks of the towers
are trained end to end from the photos and texts (``ml.towers``); the data then needs the image paths
and texts (``--hm-root`` provides them), and the saved heads file carries the tuned tower weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.config import ModelConfig, TrainConfig
from ml.dataset import (
    TrainData,
    train_data_from_hm,
    training_rows,
)
from ml.evaluate import evaluate_all, markdown_report, write_report
from ml.heads import RecommenderHeads, load_heads, save_heads
from ml.losses import CenterLoss, SoftmaxClassificationLoss
from ml.mango import train_data_from_mango
from ml.metrics import fitb_accuracy_heads, text_to_image_recall
from ml.objectives import compat_loss, general_loss, takes_generator
from ml.protocols import validation_questions
from ml.sampling import OutfitNegativeSampler, training_pairs
from ml.seeding import deterministic_algorithms, rng_restore, rng_state, seed_everything
from ml.slots import SLOTS
from ml.views import PhotoViews, TextViews

logger = logging.getLogger(__name__)

#: State-dict prefixes of the compatibility head (``RecommenderHeads.compat_mlp`` and the pair masks).
_COMPAT_PARAMS = ("compat_mlp.", "mask_logits")
_HISTORY = ("loss", "infonce", "compat", "type", "view", "val_fitb", "val_r10", "val", "temperature")


@dataclass
class TrainResult:
    """A finished run: the trained heads, per-epoch history and where it stopped."""

    heads: RecommenderHeads
    history: dict[str, list[float]]
    steps: int
    best_epoch: int
    best_val: float
    seconds: float
    samples_per_s: float


class _Run:
    """One training run: what it trains, the data it reads, its random streams and its progress.

    Attributes:
        heads, clip_loss (``cfg.general_loss``), type_loss, center_loss (None without ``w_center``),
            compat_loss, opt, scaler: what is trained, on ``device``; tuner: the
            towers' unfrozen tops (``ml.towers.TowerTuner``), None for frozen towers.
        gen, rng: the seeded torch / NumPy streams (epoch order and mining / triplet sampling).
        image, text: (N, E) float32 feature bank on ``device`` (a private copy when the towers are tuned);
            slots, types: (N,) int64; pairs: (P, 2) int64 outfit pairs (``ml.sampling.training_pairs``: outfit
            slots, audiences that fit, each with a negative left); sampler: their candidate negatives.
        train_items (T,), val_items (V,), val_rows (R,): int64 rows (:func:`ml.dataset.training_rows`).
        epoch (the last finished, -1 before any), step, history, best_*: the progress a checkpoint saves
            (``best_compat``: the compatibility head's parameters at its best validation FITB);
            stale: epochs in a row without a better ``best_val`` nor FITB (early stopping; a resumed run
            starts at 0).
    """

    def __init__(
        self, data: TrainData, cfg: TrainConfig, bundle: Any, cache_dir: Any = None, init: Any = None
    ) -> None:
        self.cfg = cfg
        self.gen = seed_everything(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        tuner = None
        if cfg.tunes_towers:
            from ml.towers import tower_tuner  # lazy: open_clip (~3 s), only for runs that tune the towers

            tuner = tower_tuner(data, cfg, bundle, cache_dir)
        self.tuner = tuner
        self.device = device = tuner.device if tuner is not None else torch.device("cpu")
        # the modules, drawn from the seeded global torch RNG in this order
        e = data.image.shape[1]
        heads = RecommenderHeads(e, cfg.compat_dim, num_slots=len(SLOTS), normalize=cfg.normalize)
        if init is not None:  # continue from trained heads (their tower weights are the bundle's business)
            heads.load_state_dict(init.state_dict())
        self.heads = heads.to(device)
        self.clip_loss, self.compat_loss = general_loss(cfg).to(device), compat_loss(cfg)
        n_types = int(data.types.max()) + 1 if len(data.types) else 1
        self.type_loss = SoftmaxClassificationLoss(e, n_types).to(device)
        self.center_loss = CenterLoss(n_types, e, cfg.normalize).to(device) if cfg.w_center > 0 else None
        self.opt = self.build_optimizer()
        fp16 = tuner is not None and tuner.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)  # fp16 only; bf16 needs no loss scaling
        # the data
        self.types = torch.from_numpy(data.types.astype(np.int64)).to(device)
        self.image = torch.from_numpy(np.ascontiguousarray(data.image, dtype=np.float32))
        self.text = torch.from_numpy(np.ascontiguousarray(data.text, dtype=np.float32))
        if tuner is not None:  # a private, writable feature bank (never the caller's arrays)
            self.image, self.text = self.image.to(device, copy=True), self.text.to(device, copy=True)
        self.slots = torch.from_numpy(data.slots.astype(np.int64)).to(device)
        self.photo_views = PhotoViews(data, cfg, device, tuner) if cfg.w_view > 0 else None  # ml.views
        self.text_views = TextViews(data, cfg, device) if cfg.p_text_view > 0 else None
        self.sampler = OutfitNegativeSampler(data.slots, data.outfits, self.rng)
        pairs = training_pairs(data.outfits, data.slots, data.attrs.get("audience"))
        self.pairs = pairs[self.sampler.has_negatives(pairs)]
        self.val_questions = validation_questions(data, seed=cfg.seed + 1)
        train_items, self.val_items, self.val_rows = training_rows(data, self.val_questions)
        self.train_items = torch.from_numpy(train_items)
        self.batch_size = min(cfg.batch_size, len(self.train_items))
        self.steps_per_epoch = max(1, len(self.train_items) // self.batch_size)
        # the progress
        self.epoch, self.step, self.stale = -1, 0, 0
        self.history: dict[str, list[float]] = {k: [] for k in _HISTORY}
        self.best_val, self.best_epoch = -math.inf, -1
        self.best_state = {k: v.clone() for k, v in self.heads.state_dict().items()}
        self.best_fitb, self.best_compat_epoch, self.best_compat = -math.inf, -1, {}
        self.best_towers = tuner.state_dict() if tuner is not None else None

    def build_optimizer(self) -> torch.optim.AdamW:
        """AdamW over the heads' and losses' parameters at ``cfg.lr``, and the unfrozen tower parameters
        (if any) in their own group at ``cfg.tower_lr``."""
        losses = (self.clip_loss, self.type_loss, self.center_loss or nn.Identity())
        params = [*self.heads.parameters(), *(p for m in losses for p in m.parameters())]
        groups: list[dict[str, Any]] = [{"params": params, "lr": self.cfg.lr}]
        if self.tuner is not None:
            groups.append({"params": self.tuner.parameters(), "lr": self.cfg.tower_lr})
        return torch.optim.AdamW(groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def compat_loss_of_batch(self) -> torch.Tensor:
        """The compatibility loss (``cfg.compat_loss``: candidate InfoNCE or type-aware triplet) of B random
        outfit pairs, each anchor with ``cfg.n_candidates`` candidate negatives
        (``ml.sampling.OutfitNegativeSampler``: of its positive's slot and popularity, never a known
        partner of the anchor), in the pair's masked subspace: a scalar."""
        bs, heads, device = self.batch_size, self.heads, self.device
        pi = self.pairs[self.rng.integers(len(self.pairs), size=bs)]  # (B, 2)
        a, p = torch.from_numpy(pi[:, 0]), torch.from_numpy(pi[:, 1])
        cand = torch.from_numpy(self.sampler.sample(pi[:, 0], pi[:, 1], self.cfg.n_candidates))  # (B, M)
        uniq, inv = torch.unique(torch.cat([a, p, cand.reshape(-1)]), return_inverse=True)
        uniq, inv, a, p = uniq.to(device), inv.to(device), a.to(device), p.to(device)
        f = heads.compat(self.image[uniq], self.text[uniq])  # (U, C)
        fa, fp = f[inv[:bs]], f[inv[bs : 2 * bs]]
        fc = f[inv[2 * bs :]].view(bs, cand.shape[1], -1)  # (B, M, C)
        m = heads.pair_mask(self.slots[a], self.slots[p])  # (B, C): the negative shares the positive's slot
        return self.compat_loss(fa, fp, fc, m, **self._gen_kw(self.compat_loss))

    def _gen_kw(self, loss: nn.Module) -> dict[str, Any]:
        return {"generator": self.gen} if takes_generator(loss) else {}

    def losses(self, idx: torch.Tensor, f_img: torch.Tensor, f_txt: torch.Tensor) -> dict[str, torch.Tensor]:
        """The losses of one step on rows (B,) int64 and their (B, E) tower outputs: scalars
        ``{"loss" (the weighted sum, with the center loss), "infonce" (the general loss), "compat", "type",
        "view" (NT-Xent between two views of each batch photo that has views, ``cfg.w_view``)}``."""
        cfg = self.cfg
        if self.text_views is not None:
            f_txt = self.text_views.swap(idx, f_txt, self.gen)
        img_v, txt_v = self.heads.general(f_img, f_txt)  # (B, E) each
        l_nce = self.clip_loss(img_v, txt_v, **self._gen_kw(self.clip_loss))
        l_type = torch.zeros((), device=self.device)
        t_idx = self.types[idx.to(self.device)]
        if cfg.w_type > 0:  # auxiliary product-type classification of both modalities
            l_type = (self.type_loss(img_v, t_idx) + self.type_loss(txt_v, t_idx)) / 2
        loss = cfg.w_type * l_type
        if self.center_loss is not None:  # auxiliary pull towards each product type's center
            loss = loss + cfg.w_center * (self.center_loss(img_v, t_idx) + self.center_loss(txt_v, t_idx)) / 2
        l_compat = torch.zeros((), device=self.device)
        if len(self.pairs) and cfg.w_compat > 0:
            l_compat = self.compat_loss_of_batch()
        l_view = torch.zeros((), device=self.device)
        if self.photo_views is not None:
            l_view = self.photo_views.batch_loss(idx, self.heads, self.types, self.type_loss, self.gen)
        loss = loss + cfg.w_infonce * l_nce + cfg.w_compat * l_compat + cfg.w_view * l_view
        return {"loss": loss, "infonce": l_nce, "compat": l_compat, "type": l_type, "view": l_view}

    def train_epoch(self) -> tuple[dict[str, float], int]:
        """One pass over the training items in a seeded order, ending early at ``cfg.max_steps``.

        Returns:
            ``({"loss", "infonce", "compat", "type", "view": mean over the epoch's steps}, steps done)``.
        """
        self.heads.train()
        bs = self.batch_size
        perm = self.train_items[torch.randperm(len(self.train_items), generator=self.gen)]
        batches = [perm[it * bs : (it + 1) * bs] for it in range(self.steps_per_epoch)]  # (B,) each
        if self.tuner is not None:  # tower outputs of the batch, computed now, with gradients
            source = self.tuner.batches(batches)
        else:  # cached frozen-tower features
            source = ((idx, self.image[idx], self.text[idx]) for idx in batches)
        sums = {"loss": 0.0, "infonce": 0.0, "compat": 0.0, "type": 0.0, "view": 0.0}
        done = 0
        for idx, f_img, f_txt in source:  # (B,), (B, E), (B, E)
            losses = self.losses(idx, f_img, f_txt)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.tuner is not None:  # the bank follows the towers
                with torch.no_grad():
                    dev_idx = idx.to(self.device)
                    self.image[dev_idx] = f_img.detach()
                    self.text[dev_idx] = f_txt.detach()
            self.step += 1
            done += 1
            for k in sums:
                sums[k] += losses[k].item()
            if self.cfg.max_steps and self.step >= self.cfg.max_steps:
                break
        return {k: v / max(done, 1) for k, v in sums.items()}, done

    def validate(self) -> tuple[float, float]:
        """``(fitb, r10)``: FITB accuracy of the validation outfits (NaN without any) and text→image
        Recall@10 of the validation items, with the current weights (the towers' too, when tuned)."""
        self.heads.eval()
        if self.tuner is not None:  # validation reads the current towers' features
            self.tuner.refresh(self.image, self.text, self.val_rows, batch_size=self.batch_size)
        with torch.no_grad():
            vi = torch.from_numpy(self.val_items).to(self.device)
            img_v, txt_v = self.heads.general(self.image[vi], self.text[vi])
            r10 = text_to_image_recall(img_v, txt_v, 10)
            comp = self.heads.compat(self.image, self.text)
            fitb = fitb_accuracy_heads(self.heads, comp, self.slots, self.val_questions)
        return fitb, r10

    def record_epoch(self, epoch: int, losses: dict[str, float], fitb: float, r10: float) -> None:
        """Append the epoch to the history; keep the weights when the validation score ``val`` (mean of
        FITB and Recall@10, Recall@10 alone without FITB questions) is the best so far, else count it stale."""
        val = (r10 + fitb) / 2 if not math.isnan(fitb) else r10
        for k, v in {**losses, "val_fitb": fitb, "val_r10": r10, "val": val}.items():
            self.history[k].append(v)
        self.history["temperature"].append(float(getattr(self.clip_loss, "temperature", 0.0)))
        self.epoch = epoch
        improved = False
        if val > self.best_val:
            self.best_val, self.best_epoch, improved = val, epoch, True
            self.best_state = {k: v.detach().clone() for k, v in self.heads.state_dict().items()}
            self.best_towers = self.tuner.state_dict() if self.tuner is not None else None
        if self.tuner is None and not math.isnan(fitb) and fitb > self.best_fitb:
            # the compatibility head's own best epoch (its parameters are its own on frozen towers):
            # it overfits the outfits sooner than the image↔text heads fit the texts
            self.best_fitb, self.best_compat_epoch, improved = fitb, epoch, True
            self.best_compat = {
                k: v.detach().clone()
                for k, v in self.heads.state_dict().items()
                if k.startswith(_COMPAT_PARAMS)
            }
        self.stale = 0 if improved else self.stale + 1

    def stops_early(self) -> bool:
        """``cfg.max_steps`` reached, or ``cfg.patience`` epochs in a row without a better validation score."""
        max_steps, patience = self.cfg.max_steps, self.cfg.patience
        return bool((max_steps and self.step >= max_steps) or (patience and self.stale >= patience))

    def save_checkpoint(self, directory: Path) -> None:
        """Write ``directory/last.pt`` atomically: all that :meth:`resume` needs to continue exactly."""
        directory.mkdir(parents=True, exist_ok=True)
        ck = {
            "heads": self.heads.state_dict(),
            "clip": self.clip_loss.state_dict(),
            "type": self.type_loss.state_dict(),
            "center": self.center_loss.state_dict() if self.center_loss is not None else None,
            "opt": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(self.gen, self.rng),
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "best_heads": self.best_state,
            "best_compat": self.best_compat,
            "best_fitb": self.best_fitb,
            "best_compat_epoch": self.best_compat_epoch,
            "config": self.cfg.to_dict(),
        }
        if self.tuner is not None:  # the towers' weights and the feature bank they wrote
            ck |= {"towers": self.tuner.state_dict(), "best_towers": self.best_towers}
            ck |= {"bank_image": self.image, "bank_text": self.text}
        torch.save(ck, directory / "last.pt.tmp")
        (directory / "last.pt.tmp").replace(directory / "last.pt")

    def resume(self, path: Path) -> None:
        """Continue from a :meth:`save_checkpoint` file: weights, optimiser, progress, feature bank and
        random streams. Raises ValueError when it and the config disagree on tuning the towers."""
        tuner = self.tuner
        ck = torch.load(path, map_location=self.device, weights_only=False)
        if bool(ck.get("towers")) != (tuner is not None):
            raise ValueError(
                f"{path}: checkpoint {'has' if ck.get('towers') else 'has no'} tower weights, "
                f"the config {'tunes' if tuner is not None else 'freezes'} the towers"
            )
        self.heads.load_state_dict(ck["heads"])
        self.clip_loss.load_state_dict(ck["clip"])
        self.type_loss.load_state_dict(ck["type"])
        if self.center_loss is not None and ck.get("center"):
            self.center_loss.load_state_dict(ck["center"])
        self.opt.load_state_dict(ck["opt"])
        self.epoch, self.step, self.history = ck["epoch"], ck["step"], ck["history"]
        self.best_val, self.best_epoch = ck["best_val"], ck["best_epoch"]
        self.best_state = ck.get("best_heads", self.best_state)
        self.best_compat = ck.get("best_compat", {})
        self.best_fitb, self.best_compat_epoch = (
            ck.get("best_fitb", -math.inf),
            ck.get("best_compat_epoch", -1),
        )
        if tuner is not None:
            tuner.load_state_dict(ck["towers"])
            self.best_towers = ck.get("best_towers", self.best_towers)
            self.image.copy_(ck["bank_image"])
            self.text.copy_(ck["bank_text"])
        if "scaler" in ck:
            self.scaler.load_state_dict(ck["scaler"])
        if "rng" in ck:  # continue the exact random streams (older checkpoints restart them from the seed)
            rng_restore(ck["rng"], self.gen, self.rng)

    def best_heads(self) -> RecommenderHeads:
        """The heads with the best validation weights, on the CPU in eval mode: the image↔text heads of
        the epoch with the best validation score, the compatibility head (frozen towers) of the epoch with
        the best validation FITB; with tuned towers, the towers get their best weights too, also in
        ``heads.tower_state``."""
        self.heads.load_state_dict({**self.best_state, **self.best_compat})
        heads = self.heads.cpu().eval()
        if self.tuner is not None and self.best_towers is not None:
            self.tuner.load_state_dict(self.best_towers)
            heads.tower_state = self.best_towers
        return heads


# -----------------------------------------------------------------------------
# the run


def train(
    data: TrainData,
    cfg: TrainConfig,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    bundle: Any = None,
    cache_dir: Path | None = None,
    init_heads: RecommenderHeads | None = None,
) -> TrainResult:
    """Train :class:`~ml.heads.RecommenderHeads` on cached tower outputs (and, optionally, the towers' tops).

    Loss per step: ``cfg.w_infonce ·`` the general loss (``cfg.general_loss``, ``ml.objectives``; by
    default CLIP's symmetric InfoNCE, Radford et al. 2021) on a batch of items + ``cfg.w_type · CE(product
    type)`` (a softmax head on both modalities' vectors) + ``cfg.w_center ·`` a center loss per product type
    + ``cfg.w_compat ·`` the compatibility loss (``cfg.compat_loss``, by default InfoNCE of the positive
    among the candidates; ``ml.objectives``) on outfit pairs in the type-aware compatibility space
    (Vasileva et al. 2018), with the mask of the (anchor, positive) slot pair and ``cfg.n_candidates``
    candidate negatives of the positive's slot and popularity, never a known partner of the anchor
    (``ml.sampling``; the pairs keep to outfit slots and to audiences that fit). Scores are the served
    pair scores ``<a ⊙ m², x>``, so training ranks exactly as pgvector's inner-product queries serve.
    Early stopping validates on popularity-matched FITB questions of the validation outfits.

    Tower fine-tuning (``cfg.unfreeze_last_blocks`` / ``cfg.unfreeze_text_layers`` > 0, ``ml.towers``): the
    InfoNCE/type batch's tower outputs are computed from its photos and texts at each step, with gradients
    into the unfrozen blocks (AdamW param group at ``cfg.tower_lr``; autocast and channels_last on CUDA).
    The compatibility items (up to 34 per anchor) read a feature bank instead: ``data.image``/``data.text``,
    overwritten (detached) with the towers' outputs of every batch and, before validation, of the
    validation items (a memory bank, Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric
    Instance Discrimination"). Checkpoints then also hold the tower weights; the returned heads carry
    the best ones in ``heads.tower_state`` (saved by :func:`save_heads`, served by ``ml.inference``).

    Args:
        data: features and outfits (see :class:`TrainData`); tower fine-tuning also needs
            ``data.image_paths`` and ``data.texts``.
        cfg: hyper-parameters; ``cfg.seed`` makes the run reproducible (torch's deterministic
            algorithms are on while it trains, :func:`ml.seeding.deterministic_algorithms`).
        progress: called after each epoch with ``{"epoch", "step", "progress" (0..1), "loss", ...}``.
        checkpoint_dir: if set, ``last.pt`` is written there each epoch (heads, losses, optimiser, RNG
            states, and the tower weights when tuned).
        resume: a ``last.pt`` to continue from; the run then continues exactly as if never interrupted.
        should_stop: polled every epoch; returning True ends training early (cancel).
        bundle: tower fine-tuning only: the :class:`~ml.model.ClipBundle` whose towers are trained IN
            PLACE (default: a new ``build_model(ModelConfig())``); its device is the training device.
            It must be the model that computed ``data.image``/``data.text``.
        cache_dir: with ``cfg.cache_tower_prefix``, where the prefix activations are kept (``ml.tower_prefix``).
        init_heads: start from these trained heads (same dimensions) instead of a random initialisation.

    Returns:
        :class:`TrainResult` with the best heads by the validation metric (mean of val FITB accuracy
        and val text→image Recall@10), or the last heads when there is no validation data. The heads
        are on the CPU.

    Raises:
        ValueError: no products left for training; tower fine-tuning without image paths/texts, or with
            a model whose embed_dim differs from the features'.
    """
    with deterministic_algorithms():  # several CPU threads: the same run twice gives the same heads
        run = _Run(data, cfg, bundle, cache_dir, init_heads)
        if resume is not None:
            run.resume(resume)
        t0, samples = time.perf_counter(), 0
        total_steps = cfg.max_steps or cfg.epochs * run.steps_per_epoch
        for epoch in range(run.epoch + 1, cfg.epochs):
            losses, done = run.train_epoch()
            samples += 2 * run.batch_size * done  # images and texts
            fitb, r10 = run.validate()
            run.record_epoch(epoch, losses, fitb, r10)
            h = run.history
            logger.info(
                "epoch %d step %d loss %.4f infonce %.4f compat %.4f val_fitb %.3f val_r10 %.3f",
                *(epoch, run.step, h["loss"][-1], h["infonce"][-1], h["compat"][-1], fitb, r10),
            )
            if checkpoint_dir is not None:
                run.save_checkpoint(checkpoint_dir)
            if progress is not None:
                progress(
                    {
                        "epoch": epoch,
                        "step": run.step,
                        "progress": min(1.0, run.step / max(total_steps, 1)),
                        "loss": h["loss"][-1],
                        "val_fitb": fitb,
                        "val_r10": r10,
                        "history": h,
                    }
                )
            if run.stops_early() or (should_stop is not None and should_stop()):
                break
        heads = run.best_heads()
        secs = time.perf_counter() - t0
        return TrainResult(
            heads, run.history, run.step, run.best_epoch, run.best_val, secs, samples / max(secs, 1e-9)
        )


def build_parser() -> argparse.ArgumentParser:
    """The CLI: every :class:`TrainConfig` field is a flag, plus the data source and the model."""
    p = argparse.ArgumentParser(prog="python -m ml.train", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", type=Path, help="TrainData .npz file (TrainData.save)")
    src.add_argument("--hm-root", type=Path, help="H&M sample folder (articles.csv, baskets.json, images/)")
    src.add_argument(
        "--mango-root", type=Path, help="MANGO sample folder (products.csv, outfits.csv, images/)"
    )
    p.add_argument(
        "--limit", type=int, default=0, help="with a sample root: about this many products (0 = all)"
    )
    p.add_argument(
        "--save-features", type=Path, default=None, help="with a sample root: also write the TrainData .npz"
    )
    p.add_argument(
        "--view-features",
        type=Path,
        default=None,
        help="phone-photo view features (.npz of `python -m ml.photo_robustness views`) for --w-view",
    )
    p.add_argument(
        "--text-views",
        type=Path,
        default=None,
        help="paraphrased text features (.npz of `python -m ml.department_holdout paraphrases`) for --p-text-view",
    )
    p.add_argument("--feature-cache", type=Path, default=Path("var/features"), help="feature cache folder")
    p.add_argument("--out", type=Path, default=Path("var/models/cli-run"), help="output folder")
    p.add_argument("--resume", type=Path, default=None, help="checkpoint last.pt to resume from")
    p.add_argument("--init-heads", type=Path, default=None, help="heads.pt to start from (tower tuning)")
    p.add_argument("--model-name", default=ModelConfig.name, help="open_clip model (ModelConfig.name)")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint (ModelConfig)")
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (tower fine-tuning and --hm-root)"
    )
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)
    return p


def main(argv: Sequence[str] | None = None) -> TrainResult:
    """Run training from the command line (``argv`` like ``sys.argv[1:]``; open_clip's ``main`` style)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    mcfg = ModelConfig(name=args.model_name, pretrained=args.pretrained, device=args.device)
    bundle = None
    sample_root = args.hm_root or args.mango_root
    if sample_root is not None or cfg.tunes_towers:
        # lazy: ml.model imports open_clip (~3 s); `--help` and runs on a features file never need it
        from ml.model import build_model

        bundle = build_model(mcfg)
    if sample_root is not None:
        build = train_data_from_hm if args.hm_root is not None else train_data_from_mango
        data = build(
            sample_root,
            bundle=bundle,
            limit=args.limit or None,
            val_fraction=cfg.val_fraction,
            cache_dir=args.feature_cache,
        )
        if args.save_features is not None:
            data.save(args.save_features)
    else:
        data = TrainData.load(args.features)
    if args.view_features is not None:
        z = np.load(args.view_features)
        data = data.attach_views(z["item_ids"], z["views"])
    if args.text_views is not None:
        z = np.load(args.text_views)
        data = data.attach_views(z["item_ids"], z["views"], kind="text")
    init = load_heads(args.init_heads)[0] if args.init_heads is not None else None
    kw = {"bundle": bundle, "cache_dir": args.feature_cache, "init_heads": init}
    result = train(data, cfg, checkpoint_dir=args.out / "checkpoints", resume=args.resume, **kw)
    save_heads(
        args.out / "heads.pt",
        result.heads,
        {"model": mcfg.to_dict(), "train_config": cfg.to_dict(), "history": result.history},
    )
    (args.out / "history.json").write_text(json.dumps(result.history, indent=1))
    if data.test_outfits:  # held-out tables (ml.evaluate), on the tuned towers' features when tuned
        own = {}
        if result.heads.tower_state and bundle is not None and data.image_paths and data.texts:
            from ml.towers import tuned_features  # lazy, as ml.model above: open_clip

            own["fine-tuned"] = tuned_features(bundle, data, cfg, args.feature_cache)
        results = evaluate_all(data, {"fine-tuned": result.heads}, features=own)  # fixed protocol seed
        plot_data = replace(data, image=own["fine-tuned"][0], text=own["fine-tuned"][1]) if own else data
        write_report(results, args.out, history=result.history, data=plot_data, heads=result.heads)
        print(markdown_report(results))
    towers = f", tuned towers ({len(result.heads.tower_state)} tensors)" if result.heads.tower_state else ""
    print(
        f"trained {result.steps} steps in {result.seconds:.1f} s ({result.samples_per_s:.0f} samples/s); "
        f"best epoch {result.best_epoch} val {result.best_val:.3f}; saved {args.out / 'heads.pt'}{towers}"
    )
    return result


if __name__ == "__main__":
    main()
