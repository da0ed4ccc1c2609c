"""Per-prefix quality metrics over numpy arrays: top-1 of a classifier, nearest-neighbour top-1
and mAP@k of cosine retrieval on prefix views.

mAP@k uses the corrected definition: for each query, the precision at every rank ``i <= k`` that
holds a relevant item, summed and **divided by k** (not by the number of hits, which rewards a
list with a single early hit as much as a perfect one), then averaged over queries.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.exact import exact_search


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max score is the label.

    Example:
        >>> top1(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1]))
        0.6666666666666666
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or len(scores) != len(labels) or len(labels) == 0:
        raise NestembError(f"scores {scores.shape} and labels {labels.shape} do not match")
    return float((scores.argmax(axis=1) == labels).mean())


def average_precision_at_k(relevant: np.ndarray, k: int | None = None) -> np.ndarray:
    """AP@k per query from a boolean ``(Nq, >=k)`` relevance matrix in rank order:
    ``sum_{i<=k} rel_i * precision@i / k``.

    Example:
        >>> rel = np.array([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=bool)
        >>> average_precision_at_k(rel, 4).round(4)     # (1 + 2/3)/4, (1/4)/4, 4/4
        array([0.4167, 0.0625, 1.    ])
    """
    rel = np.asarray(relevant, dtype=bool)
    k = rel.shape[1] if k is None else int(k)
    if rel.ndim != 2 or not 1 <= k <= rel.shape[1]:
        raise NestembError(f"need a (queries, >= {k}) relevance matrix, got {rel.shape}")
    rel = rel[:, :k]
    precision = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    return (precision * rel).sum(axis=1) / k


def retrieval_metrics(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    dims: Sequence[int],
    k: int = 10,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """1-NN top-1 and mAP@k of cosine search on the prefix views (:func:`prefix_view`) of raw
    embeddings, for every ``m`` in ``dims``, under the keys ``knn_top1`` and ``map{k}``. Labels
    define relevance (same class = relevant). ``progress(1)`` is called after each prefix.

    Example:
        >>> g = np.array([[1.0, 0.0], [1.0, 0.2], [-1.0, 0.0], [-0.1, -1.0]])
        >>> r = retrieval_metrics(np.array([[2.0, 0.1]]), np.array([0]), g,
        ...                       np.array([0, 0, 1, 1]), dims=(1, 2), k=2)
        >>> r["knn_top1"], r["map2"]
        ([1.0, 1.0], [1.0, 1.0])
    """
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    key = f"map{k}"
    out: dict[str, list[float]] = {"knn_top1": [], key: []}
    for m in dims:
        nn_idx = exact_search(gallery, queries, k, dim=m)[1]
        rel = gallery_labels[nn_idx] == query_labels[:, None]
        out["knn_top1"].append(float(rel[:, 0].mean()))
        out[key].append(float(average_precision_at_k(rel, min(k, rel.shape[1])).mean()))
        if progress is not None:
            progress(1)
    return out
