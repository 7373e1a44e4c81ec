"""Every loss and miner of ml.config trains end to end through the training API and the worker task on
the real slice, and its version's vectors are written."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from rest_framework.test import APIClient

from catalog.models import Product
from ml.config import COMPAT_LOSSES, GENERAL_LOSSES, MINERS
from recommender.models import ProductEmbedding
from recommender.services import model_version_activate
from tests.conftest import run_through_api

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

#: One run per general loss; the compatibility losses and the miners spread over them, so the seven runs
#: cover every name of GENERAL_LOSSES, COMPAT_LOSSES and MINERS (the angular run adds center loss).
RUNS = [
    {"general_loss": "clip", "compat_loss": "infonce", "miner": "semi-hard"},
    {"general_loss": "infonce", "compat_loss": "triplet", "miner": "batch-all"},
    {"general_loss": "ntxent", "compat_loss": "contrastive", "miner": "semi-hard"},
    {"general_loss": "npair", "compat_loss": "triplet", "miner": "random"},
    {"general_loss": "contrastive", "compat_loss": "triplet", "miner": "batch-hard"},
    {"general_loss": "triplet", "compat_loss": "triplet", "miner": "semi-hard"},
    {"general_loss": "angular", "compat_loss": "infonce", "miner": "semi-hard"},
]


def test_the_runs_cover_every_loss_and_miner():
    assert {r["general_loss"] for r in RUNS} == set(GENERAL_LOSSES)
    assert {r["compat_loss"] for r in RUNS} == set(COMPAT_LOSSES)
    assert {r["miner"] for r in RUNS if "triplet" in (r["general_loss"], r["compat_loss"])} == set(MINERS)


@pytest.fixture
def merch() -> APIClient:
    user = User.objects.create_user("merch-losses", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="add_product"))
    api = APIClient()
    api.force_authenticate(user)
    return api


@pytest.mark.parametrize("losses", RUNS, ids=[r["general_loss"] for r in RUNS])
def test_a_run_with_each_loss_writes_its_versions_vectors(trained_catalog, merch, losses):
    body = {"epochs": 1, "max_steps": 2, "batch_size": 16, "margin": 0.5, **losses}
    if losses["general_loss"] == "ntxent":
        body["learn_temperature"] = False
    if losses["general_loss"] == "angular":
        body["w_center"] = 0.1
    try:
        version = run_through_api(merch, body).model_version
        assert {k: version.config["train"][k] for k in losses} == losses
        assert ProductEmbedding.objects.filter(model_version=version).count() == Product.objects.count()
    finally:
        model_version_activate(version=trained_catalog)
