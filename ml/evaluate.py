"""Held-out evaluation of the recommender heads against non-learned baselines.

Everything is measured on the seeded held-out split of a features file: the outfits in
``TrainData.test_outfits`` (never trained on) and their items, the *held-out products*. Rows are models:

* ``co-occurrence``: a category prior, ``log P(type_b | type_a)`` from the training outfits (no features);
* ``attribute-match``: the number of shared section / department / colour attributes (no features);
* ``zero-shot``: :func:`ml.heads.zero_shot_heads` (the towers' own space, untrained compatibility MLP);
* each fine-tuned model (heads saved by :func:`ml.heads.save_heads`).

Columns (all computed with :mod:`ml.metrics`):

* ``recall@1/5/10``, ``mrr``: text→item retrieval; queries are the held-out products' texts, the gallery
  their images (``gallery_size`` items), score = ``text_vec · image_vec`` in the general space.
* ``fitb``: fill-in-the-blank accuracy, 4 candidates of the answer's product type
  (:func:`ml.dataset.fitb_questions`); candidate score = mean pair score with the question items.
* ``auc``: compatibility ROC AUC, held-out outfits against one random outfit each with the same slots;
  outfit score = mean pair score over its item pairs.
* ``p@10_type``: similar-item precision@10 by product type; queries are the held-out products' fused
  vectors ``normalize(image_vec + text_vec)``, the gallery every item (the query itself left out).

FITB and AUC follow the Polyvore Outfits protocol of Vasileva et al., "Learning Type-Aware Embeddings
for Fashion Compatibility" (ECCV 2018). Baselines have no vectors, so they have no retrieval columns.
Runs without Django:

    python -m ml.evaluate --features var/features/train_data.npz --heads run1=var/models/run1/heads.pt \\
        --out var/reports/run1
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ml.config import TrainConfig
from ml.dataset import TrainData, fitb_questions
from ml.heads import RecommenderHeads, load_heads, zero_shot_heads
from ml.metrics import (
    compatibility_auc,
    fitb_accuracy,
    mean_reciprocal_rank,
    precision_at_k_by_label,
    recall_at_k,
)
from ml.plots import plot_embedding_2d, plot_loss_curves, plot_metric_bars
from ml.slots import SLOTS

__all__ = [
    "ATTRIBUTE_KEYS",
    "BASELINES",
    "METRICS",
    "cooccurrence_log_prob",
    "evaluate_all",
    "evaluate_baselines",
    "evaluate_heads",
    "main",
    "markdown_table",
    "write_report",
]

#: Metric columns in report order; the last three are counts, not scores.
METRICS: tuple[str, ...] = (
    "recall@1",
    "recall@5",
    "recall@10",
    "mrr",
    "fitb",
    "auc",
    "p@10_type",
    "gallery_size",
    "n_fitb",
    "n_outfits",
)
COUNTS: frozenset[str] = frozenset({"gallery_size", "n_fitb", "n_outfits"})
#: Row names of the non-learned baselines.
BASELINES: tuple[str, ...] = ("co-occurrence", "attribute-match")
#: ``TrainData.attrs`` keys the attribute-match baseline compares (missing keys are skipped).
ATTRIBUTE_KEYS: tuple[str, ...] = ("section", "department", "colour")
ZERO_SHOT = "zero-shot"

#: ``pair_fn(a, b)``: (P,) int64 item indices, (P,) int64 item indices → (P,) float64 pair scores.
PairFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

_CHUNK_ROWS = 1024  # query rows per score matrix (keeps (Q, N) matrices small on the full catalog)
_CHUNK_PAIRS = 65536  # item pairs per pair_score call


# -----------------------------------------------------------------------------
# the held-out protocol


@dataclass(frozen=True)
class _HeldOut:
    """The seeded held-out protocol shared by every model, so all rows see the same questions.

    Attributes:
        items: (G,) int64 sorted indices of the held-out products (``data.heldout_items``, else the
            items of ``data.test_outfits``).
        questions: FITB questions ``[(question_items (K,), candidates (4,)), ...]``, answer at 0.
        positives: the held-out outfits, each (K,) int64.
        negatives: one random outfit per positive, same slots, each (K,) int64.
    """

    items: np.ndarray
    questions: list[tuple[np.ndarray, np.ndarray]]
    positives: list[np.ndarray]
    negatives: list[np.ndarray]


def _held_out(data: TrainData, seed: int) -> _HeldOut:
    if not data.test_outfits:
        raise ValueError("data has no test_outfits: build the features file with a held-out split")
    if len(data.heldout_items):  # products the image↔text loss never saw
        items = np.unique(np.asarray(data.heldout_items, dtype=np.int64))  # (G,)
    else:
        items = np.unique(np.concatenate(data.test_outfits)).astype(np.int64)  # (G,)
    questions = fitb_questions(data.test_outfits, data.slots, data.types, seed)
    negatives = _random_outfits(data.test_outfits, data.slots, items, np.random.default_rng(seed + 1))
    return _HeldOut(items, questions, list(data.test_outfits), negatives)


def _random_outfits(
    outfits: Sequence[np.ndarray], slots: np.ndarray, pool: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Replace every item by a random *other* item of its slot (Vasileva et al. 2018 negatives).

    Replacements come from ``pool`` (the held-out products); from all items of the slot when the pool
    has no other item of that slot; an item that is alone in its slot stays.
    """
    in_pool = {int(s): pool[slots[pool] == s] for s in np.unique(slots)}
    in_all = {int(s): np.flatnonzero(slots == s) for s in np.unique(slots)}
    out = []
    for o in outfits:
        neg = np.array(o, dtype=np.int64)  # (K,)
        for pos, item in enumerate(o):
            s = int(slots[item])
            cands = in_pool[s][in_pool[s] != item]
            if len(cands) == 0:
                cands = in_all[s][in_all[s] != item]
            if len(cands):
                neg[pos] = rng.choice(cands)
        out.append(neg)
    return out


def _fitb_scores(pair_fn: PairFn, questions: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(Q, C) float64: each candidate's mean pair score with its question's items (``pair_fn(item, cand)``)."""
    a = np.concatenate([np.repeat(q, len(c)) for q, c in questions])  # (P,) question items
    b = np.concatenate([np.tile(c, len(q)) for q, c in questions])  # (P,) candidates
    s = pair_fn(a, b)  # (P,)
    rows, off = [], 0
    for q, c in questions:
        n = len(q) * len(c)
        rows.append(s[off : off + n].reshape(len(q), len(c)).mean(0))  # (C,)
        off += n
    return np.stack(rows)


def _outfit_scores(pair_fn: PairFn, outfits: Sequence[np.ndarray]) -> np.ndarray:
    """(O,) float64: each outfit's mean pair score over all ordered pairs of distinct positions.

    For a symmetric ``pair_fn`` this is the mean over unordered pairs; for a directional one (the
    co-occurrence prior) both directions count.
    """
    a_parts, b_parts, owner = [], [], []
    for k, o in enumerate(outfits):
        i, j = np.meshgrid(np.arange(len(o)), np.arange(len(o)), indexing="ij")
        keep = i != j
        a_parts.append(np.asarray(o)[i[keep]])
        b_parts.append(np.asarray(o)[j[keep]])
        owner.append(np.full(int(keep.sum()), k))
    own = np.concatenate(owner)
    s = pair_fn(np.concatenate(a_parts).astype(np.int64), np.concatenate(b_parts).astype(np.int64))
    return np.bincount(own, weights=s, minlength=len(outfits)) / np.bincount(own, minlength=len(outfits))


def _compat_metrics(pair_fn: PairFn, held: _HeldOut) -> dict[str, float]:
    """FITB accuracy and compatibility AUC of one pair function on the held-out protocol."""
    out: dict[str, float] = {}
    if held.questions:
        scores = _fitb_scores(pair_fn, held.questions)  # (Q, 4)
        out["fitb"] = fitb_accuracy(scores, np.zeros(len(scores), dtype=np.int64), ties="split")
    else:
        out["fitb"] = math.nan
    pos = _outfit_scores(pair_fn, held.positives)  # (O,)
    neg = _outfit_scores(pair_fn, held.negatives)  # (O,)
    out["auc"] = compatibility_auc(pos, neg)
    out["n_fitb"] = float(len(held.questions))
    out["n_outfits"] = float(len(held.positives))
    return out


# -----------------------------------------------------------------------------
# learned models


def _chunked_mean(n_rows: int, fn: Callable[[slice], float]) -> float:
    """Mean of a per-row metric computed on row chunks: ``Σ fn(chunk) · |chunk| / n_rows``."""
    total = 0.0
    for start in range(0, n_rows, _CHUNK_ROWS):
        rows = slice(start, min(start + _CHUNK_ROWS, n_rows))
        total += fn(rows) * (rows.stop - rows.start)
    return total / n_rows


@torch.no_grad()
def evaluate_heads(data: TrainData, heads: RecommenderHeads, seed: int = 0) -> dict[str, float]:
    """All metrics of one model on the held-out split.

    Args:
        data: features with ``test_outfits``; image/text (N, E) float32, slots/types (N,) int64.
        heads: trained or zero-shot heads with ``heads.embed_dim == E``.
        seed: seeds the FITB questions and the random negative outfits (same for every model).

    Returns:
        ``{"recall@1", "recall@5", "recall@10", "mrr", "fitb", "auc", "p@10_type": float,
        "gallery_size", "n_fitb", "n_outfits": count as float}``; ``fitb`` is NaN when no question
        could be built.
    """
    n, e = data.image.shape
    if heads.embed_dim != e:
        raise ValueError(f"heads expect embed_dim {heads.embed_dim}, features have {e}")
    heads.eval()
    held = _held_out(data, seed)
    image = torch.from_numpy(np.ascontiguousarray(data.image, dtype=np.float32))  # (N, E)
    text = torch.from_numpy(np.ascontiguousarray(data.text, dtype=np.float32))  # (N, E)
    slots = torch.from_numpy(data.slots.astype(np.int64))  # (N,)
    img_v, txt_v = heads.general(image, text)  # (N, E) each, unit norm
    fused = F.normalize(img_v + txt_v, dim=-1).numpy()  # (N, E) the similar-item vector
    compat = heads.compat(image, text)  # (N, C), unit norm
    g = len(held.items)
    gal_img = img_v[held.items].numpy()  # (G, E)
    gal_txt = txt_v[held.items].numpy()  # (G, E)

    def text_scores(rows: slice) -> tuple[np.ndarray, np.ndarray]:
        return gal_txt[rows] @ gal_img.T, np.arange(rows.start, rows.stop)  # (q, G), (q,)

    out: dict[str, float] = {}
    for k in (1, 5, 10):
        out[f"recall@{k}"] = _chunked_mean(g, lambda r, k=k: recall_at_k(*text_scores(r), ks=(k,))[k])
    out["mrr"] = _chunked_mean(g, lambda r: mean_reciprocal_rank(*text_scores(r)))

    def pair_fn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(a), _CHUNK_PAIRS):
            ai = torch.from_numpy(a[start : start + _CHUNK_PAIRS])
            bi = torch.from_numpy(b[start : start + _CHUNK_PAIRS])
            parts.append(heads.pair_score(compat[ai], compat[bi], slots[ai], slots[bi]).double().numpy())
        return np.concatenate(parts) if parts else np.zeros(0)

    out.update(_compat_metrics(pair_fn, held))

    def precision(rows: slice) -> float:
        q = held.items[rows]  # (q,)
        scores = fused[q] @ fused.T  # (q, N)
        return precision_at_k_by_label(scores, data.types[q], data.types, k=10, exclude_self=q)

    out["p@10_type"] = _chunked_mean(g, precision)
    out["gallery_size"] = float(g)
    return {k: out[k] for k in METRICS}


# -----------------------------------------------------------------------------
# baselines


def cooccurrence_log_prob(outfits: Sequence[np.ndarray], type_index: np.ndarray, n_types: int) -> np.ndarray:
    """Category co-occurrence prior ``log P(type_b | type_a)`` with add-one smoothing.

    Args:
        outfits: training outfits, each (K,) int64 item indices.
        type_index: (N,) int64 contiguous type index in ``[0, n_types)`` of every item.
        n_types: T, the number of product types (the smoothing vocabulary).

    Returns:
        (T, T) float64 ``log((c_ab + 1) / (Σ_b c_ab + T))``, where ``c_ab`` counts every unordered pair
        of distinct outfit items once in each direction (symmetric counts).
    """
    counts = np.zeros((n_types, n_types), dtype=np.float64)  # (T, T)
    for o in outfits:
        t = type_index[np.asarray(o)]  # (K,)
        i, j = np.meshgrid(np.arange(len(t)), np.arange(len(t)), indexing="ij")
        keep = i != j
        np.add.at(counts, (t[i[keep]], t[j[keep]]), 1.0)
    return np.log((counts + 1.0) / (counts.sum(1, keepdims=True) + n_types))


def evaluate_baselines(data: TrainData, seed: int = 0) -> dict[str, dict[str, float]]:
    """FITB accuracy and compatibility AUC of the non-learned baselines on the held-out split.

    * ``co-occurrence``: pair score ``log P(type_b | type_a)`` estimated on ``data.outfits``
      (:func:`cooccurrence_log_prob`); a FITB candidate scores the mean over question items of
      ``log P(candidate type | item type)``. It cannot tell apart candidates of one product type, so
      questions whose candidates all share the answer's type are ties (wrong).
    * ``attribute-match``: pair score = number of equal attributes among ``ATTRIBUTE_KEYS`` present in
      ``data.attrs`` ((N,) int64 each); a FITB candidate scores the mean over question items (the same
      ranking as their count). Left out when ``data.attrs`` has none of the keys.

    Returns:
        ``{baseline: {"fitb", "auc": float, "n_fitb", "n_outfits": count as float}}``.
    """
    held = _held_out(data, seed)
    _, type_index = np.unique(data.types, return_inverse=True)  # (N,) contiguous type ids
    type_index = type_index.reshape(-1).astype(np.int64)
    logp = cooccurrence_log_prob(data.outfits, type_index, int(type_index.max()) + 1)  # (T, T)
    out = {"co-occurrence": _compat_metrics(lambda a, b: logp[type_index[a], type_index[b]], held)}
    keys = [k for k in ATTRIBUTE_KEYS if k in data.attrs]
    if keys:
        attrs = [np.asarray(data.attrs[k]) for k in keys]

        def attr_fn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return sum((v[a] == v[b]).astype(np.float64) for v in attrs)

        out["attribute-match"] = _compat_metrics(attr_fn, held)
    return out


# -----------------------------------------------------------------------------
# all models, report, CLI


def evaluate_all(
    data: TrainData, heads_by_name: dict[str, RecommenderHeads], seed: int = 0
) -> dict[str, dict[str, float | None]]:
    """Evaluate the baselines, the zero-shot model and every fine-tuned model on the same protocol.

    Args:
        data: features with ``test_outfits``.
        heads_by_name: fine-tuned heads by row name (may be empty).
        seed: the protocol seed (FITB questions, negatives) and the zero-shot MLP's seed.

    Returns:
        ``{model: {metric: value or None}}`` with every metric of :data:`METRICS` in each row; rows are
        the baselines, ``"zero-shot"``, then ``heads_by_name`` in order. None means "not applicable".
    """
    compat_dim = next(iter(heads_by_name.values())).compat_dim if heads_by_name else TrainConfig().compat_dim
    rows: dict[str, dict[str, float]] = dict(evaluate_baselines(data, seed))
    rows[ZERO_SHOT] = evaluate_heads(data, zero_shot_heads(data.image.shape[1], compat_dim, seed), seed)
    for name, heads in heads_by_name.items():
        rows[name] = evaluate_heads(data, heads, seed)
    return {name: {m: row.get(m) for m in METRICS} for name, row in rows.items()}


def _is_missing(v: float | None) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(metric: str, v: float | None) -> str:
    if _is_missing(v):
        return "—"
    return str(int(v)) if metric in COUNTS else f"{v:.3f}"


def markdown_table(results: dict[str, dict[str, float | None]]) -> str:
    """A markdown table: one row per model, one column per metric, "—" where not applicable."""
    cols = [m for m in METRICS if any(m in r for r in results.values())]
    cols += [m for r in results.values() for m in r if m not in cols and m not in METRICS]
    cols = list(dict.fromkeys(cols))
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m, row.get(m)) for m in cols) + " |")
    return "\n".join(lines)


def write_report(
    results: dict[str, dict[str, float | None]],
    out_dir: Path,
    history: dict[str, list[float]] | None = None,
    data: TrainData | None = None,
    heads: RecommenderHeads | None = None,
) -> dict[str, Path]:
    """Write the evaluation report into ``out_dir`` (created).

    Files: ``metrics.json`` (``results``, NaN as null), ``report.md`` (the markdown table),
    ``metrics.png`` (grouped bars of the scores, counts left out), ``loss.png`` (training curves, when
    ``history`` is given), ``embedding_2d.png`` (PCA of the held-out products' compatibility vectors
    coloured by slot, when ``data`` and ``heads`` are given).

    Returns:
        ``{file name: path}`` of the files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    clean = {n: {m: None if _is_missing(v) else v for m, v in r.items()} for n, r in results.items()}
    paths["metrics.json"] = out_dir / "metrics.json"
    paths["metrics.json"].write_text(json.dumps(clean, indent=1, ensure_ascii=False))
    gallery = next((r["gallery_size"] for r in clean.values() if r.get("gallery_size") is not None), None)
    md = [
        "# Held-out evaluation",
        "",
        f"Text→item retrieval over a gallery of {_fmt('gallery_size', gallery)} held-out products; "
        "FITB (4 candidates of the answer's type) and compatibility AUC after Vasileva et al. 2018; "
        "p@10_type = similar-item precision@10 by product type. — = not applicable.",
        "",
        markdown_table(results),
        "",
    ]
    paths["report.md"] = out_dir / "report.md"
    paths["report.md"].write_text("\n".join(md), encoding="utf-8")
    bars = {n: {m: v for m, v in r.items() if m not in COUNTS and v is not None} for n, r in clean.items()}
    if any(bars.values()):
        paths["metrics.png"] = plot_metric_bars(bars, out_dir / "metrics.png", title="Held-out evaluation")
    if history and any(len(v) for v in history.values()):
        paths["loss.png"] = plot_loss_curves(history, out_dir / "loss.png", xlabel="epoch")
    if data is not None and heads is not None and data.test_outfits:
        items = np.unique(np.concatenate(data.test_outfits))  # (G,)
        with torch.no_grad():
            heads.eval()
            image = torch.from_numpy(np.ascontiguousarray(data.image[items], dtype=np.float32))  # (G, E)
            text = torch.from_numpy(np.ascontiguousarray(data.text[items], dtype=np.float32))  # (G, E)
            vecs = heads.compat(image, text)  # (G, C)
        labels = [SLOTS[int(s)] for s in data.slots[items]]
        paths["embedding_2d.png"] = plot_embedding_2d(
            vecs.numpy(), labels, out_dir / "embedding_2d.png", title="Held-out compatibility vectors (PCA)"
        )
    return paths


def _named_path(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected name=path, got {value!r}")
    return name, Path(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ml.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--features", required=True, type=Path, help="TrainData .npz file with test_outfits")
    p.add_argument(
        "--heads",
        nargs="*",
        type=_named_path,
        default=[],
        metavar="NAME=PATH",
        help="fine-tuned heads (ml.heads.save_heads files), one row each",
    )
    p.add_argument("--out", type=Path, default=None, help="write metrics.json, report.md and plots here")
    p.add_argument("--seed", type=int, default=0, help="seed of the FITB questions and negative outfits")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float | None]]:
    """Evaluate from the command line and print the markdown table; returns the results."""
    args = build_parser().parse_args(argv)
    data = TrainData.load(args.features)
    heads_by_name: dict[str, RecommenderHeads] = {}
    history: dict[str, list[float]] | None = None
    for name, path in args.heads:
        heads, meta = load_heads(path)
        heads_by_name[name] = heads
        if history is None and isinstance(meta.get("history"), dict):
            history = meta["history"]
    results = evaluate_all(data, heads_by_name, seed=args.seed)
    print(markdown_table(results))
    if args.out is not None:
        plot_heads: RecommenderHeads | None = next(iter(heads_by_name.values()), None)
        if plot_heads is None:
            plot_heads = zero_shot_heads(data.image.shape[1], TrainConfig().compat_dim, args.seed)
        paths = write_report(results, args.out, history=history, data=data, heads=plot_heads)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return results


if __name__ == "__main__":
    main()
