"""Reads on a real PostgreSQL streaming standby (``recommender.replicas``, docs/scaling.md).

A second embedded PostgreSQL is started as a hot standby of the test database's primary
(``pg_basebackup -R``, WAL streamed over the primary's Unix socket) and added as a replica alias.
Through the router and its middleware:

1. a shopper's similar-items request runs its HNSW ranking on the standby (a connection for which
   ``pg_is_in_recovery()`` is true) and nothing on the primary, with the primary's answer; so does a
   complete-the-look ``POST`` (a view marked read-only);
2. a merchandiser's upload writes the primary, and the next request of that client (the
   ``read_primary`` cookie) reads the primary: read-your-writes;
3. once embedded on the primary, the new product reaches the standby by replication: the shopper's
   similar-items request for it, served by the standby, turns from 404 to 200 (polled, with a timeout).

The standby is stopped and removed at the end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext, override_settings
from rest_framework.test import APIClient

from tests.private_pg import StreamingStandby
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ALIAS = "replica_test"
#: A cluster bigger than this (e.g. ``make bench``'s 1M-product databases beside the test database) is
#: not copied: pg_basebackup copies every database of the cluster.
MAX_CLUSTER_MB = 2048


def _in_recovery(alias: str) -> bool:
    with connections[alias].cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        return cur.fetchone()[0]


def _streaming(node: StreamingStandby) -> bool:
    """The primary lists the standby's WAL receiver as streaming (``pg_stat_replication``)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT 1 FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'",
            [node.APPLICATION_NAME],
        )
        return cur.fetchone() is not None


@pytest.fixture(scope="module")
def standby(trained_catalog, django_db_blocker, hm_root) -> Iterator[StreamingStandby]:
    """The standby of the test database's server, as the database alias ``replica_test`` (the primary's
    pool and options, :func:`recommender.db.replica_database`)."""
    import environ

    from recommender.db import replica_database
    from tests.conftest import active_trained_slice

    primary = connection.settings_dict
    if not primary["HOST"] or not primary["HOST"].startswith("/"):
        pytest.skip(
            "the standby test copies the embedded server over its Unix socket (DATABASE_URL is a TCP server)"
        )
    with django_db_blocker.unblock():
        active_trained_slice(hm_root)  # a transactional test may have flushed the slice
        with connection.cursor() as cur:
            cur.execute("SELECT sum(pg_database_size(oid)) / 1e6 FROM pg_database")
            cluster_mb = float(cur.fetchone()[0])
            cur.execute("SHOW wal_level")
            assert cur.fetchone()[0] in ("replica", "logical"), "the primary needs wal_level=replica"
    if cluster_mb > MAX_CLUSTER_MB:
        pytest.skip(f"the test database's cluster holds {cluster_mb:.0f} MB (other databases); copy skipped")
    node = StreamingStandby(primary)
    try:
        settings.DATABASES[ALIAS] = replica_database(
            primary, environ.Env.db_url_config(node.url(primary["NAME"])), ALIAS
        )
        with django_db_blocker.unblock():
            assert _in_recovery(ALIAS), node.log_tail()
            wait_for(lambda: _streaming(node), 30, "the standby to stream from the primary", every=0.2)
        yield node
    finally:
        if ALIAS in settings.DATABASES:
            connections[ALIAS].close()
            connections[ALIAS].close_pool()
            del connections[ALIAS]
            del settings.DATABASES[ALIAS]
        node.close()


@pytest.mark.django_db  # also makes pytest-django create the test database when this file runs alone
def test_reads_inside_a_transaction_on_the_primary_stay_there():
    """Rule 3: pytest-django runs this test inside ``atomic()`` on the primary; a request's read scope
    with a replica configured still reads the primary there (the transaction's own view)."""
    from django.db import router
    from django.http import HttpResponse
    from django.test import RequestFactory

    from catalog.models import Product
    from recommender.replicas import ReadReplicaMiddleware

    seen = []
    with override_settings(DATABASE_REPLICAS=[ALIAS]):
        ReadReplicaMiddleware(lambda r: seen.append(router.db_for_read(Product)) or HttpResponse())(
            RequestFactory().get("/")
        )
    assert connection.in_atomic_block and seen == ["default"]


def _ranking_queries(captured) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if "<#>" in q["sql"]]


def test_similar_items_come_from_the_standby_and_an_upload_reaches_it(standby, django_db_blocker, hm_root):
    from django.contrib.auth.models import Permission, User

    from catalog.models import Product
    from recommender import runtime, selectors
    from recommender.models import ModelVersion
    from recommender.replicas import PIN_COOKIE
    from recommender.tasks import embed_products
    from tests.test_pipeline import _new_article
    from tests.uploads import api_upload

    runtime.ensure_redis(settings.CELERY_BROKER_URL, settings.VAR_DIR)  # the upload queues its embedding
    with (
        django_db_blocker.unblock(),
        override_settings(DATABASE_REPLICAS=[ALIAS], RECOMMENDATION_CACHE_SECONDS=0),
    ):
        assert _in_recovery(ALIAS) and not _in_recovery("default")
        version = ModelVersion.objects.get(is_active=True)
        probe = Product.objects.filter(embeddings__model_version=version).order_by("pk").first().pk
        expected = [h.product.pk for h in selectors.similar_items(product_id=probe, k=5)]  # on the primary

        # 1. a shopper's read: the ranking (SET LOCAL + HNSW query) on the standby, nothing on the primary
        shopper = APIClient()
        with (
            CaptureQueriesContext(connection) as on_primary,
            CaptureQueriesContext(connections[ALIAS]) as on_standby,
        ):
            r = shopper.get(f"/api/products/{probe}/similar/", {"k": 5})
        assert r.status_code == 200, r.content
        assert [h["product"]["id"] for h in r.json()["results"]] == expected
        assert _ranking_queries(on_standby), on_standby.captured_queries
        assert on_primary.captured_queries == []
        # a POST that only reads (complete-the-look takes its products in the body) is a replica's too
        with (
            CaptureQueriesContext(connection) as on_primary,
            CaptureQueriesContext(connections[ALIAS]) as on_standby,
        ):
            r = shopper.post("/api/complete-the-look/", {"product_ids": [probe]}, format="json")
        assert r.status_code == 200 and r.json(), r.content
        assert _ranking_queries(on_standby) and on_primary.captured_queries == []
        assert PIN_COOKIE not in shopper.cookies
        health = shopper.get("/healthz").json()["checks"]["replicas"][ALIAS]
        assert health["ok"] and health["in_recovery"] and health["lag_bytes"] >= 0, health

        # 2. a merchandiser uploads on the primary and reads it back from the primary at once
        user, _ = User.objects.get_or_create(username="merch-replica")
        user.user_permissions.add(Permission.objects.get(codename="add_product"))
        merch = APIClient()
        merch.force_authenticate(user)
        pid = None
        try:
            pid, _photo = api_upload(merch, _new_article(hm_root, "top"))
            assert PIN_COOKIE in merch.cookies
            with CaptureQueriesContext(connections[ALIAS]) as on_standby:
                r = merch.get(f"/api/products/{pid}/")
            assert r.status_code == 200 and on_standby.captured_queries == [], on_standby.captured_queries

            # 3. embedded on the primary (what the worker does), then replicated: the standby answers
            embed_products.apply(kwargs={"product_ids": [pid]}, throw=True)
            expected = [h.product.pk for h in selectors.similar_items(product_id=pid, k=5)]
            wait_for(
                lambda: shopper.get(f"/api/products/{pid}/similar/", {"k": 5}).status_code == 200,
                30,
                "the upload and its vectors to reach the standby",
                every=0.1,
            )
            with (
                CaptureQueriesContext(connection) as on_primary,
                CaptureQueriesContext(connections[ALIAS]) as on_standby,
            ):
                r = shopper.get(f"/api/products/{pid}/similar/", {"k": 5})
            assert r.status_code == 200 and _ranking_queries(on_standby) and on_primary.captured_queries == []
            assert [h["product"]["id"] for h in r.json()["results"]] == expected
        finally:
            if pid is not None:
                Product.objects.filter(pk=pid).delete()
            user.delete()
