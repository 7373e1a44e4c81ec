"""The frozen towers exported to ONNX and run with ONNX Runtime or OpenVINO on the CPU
(``ModelConfig.tower_backend``).

``tower_backend`` names how :class:`~ml.features.FeatureExtractor` runs the towers on the CPU:

* ``"torch"``: PyTorch; the image tower traced + frozen in channels_last (TorchScript);
* ``"onnx"``: both towers exported with ``torch.onnx.export`` (TorchScript exporter, opset
  :data:`ONNX_OPSET`, dynamic batch axis, and a dynamic sequence axis for the text tower) and run by
  ONNX Runtime's CPU execution provider, all graph optimisations on, intra-op threads = the CPUs this
  process may use. Float32 throughout: features agree with PyTorch's to ~1e-6 (relative), so they share
  PyTorch's feature-cache key (``model_id``);
* ``"onnx-int8"``: as ``"onnx"``, with the text tower's MatMul weights quantised to int8 per channel
  (ONNX Runtime dynamic quantisation; activations quantised on the fly). Its features differ from
  float32 beyond 1e-4, so its feature-cache key is ``model_id`` + :func:`backend_suffix`. The image tower
  stays float32: static int8 quantisation (QDQ, per channel, calibrated on real H&M photos) puts its
  features at cosine ~0.93 to float32 (``ml/benchmarks/results/towers.json``), under the 0.995 bar;
* ``"openvino"``: the same exported files compiled by OpenVINO's CPU plugin at float32
  (``INFERENCE_PRECISION_HINT=f32``): PyTorch's features to ~1e-6, the same feature-cache key;
* ``"openvino-bf16"``: OpenVINO with bfloat16 inference precision, on CPUs that compute in bf16
  (AVX512-BF16 or AMX; :func:`ov_supports_bf16`). Features within the 0.995 cosine bar of float32 but
  not equal to them, so a feature-cache key of their own (``+ov-bf16``). Where the CPU has no bf16 it
  runs as ``"openvino"`` (:attr:`OnnxTowers.backend` says so, and the cache key follows);
* ``"openvino-text-bf16"`` (the default): the image tower at float32, the text tower in bf16 (cosine
  0.9999 to float32; cache key ``+ov-bf16text``), ``"openvino"`` on a CPU without bf16. The image tower's
  bf16 rounding (cosine 0.9986 on average) cost complete-the-look a fifth of its Recall@10 in a
  controlled A/B; the text tower's did not show.

ONNX Runtime: https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html.
OpenVINO: https://docs.openvino.ai/2026/openvino-workflow/running-inference/optimize-inference/precision-control.html.
The exported files are built on first use under :func:`default_onnx_dir` in a folder keyed by the
bundle's ``model_id`` (name, weights source, weights fingerprint, preprocessing) and the torch and ONNX
Runtime versions, written atomically, and reused by every later process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ml.config import TOWER_BACKENDS
from ml.model import ClipBundle

logger = logging.getLogger(__name__)

#: Backends whose features differ from PyTorch float32 beyond 1e-4: their own feature-cache key.
_OWN_FEATURES = {"onnx-int8": "+onnx-int8", "openvino-bf16": "+ov-bf16", "openvino-text-bf16": "+ov-bf16text"}
#: The towers each OpenVINO backend runs in bf16 (the others in float32).
_BF16_TOWERS = {"openvino-bf16": ("image", "text"), "openvino-text-bf16": ("text",)}
#: ONNX opset of the exports (17: LayerNormalization; every op of the two towers is in it).
ONNX_OPSET = 17
#: Outputs of an export must match PyTorch's to this fraction of their largest magnitude.
EXPORT_TOLERANCE = 1e-3
#: A bf16 backend's outputs must have at least this cosine to PyTorch's, item by item (the check batch).
BF16_MIN_COSINE = 0.99


def backend_suffix(backend: str) -> str:
    """What ``backend`` adds to a model_id in the feature cache: ``""`` when its features are PyTorch's
    float32 ones to ~1e-6 (``"torch"``, ``"onnx"``, ``"openvino"``), else e.g. ``"+onnx-int8"``.

    Raises:
        ValueError: ``backend`` is not one of :data:`TOWER_BACKENDS`.
    """
    check_backend(backend)
    return _OWN_FEATURES.get(backend, "")


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is one of :data:`TOWER_BACKENDS`, else raise ValueError naming them."""
    if backend not in TOWER_BACKENDS:
        raise ValueError(f"tower_backend {backend!r}: expected one of {', '.join(TOWER_BACKENDS)}")
    return backend


def default_onnx_dir() -> Path:
    """Where exported towers are kept: ``$ML_ONNX_DIR``, else ``$XDG_CACHE_HOME/outfitlab/onnx``
    (``~/.cache/outfitlab/onnx``)."""
    if os.environ.get("ML_ONNX_DIR"):
        return Path(os.environ["ML_ONNX_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "outfitlab" / "onnx"


def export_folder(root: Path, model_id: str) -> Path:
    """The folder of one model's exports under ``root``: ``<sha256(model_id)[:16]>-torch<v>-ort<v>``."""
    import onnxruntime as ort

    key = hashlib.sha256(model_id.encode()).hexdigest()[:16]
    return Path(root) / f"{key}-torch{torch.__version__.split('+')[0]}-ort{ort.__version__}"


def cpu_threads() -> int:
    """The CPUs this process may run on (``sched_getaffinity``; ``os.cpu_count()`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _TextTower(nn.Module):
    """``model.encode_text`` as a module: (B, L) int64 token ids -> (B, E) float32 (padding masked inside)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids)


def _atomic_export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, axes: dict) -> None:
    """``torch.onnx.export`` of ``module`` (eval mode) at ``example`` into ``path``, via a temporary file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    module.eval()  # the exporter restores the wrapper's mode on every submodule afterwards
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation notice
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                input_names=[input_name],
                output_names=["features"],
                dynamic_axes={input_name: axes, "features": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_quantize_dynamic(src: Path, dst: Path) -> None:
    """Int8 dynamic quantisation (weights per channel, MatMul only) of ``src`` into ``dst``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    logging.disable(logging.INFO)  # the quantiser logs a line per tensor on the root logger
    try:
        quantize_dynamic(
            str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
        )
        os.replace(tmp, dst)
    finally:
        logging.disable(logging.NOTSET)
        tmp.unlink(missing_ok=True)


def export_towers(bundle: ClipBundle, folder: Path, *, int8_text: bool = False) -> dict[str, Path]:
    """Export the bundle's image and text towers to ONNX in ``folder`` (files already there are reused).

    Args:
        bundle: the model; its towers must be on the CPU in eval mode (the image tower may be in
            channels_last; the export is layout-independent).
        folder: :func:`export_folder`; created if missing. ``meta.json`` there names the model_id.
        int8_text: also write the text tower with int8 MatMul weights (``text_int8.onnx``).

    Returns:
        ``{"image": image.onnx, "text": text.onnx or text_int8.onnx}``.

    Raises:
        Exception: whatever the exporter or the quantiser raise (callers fall back to PyTorch).
    """
    folder.mkdir(parents=True, exist_ok=True)
    model = bundle.model
    size = model.visual.preprocess_cfg["size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    image, text = folder / "image.onnx", folder / "text.onnx"
    if not image.exists():
        logger.info("exporting the image tower of %s to %s", bundle.model_id, image)
        x = torch.zeros(2, 3, int(h), int(w))  # (B, 3, H, W); batch axis dynamic
        _atomic_export(model.visual, x, image, "pixels", {0: "batch"})
    if not text.exists():
        logger.info("exporting the text tower of %s to %s", bundle.model_id, text)
        ids = bundle.tokenizer(["a long black dress with a belt", "jeans"])  # (2, L) int64, padded
        _atomic_export(_TextTower(model), ids[:, :16], text, "input_ids", {0: "batch", 1: "tokens"})
    model.eval()
    meta = folder / "meta.json"
    if not meta.exists():
        meta.write_text(json.dumps({"model_id": bundle.model_id, "opset": ONNX_OPSET}, indent=1) + "\n")
    if int8_text:
        quant = folder / "text_int8.onnx"
        if not quant.exists():
            _atomic_quantize_dynamic(text, quant)
        text = quant
    return {"image": image, "text": text}


def ort_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session of ``path``: all graph optimisations, ``threads`` intra-op threads
    (default :func:`cpu_threads`), one inter-op thread, sequential execution."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or cpu_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ov_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bfloat16 on this CPU (AVX512-BF16 or AMX).

    Raises:
        ImportError: openvino is not installed.
    """
    return "BF16" in _ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


_OV_CORE = None


def _ov_core():
    """The process's one ``openvino.Core`` (plugin discovery once, not per session or check).

    Raises:
        ImportError: openvino is not installed (checked on every call).
    """
    global _OV_CORE
    import openvino as ov

    if _OV_CORE is None:
        _OV_CORE = ov.Core()
    return _OV_CORE


class OvSession:
    """An ONNX file compiled by OpenVINO for the CPU, called like an ONNX Runtime session.

    Args:
        path: the ``.onnx`` file (dynamic axes kept).
        precision: ``"f32"`` or ``"bf16"`` (OpenVINO's ``INFERENCE_PRECISION_HINT``).
        threads: inference threads (default :func:`cpu_threads`).

    One stream (``PERFORMANCE_HINT=LATENCY``): a batch uses every thread. Each :meth:`run` makes its own
    infer request, so threads may share a session.
    """

    def __init__(self, path: Path, precision: str, threads: int | None = None):
        core = _ov_core()
        self.compiled = core.compile_model(
            core.read_model(str(path)),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": precision,
                "INFERENCE_NUM_THREADS": threads or cpu_threads(),
                "PERFORMANCE_HINT": "LATENCY",
            },
        )

    def run(self, _outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``feeds`` (one input by name) -> ``[output]``, as ``InferenceSession.run(None, feeds)``."""
        (x,) = feeds.values()
        out = self.compiled.create_infer_request().infer([x])
        return [np.array(out[0], dtype=np.float32)]  # a copy: the request's buffer is reused


@dataclass
class OnnxTowers:
    """The two towers as ONNX Runtime sessions.

    Attributes:
        image: session of the image tower, input ``pixels`` (B, 3, H, W) float32 -> (B, E) float32
            (an ONNX Runtime ``InferenceSession`` or an :class:`OvSession`).
        text: session of the text tower, input ``input_ids`` (B, L) int64 -> (B, E) float32.
        backend: the backend running: ``"onnx"``, ``"onnx-int8"``, ``"openvino"``, ``"openvino-bf16"`` or
            ``"openvino-text-bf16"``.
        folder: where the files are.
    """

    image: object
    text: object
    backend: str
    folder: Path

    def encode_image(self, x: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 preprocessed photos -> (B, E) float32, unnormalised."""
        return self.image.run(None, {"pixels": np.ascontiguousarray(x, dtype=np.float32)})[0]

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        """(B, L) int64 token ids (trailing padding allowed) -> (B, E) float32, unnormalised."""
        return self.text.run(None, {"input_ids": np.ascontiguousarray(ids, dtype=np.int64)})[0]


def onnx_towers(
    bundle: ClipBundle, backend: str, root: Path | None = None, threads: int | None = None
) -> OnnxTowers:
    """The bundle's towers as ONNX Runtime sessions, exported on first use and checked against PyTorch.

    Args:
        bundle: the model (CPU).
        backend: ``"onnx"``, ``"onnx-int8"``, ``"openvino"``, ``"openvino-bf16"`` or
            ``"openvino-text-bf16"`` (the last two run as ``"openvino"`` where :func:`ov_supports_bf16` is
            false).
        root: the export cache (default :func:`default_onnx_dir`).
        threads: intra-op threads (default :func:`cpu_threads`).

    Returns:
        :class:`OnnxTowers`.

    Raises:
        ValueError: ``backend`` is ``"torch"`` or unknown.
        RuntimeError: an exported float32 tower's output differs from PyTorch's by more than
            :data:`EXPORT_TOLERANCE` of its scale, or a bf16 one's cosine is under
            :data:`BF16_MIN_COSINE` (the check runs on every load).
        ImportError, OSError, Exception: onnxruntime (or openvino) missing, the folder not writable, the
            export failing.
    """
    if check_backend(backend) == "torch":
        raise ValueError("onnx_towers: backend 'torch' has no ONNX sessions")
    folder = export_folder(root or default_onnx_dir(), bundle.model_id)
    files = export_towers(bundle, folder, int8_text=backend == "onnx-int8")
    if backend in _BF16_TOWERS and not ov_supports_bf16():
        logger.info("this CPU computes no bf16 in OpenVINO: tower_backend %r runs as 'openvino'", backend)
        backend = "openvino"
    bf16 = _BF16_TOWERS.get(backend, ())  # the towers checked by cosine, not by difference
    if backend.startswith("openvino"):
        image, text = (
            OvSession(files[k], "bf16" if k in bf16 else "f32", threads) for k in ("image", "text")
        )
    else:
        image, text = (ort_session(files[k], threads) for k in ("image", "text"))
    towers = OnnxTowers(image=image, text=text, backend=backend, folder=folder)
    _check_against_torch(bundle, towers, check_text=backend != "onnx-int8", bf16=bf16)
    return towers


def _check_against_torch(
    bundle: ClipBundle, towers: OnnxTowers, *, check_text: bool, bf16: tuple[str, ...] = ()
) -> None:
    """Run a seeded random image batch (and a padded text batch) through both; raise RuntimeError when
    the largest difference exceeds :data:`EXPORT_TOLERANCE` of the largest PyTorch output magnitude
    (the towers named in ``bf16``: when an item's cosine to PyTorch's output is under
    :data:`BF16_MIN_COSINE`)."""
    model = bundle.model
    size = model.visual.preprocess_cfg["size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, int(h), int(w), generator=g)  # (3, 3, H, W)
    checks = [("image", model.encode_image, towers.encode_image, x)]
    if check_text:
        ids = bundle.tokenizer(["a red dress", "white leather sneakers with a thick sole", "jeans"])
        pad = getattr(getattr(model.text, "config", None), "pad_token_id", None) or 0
        ids = ids[:, : int((ids != pad).sum(1).max()) + 1]  # (3, L'), one padding column at least
        checks.append(("text", model.encode_text, towers.encode_text, ids))
    for name, ref_fn, ort_fn, inp in checks:
        with torch.inference_mode():
            ref = ref_fn(inp).float().numpy()  # (B, E)
        got = ort_fn(inp.numpy())
        if name in bf16 and got.shape == ref.shape:
            cos = (got * ref).sum(1) / np.maximum(
                np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-12
            )
            if float(cos.min()) < BF16_MIN_COSINE:
                raise RuntimeError(
                    f"the bf16 {name} tower in {towers.folder} has cosine {float(cos.min()):.4f} to PyTorch"
                )
            continue
        scale = max(float(np.abs(ref).max()), 1e-6)
        err = float(np.abs(got - ref).max()) / scale if got.shape == ref.shape else float("inf")
        if err > EXPORT_TOLERANCE:
            raise RuntimeError(
                f"the ONNX {name} tower in {towers.folder} differs from PyTorch by {err:.2e} of its scale"
            )


def quantize_image_static(src: Path, dst: Path, calibration: np.ndarray, batch_size: int = 32, **kw) -> None:
    """Int8 static quantisation of an exported image tower (measured in ``ml.benchmarks.bench_towers``;
    no backend serves it, see the module docstring): QDQ format, weights int8 per channel, activations
    uint8 with ranges calibrated on ``calibration``.

    Args:
        src: ``image.onnx`` of :func:`export_towers`.
        dst: the int8 model to write.
        calibration: (N, 3, H, W) float32 preprocessed real photos (a few hundred).
        batch_size: photos per calibration batch.
        kw: more ``onnxruntime.quantization.quantize_static`` arguments (e.g. ``calibrate_method``).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(calibration), batch_size))

        def get_next(self) -> dict | None:
            s = next(self.batches, None)
            return None if s is None else {"pixels": np.ascontiguousarray(calibration[s : s + batch_size])}

    pre = dst.with_name(f"{dst.stem}.pre.onnx")
    quant_pre_process(str(src), str(pre))  # shape inference + graph optimisation, as ORT recommends
    try:
        quantize_static(
            str(pre),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            **kw,
        )
    finally:
        pre.unlink(missing_ok=True)
