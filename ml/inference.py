"""Inference for serving and indexing: tower features → head vectors, in batches. No Django.

An :class:`Embedder` bundles the open_clip model (frozen, or with the version's fine-tuned tower
weights, ``ml.towers``), the feature extractor, the feature cache and one model version's trained heads. Workers keep one per process (building the towers takes a
few seconds), the web process uses one for text and photo queries.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ml.config import ModelConfig
from ml.features import FeatureCache, FeatureExtractor
from ml.heads import RecommenderHeads
from ml.model import ClipBundle, build_model
from ml.towers import tower_state_fingerprint, tuned_bundle

logger = logging.getLogger(__name__)


@dataclass
class ItemVectors:
    """Vectors of N items, all float32 and unit norm.

    Attributes:
        image: (N, E) general-space image vectors.
        text: (N, E) general-space text vectors.
        fused: (N, E) normalised mean of image and text.
        compat: (N, C) compatibility-space vectors.
        failed: ``[(row, reason)]`` items whose photo could not be read (their rows use the text only).
    """

    image: np.ndarray
    text: np.ndarray
    fused: np.ndarray
    compat: np.ndarray
    failed: list[tuple[int, str]]


_BUNDLES: dict[str, ClipBundle] = {}


def get_bundle(cfg: ModelConfig, tower_state: dict[str, torch.Tensor] | None = None) -> ClipBundle:
    """Build the open_clip model once per process and configuration (memoised).

    Args:
        cfg: the model.
        tower_state: fine-tuned tower weights (``heads.tower_state``) loaded on top of the base weights
            (:func:`ml.towers.tuned_bundle`; memoised per weights fingerprint), or ``None``.
    """
    key = repr(sorted((k, v) for k, v in cfg.to_dict().items() if k != "tower_backend"))  # runs any backend
    if tower_state:
        key += "+towers-" + tower_state_fingerprint(tower_state)
        if key not in _BUNDLES:
            _BUNDLES[key] = tuned_bundle(cfg, tower_state)
    elif key not in _BUNDLES:
        _BUNDLES[key] = build_model(cfg)
    return _BUNDLES[key]


class Embedder:
    """Towers + trained heads of one model version.

    The towers are the base model's, or, when ``heads.tower_state`` holds fine-tuned tower weights
    (tower fine-tuning, ``ml.towers``; restored by :func:`ml.heads.load_heads`), the tuned ones: serving
    then embeds with the towers the heads were trained with, and the feature cache keys their outputs
    by a model_id of their own.

    Args:
        model_cfg: which open_clip model (must match the one the heads were trained on).
        heads: the version's heads (or :func:`ml.heads.zero_shot_heads`).
        cache_dir: feature cache folder (``None`` = no cache).
        batch_size: images per forward pass.
        text_batch_size: texts per forward pass (length-sorted, dynamically padded).
        amp: bf16 autocast for the towers on CUDA, and on CPUs with native bf16 (AMX / AVX512-BF16):
            ~2x faster, not bit-identical to float32 (own cache key); off by default.
        onnx_dir: where the ONNX exports of ``model_cfg.tower_backend`` ``"onnx"`` / ``"onnx-int8"`` are
            kept (default :func:`ml.onnx_towers.default_onnx_dir`, ``$ML_ONNX_DIR``).

    Raises:
        ValueError: the heads' embed_dim differs from the model's, or the tuned tower weights do not fit it.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        heads: RecommenderHeads,
        cache_dir: Path | None = None,
        batch_size: int = 32,
        text_batch_size: int = 32,
        amp: bool = False,
        onnx_dir: Path | None = None,
    ) -> None:
        self.model_cfg = model_cfg
        self.bundle = get_bundle(model_cfg, getattr(heads, "tower_state", None))
        self.heads = heads.eval()
        if heads.embed_dim != self.bundle.embed_dim:
            raise ValueError(
                f"heads expect embed_dim {heads.embed_dim}, model {model_cfg.name} gives "
                f"{self.bundle.embed_dim}"
            )
        self.extractor = FeatureExtractor(
            self.bundle,
            batch_size=batch_size,
            text_batch_size=text_batch_size,
            amp=amp,
            backend=model_cfg.tower_backend,
            onnx_dir=onnx_dir,
        )
        self.cache = FeatureCache(cache_dir) if cache_dir is not None else None
        self._text_lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._text_lru_lock = threading.Lock()  # threaded servers (runserver, gthread) share the Embedder

    def tower_features(
        self,
        image_paths: Sequence[str | Path],
        texts: Sequence[str],
        progress: bool = False,
        on_batch: Callable[[int, int], None] | None = None,
    ):
        """Frozen tower outputs: ``(image (N, E), text (N, E), failed)`` float32, unnormalised.

        ``on_batch(inputs done, 2N)`` is called as the photos, then the texts, are read (cache) and
        encoded: photos count 0..N, texts N..2N.
        """
        n = len(image_paths)
        on_img = on_txt = None
        if on_batch is not None:
            on_img = lambda done, _: on_batch(done, n + len(texts))  # noqa: E731
            on_txt = lambda done, _: on_batch(n + done, n + len(texts))  # noqa: E731
        if self.cache is not None:
            img, failed = self.cache.get_or_compute_images(
                self.extractor, list(image_paths), progress=progress, return_failed=True, on_batch=on_img
            )
            txt = self.cache.get_or_compute_texts(self.extractor, list(texts), progress, on_txt)
        else:
            img, failed = self.extractor.encode_images(list(image_paths), progress=progress, on_batch=on_img)
            txt = self.extractor.encode_texts(list(texts), progress=progress, on_batch=on_txt)
        return img, txt, failed

    @torch.no_grad()
    def vectors_from_features(self, image: np.ndarray, text: np.ndarray, failed=()) -> ItemVectors:
        """Apply the heads: (N, E), (N, E) float32 tower outputs → :class:`ItemVectors`.

        Items whose photo failed (rows listed in ``failed``) get their text vector as image vector, so
        they stay searchable.
        """
        img_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        txt_t = torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32))
        bad = [r for r, _ in failed]
        if bad:
            img_t[bad] = txt_t[bad]
        img_v, txt_v = self.heads.general(img_t, txt_t)
        fused = F.normalize(img_v + txt_v, dim=-1)
        compat = self.heads.compat(img_t, txt_t)
        return ItemVectors(img_v.numpy(), txt_v.numpy(), fused.numpy(), compat.numpy(), list(failed))

    def embed_items(self, image_paths: Sequence[str | Path], texts: Sequence[str], progress: bool = False):
        """Photos + texts of N items → :class:`ItemVectors` (batched; cached tower features reused)."""
        if len(image_paths) != len(texts):
            raise ValueError(f"{len(image_paths)} image paths but {len(texts)} texts")
        img, txt, failed = self.tower_features(image_paths, texts, progress=progress)
        return self.vectors_from_features(img, txt, failed)

    #: Distinct query texts whose vectors are kept (least recently used dropped first).
    TEXT_CACHE_SIZE = 1024

    @torch.no_grad()
    def embed_query_text(self, query: str) -> np.ndarray:
        """A free-text query → (E,) float32 unit vector in the general (text) space.

        LRU-cached per process (:attr:`TEXT_CACHE_SIZE` texts, thread-safe); the key is the query with
        runs of whitespace collapsed, so ``"black  dress "`` and ``"black dress"`` share one entry.
        """
        key = " ".join(query.split())
        with self._text_lru_lock:
            if key in self._text_lru:
                self._text_lru.move_to_end(key)
                return self._text_lru[key]
        feats = torch.from_numpy(self.extractor.encode_texts([key]))
        _, txt_v = self.heads.general(feats, feats)
        vec = txt_v[0].numpy()
        with self._text_lru_lock:
            self._text_lru[key] = vec
            while len(self._text_lru) > self.TEXT_CACHE_SIZE:
                self._text_lru.popitem(last=False)
        return vec

    @torch.no_grad()
    def embed_query_image(self, image: Image.Image) -> np.ndarray:
        """A shopper's photo → (E,) float32 unit vector in the general (image) space."""
        feats = torch.from_numpy(self.extractor.encode_pil([image.convert("RGB")]))
        img_v, _ = self.heads.general(feats, feats)
        return img_v[0].numpy()
