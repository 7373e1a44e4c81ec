"""Image-tower fine-tuning on the CPU: the frozen prefix of the tower computed once, only its top trained.

When ``TrainConfig.unfreeze_last_blocks`` = k, everything below the last k blocks of the image tower is
frozen and in eval mode, so its output for a given photo never changes during training. With
``TrainConfig.cache_tower_prefix`` the trainer computes that output (the *prefix activations*, a
(C, H, W) map per photo; 192 × 7 × 7 for k ≤ 4 on EfficientNet-Lite0) once for every photo, stores it as
float16, and each step runs only the *suffix* (the last k blocks, ``conv_head``, ``bn2``, pooling and
the projection) with gradients. On a 2-core CPU that turns a step of full forward and backward passes
into a fraction of a second, which is what makes tower fine-tuning a CPU job (the cache is the "frozen
feature extractor" of transfer learning, moved up to the first trained block).

Phone-photo views (``TrainConfig.tuning_views``; SimCLR's augmented views, Chen et al. 2020, made by
``ml.augment.phone_photo`` with the evaluation's recipe and other seeds) get prefix activations too, so
NT-Xent between a photo's clean and phone versions (``ml.views.PhotoViews``) trains the tower's top.

The suffix reproduces ``model.encode_image`` exactly (``tests/ml/test_tower_prefix.py``): open_clip's
``TimmModel`` runs ``trunk`` (timm's ``forward_features`` then ``forward_head``) and then ``head``.
Activations are cached on disk (``.npy`` files keyed by the model, k, the photos and the view recipe).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ml.dataset import TrainData
from ml.features import ImageFiles, _thread_prefetch
from ml.model import ClipBundle

logger = logging.getLogger(__name__)


def trunk_blocks(model: nn.Module) -> list[nn.Module]:
    """The image trunk's blocks in forward order (timm EfficientNet / MobileNet stages flattened).

    Raises:
        ValueError: the image tower is not a timm trunk with ``.blocks``.
    """
    trunk = getattr(model.visual, "trunk", None)
    if trunk is None or not hasattr(trunk, "blocks"):
        raise ValueError(
            f"the image tower {type(model.visual).__name__} has no timm trunk with .blocks "
            "(supported: timm EfficientNet/MobileNet-style towers)"
        )
    return [b for stage in trunk.blocks for b in (stage if isinstance(stage, nn.Sequential) else [stage])]


class SplitImageTower:
    """``model.encode_image`` split before the last ``k`` trunk blocks: ``suffix(prefix(x)) == encode_image(x)``.

    Args:
        model: an open_clip model with a timm image trunk (:func:`trunk_blocks`).
        k: 1 .. number of blocks.

    Raises:
        ValueError: ``k`` out of range, or an unsupported tower.
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        blocks = trunk_blocks(model)
        if not 1 <= k <= len(blocks):
            raise ValueError(f"cannot split before the last {k} blocks: the image trunk has {len(blocks)}")
        self.visual = model.visual
        self.trunk = model.visual.trunk
        self.head_blocks, self.tail_blocks = blocks[:-k], blocks[-k:]

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 preprocessed photos -> (B, C, h, w) activations before the last k blocks."""
        x = self.trunk.bn1(self.trunk.conv_stem(x))
        for b in self.head_blocks:
            x = b(x)
        return x

    def suffix(self, a: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) float32 prefix activations -> (B, E) float32 image-tower output (unnormalised)."""
        for b in self.tail_blocks:
            a = b(a)
        a = self.trunk.forward_head(self.trunk.bn2(self.trunk.conv_head(a)))
        return self.visual.head(a)


@dataclass
class PrefixActivations:
    """Cached prefix activations (float16, on the CPU) of N clean photos and of views of M of them.

    Attributes:
        clean: (N, C, h, w) float16, row i = the data's row i; failed: (N,) bool, photos that could not be
            read (their tower output is zeros, as in the feature cache).
        view_rows: (M,) int64 data rows with views; views: (M, K, C, h, w) float16 their K phone photos.
    """

    clean: torch.Tensor
    failed: torch.Tensor
    view_rows: torch.Tensor
    views: torch.Tensor


def suffix_features(
    split: SplitImageTower, acts: PrefixActivations, idx: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """Image-tower outputs (B, E) float32 on ``device`` of rows ``idx`` (B,) int64 from their cached prefix
    activations (with gradients when enabled); rows whose photo could not be read are zeros, as in the
    feature cache."""
    img = split.suffix(acts.clean[idx].to(device).float())
    bad = acts.failed[idx]
    if bad.any():
        img = img * (~bad).to(img.device, img.dtype)[:, None]
    return img


class PrefixEncoder:
    """Prefix activations of photos through a :class:`SplitImageTower`, in batches, without gradients.

    ``encode_pil`` / ``embed_dim`` / ``batch_size`` follow ``ml.features.FeatureExtractor`` so that
    ``ml.augment.phone_photo_features`` can make phone photos of catalog photos with it
    (each row then holds the flattened (C · h · w) activations).
    """

    def __init__(self, bundle: ClipBundle, split: SplitImageTower, batch_size: int = 32) -> None:
        self.bundle, self.split, self.batch_size = bundle, split, batch_size
        bundle.model.visual.to(memory_format=torch.channels_last)  # faster convs (as the tuner runs it)
        size = bundle.model.visual.preprocess_cfg["size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.input_size = (3, int(h), int(w))
        self.shape = tuple(self._run(torch.zeros(1, *self.input_size)).shape[1:])  # (C, h, w)
        self.embed_dim = int(np.prod(self.shape))

    @torch.inference_mode()
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.bundle.device).contiguous(memory_format=torch.channels_last)
        return self.split.prefix(x).float().contiguous().cpu()

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        """N PIL images -> (N, C · h · w) float32 flattened activations."""
        x = torch.stack([self.bundle.preprocess(im.convert("RGB")) for im in images])
        return self._run(x).reshape(len(images), -1).numpy()

    def encode_paths(
        self,
        paths: Sequence[str],
        *,
        progress: bool = True,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """N photo files -> ``((N, C, h, w) float16 activations, (N,) bool failed)``; decoding runs one
        batch ahead in a thread; an unreadable file gives zeros and ``failed`` (never raises).
        ``on_batch(photos done, N)`` after each batch."""
        out = np.zeros((len(paths), *self.shape), dtype=np.float16)
        failed = np.zeros(len(paths), dtype=bool)
        files = ImageFiles(paths, self.bundle.preprocess, self.input_size)
        start = 0
        with tqdm(total=len(paths), unit="photo", desc="tower prefix", disable=not progress) as bar:
            for x, errors in _thread_prefetch(files, self.batch_size):
                out[start : start + len(x)] = self._run(x).numpy()
                failed[start : start + len(x)] = [bool(e) for e in errors]
                start += len(x)
                bar.update(len(x))
                if on_batch is not None:
                    on_batch(start, len(paths))
        return out, failed


def view_rows(data: TrainData, photos: int, seed: int, usable: np.ndarray | None = None) -> np.ndarray:
    """(M,) sorted int64 rows drawn (seeded) among the rows trained on: never the held-out or validation
    products (the photo-search evaluation queries the held-out ones), nor rows not ``usable`` ((N,) bool:
    e.g. False for photos that could not be read)."""
    keep = np.ones(len(data.image), dtype=bool) if usable is None else np.asarray(usable, dtype=bool).copy()
    keep[data.heldout_items] = keep[data.val_items] = False
    train = np.flatnonzero(keep)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(train, size=min(photos, len(train)), replace=False)).astype(np.int64)


def _cache_key(bundle: ClipBundle, k: int, paths: Sequence[str], extra: str) -> str:
    h = hashlib.sha256(f"{bundle.model_id}|{k}|{extra}|".encode())
    for p in paths:
        h.update(p.encode() + b"\0")
    return h.hexdigest()[:20]


def _cached(
    path: Path | None, compute: Callable[[], tuple[np.ndarray, np.ndarray | None]]
) -> tuple[np.ndarray, np.ndarray | None]:
    if path is not None and path.exists():
        z = np.load(path)
        return z["a"], z.get("failed")
    a, failed = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, a=a, **({} if failed is None else {"failed": failed}))
        tmp.replace(path)
    return a, failed


def prefix_activations(
    data: TrainData,
    bundle: ClipBundle,
    k: int,
    *,
    views: int = 0,
    view_photos: int = 0,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: bool = True,
    on_batch: Callable[[str, int, int], None] | None = None,
) -> tuple[SplitImageTower, PrefixActivations]:
    """The split tower and the prefix activations of every clean photo of ``data`` and of ``views``
    phone-photo views (seeds ``seed`` .. ``seed + views - 1``, ``ml.augment``) of ``view_photos`` trained
    rows (:func:`view_rows`), read from ``cache_dir`` when computed before with the same inputs.
    ``on_batch(what, photos done, N)`` reports the computing (``what``: ``"tower prefix"``, then
    ``"phone-photo views"``); nothing is reported for what the cache holds.

    Raises:
        ValueError: ``data`` has no ``image_paths`` (or ``item_ids`` with views), or ``k`` is out of range.
    """
    if data.image_paths is None:
        raise ValueError("cache_tower_prefix needs TrainData.image_paths (e.g. python -m ml.train --hm-root)")
    split = SplitImageTower(bundle.model, k)
    enc = PrefixEncoder(bundle, split)
    paths = [str(p) for p in data.image_paths]
    key = _cache_key(bundle, k, paths, "clean")
    where = (lambda name: cache_dir / "prefix" / name) if cache_dir is not None else (lambda name: None)
    report = (lambda what: lambda d, n: on_batch(what, d, n)) if on_batch is not None else (lambda what: None)
    clean, failed = _cached(
        where(f"{key}.npz"),
        lambda: enc.encode_paths(paths, progress=progress, on_batch=report("tower prefix")),
    )
    readable = ~failed if failed is not None else None  # a photo that cannot be read gets no views
    rows = view_rows(data, view_photos, seed, readable) if views and view_photos else np.zeros(0, np.int64)
    shape = clean.shape[1:]
    view_acts = np.zeros((0, max(views, 1), *shape), dtype=np.float16)
    if len(rows):
        if data.item_ids is None:
            raise ValueError("phone-photo views need TrainData.item_ids (the photos' seeds are keyed by id)")
        # lazy: scipy and the augmentation code, only for runs with views
        from ml.augment import training_view_features

        keys = [str(data.item_ids[r]) for r in rows]
        vkey = _cache_key(bundle, k, [paths[r] for r in rows], f"views {views} seed {seed} keys {keys}")

        def compute() -> tuple[np.ndarray, None]:
            pool = [paths[r] for r in view_rows(data, len(data.image), seed, readable)]
            flat = training_view_features(
                enc,
                [paths[r] for r in rows],
                keys,
                pool,
                views=views,
                seed=seed,
                progress=progress,
                on_batch=report("phone-photo views"),
            )  # (M, V, C·h·w) float32
            return flat.reshape(len(rows), views, *shape).astype(np.float16), None

        view_acts, _ = _cached(where(f"{vkey}.npz"), compute)
    logger.info(
        "tower prefix activations: %d photos, %d x %d views, %s each (float16)",
        len(paths),
        len(rows),
        views,
        shape,
    )
    acts = PrefixActivations(
        clean=torch.from_numpy(clean),
        failed=torch.from_numpy(failed if failed is not None else np.zeros(len(paths), bool)),
        view_rows=torch.from_numpy(rows),
        views=torch.from_numpy(view_acts),
    )
    return split, acts
