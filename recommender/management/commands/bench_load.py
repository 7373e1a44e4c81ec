"""``python manage.py bench_load``: many concurrent shoppers against the server ``manage.py demo`` starts.

Starts the demo's web server (``recommender.runtime.start_web`` with ``web_env``: gunicorn with
``gunicorn.conf.py``, production settings, ``DEBUG`` off) on ``--addr`` against this checkout's database
(the demo's catalog and active model), drives ``--users`` concurrent Locust users (default 200) for
``--seconds`` (default 120) of mixed traffic (``ml/benchmarks/locust_load.py``: catalog and product
pages, search page and API, similar items, complete-the-look, compatibility), and samples
``pg_stat_activity`` every 0.2 s meanwhile. Passes when no answer is a 5xx and the server's PostgreSQL
connections never exceed its bound (gunicorn processes × ``DB_POOL_MAX_SIZE``). Writes
``ml/benchmarks/results/load.json`` (``--out``) and prints a summary.

The throttles are opened (all users share one loopback address, which the scoped throttles would
otherwise answer with 429); everything else is the demo's configuration, answer cache included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, connections

from catalog.models import Product
from recommender import runtime
from recommender.models import ModelVersion

RESULTS_DIR = Path(settings.BASE_DIR) / "ml" / "benchmarks" / "results"
APP_NAME = "bench-load-web"


class ConnectionSampler(threading.Thread):
    """Counts the server's PostgreSQL connections (``application_name``) every ``every`` seconds."""

    def __init__(self, url: str, app_name: str, every: float = 0.2):
        super().__init__(daemon=True)
        self.url, self.app_name, self.every = url, app_name, every
        self.samples: list[tuple[int, int]] = []  # (this server's connections, all client connections)
        self.max_connections = 0
        self.stop = threading.Event()

    def run(self) -> None:
        query = (
            "SELECT count(*) FILTER (WHERE application_name = %s), count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        with psycopg.connect(self.url, autocommit=True) as conn:
            self.max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
            while not self.stop.is_set():
                self.samples.append(conn.execute(query, (self.app_name,)).fetchone())
                time.sleep(self.every)


class Command(BaseCommand):
    help = "Load benchmark: N concurrent Locust users against the demo's gunicorn; 5xx and PostgreSQL connections."

    def add_arguments(self, parser):
        parser.add_argument("--users", type=int, default=200)
        parser.add_argument("--seconds", type=int, default=120)
        parser.add_argument("--addr", default="127.0.0.1:7046")
        parser.add_argument("--out", default=str(RESULTS_DIR / "load.json"))

    def handle(self, *args, **opts):
        if not ModelVersion.objects.filter(is_active=True).exists():
            raise CommandError(
                "no active model version: run `make demo` (or `manage.py demo --no-serve`) first"
            )
        n = Product.objects.count()
        ids = {
            "all": list(Product.objects.values_list("pk", flat=True)),
            "top": list(Product.objects.filter(slot="top").values_list("pk", flat=True)),
            "bottom": list(Product.objects.filter(slot="bottom").values_list("pk", flat=True)),
        }
        url = runtime.database_url(connection.settings_dict)
        connections.close_all()
        var = Path(settings.VAR_DIR)
        env = runtime.web_env(addr=opts["addr"], var_dir=var) | {
            "DB_APPLICATION_NAME": APP_NAME,
            "THROTTLE_RATE_SEARCH": "1000000/min",
            "THROTTLE_RATE_PHOTO_SEARCH": "1000000/min",
            "LOG_LEVEL": "WARNING",
        }
        workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
        bound = workers * settings.DB_POOL_MAX_SIZE
        tmp = Path(tempfile.mkdtemp(prefix="bench_load_"))
        (tmp / "ids.json").write_text(json.dumps(ids))
        (var / "logs").mkdir(parents=True, exist_ok=True)
        base = f"http://{opts['addr']}"
        self.stdout.write(
            f"starting the demo's web server on {base} ({n} products, connection bound {bound})"
        )
        web = runtime.start_web(addr=opts["addr"], env=env, logfile=var / "logs" / "bench-load-web.log")
        sampler = ConnectionSampler(url, APP_NAME)
        try:
            runtime.wait_for_http(f"{base}/healthz", web)
            for i in range(4 * workers):  # every process loads its query towers before the clock starts
                runtime.wait_for_http(f"{base}/api/search/?q=warm+up+{i}&k=1", web)
            load_before = [round(x, 2) for x in os.getloadavg()]
            sampler.start()
            self.stdout.write(f"{opts['users']} users for {opts['seconds']} s ...")
            t = time.perf_counter()
            cmd = [
                sys.executable,
                "-m",
                "ml.benchmarks.locust_load",
                "--host",
                base,
                "--ids",
                str(tmp / "ids.json"),
                "--users",
                str(opts["users"]),
                "--seconds",
                str(opts["seconds"]),
                "--out",
                str(tmp / "locust.json"),
            ]
            subprocess.run(cmd, cwd=settings.BASE_DIR, check=True, timeout=opts["seconds"] + 300)
            wall = time.perf_counter() - t
            alive = web.poll() is None
        except (RuntimeError, subprocess.SubprocessError) as exc:
            raise CommandError(f"{exc}; see {var / 'logs' / 'bench-load-web.log'}") from exc
        finally:
            sampler.stop.set()
            runtime.stop_worker(web)
        sampler.join(5)
        load = json.loads((tmp / "locust.json").read_text())
        server_conns = [s[0] for s in sampler.samples]
        result = {
            "measured_at": datetime.now(UTC).isoformat(),
            "command": f"python manage.py bench_load --users {opts['users']} --seconds {opts['seconds']}",
            "n_products": n,
            "cpus": os.cpu_count(),
            "gunicorn": {
                "workers": workers,
                "threads": int(env.get("WEB_THREADS", settings.DB_POOL_MAX_SIZE)),
            },
            "wall_s": round(wall, 1),
            "load_avg_before": load_before,
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            "server_alive_after": alive,
            "postgres": {
                "bound": bound,
                "max_connections": sampler.max_connections,
                "samples": len(server_conns),
                "server_connections_max": max(server_conns, default=0),
                "server_connections_mean": round(sum(server_conns) / max(1, len(server_conns)), 2),
                "all_client_connections_max": max((s[1] for s in sampler.samples), default=0),
            },
            **load,
        }
        result["passed"] = bool(
            result["total"]["5xx"] == 0 and result["postgres"]["server_connections_max"] <= bound and alive
        )
        out = Path(opts["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        self.stdout.write(summary(result))
        self.stdout.write(f"written to {out}")
        if not result["passed"]:
            raise CommandError("5xx answers, or PostgreSQL connections above the bound: see above")


def summary(r: dict) -> str:
    """A Markdown table of one run's figures."""
    pg = r["postgres"]
    lines = [
        f"{r['users']} users × {r['seconds']} s, {r['n_products']} products, gunicorn {r['gunicorn']['workers']} "
        f"× {r['gunicorn']['threads']} threads; PostgreSQL connections of the server: max "
        f"{pg['server_connections_max']} (bound {pg['bound']}, max_connections {pg['max_connections']}, "
        f"{pg['samples']} samples)\n",
        "| endpoint | requests | requests/s | p50 ms | p99 ms | 5xx | no answer |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in {**r["endpoints"], "all": r["total"]}.items():
        lines.append(
            f"| {name} | {e['requests']} | {e['rps']} | {e['p50_ms']:.0f} | {e['p99_ms']:.0f} | {e['5xx']} | "
            f"{e['errors_without_answer']} |"
        )
    return "\n".join(lines)
