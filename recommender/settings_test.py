"""Test settings: only overrides of ``recommender.settings`` (same real PostgreSQL + pgvector, real Redis)."""

from recommender.settings import *  # noqa: F403
from recommender.settings import VAR_DIR

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
MEDIA_ROOT = VAR_DIR / "test-media"
ML_ARTIFACTS_DIR = VAR_DIR / "test-models"
CELERY_TASK_ALWAYS_EAGER = False
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
