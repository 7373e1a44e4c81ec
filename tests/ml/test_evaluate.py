"""Held-out evaluation on a 12-item catalog designed so that every number is known by hand.

Catalog: tops 0-3, bottoms 4-7, shoes 8-11; every item its own product type, so a random-protocol FITB
question's candidates are the answer and the 3 other items of its slot, whichever item is blanked (the
popularity-matched protocol finds no 3 items on both sides of an answer's popularity here: it has no
question; it is tested in test_protocols.py).
Held-out outfits O1 = [0, 4, 8], O2 = [1, 5]; held-out products {0, 1, 4, 5, 8}. The random negatives
are fixed too: N1 = [1, 5, s] with s one of the shoes 9-11 (8 is the only held-out shoe), N2 = [0, 4].
Features: image[i] = text[i] = 2·e_i, except text[8] = image[5] (a description that fits item 5).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.dataset import TrainData, fitb_questions
from ml.evaluate import (
    METRICS,
    best_reference,
    cooccurrence_log_prob,
    evaluate_all,
    evaluate_baselines,
    evaluate_heads,
    main,
    markdown_table,
    write_report,
)
from ml.heads import save_heads, zero_shot_heads
from ml.metrics import fitb_accuracy_heads
from ml.scorers import attribute_pmi, attribute_pmi_scorer

N = 12
TOP, BOTTOM, SHOES = 0, 1, 4  # slot indices (ml.slots.SLOTS)
REPO = Path(__file__).resolve().parents[2]


def make_data() -> TrainData:
    image = 2.0 * np.eye(N, dtype=np.float32)  # (12, 12)
    text = image.copy()
    text[8] = image[5]
    slots = np.array([TOP] * 4 + [BOTTOM] * 4 + [SHOES] * 4, dtype=np.int64)
    colour = np.array([0, 1, 3, 3, 0, 1, 3, 3, 0, 2, 2, 2], dtype=np.int64)  # O1 colour 0, O2 colour 1
    train = [[0, 4], [0, 4], [4, 8], [0, 8], [9, 10, 11]]
    return TrainData(
        image=image,
        text=text,
        slots=slots,
        types=np.arange(N, dtype=np.int64),
        outfits=[np.array(o, dtype=np.int64) for o in train],
        test_outfits=[np.array([0, 4, 8], dtype=np.int64), np.array([1, 5], dtype=np.int64)],
        attrs={"colour": colour, "section": np.zeros(N, dtype=np.int64)},  # no "department": skipped
    )


def test_text_to_item_retrieval_of_identity_heads() -> None:
    # Queries 0, 1, 4, 5 rank their own image first; query 8 scores 1 with image 5 and 0 with image 8,
    # which ties with the other three: rank 5 of 5.
    m = evaluate_heads(make_data(), zero_shot_heads(N, 16), seed=0)
    assert set(m) == set(METRICS)
    assert m["gallery_size"] == 5
    assert m["recall@1"] == pytest.approx(4 / 5)
    assert m["recall@5"] == m["recall@10"] == 1.0
    assert m["mrr"] == pytest.approx((4 + 1 / 5) / 5)
    assert m["p@10_type"] == 0.0  # every item is its own type
    assert m["n_fitb_random"] == 2 and m["n_outfits_random"] == 2
    assert 0.0 <= m["fitb_random"] <= 1.0 and 0.0 <= m["auc_random"] <= 1.0
    assert m["n_fitb"] == 0 and math.isnan(m["fitb"])  # no matched question in this catalog


def test_fitb_of_heads_matches_the_training_loop() -> None:
    data, heads = make_data(), zero_shot_heads(N, 16, seed=3)
    q = fitb_questions(data.test_outfits, data.slots, data.types, seed=7)
    with torch.no_grad():
        compat = heads.compat(torch.from_numpy(data.image), torch.from_numpy(data.text))
    expected = fitb_accuracy_heads(heads, compat, torch.from_numpy(data.slots), q)
    assert evaluate_heads(data, heads, seed=7)["fitb_random"] == expected


def test_similar_item_precision_by_type() -> None:
    # 4 types of 3 identical items: the 2 other items of the query's type score 1, the rest 0 and
    # fill the top 10 by index: precision@10 = 2/10 for every query.
    types = np.arange(N) // 3
    feats = 2.0 * np.eye(N, dtype=np.float32)[types]
    data = TrainData(
        image=feats,
        text=feats.copy(),
        slots=np.zeros(N, dtype=np.int64),
        types=types,
        outfits=[np.array([0, 3])],
        test_outfits=[np.array([0, 4, 8]), np.array([1, 10])],
    )
    assert evaluate_heads(data, zero_shot_heads(N, 8), seed=0)["p@10_type"] == pytest.approx(0.2)


def test_cooccurrence_prior_by_hand() -> None:
    # Pairs counted both ways: c(0,4) = 2, c(0,8) = c(4,8) = 1; T = 12 types.
    logp = cooccurrence_log_prob(make_data().outfits, np.arange(N), N)
    assert logp[0, 4] == pytest.approx(math.log(3 / 15))  # (2 + 1) / (3 + 12)
    assert logp[8, 0] == pytest.approx(math.log(2 / 14))  # (1 + 1) / (2 + 12)
    assert logp[1, 5] == pytest.approx(math.log(1 / 12))  # unseen type: uniform
    assert logp[4, 0] == logp[0, 4]


def test_attribute_pmi_by_hand() -> None:
    # Colours of the training outfits' items: 0, 4, 8 are colour 0, 9-11 colour 2. Ordered pairs of
    # distinct items: (0, 0) 8 times ([0, 4] twice, [4, 8], [0, 8]), (2, 2) 6 times ([9, 10, 11]); with
    # add-one smoothing of the 4 × 4 table, 30 counts: p(0, 0) = 9/30, p(0) = 12/30, p(2) = 10/30.
    data = make_data()
    pmi = attribute_pmi(data.outfits, data.attrs["colour"])
    assert pmi.shape == (4, 4)
    assert pmi[0, 0] == pytest.approx(math.log((9 / 30) / (12 / 30) ** 2))
    assert pmi[0, 2] == pytest.approx(math.log((1 / 30) / (12 / 30 * 10 / 30)))
    assert pmi[2, 0] == pytest.approx(pmi[0, 2])
    # the scorer sums the tables of the attributes present (colour; section: one value, PMI 0)
    scorer = attribute_pmi_scorer(data)
    assert scorer.pair(np.array([0]), np.array([4]))[0] == pytest.approx(pmi[0, 0])
    given = np.array([0, 4])
    assert scorer.items(given, np.arange(N)) == pytest.approx(scorer.items_of_every([given], N)[0])


def test_baselines_by_hand() -> None:
    b = evaluate_baselines(make_data(), seed=0)
    assert list(b) == ["popularity", "attribute-match", "pair-memory", "co-occurrence", "attribute-pmi"]
    # Popularity (training outfits: 0 and 4 in 3, 8 in 2, 9-11 in 1), random protocol. O1: every item
    # of it is more popular than the other items of its slot -> right; O2: items 1 and 5 are in no
    # training outfit and 0 (or 4) is among their candidates -> wrong: FITB 1/2. Outfit scores are the
    # mean of pop[a] + pop[b]: O1 = 16/3, O2 = 0, N1 = [1, 5, s] = 2/3, N2 = [0, 4] = 6 -> AUC 1/4.
    assert b["popularity"]["fitb_random"] == 0.5
    assert b["popularity"]["auc_random"] == 0.25
    # Co-occurrence. O1: whichever item is blanked, it co-occurred with both question items in training
    # and the wrong candidates never did -> right. O2: items 1 and 5 were never seen -> a 4-way tie, which
    # counts 1/4 (ties are split: the expected accuracy of a random tie-break) -> FITB (1 + 1/4) / 2.
    # Outfit scores: O1 = mean(log 3/15 ×2, log 2/15 ×2, log 2/14 ×2) ≈ -1.86, O2 = log 1/12 ≈
    # -2.48, N2 = log 3/15 ≈ -1.61, N1 ≈ -2.54 (shoe s has 9-11 counts) -> AUC = 2/4.
    assert b["co-occurrence"]["fitb_random"] == 0.625
    assert b["co-occurrence"]["auc_random"] == 0.5
    # Attribute match (colour + section). Each answer shares its colour with its question, no wrong
    # candidate does -> FITB 1. Outfit scores: O1 = O2 = N2 = 2, N1 = [1, 5, s] = (2 + 1 + 1) / 3
    # -> AUC = (1 + 1/2 + 1 + 1/2) / 4.
    assert b["attribute-match"]["fitb_random"] == 1.0
    assert b["attribute-match"]["auc_random"] == 0.75
    assert b["attribute-match"]["n_fitb_random"] == 2


def test_attribute_baseline_needs_an_attribute() -> None:
    data = make_data()
    data.attrs = {}
    assert list(evaluate_baselines(data)) == ["popularity", "pair-memory", "co-occurrence"]


def test_evaluate_all_rows_and_determinism() -> None:
    data = make_data()
    tuned = zero_shot_heads(N, 16, seed=5)
    r = evaluate_all(data, {"tuned": tuned}, seed=1)
    assert list(r) == [
        "popularity",
        "attribute-match",
        "pair-memory",
        "co-occurrence",
        "attribute-pmi",
        "zero-shot",
        "tuned",
        "tuned + memory",
    ]
    assert all(set(row) == set(METRICS) for row in r.values())
    # the memory row is the model wherever no training outfit paired the items: the matched protocol
    hybrid, tuned_row = r["tuned + memory"], r["tuned"]
    assert (hybrid["fitb"], hybrid["auc"], hybrid["mrr"]) == (
        tuned_row["fitb"],
        tuned_row["auc"],
        tuned_row["mrr"],
    )
    assert r["co-occurrence"]["recall@1"] is None and r["attribute-match"]["p@10_type"] is None
    assert r["zero-shot"]["recall@1"] == pytest.approx(0.8)
    assert evaluate_all(data, {"tuned": tuned}, seed=1) == r


def test_no_test_outfits_is_an_error() -> None:
    data = make_data()
    data.test_outfits = []
    with pytest.raises(ValueError, match="test_outfits"):
        evaluate_baselines(data)


def test_write_report(tmp_path: Path) -> None:
    data = make_data()
    results = evaluate_all(data, {}, seed=0)
    history = {"loss": [1.0, 0.5, 0.25], "val_fitb": [0.2, 0.4, math.nan]}
    paths = write_report(results, tmp_path, history=history, data=data, heads=zero_shot_heads(N, 16))
    assert set(paths) == {"metrics.json", "report.md", "metrics.png", "loss.png", "embedding_2d.png"}
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert json.loads(paths["metrics.json"].read_text())["co-occurrence"]["recall@1"] is None
    md = paths["report.md"].read_text()
    tables = md.split("### ")[1:]
    assert [t.splitlines()[0] for t in tables] == [
        "Popularity-matched protocol (headline)",
        "Random protocol (wrong candidates and negatives from the whole catalog)",
        "Complementary-item retrieval (rank the whole slot by complete-the-look score)",
        "Text→item retrieval and similar items",
    ]
    # Matched: no FITB question; O1's items are each the most popular of their slot (nothing to draw
    # above them): it leaves; O2 = [1, 5] (in no training outfit) against [2 or 3, 6 or 7], also in none.
    assert "| popularity | — | 0.500 | 0 | 1 |" in tables[0]
    rows = [line.split(" | ")[0][2:] for line in tables[1].splitlines() if line.startswith("| ")]
    assert rows == ["model", *results, "*best baseline*"]  # no learned row: no margin row
    assert "| popularity | 0.500 | 0.250 | 2 | 2 |" in tables[1]
    assert "| *best baseline* | attribute-match 1.000 | attribute-match 0.750 |  |  |" in tables[1]
    assert "| zero-shot | 0.800 |" in tables[3] and "| popularity |" not in tables[3]


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_data().save(tmp_path / "f.npz")
    save_heads(tmp_path / "h.pt", zero_shot_heads(N, 16, seed=2), {"history": {"loss": [2.0, 1.0]}})
    out = tmp_path / "report"
    results = main(
        [
            "--features",
            str(tmp_path / "f.npz"),
            "--heads",
            f"run1={tmp_path / 'h.pt'}",
            "--out",
            str(out),
            "--seed",
            "0",
        ]
    )
    printed = capsys.readouterr().out
    assert "| run1 |" in printed and "| zero-shot |" in printed
    assert results["attribute-match"]["auc_random"] == 0.75  # attrs survive save/load
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "report.md", "metrics.png", "loss.png"}


def test_cli_help_without_django() -> None:
    code = "import sys, ml.evaluate; assert 'django' not in sys.modules; ml.evaluate.main(['--help'])"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--features" in done.stdout


def test_markdown_table_names_the_best_baseline_and_the_margin() -> None:
    results = {
        "popularity": {"fitb": 0.25, "auc": 0.50, "ctl_median_rank": 50.0},
        "attribute-match": {"fitb": 0.40, "auc": 0.66, "ctl_median_rank": 80.0},
        "zero-shot": {"fitb": 0.30, "auc": 0.70, "ctl_median_rank": 60.0},
        "model": {"fitb": 0.46, "auc": 0.71, "ctl_median_rank": 40.0},
    }
    assert best_reference(results, "auc") == ("zero-shot", 0.70)
    assert best_reference(results, "ctl_median_rank") == ("popularity", 50.0)  # lower is better
    lines = markdown_table(results, ["fitb", "auc", "ctl_median_rank"]).splitlines()
    assert lines[-2] == "| *best baseline* | attribute-match 0.400 | zero-shot 0.700 | popularity 50.0 |"
    # +0.06 >= 0.05 beats it; +0.01 does not; 40 ranks are 20% fewer than 50
    assert lines[-1] == "| *model vs best* | +0.060 ✓ | +0.010 ✗ | +20% ✓ |"
