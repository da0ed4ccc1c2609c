"""Every comparison measure per prefix of the nesting, and as a prefix x prefix matrix.

The ``m``-dimensional representation of an embedding is its prefix view
(:func:`nestemb.nesting.prefix_view`: slice the first ``m`` coordinates, then L2-normalise each
row), the vectors retrieval actually compares. So every measure here, CKA and Procrustes
included, is computed on prefix views: on L2-normalised rows, not on the raw coordinates. At the
full width this differs from :func:`~nestemb.compare.cka` on the raw rows whenever the row norms
vary; call ``cka(prefix_view(X, d), prefix_view(Y, d))`` to get the same number directly.

Each view is centered once; each (prefix of X, prefix of Y) pair costs one ``n x m_x x m_y``
cross-covariance, from which CKA (both estimators), the Procrustes distance and neuron matching
are all read. Mutual k-NN runs on neighbour lists found once per view (on a seeded sample of the
items when ``knn_sample`` is given: it is O(n^2) otherwise).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from nestemb.compare.knn import MutualKnnTest, _check_k, _check_permutations, knn_test_from
from nestemb.compare.knn import neighbours, shared_counts
from nestemb.compare.measures import (
    Centered,
    _check_threshold,
    _paired,
    cka_from,
    cross,
    neuron_matching_from,
    procrustes_from,
)
from nestemb.errors import NestembError
from nestemb.nesting import prefix_view, validate_nesting

MEASURES = ("cka", "cka_debiased", "procrustes", "mutual_knn", "neuron_one_to_one", "neuron_semi")
"""Measure names: linear CKA (biased, debiased), Procrustes distance (lower = more alike),
mutual k-NN, and the fractions of units matched above the threshold (one-to-one, semi)."""

_FROM_CROSS = {"cka", "cka_debiased", "procrustes", "neuron_one_to_one", "neuron_semi"}


def _measures(measure: str | Sequence[str]) -> tuple[str, ...]:
    names = (measure,) if isinstance(measure, str) else tuple(measure)
    if not names:
        raise NestembError(f"measure is empty: give one or more of {', '.join(MEASURES)}")
    for name in names:
        if name not in MEASURES:
            raise NestembError(f"measure must be one of {', '.join(MEASURES)}, got {name!r}")
    return tuple(dict.fromkeys(names))


def _dims(dims: Sequence[int] | None, width: int, name: str, data: str) -> tuple[int, ...]:
    if dims is None:
        return (width,)
    try:
        out = validate_nesting(dims)
    except NestembError as e:
        raise NestembError(f"{name}: {e}") from None
    if out[-1] > width:
        raise NestembError(f"{name} asks for prefix {out[-1]} but {data} is only {width} wide")
    return out


@dataclasses.dataclass
class PrefixComparison:
    """Measures between prefix views of two representations of the same items.

    Attributes:
        dims_x, dims_y: the prefixes compared.
        values: measure name -> ``(len(dims_x), len(dims_y))`` array; ``values[m][i, j]``
            compares ``prefix_view(X, dims_x[i])`` with ``prefix_view(Y, dims_y[j])``.
        n: number of items; ``knn_sample``: items mutual k-NN used (``None``: all).
        k, threshold: mutual k-NN's k and neuron matching's threshold.
        knn_tests: for each prefix ``m`` in both ``dims_x`` and ``dims_y``, the permutation test
            of mutual k-NN at ``(m, m)`` (empty unless ``permutations`` was given).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(300, 8))
        >>> pc = compare_prefixes(X, X, (4, 8), (4, 8), measure=("cka", "procrustes"))
        >>> pc["cka"].round(3).tolist()
        [[1.0, 0.671], [0.671, 1.0]]
        >>> {m: round(v, 6) for m, v in pc.diagonal("procrustes").items()}
        {4: 0.0, 8: 0.0}
    """

    dims_x: tuple[int, ...]
    dims_y: tuple[int, ...]
    values: dict[str, np.ndarray]
    n: int
    k: int
    threshold: float
    knn_sample: int | None = None
    knn_tests: dict[int, MutualKnnTest] = dataclasses.field(default_factory=dict)

    def __getitem__(self, measure: str) -> np.ndarray:
        if measure not in self.values:
            raise NestembError(
                f"measure {measure!r} was not computed; this comparison has "
                f"{', '.join(self.values)}"
            )
        return self.values[measure]

    @property
    def common_dims(self) -> tuple[int, ...]:
        """The prefixes present in both ``dims_x`` and ``dims_y`` (the per-prefix table)."""
        return tuple(d for d in self.dims_x if d in self.dims_y)

    def diagonal(self, measure: str) -> dict[int, float]:
        """``{m: value at (m, m)}`` for each prefix ``m`` in both ``dims_x`` and ``dims_y``."""
        vals = self[measure]
        return {
            m: round(float(vals[self.dims_x.index(m), self.dims_y.index(m)]), 12)
            for m in self.common_dims
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "dims_x": list(self.dims_x),
            "dims_y": list(self.dims_y),
            "n": self.n,
            "k": self.k,
            "threshold": self.threshold,
            "knn_sample": self.knn_sample,
            "values": {m: v.tolist() for m, v in self.values.items()},
            "per_prefix": {
                m: {str(d): v for d, v in self.diagonal(m).items()} for m in self.values
            },
            "knn_tests": {str(d): t.to_dict() for d, t in self.knn_tests.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PrefixComparison":
        return cls(
            dims_x=tuple(d["dims_x"]),
            dims_y=tuple(d["dims_y"]),
            values={m: np.asarray(v, dtype=np.float64) for m, v in d["values"].items()},
            n=int(d["n"]),
            k=int(d["k"]),
            threshold=float(d["threshold"]),
            knn_sample=d.get("knn_sample"),
            knn_tests={int(m): MutualKnnTest(**t) for m, t in d.get("knn_tests", {}).items()},
        )


def compare_prefixes(
    X: object,
    Y: object,
    dims_x: Sequence[int] | None = None,
    dims_y: Sequence[int] | None = None,
    *,
    measure: str | Sequence[str] = "cka",
    k: int = 10,
    threshold: float = 0.5,
    knn_sample: int | None = None,
    permutations: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> PrefixComparison:
    """Compare every prefix view of ``X`` (``dims_x``, default: its full width) with every
    prefix view of ``Y`` (``dims_y``) under one or more measures of :data:`MEASURES`.

    ``X`` and ``Y`` are paired rows (the same items in the same order); their widths and nestings
    may differ. ``k``: neighbours for mutual k-NN; ``threshold``: correlation a neuron match must
    reach; ``knn_sample``: compute mutual k-NN on this many items drawn (with ``seed``) without
    replacement (``None``: all, O(n^2)); ``permutations``: when > 0, add a permutation test of
    mutual k-NN for each prefix in both nestings (``knn_tests``).

    Returns a :class:`PrefixComparison`. Example: see there.
    """
    x, y = _paired(X, Y)
    names = _measures(measure)
    dx = _dims(dims_x, x.shape[1], "dims_x", "X")
    dy = _dims(dims_y, y.shape[1], "dims_y", "Y")
    t = _check_threshold(threshold, signed=False)
    n = len(x)
    use_knn = "mutual_knn" in names
    need_cross = bool(_FROM_CROSS & set(names))
    if permutations:
        _check_permutations(permutations)
    sample = None
    if use_knn:
        if knn_sample is not None:
            if isinstance(knn_sample, bool) or not isinstance(knn_sample, (int, np.integer)) or (
                knn_sample < 2
            ):
                raise NestembError(f"{{param}} must be an integer >= 2, got {knn_sample!r}",
                                   param="knn_sample")
            if knn_sample < n:
                rng = np.random.default_rng(seed)
                sample = np.sort(rng.choice(n, int(knn_sample), replace=False))
        k = _check_k(k, n if sample is None else len(sample))
    from nestemb.progress import progress_bar

    values = {m: np.zeros((len(dx), len(dy))) for m in names}
    tests: dict[int, MutualKnnTest] = {}
    with progress_bar(progress) as bar:
        total = len(dx) * len(dy) + (len(dx) + len(dy)) * use_knn
        task = bar.add_task("compare prefixes", total=total)
        nbr_x: dict[int, np.ndarray] = {}
        nbr_y: dict[int, np.ndarray] = {}
        if use_knn:
            xs, ys = (x, y) if sample is None else (x[sample], y[sample])
            for dims, data, out in ((dx, xs, nbr_x), (dy, ys, nbr_y)):
                for m in dims:
                    out[m] = neighbours(data, k, dim=m)
                    bar.advance(task)
        views_y = {}
        for i, mx in enumerate(dx):
            a = Centered(prefix_view(x, mx), f"the {mx}-prefix view of X") if need_cross else None
            for j, my in enumerate(dy):
                if a is not None:
                    if my not in views_y:
                        views_y[my] = Centered(prefix_view(y, my), f"the {my}-prefix view of Y")
                    b = views_y[my]
                    C = cross(a, b)
                    if "cka" in names:
                        values["cka"][i, j] = cka_from(a, b, C)
                    if "cka_debiased" in names:
                        values["cka_debiased"][i, j] = cka_from(a, b, C, debiased=True)
                    if "procrustes" in names:
                        values["procrustes"][i, j] = procrustes_from(a, b, C)
                    if {"neuron_one_to_one", "neuron_semi"} & set(names):
                        nm = neuron_matching_from(a, b, C, t)
                        if "neuron_one_to_one" in names:
                            values["neuron_one_to_one"][i, j] = nm.fraction_one_to_one
                        if "neuron_semi" in names:
                            values["neuron_semi"][i, j] = nm.fraction_semi
                if use_knn:
                    values["mutual_knn"][i, j] = shared_counts(nbr_x[mx], nbr_y[my]).mean() / k
                    if permutations and mx == my:
                        tests[mx] = knn_test_from(nbr_x[mx], nbr_y[my], k, permutations, seed)
                bar.advance(task)
    return PrefixComparison(
        dims_x=dx,
        dims_y=dy,
        values=values,
        n=n,
        k=int(k),
        threshold=t,
        knn_sample=None if sample is None else len(sample),
        knn_tests=tests,
    )


def compare_per_prefix(
    X: object,
    Y: object,
    dims: Sequence[int],
    *,
    measure: str | Sequence[str] = "cka",
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """Each measure at each prefix ``m`` of ``dims``, the ``m``-prefix view of ``X`` against the
    ``m``-prefix view of ``Y``: measure name -> array ``(len(dims),)``. Keyword arguments as
    for :func:`compare_prefixes`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 8))
        >>> compare_per_prefix(X, X[:, ::-1], (2, 8), measure="cka")["cka"].round(3).tolist()
        [0.008, 1.0]
    """
    names = _measures(measure)
    x, y = _paired(X, Y)
    dims = _dims(dims, min(x.shape[1], y.shape[1]), "dims", "the narrower of X and Y")
    out = {m: np.zeros(len(dims)) for m in names}
    for p, d in enumerate(dims):
        pc = compare_prefixes(x, y, (d,), (d,), measure=names, **kwargs)
        for m in names:
            out[m][p] = pc[m][0, 0]
    return out
