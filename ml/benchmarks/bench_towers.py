"""Throughput of the default model's towers: raw forward variants, end-to-end image files and texts, and
tower fine-tuning steps.

    python -m ml.benchmarks.bench_towers [--images 128] [--iters 6] [--device cpu]

Measures, with the model built by ``ml.model.build_model(ModelConfig())``:

* image tower forward on random (32, 3, 224, 224) float32 batches: eager NCHW, eager channels_last,
  and (CPU) traced + frozen channels_last / (CUDA) channels_last under bf16 autocast;
* ``FeatureExtractor.encode_images`` end to end on real H&M photos (JPEG decode + preprocessing included),
  with 0 and 1 DataLoader workers;
* ``FeatureExtractor.encode_texts`` on real H&M product texts: the old setting (batches of 128), the
  default (length-sorted batches of 32, dynamic padding), bf16 autocast (``amp=True``, on CPUs with native
  bf16 / on CUDA), and the raw text-tower forward on the same pre-tokenised, trimmed batches (no tokenizer,
  no copies): ratios in ``text_ratios``;
* training steps (``ml.train.train``) on real H&M items, batch ``--tune-batch``: heads only (cached
  features) vs the last image block + last text layer unfrozen (photos decoded and both towers run at each
  step): steps/s and samples/s (items through the InfoNCE batch), ratios in ``fine_tuning``.

Throughputs are images (texts) per second: batch size / median seconds per batch, after warm-up batches.
Writes ``ml/benchmarks/results/towers.json`` (atomically) and prints a table. The 1-minute load average is
recorded: on a shared machine, other processes lower the numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ml.config import ModelConfig, TrainConfig
from ml.dataset import train_data_from_hm
from ml.features import FeatureExtractor
from ml.model import build_model
from ml.train import train

REPO = Path(__file__).resolve().parents[2]
#: What ``--parts`` can name.
ALL_PARTS = {"image", "text", "tune", "backends"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, warmup: int, iters: int
) -> dict:
    """Median/mean seconds of ``fn(x)`` over ``iters`` calls after ``warmup`` calls -> throughput (items/s)."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            _sync(x.device)
            t = time.perf_counter()
            fn(x)
            _sync(x.device)
            if i >= warmup:
                times.append(time.perf_counter() - t)
    median = statistics.median(times)
    return {
        "items_per_s": len(x) / median,
        "median_s": median,
        "mean_s": statistics.mean(times),
        "iters": iters,
    }


def time_call(fn: Callable[[], object], n_items: int, repeats: int) -> dict:
    """Best and median throughput (items/s) of ``fn()`` (which handles ``n_items``) over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {
        "items_per_s": n_items / statistics.median(times),
        "best_items_per_s": n_items / min(times),
        "median_s": statistics.median(times),
        "n_items": n_items,
        "repeats": repeats,
    }


def hm_sample(root: Path, n: int) -> tuple[list[Path], list[str]]:
    """The first ``n`` articles' photos and "name. colour type. description" texts."""
    paths, texts = [], []
    with open(root / "articles.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            a = row["article_id"]
            paths.append(root / "images" / a[:3] / f"{a}.jpg")
            texts.append(
                f"{row['prod_name']}. {row['colour_group_name']} {row['product_type_name']}. {row['detail_desc']}"
            )
            if len(paths) == n:
                break
    return paths, texts


def text_forward_fn(bundle, texts: list[str], batch_size: int) -> Callable[[], None]:
    """A call running the text tower alone (``model.encode_text`` under inference_mode) on pre-tokenised,
    length-sorted, trimmed batches of ``batch_size``: the ceiling for ``encode_texts``."""
    tokens = bundle.tokenizer(texts)  # (N, L) int64
    pad = bundle.model.text.config.pad_token_id
    lengths = (tokens != pad).sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    batches = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batches.append(tokens[idx][:, : int(lengths[idx].max())].to(bundle.device))

    def run() -> None:
        with torch.inference_mode():
            for t in batches:
                bundle.model.encode_text(t)
        _sync(bundle.device)

    return run


def bench_fine_tuning(
    root: Path, device: torch.device, n_items: int, batch: int, steps: int, repeats: int
) -> dict:
    """Seconds per training step of ``ml.train.train``, heads only vs 1 image block + 1 text layer unfrozen.

    A step's time is ``(t(1 + steps) - t(1)) / steps`` over two one-epoch runs (after an untimed warm-up
    run), so model building, setup and the end-of-epoch validation cancel out; the best of ``repeats``. samples/s counts the
    items of the InfoNCE batch (``batch`` photos + texts).
    """
    base = build_model(ModelConfig(device=str(device)))
    data = train_data_from_hm(
        root,
        bundle=base,
        limit=n_items,
        heldout_fraction=0.0,
        val_fraction=0.1,
        cache_dir=REPO / "var" / "features",
    )
    n_train = len(data.image) - len(data.val_items)
    steps = min(steps, n_train // batch - 1)
    if steps < 1:
        raise ValueError(f"{n_train} training items are too few for batch {batch}; raise --tune-items")
    runs: dict[str, dict] = {}
    settings = {
        "heads_only": {},
        "towers_1_block_1_layer": {"unfreeze_last_blocks": 1, "unfreeze_text_layers": 1},
    }
    for (
        extra
    ) in settings.values():  # warm-up: first-call costs (kernel selection, allocations) are not a step
        bundle = build_model(ModelConfig(device=str(device))) if extra else None
        train(data, TrainConfig(epochs=1, max_steps=1, batch_size=batch, patience=0, **extra), bundle=bundle)
    per_step: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(repeats):  # settings interleaved, so a change in the machine's load hits both
        for name, extra in settings.items():
            t = {}
            for k in (1, 1 + steps):
                cfg = TrainConfig(epochs=1, max_steps=k, batch_size=batch, patience=0, **extra)
                bundle = build_model(ModelConfig(device=str(device))) if extra else None
                start = time.perf_counter()
                train(data, cfg, bundle=bundle)
                _sync(device)
                t[k] = time.perf_counter() - start
            per_step[name].append(max(t[1 + steps] - t[1], 1e-9) / steps)
    for name, extra in settings.items():
        s = min(per_step[name])
        runs[name] = {
            "step_s": s,
            "steps_per_s": 1 / s,
            "samples_per_s": batch / s,
            "batch_size": batch,
            "timed_steps": steps,
            "repeats": repeats,
            **extra,
        }
    return {
        "device": str(device),
        "items": len(data.image),
        "runs": runs,
        "step_time_ratio": runs["towers_1_block_1_layer"]["step_s"] / runs["heads_only"]["step_s"],
    }


def bench_images(bundle, paths: list[Path], args: argparse.Namespace, tower: dict, end_to_end: dict) -> None:
    """Image-tower forward variants into ``tower``, ``encode_images`` end to end into ``end_to_end``."""
    device, model = bundle.device, bundle.model
    size = model.visual.preprocess_cfg["size"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, size, size, generator=g).to(device)  # (B, 3, H, W) float32
    print("image tower, NCHW ...", flush=True)
    tower["eager_nchw_fp32"] = time_forward(model.visual, x, args.warmup, args.iters)
    model.visual.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    print("image tower, channels_last ...", flush=True)
    tower["eager_channels_last_fp32"] = time_forward(model.visual, x_cl, args.warmup, args.iters)
    if device.type == "cpu":
        print("image tower, traced + frozen channels_last ...", flush=True)
        t = time.perf_counter()
        with torch.no_grad():
            traced = torch.jit.freeze(torch.jit.trace(model.visual.eval(), x_cl, check_trace=False))
        trace_s = time.perf_counter() - t
        tower["traced_frozen_channels_last_fp32"] = time_forward(traced, x_cl, args.warmup, args.iters)
        tower["traced_frozen_channels_last_fp32"]["trace_freeze_s"] = trace_s
    else:
        print("image tower, channels_last bf16 autocast ...", flush=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            tower["eager_channels_last_bf16_autocast"] = time_forward(
                model.visual, x_cl, args.warmup, args.iters
            )
    for workers in (0, 1):
        fx = FeatureExtractor(bundle, batch_size=args.batch_size, num_workers=workers)
        fx.encode_images(paths[: args.batch_size])  # warm-up (traces the encoder once)
        print(f"encode_images, {len(paths)} H&M photos, {workers} worker(s) ...", flush=True)
        res = time_call(lambda fx=fx: fx.encode_images(paths), len(paths), args.repeats)
        res["traced"] = fx._traced is not None
        end_to_end[f"encode_images_workers{workers}"] = res


def bench_texts(bundle, texts: list[str], rounds: int) -> dict[str, dict]:
    """``encode_texts`` in batches of 128 (the old default), 32 (the default), 32 under bf16 autocast, and the
    raw text-tower forward (:func:`time_text_forward`'s batches), timed in interleaved rounds so a change
    in the machine's load hits every setting alike. Returns ``{setting: time_call-style dict}``."""
    settings = {
        "encode_texts_batch128": dict(text_batch_size=128),
        "encode_texts": dict(text_batch_size=32),
        "encode_texts_bf16": dict(text_batch_size=32, amp=True),
    }
    fns: dict[str, Callable[[], object]] = {}
    info: dict[str, dict] = {}
    for name, kw in settings.items():
        fx = FeatureExtractor(bundle, **kw)
        fns[name] = lambda fx=fx: fx.encode_texts(texts)
        info[name] = {**kw, "model_id": fx.model_id}
    fns["text_tower_raw_forward"] = text_forward_fn(bundle, texts, 32)
    info["text_tower_raw_forward"] = {"text_batch_size": 32}
    timed = interleaved(fns, len(texts), rounds)
    return {name: {**timed[name], **info[name]} for name in fns}


def cosine_stats(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Row-wise cosine of (N, E) ``got`` to (N, E) ``ref``: mean, 1st percentile, min; and the largest
    absolute difference relative to ``ref``'s largest magnitude."""
    a = ref / np.linalg.norm(ref, axis=1, keepdims=True).clip(1e-12)
    b = got / np.linalg.norm(got, axis=1, keepdims=True).clip(1e-12)
    c = (a * b).sum(1)
    return {
        "cos_mean": float(c.mean()),
        "cos_p1": float(np.percentile(c, 1)),
        "cos_min": float(c.min()),
        "max_abs_diff_rel": float(np.abs(got - ref).max() / np.abs(ref).max()),
        "n": len(c),
    }


def interleaved(fns: dict[str, Callable[[], object]], n_items: int, rounds: int) -> dict[str, dict]:
    """Time each of ``fns`` (each handles ``n_items``) once per round, settings interleaved so a change
    in the machine's load hits all alike, after one warm-up call each: items/s of the median and the best
    round (the least disturbed by other processes)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {
        name: {
            "items_per_s": n_items / statistics.median(ts),
            "best_items_per_s": n_items / min(ts),
            "median_s": statistics.median(ts),
            "n_items": n_items,
            "rounds": rounds,
        }
        for name, ts in times.items()
    }


def bench_backends(bundle, args: argparse.Namespace) -> dict:
    """Today's PyTorch path against ONNX Runtime (float32, int8) and OpenVINO (float32, bf16) for both
    towers, in one run.

    Image tower, on ``--images`` real H&M photos decoded once (tower alone, batches of B): PyTorch traced +
    frozen channels_last (B = 32, today's path), ONNX Runtime float32 at B in ``--onnx-batches``, and ONNX
    Runtime int8 static quantisation (QDQ, per-channel weights, calibrated on ``--calib-images`` other real
    photos). Then ``FeatureExtractor.encode_images`` end to end (JPEG decode included) under "torch" and
    "onnx". Text tower: ``encode_texts`` on ``--texts`` real H&M texts under "torch" (batches of 32),
    "onnx" at batches of 16 / 32 / 64 and "onnx-int8" (dynamic int8). "openvino" and "openvino-bf16"
    (batches of 32; bf16 only where the CPU computes it) in all three. Each variant's features are compared
    with today's by cosine (mean, 1st percentile, min). Exports go to a fresh temporary folder, so their
    cost is measured too.
    """
    from ml.features import ImageFiles
    from ml.onnx_towers import ort_session, quantize_image_static

    n_cal = args.calib_images
    all_paths, texts = hm_sample(args.hm_root, max(n_cal + args.images, args.texts))
    cal_paths, paths, texts = all_paths[:n_cal], all_paths[n_cal : n_cal + args.images], texts[: args.texts]
    torch_fx = FeatureExtractor(bundle, batch_size=32)
    files = ImageFiles(paths + cal_paths, bundle.preprocess, torch_fx.input_size)
    print(f"decoding {len(files)} H&M photos once ...", flush=True)
    x = torch.stack([files[i][0] for i in tqdm(range(len(files)), unit="img")])  # (N, 3, H, W) float32
    x, cal = x[: len(paths)], x[len(paths) :].numpy()
    tmp = Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    try:
        t = time.perf_counter()
        onnx_fx = FeatureExtractor(bundle, batch_size=32, backend="onnx", onnx_dir=tmp)
        export_s = time.perf_counter() - t
        if onnx_fx.onnx is None:
            raise RuntimeError("the ONNX export failed (see the warning above)")
        folder = onnx_fx.onnx.folder
        print(f"int8 static quantisation of the image tower, {len(cal)} calibration photos ...", flush=True)
        t = time.perf_counter()
        quantize_image_static(folder / "image.onnx", folder / "image_int8.onnx", cal)
        quant_s = time.perf_counter() - t
        int8_image = ort_session(folder / "image_int8.onnx")
        t = time.perf_counter()
        int8_fx = FeatureExtractor(bundle, batch_size=32, backend="onnx-int8", onnx_dir=tmp)
        int8_text_s = time.perf_counter() - t
        ov_fxs = {
            b: FeatureExtractor(bundle, batch_size=32, backend=b, onnx_dir=tmp)
            for b in ("openvino", "openvino-bf16")
        }
        ov_fxs = {b: fx for b, fx in ov_fxs.items() if fx.backend == b}  # no bf16 CPU: bf16 not measured

        def batched(fn: Callable[[torch.Tensor], np.ndarray], b: int) -> Callable[[], np.ndarray]:
            return lambda: np.concatenate([fn(x[s : s + b]) for s in range(0, len(x), b)])

        traced = torch_fx._image_encoder()

        def torch_batch(xb: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return traced(xb.contiguous(memory_format=torch.channels_last)).numpy()

        image_fns: dict[str, Callable[[], np.ndarray]] = {"torch_traced_frozen_b32": batched(torch_batch, 32)}
        for b in args.onnx_batches:
            image_fns[f"onnx_fp32_b{b}"] = batched(lambda xb: onnx_fx.onnx.encode_image(xb.numpy()), b)
        image_fns["onnx_int8_static_b32"] = batched(
            lambda xb: int8_image.run(None, {"pixels": xb.numpy()})[0], 32
        )
        for b, fx in ov_fxs.items():
            image_fns[f"{b.replace('-', '_')}_b32"] = batched(
                lambda xb, fx=fx: fx.onnx.encode_image(xb.numpy()), 32
            )
        print(f"image tower: {len(image_fns)} variants on {len(x)} photos, {args.text_rounds} rounds ...")
        ref = image_fns["torch_traced_frozen_b32"]()
        image = interleaved(image_fns, len(x), args.text_rounds)
        for name, fn in image_fns.items():
            image[name].update(cosine_stats(ref, fn()))
        print("encode_images end to end (decode included), per backend ...", flush=True)
        e2e = interleaved(
            {
                "torch": lambda: torch_fx.encode_images(paths),
                "onnx": lambda: onnx_fx.encode_images(paths),
                **{b: (lambda fx=fx: fx.encode_images(paths)) for b, fx in ov_fxs.items()},
            },
            len(paths),
            args.text_rounds,
        )
        text_fxs = {
            "torch_b32": torch_fx,
            "onnx_int8_dynamic_b32": int8_fx,
            **{f"{b.replace('-', '_')}_b32": fx for b, fx in ov_fxs.items()},
        }
        for b in (16, 32, 64):
            text_fxs[f"onnx_fp32_b{b}"] = FeatureExtractor(
                bundle, batch_size=32, text_batch_size=b, backend="onnx", onnx_dir=tmp
            )
        print(f"text tower: {len(text_fxs)} variants on {len(texts)} texts ...", flush=True)
        ref_t = torch_fx.encode_texts(texts)
        text = interleaved(
            {name: (lambda fx=fx: fx.encode_texts(texts)) for name, fx in text_fxs.items()},
            len(texts),
            args.text_rounds,
        )
        for name, fx in text_fxs.items():
            text[name].update(cosine_stats(ref_t, fx.encode_texts(texts)), model_id=fx.model_id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base_i = image["torch_traced_frozen_b32"]["best_items_per_s"]
    base_t = text["torch_b32"]["best_items_per_s"]
    return {
        "unit": "photos or texts per second; cosines of each variant's features to today's (torch) ones",
        "load_avg_1min": os.getloadavg()[0],
        "ort_threads": onnx_fx.onnx.image.get_session_options().intra_op_num_threads,
        "export_s": export_s,
        "int8_static_quantisation_s": quant_s,
        "int8_text_quantisation_s": int8_text_s,
        "openvino_bf16_measured": "openvino-bf16" in ov_fxs,
        "calibration_photos": len(cal),
        "image_tower": image,
        "image_end_to_end": e2e,
        "text_tower": text,
        "ratios_to_torch": {  # best rounds
            **{f"image_{k}": v["best_items_per_s"] / base_i for k, v in image.items()},
            **{
                f"image_end_to_end_{k}": v["best_items_per_s"] / e2e["torch"]["best_items_per_s"]
                for k, v in e2e.items()
                if k != "torch"
            },
            **{f"text_{k}": v["best_items_per_s"] / base_t for k, v in text.items()},
        },
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument(
        "--parts",
        default="image,text,tune,backends",
        help="what to measure: subset of image,text,tune,backends (a partial run updates only its sections "
        "of --out)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--images", type=int, default=128, help="real H&M photos for the end-to-end run")
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--text-rounds", type=int, default=3, help="interleaved rounds of the text settings")
    p.add_argument("--tune-items", type=int, default=64, help="H&M articles for the fine-tuning steps")
    p.add_argument("--tune-batch", type=int, default=16, help="batch size of the fine-tuning steps")
    p.add_argument("--tune-steps", type=int, default=3, help="timed fine-tuning steps per run")
    p.add_argument("--repeats", type=int, default=2, help="end-to-end runs per setting")
    p.add_argument("--calib-images", type=int, default=256, help="photos calibrating the int8 image tower")
    p.add_argument("--onnx-batches", type=lambda v: [int(b) for b in v.split(",")], default=[8, 16, 32, 64])
    p.add_argument(
        "--hm-root", type=Path, default=Path(os.environ.get("HM_DATA_DIR", REPO.parent / "shared/data/hm"))
    )
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "towers.json")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    parts = set(args.parts.split(","))
    if not parts <= ALL_PARTS:
        raise SystemExit(f"--parts {args.parts!r}: use a comma-separated subset of {','.join(ALL_PARTS)}")

    bundle = build_model(ModelConfig(device=args.device))
    device = bundle.device
    size = bundle.model.visual.preprocess_cfg["size"]
    partial = parts != ALL_PARTS and args.out.exists()
    old: dict = json.loads(args.out.read_text()) if partial else {}  # a partial run keeps the other sections
    tower: dict[str, dict] = old.get("image_tower_forward", {})
    end_to_end: dict[str, dict] = old.get("end_to_end", {})
    text_ratios: dict[str, float] = old.get("text_ratios", {})
    fine_tuning: dict = old.get("fine_tuning", {"runs": {}, "step_time_ratio": float("nan")})
    load: dict[str, float] = old.get("load_avg_1min_by_part", {})
    backends: dict = old.get("backends", {})
    paths, texts = hm_sample(args.hm_root, max(args.images, args.texts))
    paths, texts = paths[: args.images], texts[: args.texts]
    if "image" in parts:
        bench_images(bundle, paths, args, tower, end_to_end)
        load["image"] = os.getloadavg()[0]
    if "text" in parts:
        print(
            f"texts: {len(texts)} H&M product texts, settings interleaved, {args.text_rounds} rounds ...",
            flush=True,
        )
        end_to_end.update(bench_texts(bundle, texts, args.text_rounds))
        e2e = end_to_end
        text_ratios = {  # from each setting's best round (the least disturbed by other processes)
            "default_vs_batch128": e2e["encode_texts"]["best_items_per_s"]
            / e2e["encode_texts_batch128"]["best_items_per_s"],
            "bf16_vs_default": e2e["encode_texts_bf16"]["best_items_per_s"]
            / e2e["encode_texts"]["best_items_per_s"],
            "default_vs_raw_forward": e2e["encode_texts"]["best_items_per_s"]
            / e2e["text_tower_raw_forward"]["best_items_per_s"],
        }
        load["text"] = os.getloadavg()[0]
    if "tune" in parts:
        print("fine-tuning steps ...", flush=True)
        fine_tuning = bench_fine_tuning(
            args.hm_root, device, args.tune_items, args.tune_batch, args.tune_steps, args.repeats
        )
        load["tune"] = os.getloadavg()[0]
    if "backends" in parts:
        print("tower backends: torch vs ONNX Runtime float32 / int8 ...", flush=True)
        backends = bench_backends(bundle, args)
        load["backends"] = os.getloadavg()[0]

    result = {
        "model_id": bundle.model_id,
        "device": str(device),
        "batch_size": args.batch_size,
        "image_size": size,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "load_avg_1min": os.getloadavg()[0],
        "load_avg_1min_by_part": load,
        "unit": "items per second (images or texts)",
        "image_tower_forward": tower,
        "end_to_end": end_to_end,
        "text_ratios": text_ratios,
        "fine_tuning": fine_tuning,
        "backends": backends,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)

    print(
        f"\n{bundle.model_id} on {device}, batch {args.batch_size}, {size}px, {torch.get_num_threads()} threads"
    )
    print(f"{'measurement':<45} {'items/s':>9}")
    for name, r in tower.items():
        print(f"{'image tower ' + name:<45} {r['items_per_s']:>9.1f}")
    for name, r in end_to_end.items():
        print(f"{name + ' (' + str(r['n_items']) + ')':<45} {r['items_per_s']:>9.1f}")
    for name, r in text_ratios.items():
        print(f"{'texts ' + name:<45} {r:>8.2f}x")
    for name, r in fine_tuning["runs"].items():
        print(
            f"{'fine-tuning ' + name:<45} {r['steps_per_s']:>9.2f} steps/s {r['samples_per_s']:>7.1f} samples/s"
        )
    print(f"{'fine-tuning towers vs heads-only step time':<45} {fine_tuning['step_time_ratio']:>8.1f}x")
    for tower in ("image_tower", "text_tower"):
        for name, r in backends.get(tower, {}).items():
            print(
                f"{tower + ' ' + name:<45} {r['items_per_s']:>9.1f} best {r['best_items_per_s']:>7.1f}  "
                f"cos mean {r['cos_mean']:.5f} p1 {r['cos_p1']:.5f} min {r['cos_min']:.5f}"
            )
    for name, r in backends.get("image_end_to_end", {}).items():
        print(
            f"{'encode_images end to end ' + name:<45} {r['items_per_s']:>9.1f} best {r['best_items_per_s']:>7.1f}"
        )
    print(f"load average (1 min): {load}; written to {args.out}")
    return result


if __name__ == "__main__":
    main()
