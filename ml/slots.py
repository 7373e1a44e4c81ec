"""Normalised outfit slots and the mapping from H&M's product groups/types onto them.

A *slot* is the role an item plays in an outfit. Complete-the-look asks for one item per missing
slot; the type-aware compatibility space (Vasileva et al. 2018) conditions on pairs of slots.
"""

from __future__ import annotations

from collections.abc import Iterable

TOP = "top"
BOTTOM = "bottom"
ONE_PIECE = "one-piece"
OUTERWEAR = "outerwear"
SHOES = "shoes"
BAG = "bag"
ACCESSORY = "accessory"
JEWELLERY = "jewellery"
UNDERWEAR_NIGHTWEAR = "underwear-nightwear"
SWIMWEAR = "swimwear"
SOCKS_TIGHTS = "socks-tights"

#: All slots, in display order. Index positions are stable: the compatibility heads use them.
SLOTS: tuple[str, ...] = (
    TOP,
    BOTTOM,
    ONE_PIECE,
    OUTERWEAR,
    SHOES,
    BAG,
    ACCESSORY,
    JEWELLERY,
    UNDERWEAR_NIGHTWEAR,
    SWIMWEAR,
    SOCKS_TIGHTS,
)
SLOT_INDEX: dict[str, int] = {s: i for i, s in enumerate(SLOTS)}

#: Slots that make up a dressed look; complete-the-look suggests these (not underwear or swimwear).
OUTFIT_SLOTS: tuple[str, ...] = (TOP, BOTTOM, ONE_PIECE, OUTERWEAR, SHOES, BAG, ACCESSORY, JEWELLERY)

_OUTERWEAR_TYPES = {"jacket", "coat", "blazer", "cardigan", "outdoor waistcoat", "outdoor trousers"}
_JEWELLERY_TYPES = {"earring", "necklace", "ring", "bracelet", "earrings"}
_BAG_TYPES = {
    "bag",
    "backpack",
    "cross-body bag",
    "shoulder bag",
    "tote bag",
    "weekend/gym bag",
    "bumbag",
    "wallet",
    "purse",
    "accessories set",
}
_GROUP_TO_SLOT = {
    "garment upper body": TOP,
    "garment lower body": BOTTOM,
    "garment full body": ONE_PIECE,
    "shoes": SHOES,
    "bags": BAG,
    "accessories": ACCESSORY,
    "underwear": UNDERWEAR_NIGHTWEAR,
    "nightwear": UNDERWEAR_NIGHTWEAR,
    "underwear/nightwear": UNDERWEAR_NIGHTWEAR,
    "swimwear": SWIMWEAR,
    "socks & tights": SOCKS_TIGHTS,
}


def slot_for(product_group: str, product_type: str) -> str:
    """Map a source product group and product type onto one of :data:`SLOTS`.

    Args:
        product_group: H&M ``product_group_name`` (e.g. "Garment Upper body"); case-insensitive.
        product_type: H&M ``product_type_name`` (e.g. "Jacket"); case-insensitive.

    Returns:
        The slot name. Outerwear types (jacket, coat, blazer, cardigan) win over "upper body";
        jewellery and bags are split out of "Accessories"; unknown groups fall back to ``accessory``.
    """
    group = (product_group or "").strip().lower()
    ptype = (product_type or "").strip().lower()
    if ptype in _OUTERWEAR_TYPES:
        return OUTERWEAR
    if ptype in _JEWELLERY_TYPES:
        return JEWELLERY
    if ptype in _BAG_TYPES:
        return BAG
    if ptype in {"leggings/tights"} and group == "garment lower body":
        return BOTTOM
    if group in _GROUP_TO_SLOT:
        return _GROUP_TO_SLOT[group]
    if ptype in {"dress", "jumpsuit/playsuit", "garment set"}:
        return ONE_PIECE
    if ptype in {"trousers", "shorts", "skirt", "leggings/tights"}:
        return BOTTOM
    if ptype in {"boots", "sneakers", "sandals", "flat shoe", "heeled sandals", "pumps", "ballerinas"}:
        return SHOES
    return ACCESSORY


def missing_slots(given: Iterable[str]) -> list[str]:
    """Outfit slots still open after ``given`` (complete-the-look's targets, in :data:`OUTFIT_SLOTS` order):
    a one-piece fills top and bottom, and a top or bottom excludes a one-piece."""
    have = set(given)
    out = [s for s in OUTFIT_SLOTS if s not in have]
    if ONE_PIECE in have:
        out = [s for s in out if s not in (TOP, BOTTOM)]
    if have & {TOP, BOTTOM}:
        out = [s for s in out if s != ONE_PIECE]
    return out
