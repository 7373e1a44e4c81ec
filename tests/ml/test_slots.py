"""The slot taxonomy (ml.slots.slot_for) audited against every product type of both real samples."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from ml.data import read_articles
from ml.mango import read_products
from ml.slots import OUTFIT_SLOTS, SLOTS, slot_for

ROOT = Path(__file__).resolve().parents[2]
HM = Path(os.environ.get("HM_DATA_DIR", ROOT.parent / "shared" / "data" / "hm"))
MANGO = Path(os.environ.get("MANGO_DATA_DIR", HM.parent / "mango"))


def _table(rows) -> dict[tuple[str, str], Counter]:
    """(group, product type) → Counter of the slots its products get."""
    out: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for group, ptype, slot in rows:
        out[(group, ptype)][slot] += 1
    return out


@pytest.fixture(scope="module")
def hm_table():
    articles, _ = read_articles(HM)
    return _table((a.product_group, a.product_type, a.slot) for a in articles)


@pytest.fixture(scope="module")
def mango_table():
    products, _ = read_products(MANGO)
    return _table((p.category, p.product_type, p.slot) for p in products)


def _print(name: str, table) -> None:
    print(f"\n{name}: {len(table)} (group, type) values")
    for (group, ptype), slots in sorted(table.items()):
        print(f"  {group} / {ptype}: {dict(slots)}")


def test_every_hm_type(hm_table):
    _print("H&M", hm_table)
    one = {k: next(iter(v)) for k, v in hm_table.items() if len(v) == 1}
    assert len(hm_table) == 108
    # the wrong ones, fixed: cargo "Outdoor trousers" are trousers, the cape costume no bag
    assert one[("Garment Lower body", "Outdoor trousers")] == "bottom"
    assert one[("Accessories", "Accessories set")] == "accessory"
    # H&M files 26 jumpsuits, playsuits and dungarees as "Trousers" and 2 as "Shorts": their names say so
    assert hm_table[("Garment Lower body", "Trousers")] == {"bottom": 1544, "one-piece": 26}
    assert hm_table[("Garment Lower body", "Shorts")] == {"bottom": 231, "one-piece": 2}
    assert hm_table[("Garment Upper body", "Hoodie")] == {"top": 253, "one-piece": 2}  # "BOBO onesie"
    # "Unknown" products placed by their names and departments instead of all becoming accessories
    assert hm_table[("Unknown", "Unknown")] == {
        "underwear-nightwear": 40,
        "bottom": 22,
        "top": 4,
        "accessory": 4,
        "one-piece": 2,
        "outerwear": 2,
        "bag": 1,
    }
    # and 11 pairs of hosiery ("30 den 1p Tights", "1p Stay Up") beside leggings and sports tights
    assert hm_table[("Garment Lower body", "Leggings/Tights")] == {"bottom": 208, "socks-tights": 11}
    known = {
        ("Garment Full body", "Jumpsuit/Playsuit"): "one-piece",
        ("Garment Upper body", "Cardigan"): "outerwear",
        ("Nightwear", "Pyjama jumpsuit/playsuit"): "underwear-nightwear",
        ("Accessories", "Hair ties"): "accessory",
        ("Accessories", "Wallet"): "bag",
        ("Accessories", "Earring"): "jewellery",
        ("Shoes", "Other shoe"): "shoes",
        ("Socks & Tights", "Underwear Tights"): "socks-tights",
        ("Cosmetic", "Fine cosmetics"): "accessory",
        ("Swimwear", "Sarong"): "swimwear",
    }
    assert {k: one[k] for k in known} == known


def test_every_mango_type(mango_table):
    _print("MANGO", mango_table)
    one = {k[1]: next(iter(v)) for k, v in mango_table.items()}
    assert all(len(v) == 1 for v in mango_table.values())  # MANGO's types are unambiguous
    assert len(one) == 123
    by_category = defaultdict(set)
    for (category, _), slots in mango_table.items():
        by_category[category] |= set(slots)
    assert by_category["Tops"] == {"top", "outerwear"}  # cardigans are outerwear in both catalogs
    assert by_category["Bottoms"] == {"bottom"}
    assert by_category["Dresses, jumpsuits and Complete set"] == {"one-piece"}  # jumpsuits are no bottoms
    assert by_category["Outerwear"] == {"outerwear"}
    assert by_category["Beauty"] == {"accessory"}
    known = {
        "Jumpsuit": "one-piece",
        "Overall": "one-piece",
        "Jeans": "bottom",
        "Leggings": "bottom",
        "Handbag": "bag",
        "Totes bag": "bag",
        "Clutch and Pochettes": "bag",
        "Ankle Boots": "shoes",
        "Trainers": "shoes",
        "Earrings": "jewellery",
        "Hairclip": "accessory",
        "Sunglasses": "accessory",
        "Trenchcoat": "outerwear",
        "Puffer coat": "outerwear",
        "Bikini top": "swimwear",
        "Bras": "underwear-nightwear",
        "Pyjiama Sweater": "underwear-nightwear",
        "Tights": "socks-tights",
        "Cushion Case": "accessory",
    }
    assert {t: one[t] for t in known} == known
    # each family of the accessories category lands in one slot of its own kind
    products, _ = read_products(MANGO)
    family_slots = defaultdict(set)
    for p in products:
        family_slots[p.family].add(p.slot)
    assert family_slots["Footwear"] == {"shoes"}
    assert family_slots["Bags"] == {"bag"}
    assert family_slots["Swimwear"] == {"swimwear"}
    assert family_slots["Jewellery"] == {"jewellery", "accessory"}  # hair clips are filed as jewellery


def test_outfit_slots_of_both_samples_cover_the_garments(hm_table, mango_table):
    for table in (hm_table, mango_table):
        slots = Counter()
        for counts in table.values():
            slots.update(counts)
        assert set(slots) <= set(SLOTS)
        assert set(OUTFIT_SLOTS) <= set(slots)


def test_name_only_overrides_tops_and_bottoms():
    assert slot_for("Garment Lower body", "Trousers", "Noora jumpsuit") == "one-piece"
    assert slot_for("Garment Lower body", "Trousers", "Cargo trousers") == "bottom"
    # a baby's jumpsuit H&M files as a "Sweater": no bottom goes with it
    assert slot_for("Garment Upper body", "Sweater", "MORRIS onepiece BB") == "one-piece"
    # a set of a hat and a scarf is worn as accessories; a top-and-trousers set stays a one-piece
    assert slot_for("Garment Full body", "Garment Set", "SET 2PCS KNIT BEANIE SCARF") == "accessory"
    assert slot_for("Garment Full body", "Garment Set", "DANTE set 3pcs", "Set with a ... hat") == "one-piece"
    assert slot_for("Nightwear", "Pyjama bottom", "Pyjama jumpsuit") == "underwear-nightwear"
    assert slot_for("Unknown", "Unknown", "", "Jumpsuit dept") == "one-piece"  # hint of unknown type
    assert slot_for("Garment Lower body", "Trousers", "", "Jumpsuit dept") == "bottom"  # only the name
    assert slot_for("", "", "") == "accessory"
    tights = ("Control Top 30 den 1p Tights", "Nouvelle 1p Stay Up", "Box 4p Tights", "Fleece 1 p tights")
    assert {slot_for("Garment Lower body", "Leggings/Tights", t) for t in tights} == {"socks-tights"}
    assert slot_for("Garment Lower body", "Leggings/Tights", "SPORT Havana HW tights") == "bottom"
    assert slot_for("Garment Lower body", "Leggings/Tights", "2P Jersey leggings") == "bottom"


def test_a_broad_group_without_a_type_is_refined_by_the_title_then_the_description():
    from ml.slots import slot_with_evidence

    assert slot_with_evidence("Garment Upper body", "", "Padded jacket", "") == ("outerwear", "group+title")
    assert slot_with_evidence("Garment Upper body", "", "Ellie", "Short, padded parka") == (
        "outerwear",
        "group+text",
    )
    assert slot_with_evidence("Accessories", "", "Hoop earrings") == ("jewellery", "group+title")
    assert slot_with_evidence("Garment Upper body", "", "Basic tee") == ("top", "group")
    # with its type the group is not refined: the H&M sample's own slots (the truth below) are unchanged
    assert slot_with_evidence("Garment Upper body", "Sweater", "Cardigan-look sweater") == ("top", "type")


def test_slot_accuracy_with_types_hidden_on_the_h_and_m_sample(tmp_path):
    """The figure quoted in docs/importing.md: group, title and description given, types hidden."""
    import json

    from ml.slot_accuracy import main

    report = main(["--data", str(HM), "--out", str(tmp_path)])
    assert report["n"] == 11_800 and report["accuracy"] >= 0.90, report["accuracy"]
    assert report["per_slot"]["bottom"]["recall"] == 1.0  # "Garment Lower body" settles it
    assert report["confusion"]["outerwear"]["outerwear"] > 0.9 * report["per_slot"]["outerwear"]["n"]
    assert {r["evidence"] for r in report["review"]} <= {"group+text", "words", "none"}
    assert json.loads((tmp_path / "slot_accuracy.json").read_text())["accuracy"] == report["accuracy"]
    assert "| true \\ predicted |" in (tmp_path / "slot_accuracy.md").read_text()
