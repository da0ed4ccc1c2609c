"""Mutual k-nearest-neighbour alignment (Huh et al., 2024, "the platonic representation
hypothesis"): how many of each item's k nearest neighbours two spaces share, with a permutation
null that says how much of it chance explains.

Neighbours are cosine neighbours found by :func:`nestemb.exact.exact_search` (so of the
``dim``-prefix view when ``dim`` is given), the item itself left out.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nestemb.compare.measures import _paired
from nestemb.errors import NestembError
from nestemb.exact import exact_search


def _check_k(k: object, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise NestembError(f"{{param}} must be a positive integer, got {k!r}", param="k")
    if k > n - 1:
        raise NestembError(
            f"{{param}} must be smaller than the number of items compared ({n}: each item's "
            f"neighbours leave it out), got {k}", param="k")
    return int(k)


def _check_permutations(permutations: object) -> int:
    if isinstance(permutations, bool) or not isinstance(permutations, (int, np.integer)) or (
        permutations < 1
    ):
        raise NestembError(f"{{param}} must be a positive integer, got {permutations!r}",
                           param="permutations")
    return int(permutations)


def neighbours(X: np.ndarray, k: int, dim: int | None = None) -> np.ndarray:
    """Each row's ``k`` nearest other rows, ``(n, k)``, best first, by cosine of the
    ``dim``-prefix views (:func:`~nestemb.exact.exact_search`).

    ``exact_search``'s ``exclude`` mask drops rows for every query alike, so the item itself is
    left out by asking for ``k + 1`` and removing it (or, if an exact duplicate outranked it,
    the last one).

    Example:
        >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> neighbours(X, 1).ravel().tolist()
        [1, 0, 3, 2]
    """
    n = len(X)
    _, rows = exact_search(X, X, k + 1, dim=dim)
    drop = rows == np.arange(n)[:, None]
    drop[~drop.any(axis=1), -1] = True
    return rows[~drop].reshape(n, k)


def shared_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, how many entries two ``(n, k)`` neighbour lists share (rows hold no repeats).

    Example:
        >>> a, b = np.array([[1, 2, 3], [0, 2, 3]]), np.array([[3, 1, 0], [1, 4, 5]])
        >>> shared_counts(a, b).tolist()
        [2, 0]
    """
    both = np.sort(np.concatenate([a, b], axis=1), axis=1)
    return np.sum(both[:, 1:] == both[:, :-1], axis=1)


def mutual_knn(X: object, Y: object, k: int = 10) -> float:
    """Mean fraction of each item's ``k`` nearest neighbours (cosine, itself left out) that
    ``X`` and ``Y`` share: 1 when the neighbourhoods agree, about ``k / (n - 1)`` for unrelated
    spaces. Paired rows; the widths may differ.

    Costs two exact ``n x n`` searches (blocked, so memory stays small, but O(n^2 d) time):
    compare a sample of the items when ``n`` is large.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(300, 16))
        >>> mutual_knn(X, 5 * X, k=10)
        1.0
        >>> bool(mutual_knn(X, rng.normal(size=(300, 8)), k=10) < 0.1)
        True
    """
    x, y = _paired(X, Y)
    k = _check_k(k, len(x))
    return float(shared_counts(neighbours(x, k), neighbours(y, k)).mean() / k)


@dataclasses.dataclass(frozen=True)
class MutualKnnTest:
    """A mutual k-NN score with its permutation null.

    Attributes:
        score: :func:`mutual_knn` of the paired rows.
        null_mean, null_std: mean and standard deviation of the score over ``permutations``
            random re-pairings of the rows (the neighbourhoods of each space kept as they are).
        p_value: ``(1 + #{null >= score}) / (1 + permutations)`` (one-sided; never 0).
        k, permutations: the arguments.
    """

    score: float
    null_mean: float
    null_std: float
    p_value: float
    k: int
    permutations: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def knn_test_from(
    nx: np.ndarray, ny: np.ndarray, k: int, permutations: int, seed: int
) -> MutualKnnTest:
    """The permutation test on precomputed neighbour lists ``nx``, ``ny`` (``(n, k)``).

    Re-pairing item ``i`` of X with item ``p[i]`` of Y relabels Y's neighbour lists: the
    neighbours of ``i`` become ``p^-1[ny[p[i]]]``. No search is repeated.

    Example:
        >>> nx = np.array([[1], [0], [3], [2]])
        >>> knn_test_from(nx, nx, 1, 20, 0).score
        1.0
    """
    _check_permutations(permutations)
    score = float(shared_counts(nx, ny).mean() / k)
    rng = np.random.default_rng(seed)
    n = len(nx)
    null = np.empty(int(permutations))
    for t in range(int(permutations)):
        p = rng.permutation(n)
        inv = np.empty(n, dtype=np.int64)
        inv[p] = np.arange(n)
        null[t] = shared_counts(nx, inv[ny[p]]).mean() / k
    return MutualKnnTest(
        score=score,
        null_mean=float(null.mean()),
        null_std=float(null.std()),
        p_value=float((1 + np.sum(null >= score)) / (1 + len(null))),
        k=k,
        permutations=int(permutations),
    )


def mutual_knn_test(
    X: object, Y: object, k: int = 10, *, permutations: int = 200, seed: int = 0
) -> MutualKnnTest:
    """:func:`mutual_knn` with a permutation null: the score of ``permutations`` random
    re-pairings of the rows of ``X`` and ``Y`` (seeded), its mean and standard deviation, and the
    one-sided p-value of the observed score. Returns a :class:`MutualKnnTest`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 8))
        >>> t = mutual_knn_test(X, X + 0.1 * rng.normal(size=X.shape), k=5, permutations=99)
        >>> bool(t.score > 0.5), bool(t.null_mean < 0.05), t.p_value
        (True, True, 0.01)
    """
    x, y = _paired(X, Y)
    k = _check_k(k, len(x))
    _check_permutations(permutations)
    return knn_test_from(neighbours(x, k), neighbours(y, k), k, permutations, seed)
