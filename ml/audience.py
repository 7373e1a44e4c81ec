"""Audience groups: a free-text audience ("Ladieswear", "Menswear", "Baby/Children", "Women's") → one of
:data:`AUDIENCE_GROUPS`. Pure functions, no Django.

Used for the audience coherence of complete-the-look picks (:mod:`ml.retrieval`) and as an attribute of
the attribute-match baseline (``TrainData.attrs["audience"]``, ids into :data:`AUDIENCE_GROUPS`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

WOMEN, MEN, KIDS, BABY, UNISEX = "women", "men", "kids", "baby", "unisex"
#: The groups, in id order (``TrainData.attrs["audience"]`` holds indices into this tuple).
AUDIENCE_GROUPS: tuple[str, ...] = (WOMEN, MEN, KIDS, BABY, UNISEX)

#: Whole values, lower-cased: H&M's index groups and index names, and the groups themselves.
_EXACT = {
    "ladieswear": WOMEN,
    "ladies accessories": WOMEN,
    "lingeries/tights": WOMEN,
    "divided": WOMEN,  # H&M's young women's line
    "menswear": MEN,
    "baby/children": KIDS,  # H&M's index group mixes both; its index names tell them apart
    "baby sizes 50-98": BABY,
    "children sizes 92-140": KIDS,
    "children sizes 134-170": KIDS,
    "children accessories, swimwear": KIDS,
    "sport": UNISEX,  # women's and men's sportswear in one index group
    **{g: g for g in AUDIENCE_GROUPS},
}
_BABY_WORDS = {"baby", "babies", "infant", "infants", "newborn", "toddler"}
_KIDS_WORDS = {"kid", "kids", "child", "children", "girl", "girls", "boy", "boys", "junior", "teen", "youth"}
_WOMEN_WORDS = {"women", "woman", "womens", "ladies", "lady", "ladieswear", "womenswear", "female", "her"}
_MEN_WORDS = {"men", "man", "mens", "menswear", "male", "him", "gents"}


def audience_group(raw: str) -> str:
    """Normalise a free-text audience to one of :data:`AUDIENCE_GROUPS`.

    Exact H&M values first (``"Ladieswear"`` → women, ``"Divided"`` → women, ``"Menswear"`` → men,
    ``"Baby/Children"`` → kids, ``"Sport"`` → unisex), then words: baby words (unless children words are
    there too), children, women, men, in that order (``"Girls 2-8"`` → kids, ``"Women's shoes"`` →
    women); anything else, the empty string included, is unisex.
    """
    text = (raw or "").strip().lower()
    if text in _EXACT:
        return _EXACT[text]
    words = set(re.split(r"[^a-z]+", text)) - {""}
    if words & _BABY_WORDS and not words & _KIDS_WORDS:
        return BABY
    for group, vocab in ((KIDS, _KIDS_WORDS | _BABY_WORDS), (WOMEN, _WOMEN_WORDS), (MEN, _MEN_WORDS)):
        if words & vocab:
            return group
    return UNISEX


def audience_ids(raws: Iterable[str]) -> np.ndarray:
    """(N,) int64 indices into :data:`AUDIENCE_GROUPS` of :func:`audience_group` of each value."""
    index = {g: i for i, g in enumerate(AUDIENCE_GROUPS)}
    return np.asarray([index[audience_group(r)] for r in raws], dtype=np.int64)


def audience_fits(pick: str, given: str) -> bool:
    """Does an item of audience group ``pick`` fit items of group ``given``? Equal groups fit, and
    unisex fits every group (either side)."""
    return pick == given or UNISEX in (pick, given)
