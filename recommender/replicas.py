"""Read replicas: PostgreSQL streaming standbys answer the shoppers' reads, the primary does the rest.

``DATABASE_REPLICA_URLS`` (comma-separated database URLs, settings) adds one database alias per
standby, ``replica_0``, ``replica_1``… (:func:`recommender.db.replica_database`: the primary's pool,
health-check and ``application_name`` settings, ``TEST["MIRROR"] = "default"``). Empty (the
default): no alias, and neither the router nor the middleware changes anything. The rules:

1. **Only a shopper's read request reads a replica.** :class:`ReadReplicaMiddleware` opens a *read
   scope* for a ``GET``/``HEAD``/``OPTIONS`` request, and for a ``POST`` to a view marked read-only
   (:func:`replica_reads`: photo search, complete-the-look and compatibility take their input in a
   body), and picks one replica for the whole request (uniformly at random), so its queries see one
   server. Everything else reads the primary: other unsafe requests, Celery tasks (embedding,
   training, reconciliation: they write, and read what they write), management commands
   (``migrate``, imports, ``train``), shells.
2. **Read your writes.** A request that writes (an unsafe method to a view not marked read-only, or a
   write routed through the ORM during any request) reads the primary from then on, and its answer carries the cookie
   ``read_primary`` = the time of the write; the same browser's requests within
   ``DATABASE_REPLICA_PIN_S`` seconds (default 5, above the replicas' usual lag of milliseconds) read
   the primary too. So a merchandiser who uploads a product and is redirected to its page reads it
   from the primary; a shopper elsewhere may see it a few milliseconds later.
3. A read inside ``transaction.atomic()`` on the primary reads the primary (the transaction's view).
4. Migrations run on the primary only; replicas get the schema by replication.

What the pin does not cover: an API client that keeps no cookies (it has the created object in the
answer of its write), and another shopper's cached answer (``RECOMMENDATION_CACHE_SECONDS``): an
answer computed on a replica that had not yet replayed a change is cached under the new catalog
generation until it expires. Replicas are not failed over here: a replica that is down fails the
requests routed to it (``/healthz`` reports it ``degraded``); remove its URL or put a proxy in front.
Guide: docs/scaling.md.
"""

from __future__ import annotations

import contextvars
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, router
from django.http import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)

#: Cookie that pins a client's reads to the primary for ``DATABASE_REPLICA_PIN_S`` seconds after a write.
PIN_COOKIE = "read_primary"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class ReadScope:
    """The database a web request reads from: ``alias`` (a replica) or None (the primary).

    ``pinned``: the client wrote within ``DATABASE_REPLICA_PIN_S`` seconds (its cookie); ``read_only``:
    an unsafe request to a view marked with :func:`replica_reads`; ``wrote``: a write went through the
    router during this request.
    """

    alias: str | None
    pinned: bool = False
    read_only: bool = False
    wrote: bool = False


def replica_reads(view):
    """Mark a view (function or class) whose ``POST`` only reads, so replicas may answer it.

    A write during such a request still switches the rest of it to the primary and pins the client.
    Returns the view itself.
    """
    view.replica_reads = True
    return view


#: The read scope of the request this thread serves (None outside a request: read the primary).
_scope: contextvars.ContextVar[ReadScope | None] = contextvars.ContextVar("read_scope", default=None)


class ReplicaRouter:
    """Django database router (``DATABASE_ROUTERS``) of the rules in the module docstring.

    Returns None (Django's default: the primary, or the alias an instance was read from) outside a
    read scope, so without replicas nothing changes.
    """

    def db_for_read(self, model, **hints) -> str | None:
        scope = _scope.get()
        if scope is None:
            return None
        if scope.alias is None or connections[DEFAULT_DB_ALIAS].in_atomic_block:
            return DEFAULT_DB_ALIAS
        instance = hints.get("instance")
        if instance is not None and instance._state.db:
            return instance._state.db  # related objects from where the instance came
        return scope.alias

    def db_for_write(self, model, **hints) -> str:
        scope = _scope.get()
        if scope is not None:  # the rest of this request, and this client for a few seconds, read the primary
            scope.wrote = True
            scope.alias = None
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1, obj2, **hints) -> bool | None:
        return True  # the replicas hold the primary's very rows

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints) -> bool | None:
        return False if db in settings.DATABASE_REPLICAS else None


def read_alias(model) -> str:
    """The database alias a read of ``model`` goes to now (the router's choice; ``"default"`` without
    replicas). Code that opens a transaction or a raw cursor for a read (the HNSW ``SET LOCAL``
    settings of :func:`recommender.selectors.ranked_many`) opens it here, so its settings and its
    query run on the same server."""
    return router.db_for_read(model)


def _pinned(cookie: str | None, now: float) -> bool:
    """True when ``cookie`` (seconds since the epoch of the client's last write) is within the pin."""
    if not cookie:
        return False
    try:
        wrote_at = float(cookie)
    except ValueError:
        return False
    # a little in the future is another web server's clock (or rounding), far in the future a forgery
    return abs(now - wrote_at) <= settings.DATABASE_REPLICA_PIN_S


class ReadReplicaMiddleware:
    """Opens the read scope of each request (module docstring, rules 1 and 2); a no-op without replicas.

    Place it first (or right after the request log), before anything that reads the database
    (sessions, authentication).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs) -> None:
        """An unsafe request to a view marked with :func:`replica_reads` reads a replica (unless the
        client is pinned or the request already wrote, e.g. while loading its session)."""
        scope = _scope.get()
        if scope is None or request.method in SAFE_METHODS:
            return None
        view = getattr(view_func, "view_class", view_func)  # a class-based view's class (DRF, Django)
        if getattr(view, "replica_reads", False) or getattr(view_func, "replica_reads", False):
            scope.read_only = True
            if not scope.pinned and not scope.wrote:
                scope.alias = random.choice(settings.DATABASE_REPLICAS)
        return None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        replicas = settings.DATABASE_REPLICAS
        if not replicas:
            return self.get_response(request)
        safe = request.method in SAFE_METHODS
        pinned = _pinned(request.COOKIES.get(PIN_COOKIE), time.time())
        scope = ReadScope(alias=None if pinned or not safe else random.choice(replicas), pinned=pinned)
        token = _scope.set(scope)
        try:
            response = self.get_response(request)
        finally:
            _scope.reset(token)
        if scope.wrote or not (safe or scope.read_only):
            response.set_cookie(
                PIN_COOKIE,
                f"{time.time():.3f}",
                max_age=max(1, int(settings.DATABASE_REPLICA_PIN_S + 1)),
                httponly=True,
                samesite="Lax",
                secure=settings.SESSION_COOKIE_SECURE,
            )
        return response


def replica_status(alias: str) -> dict:
    """One replica's health for ``/healthz``: reachable, in recovery (a standby), and its lag.

    Returns:
        ``{"ok", "in_recovery", "lag_bytes", "lag_s"}``: ``lag_bytes`` is WAL received but not yet
        replayed; ``lag_s`` the age of the last replayed transaction while WAL waits to be replayed
        (0 when all received WAL is replayed: an idle primary is no lag). ``ok`` is False when the
        server does not answer or is not a standby (``{"ok": False, "error": <exception class>}``).
        Functions: PostgreSQL "System Administration Functions", recovery information.
    """
    try:
        with connections[alias].cursor() as cur:
            cur.execute(
                "SELECT pg_is_in_recovery(), "
                "pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), "
                "CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
                "ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
            )
            in_recovery, lag_bytes, lag_s = cur.fetchone()
    except Exception as exc:  # any failure: this replica cannot serve
        logger.warning("health check: replica %s unavailable: %s", alias, exc)
        return {"ok": False, "error": type(exc).__name__}
    return {
        "ok": bool(in_recovery),
        "in_recovery": bool(in_recovery),
        "lag_bytes": int(lag_bytes or 0),
        "lag_s": round(float(lag_s or 0), 3),
    }
