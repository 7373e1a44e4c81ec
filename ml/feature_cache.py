"""The on-disk feature cache of the frozen towers: one SQLite file of float32 rows keyed by model id,
kind (image or text) and the input's SHA-256 (a photo's bytes, a text's UTF-8), so a second run (or a
second demo) encodes only what changed. Moved out of :mod:`ml.features` (re-exported there)."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Failure", "FeatureCache", "TowerEncoder"]

#: An input that could not be encoded: ``(row index, reason)``.
Failure = tuple[int, str]


class TowerEncoder(Protocol):
    """What the cache needs of :class:`ml.features.FeatureExtractor` to compute its misses."""

    @property
    def model_id(self) -> str: ...

    @property
    def embed_dim(self) -> int: ...

    def encode_images(
        self,
        paths: Sequence[str | Path],
        progress: bool = ...,
        on_batch: Callable[[int, int], None] | None = ...,
    ) -> tuple[np.ndarray, list[Failure]]: ...

    def encode_texts(
        self, texts: Sequence[str], progress: bool = ..., on_batch: Callable[[int, int], None] | None = ...
    ) -> np.ndarray: ...


class FeatureCache:
    """On-disk feature cache: one SQLite file under ``root``, one row per (model_id, kind, key).

    ``kind`` is ``"image"`` (key: SHA-256 of the file's bytes, so a renamed file hits and a changed file
    misses) or ``"text"`` (key: SHA-256 of the UTF-8 text). Vectors are stored as little-endian float32
    blobs of the extractor's (unnormalised) output. Each write is one transaction (atomic); SQLite's locking
    makes concurrent readers/writers (several Celery workers) safe. Failed images are never cached.

    Attributes:
        hits, misses: counts over this object's lifetime (unique keys looked up / computed).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "features.sqlite3"
        self.hits = 0
        self.misses = 0
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS features (model_id TEXT NOT NULL, kind TEXT NOT NULL, "
                "key TEXT NOT NULL, vec BLOB NOT NULL, PRIMARY KEY (model_id, kind, key)) WITHOUT ROWID"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get(self, model_id: str, kind: str, keys: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        """Cached vectors for ``keys``: {key: (dim,) float32}; absent keys (or wrong-sized rows) are left out."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        db = self._connect()
        try:
            for s in range(0, len(unique), 500):
                chunk = unique[s : s + 500]
                rows = db.execute(
                    f"SELECT key, vec FROM features WHERE model_id = ? AND kind = ? "
                    f"AND key IN ({','.join('?' * len(chunk))})",
                    (model_id, kind, *chunk),
                )
                for key, blob in rows:
                    vec = np.frombuffer(blob, dtype="<f4")
                    if vec.shape == (dim,):
                        found[key] = vec.astype(np.float32)
        finally:
            db.close()
        return found

    def put(self, model_id: str, kind: str, items: dict[str, np.ndarray]) -> None:
        """Store {key: (E,) float32} in one transaction (all or nothing); existing rows are replaced."""
        if not items:
            return
        rows = [(model_id, kind, k, np.asarray(v, dtype="<f4").tobytes()) for k, v in items.items()]
        db = self._connect()
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?)", rows)
        finally:
            db.close()

    def put_computed(
        self,
        model_id: str,
        paths: Sequence[str | Path],
        texts: Sequence[str],
        image: np.ndarray,
        text: np.ndarray,
        skip: Sequence[int] = (),
    ) -> None:
        """Store features computed elsewhere under the keys the ``get_or_compute_*`` methods read (the
        photo files' and texts' SHA-256), so that those find them: e.g. a tuned tower's features computed
        from cached prefix activations (``ml.towers.tuned_features``).

        Args:
            image, text: (N, E) float32 features of ``paths`` and ``texts`` (N each).
            skip: rows whose photo is not stored (unreadable: their zeros are no feature).
        """
        skipped = set(skip)
        photos = {k: image[i] for i, p in enumerate(paths) if i not in skipped and (k := _file_sha256(p))}
        self.put(model_id, "image", photos)
        self.put(
            model_id,
            "text",
            {hashlib.sha256(t.encode("utf-8")).hexdigest(): text[i] for i, t in enumerate(texts)},
        )

    def get_or_compute_images(
        self,
        extractor: TowerEncoder,
        paths: Sequence[str | Path],
        progress: bool = False,
        return_failed: bool = False,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray | tuple[np.ndarray, list[Failure]]:
        """Image features from the cache, encoding only the misses (each distinct file content once).

        Args:
            extractor: computes misses; its ``model_id`` keys the cache.
            paths: N image files.
            progress: progress bar while encoding misses.
            return_failed: also return the failures.
            on_batch: called with ``(images done, N)`` once the cache was read (hits count as done)
                and after each encoded batch; the last call has done == N.

        Returns:
            (N, E) float32, unnormalised; rows of unreadable files are zeros (logged as warnings). With
            ``return_failed``: ``(features, failed)`` as in :meth:`ml.features.FeatureExtractor.encode_images`.
        """
        keys = [_file_sha256(p) for p in paths]  # None: unreadable, left to the extractor to report

        def compute(
            idx: list[int], done: Callable[[int, int], None] | None
        ) -> tuple[np.ndarray, list[Failure]]:
            return extractor.encode_images([paths[i] for i in idx], progress=progress, on_batch=done)

        return self._get_or_compute("image", extractor, keys, compute, return_failed, on_batch)

    def get_or_compute_texts(
        self,
        extractor: TowerEncoder,
        texts: Sequence[str],
        progress: bool = False,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Text features from the cache, encoding only the misses: N texts -> (N, E) float32, unnormalised.
        ``on_batch(texts done, N)`` as for :meth:`get_or_compute_images` (hits count as done)."""
        keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]

        def compute(
            idx: list[int], done: Callable[[int, int], None] | None
        ) -> tuple[np.ndarray, list[Failure]]:
            return extractor.encode_texts([texts[i] for i in idx], progress=progress, on_batch=done), []

        return self._get_or_compute("text", extractor, keys, compute, False, on_batch)

    def _get_or_compute(
        self,
        kind: str,
        extractor: TowerEncoder,
        keys: list[str | None],
        compute: Callable[[list[int], Callable[[int, int], None] | None], tuple[np.ndarray, list[Failure]]],
        return_failed: bool,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray | tuple[np.ndarray, list[Failure]]:
        """Read the cache, ``compute(missing input indices, on encoded (k, _))`` the misses (each key once)
        and store them. ``on_batch(done, N)``: once with the hits before encoding, after each encoded
        batch, and (done == N) at the end."""
        n = len(keys)
        dim = extractor.embed_dim
        out = np.zeros((len(keys), dim), dtype=np.float32)  # (N, E)
        cached = self.get(extractor.model_id, kind, [k for k in keys if k is not None], dim)
        groups: dict[str, list[int]] = {}  # missing key -> the input indices sharing it
        unreadable: list[int] = []  # no key (file unreadable): the extractor reports why
        for i, k in enumerate(keys):
            if k is None:
                unreadable.append(i)
            elif k in cached:
                out[i] = cached[k]
            else:
                groups.setdefault(k, []).append(i)
        self.hits += len(cached)
        self.misses += len(groups)
        failed: list[Failure] = []
        todo = [members[0] for members in groups.values()] + unreadable
        if todo:
            hits = n - len(todo)  # cached or sharing a key with an encoded input
            done = None
            if on_batch is not None:
                on_batch(hits, n)
                done = lambda k, _: on_batch(hits + k, n)  # noqa: E731
            feats, bad = compute(todo, done)  # (len(todo), E), failures indexed into todo
            reasons = dict(bad)
            new: dict[str, np.ndarray] = {}
            for j, i in enumerate(todo):
                k = keys[i]
                members = groups[k] if k is not None else [i]
                if j in reasons:
                    failed.extend((m, reasons[j]) for m in members)
                else:
                    out[members] = feats[j]
                    if k is not None:
                        new[k] = feats[j]
            self.put(extractor.model_id, kind, new)
        failed.sort()
        if on_batch is not None:
            on_batch(n, n)
        return (out, failed) if return_failed else out


def _file_sha256(path: str | Path) -> str | None:
    """SHA-256 hex of a file's bytes, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None
