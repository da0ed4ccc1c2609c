"""Synthetic Matryoshka-like vectors for tests, doctests and benchmarks (no model needed)."""

from __future__ import annotations

import numpy as np


def synthetic_matryoshka(
    n: int, dim: int, seed: int = 0, decay: float = 0.08, n_clusters: int = 64
) -> np.ndarray:
    """Clustered test vectors whose energy decays across coordinates (like MRL embeddings),
    so that short prefixes already rank well. Plain Gaussian noise has no such structure.

    Example:
        >>> X = synthetic_matryoshka(100, 16)
        >>> X.shape, X.dtype, bool(np.abs(X[:, 0]).mean() > np.abs(X[:, -1]).mean())
        ((100, 16), dtype('float32'), True)
        >>> bool((synthetic_matryoshka(5, 8, seed=1) == synthetic_matryoshka(5, 8, seed=1)).all())
        True
    """
    rng = np.random.default_rng(seed)
    scale = np.exp(-decay * np.arange(dim))
    centers = rng.normal(size=(n_clusters, dim))
    X = centers[rng.integers(0, n_clusters, size=n)] + 0.6 * rng.normal(size=(n, dim))
    return (X * scale).astype(np.float32)
