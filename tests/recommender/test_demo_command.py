"""``manage.py demo``'s second run: once the site serves, it queues the phone-photo tuning of the models
page's box and starts a worker for uploads' embeddings beside the one that trains."""

from __future__ import annotations

import io

import pytest

from recommender import runtime, services
from recommender.forms import PHOTO_TUNING
from recommender.management.commands.demo import Command
from recommender.models import TrainingRun

pytestmark = pytest.mark.django_db


class _Process:
    pid = 424242


@pytest.fixture
def started(monkeypatch):
    """Record the workers the command would start and the runs it would send, starting neither (and no
    run of an earlier test busy)."""
    TrainingRun.objects.filter(status__in=["queued", "running"]).update(status="cancelled")
    calls: dict[str, list] = {"workers": [], "sent": []}
    monkeypatch.setattr(runtime, "start_worker", lambda **kw: calls["workers"].append(kw) or _Process())
    monkeypatch.setattr(services, "training_run_send", lambda *, run: calls["sent"].append(run.pk))
    return calls


def test_demo_queues_photo_tuning_and_an_embedding_worker(
    started, tmp_path, django_capture_on_commit_callbacks
):
    (tmp_path / "logs").mkdir()
    before = list(TrainingRun.objects.values_list("pk", flat=True))
    cmd = Command(stdout=io.StringIO())
    with django_capture_on_commit_callbacks(execute=True):
        worker = cmd._queue_photo_tuning(tmp_path)

    run = TrainingRun.objects.exclude(pk__in=before).get()
    assert run.status == TrainingRun.Status.QUEUED
    assert run.params == PHOTO_TUNING and run.params["init_from_active"] is True
    assert started["sent"] == [run.pk]  # sent to Celery once committed
    assert [w["queues"] for w in started["workers"]] == ["embedding"]
    assert worker.pid == 424242 and (tmp_path / "embedder.pid").read_text() == "424242"
    assert f"training run {run.pk} queued" in cmd.stdout.getvalue()


def test_demo_leaves_a_busy_run_alone(started, tmp_path):
    busy = TrainingRun.objects.create(params={"epochs": 3}, status=TrainingRun.Status.RUNNING)
    before = TrainingRun.objects.count()
    cmd = Command(stdout=io.StringIO())
    assert cmd._queue_photo_tuning(tmp_path) is None

    assert TrainingRun.objects.count() == before
    assert started["workers"] == [] and started["sent"] == []
    assert not (tmp_path / "embedder.pid").exists()
    assert f"training run {busy.pk} is running" in cmd.stdout.getvalue()
