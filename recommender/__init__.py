"""The Django project: settings, URLs, the Celery app, and the recommendation queries, views and API."""

from recommender.celery import app as celery_app

__all__ = ["celery_app"]
