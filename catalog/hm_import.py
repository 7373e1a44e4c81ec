"""Import of the H&M sample (``../shared/data/hm``): articles, photos and co-purchase baskets as outfits.

Read at run time from the dataset folder, never copied into the repository (``manage.py
import_catalog hm PATH``, ``make import``).
"""

from __future__ import annotations

from pathlib import Path

from catalog.models import Outfit, Product
from catalog.sample_import import ImportSummary, SampleRow, outfits_create, products_upsert_from_files
from catalog.signals import products_changed_on_commit
from ml import data as hm

__all__ = ["ImportSummary", "catalog_import_hm"]


def catalog_import_hm(
    *,
    root: Path | str,
    limit: int | None = None,
    test_fraction: float = 0.15,
    seed: int = 0,
    progress: bool = True,
) -> ImportSummary:
    """Import (upsert by SKU) the H&M sample's articles, photos and basket outfits.

    Idempotent: a second run with the same files changes no row (products compare every field and the
    photo's SHA-256; outfits are keyed by basket index). Each photo is decoded with Pillow; a broken
    or missing photo skips that article with the reason, and the rest is imported. Each article's
    ``audience_group`` is derived from its index group, section and department (``ml.audience``).

    Args:
        root: the dataset folder (``articles.csv``, ``baskets.json``, ``images/``).
        limit: import at most this many articles, chosen so that whole baskets survive.
        test_fraction: share of outfits held out for evaluation (seeded, stable per basket).
        seed: seed of the article selection and of the outfit split.
        progress: show a tqdm progress bar.

    Raises:
        FileNotFoundError / ValueError: from :func:`ml.data.read_articles` (missing file or columns).
    """
    root = Path(root)
    summary = ImportSummary()
    articles, row_errors = hm.read_articles(root)
    for err in row_errors:
        summary.skipped.append((f"articles.csv line {err.line}", f"bad row: {err.reason}"))
    baskets = hm.read_baskets(root)
    articles = hm.select_articles(articles, baskets, limit, seed=seed)
    rows = [
        SampleRow(
            sku=art.article_id,
            values={
                "title": art.title,
                "description": art.description,
                "slot": art.slot,
                "product_type": art.product_type,
                "product_group": art.product_group,
                "colour": art.colour,
                "audience": art.audience,
                "audience_group": art.audience_group,
                "department": art.department,
                "section": art.section,
                "variant_group": art.product_code,
                "source": Product.Source.HM,
            },
            image_path=art.image_path,
            where=f"article {art.article_id} (line {art.line})",
        )
        for art in articles
    ]
    products_upsert_from_files(rows, summary=summary, progress=progress)
    _import_outfits(baskets, summary, test_fraction=test_fraction, seed=seed)
    products_changed_on_commit(product_ids=summary.changed_ids, change="updated", vectors_stale=True)
    return summary


def _import_outfits(
    baskets: list[list[str]], summary: ImportSummary, *, test_fraction: float, seed: int
) -> None:
    rows = Product.objects.filter(source=Product.Source.HM).values_list("sku", "id", "variant_group")
    ids = {sku: pk for sku, pk, _ in rows}
    codes = {sku: code for sku, _, code in rows}
    outfits = []
    for i, basket in enumerate(baskets):
        items = hm.clean_basket(basket, codes)
        if len(items) < 2:
            summary.outfits_dropped += 1
            continue
        ext = f"hm-basket-{i}"
        is_test = hm.split_is_test(ext, test_fraction, seed)
        outfits.append((ext, f"H&M basket {i}", [ids[sku] for sku in items], is_test))
    outfits_create(source=Outfit.Source.BASKET, outfits=outfits, summary=summary)
