"""Does the heads' image↔text alignment carry to a department it never saw? Text→photo retrieval on a
held-out H&M index group (a stand-in for a merchandiser's new catalogue).

Protocol (:func:`run`): every product of the index group (``index_group_name``, default Menswear) is
kept out of training entirely: out of the image↔text loss (added to ``heldout_items``), out of the
validation gallery, and every training / validation outfit touching one is dropped. The heads are then
trained as usual (``ml.train.train``, one row per variant) and the group's product texts are searched
against the group's photos: ``recall@10`` (own photo in the top 10, ties against it), ``mrr``. For
reference, ``in_domain_recall@10``: the same on the ordinary held-out products of the other groups.

How much of the gap to the in-domain level is the new department, and how much its gallery (a group of
look-alike products is harder to search than a mixed one)? Every row also reports ``half_recall@10``, the
same search on a seeded half of the group (the *probe* half), and the row ``today, other half trained``
trains the default heads with the group's other half in training: the in-domain level on the very same
gallery, the ceiling a model that never saw the department could reach.

Rows:

* ``random``: a seeded random ranking (the chance level, about 10 / gallery size);
* ``zero-shot``: the pretrained towers with identity heads. The text tower (MiniLM) and the image tower
  (EfficientNet-Lite0, ImageNet) were pretrained apart and are not aligned to each other, so this is
  at chance too: without trained heads there is no shared text↔photo space;
* one row per training variant: ``today`` (the default ``TrainConfig``) and the improvements asked for
  (:data:`VARIANTS`): text-side augmentation with paraphrases built from the attributes
  (:func:`paraphrases`, ``TrainConfig.p_text_view``), and ``tuned-top``: the image tower's last blocks
  trained with the heads (``ml.config.PHOTO_TUNING_CONFIG``, the run that tunes photo search; the
  group's photos are then encoded by the tuned tower, and none of them is among its phone-photo views).

CLI (``--features``: a ``TrainData.save`` file with ``texts`` and ``item_ids``, e.g. from
``python -m ml.train --hm-root ../shared/data/hm --save-features var/hm_full.npz``)::

    python -m ml.department_holdout paraphrases --features var/hm_full.npz --out var/dept/paraphrases.npz
    python -m ml.department_holdout evaluate --features var/hm_full.npz \\
        --text-views var/dept/paraphrases.npz --out var/dept/results.json
    python -m ml.department_holdout evaluate --features var/hm_full.npz --variant today \\
        --variant tuned-top --feature-cache var/features --out var/dept/tuned.json
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.config import PHOTO_TUNING_CONFIG, ModelConfig, TrainConfig
from ml.data import HMArticle, product_text
from ml.dataset import TrainData, hm_articles
from ml.heads import RecommenderHeads, zero_shot_heads
from ml.metrics import mean_reciprocal_rank, recall_at_k

logger = logging.getLogger(__name__)

#: Training variants: name → TrainConfig overrides (``p_text_view`` needs the paraphrase features).
VARIANTS: dict[str, dict[str, Any]] = {
    "today": {},
    "paraphrases": {"p_text_view": 0.5},
    "tuned-top": PHOTO_TUNING_CONFIG,
}


def group_rows(data: TrainData, articles: Sequence[HMArticle], group: str) -> np.ndarray:
    """(G,) int64 rows of ``data`` whose article's ``index_group_name`` is ``group``.

    Raises:
        ValueError: ``data`` has no ``item_ids``, or no row is in the group (the known groups are named).
    """
    if data.item_ids is None:
        raise ValueError("group_rows: the data has no item_ids")
    of = {int(a.article_id): a.audience for a in articles}  # HMArticle.audience = index_group_name
    groups = np.asarray([of.get(int(i), "") for i in data.item_ids])
    rows = np.flatnonzero(groups == group).astype(np.int64)
    if not len(rows):
        raise ValueError(f"no product of index group {group!r}; the data has {sorted(set(groups) - {''})}")
    return rows


def without_rows(data: TrainData, rows: np.ndarray) -> TrainData:
    """A copy of ``data`` that trains on none of ``rows``: they join ``heldout_items`` (out of the
    image↔text loss), leave ``val_items``, and training / validation outfits with any of them are dropped
    (the compatibility loss never reads them; validation FITB neither)."""
    held = np.zeros(len(data.image), dtype=bool)
    held[rows] = True

    def keep(outfits: list[np.ndarray]) -> list[np.ndarray]:
        return [o for o in outfits if not held[o].any()]

    tv = ~held[data.text_view_rows]  # (M',) paraphrases of the rows that stay
    iv = ~held[data.view_rows]  # (M,) phone-photo views of the rows that stay
    return replace(
        data,
        heldout_items=np.union1d(data.heldout_items, rows).astype(np.int64),
        val_items=data.val_items[~held[data.val_items]],
        outfits=keep(data.outfits),
        val_outfits=keep(data.val_outfits),
        view_rows=data.view_rows[iv],
        view_image=data.view_image[iv] if len(data.view_rows) else data.view_image,
        text_view_rows=data.text_view_rows[tv],
        text_views=data.text_views[tv] if len(data.text_view_rows) else data.text_views,
    )


def text_to_photo(heads: RecommenderHeads, data: TrainData, rows: np.ndarray) -> dict[str, float]:
    """Text→photo retrieval among ``rows`` (G,): each product's text against the G photos.

    Returns:
        ``{"recall@10", "mrr"}`` (``ml.metrics``; ties rank against the own photo).
    """
    with torch.no_grad():
        img = heads.image_vec(torch.from_numpy(data.image[rows]))  # (G, E)
        txt = heads.text_vec(torch.from_numpy(data.text[rows]))  # (G, E)
    s = (txt @ img.T).numpy()  # (G, G)
    pos = np.arange(len(rows))
    return {"recall@10": recall_at_k(s, pos, ks=(10,))[10], "mrr": mean_reciprocal_rank(s, pos)}


# -----------------------------------------------------------------------------
# text-side augmentation


def paraphrases(a: HMArticle) -> list[str]:
    """Two rewordings of a product's text (:func:`ml.data.product_text`) from its attributes, for
    text-side augmentation: the catalog text without the house's division and section names (words a
    new catalogue spells its own way), and a short shopper-style phrase, colour + type + title.

    >>> # "Slim jeans. Dark blue. Trousers. Menswear. Men Jeans. 5-pocket jeans ..." becomes
    >>> # ["Slim jeans. Dark blue. Trousers. 5-pocket jeans ...", "dark blue trousers: Slim jeans"]
    """
    return [
        product_text(a.title, a.colour, a.product_type, "", "", a.description),
        f"{a.colour} {a.product_type}: {a.title}".lower().capitalize()
        if a.colour
        else f"{a.product_type}: {a.title}",
    ]


def paraphrase_features(
    data: TrainData, articles: Sequence[HMArticle], extractor: Any, *, limit: int = 0, seed: int = 0
) -> dict[str, np.ndarray]:
    """Text-tower features of :func:`paraphrases` of the products the image↔text loss may train on
    (not ``heldout_items`` nor ``val_items``; ``limit`` of them drawn seeded, 0 = all).

    Returns:
        ``{"item_ids": (M,) int64, "views": (M, 2, E) float32}`` (``TrainData.attach_views(kind="text")``).
    """
    excluded = np.zeros(len(data.image), dtype=bool)
    excluded[data.heldout_items] = excluded[data.val_items] = True
    rows = np.flatnonzero(~excluded)
    if limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=min(limit, len(rows)), replace=False))
    by_id = {int(a.article_id): a for a in articles}
    texts = [t for r in rows for t in paraphrases(by_id[int(data.item_ids[r])])]
    feats = extractor.encode_texts(texts, progress=True).reshape(len(rows), 2, -1)
    return {"item_ids": data.item_ids[rows].astype(np.int64), "views": feats}


# -----------------------------------------------------------------------------
# the table


def run(
    data: TrainData,
    rows: np.ndarray,
    variants: dict[str, dict[str, Any]],
    *,
    base: TrainConfig | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> dict[str, dict[str, float]]:
    """Train each variant without ``rows`` and measure text→photo retrieval on them.

    Args:
        data: all products (with the paraphrase features attached for variants that read them;
            ``image_paths`` and ``texts`` for a variant that tunes the towers).
        rows: (G,) int64 the held-out group's rows.
        variants: name → ``TrainConfig`` overrides of ``base`` (default ``TrainConfig()``). A variant that
            tunes the towers trains a new ``build_model(ModelConfig())`` (the model that computed
            ``data.image``) and is measured on that tuned model's features of every row
            (``ml.towers.tuned_features``).
        cache_dir: where a tuning variant keeps its prefix activations (``ml.tower_prefix``).

    Returns:
        ``{row: {"recall@10", "mrr", "in_domain_recall@10", "half_recall@10", ...}}`` with ``random`` and
        ``zero-shot`` first; trained rows add ``best_epoch``, ``seconds`` and ``val_fitb`` (validation FITB
        at the end); last ``today, other half trained`` (``half_recall@10`` only).
    """
    from ml.train import train  # lazy: keeps the metric helpers light

    base = base or TrainConfig()
    train_data = without_rows(data, rows)
    in_domain = np.setdiff1d(data.heldout_items, rows)
    g = len(rows)
    rnd = np.random.default_rng(seed).random((g, g))
    out: dict[str, dict[str, float]] = {
        "random": {
            "recall@10": recall_at_k(rnd, np.arange(g), ks=(10,))[10],
            "mrr": mean_reciprocal_rank(rnd, np.arange(g)),
        }
    }
    perm = np.random.default_rng(seed).permutation(rows)
    probe = np.sort(perm[: g // 2])  # the half queried by half_recall@10; the other half may be trained on
    h = len(probe)
    out["random"]["half_recall@10"] = recall_at_k(rnd[:h, :h], np.arange(h), ks=(10,))[10]
    zs = zero_shot_heads(data.image.shape[1], base.compat_dim)
    out["zero-shot"] = {
        **text_to_photo(zs, data, rows),
        "in_domain_recall@10": text_to_photo(zs, data, in_domain)["recall@10"],
        "half_recall@10": text_to_photo(zs, data, probe)["recall@10"],
    }
    for name, overrides in variants.items():
        cfg = replace(base, **overrides)
        logger.info("variant %s: %s", name, overrides)
        own = data
        if cfg.tunes_towers:
            from ml.model import build_model  # lazy: open_clip, for tuning variants only
            from ml.towers import tuned_features

            bundle = build_model(ModelConfig())
            res = train(train_data, cfg, bundle=bundle, cache_dir=cache_dir)  # tunes bundle in place
            image, text = tuned_features(bundle, data, cfg, cache_dir)
            own = replace(data, image=image, text=text)
        else:
            res = train(train_data, cfg)
        out[name] = {
            **text_to_photo(res.heads, own, rows),
            "in_domain_recall@10": text_to_photo(res.heads, own, in_domain)["recall@10"],
            "half_recall@10": text_to_photo(res.heads, own, probe)["recall@10"],
            "val_fitb": res.history["val_fitb"][res.best_epoch] if res.history["val_fitb"] else float("nan"),
            "best_epoch": res.best_epoch,
            "seconds": res.seconds,
        }
        logger.info("variant %s: %s", name, out[name])
    res = train(without_rows(data, probe), base)  # the same gallery, with the group's other half trained on
    out["today, other half trained"] = {
        "half_recall@10": text_to_photo(res.heads, data, probe)["recall@10"],
        "best_epoch": res.best_epoch,
        "seconds": res.seconds,
    }
    return out


def markdown_table(results: dict[str, dict[str, float]], group: str) -> str:
    """The results as a Markdown table, with each trained row's ratio to ``today``."""
    ref = results.get("today", {}).get("recall@10")

    def cell(r: dict[str, float], key: str) -> str:
        return f"{r[key]:.3f}" if key in r else "–"

    lines = [
        f"| model | {group} text→photo Recall@10 | MRR | × today | half the group (probe) Recall@10 "
        "| other groups' held-out Recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in results.items():
        ratio = f"{r['recall@10'] / ref:.2f}" if ref and "recall@10" in r else "–"
        lines.append(
            f"| {n} | {cell(r, 'recall@10')} | {cell(r, 'mrr')} | {ratio} | {cell(r, 'half_recall@10')} "
            f"| {cell(r, 'in_domain_recall@10')} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """``paraphrases`` writes the paraphrase features; ``evaluate`` trains the variants, prints the table
    and writes the JSON."""
    p = argparse.ArgumentParser(prog="python -m ml.department_holdout", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    para = sub.add_parser("paraphrases", help="text-tower features of attribute paraphrases")
    para.add_argument("--limit", type=int, default=0, help="this many training products (0 = all)")
    ev = sub.add_parser("evaluate", help="train without the group, query its texts against its photos")
    ev.add_argument("--text-views", type=Path, default=None, help=".npz from `paraphrases`")
    ev.add_argument(
        "--variant", action="append", default=None, help=f"one of {', '.join(VARIANTS)} (repeatable)"
    )
    ev.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ev.add_argument(
        "--w-compat",
        type=float,
        default=TrainConfig.w_compat,
        help="compatibility loss weight (it never touches the image/text projections; 0 trains faster)",
    )
    for sp in (para, ev):
        sp.add_argument("--features", type=Path, required=True, help="TrainData .npz with item_ids")
        sp.add_argument("--hm-root", type=Path, default=Path("../shared/data/hm"))
        sp.add_argument("--group", default="Menswear", help="index_group_name held out")
        sp.add_argument("--out", type=Path, required=True)
    ev.add_argument(
        "--feature-cache",
        type=Path,
        default=Path("var/features"),
        help="prefix activations of tuning variants",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = TrainData.load(args.features)
    articles, _ = hm_articles(args.hm_root)
    rows = group_rows(data, articles, args.group)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.cmd == "paraphrases":
        from ml.features import FeatureExtractor  # lazy: open_clip
        from ml.model import build_model

        # never the held-out group's texts: they are the queries
        out = paraphrase_features(
            without_rows(data, rows), articles, FeatureExtractor(build_model(ModelConfig())), limit=args.limit
        )
        np.savez(args.out, **out)
        print(f"wrote {args.out}: {out['views'].shape}")
        return out
    if args.text_views is not None:
        z = np.load(args.text_views)
        data = data.attach_views(z["item_ids"], z["views"], kind="text")
    names = args.variant or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variant {unknown[0]!r}: expected one of {', '.join(VARIANTS)}")
    results = run(
        data,
        rows,
        {n: VARIANTS[n] for n in names},
        base=TrainConfig(epochs=args.epochs, w_compat=args.w_compat),
        cache_dir=args.feature_cache,
    )
    report = {
        "group": args.group,
        "gallery": len(rows),
        "config": {"epochs": args.epochs, "w_compat": args.w_compat},
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{args.group}: {len(rows)} products held out of training; texts queried against their photos")
    print(markdown_table(results, args.group))
    return report


if __name__ == "__main__":
    main()
