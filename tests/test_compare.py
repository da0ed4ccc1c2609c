"""nestemb.compare: CKA against the naive n x n formulas, invariances, the debiased estimator's
null, mutual k-NN and its permutation test, Procrustes distance, neuron matching, prefixes."""

from __future__ import annotations

import numpy as np
import pytest

from nestemb.compare import (
    MEASURES,
    PrefixComparison,
    cka,
    compare_per_prefix,
    compare_prefixes,
    mutual_knn,
    mutual_knn_test,
    neuron_matching,
    procrustes_distance,
)
from nestemb.errors import NestembError
from nestemb.nesting import prefix_view


# ------------------------------------------------------------------ independent references
def _hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2


def _hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012), eq. 5, on the raw (uncentered) kernel matrices."""
    n = len(K)
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    one = np.ones(n)
    return float(
        np.trace(K @ L)
        + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ K @ L @ one)
    ) / (n * (n - 3))


def naive_cka(X: np.ndarray, Y: np.ndarray, debiased: bool) -> float:
    K, L = X @ X.T, Y @ Y.T
    h = _hsic_unbiased if debiased else _hsic_biased
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def _rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    return np.linalg.qr(rng.normal(size=(d, d)))[0]


# ------------------------------------------------------------------ CKA
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("n,dx,dy", [(4, 3, 2), (7, 1, 5), (50, 8, 8), (120, 20, 3)])
def test_cka_equals_naive_reference(n, dx, dy, debiased):
    rng = np.random.default_rng(n + dx)
    X = rng.normal(size=(n, dx)) + 3.0  # uncentered on purpose: the reference does not center
    Y = X[:, :1] @ rng.normal(size=(1, dy)) + rng.normal(size=(n, dy)) - 1.0
    assert cka(X, Y, debiased=debiased) == pytest.approx(naive_cka(X, Y, debiased), abs=1e-6)


def test_cka_hand_value_one_dimension():
    # for one feature each, linear CKA is the squared Pearson correlation
    x = np.array([1.0, 2.0, 4.0, 7.0, 3.0])
    y = np.array([2.0, 1.0, 5.0, 6.0, 6.0])
    assert cka(x[:, None], y[:, None]) == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_and_procrustes_invariances(debiased):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 12))
    Y = X @ rng.normal(size=(12, 6)) + 0.5 * rng.normal(size=(80, 6))
    base, pbase = cka(X, Y, debiased=debiased), procrustes_distance(X, Y)
    Qx, Qy = _rotation(12, rng), _rotation(6, rng)
    for Xt, Yt in [
        (X @ Qx, Y),  # orthogonal map of one space
        (X @ Qx, Y @ Qy),  # of both
        (7.5 * X, Y),  # isotropic scaling
        (0.01 * X @ Qx, 40.0 * Y @ Qy),
        (X + 3.0, Y - 2.0),  # translation
    ]:
        assert cka(Xt, Yt, debiased=debiased) == pytest.approx(base, abs=1e-6)
        assert procrustes_distance(Xt, Yt) == pytest.approx(pbase, abs=1e-6)


def test_debiased_cka_null_and_biased_bias():
    rng = np.random.default_rng(0)
    biased, unbiased = [], []
    for _ in range(20):
        X, Y = rng.normal(size=(64, 32)), rng.normal(size=(64, 32))
        biased.append(cka(X, Y))
        unbiased.append(cka(X, Y, debiased=True))
    assert abs(np.mean(unbiased)) <= 0.01
    assert np.mean(biased) > 0.05


def test_no_nan_for_small_n():
    rng = np.random.default_rng(1)
    for n in range(4, 12):
        for d in (1, 2, 5, 40):
            for _ in range(5):
                X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, 3))
                for debiased in (False, True):
                    value = cka(X, Y, debiased=debiased)
                    assert np.isfinite(value) and -1.0 <= value <= 1.0


def test_cka_bad_input():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 3))
    with pytest.raises(NestembError, match="debiased CKA estimator needs at least 4 rows"):
        cka(X[:3], X[:3], debiased=True)
    with pytest.raises(NestembError, match="Y has no variance: all 10 rows are the same"):
        cka(X, np.ones((10, 2)))
    with pytest.raises(NestembError, match=r"X contains NaN or inf values \(row 2\)"):
        bad = X.copy()
        bad[2, 1] = np.nan
        cka(bad, X)
    with pytest.raises(NestembError, match="same items as paired rows: got 10 and 9 rows"):
        cka(X, X[:9])
    with pytest.raises(NestembError, match="Y must be a non-empty 2-D"):
        cka(X, np.zeros((10, 0)))
    # pairwise differences all orthogonal: the debiased self-HSIC is exactly 0
    degenerate = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    with pytest.raises(NestembError, match="X: the debiased HSIC of X with itself is 0"):
        cka(degenerate, rng.normal(size=(4, 2)), debiased=True)
    assert np.isfinite(cka(degenerate, rng.normal(size=(4, 2))))


# ------------------------------------------------------------------ Procrustes
def test_procrustes_hand_values_and_padding():
    x = np.array([[1.0], [-1.0], [0.0], [0.0]])
    y = np.array([[0.0], [0.0], [1.0], [-1.0]])
    assert procrustes_distance(x, y) == pytest.approx(np.sqrt(2.0), abs=1e-12)  # orthogonal shapes
    assert procrustes_distance(x, -3 * x) == pytest.approx(0.0, abs=1e-7)  # a reflection
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(60, 3)), rng.normal(size=(60, 7))
    padded = np.hstack([X, np.zeros((60, 4))])
    assert procrustes_distance(X, Y) == pytest.approx(procrustes_distance(padded, Y), abs=1e-9)
    assert procrustes_distance(X, Y) == pytest.approx(procrustes_distance(Y, X), abs=1e-9)
    # the closed form: sqrt(2 - 2 * nuclear norm of the normalised cross-covariance)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    nuc = np.linalg.svd(Xc.T @ Yc, compute_uv=False).sum() / (np.linalg.norm(Xc) * np.linalg.norm(Yc))
    assert procrustes_distance(X, Y) == pytest.approx(np.sqrt(2 - 2 * nuc), abs=1e-9)


# ------------------------------------------------------------------ mutual k-NN
def test_mutual_knn_identical_and_independent():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 16))
    assert mutual_knn(X, X, k=10) == 1.0
    assert mutual_knn(X, 3.0 * X @ _rotation(16, rng), k=10) == 1.0  # cosine neighbours kept
    Y = rng.normal(size=(400, 16))
    t = mutual_knn_test(X, Y, k=10, permutations=200, seed=0)
    assert t.null_mean == pytest.approx(10 / 399, rel=0.15)  # chance: k / (n - 1)
    assert abs(t.score - t.null_mean) < 4 * t.null_std
    assert t.p_value > 0.01
    related = mutual_knn_test(X, X + 0.2 * rng.normal(size=X.shape), k=10, permutations=99)
    assert related.score > 0.5 and related.p_value == pytest.approx(0.01)


def test_mutual_knn_hand_value():
    # neighbours in X: 0<->1, 2<->3; in Y: 0<->2, 1<->3 (k=1): no row agrees
    X = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    Y = X[[0, 2, 1, 3]]
    assert mutual_knn(X, X, k=1) == 1.0
    assert mutual_knn(X, Y, k=1) == 0.0
    # k=2 by hand: X's lists {1,3} {0,3} {1,3} {1,2}; Y's (in Y rows) {2,3} {2,3} {0,3} {1,2};
    # shared 1 + 1 + 1 + 2 = 5 of 8
    assert mutual_knn(X, Y, k=2) == pytest.approx(5 / 8)


def test_mutual_knn_bad_input():
    X = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(NestembError, match="k must be a positive integer, got 0"):
        mutual_knn(X, X, k=0)
    with pytest.raises(NestembError, match=r"k must be smaller than the number of items compared \(20"):
        mutual_knn(X, X, k=20)
    with pytest.raises(NestembError, match="permutations must be a positive integer"):
        mutual_knn_test(X, X, k=3, permutations=0)
    with pytest.raises(NestembError, match="same items as paired rows"):
        mutual_knn(X, X[:10], k=3)


# ------------------------------------------------------------------ neuron matching
def test_neuron_matching_finds_a_permutation():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 8))
    perm = rng.permutation(8)
    Y = X[:, perm] * np.array([1, -1, 2, 1, -0.5, 1, 3, 1]) + 0.05 * rng.normal(size=X.shape)
    m = neuron_matching(X, Y, threshold=0.9)
    assert np.array_equal(perm[m.one_to_one], np.arange(8))
    assert np.array_equal(perm[m.semi], np.arange(8))
    assert m.fraction_one_to_one == 1.0 and m.fraction_semi == 1.0
    # signed: negated units no longer reach the threshold
    assert neuron_matching(X, Y, threshold=0.9, signed=True).fraction_semi == pytest.approx(6 / 8)


def test_neuron_matching_widths_and_semi():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 3))
    # Y: unit 0 copies X's unit 0 twice (semi-matching may reuse it), unit 2 is noise
    Y = np.column_stack([X[:, 0], X[:, 0] + 0.01 * rng.normal(size=500), rng.normal(size=500)])
    m = neuron_matching(X, Y, threshold=0.5)
    assert m.semi[0] in (0, 1) and m.fraction_semi == pytest.approx(1 / 3)
    assert m.fraction_one_to_one == pytest.approx(1 / 3)
    wide = neuron_matching(np.column_stack([X, rng.normal(size=500)]), X, threshold=0.5)
    assert wide.one_to_one.tolist()[:3] == [0, 1, 2] and wide.one_to_one[3] == -1
    assert wide.fraction_one_to_one == 1.0  # over min(d_x, d_y) = 3 pairs
    const = neuron_matching(np.column_stack([X, np.ones(500)]), X)
    assert np.all(const.correlation[3] == 0.0)  # a constant unit correlates with nothing


def test_neuron_matching_bad_threshold():
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(NestembError, match=r"threshold must be a correlation in \[0, 1\], got -0.2"):
        neuron_matching(X, X, threshold=-0.2)
    with pytest.raises(NestembError, match=r"threshold must be a correlation in \[-1, 1\]"):
        neuron_matching(X, X, threshold=2, signed=True)


# ------------------------------------------------------------------ prefixes
def test_compare_prefixes_matches_direct_calls_on_views():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 16)) * np.exp(-0.1 * np.arange(16))
    Y = X @ _rotation(16, rng) + 0.3 * rng.normal(size=X.shape)
    Y = Y[:, :12]
    pc = compare_prefixes(X, Y, (4, 8, 16), (6, 12), measure=MEASURES, k=5, threshold=0.3)
    for i, mx in enumerate((4, 8, 16)):
        for j, my in enumerate((6, 12)):
            vx, vy = prefix_view(X, mx), prefix_view(Y, my)
            assert pc["cka"][i, j] == pytest.approx(cka(vx, vy), abs=1e-9)
            assert pc["cka_debiased"][i, j] == pytest.approx(cka(vx, vy, debiased=True), abs=1e-9)
            assert pc["procrustes"][i, j] == pytest.approx(procrustes_distance(vx, vy), abs=1e-9)
            assert pc["mutual_knn"][i, j] == pytest.approx(mutual_knn(vx, vy, k=5), abs=1e-12)
            nm = neuron_matching(vx, vy, threshold=0.3)
            assert pc["neuron_one_to_one"][i, j] == nm.fraction_one_to_one
            assert pc["neuron_semi"][i, j] == nm.fraction_semi
    assert pc.common_dims == () and pc.diagonal("cka") == {}
    again = PrefixComparison.from_dict(pc.to_dict())
    assert again.dims_x == pc.dims_x and np.array_equal(again["procrustes"], pc["procrustes"])


def test_compare_per_prefix_sample_and_tests():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8))
    Y = X + 0.1 * rng.normal(size=X.shape)
    per = compare_per_prefix(X, Y, (2, 8), measure=("cka", "mutual_knn"), k=5)
    assert per["cka"][1] == pytest.approx(cka(X / np.linalg.norm(X, axis=1, keepdims=True),
                                              Y / np.linalg.norm(Y, axis=1, keepdims=True)))
    pc = compare_prefixes(X, Y, (4, 8), (8,), measure="mutual_knn", k=5, knn_sample=100,
                          permutations=50, seed=3)
    assert pc.knn_sample == 100 and set(pc.knn_tests) == {8}
    sample = np.sort(np.random.default_rng(3).choice(300, 100, replace=False))
    assert pc["mutual_knn"][1, 0] == pytest.approx(mutual_knn(X[sample], Y[sample], k=5))
    assert pc.knn_tests[8].score == pytest.approx(pc["mutual_knn"][1, 0])
    assert pc.knn_tests[8].p_value == pytest.approx(1 / 51)


def test_compare_prefixes_bad_input():
    X = np.random.default_rng(0).normal(size=(30, 8))
    with pytest.raises(NestembError, match="measure must be one of cka, .*, got 'svcca'"):
        compare_prefixes(X, X, measure="svcca")
    with pytest.raises(NestembError, match="dims_x: nesting must be strictly ascending"):
        compare_prefixes(X, X, (8, 4))
    with pytest.raises(NestembError, match="dims_y asks for prefix 16 but Y is only 8 wide"):
        compare_prefixes(X, X, (8,), (16,))
    with pytest.raises(NestembError, match="knn_sample must be an integer >= 2"):
        compare_prefixes(X, X, measure="mutual_knn", knn_sample=1)
    with pytest.raises(NestembError, match="k must be smaller than the number of items compared"):
        compare_prefixes(X, X, measure="mutual_knn", k=10, knn_sample=10)
    with pytest.raises(NestembError, match="measure 'cka' was not computed"):
        compare_prefixes(X, X, measure="procrustes")["cka"]
    # a 1-d view of rows whose first coordinate is positive is constant: an error, not a NaN
    with pytest.raises(NestembError, match="the 1-prefix view of X has no variance"):
        compare_prefixes(np.abs(X), X, (1,), (8,))
