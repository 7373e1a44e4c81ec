"""``python manage.py backup [--out FOLDER]``: database dump + model artifacts + photos (``recommender.backup``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from recommender.backup import BackupError, backup_create


class Command(BaseCommand):
    help = "Back up the database (pg_dump), the model artifacts and the product photos into one folder."

    def add_arguments(self, parser):
        parser.add_argument("--out", help="a new folder (default: VAR_DIR/backups/<UTC time>)")

    def handle(self, *args, **opts):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = Path(opts["out"] or Path(settings.VAR_DIR) / "backups" / stamp)
        try:
            m = backup_create(out=out)
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"backed up database {m['database']}, {m['models']} model files, {m['media']} photos to {out}"
        )
