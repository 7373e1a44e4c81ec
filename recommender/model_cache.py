"""The one per-process cache of model versions' weights: heads, and towers + heads for embedding.

A version's ``heads.pt`` is read once per process. Compatibility scoring needs only the heads (small);
text and photo queries and the embedding tasks need the towers too, built on first use around the
same heads object (:class:`ml.inference.Embedder`, whose towers are themselves memoised per
configuration by :func:`ml.inference.get_bundle`). Thread-safe: threaded servers share it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from django.conf import settings

from ml.config import ModelConfig
from ml.heads import RecommenderHeads, load_heads
from ml.inference import Embedder
from recommender.models import ModelVersion


@dataclass
class _Loaded:
    heads: RecommenderHeads
    embedder: Embedder | None = None


_LOCK = threading.RLock()
_VERSIONS: dict[int, _Loaded] = {}


def _loaded(version: ModelVersion) -> _Loaded:
    with _LOCK:
        if version.pk not in _VERSIONS:
            heads, _ = load_heads(version.artifact_path)
            _VERSIONS[version.pk] = _Loaded(heads=heads.eval())
        return _VERSIONS[version.pk]


def heads_for(version: ModelVersion) -> RecommenderHeads:
    """The trained heads of a version, in eval mode (read from its artifact once per process).

    Raises:
        FileNotFoundError: the version's artifact is missing.
    """
    return _loaded(version).heads


def embedder_for(version: ModelVersion) -> Embedder:
    """Towers + heads of a version for embedding products and queries (built once per process).

    Raises:
        FileNotFoundError: the version's artifact is missing.
        ValueError: the heads do not fit the version's model (:class:`ml.inference.Embedder`).
    """
    with _LOCK:
        entry = _loaded(version)
        if entry.embedder is None:
            cfg = ModelConfig(**version.config["model"])
            entry.embedder = Embedder(cfg, entry.heads, cache_dir=settings.ML_FEATURE_CACHE_DIR)
        return entry.embedder
