"""Plots a person would rather look at than read: quality against size, recall against speed.

matplotlib runs headless (Agg); every figure is written atomically as a PNG.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nestemb.io import atomic_file  # noqa: E402


__all__ = ["line_plot", "pareto_front", "plt", "save_figure", "scatter_pareto"]


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write ``fig`` as a PNG, atomically, and close it: how every nestemb figure (library
    and benchmarks) reaches the disk.

    Example:
        >>> import tempfile, pathlib
        >>> fig, ax = plt.subplots(); _ = ax.plot([1, 2])
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.png"; save_figure(fig, p)
        >>> p.read_bytes()[1:4]
        b'PNG'
    """
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    plt.close(fig)


def _finish(fig, ax, path: str | os.PathLike, xlabel: str, ylabel: str, title: str) -> None:
    """Label, grid and legend the axes, then write the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def line_plot(
    path: str | os.PathLike,
    x: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = True,
    xs: Mapping[str, Sequence[float]] | None = None,
) -> None:
    """One line per named series against ``x`` (per-series x values via ``xs``); log2 x-axis by
    default, because nestings double. ``None`` values are skipped.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "acc.png"
        >>> line_plot(p, [2, 4, 8], {"MRL": [0.8, 0.9, 0.91]}, xlabel="dim", ylabel="top-1")
        >>> p.stat().st_size > 0
        True
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, ys in series.items():
        xv = list(xs[name]) if xs and name in xs else list(x)
        pts = [(a, b) for a, b in zip(xv, ys) if b is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, label=name)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(x), [str(v) for v in x])
    _finish(fig, ax, path, xlabel, ylabel, title)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when both coordinates are better when larger
    (e.g. (recall, QPS)), sorted by the first coordinate.

    Example:
        >>> pareto_front([(0.9, 100.0), (0.95, 50.0), (0.9, 10.0), (0.99, 5.0)])
        [0, 1, 3]
    """
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], float("-inf")
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def scatter_pareto(
    path: str | os.PathLike,
    groups: Mapping[str, Sequence[tuple[float, float]]],
    *,
    xlabel: str = "recall@10",
    ylabel: str = "queries per second",
    title: str = "",
    logy: bool = True,
    xmin: float | None = None,
) -> None:
    """Scatter each group's (x, y) points and draw the Pareto front over all of them
    (only points with ``x >= xmin`` when ``xmin`` is given, to zoom on the high-recall end).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "pareto.png"
        >>> scatter_pareto(p, {"a": [(0.9, 100.0), (0.99, 10.0)], "b": [(0.95, 20.0)]})
        >>> p.stat().st_size > 0
        True
    """
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    everything = []
    for name, pts in groups.items():
        pts = [p for p in pts if xmin is None or p[0] >= xmin]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=18, label=name)
            everything.extend(pts)
    if everything:
        front = [everything[i] for i in pareto_front(everything)]
        ax.plot(*zip(*front), color="black", linewidth=1, linestyle="--", label="Pareto front")
    if logy:
        ax.set_yscale("log")
    _finish(fig, ax, path, xlabel, ylabel, title)
