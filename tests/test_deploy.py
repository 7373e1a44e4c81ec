"""docker-compose.yml cannot run here (no Docker engine): check that it agrees with the code.

Every service command must resolve (the Celery app imports, its queues are routed, gunicorn's WSGI module
imports, manage.py commands exist, the options parse), every variable compose sets must be read by the
settings, and every required setting must have a value in compose or ``.env.example``.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("web", "worker", "trainer", "beat")
#: Variables the code reads outside the settings' env(...) calls.
READ_ELSEWHERE = {"DATABASE_URL", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _settings_src() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "recommender" / "settings").glob("*.py")))


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def _commands(service: dict) -> list[list[str]]:
    """A service's command as argv lists: ``sh -c "a && b && exec c"`` gives three."""
    cmd = service["command"]
    if cmd[:2] == ["sh", "-c"]:
        argvs = [shlex.split(part) for part in cmd[2].split("&&")]
        return [argv[1:] if argv[0] == "exec" else argv for argv in argvs]
    return [cmd]


def _queues_routed() -> set[str]:
    return {r["queue"] for r in settings.CELERY_TASK_ROUTES.values()} | {settings.CELERY_TASK_DEFAULT_QUEUE}


def test_compose_parses_with_the_expected_services_volumes_and_health_checks():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"db", "redis", *APP_SERVICES}
    assert services["db"]["image"] == "pgvector/pgvector:pg17"
    assert services["redis"]["image"].startswith("redis:")
    for name in ("db", "redis", "web", "worker", "trainer"):
        assert services[name]["healthcheck"]["test"], f"{name} has no health check"
    volumes = set(compose["volumes"])
    assert {"pgdata", "redisdata", "appdata"} <= volumes
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            assert v.split(":")[0] in volumes, f"{name} mounts {v}, not a named volume"
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])


def test_app_services_reuse_one_definition_and_change_only_the_command():
    raw = (ROOT / "docker-compose.yml").read_text()
    for name in APP_SERVICES:  # the YAML anchor, cookiecutter-django style
        assert re.search(rf"^  {name}:\n    <<: \*app$", raw, re.M), f"{name} does not merge <<: *app"
    services = _compose()["services"]
    base = {k: v for k, v in services["beat"].items() if k != "command"}
    for name in ("worker", "trainer"):
        assert {k: v for k, v in services[name].items() if k not in ("command", "healthcheck")} == base
    assert {k: v for k, v in services["web"].items() if k not in ("command", "healthcheck", "ports")} == base
    assert base["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


def test_every_service_command_resolves():
    services = _compose()["services"]
    known = get_commands()
    consumed: set[str] = set()
    for name in APP_SERVICES:
        for argv in _commands(services[name]):
            if argv[:2] == ["python", "manage.py"]:
                assert argv[2] in known, f"{name}: manage.py {argv[2]} does not exist"
            elif argv[0] == "gunicorn":
                module, _, attr = argv[1].partition(":")
                assert callable(getattr(importlib.import_module(module), attr or "application"))
            elif argv[0] == "celery":
                assert argv[1:3] == ["-A", "recommender"]
                from celery.bin.celery import celery as celery_cli

                from recommender.celery import app

                assert app.main == "recommender" and argv[3] in celery_cli.commands
                if argv[3] == "worker":
                    queues = set(argv[argv.index("-Q") + 1].split(","))
                    assert queues <= _queues_routed(), (
                        f"{name}: queues {queues - _queues_routed()} not routed"
                    )
                    consumed |= queues
            else:
                pytest.fail(f"{name}: unexpected command {argv}")
    assert consumed == _queues_routed(), "a routed queue has no worker in compose"
    assert services["beat"]["command"][:6] == ["celery", "-A", "recommender", "beat", "--loglevel", "INFO"]
    assert [c for c in services["trainer"]["command"] if c in ("-Q", "training")] == ["-Q", "training"]


@pytest.mark.slow
def test_every_service_command_parses_its_options():
    """``<command> --help`` through the real CLIs: an unknown option or app fails here."""
    services = _compose()["services"]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "recommender.settings.test"}
    bin_dir = Path(sys.executable).parent
    for name in APP_SERVICES:
        for argv in _commands(services[name]):
            exe = [sys.executable] if argv[0] == "python" else [str(bin_dir / argv[0])]
            args = [*exe, *argv[1:], "--help"]
            if argv[0] == "gunicorn":  # loads the WSGI app with the compose options, then exits
                args = [*exe, "--check-config", *argv[1:]]
            out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, f"{name}: {' '.join(argv)}\n{out.stdout[-2000:]}{out.stderr[-2000:]}"


def test_compose_and_env_example_set_only_variables_the_settings_read():
    src = _settings_src()
    read = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_]+)"', src)) | READ_ELSEWHERE
    app_env = _compose()["services"]["web"]["environment"]
    for name in app_env:
        assert name in read, f"docker-compose sets {name}, which the settings never read"
    raw = (ROOT / "docker-compose.yml").read_text()
    interpolated = set(re.findall(r"\$\{([A-Z_]+)", raw))
    for name in _env_example():
        assert name in read or name in interpolated, f".env.example sets {name}, which nothing reads"
    for name in re.findall(r"^# ([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M):
        assert name in read, f".env.example documents {name}, which the settings never read"


def test_every_required_setting_has_a_value_in_compose_or_env_example():
    required = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_]+)"\s*\)', _settings_src()))  # no default given
    assert "DJANGO_SECRET_KEY" in required
    app_env = _compose()["services"]["web"]["environment"]
    example = _env_example()
    for name in required:
        assert app_env.get(name) or example.get(name), f"{name} is required and has no value"
    raw = (ROOT / "docker-compose.yml").read_text()
    for name in set(re.findall(r"\$\{([A-Z_]+):\?", raw)):  # compose refuses to start without these
        assert example.get(name), f"compose requires {name}; .env.example gives no value"
    assert app_env["DJANGO_DEBUG"] == "false" and "DATABASE_URL" in app_env and "REDIS_URL" in app_env


def test_production_settings_load_from_env_example_and_compose():
    """The settings module with exactly what compose gives the containers (the .env and environment)."""
    app_env = {k: str(v) for k, v in _compose()["services"]["web"]["environment"].items()}
    example = _env_example()
    app_env["DATABASE_URL"] = re.sub(
        r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)\}",
        lambda m: example.get(m[1]) or m[2] or "",
        app_env["DATABASE_URL"],
    )
    env = {"PATH": os.environ["PATH"], **example, **app_env, "VAR_DIR": str(ROOT / "var" / "compose-check")}
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DEBUG, s.DATABASES['default']['HOST'], s.DATABASES['default']['PASSWORD'], "
        "s.CELERY_BROKER_URL, s.SECURE_SSL_REDIRECT, s.LOGGING['handlers']['console']['formatter'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "DJANGO_SETTINGS_MODULE": "recommender.settings"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "False",
        "db",
        example["POSTGRES_PASSWORD"],
        "redis://redis:6379/0",
        "True",
        "json",
    ]
