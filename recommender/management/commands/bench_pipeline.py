"""``python manage.py bench_pipeline``: embedding and training throughput, as ratios to the raw tower forward.

Measured in one run on this machine (``make bench``):

* raw forward: the image tower as served (traced + frozen, channels_last on CPU) on random
  (32, 3, 224, 224) batches: images/s;
* embedding end to end: ``Embedder.embed_items`` on N real product photos and texts (JPEG decode, both
  towers, heads; no feature cache) + the pgvector upsert of the four vectors: items/s;
* training: heads on the tower features of those products (InfoNCE + type + compatibility triplets),
  samples/s (a sample is one item through the image↔text loss or one triplet).

Writes ``ml/benchmarks/results/pipeline.json``. A temporary model version is created and deleted.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
from django.conf import settings
from django.core.management.base import BaseCommand

RESULTS = Path(__file__).resolve().parents[3] / "ml" / "benchmarks" / "results" / "pipeline.json"


class Command(BaseCommand):
    help = "Benchmark embedding (with DB writes) and training throughput against the raw tower forward."

    def add_arguments(self, parser):
        parser.add_argument("--items", type=int, default=256, help="products to embed and train on")
        parser.add_argument("--epochs", type=int, default=3)
        parser.add_argument("--data", default=str(settings.BASE_DIR.parent / "shared" / "data" / "hm"))
        parser.add_argument("--out", default=str(RESULTS))

    def handle(self, *args, **opts):
        from catalog.models import Product
        from catalog.services import catalog_import_hm
        from ml.benchmarks.bench_towers import time_forward
        from ml.config import TrainConfig
        from ml.inference import Embedder
        from ml.tasks import _image_path, build_train_data, model_config
        from ml.train import save_heads, train, zero_shot_heads
        from recommender.models import ModelVersion
        from recommender.services import embeddings_write

        n = opts["items"]
        if Product.objects.count() < n:
            self.stdout.write(f"importing {n} articles first")
            catalog_import_hm(root=opts["data"], limit=n, progress=False)
        products = list(Product.objects.order_by("pk")[:n])
        mcfg = model_config()
        heads = zero_shot_heads(mcfg.embed_dim, settings.COMPAT_DIM)
        emb = Embedder(mcfg, heads, cache_dir=None)
        ex = emb.extractor

        x = torch.randn(32, *ex.input_size)
        ex._encode_image_batch(x)  # traces (CPU) before timing
        raw = time_forward(ex._encode_image_batch, x, warmup=2, iters=6)["items_per_s"]

        tmp = Path(tempfile.mkdtemp())
        version = ModelVersion.objects.create(name="bench (temporary)", config={"model": mcfg.to_dict()},
                                              status=ModelVersion.Status.EMBEDDING)  # fmt: skip
        try:
            save_heads(tmp / "heads.pt", heads, {})
            paths, texts = [_image_path(p) for p in products], [p.text for p in products]
            t = time.perf_counter()
            img, txt, failed = emb.tower_features(paths, texts)
            t_feat = time.perf_counter() - t
            vecs = emb.vectors_from_features(img, txt, failed)
            t_w = time.perf_counter()
            embeddings_write(version=version, product_ids=[p.pk for p in products], image=vecs.image,
                             text=vecs.text, fused=vecs.fused, compat=vecs.compat)  # fmt: skip
            t_write = time.perf_counter() - t_w
            t_embed = time.perf_counter() - t
            data = build_train_data(products, img, txt, val_fraction=0.1, seed=0)
            result = train(data, TrainConfig(epochs=opts["epochs"], batch_size=64, patience=0))
        finally:
            version.delete()
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
        out = {
            "items": len(products), "device": str(ex.device), "torch_threads": torch.get_num_threads(),
            "load_avg_1min": os.getloadavg()[0], "raw_image_forward_items_per_s": raw,
            "embed_end_to_end_items_per_s": len(products) / t_embed,
            "embed_towers_only_items_per_s": len(products) / t_feat,
            "db_write_rows_per_s": len(products) / t_write,
            "train_samples_per_s": result.samples_per_s, "train_steps": result.steps,
        }  # fmt: skip
        out["embed_ratio_to_raw_forward"] = out["embed_end_to_end_items_per_s"] / raw
        out["train_ratio_to_raw_forward"] = out["train_samples_per_s"] / raw
        Path(opts["out"]).parent.mkdir(parents=True, exist_ok=True)
        Path(opts["out"]).write_text(json.dumps(out, indent=1))
        rows = [
            ("raw image tower forward (traced)", raw, "img/s"),
            ("embedding end to end (decode, towers, heads, DB upsert)", out["embed_end_to_end_items_per_s"], "items/s"),
            ("  of which towers incl. decode", out["embed_towers_only_items_per_s"], "items/s"),
            ("  of which pgvector upsert (4 vectors, HNSW)", out["db_write_rows_per_s"], "rows/s"),
            ("training the heads on cached features", out["train_samples_per_s"], "samples/s"),
        ]  # fmt: skip
        for name, v, unit in rows:
            self.stdout.write(f"{name:58s} {v:10.1f} {unit:10s} ratio {v / raw:6.2f}")
        self.stdout.write(f"written to {opts['out']}")
