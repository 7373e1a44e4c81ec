"""The Polyvore Outfits reader and protocol on the hand-written fixture in tests/fixtures/polyvore/.

Fixture: 12 items; outfits train {200}, valid {300}, test {100: white shirt, white trousers, white
sneakers; 101: blue sweater, white shorts, blue loafers}; 2 FITB questions and 4 compatibility lines
over the test outfits; 8x8 JPEG images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ml.polyvore import (
    CompatibilityQuestion,
    FITBQuestion,
    PolyvoreDataset,
    evaluate_polyvore,
    load_polyvore,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "polyvore"


@pytest.fixture
def dataset() -> PolyvoreDataset:
    return load_polyvore(FIXTURE, split="disjoint", subset="test")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    root = tmp_path / "polyvore"
    shutil.copytree(FIXTURE, root)
    return root


def test_counts(dataset: PolyvoreDataset) -> None:
    assert len(dataset.items) == 12
    assert {k: len(v) for k, v in dataset.outfits.items()} == {"train": 1, "valid": 1, "test": 2}
    assert len(dataset.fitb) == 2
    assert [q.label for q in dataset.compatibility] == [1, 1, 0, 0]


def test_items_and_outfits(dataset: PolyvoreDataset) -> None:
    shirt = dataset.items["1001"]
    assert (shirt.category, shirt.semantic_category, shirt.title) == ("11", "tops", "white shirt")
    assert shirt.text == "white shirt crisp poplin"  # title + description
    assert dataset.items["3002"].text == "red pleated skirt midi length"  # empty title -> url_name
    assert all(item.image_path.is_file() for item in dataset.items.values())
    assert dataset.items["1013"].image_path == FIXTURE / "images" / "1013.jpg"
    assert [(o.set_id, o.item_ids) for o in dataset.outfits["test"]] == [
        ("100", ["1001", "1002", "1003"]),
        ("101", ["1011", "1012", "1013"]),
    ]
    assert dataset.outfits["train"][0].item_ids == ["2001", "2002", "2003"]


def test_fitb_resolution(dataset: PolyvoreDataset) -> None:
    assert dataset.fitb == [
        FITBQuestion(["1001", "1002"], ["1003", "1011", "1012", "1013"], correct_index=0, blank_position=3),
        FITBQuestion(["1011", "1013"], ["1012", "1001", "1002", "1003"], correct_index=0, blank_position=2),
    ]


def test_compatibility_resolution(dataset: PolyvoreDataset) -> None:
    assert dataset.compatibility[2] == CompatibilityQuestion(label=0, item_ids=["1001", "1011", "1013"])


def test_correct_answer_found_by_set_id(copy: Path) -> None:
    # the reference code marks the answer from the question's outfit as correct, wherever it sits
    path = copy / "disjoint" / "fill_in_blank_test.json"
    data = json.loads(path.read_text())
    data[0]["answers"] = ["101_1", "101_2", "100_3", "101_3"]
    path.write_text(json.dumps(data))
    ds = load_polyvore(copy, split="disjoint")
    assert ds.fitb[0].correct_index == 2
    assert ds.fitb[0].answer_item_ids[2] == "1003"


def test_split_none_reads_root(copy: Path) -> None:
    for f in (copy / "disjoint").iterdir():
        shutil.move(str(f), copy / f.name)
    ds = load_polyvore(copy, split=None)
    assert len(ds.fitb) == 2 and len(ds.compatibility) == 4


def colour_pair_score(dataset: PolyvoreDataset):
    """1 if the two items share a colour (first word of their text), + 0.5 if their categories differ."""

    def score(a: str, b: str) -> float:
        ia, ib = dataset.items[a], dataset.items[b]
        same_colour = ia.text.split()[0] == ib.text.split()[0]
        return float(same_colour) + 0.5 * float(ia.semantic_category != ib.semantic_category)

    return score


def test_evaluate_polyvore_by_hand(dataset: PolyvoreDataset) -> None:
    # FITB q1: question white top, white bottom.
    #   c0 white shoes  (1.5 + 1.5) / 2 = 1.5   <- correct, unique max -> right
    #   c1 blue top     (0.0 + 0.5) / 2 = 0.25
    #   c2 white bottom (1.5 + 1.0) / 2 = 1.25
    #   c3 blue shoes   (0.5 + 0.5) / 2 = 0.5
    # FITB q2: question blue top, blue shoes.
    #   c0 white bottom (0.5 + 0.5) / 2 = 0.5   <- correct, tied with c2 -> wrong
    #   c1 white top    (0.0 + 0.5) / 2 = 0.25
    #   c2 white bottom (0.5 + 0.5) / 2 = 0.5
    #   c3 white shoes  (0.5 + 0.0) / 2 = 0.25
    # -> FITB accuracy 1/2.
    # Compatibility (mean over the 3 pairs):
    #   1: white top/bottom/shoes          (1.5 + 1.5 + 1.5) / 3 = 1.5
    #   1: blue top, white shorts, blue shoes (0.5 + 1.5 + 0.5) / 3 = 0.833
    #   0: white top, blue top, blue shoes (0.0 + 0.5 + 1.5) / 3 = 0.667
    #   0: white top, white trousers, white shorts (1.5 + 1.5 + 1.0) / 3 = 1.333
    # positive > negative in 3 of the 4 pairs (0.833 < 1.333) -> AUC 0.75.
    result = evaluate_polyvore(dataset, colour_pair_score(dataset))
    assert result["n_fitb"] == 2 and result["n_compatibility"] == 4
    assert result["fitb_accuracy"] == 0.5
    assert result["compatibility_auc"] == pytest.approx(0.75)


def test_missing_file_names_it(copy: Path) -> None:
    (copy / "disjoint" / "fill_in_blank_test.json").unlink()
    with pytest.raises(FileNotFoundError, match="fill_in_blank_test.json"):
        load_polyvore(copy)
    (copy / "polyvore_item_metadata.json").unlink()
    with pytest.raises(FileNotFoundError, match="polyvore_item_metadata.json"):
        load_polyvore(copy)
    with pytest.raises(FileNotFoundError, match="nondisjoint"):
        load_polyvore(FIXTURE, split="nondisjoint")


def test_unknown_fitb_item_names_question(copy: Path) -> None:
    path = copy / "disjoint" / "fill_in_blank_test.json"
    data = json.loads(path.read_text())
    data[1]["answers"][3] = "999_1"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"question 2: unknown item '999_1'"):
        load_polyvore(copy)


def test_train_set_item_is_unknown_in_test_questions(copy: Path) -> None:
    # questions resolve through the subset's outfits only (as the reference code does)
    path = copy / "disjoint" / "fill_in_blank_test.json"
    data = json.loads(path.read_text())
    data[0]["answers"][1] = "200_1"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"question 1: unknown item '200_1'"):
        load_polyvore(copy)


def test_unknown_compatibility_item_names_line(copy: Path) -> None:
    path = copy / "disjoint" / "compatibility_test.txt"
    lines = path.read_text().splitlines()
    lines[2] = "0 100_1 100_9"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 3: unknown item '100_9'"):
        load_polyvore(copy)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        load_polyvore(FIXTURE, split="random")
    with pytest.raises(ValueError, match="subset"):
        load_polyvore(FIXTURE, subset="train")
