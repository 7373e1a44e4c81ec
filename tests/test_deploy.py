"""docker-compose.yml cannot run here (no Docker engine): check it agrees with the settings."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_services_share_the_app_definition_and_known_env():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"db", "redis", "web", "worker", "trainer"} <= set(services)
    assert services["db"]["image"].startswith("pgvector/pgvector:")
    app = [services[n] for n in ("web", "worker", "trainer")]
    assert all(s["image"] == app[0]["image"] and s["environment"] == app[0]["environment"] for s in app)
    assert "-Q" in services["worker"]["command"] and "embedding" in services["worker"]["command"]
    assert "training" in services["trainer"]["command"]
    settings_src = (ROOT / "recommender" / "settings.py").read_text()
    read = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_]+)"', settings_src)) | {
        "DATABASE_URL",
        "HF_HUB_OFFLINE",
    }
    for name in app[0]["environment"]:
        assert name in read, f"docker-compose sets {name}, which the settings never read"
