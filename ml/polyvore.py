"""Reader and evaluation protocol for the Polyvore Outfits dataset.

Polyvore Outfits is the benchmark of Vasileva et al., "Learning Type-Aware Embeddings for Fashion
Compatibility" (ECCV 2018; code: github.com/mvasil/fashion-compatibility). Its layout::

    <root>/polyvore_item_metadata.json      {item_id: {"semantic_category", "category_id", "title",
                                              "url_name", "description", ...}}
    <root>/images/<item_id>.jpg
    <root>/<split>/{train,valid,test}.json  [{"set_id": str, "items": [{"item_id": str, "index": int}]}]
    <root>/<split>/fill_in_blank_<subset>.json
        [{"question": ["<set_id>_<index>", ...], "answers": ["<set_id>_<index>", x4], "blank_position": int}]
    <root>/<split>/compatibility_<subset>.txt
        one outfit a line: "<label 0|1> <set_id>_<index> <set_id>_<index> ..."

``<split>`` is ``disjoint`` or ``nondisjoint`` (``None`` reads the split files from ``<root>``), and
``<subset>`` is ``valid`` or ``test``. Items in questions are named ``"<set_id>_<index>"`` and are resolved
through the outfits of ``<subset>`` (as the reference code does), ``index`` being the outfit item's
``"index"`` field (1-based in the published files).

FITB correct answer: the reference code (``parse_iminfo`` in ``polyvore_outfits.py``) marks as correct
the answer whose set_id equals the set_id of the question items; in the published files that is always
``answers[0]``. This reader applies the same set_id rule and requires exactly one such answer.

Run on a downloaded copy::

    python -c "from ml.polyvore import load_polyvore; print(load_polyvore('/data/polyvore_outfits'))"
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml.metrics import compatibility_auc, fitb_accuracy

__all__ = [
    "CompatibilityQuestion",
    "FITBQuestion",
    "PolyvoreDataset",
    "PolyvoreItem",
    "PolyvoreOutfit",
    "evaluate_polyvore",
    "load_polyvore",
]

METADATA_FILE = "polyvore_item_metadata.json"
OUTFIT_SUBSETS: tuple[str, ...] = ("train", "valid", "test")
SPLITS: tuple[str | None, ...] = ("disjoint", "nondisjoint", None)


@dataclass(frozen=True)
class PolyvoreItem:
    """One product.

    Attributes:
        item_id: Polyvore item id (the image file stem).
        category: the fine category id (``category_id``, as a string).
        semantic_category: the coarse category (``tops``, ``bottoms``, ``shoes``, ``all-body``, ...).
        title: the product title (may be empty).
        text: the text used for a text tower: the title (or ``url_name`` when the title is empty),
            followed by the description when there is one.
        image_path: ``<root>/images/<item_id>.jpg`` (not checked for existence at load time).
    """

    item_id: str
    category: str
    semantic_category: str
    title: str
    text: str
    image_path: Path


@dataclass(frozen=True)
class PolyvoreOutfit:
    """An outfit: its set id and its item ids in ``index`` order."""

    set_id: str
    item_ids: list[str]


@dataclass(frozen=True)
class FITBQuestion:
    """A fill-in-the-blank question.

    Attributes:
        question_item_ids: the outfit's remaining items.
        answer_item_ids: the candidates (4 in the published data), in file order.
        correct_index: index into ``answer_item_ids`` of the correct candidate (0 in the published data).
        blank_position: the file's ``blank_position`` (1-based position of the blank), or ``None``.
    """

    question_item_ids: list[str]
    answer_item_ids: list[str]
    correct_index: int
    blank_position: int | None = None


@dataclass(frozen=True)
class CompatibilityQuestion:
    """An outfit to score: ``label`` 1 for a real outfit, 0 for a random one."""

    label: int
    item_ids: list[str]


@dataclass
class PolyvoreDataset:
    """A loaded Polyvore Outfits split.

    Attributes:
        root: the dataset root.
        split: ``"disjoint"``, ``"nondisjoint"`` or ``None`` (files at the root).
        subset: the subset the questions come from (``"valid"`` or ``"test"``).
        items: ``{item_id: PolyvoreItem}`` for every item in the metadata.
        outfits: ``{"train" | "valid" | "test": [PolyvoreOutfit, ...]}``.
        fitb: the fill-in-the-blank questions of ``subset``.
        compatibility: the compatibility questions of ``subset``.
    """

    root: Path
    split: str | None
    subset: str
    items: dict[str, PolyvoreItem]
    outfits: dict[str, list[PolyvoreOutfit]] = field(default_factory=dict)
    fitb: list[FITBQuestion] = field(default_factory=list)
    compatibility: list[CompatibilityQuestion] = field(default_factory=list)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={len(v)}" for k, v in self.outfits.items())
        return (
            f"PolyvoreDataset(root={str(self.root)!r}, split={self.split!r}, subset={self.subset!r}, "
            f"items={len(self.items)}, outfits({counts}), fitb={len(self.fitb)}, "
            f"compatibility={len(self.compatibility)})"
        )


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"Polyvore file not found: {path}")
    return path


def _read_json(path: Path) -> Any:
    with _require(path).open(encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON: {e}") from e


def _item_from_meta(item_id: str, meta: dict[str, Any], images_dir: Path) -> PolyvoreItem:
    title = str(meta.get("title") or "").strip()
    name = title or str(meta.get("url_name") or "").strip()
    description = str(meta.get("description") or "").strip()
    text = " ".join(t for t in (name, description) if t)
    return PolyvoreItem(
        item_id=str(item_id),
        category=str(meta.get("category_id") or ""),
        semantic_category=str(meta.get("semantic_category") or ""),
        title=title,
        text=text,
        image_path=images_dir / f"{item_id}.jpg",
    )


def _read_outfits(path: Path, items: dict[str, PolyvoreItem]) -> tuple[list[PolyvoreOutfit], dict[str, str]]:
    """Return the outfits of one ``{train,valid,test}.json`` and the ``"<set_id>_<index>" -> item_id`` map."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of outfits, got {type(data).__name__}")  # noqa: TRY004
    outfits: list[PolyvoreOutfit] = []
    names: dict[str, str] = {}
    for n, raw in enumerate(data, start=1):
        try:
            set_id = str(raw["set_id"])
            entries = sorted(raw["items"], key=lambda e: int(e["index"]))
            item_ids = [str(e["item_id"]) for e in entries]
            indices = [int(e["index"]) for e in entries]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: outfit {n} is malformed ({e!r})") from e
        for item_id, index in zip(item_ids, indices):
            if item_id not in items:
                raise ValueError(
                    f"{path}: outfit {n} (set_id {set_id}) has item {item_id} missing from {METADATA_FILE}"
                )
            names[f"{set_id}_{index}"] = item_id
        outfits.append(PolyvoreOutfit(set_id=set_id, item_ids=item_ids))
    return outfits, names


def _resolve(name: str, names: dict[str, str], where: str) -> str:
    try:
        return names[str(name)]
    except KeyError:
        raise ValueError(
            f"{where}: unknown item {name!r} (no such <set_id>_<index> in the outfits)"
        ) from None


def _read_fitb(path: Path, names: dict[str, str]) -> list[FITBQuestion]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of questions, got {type(data).__name__}")  # noqa: TRY004
    questions: list[FITBQuestion] = []
    for n, raw in enumerate(data, start=1):
        where = f"{path}: question {n}"
        try:
            q_names = [str(x) for x in raw["question"]]
            a_names = [str(x) for x in raw["answers"]]
            blank = raw.get("blank_position")
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{where} is malformed ({e!r})") from e
        if not q_names or not a_names:
            raise ValueError(f"{where} has an empty question or answer list")
        q_ids = [_resolve(x, names, where) for x in q_names]
        a_ids = [_resolve(x, names, where) for x in a_names]
        gt_set = q_names[0].rsplit("_", 1)[0]
        matches = [i for i, x in enumerate(a_names) if x.rsplit("_", 1)[0] == gt_set]
        if len(matches) != 1:
            raise ValueError(f"{where}: expected exactly one answer from set {gt_set}, found {len(matches)}")
        questions.append(
            FITBQuestion(
                question_item_ids=q_ids,
                answer_item_ids=a_ids,
                correct_index=matches[0],
                blank_position=None if blank is None else int(blank),
            )
        )
    return questions


def _read_compatibility(path: Path, names: dict[str, str]) -> list[CompatibilityQuestion]:
    questions: list[CompatibilityQuestion] = []
    with _require(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}: line {n}"
            if fields[0] not in ("0", "1") or len(fields) < 2:
                raise ValueError(f"{where}: expected '<0|1> <set_id>_<index> ...', got {line.strip()!r}")
            item_ids = [_resolve(x, names, where) for x in fields[1:]]
            questions.append(CompatibilityQuestion(label=int(fields[0]), item_ids=item_ids))
    return questions


def load_polyvore(root: str | Path, split: str | None = "disjoint", subset: str = "test") -> PolyvoreDataset:
    """Load a Polyvore Outfits split: items, train/valid/test outfits, and the questions of ``subset``.

    Args:
        root: the dataset root (holding ``polyvore_item_metadata.json`` and ``images/``).
        split: ``"disjoint"``, ``"nondisjoint"``, or ``None`` when the split files sit in ``root``.
        subset: ``"test"`` or ``"valid"``: which FITB and compatibility files to read.

    Returns:
        The :class:`PolyvoreDataset`.

    Raises:
        FileNotFoundError: a required file is missing (the message names it).
        ValueError: a bad ``split``/``subset``, malformed content, or a question naming an unknown
            ``<set_id>_<index>`` (the message names the file and the question or line number).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if subset not in ("valid", "test"):
        raise ValueError(f"subset must be 'valid' or 'test' (train has no questions); got {subset!r}")
    root = Path(root)
    split_dir = root / split if split else root

    meta = _read_json(root / METADATA_FILE)
    if not isinstance(meta, dict):
        raise ValueError(f"{root / METADATA_FILE}: expected an object keyed by item_id")  # noqa: TRY004
    images_dir = root / "images"
    items = {str(k): _item_from_meta(str(k), v, images_dir) for k, v in meta.items()}

    outfits: dict[str, list[PolyvoreOutfit]] = {}
    subset_names: dict[str, str] = {}
    for name in OUTFIT_SUBSETS:
        outfits[name], names = _read_outfits(split_dir / f"{name}.json", items)
        if name == subset:
            subset_names = names

    fitb = _read_fitb(split_dir / f"fill_in_blank_{subset}.json", subset_names)
    compat = _read_compatibility(split_dir / f"compatibility_{subset}.txt", subset_names)
    return PolyvoreDataset(
        root=root, split=split, subset=subset, items=items, outfits=outfits, fitb=fitb, compatibility=compat
    )


def evaluate_polyvore(dataset: PolyvoreDataset, pair_score: Callable[[str, str], float]) -> dict[str, float]:
    """Run the published Polyvore Outfits protocol (Vasileva et al. 2018) with a pairwise scorer.

    Args:
        dataset: a loaded :class:`PolyvoreDataset`.
        pair_score: ``pair_score(item_id_a, item_id_b)`` -> compatibility, higher is better. Each
            ordered pair is computed once and cached.

    Returns:
        ``{"n_fitb", "n_compatibility"}`` always, plus ``"fitb_accuracy"`` (candidate score = mean
        pair score with the question items; :func:`ml.metrics.fitb_accuracy`, ties count wrong) when
        there are FITB questions, and ``"compatibility_auc"`` (outfit score = mean pair score over its
        unordered item pairs; :func:`ml.metrics.compatibility_auc`) when there are compatibility
        questions.
    """
    cache: dict[tuple[str, str], float] = {}

    def score(a: str, b: str) -> float:
        key = (a, b)
        if key not in cache:
            cache[key] = float(pair_score(a, b))
        return cache[key]

    result: dict[str, float] = {"n_fitb": len(dataset.fitb), "n_compatibility": len(dataset.compatibility)}

    if dataset.fitb:
        n_cand = {len(q.answer_item_ids) for q in dataset.fitb}
        if len(n_cand) != 1:
            raise ValueError(f"FITB questions have different numbers of candidates: {sorted(n_cand)}")
        fitb_scores = np.array(
            [
                [np.mean([score(q_id, a_id) for q_id in q.question_item_ids]) for a_id in q.answer_item_ids]
                for q in dataset.fitb
            ]
        )  # (Q, C)
        answers = np.array([q.correct_index for q in dataset.fitb], dtype=np.int64)  # (Q,)
        result["fitb_accuracy"] = fitb_accuracy(fitb_scores, answers)

    if dataset.compatibility:
        outfit_scores, labels = [], []
        for n, q in enumerate(dataset.compatibility, start=1):
            pairs = list(itertools.combinations(q.item_ids, 2))
            if not pairs:
                raise ValueError(f"compatibility question {n} has fewer than 2 items")
            outfit_scores.append(np.mean([score(a, b) for a, b in pairs]))
            labels.append(q.label)
        s = np.asarray(outfit_scores, dtype=np.float64)  # (N,)
        y = np.asarray(labels)  # (N,)
        result["compatibility_auc"] = compatibility_auc(s[y == 1], s[y == 0])

    return result
