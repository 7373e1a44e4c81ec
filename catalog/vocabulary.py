"""Controlled vocabularies of the catalog: colour, product type and audience as normalised values.

A value's *key* merges spellings that mean the same ("Dog Wear" / "Dog wear", "Earring" / "Earrings"):
:func:`vocab_key`. The catalog's vocabulary of a field is its values grouped by key, each shown in its
most frequent spelling with the number of products (:func:`vocabulary`); "Unknown" and the like are
never a value. Writes take the catalog's spelling of a value with the same key
(:func:`vocabulary_canonical`), and imports keep what each source value became
(:class:`catalog.models.VocabularyAlias`). A filter on a facet matches every spelling of its key
(:func:`facet_lookups`), on the catalog page, in the API and in the vector queries alike.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count

from catalog.models import Product, VocabularyAlias
from ml.vocab import Term, group_values, is_unknown, vocab_key

__all__ = ["VOCABULARY_FIELDS", "Term", "vocab_key", "vocabulary", "vocabulary_canonical"]

#: The fields that are controlled vocabularies (choices on the pages, facets on the catalog page).
VOCABULARY_FIELDS = ("colour", "product_type", "audience")


def vocabulary(field: str, *, qs=None) -> list[Term]:
    """The catalog's values of ``field`` (one of :data:`VOCABULARY_FIELDS`) with their product counts,
    over ``qs`` (default: every product): one ``GROUP BY`` query.

    Raises:
        ValueError: ``field`` is not a vocabulary field.
    """
    if field not in VOCABULARY_FIELDS:
        raise ValueError(f"{field!r} is not a vocabulary field ({', '.join(VOCABULARY_FIELDS)})")
    rows = (qs if qs is not None else Product.objects.all()).values_list(field).annotate(n=Count("id"))
    return group_values(rows.order_by())


def vocabulary_canonical(field: str, value: str, *, known: dict[str, str] | None = None) -> str:
    """The catalog's spelling of ``value``: a recorded alias of it, else the most frequent spelling
    with the same key, else ``value`` itself (trimmed: a new value). An unknown value becomes ``""``.

    Args:
        known: ``{key: spelling}`` of the field, from :func:`canonical_spellings` (saves the queries
            when many values are cleaned, as an import does).
    """
    value = (value or "").strip()
    if is_unknown(value):
        return ""
    if known is None:
        known = canonical_spellings(field)
    alias = VocabularyAlias.objects.filter(field=field, source_value=value).values_list("value", flat=True)
    return known.get(vocab_key(value)) or next(iter(alias), None) or value


def canonical_spellings(field: str) -> dict[str, str]:
    """``{key: shown spelling}`` of the catalog's vocabulary of ``field`` (:func:`vocabulary`)."""
    return {vocab_key(t.value): t.value for t in vocabulary(field)}


def aliases_record(field: str, pairs: Iterable[tuple[str, str]]) -> int:
    """Keep what source values became (``[("NEGRO", "black"), ("Dog wear", "Dog Wear")]``), one row per
    source value and field, the latest mapping winning; pairs whose two sides are equal are skipped.
    Returns the number of pairs written."""
    rows = [
        VocabularyAlias(field=field, source_value=src[:128], value=dst[:64])
        for src, dst in dict(pairs).items()
        if src and src != dst
    ]
    VocabularyAlias.objects.bulk_create(
        rows, update_conflicts=True, unique_fields=["field", "source_value"], update_fields=["value"]
    )
    return len(rows)
