"""Why a quantized first stage holds recall or fails: distance gaps against score errors.

A first stage over a ``d0``-prefix keeps the true top-``k`` only if the score error of its codes
is small against the *gap* between the ``k``-th neighbour's score and the score of the
``r``-th (``r`` = the shortlist): when the 10th and the 100th neighbours at ``d0`` sit within
int8's rounding error, a shortlist of 100 cannot hold them apart, and recall collapses.
:func:`gap_statistics` measures both per query on exact (brute-force) scores, plus the fraction
of the true full-dimension top-``k`` that survives a first-stage shortlist of each size.

The score error of a dtype is measured *after* a per-query affine fit of its scores onto the
exact ``d0`` scores (over the exact top ``max(ranks)`` neighbours): a scale or offset (binary
codes score ``bits - 2 hamming``) never changes a ranking, so only the residual matters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.exact import exact_search
from nestemb.index import quantize as qz
from nestemb.nesting import check_vectors, prefix_view


@dataclasses.dataclass
class GapStatistics:
    """Per-query gaps and score errors of one first stage (see :func:`gap_statistics`).

    Attributes:
        d0, dtype, k: the first stage measured and the ``k`` of recall@k.
        gaps: rank ``r`` -> per-query ``score_k - score_r`` of the exact ``d0``-prefix scores
            (the ``k``-th minus the ``r``-th best).
        score_error: per-query RMS residual of the stage's scores after the affine fit.
        survival: shortlist ``s`` -> mean fraction of the true full-dimension top-``k`` found in
            the stage's top ``s``.
    """

    d0: int
    dtype: str
    k: int
    gaps: dict[int, np.ndarray]
    score_error: np.ndarray
    survival: dict[int, float]

    def summary(self) -> dict[str, Any]:
        """Medians of the gaps and of the error, the fraction of queries whose gap to rank
        ``r`` exceeds twice their error (``holds_at``), and the survival per shortlist.

        Example:
            >>> g = GapStatistics(8, "int8", 10, {50: np.array([0.1, 0.01])},
            ...                   np.array([0.02, 0.02]), {50: 0.9})
            >>> g.summary()["holds_at"]
            {50: 0.5}
        """
        return {
            "d0": self.d0, "dtype": self.dtype, "k": self.k,
            "median_gap": {r: float(np.median(g)) for r, g in self.gaps.items()},
            "median_score_error": float(np.median(self.score_error)),
            "holds_at": {r: float(np.mean(g > 2 * self.score_error)) for r, g in self.gaps.items()},
            "survival": dict(self.survival),
        }


def stage_scores(vectors: np.ndarray, queries: np.ndarray, d0: int, dtype: str,
                 int8_trim: float = 0.0) -> np.ndarray:
    """Scores of every (query, vector) pair as a flat ``dtype`` first stage on the ``d0``-prefix
    views computes them (``(n_queries, n_vectors)``; small inputs only).

    Example:
        >>> X = np.array([[1, 0], [0.6, 0.8]], dtype="float32")
        >>> [round(float(v), 3) for v in stage_scores(X, X[:1], 2, "float32")[0]]
        [1.0, 0.6]
        >>> stage_scores(X, X[:1], 2, "binary").tolist()   # 8 bits (padded) - 2 hamming
        [[8.0, 6.0]]
    """
    stage = qz.make_stage(d0, dtype)
    if dtype == "int8":
        qz.train_sq8(stage, prefix_view(vectors, d0), int8_trim)
    qz.train_add(stage, prefix_view(vectors, d0), dtype)
    scores, rows = qz.stage_search(stage, prefix_view(queries, d0), len(vectors), dtype)
    out = np.empty_like(scores)
    np.put_along_axis(out, rows, scores, axis=1)
    return out


def gap_statistics(
    vectors: Any,
    queries: Any,
    d0: int,
    dtype: str = "int8",
    *,
    k: int = 10,
    ranks: Sequence[int] = (50, 100),
    shortlists: Sequence[int] = (10, 50, 100, 200, 400),
    int8_trim: float = 0.0,
) -> GapStatistics:
    """Distance-gap statistics of a flat ``dtype`` first stage on the ``d0``-prefix (exact
    brute force; meant for a sample of up to ~100k vectors and ~100 queries).

    Example:
        >>> from nestemb.index import synthetic_matryoshka
        >>> X = synthetic_matryoshka(2000, 64, seed=0); Q = synthetic_matryoshka(20, 64, seed=1)
        >>> g = gap_statistics(X, Q, 16, "int8", k=10, ranks=(50,), shortlists=(50, 2000))
        >>> g.gaps[50].shape, g.survival[2000]
        ((20,), 1.0)
        >>> bool(g.summary()["median_score_error"] < 0.05)
        True
    """
    X = check_vectors(vectors, what="vectors")
    Q = check_vectors(queries, dim=X.shape[1], what="queries")
    qz.check_prefix_dtype(dtype)
    n = len(X)
    if not 1 <= d0 <= X.shape[1]:
        raise NestembError(f"d0 must be in 1..{X.shape[1]}, got {d0}")
    ranks = sorted(int(r) for r in ranks)
    if not ranks or ranks[0] <= k or ranks[-1] > n or k < 1:
        raise NestembError(f"ranks must lie in ({k}, {n}] and k >= 1, got k={k}, ranks={ranks}")
    exact_d0, rows_d0 = exact_search(X, Q, ranks[-1], dim=d0)
    gaps = {r: (exact_d0[:, k - 1] - exact_d0[:, r - 1]).astype(np.float64) for r in ranks}
    approx = stage_scores(X, Q, d0, dtype, int8_trim)
    # ranking-relevant error: residual after a per-query affine fit over the top neighbours
    err = np.empty(len(Q))
    for i in range(len(Q)):  # diagnostics, not a search path: a loop over queries is fine here
        a = approx[i, rows_d0[i]].astype(np.float64)
        e = exact_d0[i].astype(np.float64)
        A = np.stack([a, np.ones_like(a)], axis=1)
        coef = np.linalg.lstsq(A, e, rcond=None)[0]
        err[i] = float(np.sqrt(np.mean((A @ coef - e) ** 2)))
    truth = exact_search(X, Q, k)[1]
    order = np.argsort(-approx, axis=1, kind="stable")
    survival = {}
    for s in shortlists:
        s = min(int(s), n)
        top = order[:, :s]
        survival[s] = float(np.mean([np.isin(t, tp).mean() for t, tp in zip(truth, top)]))
    return GapStatistics(d0=int(d0), dtype=dtype, k=int(k), gaps=gaps, score_error=err,
                         survival=survival)
