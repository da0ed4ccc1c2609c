"""Latent-space translation options of the adapters (issue 11): scaling, bias-free least
squares, underdetermined fits from few anchors, and the zero-padding equivalence."""

import numpy as np
import pytest

from nestemb.maps import fit_adapter, load_adapter, orthogonal_procrustes
from nestemb.errors import NestembError
from nestemb.nesting import prefix_view


def _unit(x):
    return prefix_view(np.asarray(x, dtype=np.float64), x.shape[1])


def test_standard_scaling_matches_hand_computation():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(50, 3)), rng.normal(size=(50, 2))
    a = fit_adapter(X, Y, kind="affine", scaling="standard", bias=False, ridge=0.0)
    x, y = _unit(X), _unit(Y)
    xs = (x - x.mean(0)) / x.std(0)
    ys = (y - y.mean(0)) / y.std(0)
    W = np.linalg.lstsq(xs, ys, rcond=None)[0]
    want = (xs @ W) * y.std(0) + y.mean(0)
    np.testing.assert_allclose(a.transform(X), want, atol=1e-5)


def test_bias_free_linear_least_squares():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 4))
    x = _unit(X)
    A = rng.normal(size=(4, 3))
    a = fit_adapter(X, x @ A + 5.0, kind="affine", bias=False, ridge=0.0)
    assert "b" not in a.weights_
    W = np.linalg.lstsq(x, _unit(x @ A + 5.0), rcond=None)[0]
    np.testing.assert_allclose(a.weights_["W"], W, atol=1e-5)
    with pytest.raises(NestembError, match="needs at least 4 paired rows, got 3"):
        fit_adapter(X[:3], X[:3], kind="affine", bias=False)


def test_center_orthogonal_recovers_shifted_rotation():
    rng = np.random.default_rng(2)
    x = _unit(rng.normal(size=(100, 6)))
    Q = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    # centring moves the unit rows off the sphere, so compare the mapped rows with the
    # targets (measured) rather than the map with Q
    a = fit_adapter(x, x @ Q, kind="orthogonal", scaling="center")
    cos = np.einsum("ij,ij->i", _unit(a.transform(x)), _unit(x @ Q))
    assert cos.mean() > 0.999


def test_underdetermined_translation_from_few_anchors():
    # 10 classes in a 64-dim space: low rank structure, as encoders give; 32 anchors < 64 dims
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(10, 64))
    labels = np.arange(600) % 10  # every class among the 32 anchors
    X = centers[labels] + 0.1 * rng.normal(size=(600, 64))
    Q = np.linalg.qr(rng.normal(size=(64, 64)))[0]
    Y = 2.0 * X @ Q + 0.5
    with pytest.raises(NestembError, match="needs at least 65 paired rows, got 32"):
        fit_adapter(X[:32], Y[:32], kind="affine")
    a = fit_adapter(X[:32], Y[:32], kind="affine", scaling="standard", underdetermined=True)
    cos = np.einsum("ij,ij->i", _unit(a.transform(X[32:])), _unit(Y[32:]))
    assert cos.mean() > 0.95
    b = fit_adapter(X[:32], Y[:32], kind="orthogonal", underdetermined=True)
    assert b.weights_["W"].shape == (64, 64)


def test_zero_padding_equals_thin_procrustes():
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(30, 3)), rng.normal(size=(30, 5))
    thin = orthogonal_procrustes(X, Y)
    square = orthogonal_procrustes(np.hstack([X, np.zeros((30, 2))]), Y)
    np.testing.assert_allclose(X @ thin, X @ square[:3], atol=1e-10)
    thin = orthogonal_procrustes(Y, X)
    square = orthogonal_procrustes(Y, np.hstack([X, np.zeros((30, 2))]))
    np.testing.assert_allclose(Y @ thin, (Y @ square)[:, :3], atol=1e-10)


@pytest.mark.parametrize("kw", [
    {"kind": "orthogonal", "scaling": "standard"},
    {"kind": "affine", "scaling": "center", "bias": False, "underdetermined": True},
])
def test_translation_save_load(tmp_path, kw):
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(20, 6)), rng.normal(size=(20, 6))
    a = fit_adapter(X, Y, **kw)
    b = load_adapter(a.save(tmp_path / "t"))
    np.testing.assert_allclose(b.transform(X), a.transform(X), atol=1e-6)
    assert (b.scaling, b.bias, b.underdetermined) == (
        kw.get("scaling"), kw.get("bias", True), kw.get("underdetermined", False))


@pytest.mark.parametrize("kw, match", [
    ({"scaling": "minmax"}, "scaling must be None or one of center, standard, got 'minmax'"),
    ({"kind": "mlp", "scaling": "center"}, "scaling applies to kinds 'orthogonal' and 'affine'"),
    ({"bias": False}, "bias=False applies to kind 'affine' only, not 'orthogonal'"),
    ({"kind": "affine", "bias": 0}, "bias must be True or False, got 0"),
    ({"underdetermined": "yes"}, "underdetermined must be True or False"),
    ({"kind": "mlp", "underdetermined": True}, "underdetermined applies to kinds"),
    ({"kind": "affine", "underdetermined": True, "ridge": 0.0}, "ridge must be > 0 for an underdetermined fit"),
])
def test_translation_bad_options(kw, match):
    X = np.random.default_rng(6).normal(size=(20, 4))
    with pytest.raises(NestembError, match=match):
        fit_adapter(X, X, **kw)


def test_underdetermined_still_needs_two_rows():
    X = np.random.default_rng(7).normal(size=(1, 4))
    with pytest.raises(NestembError, match="needs at least 2 paired rows, got 1"):
        fit_adapter(X, X, kind="affine", underdetermined=True)
