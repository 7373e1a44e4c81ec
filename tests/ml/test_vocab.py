"""Vocabulary keys and their regular expressions (``ml.vocab``): spellings merged, typed text never a pattern."""

from __future__ import annotations

import re

import pytest

from ml.vocab import group_values, is_unknown, key_regex, vocab_key


def test_spellings_of_the_h_and_m_sample_share_a_key():
    assert vocab_key("Dog Wear") == vocab_key("Dog wear") == "dog wear"
    assert vocab_key("Earring") == vocab_key("Earrings") == "earring"
    assert vocab_key("T-shirt") == "t shirt"
    assert vocab_key("Dress") == "dress"
    assert is_unknown("Unknown") and is_unknown("n/a") and is_unknown("Other") and not is_unknown("Black")


def test_group_values_counts_every_spelling_and_leaves_unknown_out():
    terms = group_values([("Dog Wear", 3), ("Dog wear", 1), ("Unknown", 75), ("Earrings", 2), ("Earring", 5)])
    assert [(t.value, t.count, t.spellings) for t in terms] == [
        ("Dog Wear", 4, ("Dog Wear", "Dog wear")),
        ("Earring", 7, ("Earring", "Earrings")),
    ]


@pytest.mark.parametrize(
    ("value", "matches", "misses"),
    [
        ("Earrings", ["Earring", "earrings", " EARRING "], ["Earringss", "Ear ring", "Gold earring"]),
        ("dog-wear", ["Dog Wear", "Dog wear", "dog  wears"], ["Dogwear", "Dog"]),
        ("Bl(ack", ["Bl ack"], ["Black", "Bl(ack)x"]),
        ("black|white", ["Black White"], ["Black", "White"]),
        (".*", [], ["", "Black", ".*"]),
        ("[a-z]+", ["A z"], ["Black", "[a-z]+x"]),
    ],
)
def test_key_regex_matches_the_spellings_of_the_key_and_nothing_else(value, matches, misses):
    pattern = re.compile(key_regex(value), re.IGNORECASE)
    assert all(pattern.search(text) for text in matches), (value, key_regex(value))
    assert not any(pattern.search(text) for text in misses), (value, key_regex(value))
