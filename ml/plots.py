"""PNG plots for training runs and evaluations: loss curves, 2-D embedding maps, metric comparisons.

Figures are drawn with matplotlib's object-oriented API on the Agg canvas (``Figure`` +
``FigureCanvasAgg``): no pyplot global state and no display, so it runs on a headless GPU box or in a
Celery worker. Each function writes one PNG of exactly ``figsize * dpi`` pixels and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml.slots import SLOTS

__all__ = ["plot_embedding_2d", "plot_loss_curves", "plot_metric_bars"]

DEFAULT_FIGSIZE: tuple[float, float] = (8.0, 5.0)
DEFAULT_DPI = 100


def _new_figure(figsize: tuple[float, float], dpi: int) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")  # no bbox_inches="tight": the size stays figsize * dpi
    return path


def plot_loss_curves(
    history: dict[str, list[float]],
    path: str | Path,
    *,
    xlabel: str = "step",
    title: str = "Training curves",
    figsize: tuple[float, float] = DEFAULT_FIGSIZE,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Plot one line per series (e.g. ``{"train_loss": [...], "val_loss": [...]}``).

    Args:
        history: series name -> values; x is 1..len(values) (steps or epochs, named by ``xlabel``).
        path: the PNG to write (parent folders are created).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    series = {k: list(v) for k, v in history.items() if len(v) > 0}
    if not series:
        raise ValueError("history has no non-empty series")
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot()
    for name, values in series.items():
        x = np.arange(1, len(values) + 1)
        ax.plot(x, values, label=name, marker="o" if len(values) == 1 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("value")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _pca_2d(vectors: np.ndarray) -> np.ndarray:
    """Project (N, D) onto its first two principal components; (N, 2), zero-padded when D or N is small."""
    x = vectors - vectors.mean(axis=0, keepdims=True)  # (N, D)
    _, _, vt = np.linalg.svd(x, full_matrices=False)  # vt: (min(N, D), D)
    proj = x @ vt[:2].T  # (N, <=2)
    if proj.shape[1] < 2:
        proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
    return proj


def plot_embedding_2d(
    vectors: np.ndarray,
    labels: list[str],
    path: str | Path,
    method: str = "pca",
    *,
    title: str = "Embeddings (PCA)",
    figsize: tuple[float, float] = DEFAULT_FIGSIZE,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Scatter a 2-D projection of embeddings, one colour per label (slot), with a legend.

    Args:
        vectors: (N, D) float embeddings.
        labels: N labels (usually slots from :mod:`ml.slots`; slots are listed in slot order, others after).
        path: the PNG to write.
        method: only ``"pca"`` (principal components by SVD of the centred vectors).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] == 0:
        raise ValueError(f"vectors must be a non-empty (N, D) array; got shape {v.shape}")
    if len(labels) != v.shape[0]:
        raise ValueError(f"labels has {len(labels)} entries for vectors of shape {v.shape}")
    if method != "pca":
        raise ValueError(f"unknown method {method!r}; only 'pca' is supported")
    xy = _pca_2d(v)  # (N, 2)
    lab = np.asarray([str(x) for x in labels])
    present = set(lab.tolist())
    order = [s for s in SLOTS if s in present] + sorted(present - set(SLOTS))
    cmap = _colours(len(order))
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot()
    for colour, name in zip(cmap, order):
        m = lab == name
        ax.scatter(xy[m, 0], xy[m, 1], s=14, color=colour, label=name, alpha=0.8)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return _save(fig, path)


def _colours(n: int) -> list[tuple[float, float, float, float]]:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_metric_bars(
    table: dict[str, dict[str, float]],
    path: str | Path,
    *,
    title: str = "Model comparison",
    figsize: tuple[float, float] = DEFAULT_FIGSIZE,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Grouped bars: one group per metric, one bar per model (a missing value leaves a gap).

    Args:
        table: ``{model_name: {metric_name: value}}``, e.g. ``{"zero-shot": {"fitb": 0.41, "auc": 0.62}}``.
        path: the PNG to write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if not table or not any(table.values()):
        raise ValueError("table has no values")
    models = list(table)
    metrics: list[str] = []
    for row in table.values():
        metrics += [m for m in row if m not in metrics]
    x = np.arange(len(metrics))  # (M,)
    width = 0.8 / len(models)
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot()
    for i, (model, colour) in enumerate(zip(models, _colours(len(models)))):
        values = [table[model].get(m, np.nan) for m in metrics]
        bars = ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=model, color=colour)
        ax.bar_label(bars, fmt="%.3g", fontsize="x-small", padding=1)
    ax.set_xticks(x, metrics)
    ax.set_ylabel("value")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)
