"""The ONNX Runtime and OpenVINO tower backends (ml.onnx_towers, ``ModelConfig.tower_backend``) on real H&M
photos and texts.

Plain PyTorch + ONNX Runtime, no Django: ``.venv/bin/python -m pytest tests/ml/test_onnx_towers.py -q``.
The towers are exported once per module into a temporary folder (~10 s with the int8 text tower).
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ml.onnx_towers
from ml.config import ModelConfig
from ml.features import FeatureCache, FeatureExtractor
from ml.model import ClipBundle, build_model
from ml.onnx_towers import export_folder, ov_supports_bf16

REPO = Path(__file__).resolve().parents[2]
HM_ROOT = Path(os.environ.get("HM_DATA_DIR", REPO.parent / "shared" / "data" / "hm"))
#: The bar a backend must pass to share PyTorch's features (and cache key): cosine per row.
SAME_FEATURES_COS = 0.9999


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (N, E) arrays."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def hm_slice() -> tuple[list[Path], list[str]]:
    """Photos and "name. colour type. description" texts of 10 articles of the real H&M sample, spread
    over the catalogue (every 50th), so the slice mixes product types and text lengths."""
    if not (HM_ROOT / "articles.csv").exists():
        pytest.fail(f"H&M sample not found at {HM_ROOT}; set HM_DATA_DIR")
    with open(HM_ROOT / "articles.csv", newline="", encoding="utf-8") as f:
        rows = [r for i, r in enumerate(csv.DictReader(f)) if i % 50 == 0][:10]
    paths = [HM_ROOT / "images" / r["article_id"][:3] / f"{r['article_id']}.jpg" for r in rows]
    texts = [
        f"{r['prod_name']}. {r['colour_group_name']} {r['product_type_name']}. {r['detail_desc']}"
        for r in rows
    ]
    assert all(p.is_file() for p in paths)
    return paths, texts


@pytest.fixture(scope="module")
def bundle() -> ClipBundle:
    return build_model(ModelConfig(device="cpu"))


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def torch_fx(bundle: ClipBundle) -> FeatureExtractor:
    return FeatureExtractor(bundle, batch_size=4)


@pytest.fixture(scope="module")
def onnx_fx(bundle: ClipBundle, onnx_dir: Path) -> FeatureExtractor:
    fx = FeatureExtractor(bundle, batch_size=4, backend="onnx", onnx_dir=onnx_dir)
    assert fx.backend == "onnx", "the ONNX export failed (see the log)"
    return fx


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match="tower_backend 'tensorrt': expected one of torch, onnx, onnx-int8, openvino, openvino-bf16, openvino-text-bf16",
    ):
        ModelConfig(tower_backend="tensorrt")


@pytest.mark.slow
def test_onnx_features_match_torch_on_real_photos_and_texts(
    torch_fx: FeatureExtractor, onnx_fx: FeatureExtractor, hm_slice: tuple[list[Path], list[str]]
) -> None:
    paths, texts = hm_slice
    want, _ = torch_fx.encode_images(paths)  # batches of 4, 4, 2: traced + eager in torch
    got, failed = onnx_fx.encode_images(paths)
    assert not failed
    cos = _cosines(want, got)
    assert cos.min() >= SAME_FEATURES_COS, cos
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)  # float32 both: ~1e-6 in practice
    # texts: length-sorted batches of 4 with trailing padding of mixed lengths
    t_want, t_got = torch_fx.encode_texts(texts), onnx_fx.encode_texts(texts)
    assert _cosines(t_want, t_got).min() >= SAME_FEATURES_COS
    np.testing.assert_allclose(t_got, t_want, rtol=1e-3, atol=1e-4)
    # the same features, so the same cache key: features cached under torch serve ONNX and back
    assert onnx_fx.model_id == torch_fx.model_id


@pytest.mark.slow
def test_exports_are_reused(
    bundle: ClipBundle, onnx_fx: FeatureExtractor, onnx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = export_folder(onnx_dir, bundle.model_id)
    assert onnx_fx.onnx is not None and onnx_fx.onnx.folder == folder
    assert {"image.onnx", "text.onnx", "meta.json"} <= {p.name for p in folder.iterdir()}
    assert torch.__version__.split("+")[0] in folder.name  # a torch or ORT upgrade exports afresh

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    again = FeatureExtractor(bundle, batch_size=4, backend="onnx", onnx_dir=onnx_dir)
    assert again.backend == "onnx"


@pytest.mark.slow
def test_int8_features_have_their_own_cache_key(
    bundle: ClipBundle,
    torch_fx: FeatureExtractor,
    onnx_dir: Path,
    hm_slice: tuple[list[Path], list[str]],
    tmp_path: Path,
) -> None:
    _, texts = hm_slice
    int8_fx = FeatureExtractor(bundle, batch_size=4, backend="onnx-int8", onnx_dir=onnx_dir)
    assert int8_fx.backend == "onnx-int8"
    want = torch_fx.encode_texts(texts)
    int8 = int8_fx.encode_texts(texts)
    cos = _cosines(want, int8)
    assert cos.min() > 0.95 and cos.max() < SAME_FEATURES_COS  # close, but not the same features

    cache = FeatureCache(tmp_path / "features")
    np.testing.assert_array_equal(cache.get_or_compute_texts(torch_fx, texts), want)
    got = cache.get_or_compute_texts(int8_fx, texts)  # must not be served the cached float32 rows
    assert cache.misses == 2 * len(texts) and cache.hits == 0
    np.testing.assert_allclose(got, int8, rtol=1e-5, atol=1e-6)
    assert int8_fx.model_id != torch_fx.model_id


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["export raises", "onnxruntime missing"])
def test_failed_export_falls_back_to_torch_with_a_warning(
    failure: str,
    bundle: ClipBundle,
    torch_fx: FeatureExtractor,
    hm_slice: tuple[list[Path], list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if failure == "export raises":

        def broken_export(*args, **kwargs):
            raise RuntimeError("unsupported operator aten::made_up")

        monkeypatch.setattr(torch.onnx, "export", broken_export)
    else:
        monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with caplog.at_level(logging.WARNING, logger="ml.features"):
        fx = FeatureExtractor(bundle, batch_size=4, backend="onnx", onnx_dir=tmp_path / "onnx")
    assert fx.backend == "torch" and fx.onnx is None
    (record,) = [r for r in caplog.records if r.name == "ml.features"]
    assert "tower_backend 'onnx' unavailable" in record.getMessage()
    assert "running the towers with PyTorch" in record.getMessage()
    paths, texts = hm_slice
    got, _ = fx.encode_images(paths[:4])
    want, _ = torch_fx.encode_images(paths[:4])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert fx.model_id == torch_fx.model_id


@pytest.mark.slow
def test_openvino_float32_gives_pytorchs_features(
    bundle: ClipBundle, torch_fx: FeatureExtractor, onnx_dir: Path, hm_slice: tuple[list[Path], list[str]]
) -> None:
    paths, texts = hm_slice
    fx = FeatureExtractor(bundle, batch_size=4, backend="openvino", onnx_dir=onnx_dir)
    assert fx.backend == "openvino", "OpenVINO did not load (see the log)"
    got, failed = fx.encode_images(paths)
    want, _ = torch_fx.encode_images(paths)
    assert not failed and _cosines(got, want).min() > SAME_FEATURES_COS
    assert _cosines(fx.encode_texts(texts), torch_fx.encode_texts(texts)).min() > SAME_FEATURES_COS
    assert fx.model_id == torch_fx.model_id  # same features, same cache key


@pytest.mark.slow
def test_openvino_bf16_features_are_close_with_their_own_cache_key(
    bundle: ClipBundle,
    torch_fx: FeatureExtractor,
    onnx_dir: Path,
    hm_slice: tuple[list[Path], list[str]],
    tmp_path: Path,
) -> None:
    if not ov_supports_bf16():
        pytest.skip("this CPU computes no bf16 in OpenVINO (the fallback is tested below)")
    paths, texts = hm_slice
    fx = FeatureExtractor(bundle, batch_size=4, backend="openvino-bf16", onnx_dir=onnx_dir)
    assert fx.backend == "openvino-bf16"
    want, _ = torch_fx.encode_images(paths)
    got, _ = fx.encode_images(paths)
    cos = _cosines(got, want)
    assert cos.mean() > 0.995 and cos.min() > 0.985  # issue 17's bar for a backend with its own features
    assert cos.mean() < SAME_FEATURES_COS  # bf16 rounding shows: not PyTorch's features
    assert _cosines(fx.encode_texts(texts), torch_fx.encode_texts(texts)).min() > 0.995
    assert fx.model_id == torch_fx.model_id + "+ov-bf16"

    cache = FeatureCache(tmp_path / "features")
    cache.get_or_compute_images(torch_fx, paths)
    np.testing.assert_allclose(cache.get_or_compute_images(fx, paths), got, rtol=1e-5, atol=1e-6)
    assert cache.misses == 2 * len(paths) and cache.hits == 0  # never served the float32 rows


@pytest.mark.slow
def test_openvino_text_bf16_keeps_the_image_features_and_rounds_only_the_texts(
    bundle: ClipBundle,
    torch_fx: FeatureExtractor,
    onnx_dir: Path,
    hm_slice: tuple[list[Path], list[str]],
) -> None:
    """The default backend: PyTorch's image features (float32), bf16 text features close to float32's,
    and a cache key of its own (the text rows differ)."""
    if not ov_supports_bf16():
        pytest.skip("this CPU computes no bf16 in OpenVINO (the fallback is tested below)")
    paths, texts = hm_slice
    fx = FeatureExtractor(bundle, batch_size=4, backend="openvino-text-bf16", onnx_dir=onnx_dir)
    assert fx.backend == "openvino-text-bf16" and fx.model_id == torch_fx.model_id + "+ov-bf16text"
    got, _ = fx.encode_images(paths)
    want, _ = torch_fx.encode_images(paths)
    assert _cosines(got, want).min() > SAME_FEATURES_COS  # float32: the image tower is not rounded
    text_cos = _cosines(fx.encode_texts(texts), torch_fx.encode_texts(texts))
    assert text_cos.min() > 0.995 and text_cos.mean() < 0.999999  # bf16 rounding shows, slightly


@pytest.mark.slow
def test_openvino_bf16_runs_float32_on_a_cpu_without_bf16(
    bundle: ClipBundle,
    torch_fx: FeatureExtractor,
    onnx_dir: Path,
    hm_slice: tuple[list[Path], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ml.onnx_towers, "ov_supports_bf16", lambda: False)
    fx = FeatureExtractor(bundle, batch_size=4, backend="openvino-bf16", onnx_dir=onnx_dir)
    assert fx.backend == "openvino" and fx.model_id == torch_fx.model_id
    default = FeatureExtractor(bundle, batch_size=4, backend="openvino-text-bf16", onnx_dir=onnx_dir)
    assert default.backend == "openvino" and default.model_id == torch_fx.model_id
    paths, _ = hm_slice
    got, _ = fx.encode_images(paths[:4])
    want, _ = torch_fx.encode_images(paths[:4])
    assert _cosines(got, want).min() > SAME_FEATURES_COS


@pytest.mark.slow
def test_openvino_missing_falls_back_to_onnx_runtime(
    bundle: ClipBundle,
    onnx_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with caplog.at_level(logging.WARNING, logger="ml.features"):
        fx = FeatureExtractor(bundle, batch_size=4, backend="openvino-bf16", onnx_dir=onnx_dir)
    assert fx.backend == "onnx"
    (record,) = [r for r in caplog.records if r.name == "ml.features"]
    assert "tower_backend 'openvino-bf16' unavailable" in record.getMessage()
    assert "running the towers with ONNX Runtime" in record.getMessage()
