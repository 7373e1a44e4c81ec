"""Catalog writes for products and outfits (HackSoft styleguide "services").

Every committed change to products is announced with :data:`catalog.signals.products_changed`
(sent on commit, so a listener never sees a row that was rolled back); the layers above react (the
recommender queues embeddings). Imports live in :mod:`catalog.imports` (CSV + zip) and
:mod:`catalog.hm_import` and :mod:`catalog.mango_import` (the real samples).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Count, Q

from catalog.images import CleanImage, clean_image
from catalog.models import PRODUCT_FIELDS, Outfit, OutfitItem, Product
from catalog.signals import products_changed_on_commit
from ml.audience import audience_group, names_audience
from ml.slots import SLOTS

#: SKUs: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.
SKU_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def store_image(product: Product, img: CleanImage) -> None:
    for old in (product.image, product.thumbnail):  # replace, never pile up renamed copies
        if old:
            old.delete(save=False)
    name = f"{img.sha256[:24]}.jpg"  # file names never come from user input
    product.image.save(name, ContentFile(img.jpeg), save=False)
    product.thumbnail.save(name, ContentFile(img.thumbnail), save=False)
    product.image_sha256 = img.sha256


#: Largest price the ``price`` column holds (``max_digits=10, decimal_places=2``).
MAX_PRICE = Decimal("99999999.99")
#: Longest description accepted (characters); other text fields are limited by their column.
MAX_DESCRIPTION = 20_000
#: Fields a merchandiser may edit: :data:`catalog.models.PRODUCT_FIELDS` but the SKU (the product's
#: identity stays).
EDITABLE_FIELDS = tuple(f for f in PRODUCT_FIELDS if f != "sku")
#: The free-text ones among them (checked for length and NUL bytes).
TEXT_FIELDS = tuple(f for f in EDITABLE_FIELDS if f not in ("title", "slot", "price"))
_MAX_LENGTHS = {f: Product._meta.get_field(f).max_length or MAX_DESCRIPTION for f in ("title", *TEXT_FIELDS)}


def product_validate(
    *,
    sku: str,
    title: str,
    slot: str,
    price: Decimal | None = None,
    **texts: str,
) -> None:
    """Check a product's fields before anything is written (shared by create, update and bulk import).

    Args:
        texts: the other text fields (``description``, ``product_type``, ``colour``, ``audience``,
            ``variant_group``), checked for length and NUL bytes.

    Raises:
        ValueError: ``"<field>: <what is wrong>"`` for the first bad field (SKU pattern, empty title,
            unknown slot, negative or too large price, text too long or holding a NUL byte).
    """
    if not SKU_RE.match(sku):
        raise ValueError(f"sku: {sku!r} is not valid (use 1-64 letters, digits, '.', '_' or '-')")
    if not title.strip():
        raise ValueError("title: must not be empty")
    if slot not in SLOTS:
        raise ValueError(f"slot: {slot!r} is not one of {', '.join(SLOTS)}")
    if price is not None:
        if not price.is_finite():
            raise ValueError(f"price: {price} is not a number")
        if price < 0:
            raise ValueError(f"price: {price} is negative")
        if price > MAX_PRICE:
            raise ValueError(f"price: {price} is over the maximum {MAX_PRICE}")
        if price != price.quantize(Decimal("0.01")):
            raise ValueError(f"price: {price} has more than 2 decimal places")
    for name, value in {"title": title, **texts}.items():
        if "\x00" in value:
            raise ValueError(f"{name}: contains a NUL byte")
        limit = _MAX_LENGTHS.get(name)
        if limit is not None and len(value) > limit:
            raise ValueError(f"{name}: {len(value)} characters is over the limit of {limit}")


#: Said of an audience that names nobody (by the upload page, the API and the bulk import alike).
AUDIENCE_UNKNOWN = (
    "“{value}” does not say who the product is for: use words such as women, men, kids, baby, girls, boys"
    " or unisex (e.g. “Ladieswear”, “Kids”), or leave it empty for a product for everyone."
)


def audience_validate(audience: str) -> None:
    """Refuse a new audience that names nobody ("Martians"): it would be taken as unisex and shown beside
    every audience's items (:func:`ml.audience.names_audience`; an empty value, for everyone, is fine).

    Raises:
        ValueError: ``"audience: <what is wrong>"``.
    """
    if not names_audience(audience):
        raise ValueError("audience: " + AUDIENCE_UNKNOWN.format(value=audience))


def product_create(
    *,
    sku: str,
    title: str,
    slot: str,
    image_bytes: bytes,
    description: str = "",
    product_type: str = "",
    colour: str = "",
    audience: str = "",
    price: Decimal | None = None,
    variant_group: str = "",
    source: str = Product.Source.UPLOAD,
    embed: bool = True,
    image_name: str | None = None,
) -> Product:
    """Create a product from an uploaded photo and its details, and queue its embedding.

    ``image_name`` names the photo in error messages (default: the SKU). Its ``audience_group`` is
    derived from ``audience`` (:func:`ml.audience.audience_group`; empty → unisex).

    Raises:
        ImageError: the photo is empty, not an image, truncated or too large (nothing is created).
        ValueError: a field fails :func:`product_validate` or :func:`audience_validate`, or the SKU exists
            already.
    """
    sku = sku.strip()
    product_validate(
        sku=sku,
        title=title,
        slot=slot,
        price=price,
        description=description,
        product_type=product_type,
        colour=colour,
        audience=audience,
        variant_group=variant_group,
    )
    audience_validate(audience)
    if Product.objects.filter(sku=sku).exists():
        raise ValueError(f"sku: a product with SKU {sku!r} exists already")
    img = clean_image(image_bytes, name=image_name or sku)  # validate before anything is written
    with transaction.atomic():
        product = Product(
            sku=sku,
            title=title.strip(),
            slot=slot,
            description=description,
            product_type=product_type,
            colour=colour,
            audience=audience,
            audience_group=audience_group(audience),
            price=price,
            variant_group=variant_group,
            source=source,
        )
        store_image(product, img)
        product.save()
        if embed:
            products_changed_on_commit(product_ids=[product.pk], change="created", vectors_stale=True)
    return product


def outfit_create(*, product_ids: Sequence[int], name: str = "") -> Outfit:
    """Create a curated outfit (training data) from at least two distinct existing products.

    Raises:
        ValueError: fewer than two distinct ids, unknown ids (listed in the message), or a curated outfit
            of exactly these products exists already (a second would count its pairs twice in training).
    """
    ids = list(dict.fromkeys(int(i) for i in product_ids))
    if len(ids) < 2:
        raise ValueError("an outfit needs at least two distinct products")
    found = set(Product.objects.filter(pk__in=ids).values_list("pk", flat=True))
    unknown = [i for i in ids if i not in found]
    if unknown:
        raise ValueError(f"unknown product id(s): {unknown}")
    same = (
        Outfit.objects.filter(source=Outfit.Source.CURATED)
        .annotate(n=Count("items"), hit=Count("items", filter=Q(items__product_id__in=ids)))
        .filter(n=len(ids), hit=len(ids))
        .first()
    )
    if same is not None:
        raise ValueError(f"these products are a curated outfit already: {same}")
    with transaction.atomic():
        outfit = Outfit.objects.create(name=name, source=Outfit.Source.CURATED)
        OutfitItem.objects.bulk_create(
            [OutfitItem(outfit=outfit, product_id=pid, position=i) for i, pid in enumerate(ids)]
        )
        # complete-the-look lifts items outfits paired (recommender.looks.outfit_memory): answers change
        products_changed_on_commit(product_ids=ids, change="updated", vectors_stale=False)
    return outfit


# --- edit, delete, curated outfits ------------------------------------------------------------------

#: Fields whose change alters the product's vectors (the text tower reads :attr:`Product.text`; the slot
#: is copied onto the vector rows), so they re-queue its embedding, as a new photo does.
EMBEDDED_FIELDS = ("title", "slot", "description", "product_type", "colour", "audience")


def product_update(
    *,
    product: Product,
    data: dict[str, Any],
    image_bytes: bytes | None = None,
    embed: bool = True,
    image_name: str | None = None,
) -> list[str]:
    """Change a product's details and optionally its photo; re-queue its embedding when text, slot or
    photo changed.

    Args:
        data: new values of :data:`EDITABLE_FIELDS` (keys left out keep their value; ``price`` is a
            ``Decimal`` or ``None``).
        image_bytes: a new photo, or ``None`` to keep the current one (the same file is no change).
        embed: announce the change as making the vectors stale (``catalog.signals``) when something
            embedded changed; ``False`` when the caller announces a batch itself (bulk import).
        image_name: names the photo in error messages (default: the SKU).

    Returns:
        The names of the fields that changed (``"image"`` for a new photo, ``"audience_group"`` when the
        normalised audience follows a new ``audience``); empty when nothing did.

    Raises:
        ValueError: an unknown field, a value failing :func:`product_validate`, or a new audience failing
            :func:`audience_validate` (nothing is written).
        ImageError: the new photo is not usable (nothing is written).
    """
    unknown = sorted(set(data) - set(EDITABLE_FIELDS))
    if unknown:
        raise ValueError(f"cannot edit {', '.join(unknown)}; editable: {', '.join(EDITABLE_FIELDS)}")
    values = {f: getattr(product, f) for f in EDITABLE_FIELDS}
    values.update({k: (v.strip() if isinstance(v, str) and k == "title" else v) for k, v in data.items()})
    for key in EDITABLE_FIELDS:
        if key != "price" and values[key] is None:
            values[key] = ""
    texts = {k: values[k] for k in TEXT_FIELDS}
    product_validate(
        sku=product.sku, title=values["title"], slot=values["slot"], price=values["price"], **texts
    )
    if values["audience"] != product.audience:  # a value stored before this check stays editable
        audience_validate(values["audience"])
    img = clean_image(image_bytes, name=image_name or product.sku) if image_bytes is not None else None
    changed = [f for f in EDITABLE_FIELDS if getattr(product, f) != values[f]]
    group = audience_group(values["audience"], product.section, product.department)
    if group != product.audience_group:
        changed.append("audience_group")
    if img is not None and (img.sha256 != product.image_sha256 or not product.image):
        changed.append("image")
    if not changed:
        return []
    with transaction.atomic():
        for f in EDITABLE_FIELDS:
            setattr(product, f, values[f])
        product.audience_group = group
        if "image" in changed:
            store_image(product, img)
        product.save()
        # Announced once committed: the recommender re-embeds when text, slot or photo changed, and
        # retires cached answers in any case (the old title, price or photo must not be served).
        stale = embed and any(f in changed for f in (*EMBEDDED_FIELDS, "image"))
        products_changed_on_commit(product_ids=[product.pk], change="updated", vectors_stale=stale)
    return changed


def product_delete(*, product: Product) -> None:
    """Delete a product with its vectors and its places in outfits; its photo files go once committed.

    An outfit left with fewer than two items is deleted too (it no longer teaches compatibility).
    """
    pid = product.pk
    files = [f.name for f in (product.image, product.thumbnail) if f]
    storage = product.image.storage
    with transaction.atomic():
        outfit_ids = list(product.outfit_items.values_list("outfit_id", flat=True))
        product.delete()
        Outfit.objects.filter(pk__in=outfit_ids).annotate(n=Count("items")).filter(n__lt=2).delete()

        def remove_files() -> None:
            for name in files:
                if not Product.objects.filter(Q(image=name) | Q(thumbnail=name)).exists():  # shared photo
                    storage.delete(name)

        transaction.on_commit(remove_files)
        # cached answers must not list the deleted product
        products_changed_on_commit(product_ids=[pid], change="deleted", vectors_stale=False)


def outfit_delete(*, outfit: Outfit) -> None:
    """Delete an outfit (its products stay; their complete-the-look answers may change)."""
    with transaction.atomic():
        ids = list(outfit.items.values_list("product_id", flat=True))
        outfit.delete()
        products_changed_on_commit(product_ids=ids, change="updated", vectors_stale=False)
