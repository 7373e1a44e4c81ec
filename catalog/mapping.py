"""Column mappings: how any shop's CSV becomes our product fields, with built-in presets.

A :class:`ColumnMapping` says, for each of our fields (:data:`TARGETS`), where its value comes from: a
column (or the first non-empty of several), a template over columns (``"MNG-{cod_modelo_color}"``,
``"{des_age|lower}"``), the value of a named option (Shopify's ``Option1 Name`` = "Color" /
``Option1 Value``) or a constant, each with an optional transform (:data:`TRANSFORMS`). Rows sharing a
``group_by`` value are one product's rows (Shopify's ``Handle``): their empty ``fill_down`` cells take
the first row's value. It is stored as JSON (:meth:`ColumnMapping.as_dict`) on an import job, in a
saved :class:`catalog.models.ImportMapping` or in a file for ``manage.py import_products --mapping``.

:func:`mapping_propose` proposes a mapping for a new file: a preset whose columns it has (Shopify's
product export, the MANGO sample, the "fashion product images" layout, our own format), else each field
by the column's name, else by its content. :func:`slot_infer` gives a row without a slot one from its
product type and group through the taxonomy (:func:`ml.slots.slot_from_taxonomy`), else the catalog's
own types, else says why it needs a review.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from ml.mango import colour_name
from ml.slots import SLOTS, slot_from_taxonomy
from ml.vocab import vocab_key

#: Our fields a mapping fills: the product's details (``catalog.models.PRODUCT_FIELDS``), the photo's
#: name in the zip (``image``), and two read only to infer the slot (``product_group``, ``hints``).
TARGETS = (
    "sku",
    "title",
    "slot",
    "image",
    "colour",
    "product_type",
    "audience",
    "price",
    "description",
    "variant_group",
    "product_group",
    "hints",
)
TARGET_LABELS = {
    "sku": "SKU (unique product id)",
    "title": "Title",
    "slot": "Outfit slot",
    "image": "Photo file name",
    "colour": "Colour",
    "product_type": "Product type",
    "audience": "Audience (who it is for)",
    "price": "Price",
    "description": "Description",
    "variant_group": "Variant group (shared by colour variants)",
    "product_group": "Product group (helps find the slot)",
    "hints": "Other words that help find the slot (tags)",
}
_TAG = re.compile(r"<[^>]*>")


def strip_html(text: str) -> str:
    """``"<p>Soft <b>cotton</b></p><p>Tee</p>"`` -> ``"Soft cotton Tee"``: tags removed, entities decoded,
    white space collapsed."""
    return " ".join(html.unescape(_TAG.sub(" ", text)).split())


def file_name(ref: str) -> str:
    """The file name of a URL or path: ``"https://cdn.shopify.com/s/files/1/tee.jpg?v=17"`` -> ``"tee.jpg"``."""
    return ref.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]


#: Transforms a rule or a template (``{column|name}``) may apply to a value.
TRANSFORMS = {
    "strip_html": strip_html,
    "spanish_colour": colour_name,  # MANGO's "TEJANO OSCURO" -> "dark denim"
    "lower": str.lower,
    "title": lambda v: v[:1].upper() + v[1:].lower(),
    "stem": lambda v: v.split("-", 1)[0],  # "41085800-02" -> "41085800" (the model of a colour variant)
    "file_name": file_name,
}
_PLACEHOLDER = re.compile(r"\{([^{}|]+)(?:\|([a-z_]+))?\}")


@dataclass(frozen=True)
class Rule:
    """Where one field's value comes from: the first non-empty of ``columns``, else ``template``, else the
    value of the option named ``option``, else the constant ``value``; then ``transform``."""

    columns: tuple[str, ...] = ()
    template: str = ""
    option: str = ""
    value: str = ""
    transform: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if len(self.columns) == 1:
            out["column"] = self.columns[0]
        elif self.columns:
            out["columns"] = list(self.columns)
        for k in ("template", "option", "value", "transform"):
            if getattr(self, k):
                out[k] = getattr(self, k)
        return out

    def describe(self) -> str:
        """In words, for the mapping page: ``column “Title”``, ``composed: MNG-{cod_modelo_color}``..."""
        parts = []
        if self.columns:
            parts.append(" or ".join(f"column “{c}”" for c in self.columns))
        if self.template:
            parts.append(f"composed: {self.template}")
        if self.option:
            parts.append(f"the option named “{self.option}”")
        if self.value:
            parts.append(f"always “{self.value}”")
        text = ", else ".join(parts) or "not in the file"
        return f"{text} ({self.transform.replace('_', ' ')})" if self.transform else text


@dataclass
class ColumnMapping:
    """How a CSV's columns become our fields (see the module doc); column names match without case."""

    fields: dict[str, Rule]
    group_by: str = ""
    fill_down: tuple[str, ...] = ()
    name: str = ""
    optional: tuple[str, ...] = ()  # columns a file may lack: their fields are then empty

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"name", "fields": {target: rule}, "group_by", "fill_down", "optional"}``."""
        return {
            "name": self.name,
            "fields": {t: r.as_dict() for t, r in self.fields.items()},
            "group_by": self.group_by,
            "fill_down": list(self.fill_down),
            "optional": list(self.optional),
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "mapping") -> ColumnMapping:
        """The mapping a JSON object describes.

        Raises:
            ValueError: ``"<where>: <what is wrong>"``: not an object, an unknown field or transform, a rule
                that is not an object or names no source, a template placeholder with an unknown transform.
        """
        if not isinstance(data, dict) or not isinstance(data.get("fields", {}), dict):
            raise ValueError(f'{where}: expected an object {{"fields": {{"sku": {{"column": "..."}}, ...}}}}')
        fields_: dict[str, Rule] = {}
        for target, spec in data.get("fields", {}).items():
            if target not in TARGETS:
                raise ValueError(f"{where}: unknown field {target!r}; fields: {', '.join(TARGETS)}")
            if isinstance(spec, str):
                spec = {"column": spec}
            if not isinstance(spec, dict):
                raise ValueError(f'{where}: {target}: expected an object such as {{"column": "Title"}}')
            cols = spec.get("columns") or ([spec["column"]] if spec.get("column") else [])
            rule = Rule(
                columns=tuple(str(c) for c in cols),
                template=str(spec.get("template", "")),
                option=str(spec.get("option", "")),
                value=str(spec.get("value", "")),
                transform=str(spec.get("transform", "")),
            )
            unknown = [
                t for t in (rule.transform, *(m[2] for m in _PLACEHOLDER.finditer(rule.template))) if t
            ]
            unknown = [t for t in unknown if t not in TRANSFORMS]
            if unknown:
                raise ValueError(
                    f"{where}: {target}: unknown transform {unknown[0]!r}; transforms: {', '.join(TRANSFORMS)}"
                )
            if rule == Rule(transform=rule.transform):
                raise ValueError(f"{where}: {target}: give a column, a template, an option or a value")
            fields_[target] = rule
        return cls(
            fields=fields_,
            group_by=str(data.get("group_by", "")),
            fill_down=tuple(str(c) for c in data.get("fill_down", ())),
            name=str(data.get("name", "")),
            optional=tuple(str(c) for c in data.get("optional", ())),
        )

    def columns_used(self) -> set[str]:
        """The source columns the rules read (lower case)."""
        used = {c.lower() for r in self.fields.values() for c in r.columns}
        used |= {
            m[1].strip().lower() for r in self.fields.values() for m in _PLACEHOLDER.finditer(r.template)
        }
        return used | ({self.group_by.lower()} if self.group_by else set())


def _rule(column: str = "", **kw: Any) -> Rule:
    return Rule(columns=(column,) if column else (), **kw)


_SHOPIFY_FILL = ("Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags", "Image Src")
_SHOPIFY_FILL += ("Option1 Name", "Option2 Name", "Option3 Name")
_SHOPIFY_FILL += ("Google Shopping / Gender", "Google Shopping / Age Group")

#: Built-in mappings: ``name -> (label, columns that identify the layout, mapping)``.
PRESETS: dict[str, tuple[str, frozenset[str], ColumnMapping]] = {
    "shopify": (
        "Shopify product export",
        frozenset({"handle", "title", "variant sku", "image src"}),
        ColumnMapping(
            name="Shopify product export",
            group_by="Handle",
            fill_down=_SHOPIFY_FILL,
            fields={
                "sku": _rule("Variant SKU"),
                "title": _rule("Title"),
                "description": _rule("Body (HTML)", transform="strip_html"),
                "product_type": _rule("Type"),
                "product_group": _rule("Product Category"),
                "colour": Rule(option="Color"),
                "price": _rule("Variant Price"),
                "image": Rule(columns=("Variant Image", "Image Src"), transform="file_name"),
                "audience": Rule(template="{Google Shopping / Gender} {Google Shopping / Age Group}"),
                "variant_group": _rule("Handle"),
                "hints": _rule("Tags"),
            },
        ),
    ),
    "mango": (
        "MANGO products.csv",
        frozenset({"cod_modelo_color", "des_color_specification_esp", "des_product_type", "image"}),
        ColumnMapping(
            name="MANGO products.csv",
            fields={
                "sku": Rule(template="MNG-{cod_modelo_color}"),
                "title": Rule(
                    template="{des_sex} {des_age|lower} {des_color_specification_esp|spanish_colour} "
                    "{des_product_type|lower}"
                ),
                "colour": _rule("des_color_specification_esp", transform="spanish_colour"),
                "product_type": _rule("des_product_type"),
                "product_group": _rule("des_product_category"),
                "audience": Rule(template="{des_sex} {des_age}"),
                "description": Rule(template="{des_product_category}: {des_product_family}."),
                "variant_group": Rule(template="MNG-{cod_modelo_color|stem}"),
                "image": _rule("image"),
                "hints": Rule(template="{des_product_family} {des_product_aggregated_family}"),
            },
        ),
    ),
    "fashion-product-images": (
        "Fashion product images (styles.csv + images/<id>.jpg)",
        frozenset({"id", "gender", "mastercategory", "subcategory", "articletype", "productdisplayname"}),
        ColumnMapping(
            name="Fashion product images (styles.csv + images/<id>.jpg)",
            fields={
                "sku": _rule("id"),
                "title": _rule("productDisplayName"),
                "product_type": _rule("articleType"),
                "product_group": _rule("subCategory"),
                "colour": _rule("baseColour"),
                "audience": _rule("gender"),
                "image": Rule(template="{id}.jpg"),
                "description": Rule(template="{usage} {articleType}, {season} {year}"),
                "hints": _rule("masterCategory"),
            },
        ),
    ),
    "outfitlab": (
        "This site's own CSV format",
        frozenset({"sku", "title", "slot", "image"}),
        ColumnMapping(
            name="This site's own CSV format",
            fields={t: _rule(t) for t in TARGETS if t not in ("product_group", "hints")},
            optional=tuple(t for t in TARGETS if t not in ("sku", "title", "slot", "image")),
        ),
    ),
}

#: Column names (compared without case, spaces or punctuation) that propose a field by name.
_SYNONYMS = {
    "sku": "sku|variant sku|article_id|product_id|item_id|id|code|style_id",
    "title": "title|name|product name|productdisplayname|prod_name|product title",
    "slot": "slot|outfit slot",
    "image": "image|image src|image url|photo|picture|image_path|filename|file",
    "colour": "colour|color|basecolour|basecolor|colour_group_name|colour name|color name",
    "product_type": "product_type|type|product type|articletype|product_type_name|des_product_type",
    "audience": "audience|gender|sex|des_sex|index_group_name|department",
    "price": "price|variant price|unit price|retail price",
    "description": "description|body (html)|body|detail_desc|details|long description",
    "variant_group": "variant_group|handle|product_code|parent sku|style|model",
    "product_group": "product_group|subcategory|product_group_name|des_product_category|product category",
    "hints": "tags|keywords",
}
_SQUASH = re.compile(r"[^0-9a-z]+")
_SYNONYM_INDEX = {
    _SQUASH.sub("", name): target for target, names in _SYNONYMS.items() for name in names.split("|")
}
_COLOURS = set(
    [
        "black",
        "white",
        "grey",
        "gray",
        "blue",
        "navy",
        "red",
        "green",
        "yellow",
        "pink",
        "purple",
        "orange",
        "brown",
        "beige",
        "cream",
        "ecru",
        "khaki",
        "olive",
        "gold",
        "silver",
        "turquoise",
        "burgundy",
        "lilac",
        "mole",
        "off",
    ]
)
_AUDIENCE = {
    "men",
    "man",
    "women",
    "woman",
    "boy",
    "girl",
    "kid",
    "unisex",
    "female",
    "male",
    "baby",
    "ladieswear",
}
_IMAGE = re.compile(r"\.(jpe?g|png|webp)(\?.*)?$", re.IGNORECASE)


@dataclass
class Proposal:
    """A proposed mapping, and for each field how it was found ("preset", "by name", "by content")."""

    mapping: ColumnMapping
    how: dict[str, str] = field(default_factory=dict)
    preset: str = ""


def _share(values: Sequence[str], test) -> float:
    vals = [v for v in values if v.strip()]
    return sum(1 for v in vals if test(v.strip())) / len(vals) if vals else 0.0


def _is_price(v: str) -> bool:
    try:
        d = Decimal(v)
    except InvalidOperation:
        return False
    return d.is_finite() and d >= 0 and "." in v and d == d.quantize(Decimal("0.01"))


def mapping_propose(header: Sequence[str], sample: Sequence[Sequence[str]]) -> Proposal:
    """Propose a mapping for a CSV from its header and a few rows (``sample``, lists of fields).

    A preset whose identifying columns are all in the header wins (:data:`PRESETS`, most columns first).
    Otherwise each field takes a column named like it (:data:`_SYNONYMS`), then the remaining fields a
    column whose sample values look like theirs: slot names, prices with decimals, photo file names,
    colour words, audience words, long texts (description), unique codes (SKU), short texts (title).
    A column serves at most one field.
    """
    lower = [h.strip().lower() for h in header]
    for name, (_label, needed, mapping) in sorted(PRESETS.items(), key=lambda kv: -len(kv[1][1])):
        if needed <= set(lower):
            present = {
                t: r
                for t, r in mapping.fields.items()
                if not r.columns or any(c.lower() in lower for c in r.columns)
            }
            m = ColumnMapping(present, mapping.group_by, mapping.fill_down, mapping.name)
            return Proposal(m, dict.fromkeys(present, "preset"), preset=name)
    rules: dict[str, Rule] = {}
    how: dict[str, str] = {}
    taken: set[int] = set()
    for i, h in enumerate(header):
        target = _SYNONYM_INDEX.get(_SQUASH.sub("", h.lower()))
        if target and target not in rules:
            rules[target], how[target] = _rule(h.strip()), "by name"
            taken.add(i)
    columns = [[row[i] if i < len(row) else "" for row in sample] for i in range(len(header))]
    tests = (
        ("slot", lambda vs: _share(vs, lambda v: v in SLOTS) >= 0.8),
        ("image", lambda vs: _share(vs, lambda v: bool(_IMAGE.search(v))) >= 0.8),
        ("price", lambda vs: _share(vs, _is_price) >= 0.8),
        ("colour", lambda vs: _share(vs, lambda v: bool(set(vocab_key(v).split()) & _COLOURS)) >= 0.6),
        ("audience", lambda vs: _share(vs, lambda v: bool(set(vocab_key(v).split()) & _AUDIENCE)) >= 0.6),
        ("description", lambda vs: _mean_len(vs) > 60),
        ("sku", lambda vs: _unique_codes(vs)),
        ("title", lambda vs: 8 <= _mean_len(vs) <= 80 and _share(vs, lambda v: " " in v) >= 0.6),
    )
    for target, test in tests:
        if target in rules:
            continue
        for i, values in enumerate(columns):
            if i not in taken and any(v.strip() for v in values) and test(values):
                rules[target], how[target] = _rule(header[i].strip()), "by content"
                taken.add(i)
                break
    return Proposal(ColumnMapping({t: rules[t] for t in TARGETS if t in rules}), how)


def _mean_len(values: Sequence[str]) -> float:
    vals = [v.strip() for v in values if v.strip()]
    return sum(map(len, vals)) / len(vals) if vals else 0.0


def _unique_codes(values: Sequence[str]) -> bool:
    """Values that look like SKUs: every one given, all different, no spaces, and most with a digit (a
    short file's category column, "Shirts" / "Shoes", is unique too, and must not become the SKU)."""
    vals = [v.strip() for v in values]
    unique = all(vals) and len(set(vals)) == len(vals) and not any(" " in v for v in vals)
    return unique and _share(vals, lambda v: any(c.isdigit() for c in v)) >= 0.8


@dataclass
class MappedRow:
    """One CSV row through a mapping: its number (the header is row 1), our fields, the source values of
    the vocabulary fields before a transform, or ``error`` when the row cannot be read."""

    row: int
    values: dict[str, str]
    sources: dict[str, str] = field(default_factory=dict)
    error: str = ""


def mapping_rows(
    mapping: ColumnMapping, header: Sequence[str], rows: Iterable[tuple[int, Sequence[str]]], notes: list[str]
) -> Iterator[MappedRow]:
    """Apply ``mapping`` to CSV rows (``(row number, fields)``), yielding one :class:`MappedRow` per
    product row (every :data:`TARGETS` key, values trimmed).

    Rows of a group (``group_by``) after its first with no SKU are the group's extra photos (Shopify puts
    each further photo of a product on a row of its own): they are skipped and counted in ``notes``.

    Raises:
        ValueError: a column the mapping reads is not in the header (naming the columns it has).
    """
    col = {h.strip().lower(): i for i, h in enumerate(header)}
    missing = sorted(c for c in mapping.columns_used() if c not in col and not _optional(mapping, c))
    if missing:
        raise ValueError(
            f"the mapping reads column(s) {', '.join(repr(c) for c in missing)} that the file does not have "
            f"(its columns: {', '.join(h.strip() for h in header)})"
        )
    group_col = col.get(mapping.group_by.lower()) if mapping.group_by else None
    fill = [col[c.lower()] for c in mapping.fill_down if c.lower() in col]
    firsts: dict[str, Sequence[str]] = {}
    extra_photos = 0
    for number, fields_ in rows:
        if len(fields_) != len(header):
            yield MappedRow(number, {}, error=f"has {len(fields_)} fields; the header has {len(header)}")
            continue
        fields_ = list(fields_)
        key = fields_[group_col].strip() if group_col is not None else ""
        if key:
            first = firsts.setdefault(key, fields_)
            for i in fill:
                if not fields_[i].strip():
                    fields_[i] = first[i]
        values = {
            t: _evaluate(mapping.fields[t], fields_, col) if t in mapping.fields else "" for t in TARGETS
        }
        if key and not values["sku"] and firsts[key] is not fields_:
            extra_photos += 1
            continue
        sources = {
            t: fields_[col[r.columns[0].lower()]].strip()
            for t in ("colour", "product_type", "audience")
            if (r := mapping.fields.get(t)) and r.transform and r.columns and r.columns[0].lower() in col
        }
        yield MappedRow(number, values, sources)
    if extra_photos:
        notes.append(f"{extra_photos} row(s) holding only a further photo of a product were skipped")


def _optional(mapping: ColumnMapping, column: str) -> bool:
    """Columns a rule may lack: all but the first of several, those inside a template of several
    placeholders, and a mapping's ``optional`` ones (our own format's columns past the four it needs)."""
    if column in {c.lower() for c in mapping.optional}:
        return True
    for rule in mapping.fields.values():
        if column in [c.lower() for c in rule.columns[1:]] or (
            len(rule.columns) > 1 and column == rule.columns[0].lower()
        ):
            return True
        if len(_PLACEHOLDER.findall(rule.template)) > 1 and column in rule.template.lower():
            return True
    return False


def _evaluate(rule: Rule, fields_: Sequence[str], col: dict[str, int]) -> str:
    def cell(name: str) -> str:
        i = col.get(name.strip().lower())
        return fields_[i].strip() if i is not None else ""

    value = next((v for v in map(cell, rule.columns) if v), "")
    if not value and rule.template:
        value = _PLACEHOLDER.sub(
            lambda m: TRANSFORMS[m[2]](cell(m[1])) if m[2] else cell(m[1]), rule.template
        )
        value = " ".join(value.split()).strip(" ,;:-")
        value = re.sub(r"\s+([,.:;])", r"\1", value)
        value = "" if value in (".", ":") else value
    if not value and rule.option:
        for n in (1, 2, 3):
            if cell(f"Option{n} Name").lower() == rule.option.lower():
                value = cell(f"Option{n} Value")
                break
    value = value or rule.value
    return TRANSFORMS[rule.transform](value).strip() if value and rule.transform else value.strip()


def slot_infer(values: dict[str, str], catalog_types: dict[str, str]) -> tuple[str | None, str]:
    """The slot of a mapped row without one: ``(slot, how)``, or ``(None, reason for the review)``.

    The taxonomy first (:func:`ml.slots.slot_from_taxonomy` of the product group, type, then title, hints
    and description as hints), then the catalog's own products of the same type (``catalog_types``:
    ``{vocab_key(type): slot}``, the slot most of them have).
    """
    hints = (values.get("title", ""), values.get("hints", ""), values.get("product_group", ""))
    slot = slot_from_taxonomy(values.get("product_group", ""), values.get("product_type", ""), *hints)
    if slot:
        return slot, "taxonomy"
    ptype = values.get("product_type", "")
    if ptype and vocab_key(ptype) in catalog_types:
        return catalog_types[vocab_key(ptype)], "catalog"
    what = f"product type “{ptype}”" if ptype else "no product type"
    return None, (
        f"needs review: no outfit slot in the file, and {what} and the title “{values.get('title', '')[:60]}” "
        "do not say which slot it fills; add a slot column or choose the slot when editing"
    )
