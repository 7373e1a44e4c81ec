"""Partial tower fine-tuning: the last blocks of the image and text towers trained end to end.

By default training only fits the heads on cached frozen-tower features (``ml.train``). With
``TrainConfig.unfreeze_last_blocks`` / ``unfreeze_text_layers`` > 0, :class:`TowerTuner` makes the last
blocks of each tower trainable and computes the batch's tower outputs from the image files and texts at
every step, so the InfoNCE and product-type losses reach into the towers (LiT, Zhai et al. 2022, locks
the whole image tower; here the top of each tower is unlocked, the usual "partial fine-tuning").

What is trainable (default model, timm ``tf_efficientnet_lite0`` + MiniLM-L6):

* image: the last ``k`` of the trunk's 16 inverted-residual blocks (``trunk.blocks`` flattened, stage by
  stage), and everything after them (``conv_head``, ``bn2``, the 1280 -> E projection ``visual.head``);
* text: the last ``k`` of the 6 BERT encoder layers and the 384 -> E projection ``text.proj``.

The towers stay in eval mode: BatchNorm uses its ImageNet running statistics and dropout is off (small
fine-tuning batches give noisy BatchNorm statistics; cf. ``freeze_bn_stats`` in open_clip's
``lock_image_tower``), so a step is deterministic given the batch. Gradients never flow into the frozen
blocks (their parameters have ``requires_grad=False``; autograd records nothing below the first
trainable layer). On CUDA the forward runs under ``torch.autocast`` (bf16 by default, fp16 with a
``GradScaler`` in ``ml.train``) and in channels_last memory format.

:func:`tuned_bundle` rebuilds a model with saved tower weights, for serving (``ml.inference.Embedder``).

On the CPU, ``TrainConfig.cache_tower_prefix`` feeds the tuner with the frozen part of the image tower
computed once per photo (``ml.tower_prefix``): each step then runs only the trained top.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from open_clip.hf_model import HFTextEncoder
from torch import nn
from torch.utils.data import DataLoader

from ml.config import ModelConfig, TrainConfig
from ml.dataset import TrainData
from ml.features import ImageFiles
from ml.model import ClipBundle, build_model
from ml.tower_prefix import (
    PrefixActivations,
    SplitImageTower,
    prefix_activations,
    suffix_features,
    trunk_blocks,
)

logger = logging.getLogger(__name__)

#: ``TrainConfig.amp`` values -> autocast dtype (CUDA only; ``"off"`` = float32).
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def tower_modules(model: nn.Module, *, image_blocks: int, text_layers: int) -> dict[str, nn.Module]:
    """The modules to train for the last ``image_blocks`` image blocks and ``text_layers`` text layers.

    Args:
        model: an open_clip model with a timm image tower whose trunk has ``blocks`` (EfficientNet,
            MobileNet...) and/or a Hugging Face text tower (``HFTextEncoder`` with ``encoder.layer``).
        image_blocks: 0 (image tower frozen) .. number of trunk blocks.
        text_layers: 0 (text tower frozen) .. number of encoder layers.

    Returns:
        ``{qualified module name: module}`` (names as in ``model.named_modules()``), in model order.

    Raises:
        ValueError: a count is negative or larger than the tower has, or the tower has no such blocks.
    """
    if image_blocks < 0 or text_layers < 0:
        raise ValueError(f"unfreeze counts must be >= 0, got image {image_blocks}, text {text_layers}")
    names = {m: n for n, m in model.named_modules()}
    chosen: list[nn.Module] = []
    if image_blocks:
        try:
            blocks = trunk_blocks(model)
        except ValueError as exc:
            raise ValueError(f"unfreeze_last_blocks={image_blocks}: {exc}") from exc
        trunk = model.visual.trunk
        if image_blocks > len(blocks):
            raise ValueError(
                f"unfreeze_last_blocks={image_blocks}, but the image trunk has {len(blocks)} blocks"
            )
        chosen += blocks[-image_blocks:]
        chosen += [
            m for m in (getattr(trunk, "conv_head", None), getattr(trunk, "bn2", None)) if m is not None
        ]
        chosen += [m for m in (getattr(model.visual, "head", None),) if m is not None]
    if text_layers:
        text = getattr(model, "text", None)
        if not isinstance(text, HFTextEncoder) or not hasattr(text.transformer, "encoder"):
            raise ValueError(
                f"unfreeze_text_layers={text_layers}: the text tower is not a Hugging Face encoder with "
                ".encoder.layer (supported: BERT-style towers such as MiniLM)"
            )
        layers = list(text.transformer.encoder.layer)
        if text_layers > len(layers):
            raise ValueError(
                f"unfreeze_text_layers={text_layers}, but the text encoder has {len(layers)} layers"
            )
        chosen += layers[-text_layers:]
        chosen += [m for m in (getattr(text, "proj", None),) if m is not None]
    return {names[m]: m for m in chosen}


class TowerTuner:
    """The partially trainable towers of a :class:`~ml.model.ClipBundle`, fed from image files and texts.

    The bundle's model is modified in place: every parameter is frozen except those of
    :func:`tower_modules`, and it is put in eval mode (see the module docstring).

    Args:
        bundle: the model (``ml.model.build_model``); use a private one, not a memoised serving bundle.
        image_paths: N image files, row i of the training data.
        texts: N product texts.
        image_blocks, text_layers: how many blocks / layers to unfreeze (see :func:`tower_modules`).
        amp: ``"bf16"``, ``"fp16"`` or ``"off"``; autocast is used on CUDA only (CPU runs float32).
        channels_last: run the image tower in channels_last memory format (faster convs on GPU and CPU).
        num_workers: DataLoader processes decoding JPEGs (0 = in this process).
        prefix: ``(split tower, cached activations)`` of ``ml.tower_prefix.prefix_activations``: the image
            side then runs only the tower's suffix on the cached activations (no JPEG decoding).
        text_bank: (N, E) float32 text-tower outputs, read instead of running the text tower when
            ``text_layers`` is 0 and ``prefix`` is given (a frozen tower gives the same outputs).

    Raises:
        ValueError: lengths differ, a count is out of range, or ``amp`` is unknown.
    """

    def __init__(
        self,
        bundle: ClipBundle,
        *,
        image_paths: Sequence[str | Path],
        texts: Sequence[str],
        image_blocks: int,
        text_layers: int,
        amp: str = "bf16",
        channels_last: bool = True,
        num_workers: int = 0,
        prefix: tuple[SplitImageTower, PrefixActivations] | None = None,
        text_bank: torch.Tensor | None = None,
    ) -> None:
        if len(image_paths) != len(texts):
            raise ValueError(f"{len(image_paths)} image paths but {len(texts)} texts")
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp={amp!r}: use one of {', '.join(AMP_DTYPES)}")
        self.bundle = bundle
        self.model = bundle.model
        self.device = bundle.device
        self.modules = tower_modules(self.model, image_blocks=image_blocks, text_layers=text_layers)
        self.model.requires_grad_(False)
        for m in self.modules.values():
            m.requires_grad_(True)
        self.model.eval()
        self.amp_dtype = AMP_DTYPES[amp] if self.device.type == "cuda" else None
        self.channels_last = channels_last
        if channels_last:
            self.model.visual.to(memory_format=torch.channels_last)
        self.num_workers = num_workers
        size = self.model.visual.preprocess_cfg["size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.images = ImageFiles(image_paths, bundle.preprocess, (3, int(h), int(w)))
        self.split, self.prefix = prefix if prefix is not None else (None, None)
        self.text_bank = text_bank if prefix is not None and text_layers == 0 else None
        self.tokens = bundle.tokenizer(list(texts))  # (N, L) int64
        pad_id = self.model.text.config.pad_token_id if isinstance(self.model.text, HFTextEncoder) else None
        self.pad_id = pad_id
        self.lengths = (self.tokens != (0 if pad_id is None else pad_id)).sum(1)  # (N,)
        n_train = sum(p.numel() for p in self.parameters())
        n_all = sum(p.numel() for p in self.model.parameters())
        logger.info(
            "tower fine-tuning: %d of %d parameters trainable (%s)", n_train, n_all, ", ".join(self.modules)
        )

    def parameters(self) -> list[nn.Parameter]:
        """The trainable tower parameters (for their own optimiser param group)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def named_trainable(self) -> dict[str, torch.Tensor]:
        """``{name: parameter}`` of the trainable tower parameters (names as in ``model.state_dict()``)."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers of the unfrozen modules, cloned to the CPU (contiguous float tensors).

        These keys are all a serving model needs on top of the base weights (:func:`tuned_bundle`).
        """
        prefixes = tuple(f"{n}." for n in self.modules)
        return {
            k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in self.model.state_dict().items()
            if k.startswith(prefixes)
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load tower weights saved by :meth:`state_dict` (raises ValueError on unknown keys)."""
        load_tower_state(self.model, state)

    def batches(
        self, batches: Sequence[torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Tower outputs of each batch of item indices, with gradients to the trainable blocks.

        Args:
            batches: (B,) int64 item-index tensors, in order.

        Yields:
            ``(idx (B,) int64, image (B, E) float32, text (B, E) float32)``, unnormalised; rows whose
            photo could not be read are zeros (as in the cached features).
        """
        if self.prefix is not None:  # cached prefix activations: no decoding, only the tower's top
            for idx in batches:
                yield idx, *self.encode_cached(idx)
            return
        loader = DataLoader(
            self.images,
            batch_sampler=[b.tolist() for b in batches],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for idx, (x, errors) in zip(batches, loader):
            img, txt = self.encode(idx, x, errors)
            yield idx, img, txt

    def encode(
        self, idx: torch.Tensor, x: torch.Tensor, errors: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward both towers: items ``idx`` (B,) with decoded images x (B, 3, H, W) float32 ->
        ``(image (B, E), text (B, E))`` float32 on the device; failed photos (non-empty ``errors``) give zeros."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = self.tokens[idx]  # (B, L)
        if self.pad_id is not None:  # dynamic padding: drop all-padding columns
            t = t[:, : max(int(self.lengths[idx].max()), 1)]
        t = t.to(self.device, non_blocking=True)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            img = self.model.encode_image(x)  # (B, E)
            txt = self.model.encode_text(t)  # (B, E)
        img, txt = img.float(), txt.float()
        bad = [j for j, e in enumerate(errors) if e]
        if bad:
            ok = torch.ones(len(idx), 1, device=img.device)
            ok[bad] = 0.0
            img = img * ok
        return img, txt

    def encode_cached(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers' outputs ``(image (B, E), text (B, E))`` float32 for items ``idx`` (B,) int64 from the
        cached prefix activations (image) and the text bank or the text tower; unreadable photos give zeros."""
        img = suffix_features(self.split, self.prefix, idx, self.device)
        if self.text_bank is not None:
            return img, self.text_bank[idx.to(self.text_bank.device)].to(self.device)
        t = self.tokens[idx]
        if self.pad_id is not None:
            t = t[:, : max(int(self.lengths[idx].max()), 1)]
        return img, self.model.encode_text(t.to(self.device)).float()

    def view_features(self, vi: torch.Tensor, version: torch.Tensor) -> torch.Tensor:
        """Image-tower outputs (B', E) float32, with gradients, of version ``version`` (B',) int64 (0: the
        clean photo, j ≥ 1: phone-photo view j) of the view photos ``vi`` (B',) int64 (indices into
        ``prefix.view_rows``), from the cached prefix activations."""
        vi, version = vi.cpu(), version.cpu()
        clean = self.prefix.clean[self.prefix.view_rows[vi]]  # (B', C, h, w)
        views = self.prefix.views[vi, (version - 1).clamp(min=0)]
        a = torch.where((version == 0)[:, None, None, None], clean, views)
        return self.split.suffix(a.to(self.device).float())

    @torch.no_grad()
    def refresh(self, image: torch.Tensor, text: torch.Tensor, items: np.ndarray, batch_size: int) -> None:
        """Overwrite rows ``items`` of the feature banks ``image``/``text`` (N, E) float32 with the current
        towers' outputs (no gradients), e.g. before validation."""
        items = np.asarray(items, dtype=np.int64)
        chunks = [torch.from_numpy(items[s : s + batch_size]) for s in range(0, len(items), batch_size)]
        for idx, img, txt in self.batches(chunks):
            dev_idx = idx.to(image.device)
            image[dev_idx] = img.to(image.dtype)
            text[dev_idx] = txt.to(text.dtype)


def tower_tuner(
    data: TrainData, cfg: TrainConfig, bundle: ClipBundle | None = None, cache_dir: Path | None = None
) -> TowerTuner:
    """The :class:`TowerTuner` of a training run (``ml.train``): the last ``cfg.unfreeze_last_blocks`` image
    blocks and ``cfg.unfreeze_text_layers`` text layers of ``bundle`` (default: a new
    ``build_model(ModelConfig())``), fed with ``data.image_paths`` and ``data.texts``; with
    ``cfg.cache_tower_prefix``, from prefix activations computed once (kept under ``cache_dir`` when given,
    ``ml.tower_prefix``), with ``cfg.tuning_views`` phone-photo views.

    Raises:
        ValueError: the data has no image paths or texts, or the model's embed_dim is not the features' E.
    """
    if data.image_paths is None or data.texts is None:
        raise ValueError(
            "tower fine-tuning (unfreeze_last_blocks / unfreeze_text_layers > 0) needs TrainData.image_paths "
            "and TrainData.texts (e.g. python -m ml.train --hm-root ...)"
        )
    bundle = bundle if bundle is not None else build_model(ModelConfig())
    e = data.image.shape[1]
    if bundle.embed_dim != e:
        raise ValueError(f"model {bundle.model_id} gives {bundle.embed_dim}-d features, the data has {e}-d")
    prefix = run_prefix(data, cfg, bundle, cache_dir) if cfg.cache_tower_prefix else None
    return TowerTuner(
        bundle,
        prefix=prefix,
        text_bank=torch.from_numpy(np.ascontiguousarray(data.text, dtype=np.float32)),
        image_paths=data.image_paths,
        texts=data.texts,
        image_blocks=cfg.unfreeze_last_blocks,
        text_layers=cfg.unfreeze_text_layers,
        amp=cfg.amp,
        channels_last=cfg.channels_last,
        num_workers=cfg.num_workers,
    )


def run_prefix(
    data: TrainData,
    cfg: TrainConfig,
    bundle: ClipBundle,
    cache_dir: Path | None,
    on_batch: Callable[[str, int, int], None] | None = None,
) -> tuple[SplitImageTower, PrefixActivations]:
    """The prefix activations a run of ``cfg`` trains on (``ml.tower_prefix.prefix_activations`` of the
    last ``cfg.unfreeze_last_blocks`` blocks, with ``cfg.tuning_views`` views of ``cfg.tuning_view_photos``
    photos seeded by ``cfg.seed``), through the cache under ``cache_dir``; ``on_batch`` as there."""
    return prefix_activations(
        data,
        bundle,
        cfg.unfreeze_last_blocks,
        views=cfg.tuning_views,
        view_photos=cfg.tuning_view_photos,
        seed=cfg.seed,
        cache_dir=cache_dir,
        on_batch=on_batch,
    )


def tuned_features(
    bundle: ClipBundle, data: TrainData, cfg: TrainConfig, cache_dir: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Both towers' outputs ``(image (N, E), text (N, E))`` float32 of every item of ``data`` with the
    bundle's current (tuned) weights: with ``cfg.cache_tower_prefix`` the image side runs the tower's top on
    the cached prefix activations (and the frozen text side is ``data.text``); else both towers run in full
    (``ml.features.FeatureExtractor``).
    """
    if cfg.cache_tower_prefix:
        split, acts = prefix_activations(data, bundle, cfg.unfreeze_last_blocks, cache_dir=cache_dir)
        image = np.zeros_like(data.image, dtype=np.float32)
        with torch.no_grad():
            for s in range(0, len(image), 256):
                idx = torch.arange(s, min(s + 256, len(image)))
                image[s : s + len(idx)] = suffix_features(split, acts, idx, bundle.device).cpu().numpy()
        if cfg.unfreeze_text_layers == 0:
            return image, np.asarray(data.text, dtype=np.float32)
    from ml.features import FeatureExtractor

    ex = FeatureExtractor(bundle, batch_size=cfg.batch_size if bundle.device.type == "cuda" else 32)
    if not cfg.cache_tower_prefix:
        image, _ = ex.encode_images(data.image_paths, progress=True)
    return image, ex.encode_texts(data.texts, progress=True)


def load_tower_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy fine-tuned tower weights (a partial state dict) into ``model`` in place.

    Raises:
        ValueError: ``state`` has keys the model lacks or tensors of another shape (weights of another model).
    """
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if unknown or wrong:
        raise ValueError(
            f"tower weights do not fit this model: {len(unknown)} unknown keys {unknown[:3]}, "
            f"{len(wrong)} shape mismatches {wrong[:3]}"
        )
    model.load_state_dict(state, strict=False)


def tower_state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over names, dtypes, shapes and bytes of a (partial) state dict, in sorted key order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tuned_bundle(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> ClipBundle:
    """Build the model of ``cfg`` and load fine-tuned tower weights into it.

    Returns:
        A :class:`~ml.model.ClipBundle` whose ``model_id`` is the base model's plus
        ``+towers-<fingerprint>``, so the feature cache never mixes tuned and frozen features.

    Raises:
        ValueError: the weights do not fit the model (see :func:`load_tower_state`).
    """
    bundle = build_model(cfg)
    load_tower_state(bundle.model, state)
    bundle.model.eval()
    bundle.model_id = f"{bundle.model_id}+towers-{tower_state_fingerprint(state)[:16]}"
    return bundle
