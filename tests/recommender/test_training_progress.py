"""A training run reports how far the tower feature extraction is (photos done / total, rate, seconds
left) on the run, in the API and on the live endpoint the models page polls, on the real slice."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import override_settings
from django.urls import reverse
from rest_framework.test import APIClient

from recommender import ml_bridge, training
from recommender.models import TrainingRun

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture
def merch() -> APIClient:
    user = User.objects.create_user("merch-progress", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    api = APIClient()
    api.force_authenticate(user)
    return api


def test_features_phase_records_increasing_photo_counts(trained_catalog, merch, tmp_path, monkeypatch):
    from recommender.tasks import train_model

    monkeypatch.setattr(training, "FEATURE_PROGRESS_EVERY_S", 0.0)  # every batch, whatever the speed
    r = merch.post("/api/training-runs/", {"epochs": 1, "max_steps": 2, "batch_size": 16}, format="json")
    assert r.status_code == 202, r.json()
    run_id = r.json()["id"]
    seen: list[dict] = []  # phase_progress as the API served it after each write of the features phase
    update = training.RunLog.update

    def spy(self, **fields):
        update(self, **fields)
        if fields.get("phase_progress"):
            live = merch.get(reverse("api-training-run-live", args=[run_id])).json()
            detail = merch.get(f"/api/training-runs/{run_id}/").json()
            assert live["phase"] == detail["phase"] == "features"
            assert live["phase_progress"] == detail["phase_progress"]
            seen.append({**detail["phase_progress"], "progress": detail["progress"]})

    monkeypatch.setattr(training.RunLog, "update", spy)
    cold = tmp_path / "features"  # an empty feature cache: every photo goes through the image tower
    with override_settings(ML_FEATURE_CACHE_DIR=str(cold), ML_ARTIFACTS_DIR=str(tmp_path / "artifacts")):
        train_model.apply(kwargs={"run_id": run_id}, throw=True)
    run = TrainingRun.objects.get(pk=run_id)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error

    total = 2 * len(ml_bridge.catalog_products())  # photos, then texts
    done = [s["done"] for s in seen]
    assert {s["phase"] for s in seen} == {"features"}
    assert {s["total"] for s in seen} == {total}
    assert len(set(done)) >= 3 and done == sorted(done) and done[-1] == total, seen
    assert any(0 < d < total // 2 for d in done) and any(total // 2 < d < total for d in done), done
    assert [s["progress"] for s in seen] == sorted(s["progress"] for s in seen)
    assert training.PROGRESS["features"] <= seen[0]["progress"] < seen[-1]["progress"] < 20.0
    assert seen[-1]["rate"] > 0 and seen[-1]["eta_s"] == 0.0
    assert run.phase_progress == {}  # cleared when training started


def test_the_time_left_counts_texts_at_their_own_rate():
    """Photos 0..N then texts N..2N: before any text, the texts are priced at TEXT_COST of a photo's time;
    once texts run, at their measured rate (the old estimate priced texts at the photos' rate)."""
    n = 21_000
    # 1,000 photos left at 60/s, then 21,000 texts at 0.3 of a photo's time
    assert training.features_eta(n - 1_000, 2 * n, 60.0, None) == pytest.approx((1_000 + 0.3 * n) / 60)
    assert training.features_eta(n + 1_000, 2 * n, 60.0, None) == pytest.approx(0.3 * 20_000 / 60)
    assert training.features_eta(n + 1_000, 2 * n, 60.0, 200.0) == pytest.approx(20_000 / 200)
    assert training.features_eta(2 * n, 2 * n, 60.0, 200.0) == 0.0
    assert training.features_eta(10, 2 * n, None, None) is None
