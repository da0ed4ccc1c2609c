"""k-means (nestemb.cluster) against scikit-learn's, an independent implementation, and on
hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from nestemb.cluster import kmeans, nearest_centroid
from nestemb.errors import NestembError


def _blobs(seed: int, k: int = 6, per: int = 120, d: int = 12, spread: float = 0.6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(k, d))
    x = np.concatenate([c + spread * rng.normal(size=(per, d)) for c in centres])
    return x, np.repeat(np.arange(k), per)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_separated_blobs_recovered_like_sklearn(seed):
    x, truth = _blobs(seed)
    ours = kmeans(x, 6, seed, inits=4)
    ref = KMeans(6, n_init=4, random_state=seed).fit(x)
    assert adjusted_rand_score(truth, ours.labels) == pytest.approx(1.0)
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-6)


def test_overlapping_data_inertia_close_to_sklearn():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1500, 16)).astype(np.float32)  # no cluster structure: many optima
    ours = kmeans(x, 20, 0, inits=4, iters=100)
    ref = KMeans(20, n_init=4, random_state=0, max_iter=100).fit(x)
    assert ours.inertia <= ref.inertia_ * 1.02
    assert ours.centroids.dtype == np.float32


def test_result_is_consistent():
    x, _ = _blobs(3, k=4)
    r = kmeans(x, 4, 7)
    # labels are the nearest centroids, centroids the means of their rows, inertia their cost
    d2 = ((x[:, None, :] - r.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(r.labels, d2.argmin(1))
    for j in range(4):
        np.testing.assert_allclose(r.centroids[j], x[r.labels == j].mean(0), atol=1e-9)
    assert r.inertia == pytest.approx(d2.min(1).sum())
    np.testing.assert_array_equal(nearest_centroid(x, r.centroids), r.labels)


def test_same_seed_same_result_and_generator_accepted():
    x, _ = _blobs(4)
    a, b = kmeans(x, 6, 11), kmeans(x, 6, np.random.default_rng(11))
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_every_cluster_keeps_rows_with_a_bad_start():
    # all centroids started on one point: Lloyd alone would leave k - 1 clusters empty
    x, _ = _blobs(6, k=3)
    r = kmeans(x, 3, init=np.repeat(x[:1], 3, axis=0))
    assert np.bincount(r.labels, minlength=3).min() > 0


def test_spherical_centroids_are_unit_and_assign_by_cosine():
    x, _ = _blobs(8)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    r = kmeans(u, 6, 0, spherical=True)
    np.testing.assert_allclose(np.linalg.norm(r.centroids, axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(r.labels, (u @ r.centroids.T).argmax(1))


@pytest.mark.parametrize("k", [0, 5, True, 2.0])
def test_bad_k(k):
    x = np.eye(4)
    with pytest.raises(NestembError) as e:
        kmeans(x, k)
    assert e.value.param == "k"


def test_bad_init_shape():
    with pytest.raises(NestembError) as e:
        kmeans(np.eye(4), 2, init=np.zeros((3, 4)))
    assert e.value.param == "init"
