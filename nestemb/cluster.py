"""k-means, one of each: the clustering behind piecewise adapters (``Adapter(kind="cluster")``),
the cluster matching of unpaired maps and k-means anchors.

:func:`kmeans` is Lloyd's algorithm from greedy k-means++ starts (each new centre the best of
``2 + log k`` draws weighted by squared distance, as scikit-learn does), the best of ``inits``
starts kept; or from centroids the caller gives (``init``). ``spherical=True`` renormalises the
centroids after every update: on unit rows that is spherical k-means, whose nearest centroid is
the one of highest cosine. An empty cluster restarts at the row worst served by its centroid, so
every cluster keeps rows. (The IVF index clusters millions of rows with FAISS's k-means; this one
is for the thousands of rows a fit sees.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nestemb.errors import NestembError


@dataclass(frozen=True)
class KMeansResult:
    """``centroids`` ``(k, d)``, every row's cluster ``labels`` (its nearest centroid) and the
    ``inertia`` (sum of squared distances of the rows to their centroids)."""

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (Euclidean, what k-means minimises) of every row of ``x``.

    Example:
        >>> nearest_centroid(np.array([[0.0, 0.1], [2.0, 2.1]]), np.array([[2.0, 2.0], [0.0, 0.0]])).tolist()
        [1, 0]
    """
    return _offset_distances(x, centroids).argmin(axis=1)


def _offset_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``(n, k)`` squared distances of the rows to the centroids less each row's own
    ``||x||^2`` (``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2``), which no argmin over centroids
    needs."""
    return np.einsum("ij,ij->i", centroids, centroids)[None, :] - 2.0 * (x @ centroids.T)


def _plus_plus(x: np.ndarray, sq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A greedy k-means++ start: every new centre the best (least total squared distance) of a
    few rows drawn with probability proportional to their squared distance to the centres so
    far."""
    n = len(x)
    tries = 2 + int(np.log(k))
    centroids = np.empty((k, x.shape[1]), dtype=x.dtype)
    centroids[0] = x[rng.integers(n)]
    d2 = np.maximum(sq - 2.0 * (x @ centroids[0]) + centroids[0] @ centroids[0], 0)
    for c in range(1, k):
        total = float(d2.sum())
        cand = (np.searchsorted(np.cumsum(d2), rng.random(tries) * total) if total > 0
                else rng.integers(n, size=tries))
        cand = np.minimum(cand, n - 1)
        options = np.minimum(d2[None, :], np.maximum(
            sq[None, :] - 2.0 * (x[cand] @ x.T) + sq[cand, None], 0))
        best = int(options.sum(axis=1).argmin())
        centroids[c], d2 = x[cand[best]], options[best]
    return centroids


def _lloyd(x: np.ndarray, sq: np.ndarray, centroids: np.ndarray, iters: int, tol: float,
           spherical: bool) -> KMeansResult:
    """Lloyd steps from ``centroids`` until at most ``tol * n`` rows change cluster (or
    ``iters`` steps)."""
    n, k = len(x), len(centroids)
    rows = np.arange(n)
    labels = np.full(n, -1)
    for _ in range(iters):
        dist = _offset_distances(x, centroids)
        new = dist.argmin(axis=1)
        moved = np.count_nonzero(new != labels)
        labels = new
        if moved <= tol * n:
            break  # labels are the nearest centroids of these centroids
        counts = np.bincount(labels, minlength=k)
        onehot = np.zeros((n, k), dtype=x.dtype)
        onehot[rows, labels] = 1.0
        sums = onehot.T @ x  # every cluster's row sum in one product
        for e in np.flatnonzero(counts == 0):
            # restart an empty cluster at the worst-fit row of a cluster that keeps others
            fit = dist[rows, labels] + sq
            fit[counts[labels] < 2] = -np.inf
            far = int(fit.argmax())
            counts[labels[far]] -= 1
            sums[labels[far]] -= x[far]
            sums[e], counts[e], labels[far] = x[far], 1, e
        centroids = (sums / counts[:, None]).astype(x.dtype, copy=False)
        if spherical:
            centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    else:  # out of steps: the last update moved the centroids after the assignment
        labels = nearest_centroid(x, centroids)
    inertia = sq + np.einsum("ij,ij->i", centroids, centroids)[labels] \
        - 2.0 * np.einsum("ij,ij->i", x, centroids[labels])
    return KMeansResult(centroids, labels, float(np.maximum(inertia, 0).sum()))


def kmeans(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator | int = 0,
    *,
    iters: int = 20,
    inits: int = 1,
    tol: float = 0.0,
    spherical: bool = False,
    init: np.ndarray | None = None,
) -> KMeansResult:
    """k-means of the rows of ``x`` into ``k`` clusters (see the module notes): the best (least
    inertia) of ``inits`` greedy k-means++ starts, or the ``(k, d)`` centroids ``init``; at most
    ``iters`` Lloyd steps each, stopping once at most a fraction ``tol`` of the rows changes
    cluster (0: until no row does). ``rng``: a generator or a seed. Works in the dtype of ``x``.

    Example:
        >>> x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
        >>> r = kmeans(x, 2, rng=0)
        >>> sorted(r.centroids.round(2).tolist()), r.labels.tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
        ([[0.05, 0.0], [5.05, 5.0]], True)
        >>> round(r.inertia, 4)
        0.01
        >>> kmeans(x, 5)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: k must lie in [1, 4] (the rows to cluster), got 5
    """
    n = len(x)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise NestembError(f"{{param}} must lie in [1, {n}] (the rows to cluster), got {k}",
                           param="k")
    if init is not None and np.shape(init) != (k, x.shape[1]):
        raise NestembError(f"{{param}} must have shape {(k, x.shape[1])}, got {np.shape(init)}",
                           param="init")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    sq = np.einsum("ij,ij->i", x, x)
    if init is not None:
        return _lloyd(x, sq, np.array(init, dtype=x.dtype), iters, tol, spherical)
    best: KMeansResult | None = None
    for _ in range(max(1, int(inits))):
        result = _lloyd(x, sq, _plus_plus(x, sq, int(k), gen), iters, tol, spherical)
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    return best
