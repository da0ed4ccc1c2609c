"""Choosing anchor items for relative representations and translation.

Anchors are returned as row indices, because they are used in pairs: the same items encoded by
two models (``X_a[idx]``, ``X_b[idx]``). Only distinct rows are candidates, so the anchors are
never duplicated. ``fps`` and ``kmeans`` work in the geometry nestemb searches in: cosine, on
L2-normalised rows (:func:`nestemb.nesting.prefix_view` at the full width).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nestemb.checks import check_matrix
from nestemb.cluster import kmeans
from nestemb.errors import NestembError
from nestemb.exact import exact_search
from nestemb.nesting import prefix_view

METHODS = ("uniform", "fps", "kmeans")
"""Anchor selection methods: uniform at random, farthest-point sampling, k-means centroids
snapped to items."""


def _distinct(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The rows of ``rows`` (indices into ``X``) that are the first occurrence of their vector."""
    _, first = np.unique(X[rows], axis=0, return_index=True)
    return rows[np.sort(first)]


def _fps(V: np.ndarray, cand: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Farthest-point sampling by cosine distance among the unit rows ``V[cand]``: a random
    first anchor, then repeatedly the candidate farthest from every anchor chosen so far."""
    W = V[cand]
    chosen = [int(rng.integers(len(cand)))]
    far = 1.0 - W @ W[chosen[0]]
    far[chosen[0]] = -np.inf
    for _ in range(n - 1):
        j = int(np.argmax(far))
        chosen.append(j)
        far = np.minimum(far, 1.0 - W @ W[j])
        far[chosen] = -np.inf
    return cand[np.asarray(chosen)]


def _kmeans(
    V: np.ndarray, cand: np.ndarray, n: int, rng: np.random.Generator, max_iter: int
) -> np.ndarray:
    """Spherical k-means on the unit rows ``V[cand]`` (initialised by farthest-point sampling),
    then each centroid snapped to its nearest candidate item not taken by an earlier one."""
    centroids = kmeans(V[cand], n, rng, iters=max_iter, spherical=True,
                       init=V[_fps(V, cand, n, rng)]).centroids
    # n candidates per centroid guarantee a free one even after n - 1 are taken
    exclude = np.ones(len(V), dtype=bool)
    exclude[cand] = False
    order = exact_search(V, centroids, n, exclude=exclude)[1]
    taken: set[int] = set()
    out = []
    for row in order:
        pick = next(int(r) for r in row if int(r) not in taken)
        taken.add(pick)
        out.append(pick)
    return np.asarray(out, dtype=np.int64)


def _select(
    X: np.ndarray, V: np.ndarray, rows: np.ndarray, n: int, method: str, seed: int, max_iter: int,
    where: str,
) -> np.ndarray:
    cand = _distinct(X, rows)
    if n > len(cand):
        raise NestembError(
            f"n={n} anchors asked for but {where} has only {len(cand)} distinct rows"
        )
    rng = np.random.default_rng(seed)
    if method == "uniform":
        return rng.choice(cand, n, replace=False).astype(np.int64)
    if method == "fps":
        return _fps(V, cand, n, rng).astype(np.int64)
    return _kmeans(V, cand, n, rng, max_iter)


def select_anchors(
    X: object,
    n: int,
    method: str = "uniform",
    labels: Sequence | np.ndarray | None = None,
    seed: int = 0,
    *,
    max_iter: int = 20,
) -> np.ndarray:
    """Pick ``n`` distinct anchor rows of ``X`` (indices, in selection order).

    ``method``: ``"uniform"`` (at random), ``"fps"`` (farthest-point sampling by cosine
    distance, from a random first row: spread over the space) or ``"kmeans"`` (spherical k-means
    with ``n`` centroids, ``max_iter`` Lloyd steps, each centroid replaced by its nearest item:
    representative of dense regions). With ``labels`` (one per row), anchors are chosen per class:
    ``n`` split as evenly as possible over the classes in sorted order (the first ``n % C``
    classes get one more), concatenated class by class. Seeded by ``seed``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(100, 4))
        >>> select_anchors(X, 5, "fps").shape
        (5,)
        >>> labels = np.repeat([0, 1], 50)
        >>> np.bincount(labels[select_anchors(X, 6, "kmeans", labels=labels)]).tolist()
        [3, 3]
        >>> select_anchors(X, 200)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: n=200 anchors asked for but X has only 100 distinct rows
    """
    x = check_matrix(X, "X", dtype=np.float64)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise NestembError(f"n must be a positive integer, got {n!r}")
    if method not in METHODS:
        raise NestembError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise NestembError(f"max_iter must be a positive integer, got {max_iter!r}")
    V = prefix_view(x, x.shape[1]) if method != "uniform" else x
    if labels is None:
        return _select(x, V, np.arange(len(x)), int(n), method, seed, max_iter, "X")
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(x):
        raise NestembError(
            f"labels must have one entry per row of X ({len(x)}), got shape {y.shape}"
        )
    classes = np.unique(y)
    if n < len(classes):
        raise NestembError(
            f"n={n} anchors cannot cover the {len(classes)} classes of labels: give n >= "
            f"{len(classes)} or labels=None"
        )
    share = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    parts = [
        _select(x, V, np.flatnonzero(y == c), s, method, seed + i, max_iter, f"class {c.item()!r}")
        for i, (c, s) in enumerate(zip(classes, share))
    ]
    return np.concatenate(parts)
