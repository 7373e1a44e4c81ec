"""Forms of the recommender's pages: search, photo search, the outfit builder's ids, training runs, sign-in.

Like the catalog's (:mod:`catalog.forms`), they only clean input; selectors and services do the rest.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from catalog.forms import PageForm, ProductFilterForm, QueryTextField, split_ids
from catalog.images import CleanImage, ImageError, clean_upload
from ml.config import COMPAT_LOSSES, GENERAL_LOSSES, MINERS, PHOTO_TUNING_CONFIG, TrainConfig
from recommender import login_guard
from recommender.serializers import MAX_WINDOW
from recommender.services import init_from_active_refusal

#: Results per search page.
SEARCH_K = 24


class PageNumberField(forms.CharField):
    """A 1-based page number from a URL: anything that is not one is page 1, and a page past
    ``last`` is the last (a shopper's link never fails)."""

    def __init__(self, *, last: int, **kwargs: Any) -> None:
        self.last = last
        super().__init__(required=False, **kwargs)

    def to_python(self, value: Any) -> int:
        text = super().to_python(value)[:6]  # int() of thousands of digits is refused
        return min(max(int(text), 1), self.last) if text.isdigit() else 1


class SearchForm(ProductFilterForm):
    """``/search?q=...&slot=...&off=audience&page=2``: free text, the product filters, the understood
    chips switched off and the page.

    Pages are consecutive slices of one ranking (as in the API), up to the API's window of
    ``MAX_WINDOW`` ranked items.
    """

    q = QueryTextField(max_length=500)
    off = QueryTextField(max_length=500)  # understood chips switched off, comma-separated keys
    page = PageNumberField(last=MAX_WINDOW // SEARCH_K)

    def clean_off(self) -> list[str]:
        return sorted({k.strip() for k in self.cleaned_data["off"].split(",") if k.strip()})


class PhotoSearchForm(forms.Form):
    """``POST /search/photo``: a photo, cleaned like product photos (size, decoding, pixel limits)."""

    image = forms.FileField(
        allow_empty_file=True,  # the image checks name an empty file
        error_messages={"required": "choose a photo to upload"},
        widget=forms.FileInput(attrs={"accept": "image/*"}),
    )
    type_first = forms.BooleanField(required=False, initial=True, label="Same kind of item first")

    def clean_image(self) -> CleanImage:
        try:
            return clean_upload(self.cleaned_data["image"])
        except ImageError as exc:
            raise ValidationError(str(exc), code="image") from exc


class AudienceModeField(forms.CharField):
    """``audience=any`` shows complete-the-look picks of every audience; anything else, or nothing, keeps
    to the outfit's audience (``match``, :data:`recommender.looks.AUDIENCE_MODES`). Never invalid."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(required=False, **kwargs)

    def to_python(self, value: Any) -> str:
        return "any" if super().to_python(value) == "any" else "match"


class OutfitIdsForm(forms.Form):
    """``/outfit?ids=1,2,3&audience=any``, the outfit builder: its product ids (tokens that are not ids
    are ignored, and listed in ``cleaned_data["ignored"]`` for the page to say so) and the audience
    mode of its suggestions."""

    ids = forms.Field(required=False)
    audience = AudienceModeField()

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        cleaned["ids"], cleaned["ignored"] = split_ids(cleaned.get("ids") or "")
        return cleaned


class ProductPageForm(forms.Form):
    """``/products/<pk>?outfit=1,2&audience=any``: the outfit being built, which the page's "add" link
    extends (tokens that are not ids are ignored), and the audience mode of complete-the-look."""

    outfit = forms.Field(required=False)
    audience = AudienceModeField()

    def clean_outfit(self) -> list[int]:
        return split_ids(self.cleaned_data.get("outfit") or "")[0]


#: DRF's wording, so the page and the API (``TrainingRunCreateSerializer``) say the same.
_INTEGER = {"invalid": "A valid integer is required."}
_NUMBER = {"invalid": "A valid number is required."}
_CHOICE = {"invalid_choice": '"%(value)s" is not a valid choice.'}


def _choices(names: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(n, n) for n in names]


#: The run that tunes the image tower's top for phone photos on the CPU, from the active version's heads
#: (docs/evaluation.md, "The served photo search"; docs/model.md, "On the CPU").
PHOTO_TUNING: dict[str, Any] = {**PHOTO_TUNING_CONFIG, "lr": 1e-4, "epochs": 8, "init_from_active": True}


class TrainingStartForm(PageForm):
    """``POST /models/train``: the training parameters the models page offers, with the API's limits
    (``TrainingRunCreateSerializer``; a test keeps them equal). Fields left empty keep their
    :class:`ml.config.TrainConfig` default, which the page shows."""

    epochs = forms.IntegerField(
        label="Epochs", required=False, min_value=1, max_value=500, error_messages=_INTEGER
    )
    batch_size = forms.IntegerField(
        label="Batch size", required=False, min_value=2, max_value=4096, error_messages=_INTEGER
    )
    lr = forms.FloatField(
        label="Learning rate", required=False, min_value=1e-6, max_value=1.0, error_messages=_NUMBER
    )
    general_loss = forms.ChoiceField(
        label="Image↔text loss", required=False, choices=_choices(GENERAL_LOSSES), error_messages=_CHOICE
    )
    temperature = forms.FloatField(
        label="Temperature", required=False, min_value=0.001, max_value=1.0, error_messages=_NUMBER
    )
    learn_temperature = forms.NullBooleanField(
        label="Learn the temperature",
        required=False,
        widget=forms.Select(choices=[("", "default"), ("true", "learnable"), ("false", "fixed")]),
    )
    compat_loss = forms.ChoiceField(
        label="Compatibility loss", required=False, choices=_choices(COMPAT_LOSSES), error_messages=_CHOICE
    )
    compat_temperature = forms.FloatField(
        label="Compatibility temperature",
        required=False,
        min_value=0.001,
        max_value=1.0,
        error_messages=_NUMBER,
    )
    margin = forms.FloatField(
        label="Margin (triplet, contrastive)",
        required=False,
        min_value=0.0,
        max_value=2.0,
        error_messages=_NUMBER,
    )
    miner = forms.ChoiceField(
        label="Negative miner", required=False, choices=_choices(MINERS), error_messages=_CHOICE
    )
    normalize = forms.NullBooleanField(
        label="Unit sphere (L2-normalise)",
        required=False,
        widget=forms.Select(choices=[("", "default"), ("true", "on"), ("false", "off")]),
    )
    w_type = forms.FloatField(
        label="Product-type softmax weight",
        required=False,
        min_value=0.0,
        max_value=10.0,
        error_messages=_NUMBER,
    )
    w_center = forms.FloatField(
        label="Center loss weight", required=False, min_value=0.0, max_value=10.0, error_messages=_NUMBER
    )
    photo_tuning = forms.BooleanField(label="Tune the image tower for phone photos (slow)", required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        defaults = TrainConfig()
        names = [n for n in self.base_fields if hasattr(defaults, n)]
        kwargs.setdefault("initial", {name: getattr(defaults, name) for name in names})
        super().__init__(*args, **kwargs)

    def check_photo_tuning(self) -> TrainingStartForm:
        """For the page: turn the phone-photo tuning box off, saying why in its label, when a run could not
        start from the active version's heads (:func:`recommender.services.init_from_active_refusal`)."""
        if why := init_from_active_refusal():
            field = self.fields["photo_tuning"]
            field.disabled = True
            field.label = f"{field.label}: unavailable, {why}"
        return self

    def clean(self) -> dict[str, Any]:
        """Refuse a combination :class:`ml.config.TrainConfig` refuses (its message, on its field)."""
        cleaned = super().clean()
        if not self.errors:
            params = self.params()
            try:
                TrainConfig.from_params(params)
            except ValueError as exc:
                self.add_service_error(exc)
            if params.get("init_from_active") and (why := init_from_active_refusal()):
                self.add_error("photo_tuning", why)
        return cleaned

    def params(self) -> dict[str, Any]:
        """The parameters given (the run's ``params``); the others keep the training defaults. With
        ``photo_tuning``, :data:`PHOTO_TUNING` replaces every field left at its default (the page
        pre-fills the defaults); a field set to another value keeps it."""
        given = {k: v for k, v in self.cleaned_data.items() if v not in (None, "")}
        if not given.pop("photo_tuning", False):
            return given
        defaults = TrainConfig()
        changed = {k: v for k, v in given.items() if v != getattr(defaults, k, None)}
        return {**PHOTO_TUNING, **changed}


class SignInForm(AuthenticationForm):
    """Django's sign-in form, refusing a user name locked out for password guessing
    (:mod:`recommender.login_guard`) before the password is even checked."""

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        if username and login_guard.locked_out(self.request, username):
            raise forms.ValidationError(login_guard.lockout_message(), code="locked_out")
        return super().clean()
