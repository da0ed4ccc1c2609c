"""Heat maps of prefix x prefix comparisons (matplotlib, Agg, written atomically)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from nestemb.io import atomic_file


def prefix_heatmap(
    path: str | os.PathLike,
    values: np.ndarray,
    dims_x: Sequence[int],
    dims_y: Sequence[int],
    *,
    title: str = "",
    xlabel: str = "prefix of B",
    ylabel: str = "prefix of A",
    vmin: float | None = None,
    vmax: float | None = None,
    reverse: bool = False,
) -> None:
    """A ``(len(dims_x), len(dims_y))`` matrix as an annotated heat map: rows are the prefixes of
    the first representation (``dims_x``), columns those of the second. ``reverse=True`` for a
    measure where lower is more alike (Procrustes distance), so darker always means more alike.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "cka.png"
        >>> prefix_heatmap(p, np.array([[1.0, 0.5], [0.5, 1.0]]), (8, 16), (8, 16), title="CKA")
        >>> p.stat().st_size > 0
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(values, dtype=np.float64)
    size = (1.2 + 0.55 * len(dims_y) + 1.2, 1.0 + 0.45 * len(dims_x) + 0.8)
    fig, ax = plt.subplots(figsize=(max(4.0, size[0]), max(3.2, size[1])))
    im = ax.imshow(values, cmap="viridis_r" if reverse else "viridis", vmin=vmin, vmax=vmax,
                   aspect="auto", origin="lower")
    ax.set_xticks(range(len(dims_y)), [str(d) for d in dims_y])
    ax.set_yticks(range(len(dims_x)), [str(d) for d in dims_x])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if values.size <= 144:  # numbers stay readable up to a 12 x 12 grid
        mid = np.nanmean(values) if vmin is None or vmax is None else (vmin + vmax) / 2
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                # viridis is dark at its low end: white text there, black on the light end
                dark_cell = (values[i, j] > mid) == reverse
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if dark_cell else "black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
