"""``GET /healthz``: is this web process able to serve? Checks the database, Redis and the active model."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from recommender.models import ModelVersion
from recommender.replicas import replica_status
from recommender.runtime import redis_ping

logger = logging.getLogger(__name__)


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """200 ``{"status": "ok"|"degraded", ...}`` when PostgreSQL and Redis answer; 503 when either does not.

    ``degraded`` means no model version is active yet (pages answer, recommendations do not), or a
    read replica (``DATABASE_REPLICA_URLS``) does not answer or is not a standby: the shoppers' reads
    routed to it fail. With replicas, ``checks.replicas`` holds each one's
    :func:`recommender.replicas.replica_status` (replay lag in bytes and seconds). Each check reports
    its latency in ms.
    """
    checks: dict[str, dict] = {}
    t = time.perf_counter()
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cur.fetchone()
        checks["database"] = {"ok": True, "pgvector": row[0] if row else None}
    except Exception as exc:  # any database failure makes the process unhealthy
        # the class only: psycopg's message names the server's socket path or host (logged, not shown)
        logger.warning("health check: database unavailable: %s", exc)
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    checks["database"]["ms"] = round((time.perf_counter() - t) * 1000, 1)
    t = time.perf_counter()
    checks["redis"] = {"ok": redis_ping(settings.CELERY_BROKER_URL, timeout=1.0)}
    checks["redis"]["ms"] = round((time.perf_counter() - t) * 1000, 1)
    active = None
    if checks["database"]["ok"]:
        v = ModelVersion.objects.filter(is_active=True).only("pk", "name").first()
        active = {"id": v.pk, "name": v.name} if v else None
    checks["active_model"] = {"ok": active is not None, "version": active}
    replicas_ok = True
    if settings.DATABASE_REPLICAS:  # recommender.replicas: each standby, its replay lag
        checks["replicas"] = {}
        for alias in settings.DATABASE_REPLICAS:
            t = time.perf_counter()
            checks["replicas"][alias] = {
                **replica_status(alias),
                "ms": round((time.perf_counter() - t) * 1000, 1),
            }
            replicas_ok = replicas_ok and checks["replicas"][alias]["ok"]
    healthy = checks["database"]["ok"] and checks["redis"]["ok"]
    status = "ok" if healthy and active and replicas_ok else ("degraded" if healthy else "unavailable")
    return JsonResponse({"status": status, "checks": checks}, status=200 if healthy else 503)
