"""Normalised vocabulary values (colour, product type, audience): keys that merge spellings. No Django.

``"Dog Wear"`` / ``"dog wear"`` and ``"Earring"`` / ``"Earrings"`` are one value each: they share a key
(:func:`vocab_key`). :func:`key_regex` matches every spelling of a key in PostgreSQL (``~*``), so a
filter on a facet needs no list of spellings.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

#: Values that say nothing (never a facet or a choice; matched on their key).
UNKNOWN_KEYS = frozenset({"", "unknown", "undefined", "n a", "na", "none", "other", "null"})
_NON_WORD = re.compile(r"[^0-9a-z]+")
_SEP = "[^0-9a-z]"


def vocab_key(value: str) -> str:
    """The key spellings of one value share: case folded, punctuation as spaces, each word singular.

    ``"Dog Wear"`` and ``"dog wear"`` -> ``"dog wear"``; ``"Earrings"`` -> ``"earring"``;
    ``"T-shirt"`` -> ``"t shirt"``; ``"Dress"`` stays ``"dress"`` (a double ``s`` is no plural).
    """
    words = _NON_WORD.sub(" ", value.casefold()).split()
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words)


def is_unknown(value: str) -> bool:
    """``True`` for a value that says nothing ("Unknown", "n/a", "Other", empty)."""
    return vocab_key(value) in UNKNOWN_KEYS


@dataclass(frozen=True)
class Term:
    """One value of a vocabulary: its shown spelling, products counted over all spellings, the spellings."""

    value: str
    count: int
    spellings: tuple[str, ...]


def group_values(counts: Iterable[tuple[str, int]]) -> list[Term]:
    """``[("Dog Wear", 3), ("Dog wear", 1), ("Unknown", 75)]`` -> ``[Term("Dog Wear", 4, ("Dog Wear",
    "Dog wear"))]``: values grouped by :func:`vocab_key`, each shown in its most frequent spelling (ties:
    the first in alphabetical order), unknown values left out, sorted by shown value without case."""
    groups: dict[str, Counter[str]] = {}
    for value, n in counts:
        value = (value or "").strip()
        if is_unknown(value):
            continue
        groups.setdefault(vocab_key(value), Counter())[value] += n
    terms = []
    for spellings in groups.values():
        shown = sorted(spellings.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        terms.append(Term(shown, sum(spellings.values()), tuple(sorted(spellings))))
    return sorted(terms, key=lambda t: t.value.casefold())


def key_regex(value: str) -> str:
    """A case-insensitive regular expression (Python and PostgreSQL ``~*``) matching every spelling whose
    :func:`vocab_key` is ``value``'s: ``"Earrings"`` -> ``^[^0-9a-z]*earrings?[^0-9a-z]*$``.

    Safe on any text: the key keeps only the letters ``a-z`` and digits, so what was typed is matched as
    words, never as a pattern (``"Bl(ack"`` matches "Bl ack", ``".*"`` matches nothing). A value
    without a letter or digit has the empty key and matches nothing (``x^``: no text has ``x`` before
    its start), not the products without a value."""
    words = vocab_key(value).split()
    body = f"{_SEP}+".join(f"{re.escape(w)}s?" for w in words)
    return f"^{_SEP}*{body}{_SEP}*$" if words else "x^"
