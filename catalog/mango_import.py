"""Import of the MANGO sample (``../shared/data/mango``): products, photos and stylists' outfits.

Read at run time from the dataset folder, never copied into the repository (``manage.py
import_catalog mango PATH``). MANGO has no titles: each product's title and description are composed
from its attributes (:class:`ml.mango.MangoProduct`); SKUs carry the ``MNG-`` prefix, so the H&M and
MANGO samples live in one catalog side by side.
"""

from __future__ import annotations

from pathlib import Path

from catalog.models import Outfit, Product
from catalog.sample_import import ImportSummary, SampleRow, outfits_create, products_upsert_from_files
from catalog.signals import products_changed_on_commit
from ml import mango


def catalog_import_mango(
    *,
    root: Path | str,
    limit: int | None = None,
    test_fraction: float = 0.15,
    seed: int = 0,
    progress: bool = True,
) -> ImportSummary:
    """Import (upsert by SKU) the MANGO sample's products, photos and outfits (``Outfit.Source.STYLIST``).

    Idempotent, as the H&M import: unchanged products (every field and the photo's SHA-256) and outfits
    already there (keyed ``mango-outfit-<id>``) are left alone. Each outfit keeps one product per model
    (colour variants are alternatives) and is dropped below 2 products; ``test_fraction`` of the outfits
    are held out, fixed by a hash of the outfit id (:func:`ml.mango.outfit_is_test`).

    Args:
        root: the dataset folder (``products.csv``, ``outfits.csv``, ``images/``).
        limit: import at most this many products, chosen so that whole outfits survive.
        test_fraction: share of outfits held out for evaluation.
        seed: seed of the product selection and of the outfit split.
        progress: show a tqdm progress bar.

    Raises:
        FileNotFoundError / ValueError: from :func:`ml.mango.read_products` / :func:`ml.mango.read_outfits`.
    """
    root = Path(root)
    summary = ImportSummary()
    products, row_errors = mango.read_products(root)
    for err in row_errors:
        summary.skipped.append((f"products.csv line {err.line}", f"bad row: {err.reason}"))
    raw_outfits = mango.read_outfits(root)
    products = mango.select_products(products, raw_outfits, limit, seed=seed)
    rows = [
        SampleRow(
            sku=m.sku,
            values={
                "title": m.title,
                "description": m.description,
                "slot": m.slot,
                "product_type": m.product_type,
                "product_group": m.category,
                "colour": m.colour.title(),  # H&M's casing ("Light Grey Marl"), shown side by side
                "audience": m.audience,
                "audience_group": m.audience_group,
                "department": m.family,
                "section": m.line,
                "variant_group": m.variant_group,
                "source": Product.Source.MANGO,
            },
            image_path=m.image_path,
            where=f"product {m.product_id} (line {m.line_no})",
        )
        for m in products
    ]
    products_upsert_from_files(rows, summary=summary, progress=progress)
    stored = Product.objects.filter(source=Product.Source.MANGO).values_list("sku", "id", "variant_group")
    ids = {sku.removeprefix(mango.SKU_PREFIX): pk for sku, pk, _ in stored}
    models = {sku.removeprefix(mango.SKU_PREFIX): model for sku, _, model in stored}
    outfits = []
    for oid, items in raw_outfits:
        kept = mango.clean_outfit(items, models)
        if len(kept) < 2:
            summary.outfits_dropped += 1
            continue
        is_test = mango.outfit_is_test(oid, test_fraction, seed)
        outfits.append((mango.outfit_key(oid), f"MANGO outfit {oid}", [ids[p] for p in kept], is_test))
    outfits_create(source=Outfit.Source.STYLIST, outfits=outfits, summary=summary)
    products_changed_on_commit(product_ids=summary.changed_ids, change="updated", vectors_stale=True)
    return summary
