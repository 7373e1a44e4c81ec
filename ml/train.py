"""Fine-tuning loop: symmetric image↔text InfoNCE + type-aware compatibility triplets.

By default the towers are frozen and their outputs cached (``ml.features``), so a run trains only the
heads (``ml.heads``) and takes minutes on a 2-core CPU for the 11,800-item catalog. Everything here
runs without Django, on a features file:

    python -m ml.train --features var/features/train_data.npz --epochs 20 --out var/models/run1

The features file (``TrainData.save``) holds the tower outputs, slots, product types and outfits.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ml.config import TrainConfig
from ml.heads import RecommenderHeads
from ml.losses import ClipLoss, SoftmaxClassificationLoss, TripletMarginLoss
from ml.metrics import fitb_accuracy, recall_at_k
from ml.mining import mine_hard_negatives
from ml.slots import SLOTS

logger = logging.getLogger(__name__)


@dataclass
class TrainData:
    """Everything a run trains on, as arrays (N items, E = embed_dim).

    Attributes:
        image: (N, E) float32 image-tower outputs (unnormalised).
        text: (N, E) float32 text-tower outputs.
        slots: (N,) int64 slot index (``ml.slots.SLOTS``).
        types: (N,) int64 product-type id (for FITB candidates of the answer's type).
        outfits: training outfits, each an int64 array of item indices (≥ 2 items).
        val_outfits: outfits for early stopping (never trained on).
        item_ids: (N,) the products' ids, to map results back (not used in training).
        test_outfits: held-out outfits for evaluation only (``ml.evaluate``); never trained on.
        attrs: extra (N,) int64 attribute ids for the non-learned baselines, e.g. ``{"section": ...,
            "department": ..., "colour": ...}``.
        heldout_items: (G,) int64 products never seen by the image↔text loss: the gallery of the
            text→item evaluation (``ml.evaluate``).
        val_items: (V,) int64 products also kept out of the image↔text loss, for early stopping.
    """

    image: np.ndarray
    text: np.ndarray
    slots: np.ndarray
    types: np.ndarray
    outfits: list[np.ndarray]
    val_outfits: list[np.ndarray] = field(default_factory=list)
    item_ids: np.ndarray | None = None
    test_outfits: list[np.ndarray] = field(default_factory=list)
    attrs: dict[str, np.ndarray] = field(default_factory=dict)
    heldout_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    val_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        n = len(self.image)
        if self.text.shape != self.image.shape:
            raise ValueError(f"image {self.image.shape} and text {self.text.shape} features differ in shape")
        if self.slots.shape != (n,) or self.types.shape != (n,):
            raise ValueError(f"slots {self.slots.shape} / types {self.types.shape} must be ({n},)")
        for o in [*self.outfits, *self.val_outfits, *self.test_outfits]:
            if len(o) < 2 or o.max(initial=0) >= n or o.min(initial=0) < 0:
                raise ValueError(f"outfit {o.tolist()} needs ≥ 2 item indices in [0, {n})")

    def save(self, path: Path | str) -> None:
        """Write an ``.npz`` file (outfits stored as flat arrays + offsets)."""

        def pack(outs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            flat = np.concatenate(outs) if outs else np.zeros(0, np.int64)
            return flat.astype(np.int64), np.cumsum([0, *[len(o) for o in outs]]).astype(np.int64)

        of, oo = pack(self.outfits)
        vf, vo = pack(self.val_outfits)
        tf, to = pack(self.test_outfits)
        ids = self.item_ids if self.item_ids is not None else np.arange(len(self.image))
        attrs = {f"attr_{k}": v for k, v in self.attrs.items()}
        np.savez(path, image=self.image, text=self.text, slots=self.slots, types=self.types, outfits=of,
                 outfit_offsets=oo, val_outfits=vf, val_offsets=vo, test_outfits=tf, test_offsets=to,
                 item_ids=ids, heldout_items=self.heldout_items, val_items=self.val_items, **attrs)  # fmt: skip

    @classmethod
    def load(cls, path: Path | str) -> TrainData:
        """Read a file written by :meth:`save`. Raises FileNotFoundError / KeyError on a bad file."""
        z = np.load(path)

        def unpack(flat: np.ndarray, off: np.ndarray) -> list[np.ndarray]:
            return [flat[off[i] : off[i + 1]] for i in range(len(off) - 1)]

        return cls(image=z["image"].astype(np.float32), text=z["text"].astype(np.float32), slots=z["slots"],
                   types=z["types"], outfits=unpack(z["outfits"], z["outfit_offsets"]),
                   val_outfits=unpack(z["val_outfits"], z["val_offsets"]), item_ids=z["item_ids"],
                   test_outfits=unpack(z["test_outfits"], z["test_offsets"]) if "test_outfits" in z else [],
                   attrs={k[5:]: z[k] for k in z.files if k.startswith("attr_")},
                   heldout_items=z["heldout_items"] if "heldout_items" in z else np.zeros(0, np.int64),
                   val_items=z["val_items"] if "val_items" in z else np.zeros(0, np.int64))  # fmt: skip


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


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def outfit_pairs(outfits: Sequence[np.ndarray], slots: np.ndarray) -> np.ndarray:
    """All ordered (anchor, positive) pairs of items of different slots within each outfit: (P, 2) int64."""
    pairs = [(a, p) for o in outfits for a in o for p in o if a != p and slots[a] != slots[p]]
    if not pairs:  # outfits of one slot only: fall back to any distinct pair
        pairs = [(a, p) for o in outfits for a in o for p in o if a != p]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


class NegativeSampler:
    """Samples candidate negatives from the positive's slot (half of them of the positive's product type)."""

    def __init__(self, slots: np.ndarray, types: np.ndarray, rng: np.random.Generator) -> None:
        self.rng = rng
        self.by_slot = {int(s): np.flatnonzero(slots == s) for s in np.unique(slots)}
        self.by_type = {int(t): np.flatnonzero(types == t) for t in np.unique(types)}
        self.slots, self.types = slots, types

    def sample(self, positives: np.ndarray, m: int) -> np.ndarray:
        """(B,) positive indices → (B, M) candidate negative indices (never the positive itself)."""
        out = np.empty((len(positives), m), dtype=np.int64)
        for row, p in enumerate(positives):
            same_type = self.by_type[int(self.types[p])]
            pool_t = same_type if len(same_type) > 1 else self.by_slot[int(self.slots[p])]
            pool_s = self.by_slot[int(self.slots[p])]
            half = m // 2
            cand = np.concatenate([self.rng.choice(pool_t, half), self.rng.choice(pool_s, m - half)])
            clash = cand == p
            if clash.any():  # replace by any other item of the slot (or anything if the slot has one item)
                pool = (
                    pool_s[pool_s != p]
                    if len(pool_s) > 1
                    else np.flatnonzero(np.arange(len(self.slots)) != p)
                )
                cand[clash] = self.rng.choice(pool, int(clash.sum()))
            out[row] = cand
        return out


def fitb_questions(
    outfits: Sequence[np.ndarray], slots: np.ndarray, types: np.ndarray, seed: int, n_candidates: int = 4
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fill-in-the-blank questions (Polyvore Outfits convention, Vasileva et al. 2018).

    One item of each outfit is blanked (seeded); the candidates are the answer and ``n_candidates-1``
    wrong items of the answer's product type (of its slot when the type has too few items), never
    items of the outfit.

    Returns:
        ``[(question_items (K,), candidates (n_candidates,)), ...]`` with the answer at candidates[0].
    """
    rng = np.random.default_rng(seed)
    by_type = {int(t): np.flatnonzero(types == t) for t in np.unique(types)}
    by_slot = {int(s): np.flatnonzero(slots == s) for s in np.unique(slots)}
    out = []
    for o in outfits:
        ans = int(o[rng.integers(len(o))])
        question = np.asarray([i for i in o if i != ans], dtype=np.int64)
        pool = np.setdiff1d(by_type[int(types[ans])], o)
        if len(pool) < n_candidates - 1:
            pool = np.setdiff1d(by_slot[int(slots[ans])], o)
        if len(pool) < n_candidates - 1:
            continue
        wrong = rng.choice(pool, n_candidates - 1, replace=False)
        out.append((question, np.concatenate([[ans], wrong]).astype(np.int64)))
    return out


@torch.no_grad()
def fitb_accuracy_heads(
    heads: RecommenderHeads, compat: torch.Tensor, slots: torch.Tensor, questions
) -> float:
    """FITB accuracy of the compatibility space: candidate score = mean pair score with the question items.

    Args:
        compat: (N, C) float32 item vectors from ``heads.compat``; slots: (N,) int64.
        questions: from :func:`fitb_questions` (answer at index 0; ties count as wrong).
    """
    if not questions:
        return float("nan")
    scores = []
    for q, cands in questions:
        qi = torch.as_tensor(q).repeat_interleave(len(cands))
        ci = torch.as_tensor(cands).repeat(len(q))
        s = heads.pair_score(compat[qi], compat[ci], slots[qi], slots[ci]).view(len(q), len(cands)).mean(0)
        scores.append(s.numpy())
    return fitb_accuracy(np.stack(scores), np.zeros(len(scores), dtype=np.int64), ties="wrong")


@torch.no_grad()
def text_to_image_recall(img: torch.Tensor, txt: torch.Tensor, k: int = 10) -> float:
    """Recall@k of text→image retrieval, item i's text against all images: (G, E), (G, E) → float."""
    sims = (txt @ img.T).numpy()  # (G, G); ties rank against the positive (ml.metrics)
    return recall_at_k(sims, np.arange(len(sims)), ks=(k,))[k]


def train(
    data: TrainData,
    cfg: TrainConfig,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train :class:`~ml.heads.RecommenderHeads` on cached tower outputs.

    Loss per step: ``cfg.w_infonce · CLIP(image, text)`` (symmetric InfoNCE, Radford et al. 2021) on a
    batch of items + ``cfg.w_type · CE(product type)`` (a softmax classification head on both
    modalities' vectors) + ``cfg.w_triplet · Triplet(anchor, positive, negative)`` (Schroff et al. 2015) on
    outfit pairs in the compatibility space, with the masks of the (anchor, positive) slot pair and a
    negative of the positive's slot chosen by ``cfg.miner`` among 32 candidates. The triplet distance
    is ``1 − <a ⊙ m, x ⊙ m>``, so training ranks exactly as pgvector's inner-product queries serve.

    Args:
        data: features and outfits (see :class:`TrainData`).
        cfg: hyper-parameters; ``cfg.seed`` makes the run reproducible.
        progress: called after each epoch with ``{"epoch", "step", "progress" (0..1), "loss", ...}``.
        checkpoint_dir: if set, ``last.pt`` and ``best.pt`` are written there each epoch.
        resume: a ``last.pt`` to continue from (heads, optimiser, epoch, history).
        should_stop: polled every epoch; returning True ends training early (cancel).

    Returns:
        :class:`TrainResult` with the best heads by the validation metric (mean of val FITB accuracy
        and val text→image Recall@10), or the last heads when there is no validation data.
    """
    gen = seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n, e = data.image.shape
    heads = RecommenderHeads(e, cfg.compat_dim, num_slots=len(SLOTS), normalize=cfg.normalize)
    clip_loss = ClipLoss(init_temperature=cfg.temperature)
    triplet = TripletMarginLoss(margin=cfg.margin, distance="inner_product", normalize=False)
    n_types = int(data.types.max()) + 1 if len(data.types) else 1
    type_loss = SoftmaxClassificationLoss(e, n_types)
    types = torch.from_numpy(data.types.astype(np.int64))
    params = [*heads.parameters(), *clip_loss.parameters(), *type_loss.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    image = torch.from_numpy(np.ascontiguousarray(data.image, dtype=np.float32))
    text = torch.from_numpy(np.ascontiguousarray(data.text, dtype=np.float32))
    slots = torch.from_numpy(data.slots.astype(np.int64))
    pairs = outfit_pairs(data.outfits, data.slots)
    sampler = NegativeSampler(data.slots, data.types, rng)
    val_q = fitb_questions(data.val_outfits, data.slots, data.types, seed=cfg.seed + 1)
    # products for the image↔text loss: all but the held-out (test) and validation products
    excluded = np.zeros(n, dtype=bool)
    excluded[data.heldout_items] = True
    excluded[data.val_items] = True
    train_items = torch.from_numpy(np.flatnonzero(~excluded))
    if len(train_items) < 2:
        raise ValueError(f"only {len(train_items)} products left for training after the held-out split")
    if len(data.val_items):
        val_items = np.asarray(data.val_items, dtype=np.int64)
    elif data.val_outfits:
        val_items = np.unique(np.concatenate(data.val_outfits))
    else:
        val_items = np.arange(min(n, 1000))
    n_train = len(train_items)
    bs = min(cfg.batch_size, n_train)
    steps_per_epoch = max(1, n_train // bs)
    history: dict[str, list[float]] = {"loss": [], "infonce": [], "triplet": [], "type": [], "val_fitb": [], "val_r10": [],
                                       "val": [], "temperature": []}  # fmt: skip
    start_epoch, step, best_val, best_epoch, stale = 0, 0, -math.inf, -1, 0
    best_state = {k: v.clone() for k, v in heads.state_dict().items()}
    if resume is not None:
        ck = torch.load(resume, weights_only=False)
        heads.load_state_dict(ck["heads"])
        clip_loss.load_state_dict(ck["clip"])
        type_loss.load_state_dict(ck["type"])
        opt.load_state_dict(ck["opt"])
        start_epoch, step, history = ck["epoch"] + 1, ck["step"], ck["history"]
        best_val, best_epoch = ck["best_val"], ck["best_epoch"]
        best_state = ck.get("best_heads", best_state)
    t0, samples = time.perf_counter(), 0
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        heads.train()
        perm = train_items[torch.randperm(n_train, generator=gen)]
        sums = {"loss": 0.0, "infonce": 0.0, "triplet": 0.0, "type": 0.0}
        done = 0
        for it in range(steps_per_epoch):
            idx = perm[it * bs : (it + 1) * bs]  # (B,)
            img_v, txt_v = heads.general(image[idx], text[idx])  # (B, E) each
            l_nce = clip_loss(img_v, txt_v)
            l_type = torch.zeros(())
            if cfg.w_type > 0:  # auxiliary product-type classification of both modalities
                l_type = (type_loss(img_v, types[idx]) + type_loss(txt_v, types[idx])) / 2
            l_tri = torch.zeros(())
            if len(pairs) and cfg.w_triplet > 0:
                pi = pairs[rng.integers(len(pairs), size=bs)]  # (B, 2)
                a, p = torch.from_numpy(pi[:, 0]), torch.from_numpy(pi[:, 1])
                cand = torch.from_numpy(sampler.sample(pi[:, 1], 32))  # (B, M)
                uniq, inv = torch.unique(torch.cat([a, p, cand.reshape(-1)]), return_inverse=True)
                f = heads.compat(image[uniq], text[uniq])  # (U, C)
                fa, fp = f[inv[:bs]], f[inv[bs : 2 * bs]]
                fc = f[inv[2 * bs :]].view(bs, cand.shape[1], -1)  # (B, M, C)
                m = heads.pair_mask(slots[a], slots[p])  # (B, C): the negative shares the positive's slot
                d_ap = 1 - (fa * m * fp * m).sum(-1)  # (B,)
                d_an = 1 - ((fa * m).unsqueeze(1) * fc * m.unsqueeze(1)).sum(-1)  # (B, M)
                if cfg.miner == "batch-all":  # mean over all candidate triplets with a positive loss
                    viol = F.relu(d_ap.unsqueeze(1) - d_an + cfg.margin)  # (B, M)
                    l_tri = viol.sum() / (viol > 0).sum().clamp(min=1)
                else:
                    valid = torch.ones_like(d_an, dtype=torch.bool)
                    neg_pos = mine_hard_negatives(d_ap.detach(), d_an.detach(), valid, strategy=cfg.miner,
                                                  margin=cfg.margin, generator=gen)  # (B,)  # fmt: skip
                    fn = fc[torch.arange(bs), neg_pos]  # (B, C)
                    l_tri = triplet(fa * m, fp * m, fn * m)
            loss = cfg.w_infonce * l_nce + cfg.w_triplet * l_tri + cfg.w_type * l_type
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            done += 1
            samples += 2 * bs
            sums["loss"] += loss.item()
            sums["infonce"] += l_nce.item()
            sums["triplet"] += l_tri.item()
            sums["type"] += l_type.item()
            if cfg.max_steps and step >= cfg.max_steps:
                break
        for k in sums:
            history[k].append(sums[k] / max(done, 1))
        heads.eval()
        with torch.no_grad():
            vi = torch.from_numpy(val_items)
            img_v, txt_v = heads.general(image[vi], text[vi])
            r10 = text_to_image_recall(img_v, txt_v, 10)
            comp = heads.compat(image, text)
            fitb = fitb_accuracy_heads(heads, comp, slots, val_q)
        val = (r10 + fitb) / 2 if not math.isnan(fitb) else r10
        history["val_fitb"].append(fitb)
        history["val_r10"].append(r10)
        history["val"].append(val)
        history["temperature"].append(float(clip_loss.temperature))
        if val > best_val:
            best_val, best_epoch, stale = val, epoch, 0
            best_state = {k: v.detach().clone() for k, v in heads.state_dict().items()}
        else:
            stale += 1
        logger.info(
            "epoch %d step %d loss %.4f infonce %.4f triplet %.4f val_fitb %.3f val_r10 %.3f",
            epoch,
            step,
            history["loss"][-1],
            history["infonce"][-1],
            history["triplet"][-1],
            fitb,
            r10,
        )
        if checkpoint_dir is not None:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            ck = {"heads": heads.state_dict(), "clip": clip_loss.state_dict(), "type": type_loss.state_dict(),
                  "opt": opt.state_dict(),
                  "epoch": epoch, "step": step, "history": history, "best_val": best_val,
                  "best_epoch": best_epoch, "best_heads": best_state, "config": cfg.to_dict()}  # fmt: skip
            torch.save(ck, checkpoint_dir / "last.pt.tmp")
            (checkpoint_dir / "last.pt.tmp").replace(checkpoint_dir / "last.pt")
        if progress is not None:
            progress(
                {
                    "epoch": epoch,
                    "step": step,
                    "progress": min(1.0, step / max(total_steps, 1)),
                    "loss": history["loss"][-1],
                    "val_fitb": fitb,
                    "val_r10": r10,
                    "history": history,
                }
            )
        if (cfg.max_steps and step >= cfg.max_steps) or (cfg.patience and stale >= cfg.patience):
            break
        if should_stop is not None and should_stop():
            break
    heads.load_state_dict(best_state)
    heads.eval()
    secs = time.perf_counter() - t0
    return TrainResult(heads, history, step, best_epoch, best_val, secs, samples / max(secs, 1e-9))


def save_heads(path: Path, heads: RecommenderHeads, meta: dict[str, Any]) -> None:
    """Save trained heads with their metadata (model config, train config, metrics) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": heads.state_dict(), "embed_dim": heads.embed_dim,
                "compat_dim": heads.compat_dim, "num_slots": heads.num_slots, "normalize": heads.normalize,
                "meta": meta}, tmp)  # fmt: skip
    tmp.replace(path)


def load_heads(path: Path | str) -> tuple[RecommenderHeads, dict[str, Any]]:
    """Load heads saved by :func:`save_heads`. Raises FileNotFoundError when the file is missing."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    heads = RecommenderHeads(ck["embed_dim"], ck["compat_dim"], ck["num_slots"], normalize=ck["normalize"])
    heads.load_state_dict(ck["state_dict"])
    heads.eval().requires_grad_(False)  # loaded for inference
    return heads, ck["meta"]


def zero_shot_heads(embed_dim: int, compat_dim: int, seed: int = 0) -> RecommenderHeads:
    """Untrained heads (identity general projections, seeded random compatibility MLP)."""
    torch.manual_seed(seed)
    return RecommenderHeads(embed_dim, compat_dim).eval()


def build_parser() -> argparse.ArgumentParser:
    """The CLI: every :class:`TrainConfig` field is a flag."""
    p = argparse.ArgumentParser(prog="python -m ml.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--features", required=True, type=Path, help="TrainData .npz file (TrainData.save)")
    p.add_argument("--out", type=Path, default=Path("var/models/cli-run"), help="output folder")
    p.add_argument("--resume", type=Path, default=None, help="checkpoint last.pt to resume from")
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
    data = TrainData.load(args.features)
    result = train(data, cfg, checkpoint_dir=args.out / "checkpoints", resume=args.resume)
    save_heads(
        args.out / "heads.pt", result.heads, {"train_config": cfg.to_dict(), "history": result.history}
    )
    (args.out / "history.json").write_text(json.dumps(result.history, indent=1))
    print(
        f"trained {result.steps} steps in {result.seconds:.1f} s ({result.samples_per_s:.0f} samples/s); "
        f"best epoch {result.best_epoch} val {result.best_val:.3f}; saved {args.out / 'heads.pt'}"
    )
    return result


if __name__ == "__main__":
    main()
