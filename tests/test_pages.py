"""The server-rendered shopper pages, against the real PostgreSQL test database and real H&M photos.

Most tests build their own few products (and hide any committed by the session's ``trained_catalog``
inside their transaction), so they show the pages without an active model. The ``slow`` test renders
the recommendations of a real trained model.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile

from catalog.images import clean_image
from catalog.models import Product
from ml.slots import slot_for
from recommender.models import ModelVersion, TrainingRun

NO_MODEL = "No model is active yet: run make demo"


def _hm_rows(root: Path, slots: tuple[str, ...]) -> list[dict[str, str]]:
    """The first article of each slot in ``articles.csv`` that has a photo, in ``slots`` order."""
    found: dict[str, dict[str, str]] = {}
    with (root / "articles.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            slot = slot_for(row["product_group_name"], row["product_type_name"])
            image = root / "images" / row["article_id"][:3] / f"{row['article_id']}.jpg"
            if slot in slots and slot not in found and image.exists():
                found[slot] = {**row, "slot": slot, "image": str(image)}
            if len(found) == len(slots):
                break
    return [found[s] for s in slots]


@pytest.fixture
def products(hm_root, settings, tmp_path) -> dict[str, Product]:
    """Three real H&M articles (a top, a bottom, shoes) with their photos, alone in the catalog."""
    settings.MEDIA_ROOT = tmp_path
    Product.objects.all().delete()  # rolled back with the test's transaction
    ModelVersion.objects.update(is_active=False)
    out = {}
    for row in _hm_rows(hm_root, ("top", "bottom", "shoes")):
        img = clean_image(Path(row["image"]).read_bytes(), name=row["article_id"])
        p = Product(
            sku=row["article_id"],
            source=Product.Source.HM,
            title=row["prod_name"],
            description=row["detail_desc"],
            slot=row["slot"],
            product_type=row["product_type_name"],
            product_group=row["product_group_name"],
            colour=row["colour_group_name"],
            audience=row["index_group_name"],
            variant_group=row["product_code"],
            image_sha256=img.sha256,
        )
        p.image.save(f"{p.sku}.jpg", ContentFile(img.jpeg), save=False)
        p.thumbnail.save(f"{p.sku}.jpg", ContentFile(img.thumbnail), save=False)
        p.save()
        out[row["slot"]] = p
    return out


def _text(response) -> str:
    return response.content.decode()


@pytest.mark.django_db
def test_catalog_lists_products_and_filters_by_slot(client, products):
    top, bottom, shoes = products["top"], products["bottom"], products["shoes"]
    html = _text(client.get("/"))
    for p in (top, bottom, shoes):
        assert p.title in html
        assert f'src="{p.thumbnail.url}" alt="{p.title}"' in html
        assert f'href="/products/{p.pk}"' in html
    assert "3 products" in html
    assert '<option value="bottom">bottom (1)</option>' in html
    assert f'<option value="{top.colour}">' in html
    assert 'action="/search"' in html  # the search box on every page

    html = _text(client.get("/", {"slot": "bottom"}))
    assert f'href="/products/{bottom.pk}"' in html
    assert f'href="/products/{top.pk}"' not in html and f'href="/products/{shoes.pk}"' not in html
    assert '<option value="bottom" selected>' in html
    assert "1 product match your filters" in html


@pytest.mark.django_db
def test_catalog_shows_garments_first_prices_and_facets_with_counts_never_unknown(client, products):
    top, bottom, shoes = products["top"], products["bottom"], products["shoes"]
    Product.objects.bulk_create(
        [
            Product(
                sku="U-1", title="Mystery thing", slot="accessory", colour="Unknown", product_type="Unknown"
            ),
            Product(
                sku="U-2",
                title="Lace bra",
                slot="underwear-nightwear",
                colour=top.colour.lower(),
                price="9.5",
            ),
        ]
    )
    html = _text(client.get("/"))
    assert 'value="Unknown"' not in html  # never a facet value
    # the lower-case spelling is merged into the catalog's value: one option counting both
    assert f'<option value="{top.colour}">{top.colour} (2)</option>' in html
    assert '<p class="card-price">9.50</p>' in html
    order = [html.index(f'href="/products/{p.pk}"') for p in (top, bottom, shoes)]
    bra = Product.objects.get(sku="U-2")
    assert max(order) < html.index(f'href="/products/{bra.pk}"')  # outfit garments before underwear
    # a facet's counts follow the other filters: with the underwear slot chosen, one product of that colour
    html = _text(client.get("/", {"slot": "underwear-nightwear"}))
    assert f'<option value="{top.colour}">{top.colour} (1)</option>' in html
    # new arrivals: the newest first
    html = _text(client.get("/", {"sort": "new"}))
    assert html.index(f'href="/products/{bra.pk}"') < html.index(f'href="/products/{top.pk}"')
    assert "New arrivals" in html


@pytest.mark.django_db
def test_catalog_paginates_24_per_page_and_keeps_filters(client, products):
    Product.objects.bulk_create(
        Product(sku=f"TEST{i:03d}", title=f"Plain tee {i:03d}", slot="top", colour="White") for i in range(30)
    )
    page1 = _text(client.get("/", {"slot": "top"}))
    assert "31 products" in page1 and "Page 1 of 2" in page1
    assert "Plain tee 022" in page1 and "Plain tee 023" not in page1
    assert "?slot=top&amp;page=2" in page1
    page2 = _text(client.get("/", {"slot": "top", "page": 2}))
    assert "Plain tee 023" in page2 and "Plain tee 029" in page2 and "Plain tee 022" not in page2
    assert "No photo" in page2  # products without an image still render


@pytest.mark.django_db
def test_product_page_shows_details_and_no_model_notice(client, products):
    top = products["top"]
    Product.objects.filter(pk=top.pk).update(price="19.99")
    response = client.get(f"/products/{top.pk}")
    assert response.status_code == 200
    html = _text(response)
    assert f"<h1>{top.title}</h1>" in html
    assert f"<dd>{top.sku}</dd>" in html and f"<dd>{top.colour}</dd>" in html
    assert f"<dd>{top.product_type}</dd>" in html
    # who it is for: the normalised group ("Sport" names no audience: unisex) and the catalog's own value
    assert top.audience == "Sport"
    assert (
        '<dd><span class="audience audience-unisex">unisex</span> <span class="muted">(Sport)</span></dd>'
        in html
    )
    assert "19.99" in html
    assert top.description[:40] in html
    assert f'src="{top.image.url}" alt="{top.title}"' in html
    assert NO_MODEL in html
    assert f'href="/outfit?ids={top.pk}"' in html  # Add to outfit


@pytest.mark.django_db
def test_product_page_appends_to_the_outfit_being_built(client, products):
    top, bottom = products["top"], products["bottom"]
    html = _text(client.get(f"/products/{bottom.pk}", {"outfit": f"{top.pk},{bottom.pk}"}))
    assert f'href="/outfit?ids={top.pk},{bottom.pk}"' in html


@pytest.mark.django_db
def test_missing_product_is_a_404_page(client, products):
    response = client.get("/products/987654321")
    assert response.status_code == 404
    assert "There is no product with id 987654321." in _text(response)
    assert client.get("/products/99999999999999999999999").status_code == 404  # beyond bigint
    # a path no view answers gets the site's own page too (with the search bar), not Django's bare one
    for path in ("/nonexistent", "/products/abc"):
        response = client.get(path)
        assert response.status_code == 404 and "There is no page at <code>" + path in _text(response)
        assert 'id="site-q"' in response.content.decode()
    # a page typed with a trailing slash goes to the page, its query kept; other paths stay 404
    response = client.get(f"/products/{products['top'].pk}/?audience=any")
    assert (
        response.status_code == 301 and response["Location"] == f"/products/{products['top'].pk}?audience=any"
    )
    assert client.get("/search/").headers["Location"] == "/search"
    assert client.get("/nonexistent/").status_code == 404
    assert client.post(f"/products/{products['top'].pk}/").status_code == 404  # a POST is not redirected


@pytest.mark.django_db
def test_search_with_empty_query_shows_a_message(client, products):
    response = client.get("/search", {"q": "   "})
    assert response.status_code == 200
    html = _text(response)
    assert "Type what you are looking for" in html
    assert 'action="/search/photo"' in html and 'enctype="multipart/form-data"' in html


@pytest.mark.django_db
def test_search_without_a_model_shows_the_notice(client, products):
    html = _text(client.get("/search", {"q": "black jeans", "slot": "bottom"}))
    assert "Results for “black jeans”" in html
    assert NO_MODEL in html


@pytest.mark.django_db
def test_photo_search_with_garbage_bytes_shows_an_inline_error(client, products):
    upload = SimpleUploadedFile(
        "garbage.jpg", b"definitely not a JPEG \x00\x01\x02", content_type="image/jpeg"
    )
    response = client.post("/search/photo", {"image": upload})
    assert response.status_code == 200
    html = _text(response)
    assert 'role="alert"' in html
    assert (
        "That file could not be used as a photo (garbage.jpg: not a photo we can open (save it as JPEG, PNG or WebP))."
        in html
    )


@pytest.mark.django_db
def test_photo_search_with_a_real_photo_and_no_model(client, products):
    raw = products["shoes"].image.read()
    response = client.post("/search/photo", {"image": SimpleUploadedFile("shoe.jpg", raw, "image/jpeg")})
    html = _text(response)
    assert response.status_code == 200
    assert 'alt="Your uploaded photo"' in html
    assert NO_MODEL in html
    assert client.get("/search/photo").status_code == 302


@pytest.mark.django_db
def test_outfit_names_unknown_ids_and_ignores_them(client, products):
    top = products["top"]
    response = client.get("/outfit", {"ids": f"{top.pk},987654321,abc,99999999999999999999999"})
    assert response.status_code == 200
    html = _text(response)
    assert "Unknown product id(s) 987654321: ignored." in html
    assert "Ignored &#x27;abc&#x27;, &#x27;99999999999999999999999&#x27;: not product ids." in html
    assert top.title in html
    assert "Add at least two items to score an outfit" in html
    assert 'href="/outfit?ids="' in html  # removing the only item empties the outfit
    assert f'data-outfit-ids="{top.pk}"' in html


@pytest.mark.django_db
def test_outfit_with_two_items_and_no_model(client, products):
    top, bottom = products["top"], products["bottom"]
    html = _text(client.get("/outfit", {"ids": f"{top.pk},{bottom.pk}"}))
    assert top.title in html and bottom.title in html
    assert (
        f'href="/outfit?ids={bottom.pk}"' in html and f'href="/outfit?ids={top.pk}"' in html
    )  # remove links
    assert NO_MODEL in html
    assert "Add at least two items" not in html


@pytest.mark.django_db
def test_models_page_lists_versions_metrics_and_runs(client):
    ModelVersion.objects.update(is_active=False)
    version = ModelVersion.objects.create(
        name="hm-effnetlite0-minilm fine-tuned (run 7)",
        status=ModelVersion.Status.READY,
        is_active=True,
        metrics={
            "evaluation": {
                "zero-shot": {
                    "recall@10": 0.079,
                    "recall@5": 0.053,
                    "fitb": 0.255,
                    "auc": 0.5421,
                    "n_fitb": 321.0,
                },
                "fine-tuned": {
                    "recall@10": 1.0,
                    "recall@5": 0.99,
                    "fitb": 0.4453,
                    "auc": 0.662,
                    "n_fitb": 321.0,
                },
                "co-occurrence": {
                    "recall@10": None,
                    "recall@5": None,
                    "fitb": 0.253,
                    "auc": 0.637,
                    "n_fitb": 321.0,
                },
            }
        },
    )
    TrainingRun.objects.create(
        model_version=version,
        status=TrainingRun.Status.RUNNING,
        phase="training",
        progress=40.0,
        loss=0.61234,
        log_tail="epoch 1 step 10 loss 0.6123\nepoch 2 step 20 loss 0.5012",
    )
    html = _text(client.get("/models"))
    assert version.name in html and "✓ active" in html
    header = re.search(r"<thead><tr><th scope=\"col\">model</th>(.*?)</tr></thead>", html).group(1)
    # the quality gate's protocol first, then the rest naturally, counts last
    assert re.findall(r"<th scope=\"col\">(.*?)</th>", header) == [
        "fitb",
        "auc",
        "recall@5",
        "recall@10",
        "n_fitb",
    ]
    assert (
        '<th scope="row">fine-tuned</th><td>0.445</td><td>0.662</td><td>0.990</td><td>1.000</td><td>321</td>'
        in html
    )
    assert '<th scope="row">co-occurrence</th><td>0.253</td><td>0.637</td><td>—</td><td>—</td>' in html
    assert (  # in words, against the best other row of each metric
        '<p class="verdict">Fine-tuned beats the best baseline on the popularity-matched protocol: '
        "FITB 0.445 against 0.255 (zero-shot), AUC 0.662 against 0.637 (co-occurrence).</p>" in html
    )
    assert 'aria-valuenow="40"' in html and "40% · loss 0.6123" in html
    assert re.search(r"<pre class=\"log\" data-field=\"log\">epoch 1 step 10 loss 0.6123\nepoch 2", html)


@pytest.mark.slow
@pytest.mark.django_db
def test_pages_render_recommendations_of_a_trained_model(client, trained_catalog):
    top = Product.objects.filter(slot="top").first()
    bottom = Product.objects.filter(slot="bottom").exclude(variant_group=top.variant_group).first()

    html = _text(client.get(f"/products/{top.pk}"))
    assert NO_MODEL not in html
    assert "Complete the look" in html and "Similar items" in html
    assert "score 0." not in html  # similar items without raw cosine scores for shoppers
    assert re.search(r"\d+% compatible", html)
    assert html.count('class="card card-small"') >= 1  # alternates under the picks

    html = _text(client.get("/outfit", {"ids": f"{top.pk},{bottom.pk}"}))
    assert 'class="heatmap"' in html and 'class="weakest"' in html
    assert re.search(r'<p class="big-score"[^>]*>\d+%</p>', html)
    assert "Weakest pair:" in html

    html = _text(client.get("/search", {"q": "black trousers"}))
    assert 'class="card-link"' in html and "score 0." not in html  # shoppers see no raw scores

    html = _text(client.get("/models"))
    assert trained_catalog.name in html


@pytest.mark.slow
@pytest.mark.django_db
def test_product_page_shows_who_each_pick_is_for_and_toggles_the_audience(client, trained_catalog):
    from catalog.selectors import product_audience_group

    shirt = next(
        p
        for p in Product.objects.filter(slot="top").order_by("pk")
        if product_audience_group(product=p) == "men"
    )

    def looks_section(html: str) -> str:
        return html[html.index('id="ctl-h"') : html.index('id="sim-h"')]

    html = _text(client.get(f"/products/{shirt.pk}"))
    assert (
        '<dd><span class="audience audience-men">men</span> <span class="muted">(Menswear)</span></dd>'
        in html
    )
    section = looks_section(html)
    assert "Showing only men&#x27;s and unisex items, to go with this men&#x27;s item." in section
    picks = re.findall(r'class="audience audience-(\w+)"', section)
    assert picks == ["men"] * 3  # the slice's two men's bottoms (colour variants once) and its men's blazer
    toggle = re.search(r'href="([^"]+)" data-audience-toggle>Show every audience<', section).group(1)
    assert toggle == f"/products/{shirt.pk}?audience=any"
    similar = html[html.index('id="sim-h"') :]
    assert set(re.findall(r'class="audience audience-(\w+)"', similar)) == {"men"}  # similar items too

    html = _text(client.get(toggle))
    section = looks_section(html)
    assert "Showing items for every audience." in section
    assert {"women"} <= set(re.findall(r'class="audience audience-(\w+)"', html[html.index('id="sim-h"') :]))
    assert {"women", "kids"} <= set(re.findall(r'class="audience audience-(\w+)"', section))
    assert f'href="/products/{shirt.pk}?" data-audience-toggle>Only men&#x27;s and unisex items<' in section
    assert re.search(rf'href="/outfit\?ids={shirt.pk},[\d,]+&amp;audience=any"', html)  # the look keeps it
