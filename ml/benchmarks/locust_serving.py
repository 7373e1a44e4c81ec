"""Locust user for ``manage.py bench_http``: one serving endpoint per run, closed loop, no think time.

No Django here: the ids to ask for come from a JSON file (``BENCH_IDS``), the endpoint from
``BENCH_ENDPOINT`` (``product_page``, ``similar``, ``complete_the_look``, ``text_search``). Response
status codes are counted and written to ``BENCH_STATUS_OUT`` when Locust quits (a 5xx is a failure;
the command reports their number, which must be 0).
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections import Counter
from pathlib import Path

from locust import HttpUser, constant, events, task

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # Locust runs this file alone: the repo root
from ml.benchmarks.queries import QUERY_WORDS  # noqa: E402

IDS = json.loads(open(os.environ["BENCH_IDS"]).read()) if os.environ.get("BENCH_IDS") else {}  # noqa: SIM115
ENDPOINT = os.environ.get("BENCH_ENDPOINT", "similar")
STATUS: Counter = Counter()
WORDS = list(QUERY_WORDS)


@events.request.add_listener
def _count(response=None, exception=None, **_kw) -> None:
    STATUS[str(getattr(response, "status_code", None) or type(exception).__name__)] += 1


@events.quitting.add_listener
def _write(**_kw) -> None:
    if os.environ.get("BENCH_STATUS_OUT"):
        with open(os.environ["BENCH_STATUS_OUT"], "w") as f:
            json.dump(dict(STATUS), f)


class Shopper(HttpUser):
    wait_time = constant(0)

    @task
    def one(self) -> None:
        rnd = random.Random()
        if ENDPOINT == "product_page":
            self.client.get(f"/products/{rnd.choice(IDS['all'])}", name="product page")
        elif ENDPOINT == "similar":
            self.client.get(f"/api/products/{rnd.choice(IDS['all'])}/similar/?k=12", name="similar items")
        elif ENDPOINT == "complete_the_look":
            ids = [rnd.choice(IDS["top"]), rnd.choice(IDS["bottom"])]
            self.client.post(
                "/api/complete-the-look/", json={"product_ids": ids, "k": 4}, name="complete the look"
            )
        elif ENDPOINT == "text_search":
            q = " ".join(rnd.sample(WORDS, 3))  # 6,840 distinct queries: mostly text-tower misses
            self.client.get("/api/search/", params={"q": q, "k": 24}, name="text search")
        else:
            raise ValueError(f"unknown BENCH_ENDPOINT {ENDPOINT!r}")
