"""``python -m ml.ablation --quick`` on the real H&M slice of tests/ml/test_train.py: results, table, plots."""

from __future__ import annotations

import json

import numpy as np

from ml.ablation import grid, main, spread
from tests.ml.test_train import real_data  # noqa: F401  (module fixture)


def test_quick_ablation_writes_results_table_and_plots(real_data, tmp_path):  # noqa: F811
    features = tmp_path / "slice.npz"
    real_data.save(features)
    out = tmp_path / "abl"
    results = main(["--features", str(features), "--out", str(out), "--quick"])
    runs = results["runs"]
    assert [(r["cell"], r["seed"]) for r in runs] == [
        ("infonce τ=0.1", 0),
        ("infonce τ=0.1", 1),
        ("triplet semi-hard m=0.2", 0),
        ("triplet semi-hard m=0.2", 1),
    ]
    assert all(0.0 <= r["fitb"] <= 1.0 and 0.0 <= r["auc"] <= 1.0 for r in runs)
    assert all(r["curves"]["step"] == [0, 5] and len(r["curves"]["spread"]) == 2 for r in runs)
    assert json.loads((out / "results.json").read_text())["steps"] == 5
    table = (out / "results.md").read_text()
    assert "| infonce τ=0.1 | infonce-τ | 2 |" in table and "| popularity |" in table
    assert {p.name for p in out.glob("*.png")} >= {"losses.png", "sweeps.png", "spread.png"}


def test_the_full_grid_has_every_question_and_unique_cells():
    cells = grid()
    assert len({c.name for c in cells}) == len(cells)
    assert {c.group for c in cells} == {
        "infonce-τ",
        "triplet-m",
        "contrastive-m",
        "miner",
        "normalize",
        "general",
    }


def test_spread_is_one_minus_the_squared_norm_of_the_mean_unit_vector():
    import torch

    spread_out = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -3.0]])
    collapsed = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.5, 0.5]])
    assert spread(spread_out) == 1.0
    assert np.isclose(spread(collapsed), 0.0)
