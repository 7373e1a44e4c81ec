"""The MANGO styled-outfits sample: product reader, texts composed from attributes, outfits. No Django.

The data lives outside the repo (``../shared/data/mango``, see its README) and is read at run time:
``products.csv`` (one row per product: model + colour, sex, age, line, fabric, category, family, type,
photo path) and ``outfits.csv`` (``outfit_id,product_id``, one row per item of a stylist's outfit).
MANGO has no titles or descriptions, so a product's text is composed from its attributes
(:func:`mango_title`: "Female adult dark denim jeans, denim"). SKUs are prefixed (``MNG-41085800-02``)
so both samples can live in one catalog.
"""

from __future__ import annotations

import csv
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.audience import audience_group, audience_ids
from ml.data import RowError, product_text, split_is_test
from ml.dataset import TrainData, category_ids, train_data_from_items
from ml.slots import slot_for

logger = logging.getLogger(__name__)

SKU_PREFIX = "MNG-"
REQUIRED_COLUMNS = (
    "cod_modelo_color",
    "des_color_specification_esp",
    "des_agrup_color_eng",
    "des_sex",
    "des_age",
    "des_line",
    "des_fabric",
    "des_product_category",
    "des_product_aggregated_family",
    "des_product_family",
    "des_product_type",
    "image",
)
#: ``des_fabric`` codes in words ("C-COMPLEMENTOS", accessories, says nothing about the material).
FABRICS = {
    "P-PLANA": "flat weave",
    "K-CIRCULAR": "jersey knit",
    "T-TRICOT": "knitwear",
    "J-JEANS": "denim",
    "O-POLIPIEL": "faux leather",
    "L-PIEL": "leather",
    "C-COMPLEMENTOS": "",
}
#: The words of ``des_color_specification_esp`` (Spanish colour names, every word of the sample) in English.
_COLOUR_WORDS = {
    "AGUA": "aqua",
    "AMARILLO": "yellow",
    "ANTRACITA": "anthracite",
    "ARENA": "sand",
    "ASFALTO": "asphalt",
    "AZUL": "blue",
    "BEIGE": "beige",
    "BERMELLON": "vermilion",
    "BILLAR": "billiard green",
    "BLANCO": "white",
    "BLEACH": "bleached",
    "BLOOD": "blood red",
    "BLUEBLACK": "blue-black",
    "BOTELLA": "bottle green",
    "BURDEOS": "burgundy",
    "CALDERO": "rust",
    "CAMEL": "camel",
    "CANELA": "cinnamon",
    "CARAMELO": "caramel",
    "CAZA": "hunter green",
    "CELESTE": "sky blue",
    "CENIZA": "ash",
    "CEREZA": "cherry",
    "CHICLE": "bubblegum pink",
    "CHOCOLATE": "chocolate",
    "CIRUELA": "plum",
    "CLARO": "light",
    "COBRE": "copper",
    "COFFEE": "coffee",
    "COGNAC": "cognac",
    "CORAL": "coral",
    "CRUDO": "ecru",
    "CUERO": "tan",
    "CURRY": "curry",
    "DIRTY": "dirty wash",
    "ELECTRICO": "electric",
    "ESMERALDA": "emerald",
    "FLUOR": "neon",
    "FRESA": "strawberry",
    "FUCSIA": "fuchsia",
    "GERANIO": "geranium",
    "GRANATE": "maroon",
    "GRIS": "grey",
    "GUNMETAL": "gunmetal",
    "HIELO": "ice",
    "INDIGO": "indigo",
    "KHAKI": "khaki",
    "LIGHT": "light",
    "LILA": "lilac",
    "LIMA": "lime",
    "MALVA": "mauve",
    "MANDARINA": "tangerine",
    "MANZANA": "apple green",
    "MARFIL": "ivory",
    "MARINO": "navy",
    "MARRON": "brown",
    "MEDIO": "medium",
    "MENTA": "mint",
    "MISTERIO": "mystery blue",
    "MORADO": "purple",
    "MOSTAZA": "mustard",
    "MUSGO": "moss",
    "NARANJA": "orange",
    "NAVY": "navy",
    "NEGRO": "black",
    "NOCHE": "night",
    "NUDE": "nude",
    "OCRE": "ochre",
    "OFFWHITE": "off-white",
    "OLIVA": "olive",
    "ORO": "gold",
    "OSCURO": "dark",
    "PALO": "pale",
    "PASTEL": "pastel",
    "PEACH": "peach",
    "PERLA": "pearl",
    "PETROLEO": "petrol",
    "PIEDRA": "stone",
    "PIMENTON": "paprika",
    "PLATA": "silver",
    "PORCELANA": "porcelain",
    "PRUSIA": "prussian blue",
    "ROJO": "red",
    "ROSA": "pink",
    "SALMON": "salmon",
    "SOFT": "soft",
    "TABACO": "tobacco",
    "TAUPE": "taupe",
    "TEJANO": "denim",
    "TERRACOTA": "terracotta",
    "TINTA": "ink",
    "TOPO": "taupe",
    "TURQUESA": "turquoise",
    "VAINILLA": "vanilla",
    "VERDE": "green",
    "VIGORE": "marl",
    "VINO": "wine",
    "VIOLETA": "violet",
    "VISON": "mink",
}


def colour_name(spanish: str) -> str:
    """An English colour name for a MANGO ``des_color_specification_esp``: the noun comes first in
    Spanish and its modifiers follow ("TEJANO OSCURO" → "dark denim", "GRIS CLARO VIGORE" → "light grey
    marl"); a word not in the table is kept, in lower case."""
    words = [_COLOUR_WORDS.get(w, w.lower()) for w in spanish.split()]
    if not words:
        return ""
    noun, mods = words[0], words[1:]
    tail = [m for m in mods if m == "marl"]
    return " ".join([*reversed([m for m in mods if m != "marl"]), noun, *tail])


def mango_title(sex: str, age: str, colour: str, product_type: str, fabric_code: str) -> str:
    """A product title composed from attributes: ``"Female adult dark denim jeans, denim"``."""
    who = " ".join(w for w in (sex.strip(), age.strip().lower()) if w)
    title = " ".join(w for w in (who, colour, product_type.strip().lower()) if w)
    fabric = FABRICS.get(fabric_code.strip(), "")
    return f"{title}, {fabric}" if fabric else title


@dataclass(frozen=True)
class MangoProduct:
    """One row of ``products.csv`` with its composed text, normalised slot and audience, photo path."""

    product_id: str  # cod_modelo_color, e.g. "41085800-02"
    model: str  # the part before "-": products sharing it are colour variants
    colour: str  # English ("dark denim")
    sex: str
    age: str
    line: str  # des_line: SHE, VIOLETA, KIDS, HE, HOME
    fabric: str  # code, e.g. "J-JEANS"
    category: str  # des_product_category, e.g. "Bottoms"
    aggregated_family: str
    family: str
    product_type: str
    image_path: Path
    line_no: int  # 1-based line number in products.csv (header = line 1)

    @property
    def sku(self) -> str:
        return SKU_PREFIX + self.product_id

    @property
    def variant_group(self) -> str:
        return SKU_PREFIX + self.model

    @property
    def title(self) -> str:
        return mango_title(self.sex, self.age, self.colour, self.product_type, self.fabric)

    @property
    def audience(self) -> str:
        """The source's audience as one value: ``"<des_sex> <des_age>"`` ("Female Adult")."""
        return f"{self.sex} {self.age}".strip()

    @property
    def audience_group(self) -> str:
        return audience_group(self.audience, self.line, self.family)

    @property
    def description(self) -> str:
        """Category and families, without repeats: ``"Bottoms: Trousers & leggings, Trousers."``."""
        parts = list(dict.fromkeys(p for p in (self.aggregated_family, self.family) if p))
        return f"{self.category}: {', '.join(parts)}." if parts else f"{self.category}."

    @property
    def slot(self) -> str:
        return slot_for(self.category, self.product_type, "", self.family, self.aggregated_family)

    @property
    def text(self) -> str:
        """Text for the text tower (:func:`ml.data.product_text`, the one recipe of both catalogs)."""
        return product_text(
            self.title, self.colour, self.product_type, self.audience, self.line, self.description
        )


def read_products(root: Path | str) -> tuple[list[MangoProduct], list[RowError]]:
    """Read ``products.csv`` of the MANGO sample.

    Returns:
        ``(products, errors)``: valid rows in file order, one :class:`ml.data.RowError` per row that is
        not (wrong field count, product id not ``<model>-<colour>``, a repeated id, no product type).

    Raises:
        FileNotFoundError: ``products.csv`` is missing.
        ValueError: the header lacks a required column, or the file is not UTF-8 CSV.
    """
    root = Path(root)
    path = root / "products.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (expected the MANGO sample's products.csv)")
    products: list[MangoProduct] = []
    errors: list[RowError] = []
    seen: set[str] = set()
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
            for row in reader:
                line = reader.line_num
                pid = (row.get("cod_modelo_color") or "").strip()
                if None in row or any(v is None for v in row.values()):
                    errors.append(RowError(line, pid[:20], "wrong number of fields"))
                    continue
                model, sep, colour_code = pid.partition("-")
                if not (sep and model and colour_code) or len(pid) > 60 or not pid.replace("-", "").isalnum():
                    errors.append(RowError(line, pid[:20], f"invalid product id {pid[:20]!r}"))
                    continue
                if pid in seen:
                    errors.append(RowError(line, pid, "product id repeated"))
                    continue
                if not row["des_product_type"].strip():
                    errors.append(RowError(line, pid, "empty des_product_type"))
                    continue
                seen.add(pid)
                products.append(
                    MangoProduct(
                        product_id=pid,
                        model=model,
                        colour=colour_name(row["des_color_specification_esp"].strip()),
                        sex=row["des_sex"].strip(),
                        age=row["des_age"].strip(),
                        line=row["des_line"].strip(),
                        fabric=row["des_fabric"].strip(),
                        category=row["des_product_category"].strip(),
                        aggregated_family=row["des_product_aggregated_family"].strip(),
                        family=row["des_product_family"].strip(),
                        product_type=row["des_product_type"].strip(),
                        image_path=root / row["image"].strip(),
                        line_no=line,
                    )
                )
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except csv.Error as exc:
        raise ValueError(f"{path}: unreadable CSV ({exc})") from exc
    return products, errors


def read_outfits(root: Path | str) -> list[tuple[str, list[str]]]:
    """Read ``outfits.csv``: ``[(outfit_id, [product_id, ...]), ...]`` in file order, items in row order.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the header is not ``outfit_id,product_id``.
    """
    path = Path(root) / "outfits.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    outfits: dict[str, list[str]] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not {"outfit_id", "product_id"} <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: expected the columns outfit_id,product_id")
        for row in reader:
            oid, pid = (row["outfit_id"] or "").strip(), (row["product_id"] or "").strip()
            if oid and pid:
                outfits.setdefault(oid, []).append(pid)
    return list(outfits.items())


def clean_outfit(items: Sequence[str], model_of: dict[str, str]) -> list[str]:
    """Known products of an outfit, one per model (colour variants are alternatives), order kept."""
    seen: set[str] = set()
    out: list[str] = []
    for pid in items:
        model = model_of.get(pid)
        if model is None or model in seen:
            continue
        seen.add(model)
        out.append(pid)
    return out


def outfit_key(outfit_id: str) -> str:
    """The outfit's stable external id, and the key of its held-out split (:func:`outfit_is_test`)."""
    return f"mango-outfit-{outfit_id}"


def outfit_is_test(outfit_id: str, test_fraction: float, seed: int) -> bool:
    """Is this outfit held out for evaluation? Fixed by a hash of its id (:func:`ml.data.split_is_test`)."""
    return split_is_test(outfit_key(outfit_id), test_fraction, seed)


def select_products(
    products: Sequence[MangoProduct],
    outfits: Sequence[tuple[str, Sequence[str]]],
    limit: int | None,
    seed: int = 0,
) -> list[MangoProduct]:
    """Up to ``limit`` products such that whole outfits survive (outfits visited in a seeded order and
    taken while they fit); ``None`` or a limit over the catalog returns every product."""
    if not limit or limit >= len(products):
        return list(products)
    by_id = {p.product_id: p for p in products}
    order = list(range(len(outfits)))
    random.Random(seed).shuffle(order)
    chosen: set[str] = set()
    for i in order:
        new = {pid for pid in outfits[i][1] if pid in by_id} - chosen
        if len(chosen) + len(new) > limit:
            continue
        chosen |= new
        if len(chosen) >= limit:
            break
    return [p for p in products if p.product_id in chosen]


def mango_train_data(
    products: Sequence[MangoProduct],
    outfits: Sequence[tuple[str, Sequence[str]]],
    img: np.ndarray,
    txt: np.ndarray,
    *,
    test_fraction: float = 0.15,
    val_fraction: float = 0.1,
    heldout_fraction: float = 0.1,
    seed: int = 0,
) -> TrainData:
    """:class:`ml.dataset.TrainData` of MANGO products (in order) with their (N, E) float32 tower features.

    The same splits as ``import_catalog mango`` + ``recommender.ml_bridge.train_data``: an outfit is held
    out by :func:`outfit_is_test` (a fixed hash of its id; ``seed`` is the import's, never a training
    seed), products by their SKU (:func:`ml.dataset.split_items`). Outfits keep one product per model
    (:func:`clean_outfit`) and need two products of this selection. Attributes: section = line,
    department = family, colour, audience group, variant = model.
    """
    index = {p.product_id: i for i, p in enumerate(products)}
    model_of = {p.product_id: p.model for p in products}
    rows = []
    for oid, items in outfits:
        kept = [index[pid] for pid in clean_outfit(items, model_of) if pid in index]
        if len(kept) >= 2:
            rows.append(
                (outfit_key(oid), np.asarray(kept, dtype=np.int64), outfit_is_test(oid, test_fraction, seed))
            )
    return train_data_from_items(
        img,
        txt,
        keys=[p.sku for p in products],
        item_ids=list(range(len(products))),
        slots=[p.slot for p in products],
        types=[p.product_type for p in products],
        attrs={
            "section": category_ids([p.line for p in products]),
            "department": category_ids([p.family for p in products]),
            "colour": category_ids([p.colour for p in products]),
            "audience": audience_ids(p.audience_group for p in products),
            "variant": category_ids([p.model for p in products]),
        },
        outfits=rows,
        image_paths=[str(p.image_path) for p in products],
        texts=[p.text for p in products],
        val_fraction=val_fraction,
        heldout_fraction=heldout_fraction,
    )


def train_data_from_mango(
    root: Path | str, *, bundle: Any, limit: int | None = None, cache_dir: Path | None = None, **splits: float
) -> TrainData:
    """:class:`ml.dataset.TrainData` straight from the MANGO sample folder (no Django): the products of
    about ``limit`` whole outfits (:func:`select_products`, seed 0 as the import), tower features from
    ``bundle`` (through the feature cache when ``cache_dir`` is set), then :func:`mango_train_data`.

    Raises:
        FileNotFoundError / ValueError: from :func:`read_products` / :func:`read_outfits`.
    """
    from ml.features import tower_features  # lazy: open_clip (~3 s)

    products, errors = read_products(root)
    for err in errors[:10]:
        logger.warning("products.csv line %d (%s) skipped: %s", err.line, err.article_id, err.reason)
    outfits = read_outfits(root)
    products = select_products(products, outfits, limit)
    img, txt = tower_features(
        bundle, [str(p.image_path) for p in products], [p.text for p in products], cache_dir=cache_dir
    )
    return mango_train_data(products, outfits, img, txt, **splits)
