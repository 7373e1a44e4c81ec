"""Forms of the catalog pages: each cleans what was typed or uploaded; the services do the writing.

An error belongs to its field and is shown next to it; a page's summary and a one-line message after a
redirect say it as ``"<field>: <reason>"`` (:class:`PageForm`), as the API's error messages do. A
service's own ``ValueError("<field>: <reason>")`` is attached to that field the same way, so a length
or SKU check is said once, by the service, for the pages, the API and the CSV import alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db.models import Count

from catalog.images import ImageError
from catalog.imports import IMPORT_MAX_CSV_BYTES, IMPORT_MAX_ZIP_BYTES
from catalog.mapping import PRESETS, TARGET_LABELS
from catalog.models import PRODUCT_FIELDS, PRODUCT_FILTER_LOOKUPS, ImportMapping, Product
from catalog.vocabulary import (
    VOCABULARY_FIELDS,
    Term,
    canonical_spellings,
    is_unknown,
    vocab_key,
    vocabulary,
    vocabulary_canonical,
)
from ml.audience import AUDIENCE_GROUPS
from ml.slots import SLOT_INDEX, SLOTS


class PageForm(forms.Form):
    """A page's form: a service's error goes to the field it names; all errors can be said in one line."""

    def add_service_error(self, exc: Exception) -> None:
        """Attach a service's error to its field: ``ValueError("price: -1 is negative")`` to ``price``
        (as ``"-1 is negative"``), an :class:`ImageError` to ``image``, anything else to the whole form."""
        if isinstance(exc, ImageError) and "image" in self.fields:
            self.add_error("image", str(exc))
            return
        field, sep, reason = str(exc).partition(": ")
        if sep and field in self.fields:
            self.add_error(field, reason)
        else:
            self.add_error(None, str(exc))

    def error_lines(self) -> list[str]:
        """Every error as ``"<field>: <reason>"`` (errors of the whole form as they are), fields in order."""
        return [
            message if name == NON_FIELD_ERRORS else f"{name}: {message}"
            for name, errors in self.errors.items()
            for message in errors
        ]

    def errors_text(self) -> str:
        """All errors in one line, ``"lr: Ensure ... 1.0.; miner: ..."`` (a message after a redirect)."""
        return "; ".join(
            " ".join(errors) if name == NON_FIELD_ERRORS else f"{name}: {' '.join(errors)}"
            for name, errors in self.errors.items()
        )


class ConfirmForm(PageForm):
    """Confirms an action named by the URL (delete this product, activate this version): no fields, as
    Django's own ``DeleteView`` validates an empty form; the POST with its CSRF token is the answer."""


class QueryTextField(forms.CharField):
    """Text from a URL's query (a search, a filter): NUL bytes (which PostgreSQL text cannot hold)
    removed, trimmed and cut to ``max_length``, never refused: a shopper's query does not fail."""

    def __init__(self, *, max_length: int, **kwargs: Any) -> None:
        self.cut = max_length
        super().__init__(required=False, **kwargs)

    def to_python(self, value: Any) -> str:
        return "" if value in self.empty_values else str(value).replace("\x00", "").strip()[: self.cut]


class PriceField(forms.DecimalField):
    """A price as a ``Decimal`` ("19.99"), the one price parser of the pages; text that is no finite
    number is an error naming it. Range and decimal places are left to the service, whose messages
    say the value and the limit."""

    default_error_messages = {"invalid": "%(value)r is not a number"}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "widget", forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "optional"})
        )
        super().__init__(required=False, **kwargs)

    def to_python(self, value: Any) -> Decimal | None:
        try:
            price = super().to_python(value)
        except ValidationError:
            price = Decimal("NaN")
        if price is not None and not price.is_finite():
            raise ValidationError(
                self.error_messages["invalid"], code="invalid", params={"value": str(value).strip()}
            )
        return price


def split_ids(raw: str) -> tuple[list[int], list[str]]:
    """``"1, 2,x,2"`` -> ``([1, 2], ["x"])``: distinct ids in order, and the tokens that are not ids."""
    ids: list[int] = []
    bad: list[str] = []
    for token in (t.strip() for t in raw.split(",")):
        if not token:
            continue
        if token.isascii() and token.isdigit() and len(token) <= 18:  # fits a bigint
            if int(token) not in ids:
                ids.append(int(token))
        else:
            bad.append(token)
    return ids, bad


class ProductIdsField(forms.CharField):
    """Comma-separated product ids (``"1, 2,2"``), cleaned to the distinct ids in order; a token that
    is not an id is an error naming it."""

    def to_python(self, value: Any) -> list[int]:
        ids, bad = split_ids(super().to_python(value))
        if bad:
            raise ValidationError(
                "not product ids: %(bad)s", code="invalid", params={"bad": ", ".join(map(repr, bad))}
            )
        return ids


# --- products -------------------------------------------------------------------------------------------


def _text(label: str, *, max_length: int, placeholder: str = "", required: bool = False) -> forms.CharField:
    """A product text field. ``maxlength`` only guides the browser: the service refuses a longer value
    with its real length ("title: 5000 characters is over the limit of 255") instead of a form cutting it."""
    attrs = {"maxlength": max_length, **({"placeholder": placeholder} if placeholder else {})}
    return forms.CharField(label=label, required=required, widget=forms.TextInput(attrs=attrs))


#: The select's value that reveals the text box of a new vocabulary value.
NEW_VALUE = "__new__"


class VocabularyWidget(forms.MultiWidget):
    """A select of the catalog's values and, named ``<name>_new``, a text box for a new value, hidden
    until "Add a new …" is chosen (``site.js`` shows it; without JS it is shown)."""

    def __init__(self, *, noun: str) -> None:
        new = forms.TextInput(
            attrs={"maxlength": 64, "aria-label": f"New {noun}", "placeholder": f"new {noun}"}
        )
        super().__init__({"": forms.Select(attrs={"data-new-value": NEW_VALUE}), "new": new})

    def decompress(self, value: Any) -> list[str]:
        return [value or "", ""]


class VocabularyField(forms.MultiValueField):
    """A controlled vocabulary value (colour, product type, audience): one of the catalog's normalised
    values (:func:`catalog.vocabulary.vocabulary`, with product counts), or a new one typed only after
    choosing "Add a new …". Cleans to the catalog's spelling: an existing value typed as new in another
    spelling ("black", "Earrings") becomes the catalog's ("Black", "Earring"); ``""`` for none. The
    length of a new value is the service's to check (its message says the real length).
    :meth:`set_terms` gives the choices (the form does, from the database)."""

    def __init__(self, *, field: str, noun: str, label: str, empty_label: str = "—") -> None:
        self.vocab_field, self.noun, self.known, self.empty_label = field, noun, {}, empty_label
        parts = (forms.CharField(required=False), forms.CharField(required=False))
        super().__init__(
            fields=parts,
            require_all_fields=False,
            required=False,
            label=label,
            widget=VocabularyWidget(noun=noun),
        )
        self.set_terms([])

    def set_terms(self, terms: Sequence[Term]) -> None:
        """The catalog's values of the field, shown as ``"Black (1,204)"``, then "Add a new …"."""
        self.known = {vocab_key(t.value): t.value for t in terms}
        self.widget.widgets[0].choices = [
            ("", self.empty_label),
            *((t.value, f"{t.value} ({t.count:,})") for t in terms),
            (NEW_VALUE, f"Add a new {self.noun}…"),
        ]

    def compress(self, data_list: list[str]) -> str:
        chosen, new = [*(v or "" for v in data_list), "", ""][:2]
        chosen, new = chosen.strip(), new.strip()
        if chosen == NEW_VALUE:
            if is_unknown(new):
                raise ValidationError(f"Type the new {self.noun}, or choose one of the catalog's.")
            return vocabulary_canonical(self.vocab_field, new, known=self.known)
        if not chosen:
            if new:  # typed without choosing to add it: said, not dropped
                raise ValidationError(f"To add “{new}”, choose “Add a new {self.noun}” first.")
            return ""
        if vocab_key(chosen) in self.known:
            return self.known[vocab_key(chosen)]
        raise ValidationError(
            f"“{chosen}” is not {'an' if self.noun[0] in 'aeiou' else 'a'} {self.noun} of the catalog: choose one, "
            f"or choose “Add a new {self.noun}” and type it."
        )


class ProductForm(PageForm):
    """``/manage/upload``: a new product, :data:`~catalog.models.PRODUCT_FIELDS` and its photo.

    The service (``product_create``) checks the values (SKU pattern, lengths, price range) and the photo,
    and its errors come back on their fields (:meth:`PageForm.add_service_error`).
    """

    field_order = [*PRODUCT_FIELDS, "image"]

    sku = forms.CharField(
        label="SKU",
        widget=forms.TextInput(attrs={"maxlength": 64, "pattern": r"[A-Za-z0-9][A-Za-z0-9._\-]*"}),
    )
    title = _text("Title", max_length=255, required=True)
    slot = forms.ChoiceField(label="Outfit slot", choices=[(s, s) for s in SLOTS])
    colour = VocabularyField(field="colour", noun="colour", label="Colour")
    product_type = VocabularyField(field="product_type", noun="product type", label="Product type")
    audience = VocabularyField(
        field="audience", noun="audience", label="Audience", empty_label="— (none: for everyone, unisex)"
    )
    price = PriceField(label="Price")
    description = forms.CharField(
        label="Description", required=False, widget=forms.Textarea(attrs={"rows": 4, "maxlength": 5000})
    )
    variant_group = _text("Variant group", max_length=64, placeholder="optional: shared by colour variants")
    image = forms.FileField(
        label="Photo (JPEG, PNG or WebP, up to 10 MB)",
        allow_empty_file=True,  # an empty file reaches the image checks, which name it
        error_messages={"required": "choose a product photo"},
        widget=forms.FileInput(attrs={"accept": "image/*", "id": "upload-image"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """The colour, product type and audience choices are the catalog's values (one query each)."""
        super().__init__(*args, **kwargs)
        for name in VOCABULARY_FIELDS:
            field = self.fields[name]
            field.set_terms(vocabulary(name))
            current = self.initial.get(name)
            if current:  # a product's value in another spelling is shown as the catalog's
                self.initial[name] = field.known.get(vocab_key(current), current)

    def product_data(self) -> dict[str, Any]:
        """The cleaned :data:`~catalog.models.PRODUCT_FIELDS` this form has (all but the photo)."""
        return {f: self.cleaned_data[f] for f in PRODUCT_FIELDS if f in self.fields}


class ProductEditForm(ProductForm):
    """``/manage/products/<pk>/edit``: the details but the SKU, and optionally a new photo."""

    sku = None
    image = forms.FileField(
        label="New photo (optional; JPEG, PNG or WebP, up to 10 MB)",
        required=False,
        allow_empty_file=True,
        widget=forms.FileInput(
            attrs={"accept": "image/*", "id": "upload-image", "data-preview": "upload-preview"}
        ),
    )

    @classmethod
    def for_product(cls, product: Product, *args: Any, **kwargs: Any) -> ProductEditForm:
        """The form, its fields showing ``product``'s current values."""
        initial = {f: getattr(product, f) for f in PRODUCT_FIELDS if f in cls.base_fields}
        return cls(*args, initial=initial, **kwargs)


# --- outfits ---------------------------------------------------------------------------------------------


class OutfitSaveForm(PageForm):
    """``POST /manage/outfits/new`` (from the outfit builder): the ids of a curated outfit and its name."""

    ids = ProductIdsField()
    name = forms.CharField(required=False, max_length=255)


# --- bulk import ----------------------------------------------------------------------------------------


class ImportForm(PageForm):
    """``/manage/import``: the products CSV and an optional zip of their photos. The files are read by
    the import job; size limits are checked when they are stored (``import_job_create``)."""

    csv = forms.FileField(
        label=f"Products CSV (UTF-8, up to {IMPORT_MAX_CSV_BYTES // 2**20} MB)",
        allow_empty_file=True,  # the job says what is wrong with the file ("CSV: the file is empty")
        error_messages={"required": "choose the products CSV"},
        widget=forms.FileInput(attrs={"accept": ".csv,text/csv"}),
    )
    images = forms.FileField(
        label=f"Photos zip (up to {IMPORT_MAX_ZIP_BYTES // 2**20} MB; optional when only updating existing SKUs)",
        required=False,
        allow_empty_file=True,
        widget=forms.FileInput(attrs={"accept": ".zip,application/zip"}),
    )
    mapping = forms.ChoiceField(label="Columns", required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        saved = list(ImportMapping.objects.values_list("name", flat=True))
        self.fields["mapping"].choices = [
            ("", "Show me the file's columns and propose a mapping"),
            ("Built-in", [(key, label) for key, (label, _c, _m) in PRESETS.items()]),
            *([("Saved", [(n, n) for n in saved])] if saved else []),
        ]


#: The choice meaning "keep the rule proposed for this field" (a template, an option, several columns).
PROPOSED = "__proposed__"


class MappingFieldForm(forms.Form):
    """One of our fields on the mapping page: the column it comes from (or the proposed rule, or none)."""

    target = forms.CharField(widget=forms.HiddenInput)
    source = forms.ChoiceField(required=False)

    def __init__(self, *args: Any, columns: Sequence[str] = (), proposed: dict | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        target = self.initial.get("target") or self.data.get(self.add_prefix("target"), "")
        rule = (proposed or {}).get(target)
        choices = [("", "— not in the file —")]
        if rule is not None and not (len(rule.columns) == 1 and not rule.transform and not rule.template):
            choices.append((PROPOSED, f"as proposed: {rule.describe()}"))
        choices += [(c, f"column “{c}”") for c in columns]
        self.fields["source"].choices = choices
        self.fields["source"].label = TARGET_LABELS.get(target, target)


MappingFormSet = forms.formset_factory(MappingFieldForm, extra=0)


class MappingConfirmForm(PageForm):
    """The mapping page's own fields: save the mapping under a name for the next file (optional)."""

    save_as = forms.CharField(
        label="Save this mapping as (optional)",
        required=False,
        max_length=100,
        widget=forms.TextInput(attrs={"placeholder": "e.g. Our Shopify store"}),
    )


# --- filters --------------------------------------------------------------------------------------------

#: The product facets the catalog page offers as selects (values found in the catalog).
FACETS = ("slot", "colour", "audience", "product_type")


class ProductFilterForm(PageForm):
    """Product filters in a page's URL (``?slot=top&colour=Black``); each matches as
    ``catalog.models.PRODUCT_FILTER_LOOKUPS`` says. An unknown slot or a bad price is an error on its
    field; other text is taken as typed (cleaned, never refused)."""

    slot = QueryTextField(max_length=64)
    colour = QueryTextField(max_length=64)
    audience = QueryTextField(max_length=64)
    audience_group = QueryTextField(max_length=16)
    product_type = QueryTextField(max_length=64)
    price_min = PriceField()
    price_max = PriceField()
    sort = QueryTextField(max_length=8)

    def clean_slot(self) -> str:
        slot = self.cleaned_data["slot"]
        if slot and slot not in SLOTS:  # said rather than answered with "nothing found"
            raise ValidationError(f"There is no slot “{slot}”; choose one of: {', '.join(SLOTS)}.")
        return slot

    def clean_audience_group(self) -> str:
        group = self.cleaned_data["audience_group"].lower()
        if group and group not in AUDIENCE_GROUPS:
            raise ValidationError(
                f"There is no audience “{group}”; choose one of: {', '.join(AUDIENCE_GROUPS)}."
            )
        return group

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        lo, hi = cleaned.get("price_min"), cleaned.get("price_max")
        if lo is not None and hi is not None and lo > hi:
            self.add_error("price_min", f"price_min {lo} is above price_max {hi}")
        return cleaned

    def given(self) -> dict[str, Any]:
        """The filters given, cleaned, empty ones left out (none while the form is invalid)."""
        if not self.is_valid():
            return {}
        return {
            k: v for k, v in self.cleaned_data.items() if k in PRODUCT_FILTER_LOOKUPS and v not in (None, "")
        }

    def facet_counts(self) -> dict[str, list[tuple[str, int]]]:
        """Each facet of the catalog page with its values and how many products each would show given
        the other filters chosen (so a value that shows nothing says 0): slot, colour, who it is for and
        product type; colour and type as the catalog's normalised values (:func:`catalog.vocabulary.vocabulary`),
        never "Unknown"."""
        given = self.given()
        out: dict[str, list[tuple[str, int]]] = {}
        for facet in ("slot", "colour", "audience_group", "product_type"):
            qs = Product.objects.filter_facets(**{k: v for k, v in given.items() if k != facet})
            if facet in VOCABULARY_FIELDS:  # shown in the whole catalog's spelling
                shown = canonical_spellings(facet) if given else {}
                terms = vocabulary(facet, qs=qs)
                out[facet] = [(shown.get(vocab_key(t.value), t.value), t.count) for t in terms]
                continue
            counts = dict(qs.values_list(facet).annotate(n=Count("id")).order_by())
            order = SLOTS if facet == "slot" else AUDIENCE_GROUPS
            out[facet] = [(v, counts.get(v, 0)) for v in order if counts.get(v) or given.get(facet) == v]
        return out

    @staticmethod
    def options(*facets: str) -> dict[str, list[str]]:
        """The distinct non-empty values of each facet in the catalog (slots in their canonical order),
        for the selects of a filter form."""
        options = {}
        for f in facets or FACETS:
            values = Product.objects.exclude(**{f: ""}).order_by(f).values_list(f, flat=True).distinct()
            options[f] = list(values)
        if "slot" in options:
            options["slot"].sort(key=lambda s: SLOT_INDEX.get(s, len(SLOT_INDEX)))
        return options
