"""Training on real tower features of a slice of the H&M sample (no Django), and the heads' algebra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.config import ModelConfig, TrainConfig
from ml.data import outfits_from_baskets, read_articles, read_baskets, select_articles, split_is_test
from ml.dataset import TrainData
from ml.heads import RecommenderHeads, load_heads, save_heads, zero_shot_heads
from ml.metrics import text_to_image_recall
from ml.slots import SLOT_INDEX
from ml.train import train

ROOT = Path(__file__).resolve().parents[2]
HM = Path(os.environ.get("HM_DATA_DIR", ROOT.parent / "shared" / "data" / "hm"))


@pytest.fixture(scope="module")
def real_data() -> TrainData:
    """Tower features of ~150 real articles and their basket outfits (feature cache in var/features)."""
    from ml.features import FeatureCache, FeatureExtractor
    from ml.model import build_model

    articles, _ = read_articles(HM)
    baskets = read_baskets(HM)
    arts = select_articles(articles, baskets, 150, seed=0)
    index = {a.article_id: i for i, a in enumerate(arts)}
    outfits = outfits_from_baskets(baskets, {a.article_id: a.product_code for a in arts})
    bundle = build_model(ModelConfig())
    ex = FeatureExtractor(bundle, batch_size=32)
    cache = FeatureCache(ROOT / "var" / "features")
    img = cache.get_or_compute_images(ex, [a.image_path for a in arts])
    txt = cache.get_or_compute_texts(ex, [a.text for a in arts])
    types = {t: i for i, t in enumerate(sorted({a.product_type for a in arts}))}
    train_o, test_o = [], []
    for key, items in outfits:
        (test_o if split_is_test(key, 0.15, 0) else train_o).append(np.asarray([index[i] for i in items]))
    held = [i for i, a in enumerate(arts) if split_is_test(f"item-{a.article_id}", 0.2, 0)]
    return TrainData(
        image=img,
        text=txt,
        slots=np.asarray([SLOT_INDEX[a.slot] for a in arts]),
        types=np.asarray([types[a.product_type] for a in arts]),
        outfits=train_o[:-20],
        val_outfits=train_o[-20:],
        test_outfits=test_o,
        heldout_items=np.asarray(held),
    )


CFG = TrainConfig(epochs=6, batch_size=32, seed=0, patience=0)


@pytest.mark.slow
def test_training_lowers_the_loss_and_beats_zero_shot_on_held_out_items(real_data):
    result = train(real_data, CFG)
    h = result.history
    assert len(h["loss"]) == 6 and h["loss"][-1] < h["loss"][0] * 0.8
    held = torch.as_tensor(real_data.heldout_items)
    img, txt = torch.from_numpy(real_data.image[held]), torch.from_numpy(real_data.text[held])
    tuned = text_to_image_recall(*result.heads.general(img, txt), k=5)
    zero = text_to_image_recall(*zero_shot_heads(512, CFG.compat_dim).general(img, txt), k=5)
    assert tuned > zero + 0.2, (tuned, zero)  # products the image↔text loss never saw


@pytest.mark.slow
def test_same_seed_same_run(real_data):
    a = train(real_data, TrainConfig(epochs=2, batch_size=32, seed=3, patience=0))
    b = train(real_data, TrainConfig(epochs=2, batch_size=32, seed=3, patience=0))
    c = train(real_data, TrainConfig(epochs=2, batch_size=32, seed=4, patience=0))
    # Same seed, same run up to float summation order (a loaded CPU can split a reduction differently).
    assert np.allclose(a.history["loss"], b.history["loss"], rtol=1e-6, atol=0)
    assert not np.allclose(a.history["loss"], c.history["loss"], rtol=1e-3, atol=0)


def test_training_runs_torchs_deterministic_algorithms_and_restores_the_setting(real_data):
    """With several CPU threads, some ops accumulated in a varying order: two demo trainings of the same
    data and seed stopped early after 21 and 30 epochs. Training now holds torch's deterministic flag."""
    seen = []
    cfg = TrainConfig(epochs=1, batch_size=32, seed=0, patience=0)
    train(real_data, cfg, progress=lambda info: seen.append(torch.are_deterministic_algorithms_enabled()))
    assert seen == [True]
    assert not torch.are_deterministic_algorithms_enabled()  # the process's own setting is back


@pytest.mark.slow
def test_checkpoint_resume_and_save_load(real_data, tmp_path):
    first = train(
        real_data, TrainConfig(epochs=2, batch_size=32, seed=0, patience=0), checkpoint_dir=tmp_path
    )
    assert (tmp_path / "last.pt").exists() and len(first.history["loss"]) == 2
    resumed = train(
        real_data, TrainConfig(epochs=4, batch_size=32, seed=0, patience=0), resume=tmp_path / "last.pt"
    )
    assert len(resumed.history["loss"]) == 4
    assert resumed.history["loss"][:2] == first.history["loss"]
    save_heads(tmp_path / "heads.pt", resumed.heads, {"note": "x"})
    heads, meta = load_heads(tmp_path / "heads.pt")
    assert meta == {"note": "x"}
    x = torch.from_numpy(real_data.image[:4])
    assert torch.equal(heads.compat(x, x), resumed.heads.compat(x, x))


@pytest.mark.slow
def test_cli_trains_on_a_features_file_without_django(real_data, tmp_path):
    real_data.save(tmp_path / "f.npz")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml.train",
            "--features",
            str(tmp_path / "f.npz"),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--batch-size",
            "32",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "trained" in out.stdout and (tmp_path / "run" / "heads.pt").exists()
    assert "django" not in out.stderr.lower()


def test_cli_help_works_without_django():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run(
        [sys.executable, "-m", "ml.train", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "--temperature" in out.stdout and "--miner" in out.stdout


def test_ml_never_imports_django():
    for path in (ROOT / "ml").rglob("*.py"):
        if path.name == "tasks.py":
            continue
        assert "django" not in path.read_text(), f"{path} imports Django"


def test_slot_query_equals_summed_pair_scores():
    """<q_t, f_x> = Σ_i <f_i ⊙ m_{s_i t}, f_x ⊙ m_{s_i t}>: complete-the-look is one inner-product query."""
    torch.manual_seed(0)
    heads = RecommenderHeads(8, compat_dim=4, num_slots=3)
    with torch.no_grad():
        heads.mask_logits.normal_()
    f = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)  # two outfit items + a candidate
    s = torch.tensor([0, 1, 2])
    with torch.no_grad():
        q = heads.slot_query(f[:2], s[:2], target_slot=2)
        m = [heads.pair_mask(s[i : i + 1], s[2:3])[0] for i in range(2)]
    expected = sum(float(((f[i] * m[i]) * (f[2] * m[i])).sum()) for i in range(2))
    assert float(q @ f[2]) == pytest.approx(expected, abs=1e-6)


def test_pair_masks_are_symmetric_with_unit_mean():
    heads = RecommenderHeads(8, compat_dim=4, num_slots=3)
    with torch.no_grad():
        heads.mask_logits.normal_()
    a, b = torch.tensor([0, 1, 2]), torch.tensor([2, 0, 1])
    assert torch.allclose(heads.pair_mask(a, b), heads.pair_mask(b, a))
    m = heads.mask_table().detach()  # squared masks: non-negative with mean 1 over the dimensions
    assert m.shape == (3, 3, 4) and float(m.min()) >= 0
    assert torch.allclose(m.mean(-1), torch.ones(3, 3), atol=1e-5)


def test_untrained_general_heads_are_the_identity():
    heads = RecommenderHeads(8, compat_dim=4, num_slots=3)
    x = torch.randn(5, 8)
    img, txt = heads.general(x, 2 * x)
    assert torch.allclose(img, torch.nn.functional.normalize(x, dim=-1), atol=1e-6)
    assert torch.allclose(txt, img, atol=1e-6)


def test_config_refuses_an_unknown_compat_loss() -> None:
    with pytest.raises(ValueError, match="compat_loss 'arcface'"):
        TrainConfig(compat_loss="arcface")
    with pytest.raises(ValueError, match="compat_temperature"):
        TrainConfig(compat_temperature=0.0)


def test_compat_head_keeps_its_own_best_epoch(real_data):
    """The image↔text heads come from the best validation score, the compatibility head from the best
    validation FITB: a later epoch with better Recall@10 but worse FITB keeps the earlier compat weights."""
    from ml.train import _Run

    run = _Run(real_data, TrainConfig(batch_size=32, patience=2), bundle=None)
    run.record_epoch(0, {"loss": 1.0, "infonce": 1.0, "compat": 1.0, "type": 0.0}, 0.6, 0.1)
    compat0 = run.heads.compat_mlp[0].weight.detach().clone()
    with torch.no_grad():  # "training" moves every parameter
        for p in run.heads.parameters():
            p.add_(0.01)
    general1 = run.heads.image_proj.weight.detach().clone()
    run.record_epoch(1, {"loss": 1.0, "infonce": 1.0, "compat": 1.0, "type": 0.0}, 0.3, 0.9)
    assert run.best_epoch == 1 and run.best_compat_epoch == 0 and run.stale == 0
    heads = run.best_heads()
    assert torch.equal(heads.image_proj.weight, general1) and torch.equal(heads.compat_mlp[0].weight, compat0)
    run.record_epoch(2, {"loss": 1.0, "infonce": 1.0, "compat": 1.0, "type": 0.0}, 0.3, 0.5)
    run.record_epoch(3, {"loss": 1.0, "infonce": 1.0, "compat": 1.0, "type": 0.0}, 0.3, 0.5)
    assert run.stops_early()  # neither improved for `patience` epochs


def test_photo_views_and_paraphrases_train_through_their_banks(real_data):
    """``w_view`` adds NT-Xent between two views of each photo that has views (ml.views.PhotoViews) and
    ``p_text_view`` swaps in paraphrases (TextViews); the views here are the real tower features of every
    other article, perturbed (the plumbing, not the augmentation, is under test)."""
    from dataclasses import replace

    n, e = real_data.image.shape
    data = replace(real_data, item_ids=np.arange(n))
    ids = np.arange(0, n, 2)
    noise = np.random.default_rng(0).standard_normal((len(ids), 2, e)).astype(np.float32)
    data = data.attach_views(ids, real_data.image[ids][:, None, :] + 0.05 * noise)
    data = data.attach_views(ids, real_data.text[ids][:, None, :] + 0.05 * noise, kind="text")
    cfg = TrainConfig(epochs=2, batch_size=32, seed=0, patience=0, w_view=1.0, p_text_view=0.5)
    on = train(data, cfg)
    assert all(v > 0 for v in on.history["view"]) and np.isfinite(on.history["loss"]).all()
    again = train(data, cfg)
    assert np.allclose(
        again.history["loss"], on.history["loss"], rtol=1e-5
    )  # views from the seeded generator
    off = train(data, replace(cfg, w_view=0.0, p_text_view=0.0))
    assert off.history["view"] == [0.0, 0.0] and not np.allclose(off.history["loss"], on.history["loss"])
    with pytest.raises(ValueError, match="phone-photo view features"):
        train(real_data, cfg)
