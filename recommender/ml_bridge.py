"""The one bridge from Django rows to ``ml`` inputs: catalog products → photo paths and texts → tower
features → :class:`ml.dataset.TrainData`.

``ml`` never imports Django; everything Django-shaped that it needs is built here, once, for the
training task (:mod:`recommender.training`), ``manage.py evaluate`` and the benchmarks alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from django.conf import settings

from catalog.models import Outfit, Product
from ml.audience import audience_ids
from ml.config import ModelConfig, TrainConfig
from ml.dataset import TrainData, category_ids, train_data_from_items
from ml.heads import RecommenderHeads, zero_shot_heads
from ml.inference import Embedder
from ml.onnx_towers import backend_suffix


def model_config() -> ModelConfig:
    """The model the settings ask for (``ML_MODEL_NAME``, ``ML_PRETRAINED``, ``EMBEDDING_DIM``, ``ML_DEVICE``,
    ``ML_TOWER_BACKEND``)."""
    return ModelConfig(
        name=settings.ML_MODEL_NAME,
        pretrained=settings.ML_PRETRAINED,
        embed_dim=settings.EMBEDDING_DIM,
        device=settings.ML_DEVICE,
        tower_backend=settings.ML_TOWER_BACKEND,
    )


def image_path(product: Product) -> str:
    """The stored photo's path on disk, or ``""`` for a product without one (it embeds by text)."""
    return product.image.path if product.image else ""


def product_inputs(products: Sequence[Product]) -> tuple[list[str], list[str]]:
    """What the towers read of each product, in order: ``(photo paths, texts)``."""
    return [image_path(p) for p in products], [p.text for p in products]


def catalog_products() -> list[Product]:
    """Every product, by primary key (the row order of every array built from the catalog)."""
    return list(Product.objects.order_by("pk"))


def zero_shot_embedder(*, compat_dim: int | None = None, seed: int = 0) -> Embedder:
    """Base towers with untrained heads, through the feature cache (``ML_FEATURE_CACHE_DIR``): tower
    features for training and evaluation.

    Args:
        compat_dim: the compatibility space's dimension (default ``COMPAT_DIM``).
        seed: seed of the untrained heads.
    """
    mcfg = model_config()
    heads = zero_shot_heads(mcfg.embed_dim, compat_dim or settings.COMPAT_DIM, seed)
    return Embedder(mcfg, heads, cache_dir=settings.ML_FEATURE_CACHE_DIR)


def own_features(
    heads: RecommenderHeads,
    model: dict[str, Any],
    products: Sequence[Product],
    *,
    base: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """The tower features a version's heads go with: ``base`` (the (N, E) float32 image and text
    features of the settings' model) when the heads use that model's untuned towers, else the features
    of their own towers (another model in ``model``, the version's ``ModelConfig`` as a dict, or
    fine-tuned towers in ``heads.tower_state``), computed through the feature cache on this device.
    """
    ours = model_config()
    mcfg = replace(ModelConfig(**model), device=ours.device) if model else ours
    same_towers = not heads.tower_state and (
        mcfg.name,
        mcfg.pretrained,
        backend_suffix(mcfg.tower_backend),  # int8 towers give features of their own
    ) == (ours.name, ours.pretrained, backend_suffix(ours.tower_backend))
    if same_towers and heads.embed_dim == base[0].shape[1]:
        return base
    embedder = Embedder(mcfg, heads, cache_dir=settings.ML_FEATURE_CACHE_DIR)
    return tower_features(embedder, products, progress=True)[:2]


def tower_features(
    embedder: Embedder,
    products: Sequence[Product],
    *,
    progress: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Tower outputs of these products: ``(image (N, E) float32, text (N, E) float32, failed)``;
    ``failed`` lists ``(row, reason)`` for unreadable photos (see :meth:`ml.inference.Embedder.tower_features`).
    ``on_batch(inputs done, 2N)`` reports how far the photos (0..N), then the texts (N..2N), are.
    """
    paths, texts = product_inputs(products)
    return embedder.tower_features(paths, texts, progress=progress, on_batch=on_batch)


def tuned_tower_features(
    embedder: Embedder,
    trained: Any,
    cfg: TrainConfig,
    data: TrainData,
    products: Sequence[Product],
    failed: Sequence[tuple[int, str]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """``(image (N, E), text (N, E))`` float32 features of ``products`` through the embedder's tuned towers,
    right after the run that tuned them (``data``: its :class:`ml.dataset.TrainData`, rows in the order of
    ``products``; ``trained``: the run's own :class:`ml.model.ClipBundle`, holding the same best weights
    under the base model's id). With ``cfg.cache_tower_prefix`` only the tuned top runs, on the prefix
    activations the run cached under that id (:func:`ml.towers.tuned_features`), instead of the whole
    image tower over every photo; the features go into the feature cache under the tuned towers' id,
    where :func:`own_features` and the embedding tasks find them (rows in ``failed``, unreadable photos,
    are not stored)."""
    if not cfg.cache_tower_prefix:
        return tower_features(embedder, products, progress=True)[:2]
    from ml.towers import tuned_features  # lazy: ml.towers builds open_clip models

    image, text = tuned_features(trained, data, cfg, settings.ML_FEATURE_CACHE_DIR)
    if embedder.cache is not None:
        paths, texts = product_inputs(products)
        embedder.cache.put_computed(
            embedder.extractor.model_id, paths, texts, image, text, skip=[r for r, _ in failed]
        )
    return image, text


def train_data(
    products: Sequence[Product],
    img: np.ndarray,
    txt: np.ndarray,
    *,
    val_fraction: float,
    heldout_fraction: float = 0.1,
) -> TrainData:
    """Arrays for :func:`ml.train.train` and :mod:`ml.evaluate` from products (in order) and their features.

    Args:
        products: the rows, in the order of ``img`` / ``txt``.
        img, txt: (N, E) float32 tower features of ``products``.
        val_fraction: share of training outfits (and of non-held-out items) used for validation.
        heldout_fraction: share of products (by SKU) kept out of the image↔text loss: the text→item
            evaluation gallery.

    Splits, fixed per SKU / outfit and independent of any training seed: outfits of the catalog's
    ``test`` split (set at import by a salted hash of the basket id, ``ml.data.split_is_test``) are held
    out for evaluation; ``val_fraction`` of the other outfits validate early stopping; ``heldout_fraction``
    of the products never enter the image↔text loss, and ``val_fraction`` of the rest validate it (a
    salted hash of the outfit id / SKU, :func:`ml.data.held_out`).
    """
    index = {p.pk: i for i, p in enumerate(products)}
    outfits: dict[int, tuple[str, list[int]]] = {}
    rows = Outfit.objects.values_list("pk", "split", "items__product_id").order_by("pk", "items__position")
    for oid, split, pid in rows:
        if pid in index:
            outfits.setdefault(oid, (split, []))[1].append(index[pid])
    paths, texts = product_inputs(products)
    return train_data_from_items(
        img,
        txt,
        keys=[p.sku for p in products],
        item_ids=[p.pk for p in products],
        slots=[p.slot for p in products],
        types=[p.product_type for p in products],
        attrs={
            **{
                a: category_ids([getattr(p, a) for p in products])
                for a in ("section", "department", "colour")
            },
            # who each product is for (ids into ml.audience.AUDIENCE_GROUPS): training pairs keep to fitting
            # ones, and the evaluation's audience coherence reads them
            "audience": audience_ids(p.audience_group for p in products),
            "variant": category_ids([p.variant_group or f"sku-{p.sku}" for p in products]),
            # which catalog (H&M, MANGO, uploads): matched negatives keep to the answer's, or "the item
            # from the same shop as the rest" would answer the question (ml.protocols)
            "catalog": category_ids([p.source for p in products]),
        },
        outfits=[
            (oid, np.asarray(items, dtype=np.int64), split == Outfit.Split.TEST)
            for oid, (split, items) in outfits.items()
            if len(items) >= 2
        ],
        image_paths=paths,
        texts=texts,
        val_fraction=val_fraction,
        heldout_fraction=heldout_fraction,
    )
