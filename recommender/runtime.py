"""Local services for the demo, the load benchmark and the end-to-end tests: Redis, Celery worker and
gunicorn processes.

Nothing here runs in production (docker-compose starts those); it makes ``make demo`` work on a bare
machine: a Redis at ``REDIS_URL`` is used when one answers, else a ``redis-server`` found on PATH is
started without root, workers are real ``celery worker`` processes and the site is served by gunicorn
with the settings of ``gunicorn.conf.py`` (as in compose), ``DEBUG`` off unless asked for.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

logger = logging.getLogger(__name__)


def redis_ping(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING at ``url``."""
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (redis.exceptions.RedisError, OSError):
        return False


def ensure_redis(url: str, var_dir: Path) -> str:
    """Make sure a Redis answers at ``url``; start a local ``redis-server`` (no root) when none does.

    Returns:
        A message saying which Redis is used.

    Raises:
        RuntimeError: nothing answers and no ``redis-server`` binary is on PATH (install Redis or set REDIS_URL).
    """
    if redis_ping(url):
        return f"Redis: using the server at {url}"
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise RuntimeError(f"no Redis answers at {url}, and it is not a local address to start one on")
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            f"no Redis answers at {url} and no redis-server is on PATH; install Redis or set REDIS_URL"
        )
    rdir = var_dir / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    port = parsed.port or 6379
    subprocess.run(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "yes",
            "--dir",
            str(rdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(rdir / "redis.log"),
            "--pidfile",
            str(rdir / "redis.pid"),
        ],
        check=True,
    )
    for _ in range(50):
        if redis_ping(url):
            return f"Redis: none answered at {url}, so started {binary} on port {port} (data in {rdir})"
        time.sleep(0.1)
    raise RuntimeError(f"started {binary} but it does not answer at {url}; see {rdir / 'redis.log'}")


def start_worker(
    *,
    queues: str = "embedding,training",
    concurrency: int = 1,
    env: dict[str, str] | None = None,
    logfile: Path | None = None,
    name: str = "worker",
) -> subprocess.Popen:
    """Start a real ``celery worker`` process for this project (returns the Popen; stop with :func:`stop_worker`)."""
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "recommender",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "--pool",
        "prefork",
        "-n",
        f"{name}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    out = open(logfile, "ab") if logfile else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_worker(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a worker: SIGTERM (warm shutdown), then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_for_worker(app, timeout: float = 60.0) -> bool:
    """Poll ``inspect().ping()`` until a worker answers (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if app.control.inspect(timeout=1.0).ping():
                return True
        except Exception:  # broker hiccup while the worker starts
            pass
        time.sleep(0.5)
    return False


def kill_worker(proc: subprocess.Popen) -> None:
    """SIGKILL a worker's whole process group (main process and pool children): no shutdown, no acks."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def database_url(settings_dict: dict[str, Any]) -> str:
    """A ``postgresql://`` URL for a Django ``DATABASES`` entry (a worker process reads it as ``DATABASE_URL``)."""
    host = settings_dict.get("HOST") or ""
    auth = f"{quote(settings_dict.get('USER') or '')}:{quote(settings_dict.get('PASSWORD') or '')}@"
    if host.startswith("/"):
        return f"postgresql://{auth}/{settings_dict['NAME']}?host={host}"
    return f"postgresql://{auth}{host}:{settings_dict.get('PORT') or 5432}/{settings_dict['NAME']}"


def purge_queues(app, queues: tuple[str, ...] = ("embedding", "training")) -> int:
    """Drop every waiting message of these queues on ``app``'s broker. Returns how many were dropped."""
    with app.connection_for_write() as conn:
        return sum(conn.default_channel.queue_purge(q) or 0 for q in queues)


def start_redis(port: int, workdir: Path) -> subprocess.Popen:
    """Start a private, non-persistent ``redis-server`` on 127.0.0.1:``port`` (stop it with ``.kill()``).

    Raises:
        RuntimeError: no ``redis-server`` on PATH, or it does not answer within 5 s.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no redis-server on PATH")
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    for _ in range(50):
        if redis_ping(f"redis://127.0.0.1:{port}/0", timeout=0.2):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"redis-server on port {port} did not answer within 5 s")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only reaches this machine (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def web_env(*, addr: str, var_dir: Path, debug: bool = False) -> dict[str, str]:
    """Environment of the demo's web server (``manage.py demo`` and ``bench_load`` start the same one).

    ``DEBUG`` off (production settings: the friendly 500 page, no tracebacks) unless ``debug``, which is
    refused off loopback. Over plain HTTP the production settings' HTTPS redirect and secure-only cookies
    are switched off (sign-in must work at ``http://ADDR``); a secret key is kept in ``var_dir/secret_key``
    (made once, mode 600) unless ``DJANGO_SECRET_KEY`` is set; ``DJANGO_ALLOWED_HOSTS`` defaults to the
    bound address, loopback names and this machine's names and addresses.

    Raises:
        ValueError: ``debug`` with an address that is not loopback, or ``addr`` is not ``host:port``.
    """
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--addr must be host:port, not {addr!r}")
    if debug and not is_loopback(host):
        raise ValueError(f"--debug serves tracebacks and settings: only on a loopback address, not {host}")
    env = {"DJANGO_DEBUG": "true" if debug else "false", "VAR_DIR": str(var_dir)}
    if not debug:
        key_file = var_dir / "secret_key"
        if "DJANGO_SECRET_KEY" not in os.environ:
            if not key_file.exists():
                key_file.write_text(secrets.token_urlsafe(50))
                key_file.chmod(0o600)
            env["DJANGO_SECRET_KEY"] = key_file.read_text().strip()
        env |= {"DJANGO_SECURE_SSL_REDIRECT": "false", "DJANGO_SECURE_COOKIES": "false"}
    if "DJANGO_ALLOWED_HOSTS" not in os.environ:
        names = {host.strip("[]"), "127.0.0.1", "localhost", "::1"}
        if not is_loopback(host):
            names |= {socket.gethostname(), socket.getfqdn()}
            with contextlib.suppress(OSError):
                names |= {ai[4][0] for ai in socket.getaddrinfo(socket.gethostname(), None)}
        env["DJANGO_ALLOWED_HOSTS"] = ",".join(sorted(n for n in names if n and n not in ("0.0.0.0", "::")))
    return env


def start_web(
    *, addr: str, env: dict[str, str] | None = None, logfile: Path | None = None
) -> subprocess.Popen:
    """Start gunicorn with ``gunicorn.conf.py`` (threaded workers, as compose runs it) bound to ``addr``.

    Returns the Popen (its own process group: stop it with :func:`stop_worker`).
    """
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(root / "gunicorn.conf.py"), "--bind", addr]
    out = open(logfile, "ab") if logfile else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        cmd,
        cwd=root,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll ``url`` until it answers (any status below 500) while ``proc`` runs.

    Raises:
        RuntimeError: ``proc`` exited, or nothing answered within ``timeout`` seconds.
    """
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"nothing answered at {url} within {timeout:.0f} s")
