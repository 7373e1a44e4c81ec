"""Merchandiser pages: upload one product with inline errors, start a training run."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Permission, User
from PIL import Image

from catalog.models import Product
from recommender.models import TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def merch_client(client):
    user = User.objects.create_user("merch-page", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    client.login(username="merch-page", password="pw")
    return client


def test_upload_needs_login_and_permission(client):
    r = client.get("/manage/upload")
    assert r.status_code == 302 and r["Location"] == "/accounts/login/?next=/manage/upload"
    User.objects.create_user("shopper-page", password="pw")
    client.login(username="shopper-page", password="pw")
    assert client.get("/manage/upload").status_code == 403


def test_broken_image_upload_shows_inline_error_and_creates_nothing(merch_client):
    buf = io.BytesIO()
    Image.new("RGB", (60, 90), "navy").save(buf, format="JPEG")
    broken = io.BytesIO(buf.getvalue()[:40])
    broken.name = "broken.jpg"
    r = merch_client.post(
        "/manage/upload", {"sku": "PAGE-1", "title": "Navy tee", "slot": "top", "image": broken}
    )
    assert r.status_code == 200
    body = r.content.decode()
    assert "Nothing was created" in body and "PAGE-1: broken or truncated image" in body
    assert 'value="Navy tee"' in body  # the form keeps what was typed
    assert not Product.objects.filter(sku="PAGE-1").exists()


def test_over_long_fields_are_refused_with_their_real_length_not_cut(merch_client, hm_root):
    photo = next((hm_root / "images").glob("*/*.jpg"))
    for fields, message in (
        ({"title": "t" * 5000}, "title: 5000 characters is over the limit of 255"),
        ({"colour": "__new__", "colour_new": "c" * 1000}, "colour: 1000 characters is over the limit of 64"),
        (
            {"audience": "__new__", "audience_new": "Martians"},
            "“Martians” does not say who the product is for",
        ),
    ):
        with photo.open("rb") as f:
            r = merch_client.post(
                "/manage/upload",
                {"sku": "PAGE-LONG", "title": "Tee", "slot": "top", **fields, "image": f},
            )
        body = r.content.decode()
        assert r.status_code == 200 and "Nothing was created" in body and message in body, message
    assert not Product.objects.filter(sku="PAGE-LONG").exists()


def test_valid_upload_redirects_to_the_new_product(merch_client, hm_root, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    photo = next((hm_root / "images").glob("*/*.jpg"))
    f = io.BytesIO(photo.read_bytes())
    f.name = photo.name
    r = merch_client.post(
        "/manage/upload",
        {
            "sku": "PAGE-2",
            "title": "Real photo",
            "slot": "bottom",
            "colour": "__new__",
            "colour_new": "Black",
            "price": "19.99",
            "image": f,
        },
    )
    product = Product.objects.get(sku="PAGE-2")
    assert r.status_code == 302 and r["Location"] == f"/products/{product.pk}?uploaded=1"
    assert str(product.price) == "19.99" and product.image and product.thumbnail
    page = merch_client.get(r["Location"]).content.decode()
    assert "Uploaded. A worker embeds it now" in page and "Real photo" in page


def _vocabulary_catalog() -> dict[str, int]:
    """Products whose colours and types are spelt two ways, as in the H&M sample. Returns how many
    products already had each value (any spelling) before: the session's committed H&M slice
    (``trained_catalog``) is in the database when an earlier test built it."""
    before = {
        "Black": Product.objects.filter(colour__iregex=r"^black$").count(),
        "Earring": Product.objects.filter(product_type__iregex=r"^earrings?$").count(),
        "Menswear": Product.objects.filter(audience__iregex=r"^menswear$").count(),
    }
    rows = [("Black", "Earring"), ("Black", "Earring"), ("black", "Earrings"), ("White", "Dog Wear")]
    Product.objects.bulk_create(
        Product(sku=f"VOC-{i}", title="t", slot="accessory", colour=c, product_type=t, audience="Ladieswear")
        for i, (c, t) in enumerate(rows)
    )
    return before


def test_upload_form_offers_the_catalogs_vocabulary_and_no_free_text(merch_client):
    n = _vocabulary_catalog()
    html = merch_client.get("/manage/upload").content.decode()
    for name, noun in [("colour", "colour"), ("product_type", "product type"), ("audience", "audience")]:
        assert f'<select name="{name}"' in html and f'<input type="text" name="{name}"' not in html, name
        assert f'<option value="__new__">Add a new {noun}…</option>' in html
        assert f'name="{name}_new"' in html  # the box of a new value, shown when it is chosen
    assert f'<option value="Black">Black ({n["Black"] + 3:,})</option>' in html  # spellings merged, counted
    assert (
        f'<option value="Earring">Earring ({n["Earring"] + 3:,})</option>' in html and ">Earrings" not in html
    )


def test_a_new_vocabulary_value_only_through_the_explicit_option(merch_client, hm_root, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    n = _vocabulary_catalog()
    photo = next((hm_root / "images").glob("*/*.jpg")).read_bytes()

    def upload(sku, **values):
        f = io.BytesIO(photo)
        f.name = "p.jpg"
        data = {"sku": sku, "title": "Hoops", "slot": "accessory", "image": f, **values}
        return merch_client.post("/manage/upload", data)

    r = upload("VOC-A", colour="Navy")  # not a catalog value, not added explicitly
    assert r.status_code == 200 and "Navy” is not a colour of the catalog" in r.content.decode()
    r = upload("VOC-A", audience="Martians")
    assert "Martians” is not an audience of the catalog" in r.content.decode()
    r = upload("VOC-B", colour="", colour_new="Navy")  # typed without choosing "Add a new colour"
    assert r.status_code == 200 and "choose “Add a new colour” first" in r.content.decode()
    r = upload("VOC-C", colour="__new__", colour_new="  ")
    assert r.status_code == 200 and "Type the new colour" in r.content.decode()
    assert not Product.objects.filter(sku__in=["VOC-A", "VOC-B", "VOC-C"]).exists()

    r = upload(
        "VOC-D",
        colour="__new__",
        colour_new="BLACK",  # an existing value in another spelling: the catalog's spelling
        product_type="__new__",
        product_type_new="earrings",
        audience="__new__",
        audience_new="Menswear",  # a new value, added explicitly
    )
    assert r.status_code == 302, r.content.decode()
    p = Product.objects.get(sku="VOC-D")
    assert (p.colour, p.product_type, p.audience) == ("Black", "Earring", "Menswear")
    upload("VOC-E", colour="black", product_type="Dog wear")  # a chosen value in another spelling
    assert Product.objects.filter(sku="VOC-E", colour="Black", product_type="Dog Wear").exists()

    html = merch_client.get(f"/manage/products/{Product.objects.get(sku='VOC-2').pk}/edit").content.decode()
    assert (
        f'<option value="Black" selected>Black ({n["Black"] + 5:,})</option>' in html
    )  # "black" shown as Black
    assert f'<option value="Menswear">Menswear ({n["Menswear"] + 1:,})</option>' in html


def test_start_training_from_the_models_page_one_at_a_time(merch_client):
    TrainingRun.objects.create(params={}, status=TrainingRun.Status.RUNNING)
    before = TrainingRun.objects.count()
    r = merch_client.post("/models/train", {"epochs": "3"})
    assert r.status_code == 302
    page = merch_client.get(r["Location"]).content.decode()
    assert "is still running; wait or cancel it" in page
    assert TrainingRun.objects.count() == before


# --- bulk import, edit/delete, curated outfits, models page actions ------------------------------------


def _real_articles(hm_root, n):
    from ml.data import read_articles

    arts, _ = read_articles(hm_root)
    return arts[:n]


def _import_files(arts, extra_rows=()):
    import csv
    import zipfile

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["sku", "title", "slot", "image", "colour"])
    for a in arts:
        w.writerow([f"PG-{a.article_id}", a.title, a.slot, f"{a.article_id}.jpg", a.colour])
    w.writerows(extra_rows)
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        for a in arts:
            zf.writestr(f"{a.article_id}.jpg", a.image_path.read_bytes())
    c, z = io.BytesIO(buf.getvalue().encode()), io.BytesIO(zbuf.getvalue())
    c.name, z.name = "products.csv", "photos.zip"
    return c, z


def test_import_pages_need_the_merchandiser_permission(client):
    assert client.get("/manage/import").status_code == 302
    r = client.get("/api/import-jobs/1/")
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_authenticated"


def test_import_page_documents_columns_and_offers_an_example(merch_client):
    html = merch_client.get("/manage/import").content.decode()
    for column in ("sku", "title", "slot", "image", "price", "variant_group"):
        assert f"<code>{column}</code>" in html
    r = merch_client.get("/manage/import/example.csv")
    assert r["Content-Type"].startswith("text/csv")
    assert r.content.decode().splitlines()[0] == (
        "sku,title,slot,image,colour,product_type,audience,price,description,variant_group"
    )


def test_bulk_import_through_the_page_reports_rejected_rows(merch_client, hm_root, settings, tmp_path):
    from catalog.imports import import_job_run
    from catalog.models import ImportJob

    settings.MEDIA_ROOT = tmp_path
    arts = _real_articles(hm_root, 2)
    csv_file, zip_file = _import_files(arts, extra_rows=[["PG-BAD", "No photo", "top", "missing.jpg", ""]])
    r = merch_client.post("/manage/import", {"csv": csv_file, "images": zip_file})
    job = ImportJob.objects.get(started_by__username="merch-page")
    assert r.status_code == 302 and r["Location"] == f"/manage/import/{job.pk}"
    assert merch_client.get(f"/api/import-jobs/{job.pk}/").json()["status"] == "queued"
    import_job_run(
        job_id=job.pk
    )  # what the Celery task does (on_commit never fires inside a test transaction)
    data = merch_client.get(f"/api/import-jobs/{job.pk}/").json()
    assert (data["percent"], data["created"], data["rejected"], data["finished"]) == (100, 2, 1, True)
    html = merch_client.get(f"/manage/import/{job.pk}").content.decode()
    assert (
        "<td>4</td><td>PG-BAD</td><td>image</td><td>&#x27;missing.jpg&#x27; is not in images zip</td>" in html
    )
    report = merch_client.get(f"/manage/import/{job.pk}/rejected.csv").content.decode().splitlines()
    assert report == ["row,sku,field,message", "4,PG-BAD,image,'missing.jpg' is not in images zip"]
    assert Product.objects.filter(sku__startswith="PG-0").count() == 2


def test_import_page_without_a_csv_is_an_inline_error(merch_client):
    html = merch_client.post("/manage/import", {}).content.decode()
    assert "Nothing was imported" in html and "csv: choose the products CSV" in html


def _own_product(hm_root, sku="EDIT-1"):
    from catalog.services import product_create

    a = _real_articles(hm_root, 1)[0]
    return product_create(
        sku=sku, title=a.title, slot=a.slot, image_bytes=a.image_path.read_bytes(), embed=False
    )


def test_edit_product_saves_changes_and_keeps_the_form_on_errors(merch_client, hm_root, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    p = _own_product(hm_root)
    form = {"title": "Renamed", "slot": p.slot, "price": "abc", "colour": "__new__", "colour_new": "Navy"}
    html = merch_client.post(f"/manage/products/{p.pk}/edit", form).content.decode()
    assert "Nothing was saved" in html and "price: &#x27;abc&#x27; is not a number" in html
    assert 'value="Renamed"' in html
    p.refresh_from_db()
    assert p.title != "Renamed"
    r = merch_client.post(f"/manage/products/{p.pk}/edit", {**form, "price": "12.50"})
    assert r.status_code == 302 and r["Location"] == f"/products/{p.pk}"
    p.refresh_from_db()
    assert (p.title, p.colour, str(p.price)) == ("Renamed", "Navy", "12.50")
    assert "Saved: title, colour, price changed." in merch_client.get(r["Location"]).content.decode()


def test_delete_product_asks_first_then_deletes(merch_client, hm_root, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    p = _own_product(hm_root, "DEL-1")
    assert "Delete this product" in merch_client.get(f"/manage/products/{p.pk}/delete").content.decode()
    assert Product.objects.filter(pk=p.pk).exists()  # GET deletes nothing
    r = merch_client.post(f"/manage/products/{p.pk}/delete")
    assert r.status_code == 302 and not Product.objects.filter(pk=p.pk).exists()


def test_save_list_and_delete_a_curated_outfit(
    merch_client, hm_root, settings, tmp_path, django_capture_on_commit_callbacks
):
    from catalog.models import Outfit
    from recommender import answer_cache

    settings.MEDIA_ROOT = tmp_path
    a, b = _own_product(hm_root, "OUT-1"), _own_product(hm_root, "OUT-2")
    assert "Save as outfit" in merch_client.get("/outfit", {"ids": f"{a.pk},{b.pk}"}).content.decode()
    before = answer_cache.generation()
    with django_capture_on_commit_callbacks(execute=True):
        r = merch_client.post("/manage/outfits/new", {"ids": f"{a.pk},{b.pk}", "name": "Test look"})
    # complete-the-look lifts items outfits paired: a new outfit retires the cached answers
    assert answer_cache.generation() > before
    outfit = Outfit.objects.get(name="Test look")
    assert outfit.source == "curated" and [i.product_id for i in outfit.items.all()] == [a.pk, b.pk]
    html = merch_client.get(r["Location"]).content.decode()
    assert "Saved “Test look” (2 items)" in html and f"?ids={a.pk},{b.pk}" in html
    r = merch_client.post("/manage/outfits/new", {"ids": f"{b.pk},{a.pk}", "name": "Again"})  # pressed twice
    assert f"The outfit was not saved: these products are a curated outfit already: {outfit}." in (
        merch_client.get(r["Location"]).content.decode()
    )
    assert Outfit.objects.filter(items__product=a).count() == 1
    r = merch_client.post("/manage/outfits/new", {"ids": f"{a.pk}"})
    assert "The outfit was not saved: an outfit needs at least two distinct products." in (
        merch_client.get(r["Location"]).content.decode()
    )
    before = answer_cache.generation()
    with django_capture_on_commit_callbacks(execute=True):
        merch_client.post(f"/manage/outfits/{outfit.pk}/delete")
    assert not Outfit.objects.filter(pk=outfit.pk).exists()
    assert answer_cache.generation() > before


def test_training_form_validates_every_parameter_like_the_api(merch_client):
    TrainingRun.objects.filter(status__in=["queued", "running"]).update(status="cancelled")
    r = merch_client.post("/models/train", {"epochs": "2", "lr": "5", "miner": "hardest"})
    html = merch_client.get(r["Location"]).content.decode()
    assert "The run was not started: lr: Ensure this value is less than or equal to 1.0.; " in html
    assert "miner: &quot;hardest&quot; is not a valid choice." in html
    merch_client.post(
        "/models/train",
        {
            "epochs": "2",
            "batch_size": "32",
            "lr": "0.01",
            "temperature": "0.1",
            "margin": "0.3",
            "miner": "batch-hard",
        },
    )
    run = TrainingRun.objects.latest("id")
    assert run.params == {
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.01,
        "temperature": 0.1,
        "margin": 0.3,
        "miner": "batch-hard",
    }


def test_the_models_page_starts_the_phone_photo_tuning_run(merch_client):
    from recommender.forms import PHOTO_TUNING
    from recommender.models import ModelVersion

    TrainingRun.objects.filter(status__in=["queued", "running"]).update(status="cancelled")
    page_defaults = {"epochs": "30", "batch_size": "256", "lr": "0.001", "w_type": "0.5"}  # pre-filled
    before = TrainingRun.objects.count()
    ModelVersion.objects.filter(is_active=True).update(is_active=False)
    page = merch_client.post("/models/train", {**page_defaults, "photo_tuning": "on"}, follow=True)
    assert "no version is active: a run starts from the heads of an active version" in page.content.decode()
    tuned = ModelVersion.objects.create(
        name="tuned", config={"train": {"unfreeze_last_blocks": 4}}, is_active=True, status="ready"
    )
    page = merch_client.get("/models").content.decode()
    assert f"unavailable, the active version v{tuned.pk} has tuned towers" in page  # said before a click
    assert '<input type="checkbox" name="photo_tuning" disabled id="id_photo_tuning">' in page
    page = merch_client.post("/models/train", {**page_defaults, "photo_tuning": "on"}, follow=True)
    assert f"the active version v{tuned.pk} has tuned towers" in page.content.decode()
    assert TrainingRun.objects.count() == before  # refused on the page, not failed later in the worker
    tuned.delete()
    ModelVersion.objects.create(name="base", config={"train": {}}, is_active=True, status="ready")
    assert "Tune the image tower for phone photos" in merch_client.get("/models").content.decode()
    merch_client.post("/models/train", {**page_defaults, "photo_tuning": "on"})
    run = TrainingRun.objects.latest("id")
    assert run.params == PHOTO_TUNING  # the preset replaces the fields left at their defaults
    assert run.params["epochs"] == 8 and run.params["lr"] == 1e-4 and run.params["init_from_active"] is True
    run.status = "cancelled"
    run.save()
    merch_client.post("/models/train", {**page_defaults, "epochs": "3", "photo_tuning": "on"})
    assert TrainingRun.objects.latest("id").params == {**PHOTO_TUNING, "epochs": 3}  # a changed field wins


def _version(name, fitb, active=False, **kw):
    from django.utils import timezone

    from recommender.models import ModelVersion

    if active:
        kw.setdefault("activated_at", timezone.now())
    ev = {
        "zero-shot": {"fitb": 0.25, "recall@10": 0.01, "n_fitb": 50.0},
        "fine-tuned": {"fitb": fitb, "recall@10": 0.5, "n_fitb": 50.0},
    }
    return ModelVersion.objects.create(
        name=name, status="ready", is_active=active, metrics={"evaluation": ev}, **kw
    )


def test_models_page_compares_with_the_active_version_and_refuses_incomplete_activation(merch_client):
    from recommender.models import ModelVersion

    ModelVersion.objects.all().delete()  # the session's trained version too (rolled back with the test)
    active = _version("old", 0.40, active=True)
    new = _version("new", 0.55)
    html = merch_client.get("/models").content.decode()
    assert f"v{new.pk} against active v{active.pk}" in html
    assert '<th scope="row">fitb</th><td>0.550</td><td>0.400</td><td class="delta-up">+0.150</td>' in html
    assert '<th scope="row">fitb</th><td>0.400</td><td>0.250</td><td class="delta-up">+0.150</td>' in html
    # a metric the active version was measured on only in the new version's run is compared too
    new.metrics["evaluation"]["fine-tuned"]["photo_p@10_type"] = 0.763
    new.metrics["evaluation"][f"active v{active.pk}"] = {"fitb": 0.41, "photo_p@10_type": 0.457}
    new.save()
    html = merch_client.get("/models").content.decode()
    assert (
        '<th scope="row">photo_p@10_type</th><td>0.763</td><td>0.457</td><td class="delta-up">+0.306</td>'
        in html
    )
    assert '<th scope="row">fitb</th><td>0.550</td><td>0.400</td>' in html  # its own row still wins
    assert f'aria-label="Activate v{new.pk}"' in html
    ModelVersion.objects.filter(pk=new.pk).update(status="embedding")  # no button the server would refuse
    assert f'aria-label="Activate v{new.pk}"' not in merch_client.get("/models").content.decode()
    ModelVersion.objects.filter(pk=new.pk).update(status="ready")
    png = merch_client.get(f"/models/{new.pk}/compare.png")
    assert png["Content-Type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    r = merch_client.post(f"/models/{new.pk}/activate")
    assert (
        f"Not activated: model version {new.pk} has no vectors yet."
        in merch_client.get(r["Location"]).content.decode()
    )
    assert ModelVersion.objects.get(is_active=True) == active
    r = merch_client.post("/models/rollback")
    assert (
        "No rollback: no earlier model version to roll back to."
        in merch_client.get(r["Location"]).content.decode()
    )


def test_training_run_live_json_has_the_history(client):
    run = TrainingRun.objects.create(params={}, status="running", progress=55.0, history={"loss": [0.9, 0.7]})
    data = client.get(f"/api/training-runs/{run.pk}/live/").json()
    assert data["history"] == {"loss": [0.9, 0.7]} and data["progress"] == 55.0 and data["finished"] is False


def test_product_page_shows_indexing_status_to_merchandisers_only(
    merch_client, client, hm_root, settings, tmp_path
):
    from recommender.models import ModelVersion

    settings.MEDIA_ROOT = tmp_path
    ModelVersion.objects.update(is_active=False)
    version = _version("serving", 0.5, active=True)
    p = _own_product(hm_root, "IDX-1")
    html = merch_client.get(f"/products/{p.pk}").content.decode()
    assert "indexing…" in html and f"computing its vectors for model v{version.pk}" in html
    assert merch_client.get(f"/api/products/{p.pk}/index-status/").json() == {
        "product_id": p.pk,
        "version_id": version.pk,
        "embedded": False,
    }
    from django.test import Client

    assert "indexing…" not in Client().get(f"/products/{p.pk}").content.decode()  # shoppers never see it


def test_search_page_names_an_unknown_slot_instead_of_finding_nothing(client):
    body = client.get("/search", {"q": "dress", "slot": "hat"}).content.decode()
    assert "There is no slot “hat”; choose one of: top, bottom, one-piece," in body


def test_search_page_two_continues_the_ranking_of_page_one(trained_catalog, client):
    import re

    from recommender.search import product_search

    # words that name no type, colour or audience: the whole slice is ranked, 48 results and more
    ranking = [h.product.pk for h in product_search(query="soft cotton", k=48).hits]
    assert len(ranking) == 48

    def shown(page: int) -> tuple[list[int], str]:
        body = client.get("/search", {"q": "soft cotton", "page": page}).content.decode()
        return [int(i) for i in re.findall(r'class="card-link" href="/products/(\d+)"', body)], body

    first, body = shown(1)
    assert first == ranking[:24] and 'href="?q=soft+cotton&amp;page=2" rel="next"' in body
    second, body = shown(2)
    assert second == ranking[24:48] and 'rel="prev"' in body


def test_models_page_explains_metrics_names_early_stopping_and_asks_before_training(merch_client):
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    TrainingRun.objects.create(
        params={"epochs": 30, "patience": 5},
        status=TrainingRun.Status.SUCCEEDED,
        history={"loss": [1.0 - i / 100 for i in range(15)]},
        started_at=now - timedelta(minutes=15, seconds=10),
        finished_at=now,
    )
    html = merch_client.get("/models").content.decode()
    assert "Stopped early at epoch 15 of 30: no better validation score for 5 epochs." in html
    assert "Expected duration: about 15 minutes" in html
    assert "return confirm(&#x27;Start a training run? Expected duration: about 15 minutes" in html or (
        "return confirm('Start a training run? Expected duration: about 15 minutes" in html
    )
    assert "<dt>fitb</dt><dd>Fill in the blank" in html and "Chance: 0.25." in html
    assert "<dt>auc</dt>" in html and "Chance: 0.50." in html
