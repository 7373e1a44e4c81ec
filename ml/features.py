"""Batched frozen-tower inference and the on-disk feature cache.

:class:`FeatureExtractor` runs a :class:`~ml.model.ClipBundle`'s encoders over image files, PIL images or
texts in batches and returns NumPy float32 arrays of the model's UNNORMALISED outputs (callers L2-normalise).
On the CPU the image encoder runs in channels_last memory format, traced and frozen with TorchScript
(on 2 cores, EfficientNet-Lite0 at 224 px, batch 32: ~14 img/s eager NCHW, ~23 channels_last, ~39
traced+frozen channels_last; ``python bench/bench_towers.py``). JPEG decoding runs in DataLoader workers
when ``num_workers > 0`` so it overlaps compute. Texts run length-sorted in batches of 32 with dynamic
padding (all-padding columns trimmed): on 2 cores 162 texts/s vs 112 in batches of 128 (1.36x, same run;
as fast as the bare text-tower forward on the same batches), with the same outputs to ~1e-6; ``amp=True`` on
a CPU with native bf16 (AMX / AVX512-BF16) runs the text tower under bf16 autocast for another 1.96x (303
texts/s; cosine to float32 > 0.9999; the image tower gains nothing from bf16 on the CPU and stays float32).
Figures: ``ml/benchmarks/results/towers.json`` (``python -m ml.benchmarks.bench_towers``).

``backend="onnx"`` / ``"openvino"`` / ``"openvino-text-bf16"`` (``ModelConfig.tower_backend``; the last is
the default of :class:`~ml.inference.Embedder` and :func:`tower_features`, :class:`FeatureExtractor` itself
defaults to ``"torch"``) run the towers in ONNX Runtime or OpenVINO instead (``ml.onnx_towers``; figures in
``towers.json`` ``backends`` and docs/benchmarks.md#tower-backends).

:class:`FeatureCache` stores features on disk keyed by (model_id, SHA-256 of the image bytes or text), so
re-indexing a catalogue only encodes new or changed items.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from open_clip.hf_model import HFTextEncoder
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ml.config import DEFAULT_TOWER_BACKEND
from ml.feature_cache import Failure, FeatureCache  # re-exported: their home was this module
from ml.model import ClipBundle
from ml.onnx_towers import OnnxTowers, backend_suffix, check_backend, onnx_towers

logger = logging.getLogger(__name__)


class ImageFiles(Dataset):
    """Image files -> (preprocessed (3, H, W) float32 tensor, error message or "").

    A bad file (missing, truncated, not an image) gives a zero tensor and the reason; it never raises.
    """

    def __init__(self, paths: Sequence[str | Path], preprocess, input_size: tuple[int, int, int]):
        self.paths = [str(p) for p in paths]
        self.preprocess = preprocess
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            with Image.open(self.paths[i]) as im:
                return self.preprocess(im.convert("RGB")), ""
        except Exception as e:  # a bad file (missing, truncated, not an image) is reported, never fatal
            return torch.zeros(self.input_size), f"{type(e).__name__}: {e}"


def _thread_prefetch(dataset: ImageFiles, batch_size: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Batches of ``dataset`` like a DataLoader, decoded one batch ahead in a background thread.

    Works where worker processes cannot start (a Celery prefork worker is a daemonic process).
    Yields ``(x (B, 3, H, W) float32, errors list[str])``.
    """

    def load(start: int) -> tuple[torch.Tensor, list[str]]:
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        return torch.stack([x for x, _ in items]), [e for _, e in items]

    starts = list(range(0, len(dataset), batch_size))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        pending = pool.submit(load, starts[0]) if starts else None
        for k in range(len(starts)):
            batch = pending.result()
            pending = pool.submit(load, starts[k + 1]) if k + 1 < len(starts) else None
            yield batch


class FeatureExtractor:
    """Batched inference with a bundle's frozen encoders.

    Args:
        bundle: the model (see :func:`ml.model.build_model`). Its conv weights are switched to
            channels_last in place when ``channels_last``; the traced encoder snapshots the weights, so
            build a new extractor after changing them.
        batch_size: images per forward pass.
        channels_last: run the image encoder in channels_last memory format (faster convs on CPU and GPU).
        trace: on the CPU, ``torch.jit.trace`` + ``torch.jit.freeze`` the image encoder at the first full batch
            (a few seconds, once) and use it for full batches; falls back to eager (with a warning) if tracing
            fails or the traced outputs differ from eager. Traced and eager outputs agree to ~1e-5 relative.
        num_workers: DataLoader worker processes decoding JPEGs in :meth:`encode_images` (0 = in this
            process; forced to 0 inside daemonic processes such as Celery prefork workers).
        text_batch_size: texts per forward pass (32 is fastest on a 2-core CPU, see the module docstring).
        amp: bf16 autocast, faster and not bit-identical to float32 (changes :attr:`model_id`): on CUDA both
            towers; on a CPU with native bf16 (:func:`cpu_has_bf16`) the text tower only; else ignored
            (and ignored under an ONNX backend).
        backend: ``ModelConfig.tower_backend`` (:data:`ml.config.TOWER_BACKENDS`): ``"torch"``, or on
            the CPU ``"onnx"`` / ``"onnx-int8"`` (both towers in ONNX Runtime) or ``"openvino"`` /
            ``"openvino-bf16"`` / ``"openvino-text-bf16"`` (OpenVINO), any batch size, exported on first
            use into ``onnx_dir`` (:mod:`ml.onnx_towers`). When the runtime is missing or the export fails or disagrees with
            PyTorch, a warning is logged and the next one runs: OpenVINO → ONNX Runtime → PyTorch
            (:attr:`backend` says which runs).
        onnx_dir: the export cache (default :func:`ml.onnx_towers.default_onnx_dir`).
    """

    def __init__(
        self,
        bundle: ClipBundle,
        batch_size: int = 32,
        channels_last: bool = True,
        trace: bool = True,
        num_workers: int = 0,
        text_batch_size: int = 32,
        amp: bool = False,
        backend: str = "torch",
        onnx_dir: str | Path | None = None,
    ):
        assert batch_size > 0 and text_batch_size > 0 and num_workers >= 0
        check_backend(backend)
        self.bundle = bundle
        self.model = bundle.model.eval()
        self.device = bundle.device
        self.batch_size = batch_size
        self.channels_last = channels_last
        self.trace = trace and self.device.type == "cpu"
        self.num_workers = num_workers
        self.text_batch_size = text_batch_size
        self.amp = amp and self.device.type == "cuda"
        self.text_amp = amp and (self.device.type == "cuda" or (self.device.type == "cpu" and cpu_has_bf16()))
        sane_num_threads()
        size = bundle.model.visual.preprocess_cfg["size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.input_size: tuple[int, int, int] = (3, int(h), int(w))
        self._traced: torch.nn.Module | None = None
        self._trace_tried = False
        if channels_last:
            self.model.visual.to(memory_format=torch.channels_last)
        self.onnx: OnnxTowers | None = None
        if backend != "torch" and self.device.type != "cpu":
            logger.info("tower_backend %r is for the CPU; %s runs PyTorch", backend, self.device)
        elif backend != "torch":
            root = Path(onnx_dir) if onnx_dir is not None else None
            chain = (backend, "onnx") if backend.startswith("openvino") else (backend,)
            for i, b in enumerate(chain):
                try:
                    self.onnx = onnx_towers(bundle, b, root)
                    break
                except Exception as e:  # an optimisation; any failure means the next backend
                    logger.warning(
                        "tower_backend %r unavailable (%s: %s); running the towers with %s",
                        b,
                        type(e).__name__,
                        e,
                        "ONNX Runtime" if i + 1 < len(chain) else "PyTorch",
                    )
        #: the backend actually running the towers (``"torch"`` after a fallback)
        self.backend = self.onnx.backend if self.onnx is not None else "torch"
        if self.onnx is not None:
            self.text_amp = False  # ONNX Runtime runs float32 (or int8) only

    @property
    def model_id(self) -> str:
        """The feature-cache key: the bundle's model_id, plus ``+bf16`` when features are computed under
        autocast, plus :func:`ml.onnx_towers.backend_suffix` of the running backend (int8)."""
        amp = "+bf16" if self.amp else "+bf16text" if self.text_amp else ""
        return self.bundle.model_id + amp + backend_suffix(self.backend)

    @property
    def embed_dim(self) -> int:
        return self.bundle.embed_dim

    # ----------------------------------------------------------------------------------------------- images

    def encode_images(
        self,
        paths: Sequence[str | Path],
        progress: bool = False,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> tuple[np.ndarray, list[Failure]]:
        """Encode image files.

        Each file is opened with Pillow, converted to RGB and preprocessed with ``bundle.preprocess``.

        Args:
            paths: N image files.
            progress: show a tqdm progress bar (unit: images).
            on_batch: called after each batch with ``(images done, N)`` (a plain callable, e.g. to
                record progress on a training run).

        Returns:
            ``(features, failed)``: features (N, E) float32, unnormalised; ``failed`` lists
            ``(index, reason)`` for each file that could not be read or decoded (missing, truncated, not an
            image); its row is all zeros. Never raises for a bad file.
        """
        out = np.zeros((len(paths), self.embed_dim), dtype=np.float32)
        failed: list[Failure] = []
        if not paths:
            return out, failed
        dataset = ImageFiles(paths, self.bundle.preprocess, self.input_size)
        workers = self.num_workers
        if workers and multiprocessing.current_process().daemon:
            logger.warning(
                "num_workers=%d ignored: daemonic processes cannot start DataLoader workers", workers
            )
            workers = 0
        if workers:
            loader = DataLoader(
                dataset,
                batch_size=self.batch_size,
                shuffle=False,
                num_workers=workers,
                pin_memory=self.device.type == "cuda",
            )
        else:  # decode the next batch in a thread while this one runs (Pillow releases the GIL)
            loader = _thread_prefetch(dataset, self.batch_size)
        start = 0
        with tqdm(total=len(paths), unit="img", disable=not progress, desc="images") as bar:
            for x, errors in loader:  # (B, 3, H, W) float32, list[str]
                ok = np.array([not e for e in errors])
                for j, e in enumerate(errors):
                    if e:
                        failed.append((start + j, e))
                if ok.any():
                    out[start : start + len(errors)][ok] = self._encode_image_batch(x)[ok]
                start += len(errors)
                bar.update(len(errors))
                if on_batch is not None:
                    on_batch(start, len(paths))
        for i, reason in failed:
            logger.warning("image %d (%s) not encoded: %s", i, paths[i], reason)
        return out, failed

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Encode PIL images (any mode; converted to RGB): N images -> (N, E) float32, unnormalised."""
        out = np.zeros((len(images), self.embed_dim), dtype=np.float32)
        for s in range(0, len(images), self.batch_size):
            x = torch.stack(
                [self.bundle.preprocess(im.convert("RGB")) for im in images[s : s + self.batch_size]]
            )
            out[s : s + len(x)] = self._encode_image_batch(x)
        return out

    def _encode_image_batch(self, x: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) float32 CPU tensor -> (B, E) float32 array.

        Full batches (B == batch_size) use the traced encoder when there is one: it is only ever called at the
        shape it was traced at, so TorchScript never re-specialises; smaller batches (the last one, a single
        query image) run eager.
        """
        if self.onnx is not None:  # any batch size (dynamic batch axis)
            return self.onnx.encode_image(x.numpy())
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        encoder = self._image_encoder() if len(x) == self.batch_size else self.model.encode_image
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            y = encoder(x)  # (B, E)
        return y.float().cpu().numpy()

    def _image_encoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The traced+frozen encoder when enabled and working, else ``model.encode_image``."""
        if self.trace and not self._trace_tried:
            self._trace_tried = True
            self._traced = self._trace_image_encoder()
        return self._traced if self._traced is not None else self.model.encode_image

    def _trace_image_encoder(self) -> torch.nn.Module | None:
        """Trace + freeze the image tower (``model.visual``) at (batch_size, 3, H, W), check it against
        ``model.encode_image`` (tracing only the tower skips the text tower's modules; a few seconds).

        Returns the frozen ScriptModule, or None (eager) when tracing fails or the outputs differ by more
        than 1e-3 of their scale.
        """
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        g = torch.Generator().manual_seed(0)
        example = torch.randn(self.batch_size, *self.input_size, generator=g).contiguous(memory_format=fmt)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings about python control flow in timm/open_clip
                traced = torch.jit.trace(
                    self.model.visual.eval(), example, check_trace=False
                )  # checked below
                traced = torch.jit.freeze(traced)
                expected = self.model.encode_image(example)  # (B, E)
                got = traced(example)
            scale = expected.abs().max().clamp_min(1e-6)
            if got.shape != expected.shape or ((got - expected).abs().max() / scale) > 1e-3:
                raise RuntimeError("traced encoder output differs from eager")
        except Exception as e:  # tracing is an optimisation; any failure means eager
            logger.warning("tracing the image encoder failed (%s: %s); running eager", type(e).__name__, e)
            return None
        return traced

    # ------------------------------------------------------------------------------------------------ texts

    def encode_texts(
        self,
        texts: Sequence[str],
        progress: bool = False,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Encode texts: N strings -> (N, E) float32, unnormalised.

        Texts are tokenised with ``bundle.tokenizer`` (truncated to its context length) and run in batches
        of similar length; for Hugging Face text towers, all-padding columns are trimmed off each batch.
        ``on_batch(texts done, N)`` is called after each batch.
        """
        out = np.zeros((len(texts), self.embed_dim), dtype=np.float32)
        if not texts:
            return out
        tokens = self.bundle.tokenizer(list(texts))  # (N, L) int64
        text_tower = getattr(self.model, "text", None)
        pad_id = text_tower.config.pad_token_id if isinstance(text_tower, HFTextEncoder) else None
        lengths = (tokens != (0 if pad_id is None else pad_id)).sum(1)  # (N,)
        order = torch.argsort(lengths, descending=True, stable=True)
        done = 0
        with tqdm(total=len(texts), unit="text", disable=not progress, desc="texts") as bar:
            for idx in _chunks(order, self.text_batch_size):
                t = tokens[idx]  # (B, L)
                if pad_id is not None:
                    t = t[:, : max(int(lengths[idx].max()), 1)]  # (B, L') trailing padding only
                if self.onnx is not None:
                    out[idx.numpy()] = self.onnx.encode_text(t.numpy())
                else:
                    with (
                        torch.inference_mode(),
                        torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.text_amp),
                    ):
                        y = self.model.encode_text(t.to(self.device))  # (B, E)
                    out[idx.numpy()] = y.float().cpu().numpy()
                bar.update(len(idx))
                done += len(idx)  # (a disabled bar does not count)
                if on_batch is not None:
                    on_batch(done, len(texts))
        return out


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 autocast pays off."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(c()) for c in checks if c is not None)


def sane_num_threads() -> int:
    """Cap torch's intra-op threads at the CPUs this process may run on (containers and ``taskset`` often
    give fewer than ``os.cpu_count()``; oversubscribed threads slow every forward pass). Returns the count."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        allowed = os.cpu_count() or 1
    if torch.get_num_threads() > allowed:
        logger.info(
            "torch threads %d -> %d (CPUs available to this process)", torch.get_num_threads(), allowed
        )
        torch.set_num_threads(allowed)
    return torch.get_num_threads()


def _chunks(order: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for s in range(0, len(order), size):
        yield order[s : s + size]


def tower_features(
    bundle: ClipBundle,
    image_paths: Sequence[str],
    texts: Sequence[str],
    *,
    cache_dir: Path | None = None,
    backend: str = DEFAULT_TOWER_BACKEND,
) -> tuple[np.ndarray, np.ndarray]:
    """Frozen tower features of N items for a training run read straight from a sample folder.

    Args:
        bundle: the :class:`~ml.model.ClipBundle` whose towers encode.
        image_paths: N photo paths; an unreadable one gets zero features (logged, not raised).
        texts: N product texts.
        cache_dir: a :class:`FeatureCache` folder (keyed by file hash and model), or None to compute all.
        backend: ``ModelConfig.tower_backend`` (default :data:`ml.config.DEFAULT_TOWER_BACKEND`).

    Returns:
        ``(image, text)``, each (N, E) float32.
    """
    ex = FeatureExtractor(bundle, batch_size=32, backend=backend)
    if cache_dir is not None:
        cache = FeatureCache(cache_dir)
        img, failed = cache.get_or_compute_images(ex, image_paths, progress=True, return_failed=True)
        txt = cache.get_or_compute_texts(ex, texts)
    else:
        img, failed = ex.encode_images(image_paths, progress=True)
        txt = ex.encode_texts(texts, progress=True)
    if failed:
        logger.warning("%d photos unreadable (zero image features)", len(failed))
    return img, txt
