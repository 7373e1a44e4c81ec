"""The H&M catalog sample: article reader, basket → outfit cleaning, fixed hash splits. No Django.

The data lives outside the repo (``../shared/data/hm``, see its README) and is read at run time.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ml.audience import audience_group
from ml.slots import slot_for

REQUIRED_COLUMNS = (
    "article_id",
    "product_code",
    "prod_name",
    "product_type_name",
    "product_group_name",
    "colour_group_name",
    "index_group_name",
    "department_name",
    "section_name",
    "detail_desc",
)


def product_text(
    title: str, colour: str, product_type: str, audience: str, section: str, description: str
) -> str:
    """The text the text tower embeds for a product: its non-empty fields joined with ". ".

    The one recipe used for imported articles (:class:`HMArticle`), catalog rows
    (``catalog.models.Product.text``) and therefore for training and serving alike.
    """
    parts = [title, colour, product_type, audience, section, description]
    return ". ".join(p for p in parts if p)


@dataclass(frozen=True)
class HMArticle:
    """One row of ``articles.csv``, with its normalised slot and image path."""

    article_id: str
    product_code: str
    title: str
    product_type: str
    product_group: str
    colour: str
    audience: str
    department: str
    section: str
    description: str
    slot: str
    image_path: Path
    line: int  # 1-based line number in articles.csv (header = line 1), for error messages

    @property
    def text(self) -> str:
        """Text for the text tower (:func:`product_text`)."""
        return product_text(
            self.title, self.colour, self.product_type, self.audience, self.section, self.description
        )

    @property
    def audience_group(self) -> str:
        """Who it is for, normalised (:func:`ml.audience.audience_group` of index group, section, department)."""
        return audience_group(self.audience, self.section, self.department)


@dataclass(frozen=True)
class RowError:
    """A CSV row that could not be read: where, and why."""

    line: int
    article_id: str
    reason: str


def image_path_for(root: Path, article_id: str) -> Path:
    """``images/<first 3 digits>/<article_id>.jpg`` under the dataset root."""
    return root / "images" / article_id[:3] / f"{article_id}.jpg"


def read_articles(root: Path | str) -> tuple[list[HMArticle], list[RowError]]:
    """Read ``articles.csv`` of the H&M sample.

    Args:
        root: dataset folder holding ``articles.csv`` and ``images/``.

    Returns:
        ``(articles, errors)``: valid rows in file order, and one :class:`RowError` per malformed row
        (missing article id, non-numeric id, wrong field count, empty title). Valid rows are kept.

    Raises:
        FileNotFoundError: ``articles.csv`` is missing.
        ValueError: the header lacks a required column (the message lists which).
    """
    root = Path(root)
    path = root / "articles.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (expected the H&M sample's articles.csv)")
    articles: list[HMArticle] = []
    errors: list[RowError] = []
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_FIELD_CHARS * 4)  # read overlong fields, then report them as row errors
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: tolerate Excel's byte-order mark
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
            for row in reader:
                _read_row(root, row, reader.line_num, articles, errors)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except csv.Error as exc:
        raise ValueError(f"{path}: unreadable CSV ({exc})") from exc
    finally:
        csv.field_size_limit(limit)
    return articles, errors


#: Longest accepted field, and the catalog's column limits (characters).
MAX_FIELD_CHARS = 20_000
FIELD_LIMITS = {
    "prod_name": 255,
    "product_code": 64,
    "product_type_name": 64,
    "product_group_name": 64,
    "colour_group_name": 64,
    "index_group_name": 64,
    "department_name": 128,
    "section_name": 128,
    "detail_desc": MAX_FIELD_CHARS,
}


def _read_row(root: Path, row: dict, line: int, articles: list[HMArticle], errors: list[RowError]) -> None:
    """Validate one CSV row: append an :class:`HMArticle`, or a :class:`RowError` saying what is wrong."""
    aid = (row.get("article_id") or "").strip()
    if None in row or any(v is None for v in row.values()):
        errors.append(RowError(line, aid, "wrong number of fields"))
        return
    too_long = [f"{k} ({len(row[k])} > {n} characters)" for k, n in FIELD_LIMITS.items() if len(row[k]) > n]
    if too_long:
        errors.append(RowError(line, aid, "field too long: " + ", ".join(too_long)))
        return
    if not aid or not aid.isdigit() or len(aid) > 10:
        errors.append(RowError(line, aid[:20], f"invalid article_id {aid[:20]!r}"))
        return
    aid = aid.zfill(10)
    title = row["prod_name"].strip()
    if not title:
        errors.append(RowError(line, aid, "empty prod_name"))
        return
    articles.append(
        HMArticle(
            article_id=aid,
            product_code=row["product_code"].strip(),
            title=title,
            product_type=row["product_type_name"].strip(),
            product_group=row["product_group_name"].strip(),
            colour=row["colour_group_name"].strip(),
            audience=row["index_group_name"].strip(),
            department=row["department_name"].strip(),
            section=row["section_name"].strip(),
            description=row["detail_desc"].strip(),
            slot=slot_for(
                row["product_group_name"],
                row["product_type_name"],
                title,
                row["department_name"],
                row.get("garment_group_name") or "",
                row["section_name"],
            ),
            image_path=image_path_for(root, aid),
            line=line,
        )
    )


def read_baskets(root: Path | str) -> list[list[str]]:
    """Read ``baskets.json``: a list of baskets, each a list of 10-digit article ids.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the JSON is not a list of lists of strings.
    """
    path = Path(root) / "baskets.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of baskets (lists of article ids)")
    for i, b in enumerate(data):
        if not isinstance(b, list) or not all(isinstance(a, str) and a.isdigit() for a in b):
            raise ValueError(f"{path}: basket {i} is not a list of article id strings: {str(b)[:80]}")
    return [[a.zfill(10) for a in b] for b in data]


def clean_basket(basket: Sequence[str], product_code: dict[str, str]) -> list[str]:
    """Turn a co-purchase basket into an outfit: keep known articles, one per ``product_code``.

    Colour variants of one product are alternatives, not outfit partners (dataset README), so only
    the first article of each product code is kept. Order is preserved.

    Args:
        basket: article ids in purchase order.
        product_code: article id → product code, for the articles present in the catalog.

    Returns:
        The cleaned list of article ids (may be shorter than 2; callers drop those).
    """
    seen: set[str] = set()
    out: list[str] = []
    for aid in basket:
        code = product_code.get(aid)
        if code is None or code in seen or aid in out:
            continue
        seen.add(code)
        out.append(aid)
    return out


def outfits_from_baskets(
    baskets: Iterable[Sequence[str]], product_code: dict[str, str], min_items: int = 2
) -> list[tuple[int, list[str]]]:
    """Clean every basket and keep those with at least ``min_items`` items.

    Returns:
        ``[(basket_index, article_ids), ...]``; the basket index is a stable external id.
    """
    out = []
    for i, b in enumerate(baskets):
        items = clean_basket(b, product_code)
        if len(items) >= min_items:
            out.append((i, items))
    return out


#: Salt of the held-out split. Fixed for good: changing it moves every outfit and product between the
#: training and held-out sides, and then no two versions' held-out figures compare.
SPLIT_SALT = "fashion-heldout-v1"


def unit_hash(key: str | int, salt: str = SPLIT_SALT) -> float:
    """A uniform number in [0, 1) from ``sha256(f"{salt}:{key}")`` (its first 8 bytes / 2**64).

    Depends on the key and the salt alone: not on Python's hash seed, a training seed, the catalog's
    size or the order rows are read in.
    """
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def held_out(key: str | int, fraction: float, salt: str = SPLIT_SALT) -> bool:
    """Is the outfit or product with this stable key (basket id, SKU) on the held-out side?

    ``unit_hash(key, salt) < fraction``: fixed per key, so an outfit's or product's side never changes
    when the catalog grows, is imported in another order, or a model is trained with another seed.
    """
    return unit_hash(key, salt) < fraction


def split_is_test(key: str | int, test_fraction: float, seed: int = 0) -> bool:
    """The catalog import's outfit split: :func:`held_out` with the fixed salt (``seed=0``, the default).

    ``seed`` is the import's own (``import_catalog --seed``), never a training seed; a non-zero one
    is mixed into the salt, for a deliberately different split.
    """
    return held_out(key, test_fraction, SPLIT_SALT if seed == 0 else f"{SPLIT_SALT}:{seed}")


def select_articles(
    articles: Sequence[HMArticle], baskets: Sequence[Sequence[str]], limit: int | None, seed: int = 0
) -> list[HMArticle]:
    """Pick up to ``limit`` articles so that whole baskets survive (for quick runs with ``LIMIT=``).

    Baskets are visited in a seeded order and their articles taken until ``limit`` is reached; no
    basket is cut in half. ``limit=None`` returns all articles.
    """
    if not limit or limit >= len(articles):
        return list(articles)
    by_id = {a.article_id: a for a in articles}
    order = list(range(len(baskets)))
    random.Random(seed).shuffle(order)
    chosen: dict[str, HMArticle] = {}
    for i in order:
        new = [aid for aid in baskets[i] if aid in by_id and aid not in chosen]
        if len(chosen) + len(new) > limit:
            continue
        for aid in new:
            chosen[aid] = by_id[aid]
        if len(chosen) >= limit:
            break
    return [a for a in articles if a.article_id in chosen]
