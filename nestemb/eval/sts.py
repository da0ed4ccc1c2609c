"""Semantic textual similarity per prefix: Spearman correlation of cosine and gold scores."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.nesting import check_vectors, prefix_view


def rankdata(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties get the average of their ranks (as ``scipy.stats.rankdata``).

    Example:
        >>> rankdata([10, 20, 20, 5]).tolist()
        [2.0, 3.5, 3.5, 1.0]
    """
    values = np.asarray(x, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    xs = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of tie-averaged ranks).

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 30, 40])
        1.0
        >>> round(spearman([1, 2, 3], [1, 3, 2]), 3)
        0.5
    """
    if len(a) != len(b) or len(a) < 2:
        raise NestembError(f"spearman needs two sequences of equal length >= 2, got {len(a)}, {len(b)}")
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def check_scores(scores: Sequence[float], where: str = "scores") -> None:
    """Refuse gold scores a Spearman correlation cannot use: NaN or infinite values, or all
    scores equal (the correlation is undefined). ``where`` names them in the message.

    Example:
        >>> check_scores([1.0, 2.0])
        >>> check_scores([3.0, 3.0, 3.0])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: scores are all equal (3): Spearman correlation is undefined
    """
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(arr).all():
        bad = arr[~np.isfinite(arr)][0]
        raise NestembError(f"{where} must be finite numbers, got {bad}")
    if len(arr) and (arr == arr[0]).all():
        raise NestembError(f"{where} are all equal ({arr[0]:g}): Spearman correlation is undefined")


def evaluate_sts(
    emb1: np.ndarray, emb2: np.ndarray, scores: Sequence[float], dims: Sequence[int]
) -> dict[str, list]:
    """Spearman correlation between the cosine of each pair's ``m``-dim views and the gold scores,
    for every ``m`` in ``dims``. Returns ``{"dims", "spearman"}``.

    Example:
        >>> import numpy as np
        >>> e1 = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
        >>> e2 = np.array([[1.0, 0.1], [0.0, 1.0], [1.0, 1.0]])
        >>> evaluate_sts(e1, e2, [5.0, 0.0, 3.0], [2])["spearman"]
        [1.0]
    """
    emb1 = check_vectors(emb1, what="first sentence embeddings")
    emb2 = check_vectors(emb2, dim=emb1.shape[1], what="second sentence embeddings")
    if not len(emb1) == len(emb2) == len(scores):
        raise NestembError("embeddings and scores differ in length")
    check_scores(scores)
    out: dict[str, list] = {"dims": [int(m) for m in dims], "spearman": []}
    for m in dims:
        cos = (prefix_view(emb1, m) * prefix_view(emb2, m)).sum(axis=1)
        out["spearman"].append(spearman(cos, scores))
    return out
