"""Normalised outfit slots and the mapping of both catalogs' (H&M, MANGO) product groups and types onto them.

A *slot* is the role an item plays in an outfit. Complete-the-look asks for one item per missing
slot; the type-aware compatibility space (Vasileva et al. 2018) conditions on pairs of slots.
"""

from __future__ import annotations

import re
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

#: Product types of both samples (H&M ``product_type_name``, MANGO ``des_product_type``), lower case, whose
#: slot the type settles whatever the group says (the group decides the rest: "Pyjama bottom" is
#: nightwear, "Top" of "Garment Upper body" a top).
_TYPE_TO_SLOT: dict[str, str] = {
    name: slot
    for slot, names in (
        (
            TOP,
            "blouse|bodysuit|hoodie|polo shirt|poloshirt|shirt|sweater|sweatshirt|sweater vest|t-shirt|top",
        ),
        (TOP, "vest top|tailored waistcoat"),
        # H&M's cargo "Outdoor trousers" are trousers, not a coat
        (
            BOTTOM,
            "trousers|outdoor trousers|shorts|bermudas|skirt|skort|jeans|joggers|leggings|leggings/tights",
        ),
        (ONE_PIECE, "dress|pichi|jumpsuit|jumpsuit/playsuit|overall|outdoor overall|dungarees|garment set"),
        (ONE_PIECE, "costumes"),
        # worn over the rest (MANGO files its vests, overshirts and kaftans as outerwear too)
        (OUTERWEAR, "jacket|jacket (cazadora)|leather jacket|coat|puffer coat|parka|trenchcoat|cape|poncho"),
        (OUTERWEAR, "kaftan|overshirt|blazer|cardigan|cardigan vest|vest|outer vest|outdoor waistcoat"),
        (SHOES, "ankle boots|ballerinas|bootie|boots|clogs|flat shoe|flat shoes|flip flop|heeled sandals"),
        (SHOES, "heels|other shoe|pumps|sandals|shoes|slippers|sneakers|trainers|wedge"),
        (BAG, "bag|backpack|belt bag|bucket bag|bumbag|citybag|clutch and pochettes|cross-body bag"),
        (BAG, "crossbody bag|handbag|mini bag|shoulder bag|tote bag|totes bag|weekend/gym bag|wallet|purse"),
        (BAG, "card holder"),
        (JEWELLERY, "bracelet|earring|earrings|necklace|ring"),
        # H&M's one "Accessories set" is a child's cape costume, not a bag
        (ACCESSORY, "accessories set"),
        (UNDERWEAR_NIGHTWEAR, "bras|knicker|shape|dressing gown (bata)|nightgown|pyjama|pyjama cardigan"),
        (UNDERWEAR_NIGHTWEAR, "pyjama shirt|pyjama shorts|pyjama sweatshirt|pyjama t-shirt|pyjama top"),
        (UNDERWEAR_NIGHTWEAR, "pyjama trousers|pyjiama sweater"),
        (SOCKS_TIGHTS, "socks|sock (pack)|tights"),
        (SWIMWEAR, "bikini pantie|bikini top|swimsuit"),
    )
    for name in names.split("|")
}

#: Product groups (lower case) of things nobody wears: filed under ``accessory`` for want of a slot of
#: their own, never suggested by complete-the-look (``recommender.looks``): a pillow case is no accessory.
NOT_WORN_GROUPS: tuple[str, ...] = (
    *("cosmetic", "items", "stationery", "garment and shoe care", "home", "beauty"),
    *("interior textile", "furniture"),  # in H&M's full catalog
)

#: Groups that settle the slot before the type does: a "Pyjama jumpsuit/playsuit" is nightwear.
_NOT_OUTFIT_GROUPS = {
    "underwear": UNDERWEAR_NIGHTWEAR,
    "nightwear": UNDERWEAR_NIGHTWEAR,
    "underwear/nightwear": UNDERWEAR_NIGHTWEAR,
    "swimwear": SWIMWEAR,
    "socks & tights": SOCKS_TIGHTS,
}
#: Product groups (H&M ``product_group_name``, MANGO ``des_product_category``) for types not listed above.
_GROUP_TO_SLOT = {
    **_NOT_OUTFIT_GROUPS,
    "garment upper body": TOP,
    "garment lower body": BOTTOM,
    "garment full body": ONE_PIECE,
    "shoes": SHOES,
    "bags": BAG,
    "accessories": ACCESSORY,
    "tops": TOP,
    "bottoms": BOTTOM,
    "dresses, jumpsuits and complete set": ONE_PIECE,
    "outerwear": OUTERWEAR,
    # not worn: cosmetics, phone cases, stationery, MANGO Home and Beauty (no slot of their own yet)
    **dict.fromkeys(NOT_WORN_GROUPS, ACCESSORY),
}
#: Words of a product's name that make a top or bottom a one-piece: H&M files 27 jumpsuits, playsuits
#: and dungarees as "Trousers" or "Shorts", and a baby's "onepiece" as a "Sweater".
_ONE_PIECE_NAME = re.compile(
    r"\b(jumpsuit|playsuit|dungarees?|boiler ?suit|romper|onesie|one[- ]?piece|all[- ]in[- ]one)\b",
    re.IGNORECASE,
)
#: Words of a garment set's name that make it an accessory: H&M files a kids' "SET 2PCS KNIT BEANIE
#: SCARF" under "Garment Set" beside its top-and-trousers sets (one-pieces).
_ACCESSORY_SET_NAME = re.compile(r"\b(beanie|hat|cap|scarf|snood|mittens?|gloves?)\b", re.IGNORECASE)
#: Words of a bottom's name that make it hosiery: H&M files "30 den 1p Tights" and "1p Stay Up" under
#: "Leggings/Tights" beside leggings and sports tights ("HAVANA HW tights", which stay bottoms).
_HOSIERY_NAME = re.compile(
    r"\b(\d+ ?den(ier)?|\d+ ?p(ack)? (tights|stay ?ups?)|stay ?ups?|stockings?|pantyhose)\b", re.IGNORECASE
)
#: For a product of unknown type and group ("Unknown" in the H&M sample): words of its name,
#: department, garment group or section, most telling first.
_HINT_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(rf"\b({words})\b", re.IGNORECASE), slot)
    for words, slot in (
        (r"dog|phone|iphone|pouch|braces", ACCESSORY),
        (r"lingerie|underwear|nightwear|hipster|bras?|push|padded|strapless", UNDERWEAR_NIGHTWEAR),
        (r"socks?|\d+ ?den", SOCKS_TIGHTS),
        (r"swimwear|bikini|swimsuit", SWIMWEAR),
        (r"dress|dresses|jumpsuit|playsuit|dungarees?|boilersuit", ONE_PIECE),
        (r"jacket|coat|parka|blazer|outdoor|cardigan", OUTERWEAR),
        (r"trousers?|trs|pants?|jeans|skinny|boyfriend|shorts|skirts?|leggings|tights|denim", BOTTOM),
        (r"tee|t-shirt|top|blouses?|shirt|sweater|hoodie|knitwear|jersey", TOP),
        (r"shoes?|boots?|sandals?|sneakers?|loafer", SHOES),
        (r"bags?|backpack|wallet", BAG),
        (r"earrings?|necklace|bracelet|ring", JEWELLERY),
    )
)


#: Product groups and types of other public catalogs (the "fashion product images" layout's
#: ``subCategory`` / ``articleType``, Shopify's product types), lower case, singular.
_MORE_GROUPS = {
    "topwear": TOP,
    "bottomwear": BOTTOM,
    "dress": ONE_PIECE,
    "apparel set": ONE_PIECE,
    "saree": ONE_PIECE,
    "innerwear": UNDERWEAR_NIGHTWEAR,
    "loungewear and nightwear": UNDERWEAR_NIGHTWEAR,
    "sock": SOCKS_TIGHTS,
    "footwear": SHOES,
    "flip flop": SHOES,
    "sandal": SHOES,
    "shoe": SHOES,
    "bag": BAG,
    "wallet": BAG,
    "jewellery": JEWELLERY,
    "watch": ACCESSORY,
    "eyewear": ACCESSORY,
    "belt": ACCESSORY,
    "scarve": ACCESSORY,
    "headwear": ACCESSORY,
    "cap": ACCESSORY,
    "tshirt": TOP,
    "tee": TOP,
    "kurta": TOP,
    "tunic": TOP,
    "tank top": TOP,
    "jacket": OUTERWEAR,
    "capri": BOTTOM,
    "track pant": BOTTOM,
    "pant": BOTTOM,
    "casual shoe": SHOES,
    "sports shoe": SHOES,
    "formal shoe": SHOES,
    "heel": SHOES,
    "flat": SHOES,
    "brief": UNDERWEAR_NIGHTWEAR,
    "bra": UNDERWEAR_NIGHTWEAR,
    "night suit": UNDERWEAR_NIGHTWEAR,
    # MANGO's accessories whose category ("Accesories, Swim and Intimate") says nothing
    **dict.fromkeys(
        (
            *("sunglasses", "glasses", "glasses case", "kerchief", "scarf", "beanie", "gloves", "foulard"),
            *("case", "cosmetic bag", "hat", "umbrella", "hairclip", "beach towel", "hairband", "gadget"),
            *("tie", "keyring", "headband", "turban"),
        ),
        ACCESSORY,
    ),
}


def _singular(text: str) -> str:
    """``"tshirts"`` -> ``"tshirt"``, ``"track pants"`` -> ``"track pant"``: the last word without a plural
    ``s`` (``"dress"`` kept)."""
    return text[:-1] if text.endswith("s") and not text.endswith("ss") else text


#: A broad group's slot that the words of the title (then the other hints) refine when no product type
#: is given: "Garment Upper body" holds jackets and blazers, "Accessories" bags and earrings.
_REFINE: dict[str, tuple[str, ...]] = {TOP: (OUTERWEAR,), ACCESSORY: (BAG, JEWELLERY)}

#: What settled a slot (:func:`slot_with_evidence`), most reliable first; the last three are low confidence.
EVIDENCE = ("type", "group", "group+title", "group+text", "words", "none")
LOW_CONFIDENCE = frozenset({"group+text", "words", "none"})


def slot_with_evidence(product_group: str, product_type: str, *hints: str) -> tuple[str | None, str]:
    """:func:`slot_from_taxonomy` and what settled it, one of :data:`EVIDENCE`: ``"type"`` (the type, or
    an underwear, nightwear, swimwear or socks group), ``"group"`` (the group alone), ``"group+title"`` /
    ``"group+text"`` (a broad group refined by the first hint, the title, or by a later one, e.g. the
    description, when no type is given), ``"words"`` (hint words alone), ``"none"`` (``None``)."""
    group = (product_group or "").strip().lower()
    ptype = (product_type or "").strip().lower()
    slot, how = _NOT_OUTFIT_GROUPS.get(group) or _TYPE_TO_SLOT.get(ptype), "type"
    if slot is None and group in _GROUP_TO_SLOT:
        slot, how = _GROUP_TO_SLOT[group], "group"
    if slot is None:
        for name in (ptype, _singular(ptype), group, _singular(group)):
            slot = _TYPE_TO_SLOT.get(name) or _MORE_GROUPS.get(name)
            if slot:
                how = "type" if name in (ptype, _singular(ptype)) else "group"
                break
    if slot is None:
        slot = next((s for pattern, s in _HINT_RULES if any(pattern.search(h or "") for h in hints)), None)
        how = "words" if slot else "none"
    elif how == "group" and not ptype and slot in _REFINE:
        for target in _REFINE[slot]:
            patterns = [p for p, s in _HINT_RULES if s == target]
            where = [i for i, h in enumerate(hints) if any(p.search(h or "") for p in patterns)]
            if where:
                slot, how = target, "group+title" if where[0] == 0 else "group+text"
                break
    if slot in (TOP, BOTTOM) and hints and _ONE_PIECE_NAME.search(hints[0] or ""):
        return ONE_PIECE, how
    if slot == ONE_PIECE and ptype == "garment set" and hints and _ACCESSORY_SET_NAME.search(hints[0] or ""):
        return ACCESSORY, how
    if slot == BOTTOM and hints and _HOSIERY_NAME.search(hints[0] or ""):
        return SOCKS_TIGHTS, how
    return slot, how


def slot_from_taxonomy(product_group: str, product_type: str, *hints: str) -> str | None:
    """The slot the taxonomy gives a source product group and type, or ``None`` when neither they nor a
    hint name one (:func:`slot_for` without its ``accessory`` fallback; an import lists such a row for
    review instead of guessing).

    Args:
        product_group, product_type, hints: as for :func:`slot_for`; a type or group not listed is
            also tried in the singular ("Tshirts" as "tshirt") and against other public catalogs'
            groups and types (``_MORE_GROUPS``: "Topwear", "Bottomwear", "Flip Flops"). Without a
            type, a broad group's slot is refined by the hints' words (:data:`_REFINE`: "Garment Upper
            body" + "Padded jacket" -> outerwear).
    """
    return slot_with_evidence(product_group, product_type, *hints)[0]


def slot_for(product_group: str, product_type: str, *hints: str) -> str:
    """Map a source product group and product type onto one of :data:`SLOTS`.

    Args:
        product_group: H&M ``product_group_name`` ("Garment Upper body") or MANGO
            ``des_product_category`` ("Bottoms"); case-insensitive.
        product_type: H&M ``product_type_name`` ("Jacket") or MANGO ``des_product_type`` ("Jeans").
        hints: free texts, the product's name first, then e.g. its department, garment group and
            section ("Noora jumpsuit", "Trouser"): the name turns a top or bottom called a jumpsuit,
            playsuit or dungarees into a one-piece, a garment set called a beanie and scarf into an
            accessory; all of them place a product of unknown type.

    Returns:
        The slot: an underwear, nightwear, swimwear or socks group settles it; else the type (every
        type of both samples is listed: "Outdoor trousers" → bottom, "Jumpsuit" → one-piece, "Handbag"
        → bag); else the group; else the first hint rule a hint matches; else ``accessory``
        (:func:`slot_from_taxonomy` without the fallback).
    """
    return slot_from_taxonomy(product_group, product_type, *hints) or ACCESSORY


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
