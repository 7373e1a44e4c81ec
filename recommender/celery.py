"""The Celery app. Workers: ``celery -A recommender worker -Q embedding,training``."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recommender.settings")

app = Celery("recommender")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["ml", "catalog"])
