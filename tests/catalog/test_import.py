"""The H&M importer on slices of the real sample: idempotent, reports broken rows and images, keeps the rest."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from catalog.hm_import import catalog_import_hm
from catalog.models import Outfit, OutfitItem, Product
from ml.data import read_articles


def _mini_dataset(src: Path, dst: Path, n: int = 12) -> list[dict[str, str]]:
    """Copy the first ``n`` articles of one real basket set (rows, photos, baskets) into ``dst``."""
    with (src / "articles.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        rows = {r["article_id"]: r for r in reader}
    baskets = json.loads((src / "baskets.json").read_text())
    chosen: list[str] = []
    kept_baskets = []
    for b in baskets:
        if len(chosen) + len(b) > n:
            break
        chosen += [a for a in b if a not in chosen]
        kept_baskets.append(b)
    dst.mkdir(parents=True, exist_ok=True)
    with (dst / "articles.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        for aid in chosen:
            w.writerow(rows[aid])
            img = dst / "images" / aid[:3] / f"{aid}.jpg"
            img.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / "images" / aid[:3] / f"{aid}.jpg", img)
    (dst / "baskets.json").write_text(json.dumps(kept_baskets))
    return [rows[a] for a in chosen]


@pytest.fixture
def empty_catalog(db):
    """No products or outfits (the session's trained slice is removed inside this test's transaction)."""
    Outfit.objects.all().delete()
    Product.objects.all().delete()


@pytest.mark.django_db
def test_import_twice_changes_nothing(empty_catalog, hm_root, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    rows = _mini_dataset(hm_root, tmp_path / "hm")
    first = catalog_import_hm(root=tmp_path / "hm", progress=False)
    counts = (Product.objects.count(), Outfit.objects.count(), OutfitItem.objects.count())
    assert first.created == len(rows) and first.skipped == []
    assert first.outfits_created >= 1
    second = catalog_import_hm(root=tmp_path / "hm", progress=False)
    assert (second.created, second.updated, second.unchanged) == (0, 0, len(rows))
    assert second.outfits_created == 0
    assert (Product.objects.count(), Outfit.objects.count(), OutfitItem.objects.count()) == counts
    p = Product.objects.get(sku=rows[0]["article_id"])
    assert p.sku.startswith("0") and len(p.sku) == 10  # the leading zero survives
    assert p.title == rows[0]["prod_name"]
    assert p.image and p.thumbnail and len(p.image_sha256) == 64


@pytest.mark.django_db
def test_corrupt_and_missing_images_are_skipped_and_reported(empty_catalog, hm_root, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    rows = _mini_dataset(hm_root, tmp_path / "hm")
    broken, missing = rows[1]["article_id"], rows[2]["article_id"]
    (tmp_path / "hm" / "images" / broken[:3] / f"{broken}.jpg").write_bytes(
        b"\xff\xd8\xff\xe0 not really a jpeg"
    )
    (tmp_path / "hm" / "images" / missing[:3] / f"{missing}.jpg").unlink()
    summary = catalog_import_hm(root=tmp_path / "hm", progress=False)
    reasons = dict(summary.skipped)
    assert summary.created == len(rows) - 2
    assert any(broken in where and "broken image" in why for where, why in reasons.items())
    assert any(missing in where and "image missing" in why for where, why in reasons.items())
    assert not Product.objects.filter(sku__in=[broken, missing]).exists()
    assert Product.objects.filter(sku=rows[0]["article_id"]).exists()


def test_malformed_csv_rows_are_reported_and_valid_rows_kept(hm_root, tmp_path):
    rows = _mini_dataset(hm_root, tmp_path / "hm", n=6)
    path = tmp_path / "hm" / "articles.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(2, "not-an-id,123,Broken row")  # too few fields
    lines.insert(3, "abc" + lines[1][10:])  # non-numeric id, otherwise a full row
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    articles, errors = read_articles(tmp_path / "hm")
    assert [a.article_id for a in articles] == [r["article_id"] for r in rows]
    assert [(e.line, e.reason.split(" ")[0]) for e in errors] == [(3, "wrong"), (4, "invalid")]


def test_missing_column_is_a_clear_error(tmp_path):
    (tmp_path / "articles.csv").write_text("article_id,prod_name\n0111565001,Tights\n")
    with pytest.raises(ValueError, match="missing column"):
        read_articles(tmp_path)


def test_overlong_fields_bom_and_bad_encoding(hm_root, tmp_path):
    rows = _mini_dataset(hm_root, tmp_path / "hm", n=6)
    path = tmp_path / "hm" / "articles.csv"
    text = path.read_text(encoding="utf-8")
    first = rows[0]
    long_title = "x" * 300
    text = text.replace(f",{first['prod_name']},", f",{long_title},", 1)
    path.write_text("\ufeff" + text, encoding="utf-8")  # Excel's byte-order mark
    articles, errors = read_articles(tmp_path / "hm")
    assert len(articles) == len(rows) - 1
    assert len(errors) == 1 and "prod_name (300 > 255 characters)" in errors[0].reason
    path.write_bytes(b"\xfa\xfb garbage")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_articles(tmp_path / "hm")
