"""Who a product is for (ml.audience) on every distinct value of both real samples."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ml.audience import AUDIENCE_GROUPS, audience_fits, audience_group, audience_ids
from ml.mango import read_products

ROOT = Path(__file__).resolve().parents[2]
HM = Path(os.environ.get("HM_DATA_DIR", ROOT.parent / "shared" / "data" / "hm"))
MANGO = Path(os.environ.get("MANGO_DATA_DIR", HM.parent / "mango"))


@pytest.fixture(scope="module")
def hm_rows() -> list[dict[str, str]]:
    with (HM / "articles.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _group(row: dict[str, str]) -> str:
    return audience_group(row["index_group_name"], row["section_name"], row["department_name"])


def test_hm_audit_of_every_index_group_and_section(hm_rows):
    table = Counter((r["index_group_name"], r["section_name"], _group(r)) for r in hm_rows)
    by_index = Counter((g, a) for (g, _, a), n in table.items() for _ in range(n))
    # the real sample's counts: Divided is women's, Sport splits by section, Baby/Children by department
    assert by_index == {
        ("Ladieswear", "women"): 6795,
        ("Divided", "women"): 2388,
        ("Menswear", "men"): 1234,
        ("Baby/Children", "kids"): 634,
        ("Baby/Children", "baby"): 339,
        ("Sport", "women"): 327,
        ("Sport", "men"): 69,
        ("Sport", "kids"): 14,
    }
    assert table[("Sport", "Men H&M Sport", "men")] == 69
    assert table[("Sport", "Kids Sports", "kids")] == 14
    assert table[("Baby/Children", "Kids & Baby Shoes", "baby")] == 12  # department "Baby Shoes"
    assert (
        table[("Baby/Children", "Kids & Baby Shoes", "kids")] == 18
    )  # "Kids Girl Shoes", "Young Boy Shoes"...


def test_hm_groups_agree_with_the_independent_index_name(hm_rows):
    # index_name is a column the function never reads: H&M's size ranges say baby or child
    for r in hm_rows:
        if r["index_name"] == "Baby Sizes 50-98":
            assert _group(r) == "baby", r["article_id"]
        elif r["index_name"].startswith("Children"):
            assert _group(r) == "kids", r["article_id"]
        elif r["index_name"] == "Menswear":
            assert _group(r) == "men", r["article_id"]
        else:  # Ladieswear, Divided, Lingeries/Tights, Ladies Accessories; Sport by its section
            assert _group(r) in ("women", "men", "kids"), r["article_id"]


@pytest.mark.parametrize(
    ("column", "value", "section", "group"),
    [
        ("prod_name", "OLIVER OXFORD SHIRT", "Contemporary Smart", "men"),  # a menswear shirt
        ("prod_name", "BOBO onesie", "Young Boy", "kids"),  # a kids' item
        ("department_name", "Newborn", "Baby Essentials & Complements", "baby"),  # a baby item
        ("product_type_name", "Dress", "Divided Collection", "women"),  # Divided women
        ("department_name", "Men Sport Tops", "Men H&M Sport", "men"),  # Sport by its section
        ("department_name", "Baby Shoes", "Kids & Baby Shoes", "baby"),  # by its department
    ],
)
def test_named_hm_examples(hm_rows, column, value, section, group):
    rows = [r for r in hm_rows if r[column] == value and r["section_name"] == section]
    assert rows, (value, section)
    assert {_group(r) for r in rows} == {group}


def test_mango_audit():
    products, _ = read_products(MANGO)
    table = Counter((p.sex, p.age, p.line, p.audience_group) for p in products)
    assert table == {
        ("Female", "Adult", "SHE", "women"): 9144,
        ("Female", "Adult", "VIOLETA", "women"): 7,
        ("Female", "Kids", "KIDS", "kids"): 19,
        ("Unisex", "Adult", "HOME", "unisex"): 50,
        ("Male", "Adult", "HE", "men"): 2,
    }


def test_free_text_and_group_names():
    values = ("Women", "Menswear", "kids", "", "Unisex", "Lingeries/Tights", *AUDIENCE_GROUPS)
    expected = ["women", "men", "kids", "unisex", "unisex", "women", *AUDIENCE_GROUPS]
    assert [audience_group(v) for v in values] == expected
    assert audience_ids(["women", ("Sport", "Men H&M Sport", ""), "Baby Sizes 50-98"]).tolist() == [0, 1, 3]
    assert audience_ids([]).dtype == np.int64


def test_which_audiences_fit():
    fits = {(a, b) for a in AUDIENCE_GROUPS for b in AUDIENCE_GROUPS if audience_fits(a, b)}
    assert ("men", "women") not in fits and ("women", "kids") not in fits and ("kids", "baby") not in fits
    assert ("women", "women") in fits and ("men", "unisex") in fits and ("unisex", "baby") in fits
    assert len(fits) == 5 + 2 * 4  # the diagonal, and unisex with each of the 4 others both ways
