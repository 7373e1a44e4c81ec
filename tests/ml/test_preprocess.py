"""``ml.preprocess.Letterbox`` gives exactly open_clip's evaluation tensors (so the feature cache key may
stay), on real H&M and MANGO photos and on odd sizes and modes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from ml.model import DEFAULT_PREPROCESS
from ml.preprocess import Letterbox, letterbox_for
from tests.ml.conftest import HM

MANGO = HM.parent / "mango"


def _transform(**changes):
    return image_transform_v2(PreprocessCfg(**{**DEFAULT_PREPROCESS, **changes}), is_train=False)


def _photos(root: Path, n: int) -> list[Image.Image]:
    paths = sorted((root / "images").rglob("*.jpg"))[:n]
    assert len(paths) == n, root
    return [Image.open(p).convert("RGB") for p in paths]


def test_letterbox_equals_open_clip_on_real_photos_and_odd_shapes():
    reference = _transform()
    fast = letterbox_for(reference)
    assert isinstance(fast, Letterbox)
    photos = _photos(HM, 16) + _photos(MANGO, 16)
    odd = [photos[0].resize((1000, 300)), photos[1].resize((50, 50)), photos[2].resize((224, 224))]
    for image in photos + odd:
        assert torch.equal(fast(image), reference(image)), image.size
    for mode in ("L", "RGBA", "P"):  # not RGB: the open_clip transform itself
        image = photos[3].convert(mode)
        assert torch.equal(fast(image), reference(image)), mode


def test_other_transforms_are_left_as_they_are():
    assert letterbox_for(_transform(resize_mode="shortest")) is None  # centre crop, not a letterbox
    assert letterbox_for(_transform(resize_mode="squash")) is None
    train = image_transform_v2(PreprocessCfg(**DEFAULT_PREPROCESS), is_train=True)
    assert letterbox_for(train) is None
    assert letterbox_for(lambda image: image) is None


@pytest.mark.parametrize("fill", [0, 245])
def test_the_fill_colour_is_the_transforms(fill):
    reference = _transform(fill_color=fill)
    wide = _photos(HM, 1)[0].resize((400, 100))  # padded above and below
    assert torch.equal(letterbox_for(reference)(wide), reference(wide))
