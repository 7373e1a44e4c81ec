"""Held-out evaluation of the recommender heads against non-learned baselines.

Everything is measured on the fixed held-out split of a features file: the outfits in
``TrainData.test_outfits`` (never trained on) and their items, the *held-out products*. Rows are models
(:mod:`ml.scorers`):

* ``popularity``: the number of training outfits an item appears in (no features);
* ``attribute-match``: the number of shared section / department / colour / audience attributes;
* ``co-occurrence``: a category prior, ``log P(type_b | type_a)`` from the training outfits;
* ``attribute-pmi``: attribute co-occurrence, the summed PMI of the two items' section / department /
  colour / audience values over the training outfits (which departments are bought or styled together);
* ``zero-shot``: :func:`ml.heads.zero_shot_heads` (the towers' own space, untrained compatibility MLP);
* each fine-tuned model (heads saved by :func:`ml.heads.save_heads`), on the features of its own towers.

Tables (:data:`TABLES`, each with the best baseline per metric and each model's margin over it):

* **popularity-matched protocol** (the headline, :func:`ml.protocols.matched_protocol`): ``fitb`` (4
  candidates, the 3 wrong ones drawn like the answer: same product type, nearest popularity, never its
  colour variant nor a known partner of the question items) and ``auc`` (held-out outfits against
  negatives drawn item by item the same way); a popularity scorer is at chance on it;
* **random protocol** (the earlier one, :func:`ml.protocols.random_protocol`): ``fitb_random``,
  ``auc_random``, wrong candidates and negatives from the whole catalog;
* **complementary-item retrieval** (:mod:`ml.retrieval`): ``ctl_recall@10/50`` and ``ctl_median_rank`` of
  each held-out item in its whole slot ranked by the complete-the-look score of the rest of its outfit,
  ``audience@10`` (audience coherence of the top 10) and ``slot_valid@10`` (slot validity of an unfiltered
  top 10);
* **text→item retrieval and similar items** (heads only): ``recall@1/5/10`` and ``mrr`` (the held-out
  products' texts against their photos), ``p@10_type`` (similar-item precision@10 by product type).

The protocols are seeded by :data:`ml.protocols.PROTOCOL_SEED` whatever seed a model was trained with,
so tables of different versions compare. Runs without Django:

    python -m ml.evaluate --features var/features/train_data.npz --heads run1=var/models/run1/heads.pt \\
        --out var/reports/run1
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ml.config import ModelConfig, TrainConfig
from ml.dataset import TrainData
from ml.heads import RecommenderHeads, load_heads, zero_shot_heads
from ml.metrics import mean_reciprocal_rank, precision_at_k_by_label, recall_at_k
from ml.plots import plot_embedding_2d, plot_loss_curves, plot_metric_bars
from ml.protocols import PROTOCOL_SEED, Protocol, matched_protocol, protocol_metrics, random_protocol
from ml.retrieval import CTL_METRICS, ComplementarySet, complementary_metrics, complementary_set
from ml.scorers import (
    ATTRIBUTE_KEYS,
    BASELINES,
    Scorer,
    baseline_scorers,
    cooccurrence_log_prob,
    heads_scorer,
    memory_first,
    pair_memory_scorer,
)
from ml.slots import SLOTS

__all__ = [
    "ATTRIBUTE_KEYS",
    "BASELINES",
    "COUNTS",
    "LOWER_IS_BETTER",
    "MARGIN",
    "MEMORY_PICKS",
    "MEMORY_SUFFIX",
    "METRICS",
    "REFERENCES",
    "TABLES",
    "ZERO_SHOT",
    "HeldOut",
    "best_reference",
    "cooccurrence_log_prob",
    "evaluate_all",
    "evaluate_baselines",
    "evaluate_heads",
    "held_out_protocols",
    "main",
    "markdown_report",
    "markdown_table",
    "write_report",
]

ZERO_SHOT = "zero-shot"
#: Name suffix of the memory row of :func:`evaluate_all` ("fine-tuned + memory").
MEMORY_SUFFIX = " + memory"
#: Remembered picks per slot of that row: the serving's default ``LOOKS_MEMORY_PICKS``
#: (docs/evaluation.md has the trade-off measured for other values).
MEMORY_PICKS = 3
#: Rows a learned model is compared with ("which baseline is best"): the non-learned ones and zero-shot.
REFERENCES: tuple[str, ...] = (*BASELINES, ZERO_SHOT)
#: The margin by which a model must beat the best baseline to count as beating it (markdown tables).
MARGIN = 0.05
_TEXT = ("recall@1", "recall@5", "recall@10", "mrr", "p@10_type")
#: The tables of a report: title → metric columns (scores first, then counts).
TABLES: dict[str, tuple[str, ...]] = {
    "Popularity-matched protocol (headline)": ("fitb", "auc", "n_fitb", "n_outfits"),
    "Random protocol (wrong candidates and negatives from the whole catalog)": (
        "fitb_random",
        "auc_random",
        "n_fitb_random",
        "n_outfits_random",
    ),
    "Complementary-item retrieval (rank the whole slot by complete-the-look score)": (
        *CTL_METRICS,
        "n_ctl",
        "n_ctl_novel",
        "n_ctl_open",
    ),
    "Text→item retrieval and similar items": (*_TEXT, "gallery_size"),
}
#: Every metric, in report order.
METRICS: tuple[str, ...] = tuple(m for cols in TABLES.values() for m in cols)
COUNTS: frozenset[str] = frozenset(m for m in METRICS if m.startswith("n_") or m == "gallery_size")
#: Metrics where lower is better (a rank); every other score is higher-is-better.
LOWER_IS_BETTER: frozenset[str] = frozenset({"ctl_median_rank", "novel_median_rank"})

_CHUNK_ROWS = 1024  # query rows per score matrix (keeps (Q, N) matrices small on the full catalog)


# -----------------------------------------------------------------------------
# the held-out protocols


@dataclass(frozen=True)
class HeldOut:
    """What every row is scored on, built once per dataset (:func:`held_out_protocols`).

    Attributes:
        items: (G,) int64 sorted held-out products (``data.heldout_items``, else the items of
            ``data.test_outfits``): the text→item gallery.
        matched: the popularity-matched protocol (the headline).
        random: the random protocol.
        ctl: the complementary-item retrieval queries.
    """

    items: np.ndarray
    matched: Protocol
    random: Protocol
    ctl: ComplementarySet


def held_out_protocols(data: TrainData, seed: int = PROTOCOL_SEED) -> HeldOut:
    """Build the protocols of ``data``'s held-out split. Raises ValueError without ``test_outfits``."""
    if not data.test_outfits:
        raise ValueError("data has no test_outfits: build the features file with a held-out split")
    if len(data.heldout_items):  # products the image↔text loss never saw
        items = np.unique(np.asarray(data.heldout_items, dtype=np.int64))  # (G,)
    else:
        items = np.unique(np.concatenate(data.test_outfits)).astype(np.int64)  # (G,)
    return HeldOut(items, matched_protocol(data, seed), random_protocol(data, seed), complementary_set(data))


def _scorer_row(scorer: Scorer, held: HeldOut, seed: int) -> dict[str, float]:
    """The compatibility metrics of one scorer: both protocols and complementary retrieval."""
    out = protocol_metrics(scorer.pair, held.matched)
    out.update({f"{k}_random": v for k, v in protocol_metrics(scorer.pair, held.random).items()})
    out.update(complementary_metrics(scorer, held.ctl, seed=seed))
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
def evaluate_heads(
    data: TrainData, heads: RecommenderHeads, seed: int = PROTOCOL_SEED, held: HeldOut | None = None
) -> dict[str, float]:
    """All metrics of one model on the held-out split.

    Args:
        data: features with ``test_outfits``; image/text (N, E) float32 (of the towers the heads were
            trained with), slots/types (N,) int64.
        heads: trained or zero-shot heads with ``heads.embed_dim == E``.
        seed: the protocol seed (FITB questions, negatives, tie-breaks); the same for every model.
        held: the protocols, when already built for ``data`` (:func:`held_out_protocols`).

    Returns:
        ``{metric: float}`` for every metric of :data:`METRICS`; a FITB or AUC is NaN when no
        question / outfit could be built.
    """
    n, e = data.image.shape
    if heads.embed_dim != e:
        raise ValueError(f"heads expect embed_dim {heads.embed_dim}, features have {e}")
    heads.eval()
    held = held if held is not None else held_out_protocols(data, seed)
    image = torch.from_numpy(np.ascontiguousarray(data.image, dtype=np.float32))  # (N, E)
    text = torch.from_numpy(np.ascontiguousarray(data.text, dtype=np.float32))  # (N, E)
    img_v, txt_v = heads.general(image, text)  # (N, E) each, unit norm
    fused = F.normalize(img_v + txt_v, dim=-1).numpy()  # (N, E) the similar-item vector
    g = len(held.items)
    gal_img = img_v[held.items].numpy()  # (G, E)
    gal_txt = txt_v[held.items].numpy()  # (G, E)

    def text_scores(rows: slice) -> tuple[np.ndarray, np.ndarray]:
        return gal_txt[rows] @ gal_img.T, np.arange(rows.start, rows.stop)  # (q, G), (q,)

    out: dict[str, float] = {}
    for k in (1, 5, 10):
        out[f"recall@{k}"] = _chunked_mean(g, lambda r, k=k: recall_at_k(*text_scores(r), ks=(k,))[k])
    out["mrr"] = _chunked_mean(g, lambda r: mean_reciprocal_rank(*text_scores(r)))

    def precision(rows: slice) -> float:
        q = held.items[rows]  # (q,)
        scores = fused[q] @ fused.T  # (q, N)
        return precision_at_k_by_label(scores, data.types[q], data.types, k=10, exclude_self=q)

    out["p@10_type"] = _chunked_mean(g, precision)
    out["gallery_size"] = float(g)
    out.update(_scorer_row(heads_scorer(heads, data.image, data.text, data.slots), held, seed))
    return {k: out[k] for k in METRICS}


# -----------------------------------------------------------------------------
# baselines and all rows


def evaluate_baselines(
    data: TrainData, seed: int = PROTOCOL_SEED, held: HeldOut | None = None
) -> dict[str, dict[str, float]]:
    """The compatibility metrics of the non-learned baselines (:func:`ml.scorers.baseline_scorers`).

    Returns:
        ``{baseline: {metric: float}}`` for the metrics of both protocols and of complementary retrieval;
        ``attribute-match`` is left out when ``data.attrs`` has none of :data:`ATTRIBUTE_KEYS`.
    """
    held = held if held is not None else held_out_protocols(data, seed)
    return {name: _scorer_row(scorer, held, seed) for name, scorer in baseline_scorers(data).items()}


def evaluate_all(
    data: TrainData,
    heads_by_name: dict[str, RecommenderHeads],
    seed: int = PROTOCOL_SEED,
    features: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    memory_picks: int = MEMORY_PICKS,
    held: HeldOut | None = None,
) -> dict[str, dict[str, float | None]]:
    """Evaluate the baselines, the zero-shot model and every fine-tuned model on the same protocols.

    Args:
        data: features with ``test_outfits`` (the base towers' features).
        heads_by_name: fine-tuned heads by row name (may be empty).
        seed: the protocol seed and the zero-shot MLP's seed.
        features: ``{row name: (image (N, E), text (N, E))}``: the features of a row whose heads come
            with their own fine-tuned towers (``heads.tower_state``); other rows use ``data``'s.
        memory_picks: when > 0, add the row ``"<first model> + memory"`` (:data:`MEMORY_SUFFIX`):
            complete-the-look as the site serves it with ``LOOKS_MEMORY_PICKS`` = ``memory_picks``, the
            items the training outfits paired most often lifted first in each slot
            (:func:`ml.scorers.memory_first`); its other metrics are the first model's.
        held: the protocols of ``data`` and ``seed`` (:func:`held_out_protocols`) when the caller has
            them already; built here otherwise.

    Returns:
        ``{model: {metric: value or None}}`` with every metric of :data:`METRICS` in each row; rows are
        the baselines, ``"zero-shot"``, then ``heads_by_name`` in order (the memory row after the first).
        None means "not applicable".
    """
    held = held if held is not None else held_out_protocols(data, seed)
    compat_dim = next(iter(heads_by_name.values())).compat_dim if heads_by_name else TrainConfig().compat_dim
    rows: dict[str, dict[str, float]] = dict(evaluate_baselines(data, seed, held))
    zero = zero_shot_heads(data.image.shape[1], compat_dim, seed)
    rows[ZERO_SHOT] = evaluate_heads(data, zero, seed, held)
    for i, (name, heads) in enumerate(heads_by_name.items()):
        own = (features or {}).get(name)
        row_data = data if own is None else _with_features(data, *own)
        rows[name] = evaluate_heads(row_data, heads, seed, held)
        if i == 0 and memory_picks > 0:
            model = heads_scorer(heads, row_data.image, row_data.text, row_data.slots)
            variant = held.ctl.variant  # colour-variant groups, as the site's picks see them
            hybrid = memory_first(model, pair_memory_scorer(data), data.slots, memory_picks, variant)
            # the pair scores (both protocols) and the text metrics are the model's
            rows[f"{name}{MEMORY_SUFFIX}"] = {
                **rows[name],
                **complementary_metrics(hybrid, held.ctl, seed=seed),
            }
    return {name: {m: row.get(m) for m in METRICS} for name, row in rows.items()}


def _with_features(data: TrainData, image: np.ndarray, text: np.ndarray) -> TrainData:
    if image.shape != data.image.shape:
        raise ValueError(f"features {image.shape} do not fit the data's {data.image.shape}")
    return replace(data, image=image, text=text)


# -----------------------------------------------------------------------------
# report, CLI


def _is_missing(v: float | None) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(metric: str, v: float | None) -> str:
    if _is_missing(v):
        return "—"
    if metric in COUNTS:
        return str(int(v))
    return f"{v:.1f}" if metric in LOWER_IS_BETTER else f"{v:.3f}"


def best_reference(
    results: dict[str, dict[str, float | None]], metric: str, among: Sequence[str] = REFERENCES
) -> tuple[str, float] | None:
    """The best of the ``among`` rows (by default :data:`REFERENCES`: baselines and zero-shot) on
    ``metric``: ``(row, value)``, the highest (the lowest for :data:`LOWER_IS_BETTER`); None when none
    has a value."""
    have = [(n, float(results[n][metric])) for n in among if not _is_missing(results.get(n, {}).get(metric))]
    if not have:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(have, key=lambda nv: nv[1])


def margin_over(metric: str, value: float, reference: float) -> float:
    """How much ``value`` beats ``reference``: the difference for scores, the relative reduction
    ``1 - value / reference`` for ranks (:data:`LOWER_IS_BETTER`); positive = better."""
    if metric in LOWER_IS_BETTER:
        return 1.0 - value / reference if reference else 0.0
    return value - reference


def markdown_table(
    results: dict[str, dict[str, float | None]], metrics: Sequence[str] | None = None, margin: float = MARGIN
) -> str:
    """A markdown table: one row per model, one column per metric ("—" where not applicable), then a row
    naming the best baseline of each metric (:func:`best_reference`) and, for each learned row, its
    margin over it (:func:`margin_over`) marked ✓ when it beats it by at least ``margin``, else ✗."""
    if metrics is None:
        metrics = [m for m in METRICS if any(m in r for r in results.values())]
        metrics += [m for r in results.values() for m in r if m not in metrics]
    cols = list(dict.fromkeys(metrics))
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m, row.get(m)) for m in cols) + " |")
    best = {m: best_reference(results, m) for m in cols if m not in COUNTS}
    if any(best.values()):
        cells = [f"{best[m][0]} {_fmt(m, best[m][1])}" if best.get(m) else "" for m in cols]
        lines.append("| *best baseline* | " + " | ".join(cells) + " |")
        for name, row in results.items():
            if name in REFERENCES:
                continue
            cells = []
            for m in cols:
                if not best.get(m) or _is_missing(row.get(m)):
                    cells.append("")
                    continue
                d = margin_over(m, float(row[m]), best[m][1])
                unit = "%" if m in LOWER_IS_BETTER else ""
                shown = f"{100 * d:+.0f}%" if unit else f"{d:+.3f}"
                cells.append(f"{shown} {'✓' if d >= margin else '✗'}")
            lines.append(f"| *{name} vs best* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(results: dict[str, dict[str, float | None]]) -> str:
    """Every table of :data:`TABLES` (a ``###`` heading each) that ``results`` have scores for; a row
    without any score in a table (the baselines have no text→item retrieval) is left out of it."""
    parts = []
    for title, cols in TABLES.items():
        scores = [m for m in cols if m not in COUNTS]
        rows = {n: r for n, r in results.items() if any(not _is_missing(r.get(m)) for m in scores)}
        if rows:
            parts += [f"### {title}", "", markdown_table(rows, cols), ""]
    return "\n".join(parts).rstrip() + "\n"


def write_report(
    results: dict[str, dict[str, float | None]],
    out_dir: Path,
    history: dict[str, list[float]] | None = None,
    data: TrainData | None = None,
    heads: RecommenderHeads | None = None,
) -> dict[str, Path]:
    """Write the evaluation report into ``out_dir`` (created).

    Files: ``metrics.json`` (``results``, NaN as null), ``report.md`` (:func:`markdown_report`),
    ``metrics.png`` (grouped bars of the scores; counts and ranks left out), ``loss.png`` (training
    curves, when ``history`` is given), ``embedding_2d.png`` (PCA of the held-out products' compatibility
    vectors coloured by slot, when ``data`` and ``heads`` are given).

    Returns:
        ``{file name: path}`` of the files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    clean = {n: {m: None if _is_missing(v) else v for m, v in r.items()} for n, r in results.items()}
    paths["metrics.json"] = out_dir / "metrics.json"
    paths["metrics.json"].write_text(json.dumps(clean, indent=1, ensure_ascii=False))
    md = [
        "# Held-out evaluation",
        "",
        "Headline: the popularity-matched protocol (FITB with 4 candidates, the 3 wrong ones of the "
        "answer's product type and nearest popularity; AUC against negatives drawn the same way). "
        "Each table names the best baseline per metric and whether a model beats it by at least "
        f"{MARGIN} (✓; for ranks by {100 * MARGIN:.0f}% fewer). — = not applicable. Protocols: docs/evaluation.md.",
        "",
        markdown_report(results),
    ]
    paths["report.md"] = out_dir / "report.md"
    paths["report.md"].write_text("\n".join(md), encoding="utf-8")
    bars = {
        n: {m: v for m, v in r.items() if m not in COUNTS | LOWER_IS_BETTER and v is not None}
        for n, r in clean.items()
    }
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
    p.add_argument(
        "--seed",
        type=int,
        default=PROTOCOL_SEED,
        help="protocol seed (FITB questions, negatives, tie-breaks)",
    )
    p.add_argument(
        "--memory-picks",
        type=int,
        default=MEMORY_PICKS,
        help="remembered picks per slot of the '+ memory' row (the serving's LOOKS_MEMORY_PICKS; 0: no row)",
    )
    p.add_argument(
        "--feature-cache",
        type=Path,
        default=Path("var/features"),
        help="feature cache of heads with fine-tuned towers (their own features are computed)",
    )
    return p


def _tuned_features(
    heads: RecommenderHeads, meta: dict, data: TrainData, cache: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Features of the fine-tuned towers that came with ``heads`` (from the photos and texts of ``data``)."""
    if not data.image_paths or not data.texts:
        raise ValueError("heads with fine-tuned towers need the features file's image paths and texts")
    from ml.inference import Embedder  # lazy: open_clip (~3 s), only for tuned-tower heads

    model = meta.get("model") or {}
    embedder = Embedder(ModelConfig(**model), heads, cache_dir=cache)
    image, text, _ = embedder.tower_features(data.image_paths, data.texts, progress=True)
    return image, text


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float | None]]:
    """Evaluate from the command line and print the tables; returns the results."""
    args = build_parser().parse_args(argv)
    data = TrainData.load(args.features)
    heads_by_name: dict[str, RecommenderHeads] = {}
    features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    history: dict[str, list[float]] | None = None
    for name, path in args.heads:
        heads, meta = load_heads(path)
        heads_by_name[name] = heads
        if heads.tower_state:
            features[name] = _tuned_features(heads, meta, data, args.feature_cache)
        if history is None and isinstance(meta.get("history"), dict):
            history = meta["history"]
    results = evaluate_all(
        data, heads_by_name, seed=args.seed, features=features, memory_picks=args.memory_picks
    )
    print(markdown_report(results))
    if args.out is not None:
        plot_heads: RecommenderHeads | None = next(iter(heads_by_name.values()), None)
        plot_data = data
        if plot_heads is None:
            plot_heads = zero_shot_heads(data.image.shape[1], TrainConfig().compat_dim, args.seed)
        elif next(iter(heads_by_name)) in features:
            plot_data = _with_features(data, *features[next(iter(heads_by_name))])
        paths = write_report(results, args.out, history=history, data=plot_data, heads=plot_heads)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return results


if __name__ == "__main__":
    main()
