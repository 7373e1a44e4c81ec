"""Product.audience_group is set by every write path: services, CSV import, H&M import, admin, migration."""

from __future__ import annotations

import csv
import importlib
import io
import zipfile

import pytest
from django.apps import apps
from django.contrib import admin

from catalog.admin import ProductAdmin
from catalog.hm_import import catalog_import_hm
from catalog.imports import product_import_csv
from catalog.models import Outfit, Product
from catalog.services import product_create, product_update
from ml.audience import audience_group
from ml.data import read_articles

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(scope="module")
def photo(hm_root) -> bytes:
    arts, _ = read_articles(hm_root)
    return arts[0].image_path.read_bytes()


def test_services_derive_it_from_the_audience(photo):
    men = product_create(
        sku="AUD-1", title="Oxford shirt", slot="top", image_bytes=photo, audience="Menswear"
    )
    none = product_create(sku="AUD-2", title="Umbrella", slot="accessory", image_bytes=photo)
    assert (men.audience, men.audience_group) == ("Menswear", "men")
    assert (none.audience, none.audience_group) == ("", "unisex")
    assert product_update(product=men, data={"audience": "Kids Boy"}) == ["audience", "audience_group"]
    men.refresh_from_db()
    assert (men.audience, men.audience_group) == ("Kids Boy", "kids")
    assert product_update(product=men, data={"audience": "Young Boy"}) == ["audience"]  # kids still


def test_csv_import_sets_it(hm_root):
    arts, _ = read_articles(hm_root)
    rows = [["sku", "title", "slot", "image", "audience"]]
    members = {}
    for i, (a, aud) in enumerate(zip(arts[:3], ["Ladieswear", "Baby/Children", "Unisex"], strict=True)):
        rows.append([f"CSV-{i}", a.title, a.slot, f"{a.article_id}.jpg", aud])
        members[f"{a.article_id}.jpg"] = a.image_path.read_bytes()
    buf, zbuf = io.StringIO(), io.BytesIO()
    csv.writer(buf).writerows(rows)
    with zipfile.ZipFile(zbuf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    result = product_import_csv(csv_bytes=buf.getvalue().encode(), zip_bytes=zbuf.getvalue())
    assert result.created == 3 and not result.rejections
    got = dict(Product.objects.filter(sku__startswith="CSV-").values_list("sku", "audience_group"))
    assert got == {"CSV-0": "women", "CSV-1": "kids", "CSV-2": "unisex"}


def test_hm_import_sets_it_from_index_group_section_and_department(hm_root):
    Outfit.objects.all().delete()
    Product.objects.all().delete()
    catalog_import_hm(root=hm_root, limit=300, progress=False)
    rows = list(Product.objects.values_list("audience", "section", "department", "audience_group"))
    assert len(rows) > 250
    assert all(g == audience_group(a, s, d) for a, s, d, g in rows)
    groups = {(a, g) for a, _, _, g in rows}
    assert ("Divided", "women") in groups and ("Menswear", "men") in groups
    assert not {g for a, _, _, g in rows if a == "Ladieswear"} - {"women"}


def test_admin_save_derives_it(photo, rf):
    p = product_create(sku="AUD-3", title="Tee", slot="top", image_bytes=photo, audience="Ladieswear")
    p.audience, p.section, p.department = "Sport", "Men H&M Sport", "Men Sport Tops"
    ProductAdmin(Product, admin.site).save_model(rf.post("/"), p, form=None, change=True)
    p.refresh_from_db()
    assert p.audience_group == "men"


def test_the_data_migration_fills_existing_rows(photo):
    p = product_create(sku="AUD-4", title="Dress", slot="one-piece", image_bytes=photo, audience="Divided")
    Product.objects.filter(pk=p.pk).update(audience_group="unisex")  # a row written before the field
    migration = importlib.import_module("catalog.migrations.0004_fill_audience_group")
    migration.fill(apps, None)
    p.refresh_from_db()
    assert p.audience_group == "women"
