"""Photo search with shoppers' phone photos: the evaluation, and the view features SimCLR training reads.

Protocol (:func:`evaluate_photo_search`): every held-out H&M product (``ml.dataset.split_items``, the
trainer's split: kept out of the image↔text loss; ``heldout_fraction`` 0.1) is turned into one phone
photo (:func:`ml.augment.phone_photo`, seeded per product by ``--seed``) and searched for among the
clean catalog photos of ALL products (its own clean photo included, as a shopper photographs a product
the shop sells). Per scorer: ``p@10_type``, the share of the top 10 with the query's
``product_type_name``; ``recall@10``, the share of queries whose own product is in the top 10
(``ml.metrics``: ties against the query). Each embedding is measured on the whole phone photo and
on the photo cropped to its garment (:func:`ml.augment.garment_crop`, ``+crop``). Baselines in the
same run: ``random`` (a seeded random ranking) and ``type-majority`` (always the catalog's most common
product type, first by catalog order).

:func:`view_features` precomputes the frozen image tower's features of K phone-photo views of training
photos (seeds 0..K-1, never the evaluation's seed), for ``TrainConfig.w_view`` (NT-Xent between views).

CLI::

    python -m ml.photo_robustness views --hm-root ../shared/data/hm --photos 4000 --views 2 \\
        --out var/photo/views.npz
    python -m ml.photo_robustness evaluate --hm-root ../shared/data/hm \\
        --heads fine-tuned=var/photo/today/heads.pt --heads simclr=var/photo/simclr/heads.pt \\
        --out var/photo/results.json

Heads that carry tuned tower weights are evaluated on their own tower's gallery and query features.
``--queries val`` searches with the validation products' phone photos instead, to choose query-time
settings (``--vote-k``) without looking at the held-out queries.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.augment import donor_photos, phone_photo_features, training_view_features
from ml.dataset import hm_articles, split_items
from ml.metrics import precision_at_k_by_label, recall_at_k

logger = logging.getLogger(__name__)

#: The seed of the evaluation's phone photos (training views use seeds 0..K-1).
EVAL_SEED = 1000
K = 10
#: How many best matches vote for the product type that ranks first (:func:`type_vote`): 1, the best
#: match's own type, is what photo search serves (``recommender.selectors.photo_search``, ``type_first``);
#: chosen on the validation products' phone photos (``evaluate --queries val --vote-k ...``), never on
#: the held-out queries.
TYPE_VOTE_K = 1


@dataclass
class PhotoCatalog:
    """The H&M sample as the photo evaluation reads it (N articles, in ``ml.dataset.hm_articles`` order,
    the rows of the trainer's ``TrainData``).

    Attributes:
        keys: (N,) article ids (str); paths: N photo paths; types: (N,) ``product_type_name`` (str);
        heldout: (H,) int64 rows kept out of the image↔text loss (the queries); train: (T,) int64 rows
        the image↔text loss trains on (neither held out nor validation); val: (V,) int64 the trainer's
        validation rows (queries for choosing query-time settings such as :data:`TYPE_VOTE_K`).
    """

    keys: list[str]
    paths: list[str]
    types: np.ndarray
    heldout: np.ndarray
    train: np.ndarray
    val: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def photo_catalog(
    root: Path | str, *, heldout_fraction: float = 0.1, val_fraction: float = 0.1
) -> PhotoCatalog:
    """The articles and the trainer's item split (:func:`ml.dataset.split_items`, same fractions as
    :func:`ml.dataset.hm_train_data`'s defaults)."""
    arts, _ = hm_articles(root)
    keys = [a.article_id for a in arts]
    heldout, val = split_items(keys, heldout_fraction=heldout_fraction, val_fraction=val_fraction)
    excluded = np.zeros(len(keys), dtype=bool)
    excluded[heldout] = excluded[val] = True
    return PhotoCatalog(
        keys=keys,
        paths=[str(a.image_path) for a in arts],
        types=np.asarray([a.product_type for a in arts]),
        heldout=heldout,
        train=np.flatnonzero(~excluded).astype(np.int64),
        val=np.asarray(val, dtype=np.int64),
    )


def _extractor(bundle: Any = None) -> Any:
    from ml.config import DEFAULT_TOWER_BACKEND, ModelConfig
    from ml.features import FeatureExtractor  # lazy: open_clip (~3 s)
    from ml.model import build_model

    bundle = bundle if bundle is not None else build_model(ModelConfig())
    return FeatureExtractor(bundle, batch_size=32, backend=DEFAULT_TOWER_BACKEND)  # ONNX Runtime: ~2.8x


def catalog_image_features(cat: PhotoCatalog, extractor: Any, cache_dir: Path | None) -> np.ndarray:
    """(N, E) float32 tower features of the clean catalog photos (through the feature cache when given)."""
    if cache_dir is None:
        return extractor.encode_images(cat.paths, progress=True)[0]
    from ml.features import FeatureCache

    return FeatureCache(cache_dir).get_or_compute_images(extractor, cat.paths, progress=True)


# -----------------------------------------------------------------------------
# view features for SimCLR training


def view_features(
    cat: PhotoCatalog, extractor: Any, *, photos: int, views: int, seed: int = 0, donors: int = 200
) -> dict[str, np.ndarray]:
    """Tower features of ``views`` phone-photo views (seeds ``seed``..``seed+views-1``) of ``photos``
    training photos (drawn seeded from ``cat.train``; never the held-out queries).

    Returns:
        ``{"item_ids": (M,) int64 article ids, "views": (M, V, E) float32}`` (``TrainData.attach_views``).
    """
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(cat.train, size=min(photos, len(cat.train)), replace=False))
    donor_pool = [cat.paths[i] for i in cat.train]
    paths, keys = [cat.paths[i] for i in rows], [cat.keys[i] for i in rows]
    feats = training_view_features(extractor, paths, keys, donor_pool, views=views, seed=seed, donors=donors)
    return {"item_ids": np.asarray([int(cat.keys[i]) for i in rows], dtype=np.int64), "views": feats}


# -----------------------------------------------------------------------------
# the evaluation


def type_vote(scores: np.ndarray, gallery_types: np.ndarray, k: int = TYPE_VOTE_K) -> np.ndarray:
    """Query-time product-type re-ranking (pseudo-relevance feedback): each query's top ``k`` gallery items
    vote for a product type, weighted by their score; items of the winning type then rank first, each
    group in score order.

    Args:
        scores: (Q, G) float cosines in [-1, 1]; gallery_types: (G,) labels.

    Returns:
        (Q, G) float32 re-ranked scores (+2 for the voted type).
    """
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (Q, k)
    labels, codes = np.unique(gallery_types, return_inverse=True)  # codes (G,)
    votes = np.zeros((len(scores), len(labels)), dtype=np.float64)  # (Q, T)
    np.add.at(
        votes,
        (np.repeat(np.arange(len(scores)), k), codes[top].ravel()),
        np.take_along_axis(scores, top, 1).ravel(),
    )
    voted = votes.argmax(axis=1)  # (Q,)
    return (scores + 2.0 * (codes[None, :] == voted[:, None])).astype(np.float32)


def search_metrics(
    query_vec: np.ndarray,
    gallery_vec: np.ndarray,
    query_rows: np.ndarray,
    gallery_types: np.ndarray,
    *,
    vote: int = 0,
) -> dict[str, float]:
    """P@10 of the same product type and exact-product Recall@10 of photo queries against a gallery.

    Args:
        query_vec: (Q, D) float32 query vectors; gallery_vec: (G, D) float32 (unit norm: dot = cosine).
        query_rows: (Q,) int64, each query's own product's gallery row.
        gallery_types: (G,) product types.
        vote: re-rank by :func:`type_vote` of the top ``vote`` first (0 = no re-ranking).

    Returns:
        ``{"p@10_type", "recall@10"}``.
    """
    scores = query_vec @ gallery_vec.T  # (Q, G)
    if vote:
        scores = type_vote(scores, gallery_types, vote)
    return {
        "p@10_type": precision_at_k_by_label(scores, gallery_types[query_rows], gallery_types, K),
        "recall@10": recall_at_k(scores, query_rows, ks=(K,))[K],
    }


def baseline_metrics(
    query_rows: np.ndarray, gallery_types: np.ndarray, seed: int
) -> dict[str, dict[str, float]]:
    """The trivial scorers on the same queries: ``random`` (seeded uniform scores) and ``type-majority``
    (the most common product type first, by catalog order, whatever the photo)."""
    q, g = len(query_rows), len(gallery_types)
    rnd = np.random.default_rng(seed).random((q, g)).astype(np.float32)
    values, counts = np.unique(gallery_types, return_counts=True)
    major = (gallery_types == values[np.argmax(counts)]).astype(np.float32)  # (G,)
    maj = np.broadcast_to(major - np.arange(g, dtype=np.float32) * 1e-6, (q, g))  # catalog order breaks ties
    out = {}
    for name, s in (("random", rnd), ("type-majority", maj)):
        out[name] = {
            "p@10_type": precision_at_k_by_label(s, gallery_types[query_rows], gallery_types, K),
            "recall@10": recall_at_k(s, query_rows, ks=(K,))[K],
        }
    return out


def _image_vectors(heads: Any, feats: np.ndarray) -> np.ndarray:
    """(M, E) tower features → (M, E) unit vectors of the heads' image side (None: the tower alone)."""
    x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    with torch.no_grad():
        v = torch.nn.functional.normalize(x, dim=-1) if heads is None else heads.image_vec(x)
    return v.numpy()


def evaluate_photo_search(
    gallery: np.ndarray,
    queries: np.ndarray,
    query_rows: np.ndarray,
    types: np.ndarray,
    heads: dict[str, Any],
    *,
    seed: int = EVAL_SEED,
    features: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    vote_ks: Sequence[int] = (),
) -> dict[str, dict[str, float]]:
    """The table: baselines, then per embedding (``heads``: name → ``RecommenderHeads`` or None for the
    pretrained tower alone) the whole phone photo, ``+crop`` (its garment crop), ``+crop+full`` (the mean
    of both unit vectors, renormalised), ``+type first (served)`` (the whole photo re-ranked by
    :func:`type_vote` of :data:`TYPE_VOTE_K`, what the site serves), ``+crop+full+type first`` and, for
    reference, the clean catalog photo itself as the query.

    Args:
        gallery: (N, E) float32 clean catalog photos' tower features; types: (N,) product types.
        queries: (Q, 2, E) float32 tower features of each query's phone photo and of its garment crop.
        query_rows: (Q,) int64 each query's product's row in the gallery.
        features: ``{name: (gallery, queries)}`` of the same shapes for the heads whose towers are tuned
            (their own tower's features; the others read ``gallery`` and ``queries``).
        vote_ks: extra rows ``+type vote k=K``: the whole photo re-ranked by :func:`type_vote` of its top K.

    Returns:
        ``{row name: {"p@10_type", "recall@10"}}``.
    """
    results = baseline_metrics(query_rows, types, seed)
    for name, h in heads.items():
        g_feats, q_feats = (features or {}).get(name, (gallery, queries))
        g = _image_vectors(h, g_feats)
        full, crop = _image_vectors(h, q_feats[:, 0]), _image_vectors(h, q_feats[:, 1])
        results[name] = search_metrics(full, g, query_rows, types)
        results[f"{name}+crop"] = search_metrics(crop, g, query_rows, types)
        both = full + crop
        both /= np.linalg.norm(both, axis=1, keepdims=True)
        results[f"{name}+crop+full"] = search_metrics(both, g, query_rows, types)
        results[f"{name}+type first (served)"] = search_metrics(full, g, query_rows, types, vote=TYPE_VOTE_K)
        results[f"{name}+crop+full+type first"] = search_metrics(both, g, query_rows, types, vote=TYPE_VOTE_K)
        for k in vote_ks:
            results[f"{name}+type vote k={k}"] = search_metrics(full, g, query_rows, types, vote=k)
        results[f"{name} (clean photo)"] = search_metrics(g[query_rows], g, query_rows, types)
    return results


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """The results as a Markdown table (rows in insertion order)."""
    lines = ["| scorer | P@10 same type | exact Recall@10 |", "|---|---|---|"]
    lines += [f"| {n} | {r['p@10_type']:.3f} | {r['recall@10']:.3f} |" for n, r in results.items()]
    return "\n".join(lines)


def query_features(
    cat: PhotoCatalog, extractor: Any, *, seed: int, limit: int, cache: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(query rows (Q,), features (Q, 2, E))`` of the held-out products' phone photos (and garment
    crops), read from ``cache`` (an .npz) when it holds the same queries and seed, else computed and saved."""
    rows = cat.heldout[:limit] if limit else cat.heldout
    ids = np.asarray([int(cat.keys[i]) for i in rows], dtype=np.int64)
    if cache is not None and cache.exists():
        z = np.load(cache)
        if int(z["seed"]) == seed and np.array_equal(z["item_ids"], ids):
            return rows, z["features"]
    donor_pool = [cat.paths[i] for i in np.setdiff1d(np.arange(len(cat.keys)), cat.train)]
    feats = phone_photo_features(
        extractor,
        [cat.paths[i] for i in rows],
        [cat.keys[i] for i in rows],
        [seed],
        donors=donor_photos(donor_pool, 200, seed + 7),
        crop=True,
        desc="query phone photos",
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, seed=seed, item_ids=ids, features=feats)
    return rows, feats


def main(argv: Sequence[str] | None = None, *, extractor_factory: Callable[..., Any] = _extractor) -> dict:
    """``views`` writes the SimCLR view features; ``evaluate`` prints the table and writes the JSON."""
    from ml.heads import load_heads

    p = argparse.ArgumentParser(prog="python -m ml.photo_robustness", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("views", help="tower features of phone-photo views of training photos")
    v.add_argument("--photos", type=int, default=4000)
    v.add_argument("--views", type=int, default=2)
    e = sub.add_parser("evaluate", help="photo search on phone photos of held-out products")
    e.add_argument("--heads", action="append", default=[], help="NAME=heads.pt (repeatable)")
    e.add_argument("--seed", type=int, default=EVAL_SEED)
    e.add_argument("--limit", type=int, default=0, help="first N held-out products only (0 = all)")
    e.add_argument("--query-cache", type=Path, default=Path("var/photo/queries.npz"))
    e.add_argument(
        "--queries",
        choices=("heldout", "val"),
        default="heldout",
        help="held-out (default) or validation products",
    )
    e.add_argument("--vote-k", type=int, action="append", default=[], help="extra type-vote row (repeatable)")
    for sp in (v, e):
        sp.add_argument("--hm-root", type=Path, default=Path("../shared/data/hm"))
        sp.add_argument("--feature-cache", type=Path, default=Path("var/features"))
        sp.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cat = photo_catalog(args.hm_root)
    ex = extractor_factory()
    if args.cmd == "views":
        out = view_features(cat, ex, photos=args.photos, views=args.views)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.out, **out)
        print(f"wrote {args.out}: {out['views'].shape}")
        return out
    gallery = catalog_image_features(cat, ex, args.feature_cache)
    if args.queries == "val":  # choosing query-time settings: the validation products, a cache of their own
        cat = replace(cat, heldout=cat.val)
        args.query_cache = args.query_cache.with_name(f"{args.query_cache.stem}-val.npz")
    rows, queries = query_features(cat, ex, seed=args.seed, limit=args.limit, cache=args.query_cache)
    heads: dict[str, Any] = {"pretrained tower": None}
    own: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for spec in args.heads:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--heads {spec!r}: expected NAME=path/to/heads.pt")
        heads[name] = h = load_heads(path)[0]
        if h.tower_state:  # tuned towers: the gallery and the queries through them
            from ml.config import ModelConfig
            from ml.towers import tower_state_fingerprint, tuned_bundle  # lazy: open_clip

            tex = extractor_factory(tuned_bundle(ModelConfig(), h.tower_state))
            fp = tower_state_fingerprint(h.tower_state)[:16]
            q_cache = args.query_cache.with_name(f"{args.query_cache.stem}-towers-{fp}.npz")
            q = query_features(cat, tex, seed=args.seed, limit=args.limit, cache=q_cache)[1]
            own[name] = (catalog_image_features(cat, tex, args.feature_cache), q)
    results = evaluate_photo_search(
        gallery, queries, rows, cat.types, heads, seed=args.seed, features=own, vote_ks=args.vote_k
    )
    report = {
        "queries": len(rows),
        "query_set": args.queries,
        "gallery": len(cat.keys),
        "seed": args.seed,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{len(rows)} phone photos of held-out products against {len(cat.keys)} catalog photos")
    print(markdown_table(results))
    return report


if __name__ == "__main__":
    main()
