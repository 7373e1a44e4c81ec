"""The MANGO importer on slices of the real sample: stylist outfits, composed texts, idempotent, beside H&M."""

from __future__ import annotations

import csv
import shutil
import time

import pytest
from django.core.management import call_command

from catalog.mango_import import catalog_import_mango
from catalog.models import Outfit, OutfitItem, Product
from ml import mango

pytestmark = pytest.mark.django_db


@pytest.fixture
def empty_catalog(db, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    Outfit.objects.all().delete()
    Product.objects.all().delete()


def test_import_creates_products_and_stylist_outfits_and_is_idempotent(empty_catalog, mango_root):
    products, _ = mango.read_products(mango_root)
    outfits = mango.read_outfits(mango_root)
    chosen = mango.select_products(products, outfits, 40, seed=0)
    t0 = time.perf_counter()
    first = catalog_import_mango(root=mango_root, limit=40, progress=False)
    print(f"\nimported {first.created} MANGO products in {time.perf_counter() - t0:.1f} s")
    assert first.created == len(chosen) and first.skipped == []
    assert Product.objects.filter(source=Product.Source.MANGO).count() == len(chosen)
    ids = {m.product_id for m in chosen}
    whole = sum(set(items) <= ids for _, items in outfits)
    assert first.outfits_created >= whole >= 5
    stylist = Outfit.objects.filter(source=Outfit.Source.STYLIST)
    assert stylist.count() == first.outfits_created and not Outfit.objects.exclude(source="stylist").exists()
    for o in stylist.prefetch_related("items__product"):
        oid = o.external_id.removeprefix("mango-outfit-")
        assert o.split == ("test" if mango.outfit_is_test(oid, 0.15, 0) else "train")
        models = [i.product.variant_group for i in o.items.all()]
        assert len(models) >= 2 and len(set(models)) == len(models)  # one product per model
    m = chosen[0]
    p = Product.objects.get(sku=m.sku)
    assert p.sku.startswith("MNG-") and p.title == m.title and p.title.startswith("Female adult ")
    assert (p.slot, p.audience, p.audience_group, p.section) == (m.slot, "Female Adult", "women", "SHE")
    assert p.image and p.thumbnail and len(p.image_sha256) == 64
    assert p.text.startswith(m.title)
    counts = (Product.objects.count(), Outfit.objects.count(), OutfitItem.objects.count())
    second = catalog_import_mango(root=mango_root, limit=40, progress=False)
    assert (second.created, second.updated, second.unchanged) == (0, 0, len(chosen))
    assert (second.outfits_created, second.outfits_unchanged) == (0, first.outfits_created)
    assert (Product.objects.count(), Outfit.objects.count(), OutfitItem.objects.count()) == counts


def test_hm_and_mango_live_in_one_catalog(empty_catalog, hm_root, mango_root):
    from catalog.hm_import import catalog_import_hm

    hm = catalog_import_hm(root=hm_root, limit=30, progress=False)
    mg = catalog_import_mango(root=mango_root, limit=30, progress=False)
    assert Product.objects.filter(source="hm").count() == hm.created > 0
    assert Product.objects.filter(source="mango").count() == mg.created > 0
    assert Outfit.objects.filter(source="basket").count() == hm.outfits_created
    assert Outfit.objects.filter(source="stylist").count() == mg.outfits_created
    # no outfit mixes the two catalogs
    for o in Outfit.objects.prefetch_related("items__product"):
        assert len({i.product.source for i in o.items.all()}) == 1
    # one spelling per colour and type: MANGO's "black" takes H&M's "Black" (cards and facets agree)
    from collections import Counter

    from ml.vocab import vocab_key

    for f in ("colour", "product_type"):
        spellings = Counter(vocab_key(v) for v in set(Product.objects.values_list(f, flat=True)) - {""})
        assert max(spellings.values()) == 1, [k for k, n in spellings.items() if n > 1]
    assert Product.objects.filter(source="mango", colour="Black").exists()
    colours = set(Product.objects.filter(source="mango").values_list("colour", flat=True)) - {""}
    assert colours and all(c == c.title() for c in colours), colours  # "Taupe" beside H&M's "Dark Blue"


def test_broken_and_missing_photos_are_skipped(empty_catalog, mango_root, tmp_path):
    products, _ = mango.read_products(mango_root)
    chosen = mango.select_products(products, mango.read_outfits(mango_root), 12, seed=0)
    dst = tmp_path / "mango"
    (dst / "images").mkdir(parents=True)
    with (mango_root / "products.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if r["cod_modelo_color"] in {m.product_id for m in chosen}]
        header = reader.fieldnames
    with (dst / "products.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        shutil.copy(mango_root / r["image"], dst / r["image"])
    shutil.copy(mango_root / "outfits.csv", dst / "outfits.csv")
    broken, missing = rows[0], rows[1]
    (dst / broken["image"]).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (dst / missing["image"]).unlink()
    summary = catalog_import_mango(root=dst, progress=False)
    reasons = dict(summary.skipped)
    assert summary.created == len(rows) - 2
    assert any(broken["cod_modelo_color"] in w and "broken image" in r for w, r in reasons.items())
    assert any(missing["cod_modelo_color"] in w and "image missing" in r for w, r in reasons.items())


def test_import_catalog_command(empty_catalog, mango_root, capsys):
    call_command("import_catalog", "mango", str(mango_root), "--limit", "20", "--no-progress")
    out = capsys.readouterr().out
    n = Product.objects.filter(source="mango").count()
    assert 0 < n <= 20
    assert f"products: {n} created" in out and "import finished" in out
