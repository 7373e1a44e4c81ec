"""The Celery app.

Workers: ``celery -A recommender worker -Q embedding -c N`` (any machine) and
``celery -A recommender worker -Q training -c 1`` (the GPU box); one ``celery -A recommender beat``
runs the periodic tasks of ``CELERY_BEAT_SCHEDULE`` (reconciliation, retention, retraining).
Every worker queues one ``recommender.tasks.reconcile`` when it is ready, so what a dead worker or a broker
outage left behind is repaired at restart.
"""

from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recommender.settings")

logger = logging.getLogger(__name__)

app = Celery("recommender")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["catalog", "recommender"])


@worker_ready.connect
def reconcile_on_worker_start(sender=None, **kwargs) -> None:
    """Queue one ``recommender.tasks.reconcile`` when a worker is ready (lost runs, unsent runs, missing vectors)."""
    try:
        app.send_task("recommender.tasks.reconcile")
    except Exception as exc:  # the broker went away again: beat will do it
        logger.warning("could not queue the start-up reconciliation: %s", exc)
