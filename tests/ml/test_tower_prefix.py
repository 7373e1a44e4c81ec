"""Image-tower tuning from cached prefix activations (ml.tower_prefix) on 16 real H&M photos, no Django."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ml.config import ModelConfig, TrainConfig
from ml.dataset import TrainData
from ml.slots import SLOTS
from ml.tower_prefix import PrefixEncoder, SplitImageTower
from ml.train import train
from tests.ml.conftest import fresh_bundle


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_the_suffix_of_the_prefix_is_the_image_tower(small_data: TrainData):
    bundle = fresh_bundle()
    paths = small_data.image_paths[:4]
    x = torch.stack([bundle.preprocess(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        full = bundle.model.encode_image(x)  # (4, 512)
        for k in (1, 4, 16):
            split = SplitImageTower(bundle.model, k)
            torch.testing.assert_close(split.suffix(split.prefix(x)), full, rtol=1e-4, atol=1e-4)
    split = SplitImageTower(bundle.model, 4)
    acts, failed = PrefixEncoder(bundle, split).encode_paths(paths, progress=False)
    assert acts.shape == (4, 192, 7, 7) and acts.dtype == np.float16 and not failed.any()
    with torch.no_grad():  # float16 storage loses nothing that matters: the cached features come back
        out = split.suffix(torch.from_numpy(acts).float()).numpy()
    assert _cosine(out, small_data.image[:4]).min() > 0.999
    with pytest.raises(ValueError, match="has 16"):
        SplitImageTower(bundle.model, 17)


def test_prefix_caching_settings_are_checked():
    with pytest.raises(ValueError, match="cache_tower_prefix needs unfreeze_last_blocks"):
        TrainConfig(cache_tower_prefix=True)
    with pytest.raises(ValueError, match="tuning_views needs cache_tower_prefix"):
        TrainConfig(unfreeze_last_blocks=2, tuning_views=2)
    with pytest.raises(ValueError, match="tuning_views / tuning_view_photos must be >= 0"):
        TrainConfig(unfreeze_last_blocks=2, cache_tower_prefix=True, tuning_views=-1)


@pytest.mark.slow
def test_tuning_from_cached_activations_trains_the_image_top_on_views_and_serves_it(small_data, tmp_path):
    from ml.features import FeatureExtractor
    from ml.towers import tuned_bundle, tuned_features

    data = replace(
        small_data,
        item_ids=np.arange(108000, 108016),
        heldout_items=np.array([0, 1]),
        val_items=np.array([2, 3]),
    )
    cfg = TrainConfig(
        epochs=2, batch_size=8, seed=0, patience=0, unfreeze_last_blocks=2, tower_lr=1e-3,
        cache_tower_prefix=True, tuning_views=2, tuning_view_photos=6, w_view=1.0, view_type_loss=True,
    )  # fmt: skip
    bundle = fresh_bundle()
    result = train(data, cfg, bundle=bundle, cache_dir=tmp_path)
    assert all(v > 0 for v in result.history["view"])  # NT-Xent between views ran through the tower
    assert len(list((tmp_path / "prefix").glob("*.npz"))) == 2  # clean photos, views: cached for the next run
    tops = (
        "visual.trunk.blocks.5.3.",
        "visual.trunk.blocks.6.0.",
        "visual.trunk.conv_head.",
        "visual.trunk.bn2.",
    )
    assert result.heads.tower_state and all(
        k.startswith((*tops, "visual.head.")) for k in result.heads.tower_state
    )
    image, text = tuned_features(bundle, data, cfg, tmp_path)
    np.testing.assert_array_equal(text, data.text)  # the text tower stayed frozen
    assert _cosine(image, data.image).min() < 0.999  # the image tower's top moved
    # serving rebuilds the model from the saved tower weights and runs the whole tower on the photos:
    # the same features as training's suffix on cached activations
    served = FeatureExtractor(tuned_bundle(ModelConfig(device="cpu"), result.heads.tower_state), trace=False)
    full, _ = served.encode_images(data.image_paths)
    assert _cosine(full, image).min() > 0.999


def test_training_starts_from_the_given_heads(small_data):
    from ml.heads import RecommenderHeads

    init = RecommenderHeads(512, 128, num_slots=len(SLOTS))
    with torch.no_grad():
        init.image_proj.weight.fill_(0.01)
    start = train(small_data, TrainConfig(epochs=0, batch_size=8, patience=0), init_heads=init)
    assert all(torch.equal(v, init.state_dict()[k]) for k, v in start.heads.state_dict().items())


def test_an_unreadable_photo_gets_no_views_and_stops_nothing(small_data, tmp_path):
    from ml.tower_prefix import prefix_activations

    paths = list(small_data.image_paths)
    paths[5] = str(tmp_path / "deleted.jpg")  # a product whose photo file is gone
    data = replace(
        small_data,
        image_paths=paths,
        item_ids=np.arange(108000, 108016),
        heldout_items=np.array([0, 1]),
        val_items=np.array([2, 3]),
    )
    _, acts = prefix_activations(data, fresh_bundle(), 2, views=1, view_photos=16, progress=False)
    assert acts.failed.tolist() == [i == 5 for i in range(16)]
    assert acts.view_rows.tolist() == [4, *range(6, 16)]  # trained rows with a readable photo
    assert acts.views.shape[:2] == (11, 1)  # the unreadable row's output is zeroed by its failed flag
