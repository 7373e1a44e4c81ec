"""Test settings: only overrides of ``recommender.settings.base`` (same real PostgreSQL + pgvector, real Redis)."""

from recommender.settings.base import *  # noqa: F403
from recommender.settings.base import VAR_DIR, env

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
MEDIA_ROOT = VAR_DIR / "test-media"
ML_ARTIFACTS_DIR = VAR_DIR / "test-models"
CELERY_TASK_ALWAYS_EAGER = False
LOGGING["root"]["level"] = "WARNING"  # noqa: F405

# Tests use their own Redis database (broker, results and cache) so a developer's running worker never
# takes their tasks and a test never reads the demo's cache. TEST_REDIS_URL picks another database.
TEST_REDIS_URL = env("TEST_REDIS_URL", default="redis://127.0.0.1:6379/15")
CELERY_BROKER_URL = env("TEST_CELERY_BROKER_URL", default=TEST_REDIS_URL)  # noqa: F405
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CACHES["default"]["LOCATION"] = TEST_REDIS_URL  # noqa: F405
