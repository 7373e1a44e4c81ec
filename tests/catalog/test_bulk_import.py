"""Bulk import of products from a CSV and a zip of photos, on real H&M rows and photos."""

from __future__ import annotations

import csv
import io
import zipfile
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

from catalog.imports import ImportFileError, import_job_create, import_job_run, product_import_csv
from catalog.models import ImportJob, Product
from catalog.services import product_update
from catalog.signals import products_changed
from ml.data import read_articles

pytestmark = pytest.mark.django_db

HEADER = ["sku", "title", "slot", "image", "colour", "product_type", "price", "description"]


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(scope="module")
def articles(hm_root):
    arts, _ = read_articles(hm_root)
    return arts[:6]


def _csv(rows: list[list[str]], header: list[str] = HEADER) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps a "../" name as given
    return buf.getvalue()


def _row(a, sku=None, image=None, price="", slot=None, colour=None) -> list[str]:
    return [
        sku or f"IMP-{a.article_id}",
        a.title,
        slot or a.slot,
        image or f"photos/{a.article_id}.jpg",
        colour or a.colour,
        a.product_type,
        price,
        a.description,
    ]


def test_valid_rows_are_kept_and_each_bad_row_is_reported(articles):
    a = articles
    photos = {f"photos/{x.article_id}.jpg": x.image_path.read_bytes() for x in a}
    photos["photos/broken.jpg"] = photos[f"photos/{a[0].article_id}.jpg"][:300]
    photos["../evil.jpg"] = photos[f"photos/{a[1].article_id}.jpg"]
    rows = [
        _row(a[0], price="19.99"),  # row 2: ok
        _row(a[1]),  # row 3: ok
        _row(a[2], sku=f"IMP-{a[0].article_id}"),  # row 4: duplicate SKU of row 2
        ["WIDE-1"] + ["x"] * 9_999,  # row 5: 10,000 fields
        _row(a[3], image="photos/missing.jpg"),  # row 6: not in the zip
        _row(a[4], image="photos/broken.jpg"),  # row 7: broken photo
        _row(a[5], image="../evil.jpg"),  # row 8: path climbing out of the zip
        _row(a[2], sku="IMP-PRICE", price="cheap"),  # row 9: bad price
        _row(a[2], sku="IMP-SLOT", slot="hat"),  # row 10: unknown slot
        # row 11: ok, matched by file name; a colour no catalog has (the session's H&M slice may hold the rest)
        _row(a[2], sku="IMP-2", image=f"{a[2].article_id}.jpg", colour="Glacier Mint"),
    ]
    result = product_import_csv(csv_bytes=_csv(rows), zip_bytes=_zip(photos))
    got = [(r.row, r.sku, r.field, r.message) for r in result.rejections]
    assert got[0] == (
        4,
        f"IMP-{a[0].article_id}",
        "sku",
        f"SKU 'IMP-{a[0].article_id}' appears again (first on row 2)",
    )
    assert got[1] == (5, "WIDE-1", "", "has 10000 fields; the header has 8")
    assert got[2] == (6, f"IMP-{a[3].article_id}", "image", "'photos/missing.jpg' is not in images zip")
    assert got[3][:3] == (7, f"IMP-{a[4].article_id}", "image")
    assert got[3][3].startswith("photos/broken.jpg: broken or truncated image")
    assert got[4] == (
        8,
        f"IMP-{a[5].article_id}",
        "image",
        "'../evil.jpg' is not a safe path inside the zip (absolute or with '..'); not opened",
    )
    assert got[5] == (9, "IMP-PRICE", "price", "'cheap' is not a number")
    assert got[6][:3] == (10, "IMP-SLOT", "slot") and got[6][3].startswith("'hat' is not one of ")
    assert len(got) == 7
    assert (result.total, result.created, result.updated, result.unchanged) == (10, 3, 0, 0)
    assert result.notes[0] == "ignored 1 zip member(s) with unsafe paths: '../evil.jpg'"
    assert result.notes[1].startswith("new colour value(s) added to the catalog: ")
    assert "Glacier Mint" in result.notes[1]
    kept = Product.objects.get(sku=f"IMP-{a[0].article_id}")
    assert kept.title == a[0].title and kept.price == Decimal("19.99") and kept.image and kept.thumbnail
    assert Product.objects.get(sku="IMP-2").title == a[2].title
    for sku in ("WIDE-1", f"IMP-{a[3].article_id}", f"IMP-{a[4].article_id}", "IMP-PRICE", "IMP-SLOT"):
        assert not Product.objects.filter(sku=sku).exists()  # nothing half-written


def test_an_audience_that_names_nobody_rejects_its_row_and_keeps_the_others(articles):
    """A row whose audience names nobody would be imported as unisex, beside every audience's items."""
    a = articles[:3]
    photos = _zip({f"photos/{x.article_id}.jpg": x.image_path.read_bytes() for x in a})
    header = [*HEADER, "audience"]
    rows = [_row(a[0]) + ["Martians"], _row(a[1]) + ["Menswear"], _row(a[2]) + [""]]
    result = product_import_csv(csv_bytes=_csv(rows, header), zip_bytes=photos)
    got = [(r.row, r.sku, r.field) for r in result.rejections]
    assert got == [(2, f"IMP-{a[0].article_id}", "audience")]
    assert result.rejections[0].message.startswith("“Martians” does not say who the product is for")
    assert (result.created, result.updated) == (2, 0)
    assert not Product.objects.filter(sku=f"IMP-{a[0].article_id}").exists()
    assert Product.objects.get(sku=f"IMP-{a[1].article_id}").audience_group == "men"
    assert Product.objects.get(sku=f"IMP-{a[2].article_id}").audience_group == "unisex"
    # a product stored with such an audience before the check stays editable in its other fields
    Product.objects.filter(sku=f"IMP-{a[1].article_id}").update(audience="Martians", audience_group="unisex")
    kept = Product.objects.get(sku=f"IMP-{a[1].article_id}")
    assert product_update(product=kept, data={"title": "Renamed"}, embed=False) == ["title"]
    with pytest.raises(ValueError, match="^audience: “Venusians” does not say"):
        product_update(product=kept, data={"audience": "Venusians"}, embed=False)


def test_second_import_updates_changed_rows_and_skips_unchanged(articles):
    a = articles[:2]
    photos = _zip({f"photos/{x.article_id}.jpg": x.image_path.read_bytes() for x in a})
    first = product_import_csv(csv_bytes=_csv([_row(x) for x in a]), zip_bytes=photos)
    assert (first.created, first.updated) == (2, 0)
    changed = [_row(a[0], price="5.00"), _row(a[1])]
    changed[1][3] = ""  # an existing SKU without a photo keeps its photo
    again = product_import_csv(csv_bytes=_csv(changed), zip_bytes=photos)
    assert (again.created, again.updated, again.unchanged, again.rejections) == (0, 1, 1, [])
    assert Product.objects.get(sku=f"IMP-{a[0].article_id}").price == Decimal("5.00")


@pytest.mark.parametrize(
    ("csv_bytes", "zip_bytes", "message"),
    [
        (
            b"sku,name,photo\nA1,x,y.jpg\n",
            None,
            "CSV: missing required column(s): title, slot, image (required: sku, title, slot, image; or import it with a column mapping)",
        ),
        (
            "sku,title,slot,image\nA1,Café,top,a.jpg\n".encode("latin-1"),
            None,
            "CSV: not UTF-8 text (byte 0xe9 on line 2); save the file as UTF-8",
        ),
        (b"", None, "CSV: the file is empty"),
        (b"sku,title,slot,image,SKU\n", None, "CSV: column(s) named more than once: sku"),
        (
            b"sku,title,slot,image\nA1,x,top,a.jpg\n",
            b"PK\x03\x04 this is not really a zip",
            "images zip: not a zip archive (File is not a zip file)",
        ),
    ],
)
def test_unusable_files_are_refused_whole_with_the_reason(csv_bytes, zip_bytes, message):
    before = Product.objects.count()  # the session's trained slice may be there
    with pytest.raises(ImportFileError) as err:
        product_import_csv(csv_bytes=csv_bytes, zip_bytes=zip_bytes)
    assert str(err.value) == message
    assert Product.objects.count() == before


def test_import_job_records_progress_counts_and_rejections(articles, django_user_model):
    a = articles[:2]
    user = django_user_model.objects.create_user("importer")
    rows = [_row(a[0]), _row(a[1], image="photos/nope.jpg")]
    job = import_job_create(
        csv_upload=SimpleUploadedFile("products.csv", _csv(rows)),
        zip_upload=SimpleUploadedFile(
            "photos.zip", _zip({f"photos/{a[0].article_id}.jpg": a[0].image_path.read_bytes()})
        ),
        user=user,
    )
    assert job.status == ImportJob.Status.QUEUED and job.percent == 0 and job.started_by == user
    job = import_job_run(job_id=job.pk)
    assert (job.status, job.total, job.processed, job.created, job.rejected) == ("succeeded", 2, 2, 1, 1)
    assert job.percent == 100
    assert job.rejections == [
        {
            "row": 3,
            "sku": f"IMP-{a[1].article_id}",
            "field": "image",
            "message": "'photos/nope.jpg' is not in images zip",
        }
    ]
    assert import_job_run(job_id=job.pk).created == 1  # a second delivery of the task changes nothing


def test_import_job_with_a_non_zip_fails_with_the_file_error(client):
    from django.contrib.auth.models import Permission, User

    job = import_job_create(
        csv_upload=SimpleUploadedFile("p.csv", b"sku,title,slot,image\nA1,x,top,a.jpg\n"),
        zip_upload=SimpleUploadedFile("photos.zip", b"GIF89a not a zip"),
    )
    job = import_job_run(job_id=job.pk)
    assert job.status == ImportJob.Status.FAILED
    assert job.file_error == "images zip: not a zip archive (File is not a zip file)"
    assert not Product.objects.filter(sku="A1").exists()
    user = User.objects.create_user("refused", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    client.force_login(user)
    page = client.get(f"/manage/import/{job.pk}").content.decode()
    assert "The file was refused, nothing was imported:" in page
    # no full green bar nor "Import finished" beside the refusal (both were shown)
    assert 'role="progressbar"' not in page
    assert '<div data-field="done" hidden>' in page


def test_management_command_writes_the_rejection_report(articles, tmp_path):
    a = articles[0]
    (tmp_path / "p.csv").write_bytes(_csv([_row(a), _row(a)]))
    (tmp_path / "p.zip").write_bytes(_zip({f"photos/{a.article_id}.jpg": a.image_path.read_bytes()}))
    out = io.StringIO()
    call_command(
        "import_products",
        str(tmp_path / "p.csv"),
        "--images",
        str(tmp_path / "p.zip"),
        "--report",
        str(tmp_path / "r.csv"),
        "--no-progress",
        stdout=out,
    )
    assert "2 rows: 1 created, 0 updated, 0 unchanged, 1 rejected" in out.getvalue()
    report = list(csv.reader((tmp_path / "r.csv").open(encoding="utf-8")))
    assert report == [
        ["row", "sku", "field", "message"],
        ["3", f"IMP-{a.article_id}", "sku", f"SKU 'IMP-{a.article_id}' appears again (first on row 2)"],
    ]


def test_product_update_announces_stale_vectors_only_when_text_slot_or_photo_change(
    articles, django_capture_on_commit_callbacks
):
    """Every committed edit is announced (cached answers must show it); only a change of what the product
    embeds (text, slot, photo) says its vectors are stale. Nothing is announced before the commit."""
    a = articles[0]
    result = product_import_csv(
        csv_bytes=_csv([_row(a)]), zip_bytes=_zip({f"photos/{a.article_id}.jpg": a.image_path.read_bytes()})
    )
    product = Product.objects.get(pk=result.product_ids[0])
    sent: list[tuple[list[int], str, bool]] = []

    def listener(sender, *, product_ids, change, vectors_stale, **kwargs):
        sent.append((product_ids, change, vectors_stale))

    products_changed.connect(listener, dispatch_uid="test-listener")
    try:
        with django_capture_on_commit_callbacks() as callbacks:
            assert product_update(product=product, data={"price": Decimal("3.50")}) == ["price"]
        assert sent == []  # not before the commit
        for callback in callbacks:
            callback()
        assert sent == [([product.pk], "updated", False)]  # the price is not embedded
        sent.clear()
        with django_capture_on_commit_callbacks(execute=True):
            assert product_update(product=product, data={"title": "Renamed tights"}) == ["title"]
        assert sent == [([product.pk], "updated", True)]
        sent.clear()
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            assert product_update(product=product, data={}, image_bytes=a.image_path.read_bytes()) == []
        assert callbacks == [] and sent == []  # the same photo again is no change
    finally:
        products_changed.disconnect(dispatch_uid="test-listener")
    with pytest.raises(ValueError, match=r"^slot: 'hat' is not one of"):
        product_update(product=product, data={"slot": "hat", "title": "Other"})
    product.refresh_from_db()
    assert product.title == "Renamed tights" and product.slot == a.slot


def test_a_bare_file_name_that_two_zip_members_share_is_called_ambiguous(articles):
    a = articles[0]
    photo = a.image_path.read_bytes()
    photos = _zip({f"a/{a.article_id}.jpg": photo, f"b/{a.article_id}.jpg": photo})
    result = product_import_csv(csv_bytes=_csv([_row(a, image=f"{a.article_id}.jpg")]), zip_bytes=photos)
    assert [(r.row, r.field, r.message) for r in result.rejections] == [
        (
            2,
            "image",
            f"'{a.article_id}.jpg' matches 2 files in images zip (a/{a.article_id}.jpg, "
            f"b/{a.article_id}.jpg); give its path inside the zip",
        )
    ]
    assert not Product.objects.filter(sku=f"IMP-{a.article_id}").exists()
