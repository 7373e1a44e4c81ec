"""Mixed shopper traffic for ``manage.py bench_load``: Locust used as a library (no CLI, no web UI).

Run by the command in a process of its own (Locust patches the standard library with gevent, which a
Django process must not get)::

    python -m ml.benchmarks.locust_load --host http://127.0.0.1:7046 --ids ids.json \
        --users 200 --seconds 120 --out locust.json

Each user is a closed loop with 0.1-0.5 s think time over the catalog page, product pages, search (page
and API), similar items, complete-the-look and compatibility. No Django here: product ids come from
``--ids`` (``{"all": [...], "top": [...], "bottom": [...]}``). Writes per-endpoint counts, status codes,
p50/p99 (ms) and the number of 5xx answers to ``--out``.

``manage.py soak`` adds merchandisers (``--token``, ``--hm-root``): each uploads a real H&M photo as a
new product through the API every 5-15 s, and the ids answered 201 are listed in the output; ``--log``
writes every request as a CSV line ``time (epoch s), endpoint, status, ms`` for the fault windows.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

from locust import HttpUser, between, events, task
from locust.env import Environment

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file: the repo root
from ml.benchmarks.queries import QUERY_WORDS  # noqa: E402

IDS: dict[str, list[int]] = {}
WORDS = list(QUERY_WORDS)
STATUS: dict[str, Counter] = defaultdict(Counter)
LOG: list[tuple[float, str, str, float]] = []  # (epoch s at the answer, endpoint, status, ms)
UPLOADED: list[int] = []  # product ids answered 201
MERCH: dict = {}  # "token", "articles"


@events.request.add_listener
def _count(name=None, response=None, exception=None, response_time=0.0, **_kw) -> None:
    code = getattr(response, "status_code", None)
    status = str(code) if code else type(exception).__name__
    STATUS[name][status] += 1
    LOG.append((time.time(), name, status, response_time))


class Shopper(HttpUser):
    """One shopper: browses, searches, asks for similar items, completes a look, scores an outfit."""

    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        self.client.timeout = 60  # seconds: a slower answer counts as an error, not a hang

    @task(2)
    def catalog(self) -> None:
        self.client.get("/", name="catalog page")

    @task(4)
    def product_page(self) -> None:
        self.client.get(f"/products/{random.choice(IDS['all'])}", name="product page")

    @task(2)
    def search_page(self) -> None:
        self.client.get("/search", params={"q": " ".join(random.sample(WORDS, 2))}, name="search page")

    @task(3)
    def search_api(self) -> None:
        q = " ".join(random.sample(WORDS, 3))
        self.client.get("/api/search/", params={"q": q, "k": 12}, name="search API")

    @task(4)
    def similar(self) -> None:
        self.client.get(f"/api/products/{random.choice(IDS['all'])}/similar/?k=12", name="similar items")

    @task(2)
    def complete(self) -> None:
        ids = [random.choice(IDS["top"]), random.choice(IDS["bottom"])]
        self.client.post(
            "/api/complete-the-look/", json={"product_ids": ids, "k": 4}, name="complete the look"
        )

    @task(3)
    def compatibility(self) -> None:
        ids = [random.choice(IDS["top"]), random.choice(IDS["bottom"])]
        self.client.post("/api/compatibility/", json={"product_ids": ids}, name="compatibility")


class Merchandiser(HttpUser):
    """A merchandiser uploading new products (a real H&M photo and its fields) through the API."""

    wait_time = between(5, 15)
    weight = 1

    def on_start(self) -> None:
        self.client.timeout = 60
        self.client.headers["Authorization"] = f"Token {MERCH['token']}"

    @task
    def upload(self) -> None:
        art = random.choice(MERCH["articles"])
        fields = {
            "sku": f"SOAK-{uuid.uuid4().hex[:12]}",
            "title": art.title,
            "slot": art.slot,
            "product_type": art.product_type,
            "colour": art.colour,
            "description": art.description,
        }
        with open(art.image_path, "rb") as photo:
            r = self.client.post("/api/products/", data=fields, files={"image": photo}, name="upload")
        if r.status_code == 201:
            UPLOADED.append(r.json()["id"])


def run(
    *,
    host: str,
    ids: dict,
    users: int,
    seconds: float,
    spawn_rate: float,
    token: str | None = None,
    hm_root: str | None = None,
) -> dict:
    """Drive ``users`` concurrent users against ``host`` for ``seconds`` (shoppers, and one merchandiser
    in ten when ``token`` and ``hm_root`` are given); returns the figures."""
    import gevent

    IDS.update(ids)
    classes: list[type[HttpUser]] = [Shopper]
    if token and hm_root:
        from ml.data import read_articles

        arts = [a for a in read_articles(hm_root)[0] if a.image_path and a.image_path.exists()]
        MERCH.update(token=token, articles=arts[:2000])
        Shopper.weight = 9
        classes.append(Merchandiser)
    env = Environment(user_classes=classes, host=host, events=events)
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=spawn_rate)
    gevent.spawn_later(seconds, runner.quit)
    runner.greenlet.join()
    out: dict = {"users": users, "seconds": seconds, "endpoints": {}}
    for (name, _method), st in sorted(env.stats.entries.items()):
        codes = dict(STATUS[name])
        out["endpoints"][name] = {
            "requests": st.num_requests,
            "rps": round(st.num_requests / seconds, 1),
            "p50_ms": st.get_response_time_percentile(0.5),
            "p99_ms": st.get_response_time_percentile(0.99),
            "status_codes": codes,
            "5xx": sum(v for k, v in codes.items() if k.isdigit() and int(k) >= 500),
            "errors_without_answer": sum(v for k, v in codes.items() if not k.isdigit()),
        }
    out["uploaded_ids"] = list(UPLOADED)
    total = env.stats.total
    out["total"] = {
        "requests": total.num_requests,
        "rps": round(total.num_requests / seconds, 1),
        "p50_ms": total.get_response_time_percentile(0.5),
        "p99_ms": total.get_response_time_percentile(0.99),
        "5xx": sum(e["5xx"] for e in out["endpoints"].values()),
        "errors_without_answer": sum(e["errors_without_answer"] for e in out["endpoints"].values()),
    }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True)
    p.add_argument("--ids", required=True, help="JSON file of product ids")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--spawn-rate", type=float, default=50, help="users started per second")
    p.add_argument("--out", required=True)
    p.add_argument("--token", help="a merchandiser's API token: add uploading merchandisers")
    p.add_argument("--hm-root", help="the H&M sample (photos for the uploads)")
    p.add_argument("--log", help="write every request as CSV: epoch s, endpoint, status, ms")
    a = p.parse_args(argv)
    result = run(
        host=a.host,
        ids=json.loads(Path(a.ids).read_text()),
        users=a.users,
        seconds=a.seconds,
        spawn_rate=a.spawn_rate,
        token=a.token,
        hm_root=a.hm_root,
    )
    Path(a.out).write_text(json.dumps(result, indent=1))
    if a.log:
        Path(a.log).write_text("".join(f"{t:.3f},{n},{st},{ms:.1f}\n" for t, n, st, ms in LOG))


if __name__ == "__main__":
    main()
