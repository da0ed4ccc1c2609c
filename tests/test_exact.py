"""The one exact search against an independent argsort reference, and knn_intersection by hand."""

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.exact import exact_search, knn_intersection, topk


def _reference(X, Q, k, m, exclude=None):
    xv = X[:, :m] / np.linalg.norm(X[:, :m], axis=1, keepdims=True)
    qv = Q[:, :m] / np.linalg.norm(Q[:, :m], axis=1, keepdims=True)
    s = qv @ xv.T
    if exclude is not None:
        s[:, exclude] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("m", [2, 8, 16])
def test_exact_search_matches_argsort_across_blocks(m):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(301, 16)).astype(np.float32)
    Q = rng.normal(size=(40, 16)).astype(np.float32)
    scores, rows = exact_search(X, Q, 7, dim=m, block=50)  # 7 blocks, the last one short
    np.testing.assert_array_equal(rows, _reference(X, Q, 7, m))
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_exact_search_excludes_rows_and_caps_k():
    rng = np.random.default_rng(1)
    X, Q = rng.normal(size=(30, 4)), rng.normal(size=(3, 4))
    dead = np.zeros(30, dtype=bool)
    dead[_reference(X, Q, 1, 4)[:, 0]] = True  # every query's best row
    rows = exact_search(X, Q, 5, exclude=dead, block=8)[1]
    np.testing.assert_array_equal(rows, _reference(X, Q, 5, 4, exclude=dead))
    assert exact_search(X, Q, 100)[1].shape == (3, 30)


def test_exact_search_rejects_bad_input():
    X = np.ones((4, 3))
    with pytest.raises(NestembError, match="queries have dimension 2, vectors 3"):
        exact_search(X, np.ones((1, 2)), 1)
    with pytest.raises(NestembError, match="k must be a positive integer"):
        exact_search(X, np.ones((1, 3)), 0)


def test_topk_orders_and_knn_intersection_counts():
    vals, pos = topk(np.array([[0.3, 0.9, 0.1, 0.5]]), 3)
    np.testing.assert_array_equal(pos, [[1, 3, 0]])
    # row 0: 2 of 3 found; row 1: 0 of 3 -> 2 / 6
    found = np.array([[1, 2, 9], [7, 8, 9]])
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert knn_intersection(found, truth) == pytest.approx(2 / 6)
