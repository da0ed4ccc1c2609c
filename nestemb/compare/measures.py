"""How similar are two representations of the same items? Linear CKA (biased and debiased),
orthogonal Procrustes distance and Convergent-Learning neuron matching, all computed from the
``(d_x, d_y)`` cross-covariance of the centered features, never from an ``n x n`` matrix.

``X`` and ``Y`` are paired rows (row ``i`` of both is the same item); their widths may differ.
Every measure here takes the rows as given; :mod:`nestemb.compare.prefixes` applies them to
prefix views.

Degenerate input is an error, never a NaN: a representation whose rows are all the same has no
variance, so no similarity to it is defined (:class:`~nestemb.errors.NestembError`). A single
*unit* (column) that is constant has correlation 0 with every unit of the other space.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from nestemb.errors import NestembError
from nestemb.nesting import finite_matrix

# ||X - mean|| below this share of ||X|| is rounding noise from identical rows, not variance.
_NO_VARIANCE = 1e-10


_matrix = finite_matrix


def _paired(X: object, Y: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate two paired matrices: same number of rows, any widths."""
    x, y = _matrix(X, "X"), _matrix(Y, "Y")
    if len(x) != len(y):
        raise NestembError(
            f"X and Y must hold the same items as paired rows: got {len(x)} and {len(y)} rows"
        )
    return x, y


class Centered:
    """One representation, centered, with the statistics the measures share (computed once,
    on first use, so a prefix x prefix comparison pays for each view's Gram matrix once).

    ``rows`` is the centered float64 data; ``name`` names the parameter in errors.

    Example:
        >>> c = Centered(np.array([[1.0, 2.0], [3.0, 2.0]]), "X")
        >>> c.rows.tolist(), c.norm
        ([[-1.0, 0.0], [1.0, 0.0]], 1.4142135623730951)
        >>> Centered(np.ones((3, 2)), "Y")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: Y has no variance: all 3 rows are the same, so no similarity to it is defined
    """

    def __init__(self, data: np.ndarray, name: str):
        data = np.asarray(data, dtype=np.float64)
        self.name = name
        self.rows = data - data.mean(axis=0)
        self.norm = float(np.linalg.norm(self.rows))
        if self.norm <= _NO_VARIANCE * float(np.linalg.norm(data)) or self.norm == 0.0:
            raise NestembError(
                f"{name} has no variance: all {len(data)} rows are the same, so no similarity to "
                "it is defined"
            )

    @property
    def n(self) -> int:
        return len(self.rows)

    @functools.cached_property
    def gram_norm(self) -> float:
        """``||Xc^T Xc||_F``: the feature-space form of ``||H K H||_F`` for ``K = X X^T``."""
        return float(np.linalg.norm(self.rows.T @ self.rows))

    @functools.cached_property
    def row_sq(self) -> np.ndarray:
        """Squared norms of the centered rows: the diagonal of the centered kernel matrix."""
        return np.einsum("ij,ij->i", self.rows, self.rows)

    @functools.cached_property
    def unit_norms(self) -> np.ndarray:
        """Norm of each centered column (``sqrt(n) * std``)."""
        return np.sqrt(np.einsum("ij,ij->j", self.rows, self.rows))


def cross(a: Centered, b: Centered) -> np.ndarray:
    """The ``(d_x, d_y)`` cross-covariance ``Xc^T Yc`` every measure is computed from.

    Example:
        >>> a = Centered(np.array([[0.0], [2.0]]), "X"); b = Centered(np.array([[1.0], [3.0]]), "Y")
        >>> cross(a, b).tolist()
        [[2.0]]
    """
    return a.rows.T @ b.rows


def _hsic(a: Centered, b: Centered, cross_sq: float, debiased: bool) -> float:
    """HSIC of the linear kernels ``K = X X^T``, ``L = Y Y^T`` from ``cross_sq = ||Xc^T Yc||_F^2``.

    Biased: ``tr(K H L H) / (n-1)^2 = ||Xc^T Yc||_F^2 / (n-1)^2``.

    Debiased (the unbiased estimator of Song et al., 2012, as in Nguyen et al., 2021), with
    ``~K`` = ``K`` with a zeroed diagonal::

        [tr(~K ~L) + (1'~K1)(1'~L1) / ((n-1)(n-2)) - 2/(n-2) 1'~K~L1] / (n(n-3))

    The estimator is unchanged by translating ``X`` or ``Y`` (checked in the tests against the
    formula on uncentered data), so it is evaluated on centered rows where ``K1 = 0``; then with
    ``r_i = ||xc_i||^2`` (the diagonal of ``K``) and ``s_i = ||yc_i||^2``:
    ``tr(~K~L) = ||Xc^T Yc||^2 - r.s``, ``1'~K1 = -sum(r)``, ``~K1 = -r`` so ``1'~K~L1 = r.s``.
    All O(n d) given the cross-covariance.
    """
    n = a.n
    if not debiased:
        return cross_sq / (n - 1) ** 2
    rs = float(a.row_sq @ b.row_sq)
    return (
        cross_sq - rs + float(a.row_sq.sum()) * float(b.row_sq.sum()) / ((n - 1) * (n - 2))
        - 2.0 * rs / (n - 2)
    ) / (n * (n - 3))


def cka_from(a: Centered, b: Centered, C: np.ndarray, debiased: bool = False) -> float:
    """Linear CKA of two centered representations given their cross-covariance ``C``
    (the building block of :func:`cka` and of prefix x prefix comparisons).

    Example:
        >>> a = Centered(np.array([[0.0], [1.0], [3.0]]), "X")
        >>> round(cka_from(a, a, cross(a, a)), 6)
        1.0
    """
    if debiased and a.n < 4:
        raise NestembError(
            f"the debiased CKA estimator needs at least 4 rows (items), got n={a.n}; use "
            "debiased=False or more items"
        )
    hxy = _hsic(a, b, float(np.sum(C * C)), debiased)
    hx = _hsic(a, a, a.gram_norm**2, debiased)
    hy = _hsic(b, b, b.gram_norm**2, debiased)
    for h, c in ((hx, a), (hy, b)):
        # The debiased self-HSIC is a U-statistic of squares, >= 0; it is 0 only for rows whose
        # pairwise differences are all orthogonal (e.g. n=4 with repeated points).
        if h <= 1e-12 * c.gram_norm**2 / (c.n - 1) ** 2:
            raise NestembError(
                f"{c.name}: the debiased HSIC of {c.name} with itself is 0 (its {c.n} rows are too "
                "few or degenerate), so debiased CKA is undefined; use debiased=False"
            )
    # CKA is a cosine between (debiased) centered kernels: in [-1, 1] up to rounding.
    return float(np.clip(hxy / math.sqrt(hx * hy), -1.0, 1.0))


def cka(X: object, Y: object, debiased: bool = False) -> float:
    """Linear centered kernel alignment (Kornblith et al., 2019) of paired rows ``X`` (n, d_x)
    and ``Y`` (n, d_y), in feature-space form: O(n d^2) time, O(d^2) extra memory, no ``n x n``
    matrix, so n = 60,000 is fine.

    Biased: ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with ``Xc`` the centered rows;
    in [0, 1]. It reads well above 0 on independent features at small n (about 0.11 at n=64).
    ``debiased=True`` uses the unbiased HSIC estimator (Song et al., 2012; see :func:`_hsic`),
    centered on 0 for independent features; it needs n >= 4 and lies in [-1, 1].

    Invariant to orthogonal maps, isotropic scaling and translation of either space. Rows that
    are all the same (no variance) raise :class:`~nestemb.errors.NestembError`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 8))
        >>> Q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
        >>> round(cka(X, 3 * X @ Q + 1), 6)
        1.0
        >>> biased = cka(X, rng.normal(size=(200, 8)))
        >>> unbiased = cka(X, rng.normal(size=(200, 8)), debiased=True)
        >>> bool(biased > 0.02), bool(abs(unbiased) < 0.02)
        (True, True)
    """
    x, y = _paired(X, Y)
    if debiased and len(x) < 4:
        raise NestembError(
            f"the debiased CKA estimator needs at least 4 rows (items), got n={len(x)}; use "
            "debiased=False or more items"
        )
    a, b = Centered(x, "X"), Centered(y, "Y")
    return cka_from(a, b, cross(a, b), debiased)


def procrustes_from(a: Centered, b: Centered, C: np.ndarray) -> float:
    """Procrustes distance of two centered representations with cross-covariance ``C``
    (see :func:`procrustes_distance`).

    Example:
        >>> a = Centered(np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]]), "X")
        >>> round(procrustes_from(a, a, cross(a, a)), 6)
        0.0
    """
    from nestemb.maps import orthogonal_procrustes

    # The one Procrustes solves from source.T @ target; with source = I that product is C itself,
    # so W (the polar factor of C) comes without a second pass over the n rows.
    W = orthogonal_procrustes(np.eye(C.shape[0]), C)
    # After Frobenius normalisation ||X||=||Y||=1: ||X R - Y||^2 = 2 - 2 tr(R^T X^T Y) for an
    # orthogonal R of the zero-padded spaces; the thin W attains the same trace.
    fit = float(np.sum(W * C)) / (a.norm * b.norm)
    return math.sqrt(max(0.0, 2.0 - 2.0 * min(fit, 1.0)))


def procrustes_distance(X: object, Y: object) -> float:
    """Orthogonal Procrustes distance of paired rows: center each space, scale it to unit
    Frobenius norm, zero-pad the narrower one to the wider width, and return
    ``min_R ||X R - Y||_F`` over orthogonal ``R`` (from
    :func:`nestemb.maps.orthogonal_procrustes`).

    It equals ``sqrt(2 - 2 ||Xc^T Yc||_* / (||Xc|| ||Yc||))`` (nuclear norm): 0 when ``Y`` is a
    rotated, reflected, translated and isotropically scaled copy of ``X``; at most ``sqrt(2)``.
    Symmetric; a metric on shapes (Williams et al., 2021). Zero padding keeps it symmetric
    between widths. Rows that are all the same raise :class:`~nestemb.errors.NestembError`.
    Being a square root of ``2 - 2 fit``, it reads about 1e-8 (not 0) for identical shapes in
    float64.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(100, 4))
        >>> Q = np.linalg.qr(rng.normal(size=(4, 4)))[0]
        >>> round(procrustes_distance(X, 2 * X @ Q - 5), 6)
        0.0
        >>> round(procrustes_distance(X, np.hstack([X, np.zeros((100, 2))])), 6)   # widths differ
        0.0
        >>> bool(procrustes_distance(X, rng.normal(size=(100, 4))) > 1.0)
        True
    """
    x, y = _paired(X, Y)
    a, b = Centered(x, "X"), Centered(y, "Y")
    return procrustes_from(a, b, cross(a, b))


@dataclasses.dataclass(frozen=True)
class NeuronMatching:
    """Convergent-Learning unit matching (Li et al., 2016) between the units (columns) of two
    representations.

    Attributes:
        correlation: ``(d_x, d_y)`` Pearson correlations between units of X and units of Y
            (0 for a unit that is constant over the items).
        one_to_one: for each unit of X, the unit of Y given by the one-to-one maximum-weight
            bipartite matching, or -1 when X is wider and the unit is left unmatched.
        semi: for each unit of X, its best unit of Y (semi-matching: several X units may share).
        scores_one_to_one, scores_semi: the matching weight of each unit of X (0 if unmatched).
        fraction_one_to_one: share of matched pairs with weight >= ``threshold``, over
            ``min(d_x, d_y)`` (the number of pairs a one-to-one matching can have).
        fraction_semi: share of X's units whose best match has weight >= ``threshold``.
        threshold, signed: the arguments given to :func:`neuron_matching`.
    """

    correlation: np.ndarray
    one_to_one: np.ndarray
    semi: np.ndarray
    scores_one_to_one: np.ndarray
    scores_semi: np.ndarray
    fraction_one_to_one: float
    fraction_semi: float
    threshold: float
    signed: bool


def _check_threshold(threshold: float, signed: bool) -> float:
    lo = -1.0 if signed else 0.0
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise NestembError(f"{{param}} must be a number, got {threshold!r}",
                           param="threshold") from None
    if not lo <= t <= 1.0:
        raise NestembError(f"{{param}} must be a correlation in [{lo:g}, 1], got {threshold!r}",
                           param="threshold")
    return t


def neuron_matching_from(
    a: Centered, b: Centered, C: np.ndarray, threshold: float = 0.5, signed: bool = False
) -> NeuronMatching:
    """Neuron matching of two centered representations with cross-covariance ``C``
    (see :func:`neuron_matching`).

    Example:
        >>> a = Centered(np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 5.0]]), "X")
        >>> neuron_matching_from(a, a, cross(a, a)).one_to_one.tolist()
        [0, 1]
    """
    from scipy.optimize import linear_sum_assignment

    t = _check_threshold(threshold, signed)
    denom = np.outer(a.unit_norms, b.unit_norms)
    # A constant unit has no correlation with anything: 0, not 0/0.
    R = np.divide(C, denom, out=np.zeros_like(C), where=denom > 0)
    R = np.clip(R, -1.0, 1.0)
    # Embedding coordinates carry no sign convention: a negated unit is the same unit, so match
    # on |r| unless signed=True (Li et al. matched ReLU units, where the sign is meaningful).
    weights = R if signed else np.abs(R)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    one = np.full(R.shape[0], -1, dtype=np.int64)
    one[rows] = cols
    s_one = np.zeros(R.shape[0])
    s_one[rows] = weights[rows, cols]
    semi = np.argmax(weights, axis=1)
    s_semi = weights[np.arange(R.shape[0]), semi]
    return NeuronMatching(
        correlation=R,
        one_to_one=one,
        semi=semi,
        scores_one_to_one=s_one,
        scores_semi=s_semi,
        fraction_one_to_one=float(np.sum(weights[rows, cols] >= t) / min(R.shape)),
        fraction_semi=float(np.mean(s_semi >= t)),
        threshold=t,
        signed=bool(signed),
    )


def neuron_matching(
    X: object, Y: object, threshold: float = 0.5, *, signed: bool = False
) -> NeuronMatching:
    """Match the units (columns) of ``X`` to those of ``Y`` by the correlation of their values
    over the paired items, as in Convergent Learning (Li et al., 2016): a one-to-one
    maximum-weight bipartite matching (``scipy.optimize.linear_sum_assignment``) and a
    semi-matching (each unit of X to its best unit of Y), with the fraction of units whose match
    reaches ``threshold``.

    Weights are ``|correlation|`` (a unit and its negation match), or the signed correlation with
    ``signed=True``. Widths may differ. Returns a :class:`NeuronMatching`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(500, 6))
        >>> perm = np.array([3, 0, 5, 1, 2, 4])
        >>> m = neuron_matching(X, X[:, perm] * [1, -1, 1, 1, 2, 1])
        >>> np.array_equal(perm[m.one_to_one], np.arange(6)), m.fraction_one_to_one
        (True, 1.0)
        >>> neuron_matching(X, X, threshold=1.5)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: threshold must be a correlation in [0, 1], got 1.5
    """
    _check_threshold(threshold, signed)
    x, y = _paired(X, Y)
    a, b = Centered(x, "X"), Centered(y, "Y")
    return neuron_matching_from(a, b, cross(a, b), threshold, signed)
