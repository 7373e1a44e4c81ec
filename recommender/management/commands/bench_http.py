"""``python manage.py bench_http``: HTTP load on gunicorn against the 100k-product bench database.

Starts ``gunicorn recommender.wsgi`` (``--workers``, loopback, production settings: ``DEBUG`` off) on
the database ``bench_serving`` left behind (``recommender_bench_100k``: 100,000 synthetic products and
their vectors in the real schema), then drives each endpoint in turn with Locust headless (closed loop,
``--users`` concurrent users, no think time, ``--seconds`` each): the product page (HTML: similar
items + complete-the-look), similar items, complete-the-look and text search (text tower + query).
Answer caching is off (``RECOMMENDATION_CACHE_SECONDS=0``) and the throttles are opened, so every
request runs its queries. Reports sustained requests/s, p50/p99 latency (ms) and the count of 5xx
answers (must be 0) to ``ml/benchmarks/results/http.json`` and ``http.md``.

Run ``manage.py bench_serving --sizes 100000`` first.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, connections

from catalog.models import Product
from recommender.bench_data import point_at

logger = logging.getLogger("bench_http")
RESULTS_DIR = Path(__file__).resolve().parents[3] / "ml" / "benchmarks" / "results"
ENDPOINTS = ["product_page", "similar", "complete_the_look", "text_search"]
LOCUSTFILE = Path(settings.BASE_DIR) / "ml" / "benchmarks" / "locust_serving.py"


def database_url(name: str) -> str:
    """A ``postgresql://`` URL for database ``name`` on the default connection's server."""
    sd = connection.settings_dict
    host = sd["HOST"] or ""
    auth = f"{sd['USER'] or ''}:{sd['PASSWORD'] or ''}@" if sd["USER"] else ""
    if host.startswith("/"):  # a Unix socket folder
        return f"postgresql://{auth}/{name}?host={host}" + (f"&port={sd['PORT']}" if sd["PORT"] else "")
    return f"postgresql://{auth}{host}:{sd['PORT'] or 5432}/{name}"


def _get(url: str, data: bytes | None = None) -> int:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


class Command(BaseCommand):
    help = "HTTP load benchmark: gunicorn + Locust against the 100k bench database."

    def add_arguments(self, parser):
        parser.add_argument("--database", default="recommender_bench_100k")
        parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
        parser.add_argument("--users", type=int, default=8, help="concurrent Locust users")
        parser.add_argument("--seconds", type=int, default=45, help="measured seconds per endpoint")
        parser.add_argument("--port", type=int, default=7031)
        parser.add_argument("--endpoints", nargs="+", default=ENDPOINTS, choices=ENDPOINTS)
        parser.add_argument("--out", default=str(RESULTS_DIR / "http.json"))

    def handle(self, *args, **opts):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
        url = database_url(opts["database"])
        point_at(opts["database"])

        n = Product.objects.count()
        if n == 0:
            raise CommandError(
                f"{opts['database']} is empty: run `manage.py bench_serving --sizes 100000` first"
            )
        ids = {
            "all": list(Product.objects.values_list("pk", flat=True)[:: max(1, n // 20000)]),
            "top": list(Product.objects.filter(slot="top").values_list("pk", flat=True)[:5000]),
            "bottom": list(Product.objects.filter(slot="bottom").values_list("pk", flat=True)[:5000]),
        }
        connections.close_all()
        tmp = Path(tempfile.mkdtemp(prefix="bench_http_"))
        (tmp / "ids.json").write_text(json.dumps(ids))
        base = f"http://127.0.0.1:{opts['port']}"
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": "bench-only",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "RECOMMENDATION_CACHE_SECONDS": "0",
            "THROTTLE_RATE_SEARCH": "1000000/min",
            "LOG_LEVEL": "WARNING",
            "OMP_NUM_THREADS": "1",
        }  # one torch thread per worker: workers × threads ≤ cores
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "recommender.wsgi:application",
            "--workers",
            str(opts["workers"]),
            "--worker-class",
            "sync",  # one request per process, as measured (gunicorn.conf.py would make them threaded)
            "--bind",
            f"127.0.0.1:{opts['port']}",
            "--timeout",
            "120",
            "--log-level",
            "warning",
        ]
        logger.info(
            "starting gunicorn (%d workers) on %s against %s (%d products)",
            opts["workers"],
            base,
            opts["database"],
            n,
        )
        server = subprocess.Popen(cmd, env=env, cwd=settings.BASE_DIR, start_new_session=True)
        results: dict = {
            "n_products": n,
            "workers": opts["workers"],
            "users": opts["users"],
            "seconds": opts["seconds"],
            "measured_at": datetime.now(UTC).isoformat(),
            "cpus": os.cpu_count(),
            "endpoints": {},
        }
        try:
            self._wait(base, server)
            self._warm(base, ids, opts["workers"])
            for ep in opts["endpoints"]:
                results["endpoints"][ep] = self._run(ep, base, tmp, opts)
                logger.info("%s: %s", ep, results["endpoints"][ep])
            results["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
            out = Path(opts["out"])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))
            out.with_suffix(".md").write_text(markdown(results))
            self.stdout.write(markdown(results))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)  # gunicorn's graceful shutdown
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

    def _wait(self, base: str, server: subprocess.Popen) -> None:
        for _ in range(120):
            if server.poll() is not None:
                raise CommandError(f"gunicorn exited with {server.returncode}")
            try:
                if _get(f"{base}/api/model-versions/") == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise CommandError("gunicorn did not answer within 120 s")

    def _warm(self, base: str, ids: dict, workers: int) -> None:
        """Load the towers and heads in every worker before measuring (first text search builds them)."""
        for i in range(4 * workers):
            _get(f"{base}/api/search/?q=warm+up+{i}&k=3")
            _get(f"{base}/api/products/{ids['all'][i]}/similar/")
            _get(f"{base}/products/{ids['all'][i]}")

    def _run(self, ep: str, base: str, tmp: Path, opts) -> dict:
        prefix = tmp / ep
        env = {
            **os.environ,
            "BENCH_IDS": str(tmp / "ids.json"),
            "BENCH_ENDPOINT": ep,
            "BENCH_STATUS_OUT": str(tmp / f"{ep}.status.json"),
        }
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            str(opts["users"]),
            "-r",
            str(opts["users"]),
            "-t",
            f"{opts['seconds']}s",
            "--host",
            base,
            "--csv",
            str(prefix),
            "--only-summary",
            "--loglevel",
            "WARNING",
            "--stop-timeout",
            "30",
        ]
        subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL)
        with open(f"{prefix}_stats.csv") as f:
            row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
        status = json.loads((tmp / f"{ep}.status.json").read_text())
        return {
            "requests": int(row["Request Count"]),
            "failures": int(row["Failure Count"]),
            "rps": round(float(row["Requests/s"]), 1),
            "p50_ms": float(row["50%"]),
            "p99_ms": float(row["99%"]),
            "mean_ms": round(float(row["Average Response Time"]), 1),
            "status_codes": status,
            "5xx": sum(v for k, v in status.items() if k.isdigit() and int(k) >= 500),
        }


def markdown(results: dict) -> str:
    lines = [
        f"gunicorn {results['workers']} workers, {results['users']} Locust users, {results['seconds']} s per "
        f"endpoint, {results['n_products']:,} products, {results['cpus']} CPUs\n\n",
        "| endpoint | requests/s | p50 ms | p99 ms | requests | 5xx |\n|---|---:|---:|---:|---:|---:|\n",
    ]
    for ep, r in results["endpoints"].items():
        lines.append(
            f"| {ep.replace('_', ' ')} | {r['rps']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['requests']} | {r['5xx']} |\n"
        )
    return "".join(lines)
