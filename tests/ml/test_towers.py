"""Tower fine-tuning (ml.towers through ml.train.train) on 16 real H&M photos and texts, no Django."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ml.config import ModelConfig, TrainConfig
from ml.dataset import TrainData
from ml.heads import load_heads, save_heads, zero_shot_heads
from ml.train import train
from tests.ml.conftest import HM, ROOT, fresh_bundle

TUNE = dict(
    epochs=2, batch_size=16, seed=0, patience=0, unfreeze_last_blocks=1, unfreeze_text_layers=1, tower_lr=1e-4
)


@pytest.mark.slow
def test_tower_fine_tuning_trains_only_the_unfrozen_blocks_and_resumes_exactly(small_data, tmp_path):
    from ml.towers import tower_modules

    assert len(small_data.image) == 16
    base = fresh_bundle().model.state_dict()
    bundle = fresh_bundle()
    features_before = small_data.image.copy()
    full = train(small_data, TrainConfig(**TUNE), bundle=bundle)  # 2 epochs of 1 step (16 items, batch 16)
    assert len(full.history["loss"]) == 2 and all(math.isfinite(v) for v in full.history["loss"])

    unfrozen = tower_modules(bundle.model, image_blocks=1, text_layers=1)
    assert set(unfrozen) == {
        "visual.trunk.blocks.6.0",
        "visual.trunk.conv_head",
        "visual.trunk.bn2",
        "visual.head",
        "text.transformer.encoder.layer.5",
        "text.proj",
    }
    prefixes = tuple(f"{n}." for n in unfrozen)
    trained = dict(bundle.model.named_parameters())
    changed = [k for k, p in trained.items() if not torch.equal(p.detach(), base[k])]
    assert changed and all(k.startswith(prefixes) for k in changed)  # frozen weights untouched
    # every trainable weight moved (AdamW moves each parameter with a gradient)
    assert sorted(changed) == sorted(k for k in trained if k.startswith(prefixes))
    assert any(k.startswith("visual.") for k in changed) and any(k.startswith("text.") for k in changed)
    buffers = dict(bundle.model.named_buffers())  # BatchNorm statistics stay the ImageNet ones
    assert all(torch.equal(b, base[k]) for k, b in buffers.items() if k in base)
    # the returned heads carry the tuned tower weights, equal to the model's
    assert set(full.heads.tower_state) == {k for k in base if k.startswith(prefixes)}
    assert all(torch.equal(v, bundle.model.state_dict()[k].cpu()) for k, v in full.heads.tower_state.items())
    assert np.array_equal(small_data.image, features_before)  # the bank is a copy, never the caller's data
    # checkpoint after epoch 0, resume: epoch 1 gives the same loss as the uninterrupted run
    first = train(
        small_data, TrainConfig(**{**TUNE, "epochs": 1}), bundle=fresh_bundle(), checkpoint_dir=tmp_path
    )
    assert first.history["loss"] == full.history["loss"][:1]
    ck = torch.load(tmp_path / "last.pt", weights_only=False)
    assert set(ck["towers"]) == set(full.heads.tower_state)
    resumed = train(small_data, TrainConfig(**TUNE), bundle=fresh_bundle(), resume=tmp_path / "last.pt")
    assert resumed.history["loss"][1] == pytest.approx(full.history["loss"][1], rel=1e-5)
    for k, v in resumed.heads.tower_state.items():
        assert torch.allclose(v, full.heads.tower_state[k], atol=1e-6), k


@pytest.mark.slow
def test_serving_embeds_with_the_tuned_towers(small_data, tmp_path):
    from ml.inference import Embedder

    result = train(small_data, TrainConfig(**{**TUNE, "epochs": 1}), bundle=fresh_bundle())
    save_heads(tmp_path / "heads.pt", result.heads, {"note": "tuned"})
    heads, meta = load_heads(tmp_path / "heads.pt")
    assert meta == {"note": "tuned"} and set(heads.tower_state) == set(result.heads.tower_state)
    cfg = ModelConfig(device="cpu", tower_backend="torch")  # the backend small_data's features come from
    tuned = Embedder(cfg, heads)
    frozen = Embedder(cfg, zero_shot_heads(512, 128))
    state = tuned.bundle.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in heads.tower_state.items())
    assert tuned.bundle.model_id != frozen.bundle.model_id and "+towers-" in tuned.bundle.model_id
    txt_tuned = tuned.extractor.encode_texts(small_data.texts[:4])
    txt_frozen = frozen.extractor.encode_texts(small_data.texts[:4])
    np.testing.assert_allclose(txt_frozen, small_data.text[:4], atol=1e-4)  # frozen = the cached features
    assert np.abs(txt_tuned - txt_frozen).max() > 1e-4  # the tuned text tower is the one serving
    vec = tuned.embed_items(small_data.image_paths[:3], small_data.texts[:3])
    assert vec.image.shape == (3, 512) and not vec.failed
    assert np.allclose(np.linalg.norm(vec.compat, axis=1), 1, atol=1e-5)


def test_tower_fine_tuning_needs_paths_and_texts(small_data):
    data = TrainData(
        image=small_data.image,
        text=small_data.text,
        slots=small_data.slots,
        types=small_data.types,
        outfits=small_data.outfits,
    )
    with pytest.raises(ValueError, match="needs TrainData.image_paths"):
        train(data, TrainConfig(**TUNE))


def test_unfreeze_counts_are_checked():
    from ml.towers import tower_modules

    model = fresh_bundle().model
    with pytest.raises(ValueError, match="has 16 blocks"):
        tower_modules(model, image_blocks=17, text_layers=0)
    with pytest.raises(ValueError, match="has 6 layers"):
        tower_modules(model, image_blocks=0, text_layers=7)
    assert tower_modules(model, image_blocks=0, text_layers=0) == {}


def test_train_data_with_paths_round_trips(small_data, tmp_path):
    small_data.save(tmp_path / "d.npz")
    back = TrainData.load(tmp_path / "d.npz")
    assert back.image_paths == small_data.image_paths and back.texts == small_data.texts
    with pytest.raises(ValueError, match="texts has 2 entries for 16 items"):
        TrainData(
            image=small_data.image,
            text=small_data.text,
            slots=small_data.slots,
            types=small_data.types,
            outfits=small_data.outfits,
            texts=["a", "b"],
        )


def test_cli_help_shows_the_tower_switches():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run(
        [sys.executable, "-m", "ml.train", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    for flag in ("--unfreeze-last-blocks", "--unfreeze-text-layers", "--tower-lr", "--amp", "--hm-root"):
        assert flag in out.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tower_fine_tuning_on_cuda_with_bf16(small_data):
    bundle = fresh_bundle("cuda")
    base = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    result = train(small_data, TrainConfig(**{**TUNE, "amp": "bf16"}), bundle=bundle)
    assert all(math.isfinite(v) for v in result.history["loss"])
    trained = dict(bundle.model.named_parameters())
    assert not torch.equal(trained["text.proj.weight"], base["text.proj.weight"])
    assert torch.equal(trained["visual.trunk.conv_stem.weight"], base["visual.trunk.conv_stem.weight"])
    assert result.heads.tower_state["text.proj.weight"].device.type == "cpu"


@pytest.mark.slow
def test_cli_fine_tunes_the_towers_from_the_hm_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml.train",
            "--hm-root",
            str(HM),
            "--limit",
            "40",
            "--device",
            "cpu",
            "--unfreeze-last-blocks",
            "1",
            "--unfreeze-text-layers",
            "1",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--feature-cache",
            str(ROOT / "var" / "features"),
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tuned towers" in out.stdout and "### Popularity-matched protocol (headline)" in out.stdout
    heads, meta = load_heads(tmp_path / "run" / "heads.pt")
    assert heads.tower_state and meta["train_config"]["unfreeze_last_blocks"] == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["fine-tuned"]
    assert metrics["n_fitb_random"] > 0 and 0.0 <= metrics["fitb_random"] <= 1.0
