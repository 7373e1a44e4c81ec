"""Fine-tuning loop: symmetric image↔text InfoNCE + type-aware compatibility triplets.

By default the towers are frozen and their outputs cached (``ml.features``), so a run trains only the
heads (``ml.heads``) and takes minutes on a 2-core CPU for the 11,800-item catalog. Everything here
runs without Django, on a features file or straight from the H&M sample:

    python -m ml.train --features var/features/train_data.npz --epochs 20 --out var/models/run1
    python -m ml.train --hm-root ../shared/data/hm --epochs 20 --out var/models/run2

The features file (``TrainData.save``) holds the tower outputs, slots, product types and outfits.
With ``--unfreeze-last-blocks k`` / ``--unfreeze-text-layers k`` (a GPU run) the last blocks of the towers
are trained end to end from the photos and texts (``ml.towers``); the data then needs the image paths
and texts (``--hm-root`` provides them), and the saved heads file carries the tuned tower weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.config import ModelConfig, TrainConfig
from ml.dataset import NegativeSampler, TrainData, fitb_questions, outfit_pairs, train_data_from_hm
from ml.heads import RecommenderHeads, save_heads
from ml.losses import ClipLoss, SoftmaxClassificationLoss, TypeAwareTripletLoss
from ml.metrics import fitb_accuracy_heads, text_to_image_recall
from ml.slots import SLOTS

logger = logging.getLogger(__name__)


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


def train(
    data: TrainData,
    cfg: TrainConfig,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    bundle: Any = None,
) -> TrainResult:
    """Train :class:`~ml.heads.RecommenderHeads` on cached tower outputs (and, optionally, the towers' tops).

    Loss per step: ``cfg.w_infonce · CLIP(image, text)`` (symmetric InfoNCE, Radford et al. 2021) on a
    batch of items + ``cfg.w_type · CE(product type)`` (a softmax classification head on both
    modalities' vectors) + ``cfg.w_triplet · Triplet(anchor, positive, negative)`` (Schroff et al. 2015) on
    outfit pairs in the compatibility space, with the masks of the (anchor, positive) slot pair and a
    negative of the positive's slot chosen by ``cfg.miner`` among 32 candidates. The triplet distance
    is ``1 − <a ⊙ m, x ⊙ m>``, so training ranks exactly as pgvector's inner-product queries serve.

    Tower fine-tuning (``cfg.unfreeze_last_blocks`` / ``cfg.unfreeze_text_layers`` > 0, ``ml.towers``): the
    InfoNCE/type batch's tower outputs are computed from its photos and texts at each step, with gradients
    into the unfrozen blocks (AdamW param group at ``cfg.tower_lr``; autocast and channels_last on CUDA).
    The triplet items (up to 34 per anchor) read a feature bank instead: ``data.image``/``data.text``,
    overwritten (detached) with the towers' outputs of every batch and, before validation, of the
    validation items (a memory bank, Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric
    Instance Discrimination"). Checkpoints then also hold the tower weights; the returned heads carry
    the best ones in ``heads.tower_state`` (saved by :func:`save_heads`, served by ``ml.inference``).

    Args:
        data: features and outfits (see :class:`TrainData`); tower fine-tuning also needs
            ``data.image_paths`` and ``data.texts``.
        cfg: hyper-parameters; ``cfg.seed`` makes the run reproducible.
        progress: called after each epoch with ``{"epoch", "step", "progress" (0..1), "loss", ...}``.
        checkpoint_dir: if set, ``last.pt`` is written there each epoch (heads, losses, optimiser, RNG
            states, and the tower weights when tuned).
        resume: a ``last.pt`` to continue from; the run then continues exactly as if never interrupted.
        should_stop: polled every epoch; returning True ends training early (cancel).
        bundle: tower fine-tuning only: the :class:`~ml.model.ClipBundle` whose towers are trained IN
            PLACE (default: a new ``build_model(ModelConfig())``); its device is the training device.
            It must be the model that computed ``data.image``/``data.text``.

    Returns:
        :class:`TrainResult` with the best heads by the validation metric (mean of val FITB accuracy
        and val text→image Recall@10), or the last heads when there is no validation data. The heads
        are on the CPU.

    Raises:
        ValueError: no products left for training; tower fine-tuning without image paths/texts, or with
            a model whose embed_dim differs from the features'.
    """
    gen = seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n, e = data.image.shape
    tuner = None
    device = torch.device("cpu")
    if cfg.tunes_towers:
        from ml.model import build_model
        from ml.towers import TowerTuner

        if data.image_paths is None or data.texts is None:
            raise ValueError(
                "tower fine-tuning (unfreeze_last_blocks / unfreeze_text_layers > 0) needs TrainData.image_paths "
                "and TrainData.texts (e.g. python -m ml.train --hm-root ...)"
            )
        bundle = bundle if bundle is not None else build_model(ModelConfig())
        if bundle.embed_dim != e:
            raise ValueError(
                f"model {bundle.model_id} gives {bundle.embed_dim}-d features, the data has {e}-d"
            )
        tuner = TowerTuner(
            bundle,
            image_paths=data.image_paths,
            texts=data.texts,
            image_blocks=cfg.unfreeze_last_blocks,
            text_layers=cfg.unfreeze_text_layers,
            amp=cfg.amp,
            channels_last=cfg.channels_last,
            num_workers=cfg.num_workers,
        )
        device = tuner.device
    heads = RecommenderHeads(e, cfg.compat_dim, num_slots=len(SLOTS), normalize=cfg.normalize).to(device)
    clip_loss = ClipLoss(init_temperature=cfg.temperature).to(device)
    triplet = TypeAwareTripletLoss(margin=cfg.margin, miner=cfg.miner)
    n_types = int(data.types.max()) + 1 if len(data.types) else 1
    type_loss = SoftmaxClassificationLoss(e, n_types).to(device)
    types = torch.from_numpy(data.types.astype(np.int64)).to(device)
    params = [*heads.parameters(), *clip_loss.parameters(), *type_loss.parameters()]
    groups: list[dict[str, Any]] = [{"params": params, "lr": cfg.lr}]
    if tuner is not None:
        groups.append({"params": tuner.parameters(), "lr": cfg.tower_lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    fp16 = tuner is not None and tuner.amp_dtype == torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)  # fp16 only; bf16 needs no loss scaling
    image = torch.from_numpy(np.ascontiguousarray(data.image, dtype=np.float32))
    text = torch.from_numpy(np.ascontiguousarray(data.text, dtype=np.float32))
    if tuner is not None:  # a private, writable feature bank (never the caller's arrays)
        image, text = image.to(device, copy=True), text.to(device, copy=True)
    slots = torch.from_numpy(data.slots.astype(np.int64)).to(device)
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
    # rows validation reads: the retrieval items and every item of a FITB question
    val_rows = np.unique(np.concatenate([val_items, *[np.concatenate(qc) for qc in val_q]]))
    n_train = len(train_items)
    bs = min(cfg.batch_size, n_train)
    steps_per_epoch = max(1, n_train // bs)
    history: dict[str, list[float]] = {
        "loss": [],
        "infonce": [],
        "triplet": [],
        "type": [],
        "val_fitb": [],
        "val_r10": [],
        "val": [],
        "temperature": [],
    }
    start_epoch, step, best_val, best_epoch, stale = 0, 0, -math.inf, -1, 0
    best_state = {k: v.clone() for k, v in heads.state_dict().items()}
    best_towers = tuner.state_dict() if tuner is not None else None
    if resume is not None:
        ck = torch.load(resume, map_location=device, weights_only=False)
        if bool(ck.get("towers")) != (tuner is not None):
            raise ValueError(
                f"{resume}: checkpoint {'has' if ck.get('towers') else 'has no'} tower weights, "
                f"the config {'tunes' if tuner is not None else 'freezes'} the towers"
            )
        heads.load_state_dict(ck["heads"])
        clip_loss.load_state_dict(ck["clip"])
        type_loss.load_state_dict(ck["type"])
        opt.load_state_dict(ck["opt"])
        start_epoch, step, history = ck["epoch"] + 1, ck["step"], ck["history"]
        best_val, best_epoch = ck["best_val"], ck["best_epoch"]
        best_state = ck.get("best_heads", best_state)
        if tuner is not None:
            tuner.load_state_dict(ck["towers"])
            best_towers = ck.get("best_towers", best_towers)
            image.copy_(ck["bank_image"])
            text.copy_(ck["bank_text"])
        if "scaler" in ck:
            scaler.load_state_dict(ck["scaler"])
        if "rng" in ck:  # continue the exact random streams (older checkpoints restart them from the seed)
            _rng_restore(ck["rng"], gen, rng)
    t0, samples = time.perf_counter(), 0
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        heads.train()
        perm = train_items[torch.randperm(n_train, generator=gen)]
        batches = [perm[it * bs : (it + 1) * bs] for it in range(steps_per_epoch)]  # (B,) each
        if tuner is not None:  # tower outputs of the batch, computed now, with gradients
            source = tuner.batches(batches)
        else:  # cached frozen-tower features
            source = ((idx, image[idx], text[idx]) for idx in batches)
        sums = {"loss": 0.0, "infonce": 0.0, "triplet": 0.0, "type": 0.0}
        done = 0
        for idx, f_img, f_txt in source:  # (B,), (B, E), (B, E)
            img_v, txt_v = heads.general(f_img, f_txt)  # (B, E) each
            l_nce = clip_loss(img_v, txt_v)
            l_type = torch.zeros((), device=device)
            if cfg.w_type > 0:  # auxiliary product-type classification of both modalities
                t_idx = types[idx.to(device)]
                l_type = (type_loss(img_v, t_idx) + type_loss(txt_v, t_idx)) / 2
            l_tri = torch.zeros((), device=device)
            if len(pairs) and cfg.w_triplet > 0:
                pi = pairs[rng.integers(len(pairs), size=bs)]  # (B, 2)
                a, p = torch.from_numpy(pi[:, 0]), torch.from_numpy(pi[:, 1])
                cand = torch.from_numpy(sampler.sample(pi[:, 1], 32))  # (B, M)
                uniq, inv = torch.unique(torch.cat([a, p, cand.reshape(-1)]), return_inverse=True)
                uniq, inv, a, p = uniq.to(device), inv.to(device), a.to(device), p.to(device)
                f = heads.compat(image[uniq], text[uniq])  # (U, C)
                fa, fp = f[inv[:bs]], f[inv[bs : 2 * bs]]
                fc = f[inv[2 * bs :]].view(bs, cand.shape[1], -1)  # (B, M, C)
                m = heads.pair_mask(slots[a], slots[p])  # (B, C): the negative shares the positive's slot
                l_tri = triplet(fa, fp, fc, m, generator=gen)
            loss = cfg.w_infonce * l_nce + cfg.w_triplet * l_tri + cfg.w_type * l_type
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if tuner is not None:  # the bank follows the towers
                with torch.no_grad():
                    dev_idx = idx.to(device)
                    image[dev_idx] = f_img.detach()
                    text[dev_idx] = f_txt.detach()
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
        if tuner is not None:  # validation reads the current towers' features
            tuner.refresh(image, text, val_rows, batch_size=bs)
        with torch.no_grad():
            vi = torch.from_numpy(val_items).to(device)
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
            best_towers = tuner.state_dict() if tuner is not None else None
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
            ck = {
                "heads": heads.state_dict(),
                "clip": clip_loss.state_dict(),
                "type": type_loss.state_dict(),
                "opt": opt.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(gen, rng),
                "epoch": epoch,
                "step": step,
                "history": history,
                "best_val": best_val,
                "best_epoch": best_epoch,
                "best_heads": best_state,
                "config": cfg.to_dict(),
            }
            if tuner is not None:
                ck.update(
                    towers=tuner.state_dict(), best_towers=best_towers, bank_image=image, bank_text=text
                )
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
    heads = heads.cpu().eval()
    if tuner is not None and best_towers is not None:
        tuner.load_state_dict(best_towers)
        heads.tower_state = best_towers
    secs = time.perf_counter() - t0
    return TrainResult(heads, history, step, best_epoch, best_val, secs, samples / max(secs, 1e-9))


def _rng_state(gen: torch.Generator, rng: np.random.Generator) -> dict[str, Any]:
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


def _rng_restore(state: dict[str, Any], gen: torch.Generator, rng: np.random.Generator) -> None:
    gen.set_state(state["gen"].cpu())
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(state["np_global"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def build_parser() -> argparse.ArgumentParser:
    """The CLI: every :class:`TrainConfig` field is a flag, plus the data source and the model."""
    p = argparse.ArgumentParser(prog="python -m ml.train", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", type=Path, help="TrainData .npz file (TrainData.save)")
    src.add_argument("--hm-root", type=Path, help="H&M sample folder (articles.csv, baskets.json, images/)")
    p.add_argument("--limit", type=int, default=0, help="with --hm-root: about this many articles (0 = all)")
    p.add_argument(
        "--save-features", type=Path, default=None, help="with --hm-root: also write the TrainData .npz"
    )
    p.add_argument("--feature-cache", type=Path, default=Path("var/features"), help="feature cache folder")
    p.add_argument("--out", type=Path, default=Path("var/models/cli-run"), help="output folder")
    p.add_argument("--resume", type=Path, default=None, help="checkpoint last.pt to resume from")
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
    if args.hm_root is not None or cfg.tunes_towers:
        from ml.model import build_model

        bundle = build_model(mcfg)
    if args.hm_root is not None:
        data = train_data_from_hm(
            args.hm_root,
            bundle=bundle,
            limit=args.limit or None,
            seed=cfg.seed,
            val_fraction=cfg.val_fraction,
            cache_dir=args.feature_cache,
        )
        if args.save_features is not None:
            data.save(args.save_features)
    else:
        data = TrainData.load(args.features)
    result = train(data, cfg, checkpoint_dir=args.out / "checkpoints", resume=args.resume, bundle=bundle)
    save_heads(
        args.out / "heads.pt",
        result.heads,
        {"model": mcfg.to_dict(), "train_config": cfg.to_dict(), "history": result.history},
    )
    (args.out / "history.json").write_text(json.dumps(result.history, indent=1))
    if data.test_outfits:  # held-out metrics (ml.evaluate), with the tuned towers' features when tuned
        from ml.evaluate import evaluate_heads

        eval_data = data
        if result.heads.tower_state and bundle is not None and data.image_paths and data.texts:
            from ml.features import FeatureExtractor

            ex = FeatureExtractor(bundle, batch_size=cfg.batch_size if bundle.device.type == "cuda" else 32)
            img, _ = ex.encode_images(data.image_paths, progress=True)
            eval_data = replace(data, image=img, text=ex.encode_texts(data.texts, progress=True))
        metrics = evaluate_heads(eval_data, result.heads, seed=cfg.seed)
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        print(
            "held-out metrics: "
            + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
        )
    towers = f", tuned towers ({len(result.heads.tower_state)} tensors)" if result.heads.tower_state else ""
    print(
        f"trained {result.steps} steps in {result.seconds:.1f} s ({result.samples_per_s:.0f} samples/s); "
        f"best epoch {result.best_epoch} val {result.best_val:.3f}; saved {args.out / 'heads.pt'}{towers}"
    )
    return result


if __name__ == "__main__":
    main()
