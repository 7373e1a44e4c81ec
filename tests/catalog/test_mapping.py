"""Imports through a column mapping: Shopify's export, the MANGO sample and the "fashion product images"
layout, with photos from the real samples; slot inference and controlled vocabularies."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command

from catalog.imports import csv_preview, product_import_csv
from catalog.mapping import PRESETS, ColumnMapping, file_name, mapping_propose, strip_html
from catalog.models import Product, VocabularyAlias
from catalog.vocabulary import canonical_spellings, vocab_key, vocabulary
from ml import mango
from ml.data import read_articles

pytestmark = pytest.mark.django_db

SHOPIFY_CSV = Path(__file__).resolve().parents[1] / "fixtures" / "shopify" / "products_export.csv"
MANGO_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "mango"


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def _hm_photo(hm_root: Path, article_id: str) -> bytes:
    return (hm_root / "images" / article_id[:3] / f"{article_id}.jpg").read_bytes()


def shopify_zip(hm_root: Path) -> bytes:
    """The fixture's photos, named as its ``Image Src`` file names, from the H&M sample."""
    names = {file_name(r["Image Src"]) for r in csv.DictReader(SHOPIFY_CSV.open(encoding="utf-8"))}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(n for n in names if n and "-" not in n):
            zf.writestr(f"shop/{name}", _hm_photo(hm_root, name.removesuffix(".jpg")))
    return buf.getvalue()


def fashion_images_files(hm_root: Path, n: int = 8) -> tuple[bytes, bytes, list]:
    """A small catalog in the "fashion product images" layout (``styles.csv`` + ``images/<id>.jpg``)
    made of real H&M articles: one per product group of the sample."""
    arts, _ = read_articles(hm_root)
    groups = {
        "Garment Upper body": ("Apparel", "Topwear", "Tshirts"),
        "Garment Lower body": ("Apparel", "Bottomwear", "Trousers"),
        "Shoes": ("Footwear", "Shoes", "Casual Shoes"),
        "Bags": ("Accessories", "Bags", "Handbags"),
    }
    chosen = []
    for group, cats in groups.items():
        # real trousers for "Trousers" (the group's first two are "30 den 1p Tights": hosiery by name)
        chosen += [
            (a, cats) for a in arts if a.product_group == group and a.product_type != "Leggings/Tights"
        ][:2]
    buf, z = io.StringIO(), io.BytesIO()
    w = csv.writer(buf)
    cols = ["id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year"]
    w.writerow([*cols, "usage", "productDisplayName"])
    with zipfile.ZipFile(z, "w") as zf:
        for a, (master, sub, atype) in chosen[:n]:
            pid = str(int(a.article_id))
            w.writerow([pid, "Women", master, sub, atype, a.colour, "Summer", "2019", "Casual", a.title])
            zf.writestr(f"images/{pid}.jpg", a.image_path.read_bytes())
    return buf.getvalue().encode(), z.getvalue(), chosen[:n]


def test_shopify_export_imports_variants_as_one_group_with_photos_by_file_name(hm_root):
    result = product_import_csv(
        csv_bytes=SHOPIFY_CSV.read_bytes(), zip_bytes=shopify_zip(hm_root), mapping=PRESETS["shopify"][2]
    )
    # 20 rows: 19 product rows (17 colour variants, a skirt with a size option, a candle) + 1 photo row
    assert (result.total, result.created, result.updated) == (19, 18, 0)
    assert [(r.row, r.sku, r.field) for r in result.rejections] == [(21, "HF-0001", "slot")]
    assert result.rejections[0].message.startswith(
        "needs review: no outfit slot in the file, and product type"
    )
    assert "1 row(s) holding only a further photo of a product were skipped" in result.notes
    jackets = Product.objects.filter(variant_group="slim-denim-jacket").order_by("sku")
    assert [(p.sku, p.colour, p.slot, p.price) for p in jackets] == [
        ("JA-399061008", "Light Blue", "outerwear", Decimal("49.99")),
        ("JA-399061015", "Black", "outerwear", Decimal("49.99")),
        ("JA-399061026", "Dark Blue", "outerwear", Decimal("49.99")),
    ]
    jacket = jackets[1]
    assert jacket.title == "Slim denim jacket"  # filled down from the handle's first row
    assert jacket.description == "Jacket in washed denim with a collar & buttons."  # HTML stripped
    assert jacket.audience_group == "men"
    slots = dict(
        Product.objects.filter(sku__in=["SW-145872053", "DR-212629048", "TR-309864013"]).values_list(
            "sku", "slot"
        )
    )
    assert slots == {"SW-145872053": "top", "DR-212629048": "one-piece", "TR-309864013": "bottom"}
    skirt = Product.objects.get(sku="SK-652730004")
    assert (skirt.colour, skirt.slot, skirt.price) == ("", "bottom", Decimal("22.50"))  # "Size" is no colour
    assert Product.objects.get(sku="SN-622958016").image_sha256  # the photo came from the zip


def test_shopify_preset_is_proposed_from_the_header():
    header, sample, n = csv_preview(SHOPIFY_CSV.read_bytes())
    proposal = mapping_propose(header, sample)
    assert (proposal.preset, n, header[0]) == ("shopify", 20, "Handle")
    assert proposal.mapping.fields["colour"].option == "Color"


def test_a_csv_of_unknown_layout_is_mapped_by_name_and_by_content():
    header = ["Article No", "Name", "Farbe", "Preis", "Bild", "Who", "Long text"]
    rows = [
        ["A-1", "Linen shirt white", "white", "39.90", "a1.jpg", "Women", "A long description " * 5],
        ["A-2", "Wool coat camel", "beige", "129.00", "a2.png", "Men", "Another long description " * 4],
        ["A-3", "Silk scarf red", "red", "19.50", "a3.jpg", "Women", "Yet another description " * 4],
    ]
    proposal = mapping_propose(header, rows)
    found = {t: (r.columns[0], proposal.how[t]) for t, r in proposal.mapping.fields.items()}
    assert found == {
        "title": ("Name", "by name"),
        "image": ("Bild", "by content"),
        "colour": ("Farbe", "by content"),
        "audience": ("Who", "by content"),
        "price": ("Preis", "by content"),
        "description": ("Long text", "by content"),
        "sku": ("Article No", "by content"),
    }


def test_a_short_files_category_column_is_not_taken_for_the_sku():
    """Two rows of "Shirts" and "Shoes" are unique words, not codes: no SKU is proposed (the page then asks
    for one) rather than products whose SKU is their category."""
    header = ["handle", "name", "category", "picture", "cost", "gender"]
    rows = [
        ["qa-foreign-1", "Linen shirt white", "Shirts", "a1.jpg", "39.90", "Men"],
        ["qa-foreign-2", "Leather loafer brown", "Shoes", "a2.jpg", "89.00", "Men"],
    ]
    fields = mapping_propose(header, rows).mapping.fields
    assert "sku" not in fields and fields["variant_group"].columns == ("handle",)


def test_mapping_json_round_trips_and_bad_specs_name_the_problem():
    m = PRESETS["mango"][2]
    assert ColumnMapping.from_dict(json.loads(json.dumps(m.as_dict()))) == m
    with pytest.raises(ValueError, match="mapping: unknown field 'colour_name'"):
        ColumnMapping.from_dict({"fields": {"colour_name": {"column": "x"}}})
    with pytest.raises(ValueError, match="mapping: colour: unknown transform 'klingon'"):
        ColumnMapping.from_dict({"fields": {"colour": {"column": "x", "transform": "klingon"}}})
    assert strip_html("<p>Soft <b>cotton</b> &amp; wool</p><p>Tee</p>") == "Soft cotton & wool Tee"


def test_mango_sample_imports_through_the_mapping_command(tmp_path):
    products, _ = mango.read_products(MANGO_ROOT)
    head = (MANGO_ROOT / "products.csv").read_text(encoding="utf-8").splitlines()[:31]
    (tmp_path / "products.csv").write_text("\n".join(head) + "\n", encoding="utf-8")
    # an import writes the catalog's spelling of a colour it has ("off-white" -> the H&M slice's "Off White"
    # when a session-scoped catalog is in the database), else MANGO's own
    known = canonical_spellings("colour")
    out = io.StringIO()
    call_command(
        "import_products",
        str(tmp_path / "products.csv"),
        "--mapping",
        "mango",
        "--images-dir",
        str(MANGO_ROOT),
        "--no-progress",
        stdout=out,
    )
    assert "30 rows: 30 created, 0 updated, 0 unchanged, 0 rejected" in out.getvalue()
    for m in products[:30]:
        p = Product.objects.get(sku=m.sku)
        colour = known.get(vocab_key(m.colour), m.colour)
        assert (p.slot, p.colour, p.variant_group) == (m.slot, colour, m.variant_group)
        assert p.title == f"{m.sex} {m.age.lower()} {m.colour} {m.product_type.lower()}"
    dark_denim = known.get(vocab_key("dark denim"), "dark denim")
    assert Product.objects.get(sku="MNG-53000586-TO").colour == dark_denim  # "TEJANO OSCURO"
    # what each Spanish source value became is kept
    assert VocabularyAlias.objects.get(field="colour", source_value="TEJANO OSCURO").value == dark_denim


def test_fashion_product_images_layout_imports_with_its_preset_by_command(hm_root, tmp_path):
    csv_bytes, zip_bytes, chosen = fashion_images_files(hm_root)
    (tmp_path / "styles.csv").write_bytes(csv_bytes)
    (tmp_path / "images.zip").write_bytes(zip_bytes)
    out = io.StringIO()
    call_command("import_products", str(tmp_path / "styles.csv"), "--propose", stdout=out)
    assert json.loads(out.getvalue())["name"] == PRESETS["fashion-product-images"][0]
    args = [str(tmp_path / "styles.csv"), "--images", str(tmp_path / "images.zip"), "--no-progress"]
    call_command("import_products", *args, "--mapping", "fashion-product-images", stdout=out)
    assert "8 rows: 8 created" in out.getvalue()
    got = dict(
        Product.objects.filter(sku__in=[str(int(a.article_id)) for a, _ in chosen]).values_list("sku", "slot")
    )
    assert sorted(got.values()) == ["bag", "bag", "bottom", "bottom", "shoes", "shoes", "top", "top"]


def test_import_merges_spellings_into_the_catalogs_values_and_facets_never_show_unknown(hm_root):
    arts, _ = read_articles(hm_root)
    a = arts[:4]
    header = "sku,title,slot,image,colour,product_type,audience\n"
    lines = [
        f"V-1,{a[0].title},top,{a[0].article_id}.jpg,Black,Earrings,Women",
        f"V-2,{a[1].title},top,{a[1].article_id}.jpg,black,Earring,women",
        f"V-3,{a[2].title},top,{a[2].article_id}.jpg,BLACK,earrings,Unknown",
        f"V-4,{a[3].title},top,{a[3].article_id}.jpg,Unknown,Dog wear,Women",
    ]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for x in a:
            zf.writestr(f"{x.article_id}.jpg", x.image_path.read_bytes())
    product_import_csv(csv_bytes=(header + "\n".join(lines) + "\n").encode(), zip_bytes=buf.getvalue())
    qs = Product.objects.filter(sku__startswith="V-")
    assert sorted(qs.values_list("colour", "product_type", "audience")) == [
        ("", "Dog wear", "Women"),
        ("Black", "Earrings", ""),
        ("Black", "Earrings", "Women"),
        ("Black", "Earrings", "Women"),
    ]
    terms = {t.value: t.count for t in vocabulary("colour", qs=qs)}
    assert terms == {"Black": 3}  # "Unknown" is never a value
    assert Product.objects.filter_facets(product_type="earring").filter(sku__startswith="V-").count() == 3


@pytest.fixture
def merch_client(client):
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user("mapper", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    client.force_login(user)
    return client


def test_mapping_page_proposes_shopify_and_the_confirmed_mapping_is_saved_and_imported(
    merch_client, hm_root, django_capture_on_commit_callbacks
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from catalog.imports import import_job_run
    from catalog.models import ImportJob, ImportMapping

    files = {
        "csv": SimpleUploadedFile("products_export.csv", SHOPIFY_CSV.read_bytes(), "text/csv"),
        "images": SimpleUploadedFile("photos.zip", shopify_zip(hm_root), "application/zip"),
    }
    response = merch_client.post("/manage/import", {**files, "mapping": ""})
    job = ImportJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/manage/import/{job.pk}/columns"
    assert job.status == ImportJob.Status.DRAFT  # nothing runs before the columns are confirmed
    html = merch_client.get(f"/manage/import/{job.pk}/columns").content.decode()
    assert "This looks like a <strong>Shopify product export</strong>" in html
    assert "<code>basic-sweater</code>" in html  # sample values of the file's columns
    assert '<option value="Variant SKU" selected>' in html
    # the merchandiser changes one field (no variant groups) and saves the mapping by name
    form = {"form-TOTAL_FORMS": "12", "form-INITIAL_FORMS": "12", "save_as": "Our Shopify store"}
    from catalog.mapping import TARGETS

    proposed = PRESETS["shopify"][2].fields
    for i, t in enumerate(TARGETS):
        rule = proposed.get(t)
        source = (
            ""
            if rule is None or t == "variant_group"
            else (rule.columns[0] if len(rule.columns) == 1 and not rule.transform else "__proposed__")
        )
        form[f"form-{i}-target"], form[f"form-{i}-source"] = t, source
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = merch_client.post(f"/manage/import/{job.pk}/columns", form)
    assert response["Location"] == f"/manage/import/{job.pk}" and len(queued) == 1
    saved = ColumnMapping.from_dict(ImportMapping.objects.get(name="Our Shopify store").spec)
    assert "variant_group" not in saved.fields and saved.fields["colour"].option == "Color"
    job = import_job_run(job_id=job.pk)
    assert (job.status, job.created, job.rejected) == ("succeeded", 18, 1)
    assert Product.objects.get(sku="JA-399061015").variant_group == ""
    # the saved mapping is offered on the next upload
    assert '<option value="Our Shopify store">' in merch_client.get("/manage/import").content.decode()


def test_mapping_page_requires_the_sku_and_title_columns(merch_client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from catalog.models import ImportJob

    csv_bytes = b"Ref,Name\nA-1,Linen shirt\n"
    merch_client.post("/manage/import", {"csv": SimpleUploadedFile("x.csv", csv_bytes, "text/csv")})
    job = ImportJob.objects.get()
    form = {
        "form-TOTAL_FORMS": "1",
        "form-INITIAL_FORMS": "1",
        "form-0-target": "title",
        "form-0-source": "Name",
    }
    html = merch_client.post(f"/manage/import/{job.pk}/columns", form).content.decode()
    assert "Choose the column that holds the SKU (unique product id)." in html
    job.refresh_from_db()
    assert job.status == ImportJob.Status.DRAFT


def test_our_own_format_preset_needs_only_its_four_columns(hm_root):
    """The page's "This site's own CSV format" choice reads a file with only sku, title, slot and image
    (the others are optional, as with no mapping), also after the job stores it as JSON."""
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("tee.jpg", _hm_photo(hm_root, "0111565001"))
    stored = ColumnMapping.from_dict(json.loads(json.dumps(PRESETS["outfitlab"][2].as_dict())))
    result = product_import_csv(
        csv_bytes=b"sku,title,slot,image\nOWN-1,Strap top,top,tee.jpg\n",
        zip_bytes=z.getvalue(),
        mapping=stored,
    )
    assert (result.total, result.created, result.rejections) == (1, 1, [])
    top = Product.objects.get(sku="OWN-1")
    assert (top.title, top.slot, top.colour, top.price) == ("Strap top", "top", "", None)
    with pytest.raises(ValueError, match=r"reads column\(s\) 'slot'"):  # a column it needs is still needed
        product_import_csv(csv_bytes=b"sku,title,image\nOWN-2,Tee,tee.jpg\n", mapping=stored)
