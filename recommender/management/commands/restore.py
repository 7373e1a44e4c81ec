"""``python manage.py restore FOLDER``: a backup into an empty database (``recommender.backup``)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from recommender.backup import BackupError, backup_restore


class Command(BaseCommand):
    help = "Restore a `manage.py backup` folder into an empty database, ML_ARTIFACTS_DIR and MEDIA_ROOT."

    def add_arguments(self, parser):
        parser.add_argument("source", help="the backup folder")

    def handle(self, *args, **opts):
        try:
            m = backup_restore(source=Path(opts["source"]))
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"restored the backup of {m['created_at']}: database, {m['models']} model files "
            f"({m['relinked_versions']} versions relinked), {m['media']} photos"
        )
