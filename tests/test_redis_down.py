"""Redis down as a whole (broker, result backend, cache: answer cache, throttles, sign-in guard) and back.

Everything this process and its Celery processes use of Redis is pointed at a private ``redis-server``
(sessions live in PostgreSQL), which is killed: pages, the recommendation API, sign-in and uploads keep
answering; once Redis is back (empty), the running beat's next reconciliation and the running worker
embed the upload made during the outage, neither process restarted. The mechanisms: every cache use
degrades to no cache (``recommender.answer_cache.CACHE_ERRORS``), sends give up within seconds with
the database as the outbox, and beat's ``reconcile`` every ``ML_RECONCILE_EVERY_S`` seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client, override_settings

from catalog.models import Product
from recommender import runtime
from recommender.models import ProductEmbedding
from tests.test_pipeline import _merchandiser, _new_article, catalog, celery_broker, db_access, worker  # noqa: F401
from tests.uploads import api_upload
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PORT = int(os.environ.get("TEST_PRIVATE_REDIS_PORT", "7020")) + 1
RECONCILE_EVERY_S = "3"


@contextmanager
def beat(broker: str, tmp_path):
    """A real ``celery beat`` process on the test database and ``broker``, reconciling every 3 s."""
    log = settings.VAR_DIR / "logs" / f"redis-down-beat-{os.getpid()}.log"
    env = {
        **os.environ,
        "DATABASE_URL": runtime.database_url(connection.settings_dict),
        "DJANGO_SETTINGS_MODULE": "recommender.settings.test",
        "TEST_REDIS_URL": broker,
        "ML_RECONCILE_EVERY_S": RECONCILE_EVERY_S,
        "ML_RETRAIN_CHANGED_FRACTION": "0",
    }
    cmd = [sys.executable, "-m", "celery", "-A", "recommender", "beat", "-s", str(tmp_path / "beat-schedule")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        runtime.stop_worker(proc)


def test_pages_api_sign_in_and_uploads_while_redis_is_down(catalog, tmp_path, hm_root):  # noqa: F811
    private = f"redis://127.0.0.1:{PORT}/0"
    cache = {**settings.CACHES["default"], "LOCATION": private}
    redis_proc = runtime.start_redis(PORT, tmp_path / "redis")
    user = User.objects.create_user("merch-redis-down", password="a long enough password")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    probe = Product.objects.filter(embeddings__model_version=catalog).order_by("pk")
    top, bottom = probe.filter(slot="top").first().pk, probe.filter(slot="bottom").first().pk
    try:
        with (
            celery_broker(private),
            override_settings(CACHES={"default": cache}),
            worker(broker=private) as (proc, _),
            beat(private, tmp_path) as beat_proc,
        ):
            redis_proc.kill()
            redis_proc.wait(5)
            assert not runtime.redis_ping(private)

            shopper = Client()
            for path in ("/", f"/products/{top}", "/search?q=black+jeans", "/outfit", "/models"):
                assert shopper.get(path).status_code == 200, path
            api = {
                "similar": shopper.get(f"/api/products/{top}/similar/", {"k": 4}),
                "search": shopper.get("/api/search/", {"q": "white shirt", "k": 4}),  # throttled scope
                "complete": shopper.post(
                    "/api/complete-the-look/", {"product_ids": [top], "k": 3}, content_type="application/json"
                ),
                "compatibility": shopper.post(
                    "/api/compatibility/", {"product_ids": [top, bottom]}, content_type="application/json"
                ),
            }
            assert {k: r.status_code for k, r in api.items()} == dict.fromkeys(api, 200)
            assert api["similar"].json()["results"] and api["search"].json()["results"]

            # sign-in: a wrong password is an ordinary form error, the right one signs in
            merch = Client()
            bad = merch.post("/accounts/login/", {"username": user.username, "password": "wrong"})
            assert bad.status_code == 200 and b"correct username and password" in bad.content
            good = merch.post(
                "/accounts/login/", {"username": user.username, "password": "a long enough password"}
            )
            assert good.status_code == 302 and merch.get("/models").context["user"] == user

            pid, _ = api_upload(_merchandiser(), _new_article(hm_root, "top", skip=3))  # 201 (asserted)
            assert not ProductEmbedding.objects.filter(product_id=pid).exists()

            redis_proc = runtime.start_redis(PORT, tmp_path / "redis")  # back, and empty
            wait_for(
                lambda: ProductEmbedding.objects.filter(product_id=pid, model_version=catalog).exists(),
                120,
                "beat's reconciliation and the running worker to embed the upload",
            )
            assert proc.poll() is None and beat_proc.poll() is None  # neither was restarted
            assert ProductEmbedding.objects.filter(product_id=pid, model_version=catalog).count() == 1
            assert shopper.get(f"/api/products/{pid}/similar/", {"k": 4}).status_code == 200
    finally:
        redis_proc.kill()
        redis_proc.wait(5)
        user.delete()
