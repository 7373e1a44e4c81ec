"""Recommender page forms: the training form says what the API says; filters parse alike on pages and API."""

from __future__ import annotations

from django import forms
from rest_framework import serializers

from catalog.serializers import FilterSerializer
from recommender.filters import Filters
from recommender.forms import PHOTO_TUNING, SearchForm, TrainingStartForm
from recommender.serializers import TrainingRunCreateSerializer


def test_the_training_form_has_the_api_limits():
    api = TrainingRunCreateSerializer().fields
    for name, field in TrainingStartForm.base_fields.items():
        if name == "photo_tuning":  # a preset of API fields (PHOTO_TUNING), not one itself
            assert set(PHOTO_TUNING) <= set(api), set(PHOTO_TUNING) - set(api)
        elif hasattr(field, "min_value"):
            assert (field.min_value, field.max_value) == (api[name].min_value, api[name].max_value), name
        elif isinstance(field, forms.NullBooleanField):  # a select: default / on / off
            assert isinstance(api[name], serializers.BooleanField), name
        else:
            assert {c for c, _ in field.choices} == set(api[name].choices), name


def test_the_training_form_sends_only_what_was_given():
    form = TrainingStartForm(data={"epochs": "2", "lr": "", "miner": "random"})
    assert form.is_valid() and form.params() == {"epochs": 2, "miner": "random"}
    assert TrainingStartForm().initial["epochs"] == 30  # ml.config.TrainConfig's default, shown on the page


def test_the_training_form_and_the_api_refuse_what_train_config_refuses():
    """NT-Xent has a fixed temperature: asked to learn it, both say so on the field, nothing starts."""
    bad = {"general_loss": "ntxent", "learn_temperature": "true"}
    form = TrainingStartForm(data=bad)
    assert not form.is_valid()
    assert form.errors["learn_temperature"][0].startswith("general_loss 'ntxent' has a fixed temperature")
    api = TrainingRunCreateSerializer(data={"general_loss": "ntxent", "learn_temperature": True})
    assert not api.is_valid()
    assert str(api.errors["learn_temperature"][0]).startswith("general_loss 'ntxent' has a fixed temperature")
    ok = TrainingStartForm(data={"general_loss": "ntxent", "learn_temperature": "false", "normalize": ""})
    assert ok.is_valid() and ok.params() == {"general_loss": "ntxent", "learn_temperature": False}


def test_page_and_api_filters_are_the_same_filters():
    params = {"q": "dress", "slot": "top", "colour": "Black", "price_min": "5", "price_max": "20"}
    form = SearchForm(data=params)
    assert form.is_valid(), form.errors
    api = FilterSerializer(data=params)
    assert api.is_valid(), api.errors
    assert Filters.from_params(form.cleaned_data) == Filters.from_params(api.validated_data)
    assert Filters.from_params({"slot": "", "price_min": 0}) == Filters(price_min=0)


def test_search_form_refuses_an_unknown_slot_and_is_lenient_with_the_rest():
    form = SearchForm(data={"q": " dress\x00 ", "slot": "hat", "page": "x" * 9000})
    assert not form.is_valid()
    assert form.errors["slot"][0].startswith("There is no slot “hat”; choose one of: top, bottom,")
    assert form.cleaned_data["q"] == "dress" and form.cleaned_data["page"] == 1
    for page, shown in (("3", 3), ("0", 1), ("9" * 9000, 20), ("-2", 1)):  # 20 pages of 24: the window of 500
        form = SearchForm(data={"q": "d", "page": page})
        assert form.is_valid() and form.cleaned_data["page"] == shown, page
