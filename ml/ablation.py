"""The metric-learning ablation: loss × miner × normalisation × temperature / margin, several seeds per cell,
on cached tower features, scored on the fixed popularity-matched protocol.

    python -m ml.ablation --features var/eval12/mango_full.npz --out docs/ablation
    python -m ml.ablation --features … --out /tmp/abl --quick        # 2 cells, 2 seeds, a few steps (tests)

Each run trains fresh heads with ``ml.train``'s own step (:class:`ml.train._Run`: the same losses, miners,
candidate negatives and optimiser) for a fixed step budget, so every cell has the same budget:

* compatibility cells (``w_infonce = w_type = 0``: only the compatibility loss trains) report FITB and AUC
  on :func:`ml.protocols.matched_protocol` (seed :data:`ml.protocols.PROTOCOL_SEED`), and record the
  *spread* of the compatibility vectors over the steps (mean squared distance of the unit vectors to their
  mean: 1 for vectors spread evenly over the sphere, 0 for a collapse onto one point);
* general cells (``w_compat = 0``) report text→item Recall@10 over the held-out products and similar-item
  precision@10 by product type; the ``softmax`` cell trains only the product-type classifier (the
  classification baseline).

Writes ``results.json`` (every run), ``results.md`` (mean ± std over seeds per cell) and PNG plots into
``--out``. One thread (``torch.set_num_threads(1)``): the machine is shared. On a GPU box the same command
runs unchanged (the heads are small; the CPU is fast enough). Plain PyTorch, no Django.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ml.config import TrainConfig
from ml.dataset import TrainData
from ml.evaluate import HeldOut, held_out_protocols
from ml.metrics import precision_at_k_by_label, recall_at_k
from ml.plots import _new_figure, _save
from ml.protocols import protocol_metrics
from ml.scorers import baseline_scorers, heads_scorer
from ml.train import _Run

#: Budget of one run (the defaults of :func:`main`).
STEPS, BATCH, CANDIDATES, SPREAD_EVERY = 100, 32, 16, 10


@dataclass(frozen=True)
class Cell:
    """One configuration of the grid: a name, its group (which question it answers) and TrainConfig fields."""

    name: str
    group: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def space(self) -> str:
        return "general" if self.group == "general" else "compat"


def _c(name: str, group: str, **params: Any) -> Cell:
    return Cell(name, group, params)


def grid() -> list[Cell]:
    """The full grid (see docs/ablation.md for what each group answers)."""
    cells = [
        # InfoNCE vs triplet vs contrastive at their defaults, and each one's sweep
        *[
            _c(f"infonce τ={t}", "infonce-τ", compat_loss="infonce", compat_temperature=t)
            for t in (0.03, 0.1, 0.3, 1.0)
        ],
        *[
            _c(f"triplet semi-hard m={m}", "triplet-m", compat_loss="triplet", margin=m)
            for m in (0.05, 0.2, 0.5)
        ],
        *[_c(f"contrastive m={m}", "contrastive-m", compat_loss="contrastive", margin=m) for m in (0.5, 1.0)],
        # the miners at one margin (semi-hard m=0.2 is in triplet-m)
        *[
            _c(f"triplet {n} m=0.2", "miner", compat_loss="triplet", miner=n)
            for n in ("batch-all", "batch-hard", "random")
        ],
        # off the unit sphere
        _c("infonce τ=0.1 unnormalised", "normalize", compat_loss="infonce", normalize=False),
        _c("triplet semi-hard m=0.2 unnormalised", "normalize", compat_loss="triplet", normalize=False),
        _c(
            "contrastive m=0.5 unnormalised",
            "normalize",
            compat_loss="contrastive",
            margin=0.5,
            normalize=False,
        ),
    ]
    general = [
        ("clip (learnable τ)", {"general_loss": "clip"}),
        ("infonce one-way (fixed τ)", {"general_loss": "infonce", "learn_temperature": False}),
        ("ntxent", {"general_loss": "ntxent", "learn_temperature": False}),
        ("npair", {"general_loss": "npair"}),
        ("contrastive m=0.5 all pairs", {"general_loss": "contrastive", "margin": 0.5}),
        ("triplet semi-hard m=0.2 in-batch", {"general_loss": "triplet"}),
        ("angular 45°", {"general_loss": "angular"}),
        ("softmax over types only", {"w_infonce": 0.0, "w_type": 1.0}),
    ]
    return cells + [Cell(n, "general", p) for n, p in general]


def quick_grid() -> list[Cell]:
    """Two cells for tests: the two compatibility losses the lead compared."""
    return [
        _c("infonce τ=0.1", "infonce-τ", compat_loss="infonce"),
        _c("triplet semi-hard m=0.2", "triplet-m", compat_loss="triplet"),
    ]


def run_config(cell: Cell, seed: int, steps: int) -> TrainConfig:
    """The TrainConfig of one run: the cell's fields on the ablation budget, one space trained at a time."""
    base: dict[str, Any] = {"max_steps": steps, "batch_size": BATCH, "n_candidates": CANDIDATES, "seed": seed}
    if cell.space == "compat":
        base |= {"w_infonce": 0.0, "w_type": 0.0}
    else:
        base |= {"w_compat": 0.0, "w_type": 0.0}
    return TrainConfig(**(base | cell.params))


def spread(vectors: torch.Tensor) -> float:
    """Mean squared distance of the L2-normalised rows to their mean, ``1 − ‖mean‖²`` ∈ [0, 1]:
    ~1 spread over the sphere, 0 all on one point (collapse). vectors: (N, D) float."""
    u = F.normalize(vectors.double(), dim=-1)
    return float(1.0 - u.mean(0).pow(2).sum())


def train_one(
    data: TrainData, cfg: TrainConfig, space: str, probe: torch.Tensor
) -> tuple[Any, dict[str, list[float]]]:
    """``cfg.max_steps`` steps of :class:`ml.train._Run` on random batches; the spread of ``space``'s
    vectors of the ``probe`` rows and the loss every :data:`SPREAD_EVERY` steps. Returns (heads, curves)."""
    run = _Run(data, cfg, None)
    curves: dict[str, list[float]] = {"step": [], "spread": [], "loss": []}
    n = len(run.train_items)
    for step in range(cfg.max_steps + 1):
        if step % SPREAD_EVERY == 0 or step == cfg.max_steps:
            with torch.no_grad():
                if space == "compat":
                    v = run.heads.compat(run.image[probe], run.text[probe])
                else:
                    v = run.heads.general(run.image[probe], run.text[probe])[0]
            curves["step"].append(step)
            curves["spread"].append(spread(v))
        if step == cfg.max_steps:
            break
        idx = run.train_items[torch.randint(n, (run.batch_size,), generator=run.gen)]
        losses = run.losses(idx, run.image[idx], run.text[idx])
        run.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        run.opt.step()
        if step % SPREAD_EVERY == 0:
            curves["loss"].append(float(losses["loss"].detach()))
    return run.heads.eval(), curves


@torch.no_grad()
def score(data: TrainData, heads: Any, held: HeldOut, space: str) -> dict[str, float]:
    """FITB / AUC on the matched protocol (compat), or text→item Recall@10 and P@10 by type (general)."""
    if space == "compat":
        m = protocol_metrics(heads_scorer(heads, data.image, data.text, data.slots).pair, held.matched)
        return {"fitb": m["fitb"], "auc": m["auc"]}
    image = torch.from_numpy(np.ascontiguousarray(data.image, dtype=np.float32))
    text = torch.from_numpy(np.ascontiguousarray(data.text, dtype=np.float32))
    img_v, txt_v = heads.general(image, text)
    img_n, txt_n = F.normalize(img_v, dim=-1), F.normalize(txt_v, dim=-1)  # rank by cosine either way
    items = held.items
    scores = (txt_n[items] @ img_n[items].T).numpy()  # (G, G)
    r10 = recall_at_k(scores, np.arange(len(items)), ks=(10,))[10]
    fused = F.normalize(img_n + txt_n, dim=-1).numpy()
    p10 = precision_at_k_by_label(
        fused[items] @ fused.T, data.types[items], data.types, k=10, exclude_self=items
    )
    return {"recall@10": r10, "p@10_type": p10}


def run_grid(
    data: TrainData, cells: Sequence[Cell], seeds: Sequence[int], steps: int, log: Any = print
) -> dict[str, Any]:
    """Every (cell, seed) run plus the non-learned baselines on the same protocol. JSON-ready dict."""
    held = held_out_protocols(data)
    train_data = replace(data, val_outfits=[])  # no early stopping here: skip the validation protocol
    probe = torch.from_numpy(
        np.random.default_rng(0).choice(len(data.image), min(512, len(data.image)), replace=False)
    )
    baselines = {
        name: {k: protocol_metrics(s.pair, held.matched)[k] for k in ("fitb", "auc")}
        for name, s in baseline_scorers(data).items()
    }
    runs = []
    t0 = time.perf_counter()
    for cell in cells:
        for seed in seeds:
            cfg = run_config(cell, seed, steps)
            t = time.perf_counter()
            heads, curves = train_one(train_data, cfg, cell.space, probe)
            metrics = score(data, heads, held, cell.space)
            runs.append(
                {
                    "cell": cell.name,
                    "group": cell.group,
                    "seed": seed,
                    **metrics,
                    "curves": curves,
                    "seconds": time.perf_counter() - t,
                }
            )
            log(f"{cell.name} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return {
        "steps": steps,
        "batch_size": BATCH,
        "n_candidates": CANDIDATES,
        "seeds": list(seeds),
        "n_questions": len(held.matched.questions),
        "baselines": baselines,
        "runs": runs,
        "wall_seconds": time.perf_counter() - t0,
    }


# -----------------------------------------------------------------------------
# tables and plots


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per cell (in grid order): group, n seeds, and mean / std of each metric over the seeds."""
    rows: dict[str, dict[str, Any]] = {}
    for r in results["runs"]:
        row = rows.setdefault(r["cell"], {"cell": r["cell"], "group": r["group"], "values": {}})
        for k in ("fitb", "auc", "recall@10", "p@10_type"):
            if k in r:
                row["values"].setdefault(k, []).append(r[k])
    out = []
    for row in rows.values():
        stats = {k: (float(np.mean(v)), float(np.std(v))) for k, v in row["values"].items()}
        out.append(
            {
                "cell": row["cell"],
                "group": row["group"],
                "n": len(next(iter(row["values"].values()))),
                **stats,
            }
        )
    return out


def markdown(results: dict[str, Any]) -> str:
    """The tables of ``results.md``: compatibility cells, general cells, baselines."""
    rows = summary(results)
    lines = [
        f"Budget per run: {results['steps']} steps, batch {results['batch_size']}, {results['n_candidates']} "
        f"candidate negatives; seeds {results['seeds']}; {results['n_questions']} FITB questions "
        f"(popularity-matched protocol). Mean ± std over seeds. Grid wall time: {results['wall_seconds']:.0f} s.",
        "",
        "| compatibility cell | group | seeds | FITB | AUC |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "fitb" in r:
            lines.append(f"| {r['cell']} | {r['group']} | {r['n']} | {_pm(r['fitb'])} | {_pm(r['auc'])} |")
    lines += [
        "",
        "| general (image↔text) cell | seeds | text→item R@10 | P@10 by type |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if "recall@10" in r:
            lines.append(f"| {r['cell']} | {r['n']} | {_pm(r['recall@10'])} | {_pm(r['p@10_type'])} |")
    lines += ["", "| baseline (no training) | FITB | AUC |", "|---|---|---|"]
    for name, m in results["baselines"].items():
        lines.append(f"| {name} | {m['fitb']:.3f} | {m['auc']:.3f} |")
    return "\n".join(lines) + "\n"


def _pm(ms: tuple[float, float]) -> str:
    return f"{ms[0]:.3f} ± {ms[1]:.3f}"


def _param(cell: str) -> float:
    return float(cell.rsplit("=", 1)[1].split()[0])


def plot_all(results: dict[str, Any], out: Path) -> list[Path]:
    """The PNGs of docs/ablation.md: losses compared, sweeps, miners and spread, normalisation, general."""
    rows = summary(results)
    by = {r["cell"]: r for r in rows}
    base = results["baselines"].get("attribute-match")
    paths = []

    def bars(name: str, cells: list[str], metrics: Sequence[str], title: str) -> None:
        cells = [c for c in cells if c in by]
        if not cells:
            return
        fig = _new_figure((9.0, 4.5), 100)
        axes = fig.subplots(1, len(metrics))
        for ax, m in zip(np.atleast_1d(axes), metrics):
            means = [by[c][m][0] for c in cells]
            ax.barh(range(len(cells)), means, xerr=[by[c][m][1] for c in cells], color="#4c72b0")
            ax.set_yticks(range(len(cells)), cells, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(m)
            if base and m in base:
                ax.axvline(base[m], color="#c44e52", ls="--", label="attribute-match")
                ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(title)
        paths.append(_save(fig, out / name))

    heads = ["infonce τ=0.1", "triplet semi-hard m=0.2", "contrastive m=0.5"]
    bars("losses.png", heads, ("fitb", "auc"), "Compatibility losses at equal budget (mean ± std over seeds)")
    miners = [
        "triplet batch-all m=0.2",
        "triplet batch-hard m=0.2",
        "triplet semi-hard m=0.2",
        "triplet random m=0.2",
    ]
    bars("miners.png", miners, ("fitb", "auc"), "Triplet miners (m = 0.2)")
    norm = [c for pair in zip(heads, [c for c in by if c.endswith("unnormalised")]) for c in pair]
    bars("normalize.png", norm, ("fitb", "auc"), "Unit sphere vs unnormalised")
    bars(
        "general.png",
        [r["cell"] for r in rows if r["group"] == "general"],
        ("recall@10", "p@10_type"),
        "General space",
    )

    sweeps = [("infonce-τ", "temperature τ"), ("triplet-m", "margin m"), ("contrastive-m", "margin m")]
    fig = _new_figure((10.0, 3.8), 100)
    for ax, (group, label) in zip(fig.subplots(1, 3), sweeps):
        pts = sorted((_param(r["cell"]), r["fitb"]) for r in rows if r["group"] == group)
        if pts:
            x = [p[0] for p in pts]
            ax.errorbar(x, [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], marker="o", capsize=3)
            ax.set_xscale("log")
            ax.set_xlabel(label)
        if base:
            ax.axhline(base["fitb"], color="#c44e52", ls="--", lw=1)
        ax.set_title(group, fontsize=9)
        ax.set_ylabel("FITB")
    paths.append(_save(fig, out / "sweeps.png"))

    fig = _new_figure((8.0, 4.5), 100)
    ax = fig.subplots()
    for cell in [*miners, "infonce τ=0.1", "contrastive m=0.5"]:
        curves = [r["curves"] for r in results["runs"] if r["cell"] == cell]
        if curves:
            ax.plot(curves[0]["step"], np.mean([c["spread"] for c in curves], axis=0), label=cell)
    ax.set_xlabel("step")
    ax.set_ylabel("spread of the compatibility vectors (1 − ‖mean‖²)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "spread.png"))
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ml.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--features",
        type=Path,
        default=None,
        help="TrainData .npz with a held-out split (required unless --replot)",
    )
    p.add_argument("--out", type=Path, default=Path("docs/ablation"), help="folder for results and PNGs")
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell")
    p.add_argument("--steps", type=int, default=STEPS, help="optimiser steps per run")
    p.add_argument("--quick", action="store_true", help="2 cells, 2 seeds, 5 steps (a smoke test)")
    p.add_argument("--only", default="", help="comma-separated cell names: just these (e.g. at more --steps)")
    p.add_argument(
        "--replot", action="store_true", help="only redraw results.md and the PNGs from results.json"
    )
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the grid and write ``results.json``, ``results.md`` and the PNGs into ``--out``."""
    args = build_parser().parse_args(argv)
    if args.replot:
        results = json.loads((args.out / "results.json").read_text())
        (args.out / "results.md").write_text(markdown(results))
        plot_all(results, args.out)
        return results
    if args.features is None:
        raise SystemExit("python -m ml.ablation: --features is required (unless --replot)")
    torch.set_num_threads(1)
    data = TrainData.load(args.features)
    cells, seeds, steps = (quick_grid(), 2, 5) if args.quick else (grid(), args.seeds, args.steps)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",")]
        unknown = sorted(set(wanted) - {c.name for c in cells})
        if unknown:
            raise SystemExit(
                f"--only: unknown cells {unknown}; the cells are: {', '.join(c.name for c in cells)}"
            )
        cells = [c for c in cells if c.name in wanted]
    results = run_grid(data, cells, list(range(seeds)), steps, log=lambda s: print(s, flush=True))
    results["features"] = args.features.name
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(markdown(results))
    plot_all(results, args.out)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
