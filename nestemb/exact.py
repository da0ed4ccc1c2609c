"""The one exact (brute-force) search, and the agreement measure against it.

Every index is tested and benchmarked against :func:`exact_search`; every evaluator (1-NN,
mAP@k, nDCG@10, hard-negative mining) ranks with it. Scores are inner products of
:func:`~nestemb.nesting.prefix_view` views, so cosine similarity of the ``dim``-prefix.

The work is blocked over both the stored vectors and the queries, so a memory-mapped gallery of
any size and a large query batch stay within a few hundred MB of scratch memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nestemb.errors import NestembError
from nestemb.nesting import prefix_view

_SCRATCH_FLOATS = 1 << 24  # scores held at once: 64 MB of float32


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` largest scores in descending order and their column positions.

    Uses ``argpartition`` (linear) and sorts only the ``k`` kept.

    Example:
        >>> topk(np.array([[0.1, 0.9, 0.5]]), 2)
        (array([[0.9, 0.5]]), array([[1, 2]]))
    """
    n = scores.shape[1]
    k = min(k, n)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(part, order, axis=1)


def exact_search(
    vectors: Any,
    queries: Any,
    k: int,
    *,
    dim: int | None = None,
    exclude: np.ndarray | None = None,
    block: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-``k`` by inner product of ``dim``-prefix views (default: full dimension).

    ``vectors`` may be a memory map; rows flagged in the boolean mask ``exclude`` never appear.
    Returns ``(scores, rows)``, each ``(n_queries, min(k, n_vectors))``, best first.

    Example:
        >>> X = np.array([[1, 0], [0, 1], [1, 1]], dtype="float32")
        >>> exact_search(X, np.array([[1, 0.1]], dtype="float32"), 2)[1]
        array([[0, 2]])
        >>> exact_search(X, np.array([[1, 0.1]], dtype="float32"), 1, dim=1)[1]   # 1-d views
        array([[0]])
    """
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or getattr(vectors, "ndim", 0) != 2:
        raise NestembError("exact_search needs 2-D vectors and queries")
    if queries.shape[1] != vectors.shape[1]:
        raise NestembError(
            f"queries have dimension {queries.shape[1]}, vectors {vectors.shape[1]}"
        )
    if isinstance(k, bool) or int(k) < 1:
        raise NestembError(f"k must be a positive integer, got {k!r}")
    dim = int(dim or vectors.shape[1])
    k = min(int(k), len(vectors))
    Q = prefix_view(queries, dim)
    nq, block = len(Q), max(1, min(block, len(vectors)))
    q_chunk = max(1, _SCRATCH_FLOATS // block)
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_r = np.zeros((nq, 0), dtype=np.int64)
    for a in range(0, len(vectors), block):
        V = prefix_view(np.asarray(vectors[a : a + block], dtype=np.float32), dim)
        dead = None if exclude is None else np.asarray(exclude[a : a + len(V)], dtype=bool)
        new_s = np.empty((nq, min(k, len(V))), dtype=np.float32)
        new_r = np.empty_like(new_s, dtype=np.int64)
        for b in range(0, nq, q_chunk):
            s = Q[b : b + q_chunk] @ V.T
            if dead is not None:
                s[:, dead] = -np.inf
            new_s[b : b + q_chunk], pos = topk(s, k)
            new_r[b : b + q_chunk] = pos + a
        s = np.concatenate([best_s, new_s], axis=1)
        r = np.concatenate([best_r, new_r], axis=1)
        best_s, pos = topk(s, k)
        best_r = np.take_along_axis(r, pos, axis=1)
    return best_s, best_r


def knn_intersection(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (exact top-k ids) present in the same row of
    ``found`` (an approximate search's ids): the "recall@k" of ANN benchmarks, which is agreement
    with exact search, not recall against relevance judgments.

    Example:
        >>> knn_intersection(np.array([[1, 2, 3]]), np.array([[3, 4, 1]]))
        0.6666666666666666
    """
    found, truth = np.asarray(found), np.asarray(truth)
    if found.ndim != 2 or truth.ndim != 2 or len(found) != len(truth):
        raise NestembError(f"found {found.shape} and truth {truth.shape} must be (queries, k)")
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.sum(hits) / truth.size)
