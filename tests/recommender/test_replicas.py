"""The read-replica rules (``recommender.replicas``) without a database: which alias each read goes to.

The real standby (replication, the HNSW ranking on it) is ``tests/test_replica.py``.
"""

from __future__ import annotations

import time

import environ
import pytest
from django.db import router
from django.http import HttpResponse
from django.test import RequestFactory, override_settings

from catalog.models import Product
from recommender.db import replica_database
from recommender.replicas import PIN_COOKIE, ReadReplicaMiddleware, ReplicaRouter, replica_reads

REPLICAS = ["replica_0", "replica_1"]


def _serve(request, *, write: bool = False, read_only: bool = False) -> tuple[list[str], HttpResponse]:
    """Run ``request`` through the middleware (``process_view`` included); the view records where its
    reads go (before and after an optional routed write). ``read_only``: a class-based view marked
    ``replica_reads`` (as DRF's ``as_view()`` exposes it on ``view_class``)."""
    seen: list[str] = []

    def view(req):
        seen.append(router.db_for_read(Product))
        seen.append(router.db_for_read(Product))
        if write:
            seen.append("write:" + router.db_for_write(Product))
            seen.append(router.db_for_read(Product))
        return HttpResponse("ok")

    if read_only:
        view.view_class = type("PhotoSearchLike", (), {"replica_reads": True})

    def handler(req):
        middleware.process_view(req, view, (), {})
        return view(req)

    middleware = ReadReplicaMiddleware(handler)
    return seen, middleware(request)


def test_without_replicas_nothing_changes():
    seen, response = _serve(RequestFactory().get("/"))
    assert seen == ["default", "default"] and PIN_COOKIE not in response.cookies
    seen, response = _serve(RequestFactory().post("/"))
    assert PIN_COOKIE not in response.cookies


@override_settings(DATABASE_REPLICAS=REPLICAS, DATABASE_REPLICA_PIN_S=5.0)
def test_a_read_request_reads_one_replica_and_writes_pin_the_client_to_the_primary():
    rf = RequestFactory()
    seen, response = _serve(rf.get("/"))
    assert seen[0] in REPLICAS and seen[1] == seen[0]  # one replica for the whole request
    assert PIN_COOKIE not in response.cookies
    assert router.db_for_read(Product) == "default"  # outside a request (Celery tasks, commands)

    seen, response = _serve(rf.post("/"))  # an unsafe method reads the primary and pins the client
    assert seen == ["default", "default"]
    wrote_at = float(response.cookies[PIN_COOKIE].value)
    assert abs(wrote_at - time.time()) < 5 and response.cookies[PIN_COOKIE]["httponly"]

    seen, _ = _serve(rf.get("/", HTTP_COOKIE=f"{PIN_COOKIE}={wrote_at}"))  # within the pin: primary
    assert seen == ["default", "default"]
    seen, _ = _serve(rf.get("/", HTTP_COOKIE=f"{PIN_COOKIE}={wrote_at - 6}"))  # pin expired: a replica
    assert seen[0] in REPLICAS
    seen, _ = _serve(rf.get("/", HTTP_COOKIE=f"{PIN_COOKIE}=nonsense"))
    assert seen[0] in REPLICAS

    seen, response = _serve(rf.get("/"), write=True)  # a GET that writes reads the primary from then on
    assert seen[0] in REPLICAS and seen[2:] == ["write:default", "default"]
    assert PIN_COOKIE in response.cookies


@override_settings(DATABASE_REPLICAS=REPLICAS, DATABASE_REPLICA_PIN_S=5.0)
def test_a_post_to_a_read_only_view_reads_a_replica():
    rf = RequestFactory()
    seen, response = _serve(rf.post("/"), read_only=True)  # photo search, complete-the-look, compatibility
    assert seen[0] in REPLICAS and seen[1] == seen[0] and PIN_COOKIE not in response.cookies
    seen, response = _serve(rf.post("/"), read_only=True, write=True)  # it wrote after all: primary, pinned
    assert seen[0] in REPLICAS and seen[2:] == ["write:default", "default"] and PIN_COOKIE in response.cookies
    seen, _ = _serve(rf.post("/", HTTP_COOKIE=f"{PIN_COOKIE}={time.time()}"), read_only=True)  # pinned client
    assert seen == ["default", "default"]
    assert replica_reads(lambda r: None).replica_reads


@override_settings(DATABASE_REPLICAS=REPLICAS)
def test_migrations_run_on_the_primary_only():
    assert ReplicaRouter().allow_migrate("replica_0", "catalog") is False
    assert ReplicaRouter().allow_migrate("default", "catalog") is None


def test_a_replica_gets_the_primarys_pool_and_options():
    primary = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "recommender",
        "USER": "app",
        "PASSWORD": "secret",
        "HOST": "db",
        "PORT": 5432,
        "CONN_HEALTH_CHECKS": True,
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"application_name": "recommender", "pool": {"max_size": 4, "name": "recommender"}},
    }
    url = environ.Env.db_url_config("postgresql://:@/?host=/tmp/standby-socket&port=5433")
    entry = replica_database(primary, url, "replica_0")
    assert (entry["HOST"], entry["PORT"]) == ("/tmp/standby-socket", 5433)
    assert (entry["NAME"], entry["USER"], entry["PASSWORD"]) == (
        "recommender",
        "app",
        "secret",
    )  # the primary's
    assert entry["OPTIONS"]["pool"] == {"max_size": 4, "name": "recommender-replica_0"}
    assert entry["OPTIONS"]["application_name"] == "recommender" and entry["CONN_HEALTH_CHECKS"]
    assert entry["TEST"]["MIRROR"] == "default"
    assert primary["OPTIONS"]["pool"]["name"] == "recommender"  # the primary's entry is untouched
    tcp = replica_database(
        primary, environ.Env.db_url_config("postgres://ro:pw@standby-1:5432/shop"), "replica_1"
    )
    assert (tcp["HOST"], tcp["NAME"], tcp["USER"]) == ("standby-1", "shop", "ro")
    with pytest.raises(ValueError, match="replica_2"):
        replica_database(primary, environ.Env.db_url_config("mysql://u:p@h/db"), "replica_2")
