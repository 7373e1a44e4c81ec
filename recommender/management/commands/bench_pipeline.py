"""``python manage.py bench_pipeline``: the pipeline's throughput and latency, as ratios measured in one run.

Measured in one run on this machine (``make bench``):

* raw forward: the image tower as served (traced + frozen, channels_last on CPU) on random
  (32, 3, 224, 224) batches: images/s;
* inference alone: ``Embedder.tower_features`` (JPEG decode, both towers; no feature cache) + the heads
  on N real product photos and texts: items/s;
* bulk re-embed from cached tower features (a training run's embedding phase): heads + write;
* bulk re-embed: inference + the pgvector write of the four vectors, once with the ORM upsert
  (``bulk_create(update_conflicts=True)``, the old path) and once with binary ``COPY`` into a temporary
  table + one ``INSERT ... ON CONFLICT DO UPDATE`` (the current path): items/s, and each write alone
  in rows/s (the HNSW index inserts dominate both);
* tower backends (``--backends``, default torch, onnx and openvino-bf16; ``ModelConfig.tower_backend``): decode + both
  towers + heads + the ``COPY`` write per backend, items/s and the ratio to torch in this run (the
  settings' ``ML_TOWER_BACKEND`` gives the main figures above);
* training: heads on the tower features of those products, samples/s;
* upload-to-searchable latency: a real ``celery worker`` (queue ``embedding``, warmed by one upload)
  and ``--uploads`` products created through ``catalog.services.product_create``; the clock runs from
  the call until the product's vector row is visible, and each upload must be the nearest neighbour of
  its own photo (``selectors.photo_search``): p50 / p95 / max in ms.

Writes ``ml/benchmarks/results/pipeline.json``. Temporary model versions and the uploaded products
are deleted afterwards; when no version is active, a zero-shot one is activated for the latency part
and removed again.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from tqdm import tqdm

from catalog.hm_import import catalog_import_hm
from catalog.models import Product
from catalog.services import product_create
from ml.benchmarks.bench_towers import time_forward
from ml.config import TrainConfig
from ml.data import read_articles
from ml.heads import save_heads, zero_shot_heads
from ml.inference import Embedder
from ml.train import train
from recommender import ml_bridge, runtime, selectors
from recommender.celery import app
from recommender.models import ModelVersion, ProductEmbedding
from recommender.services import embeddings_write, model_version_activate

RESULTS = Path(__file__).resolve().parents[3] / "ml" / "benchmarks" / "results" / "pipeline.json"


def _percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation (numpy's default)."""
    return float(np.percentile(np.asarray(values), q))


def _stop_and_clean(worker, product_ids: list[int]) -> None:
    """Stop the benchmark's worker and delete the products it created, with their files."""
    runtime.stop_worker(worker)
    for p in Product.objects.filter(pk__in=product_ids):
        p.image.delete(save=False)
        p.thumbnail.delete(save=False)
        p.delete()


class Command(BaseCommand):
    help = "Benchmark re-embedding (COPY vs ORM upsert), training, and upload-to-searchable latency."

    def add_arguments(self, parser):
        parser.add_argument("--items", type=int, default=256, help="products to embed and train on")
        parser.add_argument("--epochs", type=int, default=3)
        parser.add_argument("--uploads", type=int, default=10, help="uploads timed through a warm worker")
        parser.add_argument("--data", default=str(settings.HM_DATA_DIR), help="the H&M sample (HM_DATA_DIR)")
        parser.add_argument("--out", default=str(RESULTS))
        parser.add_argument(
            "--worker-uploads",
            type=int,
            default=0,
            help="also time this many uploads through 1 and then 2 embedding worker processes (0: skip)",
        )
        parser.add_argument(
            "--only-workers",
            action="store_true",
            help="run only the worker measurement (--worker-uploads), merged into --out",
        )
        parser.add_argument(
            "--backends",
            default="torch,onnx,openvino-bf16",
            help="tower backends timed end to end in this run (ModelConfig.tower_backend), comma-separated; "
            "the settings' ML_TOWER_BACKEND gives the main figures",
        )

    def handle(self, *args, **opts):

        if Product._meta.db_table not in connection.introspection.table_names():
            raise CommandError(
                "the database has no tables yet: run `make migrate` (python manage.py migrate) first"
            )
        if opts["only_workers"]:
            if opts["worker_uploads"] <= 0:
                raise CommandError("--only-workers needs --worker-uploads N (N > 0)")
            out = Path(opts["out"])
            results = json.loads(out.read_text()) if out.exists() else {}
            results["workers"] = self._worker_throughput(opts["worker_uploads"], Path(opts["data"]))
            results["workers"]["load_avg"] = [round(x, 2) for x in os.getloadavg()]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))
            self.stdout.write(f"written to {out}")
            return

        n = opts["items"]
        if Product.objects.count() < n:
            self.stdout.write(f"importing {n} articles first")
            catalog_import_hm(root=opts["data"], limit=n, progress=False)
        products = list(Product.objects.order_by("pk")[:n])
        mcfg = ml_bridge.model_config()
        heads = zero_shot_heads(mcfg.embed_dim, settings.COMPAT_DIM)
        backends = list(dict.fromkeys([mcfg.tower_backend, *opts["backends"].split(",")]))
        embedders = {b: Embedder(replace(mcfg, tower_backend=b), heads, cache_dir=None) for b in backends}
        emb = embedders[mcfg.tower_backend]
        ex = emb.extractor

        x = torch.randn(32, *ex.input_size)
        ex._encode_image_batch(x)  # traces (CPU) before timing
        raw = time_forward(ex._encode_image_batch, x, warmup=2, iters=6)["items_per_s"]

        tmp = Path(tempfile.mkdtemp())
        versions = {
            m: ModelVersion.objects.create(
                name=f"bench {m} (temporary)",
                config={"model": mcfg.to_dict()},
                status=ModelVersion.Status.EMBEDDING,
            )
            for m in ("bulk_create", "copy", *(f"copy-{b}" for b in backends))
        }
        ids = [p.pk for p in products]
        try:
            save_heads(tmp / "heads.pt", heads, {})
            paths, texts = ml_bridge.product_inputs(products)
            per_backend: dict[str, dict] = {}
            for b, e in embedders.items():  # decode + both towers + heads + COPY write, per backend
                self.stdout.write(f"tower backend {b!r} (running: {e.extractor.backend!r}) ...")
                e.tower_features(paths[:32], texts[:32])  # warm-up: tracing, first-run allocations
                t = time.perf_counter()
                img_b, txt_b, failed_b = e.tower_features(paths, texts, progress=True)
                t_h = time.perf_counter()
                vecs_b = e.vectors_from_features(img_b, txt_b, failed_b)
                t_heads_b = time.perf_counter() - t_h
                t_infer_b = time.perf_counter() - t
                t = time.perf_counter()
                embeddings_write(
                    version=versions[f"copy-{b}"],
                    product_ids=ids,
                    image=vecs_b.image,
                    text=vecs_b.text,
                    fused=vecs_b.fused,
                    compat=vecs_b.compat,
                    method="copy",
                )
                t_write_b = time.perf_counter() - t
                per_backend[b] = {
                    "running": e.extractor.backend,
                    "inference_items_per_s": len(products) / t_infer_b,
                    "reembed_copy_items_per_s": len(products) / (t_infer_b + t_write_b),
                    "load_avg_1min": os.getloadavg()[0],
                    "_out": (img_b, txt_b, failed_b, vecs_b, t_infer_b, t_heads_b),
                }
            img, txt, failed, vecs, t_infer, t_heads = per_backend[mcfg.tower_backend]["_out"]
            for r in per_backend.values():
                r["reembed_copy_ratio_to_torch"] = (
                    r["reembed_copy_items_per_s"] / per_backend["torch"]["reembed_copy_items_per_s"]
                    if "torch" in per_backend
                    else float("nan")
                )
            write_s = {}
            for method in ("bulk_create", "copy"):  # same rows, same table, one after the other
                version = versions[method]
                t = time.perf_counter()
                embeddings_write(
                    version=version,
                    product_ids=ids,
                    image=vecs.image,
                    text=vecs.text,
                    fused=vecs.fused,
                    compat=vecs.compat,
                    method=method,
                )
                write_s[method] = time.perf_counter() - t
            data = ml_bridge.train_data(products, img, txt, val_fraction=0.1)
            result = train(data, TrainConfig(epochs=opts["epochs"], batch_size=64, patience=0))
        finally:
            for version in versions.values():
                version.delete()
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
        out = {
            "items": len(products),
            "tower_backend": mcfg.tower_backend,
            "tower_backend_running": ex.backend,
            "backends": {b: {k: v for k, v in r.items() if k != "_out"} for b, r in per_backend.items()},
            "device": str(ex.device),
            "torch_threads": torch.get_num_threads(),
            "load_avg_1min": os.getloadavg()[0],
            "raw_image_forward_items_per_s": raw,
            "inference_items_per_s": len(products) / t_infer,
            "reembed_copy_items_per_s": len(products) / (t_infer + write_s["copy"]),
            "reembed_orm_upsert_items_per_s": len(products) / (t_infer + write_s["bulk_create"]),
            "reembed_from_features_copy_items_per_s": len(products) / (t_heads + write_s["copy"]),
            "reembed_from_features_orm_upsert_items_per_s": len(products)
            / (t_heads + write_s["bulk_create"]),
            "db_write_copy_rows_per_s": len(products) / write_s["copy"],
            "db_write_orm_upsert_rows_per_s": len(products) / write_s["bulk_create"],
            "train_samples_per_s": result.samples_per_s,
            "train_steps": result.steps,
        }
        out["reembed_ratio_to_inference"] = out["reembed_copy_items_per_s"] / out["inference_items_per_s"]
        out["reembed_ratio_to_orm_upsert"] = (
            out["reembed_copy_items_per_s"] / out["reembed_orm_upsert_items_per_s"]
        )
        out["db_write_copy_to_orm_upsert"] = (
            out["db_write_copy_rows_per_s"] / out["db_write_orm_upsert_rows_per_s"]
        )
        out["embed_ratio_to_raw_forward"] = out["reembed_copy_items_per_s"] / raw
        out["train_ratio_to_raw_forward"] = out["train_samples_per_s"] / raw
        if opts["uploads"] > 0:
            out.update(self._upload_latency(opts["uploads"], Path(opts["data"])))
        Path(opts["out"]).parent.mkdir(parents=True, exist_ok=True)
        Path(opts["out"]).write_text(json.dumps(out, indent=1))
        rows = [
            ("raw image tower forward (traced)", raw, "img/s"),
            ("inference alone (decode, towers, heads)", out["inference_items_per_s"], "items/s"),
            ("bulk re-embed, COPY + merge (current)", out["reembed_copy_items_per_s"], "items/s"),
            ("bulk re-embed, ORM upsert (old)", out["reembed_orm_upsert_items_per_s"], "items/s"),
            (
                "re-embed from cached tower features, COPY (training run)",
                out["reembed_from_features_copy_items_per_s"],
                "items/s",
            ),
            (
                "re-embed from cached tower features, ORM upsert (old)",
                out["reembed_from_features_orm_upsert_items_per_s"],
                "items/s",
            ),
            ("  pgvector write alone, COPY + merge", out["db_write_copy_rows_per_s"], "rows/s"),
            ("  pgvector write alone, ORM upsert", out["db_write_orm_upsert_rows_per_s"], "rows/s"),
            ("training the heads on cached features", out["train_samples_per_s"], "samples/s"),
        ]
        for name, v, unit in rows:
            self.stdout.write(f"{name:58s} {v:10.1f} {unit:10s} ratio to raw {v / raw:6.2f}")
        for b, r in out["backends"].items():
            self.stdout.write(
                f"tower backend {b:10s} (running {r['running']}): decode + towers + heads + COPY "
                f"{r['reembed_copy_items_per_s']:7.1f} items/s, {r['reembed_copy_ratio_to_torch']:.2f}x torch "
                f"(load {r['load_avg_1min']:.1f})"
            )
        self.stdout.write(
            f"re-embed / inference alone: {out['reembed_ratio_to_inference']:.2f}; "
            f"COPY / ORM upsert: {out['reembed_ratio_to_orm_upsert']:.2f} end to end, "
            f"{out['db_write_copy_to_orm_upsert']:.2f} for the write alone"
        )
        if "upload_to_searchable_ms" in out:
            lat = out["upload_to_searchable_ms"]
            self.stdout.write(
                f"upload to searchable (warm worker, {lat['n']} uploads): p50 {lat['p50']:.0f} ms, "
                f"p95 {lat['p95']:.0f} ms, max {lat['max']:.0f} ms; nearest neighbour of its own "
                f"photo {lat['own_nearest']}/{lat['n']}"
            )
        self.stdout.write(f"written to {opts['out']}")

    def _worker_throughput(self, uploads: int, data: Path, processes: tuple[int, ...] = (1, 2)) -> dict:
        """Uploads per second through the ``embedding`` queue with 1, then 2, worker processes.

        For each count: a real worker (``-c`` processes, prefork), warmed by two uploads per process; then
        ``uploads`` products are created through ``product_create`` (each commits and enqueues its own
        embedding task, as a merchandiser's uploads do) and the clock runs from the first create until
        every one has its vector row. The products are deleted after. Needs an active model version.

        Raises:
            CommandError: no active version, the worker does not start, or uploads are not embedded
                within 10 minutes.
        """
        self.stdout.write(runtime.ensure_redis(settings.CELERY_BROKER_URL, settings.VAR_DIR))
        active = ModelVersion.objects.filter(is_active=True).first()
        if active is None:
            raise CommandError("no active model version: run `make demo` (or train one) first")
        articles, _ = read_articles(data)
        out: dict = {"uploads": uploads, "version": active.pk, "per_processes": {}}
        for n_proc in processes:
            log = settings.VAR_DIR / "logs" / f"bench-worker-{n_proc}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            runtime.purge_queues(app, ("embedding",))
            proc = runtime.start_worker(
                queues="embedding",
                concurrency=n_proc,
                logfile=log,
                name=f"bench{n_proc}-{os.getpid()}",
                env={"DATABASE_URL": runtime.database_url(connection.settings_dict)},
            )
            created: list[int] = []

            def upload_all(batch, tag: str, log=log, created=created) -> float:
                t0 = time.perf_counter()
                ids = []
                for art in batch:
                    p = product_create(
                        sku=f"BENCH-{tag}-{art.article_id}",
                        title=art.title,
                        slot=art.slot,
                        image_bytes=art.image_path.read_bytes(),
                        description=art.description,
                        product_type=art.product_type,
                        colour=art.colour,
                    )
                    ids.append(p.pk)
                created.extend(ids)
                deadline = t0 + 600
                while ProductEmbedding.objects.filter(product_id__in=ids, model_version=active).count() < len(
                    ids
                ):
                    if time.perf_counter() > deadline:
                        raise CommandError(f"uploads not embedded within 10 min; see {log}")
                    time.sleep(0.02)
                return time.perf_counter() - t0

            try:
                if not runtime.wait_for_worker(app, timeout=120):
                    raise CommandError(f"the benchmark worker did not start; see {log}")
                upload_all(articles[: 2 * n_proc], f"W{n_proc}warm")  # each process loads the model
                secs = upload_all(articles[2 * n_proc : 2 * n_proc + uploads], f"W{n_proc}")
            finally:
                _stop_and_clean(proc, created)
            out["per_processes"][str(n_proc)] = {
                "seconds": round(secs, 2),
                "uploads_per_s": round(uploads / secs, 2),
            }
            self.stdout.write(f"{n_proc} worker process(es): {uploads} uploads embedded in {secs:.1f} s")
        one, two = (out["per_processes"][str(n)]["uploads_per_s"] for n in processes[:2])
        out["ratio_2_to_1"] = round(two / one, 2)
        return out

    def _upload_latency(self, uploads: int, data: Path) -> dict:
        """Create ``uploads`` products through the service with a warm worker; time until searchable.

        Raises:
            CommandError: the worker does not start, or an upload is not embedded within 60 s.
        """
        from PIL import Image

        self.stdout.write(runtime.ensure_redis(settings.CELERY_BROKER_URL, settings.VAR_DIR))
        active = ModelVersion.objects.filter(is_active=True).first()
        temp_version = None
        if active is None:  # a zero-shot version serves the benchmark, then goes away
            mcfg = ml_bridge.model_config()
            temp_version = ModelVersion.objects.create(
                name="bench zero-shot (temporary)", config={"model": mcfg.to_dict()}
            )
            path = Path(settings.ML_ARTIFACTS_DIR) / f"version-{temp_version.pk}" / "heads.pt"
            save_heads(path, zero_shot_heads(mcfg.embed_dim, settings.COMPAT_DIM), {})
            ModelVersion.objects.filter(pk=temp_version.pk).update(artifact_path=str(path))
            temp_version.refresh_from_db()
            emb = ml_bridge.zero_shot_embedder()
            products = ml_bridge.catalog_products()
            v = emb.embed_items(*ml_bridge.product_inputs(products))
            embeddings_write(
                version=temp_version,
                product_ids=[p.pk for p in products],
                image=v.image,
                text=v.text,
                fused=v.fused,
                compat=v.compat,
            )
            active = model_version_activate(version=temp_version)
        articles, _ = read_articles(data)
        known = set(Product.objects.values_list("sku", flat=True))
        fresh = [a for a in articles if f"BENCH-{a.article_id}" not in known and a.article_id not in known][
            : uploads + 1
        ]
        log = settings.VAR_DIR / "logs" / "bench-worker.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        runtime.purge_queues(app, ("embedding",))
        d = connection.settings_dict
        proc = runtime.start_worker(
            queues="embedding",
            concurrency=1,
            logfile=log,
            name=f"bench-{os.getpid()}",
            env={"DATABASE_URL": runtime.database_url(d)},
        )
        created: list[int] = []
        latencies: list[float] = []
        own_nearest = 0
        try:
            if not runtime.wait_for_worker(app, timeout=120):
                raise CommandError(f"the benchmark worker did not start; see {log}")
            for i, art in enumerate(tqdm(fresh, desc="uploads", unit="upload")):
                photo = art.image_path.read_bytes()
                t = time.perf_counter()
                p = product_create(
                    sku=f"BENCH-{art.article_id}",
                    title=art.title,
                    slot=art.slot,
                    image_bytes=photo,
                    description=art.description,
                    product_type=art.product_type,
                    colour=art.colour,
                )
                created.append(p.pk)
                deadline = t + 60
                while not ProductEmbedding.objects.filter(product_id=p.pk, model_version=active).exists():
                    if time.perf_counter() > deadline:
                        raise CommandError(f"upload {p.pk} not embedded within 60 s; see {log}")
                    time.sleep(0.01)
                took = (time.perf_counter() - t) * 1000
                if i == 0:
                    continue  # the first one warms the worker (loads the model)
                latencies.append(took)
                hits = selectors.photo_search(image=Image.open(art.image_path), k=1).hits
                own_nearest += int(bool(hits) and hits[0].product.pk == p.pk)
        finally:
            _stop_and_clean(proc, created)
            if temp_version is not None:
                temp_version.delete()
        return {
            "upload_to_searchable_ms": {
                "n": len(latencies),
                "p50": _percentile(latencies, 50),
                "p95": _percentile(latencies, 95),
                "max": max(latencies),
                "mean": statistics.fmean(latencies),
                "own_nearest": own_nearest,
            }
        }
