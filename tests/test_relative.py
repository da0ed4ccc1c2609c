"""nestemb.relative: each projection against hand-computed values and under the transformations it
claims to ignore, the torch layer against the numpy function, anchor selection, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nestemb.errors import NestembError
from nestemb.relative import KINDS, RelativeLayer, relative_projection, select_anchors


def _rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    return np.linalg.qr(rng.normal(size=(d, d)))[0]


def _signed_permutation(d: int, rng: np.random.Generator) -> np.ndarray:
    return np.eye(d)[rng.permutation(d)] * rng.choice([-1.0, 1.0], size=d)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 6)) + 1.0, rng.normal(size=(7, 6)) + 1.0, rng


def _same(kind, center, X, A, T):
    """relative_projection is unchanged when T maps items and anchors alike."""
    base = relative_projection(X, A, kind=kind, center=center)
    moved = relative_projection(T(X), T(A), kind=kind, center=center)
    return np.abs(base - moved).max() <= 1e-6


# The transformations each kind claims (the module docstring's table), and one it does not.
CLAIMS = {
    ("cosine", False): ["rotation", "scale"],
    ("cosine", True): ["rotation", "scale", "translation"],
    ("euclidean", False): ["rotation", "scale", "translation"],
    ("l1", False): ["signed_permutation", "scale", "translation"],
    ("linf", False): ["signed_permutation", "scale", "translation"],
    ("product", False): ["signed_permutation", "scale"],
    ("product", True): ["signed_permutation", "scale", "translation"],
}
NOT_CLAIMED = {
    ("cosine", False): "translation",
    ("l1", False): "rotation",
    ("linf", False): "rotation",
    ("product", False): "translation",
    ("product", True): "rotation",
}


@pytest.mark.parametrize("kind,center", list(CLAIMS))
def test_projection_invariances(data, kind, center):
    X, A, rng = data
    Q, P = _rotation(6, rng), _signed_permutation(6, rng)
    t = rng.normal(size=6) * 5
    maps = {
        "rotation": lambda Z: Z @ Q,
        "signed_permutation": lambda Z: Z @ P,
        "scale": lambda Z: 3.7 * Z,
        "translation": lambda Z: Z + t,
    }
    for name in CLAIMS[(kind, center)]:
        assert _same(kind, center, X, A, maps[name]), f"{kind} center={center} not {name}-invariant"
    # combined: all claimed at once
    def all_of(Z):
        for name in CLAIMS[(kind, center)]:
            Z = maps[name](Z)
        return Z

    assert _same(kind, center, X, A, all_of)
    if (kind, center) in NOT_CLAIMED:  # the claims are not vacuous
        assert not _same(kind, center, X, A, maps[NOT_CLAIMED[(kind, center)]])


def test_hand_values():
    A = np.array([[0.0, 0.0], [3.0, 4.0]])
    x = np.array([[3.0, 0.0]])
    # distances from x: l2 (3, 4), l1 (3, 4), linf (3, 4); anchor-pair scales 5, 7, 4
    assert relative_projection(x, A, "euclidean").tolist() == [[0.6, 0.8]]
    np.testing.assert_allclose(relative_projection(x, A, "l1"), [[3 / 7, 4 / 7]])
    np.testing.assert_allclose(relative_projection(x, A, "linf"), [[0.75, 1.0]])
    B = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(relative_projection(np.array([[2.0, 0.0]]), B), [[1.0, 2**-0.5]])
    # centered on the anchors' mean (1, 0.5): x - m = (1, -0.5), anchors (0, -0.5), (0, 0.5)
    np.testing.assert_allclose(
        relative_projection(np.array([[2.0, 0.0]]), B, center=True),
        [[0.5 / np.sqrt(1.25), -0.5 / np.sqrt(1.25)]],
    )


def test_product_is_the_concatenation(data):
    X, A, _ = data
    parts = [relative_projection(X, A, k) for k in ("cosine", "euclidean", "l1", "linf")]
    out = relative_projection(X, A, "product")
    assert out.shape == (40, 28)
    np.testing.assert_allclose(out, np.concatenate(parts, axis=1))


def test_chunked_rows_match(data, monkeypatch):
    import nestemb.relative.projection as proj

    X, A, _ = data
    whole = relative_projection(X, A, "l1")
    monkeypatch.setattr(proj, "_CHUNK", 50)  # a few rows per block
    np.testing.assert_allclose(relative_projection(X, A, "l1"), whole)


def test_projection_bad_input(data):
    X, A, _ = data
    with pytest.raises(NestembError, match="anchors has 1 row: a relative projection needs at least 2"):
        relative_projection(X, A[:1])
    dup = np.vstack([A, A[2]])
    with pytest.raises(NestembError, match="anchors rows 2 and 7 are the same vector"):
        relative_projection(X, dup)
    nan = A.copy()
    nan[3, 0] = np.nan
    with pytest.raises(NestembError, match=r"anchors contains NaN or inf values \(row 3\)"):
        relative_projection(X, nan)
    bad = X.copy()
    bad[5, 5] = np.inf
    with pytest.raises(NestembError, match=r"X contains NaN or inf values \(row 5\)"):
        relative_projection(bad, A)
    with pytest.raises(NestembError, match="X has width 6 but anchors have width 4"):
        relative_projection(X, A[:, :4])
    with pytest.raises(NestembError, match="kind must be one of cosine, euclidean"):
        relative_projection(X, A, kind="manhattan")
    with pytest.raises(NestembError, match="anchors row 0 is zero: its cosine"):
        relative_projection(X, np.vstack([np.zeros(6), A]))
    sym = np.array([[1.0, 0, 0, 0, 0, 0], [2.0, 0, 0, 0, 0, 0], [3.0, 0, 0, 0, 0, 0]])
    with pytest.raises(NestembError, match=r"anchors row 1 is the anchors' mean \(center=True\)"):
        relative_projection(X, sym, center=True)
    assert np.isfinite(relative_projection(X, sym, kind="euclidean", center=True)).all()


# ------------------------------------------------------------------ torch layer
@pytest.mark.parametrize("kind", KINDS)
def test_layer_matches_numpy(data, kind):
    X, A, _ = data
    layer = RelativeLayer(kind, anchors=A, center=True)
    out = layer(torch.as_tensor(X, dtype=torch.float64)).detach().numpy()
    np.testing.assert_allclose(out, relative_projection(X, A, kind, center=True), atol=1e-5)
    assert layer.out_features == out.shape[1]
    # anchors given per call (the anchor items encoded by the current encoder)
    per_call = RelativeLayer(kind, center=True)(torch.as_tensor(X), torch.as_tensor(A))
    np.testing.assert_allclose(per_call.numpy(), relative_projection(X, A, kind, center=True), atol=1e-9)


@pytest.mark.parametrize("kind", ["euclidean", "l1", "linf", "product"])
def test_layer_gradient_finite_at_an_anchor(data, kind):
    _, A, _ = data
    layer = RelativeLayer(kind, anchors=A)
    x = torch.tensor(A[:3], dtype=torch.float32, requires_grad=True)  # zero distances
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_layer_state_and_errors(data):
    X, A, _ = data
    layer = RelativeLayer("euclidean", anchors=A)
    assert "anchors" in layer.state_dict()
    clone = RelativeLayer("euclidean", anchors=A + 1.0)
    clone.load_state_dict(layer.state_dict())
    assert torch.equal(clone.anchors, layer.anchors)
    with pytest.raises(NestembError, match="x has width 3 but anchors have width 6"):
        layer(torch.zeros(2, 3))
    with pytest.raises(NestembError, match="anchors: give them to RelativeLayer"):
        RelativeLayer("l1")(torch.zeros(2, 3))
    with pytest.raises(NestembError, match=r"anchors must be \(n_anchors >= 2, dim\)"):
        RelativeLayer("l1")(torch.zeros(2, 3), torch.zeros(1, 3))
    with pytest.raises(NestembError, match="anchors rows 0 and 1 are the same vector"):
        RelativeLayer("cosine", anchors=np.ones((2, 3)))
    with pytest.raises(NestembError, match="kind must be one of"):
        RelativeLayer("dot")


# ------------------------------------------------------------------ anchors
def _clusters(rng, per=30):
    """Four tight clusters around the directions +-e0, +-e1."""
    centers = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    X = np.repeat(centers, per, axis=0) + 0.02 * rng.normal(size=(4 * per, 3))
    return X, np.repeat(np.arange(4), per)


@pytest.mark.parametrize("method", ["uniform", "fps", "kmeans"])
def test_select_anchors_distinct_and_seeded(method):
    rng = np.random.default_rng(0)
    X, _ = _clusters(rng)
    X = np.vstack([X, X[:10]])  # exact duplicates are never both anchors
    idx = select_anchors(X, 12, method, seed=1)
    assert len(idx) == 12 and len(np.unique(X[idx], axis=0)) == 12
    assert np.array_equal(idx, select_anchors(X, 12, method, seed=1))
    relative_projection(X, X[idx])  # valid anchors


@pytest.mark.parametrize("method", ["fps", "kmeans"])
def test_fps_and_kmeans_cover_the_clusters(method):
    rng = np.random.default_rng(0)
    X, cluster = _clusters(rng)
    idx = select_anchors(X, 4, method, seed=0)
    assert sorted(cluster[idx].tolist()) == [0, 1, 2, 3]


def test_kmeans_snaps_to_the_item_nearest_a_centroid():
    rng = np.random.default_rng(0)
    X, cluster = _clusters(rng, per=50)
    idx = select_anchors(X, 4, "kmeans")
    V = X / np.linalg.norm(X, axis=1, keepdims=True)
    for i in idx:
        members = V[cluster == cluster[i]]
        centroid = members.mean(0) / np.linalg.norm(members.mean(0))
        assert int(np.argmax(members @ centroid)) == int(np.flatnonzero(cluster == cluster[i]).tolist().index(i))


def test_select_anchors_per_class():
    rng = np.random.default_rng(0)
    X, labels = _clusters(rng)
    for method in ("uniform", "fps", "kmeans"):
        idx = select_anchors(X, 10, method, labels=labels)
        assert np.bincount(labels[idx]).tolist() == [3, 3, 2, 2]


def test_select_anchors_bad_input():
    rng = np.random.default_rng(0)
    X, labels = _clusters(rng, per=5)
    with pytest.raises(NestembError, match="n=25 anchors asked for but X has only 20 distinct rows"):
        select_anchors(X, 25)
    with pytest.raises(NestembError, match="n=6 anchors asked for but class 0 has only 5 distinct rows"):
        select_anchors(X, 24, labels=labels)
    with pytest.raises(NestembError, match="n=3 anchors cannot cover the 4 classes"):
        select_anchors(X, 3, labels=labels)
    with pytest.raises(NestembError, match="labels must have one entry per row of X"):
        select_anchors(X, 4, labels=labels[:-1])
    with pytest.raises(NestembError, match="method must be one of uniform, fps, kmeans"):
        select_anchors(X, 4, "random")
    with pytest.raises(NestembError, match="n must be a positive integer, got 0"):
        select_anchors(X, 0)
    bad = X.copy()
    bad[7, 0] = np.nan
    with pytest.raises(NestembError, match=r"X contains NaN or inf values \(row 7\)"):
        select_anchors(bad, 4)
    with pytest.raises(NestembError, match="only 1 distinct rows"):
        select_anchors(np.ones((10, 3)), 2)
