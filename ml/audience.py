"""Who a product is for, normalised: one of :data:`AUDIENCE_GROUPS`, derived from the catalog's own values.

The H&M sample's ``index_group_name`` is a store division, not an audience ("Divided" is the young
women's line, "Sport" and "Baby/Children" mix several audiences); its section and department names
say the rest ("Men H&M Sport", "Baby Girl", "Young Boy Shoes"). MANGO says it directly with
``des_sex`` (Female, Male, Unisex) and ``des_age`` (Adult, Kids). An uploaded product may hold any
free text ("Women", "Menswear", "kids") or nothing.

Complete-the-look and the training pairs keep to one audience: :func:`audience_fits`.
``TrainData.attrs["audience"]`` holds :func:`audience_ids` (indices into :data:`AUDIENCE_GROUPS`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

WOMEN = "women"
MEN = "men"
KIDS = "kids"
BABY = "baby"
UNISEX = "unisex"

#: The normalised audiences, in display order (``catalog.models.Product.audience_group`` choices).
AUDIENCE_GROUPS: tuple[str, ...] = (WOMEN, MEN, KIDS, BABY, UNISEX)
AUDIENCE_INDEX: dict[str, int] = {g: i for i, g in enumerate(AUDIENCE_GROUPS)}

#: Raw values whose group is settled whatever the section says (H&M index groups and index names, exact,
#: lower case).
_DEFINITE = {"ladieswear": WOMEN, "ladies accessories": WOMEN, "lingeries/tights": WOMEN, "menswear": MEN}
#: Raw values that only say what to assume when neither department nor section names an audience:
#: "Divided" is H&M's young women's line, "Baby/Children" children's wear from baby to 14 years.
_DEFAULTS = {"divided": WOMEN, "baby/children": KIDS, "sport": UNISEX}

# Words (lower case, whole words) that name an audience. Age words outrank sex words: "Baby Girl" is
# a baby's, "Kids Boy" a child's, "Female Kids" (MANGO) a child's.
_BABY = {"baby", "babies", "newborn", "infant", "infants", "toddler"}
_KIDS = {"kids", "kid", "children", "child", "young", "junior", "teen", "youth"}
_CHILD = {"boy", "boys", "girl", "girls"}  # a baby's or a child's: "Baby Girl", "Kids Girl"
_MEN = {"men", "mens", "menswear", "man", "male", "he", "him", "gents", "gentlemen"}
_WOMEN = {
    *("ladies", "ladieswear", "lady", "women", "womens", "womenswear", "woman", "female", "her"),
    *("she", "violeta", "mama"),  # MANGO's women's and plus-size lines, H&M's maternity section
}
_UNISEX = {"unisex"}
_WORD = re.compile(r"[a-z]+")


def _group_of_words(text: str) -> str | None:
    """The audience one field names by its words, or ``None`` when it names none (or babies and kids alike,
    as H&M's "Kids & Baby Shoes" section does: its departments decide)."""
    words = set(_WORD.findall(text.lower()))
    baby, kids = bool(words & _BABY), bool(words & _KIDS)
    if baby and kids:
        return None
    if baby:
        return BABY
    if kids or words & _CHILD:
        return KIDS
    men, women = bool(words & _MEN), bool(words & _WOMEN)
    if men and women or words & _UNISEX:
        return UNISEX
    if men:
        return MEN
    if women:
        return WOMEN
    return None


def audience_group(raw: str, section: str = "", department: str = "") -> str:
    """The normalised audience (one of :data:`AUDIENCE_GROUPS`) of a product.

    Args:
        raw: the catalog's audience value: the H&M ``index_group_name`` ("Ladieswear", "Menswear",
            "Divided", "Sport", "Baby/Children"), MANGO's ``"<des_sex> <des_age>"`` ("Female Adult",
            "Female Kids", "Unisex Adult") or a merchandiser's free text ("Women", "kids").
        section: the H&M ``section_name`` ("Men H&M Sport", "Kids & Baby Shoes"), or MANGO's line.
        department: the H&M ``department_name`` ("Baby Shoes", "Young Girl Shoes").

    Returns:
        "Ladieswear" → women and "Menswear" → men whatever the section; otherwise the first of
        department, section and raw value whose words name an audience (age words first: "Baby Girl"
        → baby, "Young Boy" → kids); otherwise the raw value's default ("Divided" → women,
        "Baby/Children" → kids, "Sport" → unisex); otherwise unisex (nothing says who it is for).

    >>> audience_group("Divided", "Divided Collection", "Dresses")
    'women'
    >>> audience_group("Sport", "Men H&M Sport", "Men Sport Tops")
    'men'
    >>> audience_group("Baby/Children", "Kids & Baby Shoes", "Baby Shoes")
    'baby'
    >>> audience_group("Female Kids")
    'kids'
    """
    key = (raw or "").strip().lower()
    if key in _DEFINITE:
        return _DEFINITE[key]
    for text in (department, section, raw):
        group = _group_of_words(text or "")
        if group is not None:
            return group
    return _DEFAULTS.get(key, UNISEX)


def names_audience(raw: str) -> bool:
    """Does a free-text audience value say who the product is for? True for an empty value (nobody in
    particular: unisex), a value :func:`audience_group` knows by name ("Divided", "Sport") and one whose
    words name an audience ("Women", "Girls", "Unisex Adult"); False for one that names none ("Martians"),
    which would otherwise be taken as unisex and shown beside every audience's items."""
    key = (raw or "").strip().lower()
    return not key or key in _DEFINITE or key in _DEFAULTS or _group_of_words(key) is not None


def audience_ids(values: Iterable[str | tuple[str, ...]]) -> np.ndarray:
    """(N,) int64 indices into :data:`AUDIENCE_GROUPS`: of :func:`audience_group` of each value, a raw
    audience or a ``(raw, section, department)`` tuple (a group name maps onto itself)."""
    return np.asarray(
        [AUDIENCE_INDEX[audience_group(*v) if isinstance(v, tuple) else audience_group(v)] for v in values],
        dtype=np.int64,
    ).reshape(-1)


def audience_fits(pick: str, given: str) -> bool:
    """Can an item of audience group ``pick`` be worn with items of group ``given``? The same group, or
    either is unisex.

    Women's and men's, adults' and children's, children's and babies' items are never one outfit
    (a co-purchase basket holding both is a shopper buying for two people).
    """
    return pick == given or UNISEX in (pick, given)
