"""Throughput of the default model's towers: raw image-tower forward variants, end-to-end image files, texts.

    python -m ml.benchmarks.bench_towers [--images 128] [--iters 6] [--device cpu]

Measures, with the model built by ``ml.model.build_model(ModelConfig())``:

* image tower forward on random (32, 3, 224, 224) float32 batches: eager NCHW, eager channels_last,
  and (CPU) traced + frozen channels_last / (CUDA) channels_last under bf16 autocast;
* ``FeatureExtractor.encode_images`` end to end on real H&M photos (JPEG decode + preprocessing included),
  with 0 and 1 DataLoader workers;
* ``FeatureExtractor.encode_texts`` on real H&M product texts.

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
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ml.config import ModelConfig
from ml.features import FeatureExtractor
from ml.model import build_model

REPO = Path(__file__).resolve().parents[2]


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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--images", type=int, default=128, help="real H&M photos for the end-to-end run")
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2, help="end-to-end runs per setting")
    p.add_argument(
        "--hm-root", type=Path, default=Path(os.environ.get("HM_DATA_DIR", REPO.parent / "shared/data/hm"))
    )
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "towers.json")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")

    bundle = build_model(ModelConfig(device=args.device))
    device, model = bundle.device, bundle.model
    size = bundle.model.visual.preprocess_cfg["size"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, size, size, generator=g).to(device)  # (B, 3, H, W) float32
    tower: dict[str, dict] = {}

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

    paths, texts = hm_sample(args.hm_root, max(args.images, args.texts))
    paths, texts = paths[: args.images], texts[: args.texts]
    end_to_end: dict[str, dict] = {}
    for workers in (0, 1):
        fx = FeatureExtractor(bundle, batch_size=args.batch_size, num_workers=workers)
        fx.encode_images(paths[: args.batch_size])  # warm-up (traces the encoder once)
        print(f"encode_images, {len(paths)} H&M photos, {workers} worker(s) ...", flush=True)
        res = time_call(lambda fx=fx: fx.encode_images(paths), len(paths), args.repeats)
        res["traced"] = fx._traced is not None
        end_to_end[f"encode_images_workers{workers}"] = res
    fx = FeatureExtractor(bundle, batch_size=args.batch_size)
    fx.encode_texts(texts[:64])
    print(f"encode_texts, {len(texts)} H&M product texts ...", flush=True)
    end_to_end["encode_texts"] = time_call(lambda: fx.encode_texts(texts), len(texts), args.repeats)

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
        "unit": "items per second (images or texts)",
        "image_tower_forward": tower,
        "end_to_end": end_to_end,
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
        label = f"{name} ({r['n_items']})"
        print(f"{label:<45} {r['items_per_s']:>9.1f}")
    print(f"load average (1 min) at the end: {result['load_avg_1min']:.2f}; written to {args.out}")
    return result


if __name__ == "__main__":
    main()
