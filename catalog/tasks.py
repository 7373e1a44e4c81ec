"""Celery tasks of the catalog: bulk imports (queue ``embedding``). A task takes ids and calls a service."""

from __future__ import annotations

from celery import shared_task

from catalog.imports import import_job_run


@shared_task(queue="embedding", acks_late=True)
def import_job_run_task(*, job_id: int) -> dict[str, int | str]:
    """Run :class:`catalog.models.ImportJob` ``job_id`` (:func:`catalog.imports.import_job_run`).

    Returns:
        The job's status and counts (also stored on the job, which the import page polls).
    """
    job = import_job_run(job_id=job_id)
    return {
        "job": job.pk,
        "status": job.status,
        "created": job.created,
        "updated": job.updated,
        "unchanged": job.unchanged,
        "rejected": job.rejected,
    }
