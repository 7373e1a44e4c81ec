"""The data a training run reads, and how it is built and split: plain NumPy, no Django.

* :class:`TrainData`: tower outputs, slots, product types and outfits of N items, as arrays; saved to and
  loaded from an ``.npz`` file.
* Splits: :func:`split_outfits` (train / validation / test outfits) and :func:`split_items` (held-out and
  validation products), fixed per key by a salted hash (:func:`ml.data.held_out`) and independent of any
  training seed; :func:`category_ids` numbers string labels; :func:`training_rows` gives the rows a run
  trains and validates on.
* :func:`train_data_from_hm`: a :class:`TrainData` straight from the H&M sample folder
  (``recommender.ml_bridge.train_data`` builds the same arrays from the catalog's rows);
  :func:`hm_articles` and :func:`hm_train_data` are its two halves (rows, then arrays from features).
* What a training step samples: :func:`outfit_pairs` (anchor, positive) and :class:`NegativeSampler`
  (candidate negatives) for the compatibility triplets.
* :func:`fitb_questions`: fill-in-the-blank questions, for validation (``ml.train``) and evaluation
  (``ml.evaluate``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ml.audience import audience_ids
from ml.data import (
    HMArticle,
    held_out,
    outfits_from_baskets,
    read_articles,
    read_baskets,
    select_articles,
)
from ml.slots import SLOT_INDEX

logger = logging.getLogger(__name__)


# -----------------------------------------------------------------------------
# the arrays of a run


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
        attrs: extra (N,) int64 attribute ids: ``section``, ``department``, ``colour`` (the attribute-match
            baseline), ``audience`` (indices into ``ml.audience.AUDIENCE_GROUPS``: that baseline and
            the audience coherence of complete-the-look), ``variant`` (the colour-variant group: product
            code / ``Product.variant_group``; the evaluation protocols never offer an answer's variant).
        heldout_items: (G,) int64 products never seen by the image↔text loss: the gallery of the
            text→item evaluation (``ml.evaluate``).
        val_items: (V,) int64 products also kept out of the image↔text loss, for early stopping.
        image_paths: N photo files (row order), needed only for tower fine-tuning (``ml.towers``).
        texts: N product texts, needed only for tower fine-tuning.
        view_rows: (M,) int64 rows with phone-photo views; view_image: (M, K, E) float32 image-tower
            outputs of K phone-photo views of each (``ml.photo_robustness``; read by ``TrainConfig.w_view``).
        text_view_rows: (M',) int64 rows with paraphrased texts; text_views: (M', P, E) float32 text-tower
            outputs of P paraphrases of each (``ml.department_holdout``; read by ``TrainConfig.p_text_view``).
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
    image_paths: list[str] | None = None
    texts: list[str] | None = None
    view_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    view_image: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1), np.float32))
    text_view_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    text_views: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1), np.float32))

    def __post_init__(self) -> None:
        n = len(self.image)
        for rows_name, feats_name in (("view_rows", "view_image"), ("text_view_rows", "text_views")):
            rows, feats = getattr(self, rows_name), getattr(self, feats_name)
            if not len(rows):
                continue
            if feats.shape[::2] != (len(rows), self.image.shape[1]):
                raise ValueError(
                    f"{feats_name} {feats.shape} must be ({len(rows)}, K, {self.image.shape[1]})"
                )
            if rows.min() < 0 or rows.max() >= n:
                raise ValueError(f"{rows_name} must be rows in [0, {n})")
        for name in ("image_paths", "texts"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"{name} has {len(v)} entries for {n} items")
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
        if self.image_paths is not None:
            attrs["image_paths"] = np.asarray([str(p) for p in self.image_paths], dtype=str)
        if self.texts is not None:
            attrs["texts"] = np.asarray(self.texts, dtype=str)
        np.savez(
            path,
            image=self.image,
            text=self.text,
            slots=self.slots,
            types=self.types,
            outfits=of,
            outfit_offsets=oo,
            val_outfits=vf,
            val_offsets=vo,
            test_outfits=tf,
            test_offsets=to,
            item_ids=ids,
            heldout_items=self.heldout_items,
            val_items=self.val_items,
            view_rows=self.view_rows,
            view_image=self.view_image,
            text_view_rows=self.text_view_rows,
            text_views=self.text_views,
            **attrs,
        )

    @classmethod
    def load(cls, path: Path | str) -> TrainData:
        """Read a file written by :meth:`save`. Raises FileNotFoundError / KeyError on a bad file."""
        z = np.load(path)

        def unpack(flat: np.ndarray, off: np.ndarray) -> list[np.ndarray]:
            return [flat[off[i] : off[i + 1]] for i in range(len(off) - 1)]

        return cls(
            image=z["image"].astype(np.float32),
            text=z["text"].astype(np.float32),
            slots=z["slots"],
            types=z["types"],
            outfits=unpack(z["outfits"], z["outfit_offsets"]),
            val_outfits=unpack(z["val_outfits"], z["val_offsets"]),
            item_ids=z["item_ids"],
            test_outfits=unpack(z["test_outfits"], z["test_offsets"]) if "test_outfits" in z else [],
            attrs={k[5:]: z[k] for k in z.files if k.startswith("attr_")},
            heldout_items=z["heldout_items"] if "heldout_items" in z else np.zeros(0, np.int64),
            val_items=z["val_items"] if "val_items" in z else np.zeros(0, np.int64),
            image_paths=z["image_paths"].tolist() if "image_paths" in z else None,
            texts=z["texts"].tolist() if "texts" in z else None,
            **{k: z[k] for k in ("view_rows", "view_image", "text_view_rows", "text_views") if k in z},
        )

    def attach_views(self, item_ids: np.ndarray, views: np.ndarray, *, kind: str = "image") -> TrainData:
        """A copy with view features attached by product id: ``kind="image"``, phone-photo views
        (``ml.photo_robustness views``) as ``view_rows``/``view_image``; ``"text"``, paraphrased texts
        as ``text_view_rows``/``text_views``.

        Args:
            item_ids: (M,) int64 product ids; views: (M, K, E) float32 their views' tower outputs.

        Raises:
            ValueError: the data has no ``item_ids``, or an id is not among them (says how many).
        """
        if self.item_ids is None:
            raise ValueError("attach_views: the data has no item_ids to match the views' ids")
        row_of = {int(i): r for r, i in enumerate(self.item_ids)}
        missing = [int(i) for i in item_ids if int(i) not in row_of]
        if missing:
            raise ValueError(
                f"attach_views: {len(missing)} view ids are not in the data (first {missing[0]})"
            )
        rows = np.asarray([row_of[int(i)] for i in item_ids], dtype=np.int64)
        feats = np.asarray(views, dtype=np.float32)
        if kind == "text":
            return replace(self, text_view_rows=rows, text_views=feats)
        if kind != "image":
            raise ValueError(f"attach_views: kind {kind!r}, expected 'image' or 'text'")
        return replace(self, view_rows=rows, view_image=feats)


# -----------------------------------------------------------------------------
# splits


def category_ids(values: Sequence[str]) -> np.ndarray:
    """(N,) int64 ids of string labels, numbered in order of first appearance (``["a", "b", "a"]`` → 0, 1, 0)."""
    vocab: dict[str, int] = {}
    return np.asarray([vocab.setdefault(v, len(vocab)) for v in values], dtype=np.int64)


def split_outfits(
    outfits: Sequence[tuple[str, np.ndarray, bool]], *, val_fraction: float
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(train, val, test) outfits: ``(key, items (K,) int64, is_test)``; a non-test outfit goes to
    validation when ``held_out(f"val-{key}", val_fraction)`` (a fixed salted hash of its key)."""
    train_o, val_o, test_o = [], [], []
    for key, items, is_test in outfits:
        if is_test:
            test_o.append(items)
        elif held_out(f"val-{key}", val_fraction):
            val_o.append(items)
        else:
            train_o.append(items)
    return train_o, val_o, test_o


def split_items(
    keys: Sequence[str], *, heldout_fraction: float, val_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """(held-out rows, validation rows), each (M,) int64, for items with stable keys (SKU or article id):
    held out (``item-<key>``, kept out of the image↔text loss and used as the text→item gallery), and
    validation among the others (``val-item-<key>``); both by :func:`ml.data.held_out` (fixed salted
    hash), so a product's side never depends on a training seed or on the rest of the catalog."""
    held = [held_out(f"item-{k}", heldout_fraction) for k in keys]
    val = [
        i
        for i, (k, h) in enumerate(zip(keys, held, strict=True))
        if not h and held_out(f"val-item-{k}", val_fraction)
    ]
    return np.flatnonzero(held).astype(np.int64), np.asarray(val, dtype=np.int64)


def train_data_from_items(
    img: np.ndarray,
    txt: np.ndarray,
    *,
    keys: Sequence[str],
    item_ids: Sequence[int],
    slots: Sequence[str],
    types: Sequence[str],
    attrs: dict[str, np.ndarray],
    outfits: Sequence[tuple[str, np.ndarray, bool]],
    image_paths: list[str],
    texts: list[str],
    val_fraction: float,
    heldout_fraction: float,
) -> TrainData:
    """:class:`TrainData` of N items (in order) from their (N, E) float32 tower features and columns: the
    outfits split by :func:`split_outfits`, the items by :func:`split_items` on their stable ``keys``
    (SKU or article id). Shared by the H&M builder (:func:`hm_train_data`) and the catalog's
    (``recommender.ml_bridge.train_data``).

    Args:
        keys, item_ids, slots, types, image_paths, texts: one value per item.
        attrs: (N,) int64 attribute ids (section, department, colour, audience, variant).
        outfits: ``(key, item rows (K,) int64, is_test)`` per outfit.
    """
    train_o, val_o, test_o = split_outfits(outfits, val_fraction=val_fraction)
    heldout, val_items = split_items(keys, heldout_fraction=heldout_fraction, val_fraction=val_fraction)
    return TrainData(
        image=img,
        text=txt,
        slots=np.asarray([SLOT_INDEX[s] for s in slots], dtype=np.int64),
        types=category_ids(types),
        outfits=train_o,
        val_outfits=val_o,
        test_outfits=test_o,
        item_ids=np.asarray(item_ids, dtype=np.int64),
        heldout_items=heldout,
        val_items=val_items,
        attrs=attrs,
        image_paths=image_paths,
        texts=texts,
    )


def training_rows(
    data: TrainData, val_questions: Sequence[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows a training run reads: ``(train_items (T,), val_items (V,), val_rows (R,))``, int64.

    * ``train_items``: the products of the image↔text loss, all but the held-out (``data.heldout_items``)
      and validation (``data.val_items``) products;
    * ``val_items``: the text→image validation gallery, ``data.val_items``; without them the items of
      ``data.val_outfits``, without those the first 1000 items;
    * ``val_rows``: every row validation reads, ``val_items`` and the items of ``val_questions``
      (:func:`fitb_questions` of the validation outfits).

    Raises:
        ValueError: fewer than 2 products are left for training.
    """
    n = len(data.image)
    excluded = np.zeros(n, dtype=bool)
    excluded[data.heldout_items] = True
    excluded[data.val_items] = True
    train_items = np.flatnonzero(~excluded)
    if len(train_items) < 2:
        raise ValueError(f"only {len(train_items)} products left for training after the held-out split")
    if len(data.val_items):
        val_items = np.asarray(data.val_items, dtype=np.int64)
    elif data.val_outfits:
        val_items = np.unique(np.concatenate(data.val_outfits))
    else:
        val_items = np.arange(min(n, 1000))
    val_rows = np.unique(np.concatenate([val_items, *[np.concatenate(qc) for qc in val_questions]]))
    return train_items, val_items, val_rows


# -----------------------------------------------------------------------------
# from the H&M sample


def train_data_from_hm(
    root: Path | str,
    *,
    bundle: Any,
    limit: int | None = None,
    test_fraction: float = 0.15,
    val_fraction: float = 0.1,
    heldout_fraction: float = 0.1,
    cache_dir: Path | None = None,
) -> TrainData:
    """:class:`TrainData` straight from the H&M sample folder, without Django or a database.

    The same splits as the catalog import + ``recommender.ml_bridge.train_data`` (a fixed salted hash per
    basket / article, :func:`ml.data.held_out`; no seed): ``test_fraction`` of the baskets held out (key
    ``hm-basket-<i>``), ``val_fraction`` of the others for early stopping, ``heldout_fraction`` of the
    articles kept out of the image↔text loss.
    Tower features come from ``bundle`` (through the feature cache when ``cache_dir`` is set); the image
    paths and texts are kept for tower fine-tuning.

    Args:
        root: folder with ``articles.csv``, ``baskets.json`` and ``images/``.
        bundle: the :class:`~ml.model.ClipBundle` computing the frozen tower features.
        limit: keep about this many articles, whole baskets only (``ml.data.select_articles`` with seed 0,
            the catalog import's default); None = all.

    Raises:
        FileNotFoundError / ValueError: from :func:`ml.data.read_articles` / :func:`ml.data.read_baskets`.
    """
    from ml.features import tower_features  # lazy: open_clip (~3 s)

    arts, baskets = hm_articles(root, limit)
    img, txt = tower_features(
        bundle, [str(a.image_path) for a in arts], [a.text for a in arts], cache_dir=cache_dir
    )
    return hm_train_data(
        arts,
        baskets,
        img,
        txt,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        heldout_fraction=heldout_fraction,
    )


def hm_articles(root: Path | str, limit: int | None = None) -> tuple[list[HMArticle], list[list[str]]]:
    """The H&M sample's valid articles (about ``limit`` of them, whole baskets only, ``select_articles``
    with seed 0 as the catalog import) and all its baskets; malformed rows are logged and skipped."""
    articles, errors = read_articles(root)
    for err in errors[:10]:
        logger.warning("articles.csv line %d (%s) skipped: %s", err.line, err.article_id, err.reason)
    baskets = read_baskets(root)
    return select_articles(articles, baskets, limit, seed=0), baskets


def hm_train_data(
    arts: Sequence[HMArticle],
    baskets: Sequence[Sequence[str]],
    img: np.ndarray,
    txt: np.ndarray,
    *,
    test_fraction: float = 0.15,
    val_fraction: float = 0.1,
    heldout_fraction: float = 0.1,
) -> TrainData:
    """:class:`TrainData` of H&M articles (in order) with their (N, E) tower features: outfits from the
    baskets (:func:`ml.data.outfits_from_baskets`), the fixed splits of :func:`train_data_from_hm`, and
    the attributes (section, department, colour, audience group of the index group, variant = product code)."""
    index = {a.article_id: i for i, a in enumerate(arts)}
    return train_data_from_items(
        img,
        txt,
        keys=[a.article_id for a in arts],
        item_ids=[int(a.article_id) for a in arts],
        slots=[a.slot for a in arts],
        types=[a.product_type for a in arts],
        attrs={
            **{k: category_ids([getattr(a, k) for a in arts]) for k in ("section", "department", "colour")},
            "audience": audience_ids((a.audience, a.section, a.department) for a in arts),
            "variant": category_ids([a.product_code for a in arts]),
        },
        outfits=[
            (
                key,
                np.asarray([index[i] for i in items], dtype=np.int64),
                held_out(f"hm-basket-{key}", test_fraction),
            )
            for key, items in outfits_from_baskets(baskets, {a.article_id: a.product_code for a in arts})
        ],
        image_paths=[str(a.image_path) for a in arts],
        texts=[a.text for a in arts],
        val_fraction=val_fraction,
        heldout_fraction=heldout_fraction,
    )


# -----------------------------------------------------------------------------
# training triplets


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


# -----------------------------------------------------------------------------
# fill-in-the-blank questions


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
