"""Procrustes and post-hoc adapters: recovery of known maps, save/load, identity checks and
every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nestemb.maps import (
    Adapter,
    ModelRef,
    adapt_embeddings,
    fit_adapter,
    load_adapter,
    orthogonal_procrustes,
)
from nestemb.errors import NestembError
from nestemb.nesting import Manifest, check_compatible, prefix_view

OLD = Manifest(model_id="old-net", model_version="aaaa", nesting=(4, 8), dim=8)
NEW = Manifest(model_id="new-net", model_version="bbbb", nesting=(4, 8, 12), dim=12)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def pair():
    """Old (8-d) and new (12-d) embeddings of the same 300 items; new = old through an
    isometry plus noise."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8))
    Q = np.linalg.qr(rng.normal(size=(12, 8)))[0].T  # (8, 12), orthonormal rows
    Y = unit(X) @ Q + 0.01 * rng.normal(size=(300, 12))
    return X, Y, Q


# ------------------------------------------------------------------ Procrustes


def test_procrustes_recovers_rotation():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(100, 6))
    R = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    W = orthogonal_procrustes(X, X @ R)
    np.testing.assert_allclose(W, R, atol=1e-10)
    np.testing.assert_allclose(W.T @ W, np.eye(6), atol=1e-10)


def test_procrustes_rectangular_both_ways():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(100, 3))
    Q = np.linalg.qr(rng.normal(size=(5, 3)))[0].T  # (3, 5): orthonormal rows
    np.testing.assert_allclose(orthogonal_procrustes(X, X @ Q), Q, atol=1e-10)
    # narrowing: the SVD solution is the least-squares one for isotropic (whitened) rows
    Z = np.linalg.qr(rng.normal(size=(100, 5)))[0] * 10
    P = Q.T  # (5, 3): orthonormal columns, a projection onto 3 dims
    W = orthogonal_procrustes(Z, Z @ P)
    np.testing.assert_allclose(W, P, atol=1e-10)
    np.testing.assert_allclose(W.T @ W, np.eye(3), atol=1e-10)


def test_procrustes_errors():
    with pytest.raises(NestembError, match="paired rows: got 3 and 2 rows"):
        orthogonal_procrustes(np.ones((3, 2)), np.ones((2, 2)))
    with pytest.raises(NestembError, match="target contains NaN or inf values \\(row 1\\)"):
        orthogonal_procrustes(np.ones((2, 2)), [[1, 2], [np.inf, 0]])
    with pytest.raises(NestembError, match="source must be a non-empty 2-D"):
        orthogonal_procrustes(np.ones(3), np.ones((3, 1)))


# ------------------------------------------------------------------ fitting


def test_orthogonal_adapter_recovers_isometry(pair):
    X, Y, Q = pair
    a = fit_adapter(X, Y, "orthogonal", source_ref=OLD, target_ref=NEW)
    np.testing.assert_allclose(a.weights_["W"], Q, atol=0.01)
    out = a.transform(X[:5])
    assert out.shape == (5, 12) and out.dtype == np.float32
    cos = np.einsum("ij,ij->i", prefix_view(out, 12), prefix_view(Y[:5], 12))
    assert cos.min() > 0.99
    assert a.nesting_ == (4, 8, 12)  # from the target manifest
    assert set(a.fit_info_["fit_cosine"]) == {4, 8, 12} and a.fit_info_["rows"] == 300


def test_affine_adapter_recovers_affine_map():
    # a true affine map between unit rows: scale the source by c and add a bias s on a new
    # coordinate, so that the target rows stay unit (c^2 + s^2 = 1)
    rng = np.random.default_rng(3)
    X = unit(rng.normal(size=(200, 5)))
    c, s = 0.8, 0.6
    A = np.zeros((5, 7))
    A[:, :5] = c * np.eye(5)
    b = np.zeros(7)
    b[6] = s
    a = fit_adapter(X, X @ A + b, "affine", ridge=0.0)
    np.testing.assert_allclose(a.weights_["W"], A, atol=1e-5)
    np.testing.assert_allclose(a.weights_["b"], b, atol=1e-5)
    X2 = unit(rng.normal(size=(10, 5)))
    np.testing.assert_allclose(a.transform(3 * X2), X2 @ A + b, atol=1e-5)  # scale-free input


def test_ridge_shrinks():
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(50, 6)), rng.normal(size=(50, 6))
    w0 = np.linalg.norm(fit_adapter(X, Y, "affine", ridge=0.0).weights_["W"])
    w1 = np.linalg.norm(fit_adapter(X, Y, "affine", ridge=1.0).weights_["W"])
    assert w1 < w0


def test_slerp_between_rotation_and_raw():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(100, 6))
    R = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    rot = fit_adapter(X, X @ R)
    np.testing.assert_allclose(fit_adapter(X, X @ R, slerp=0.0).transform(X), rot.transform(X),
                               atol=1e-5)
    np.testing.assert_allclose(fit_adapter(X, X @ R, slerp=1.0).transform(X), unit(X), atol=1e-5)
    half = fit_adapter(X, X @ R, slerp=0.5).transform(X)
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1, atol=1e-5)  # on the sphere
    to_rot = np.einsum("ij,ij->i", half, rot.transform(X))
    to_raw = np.einsum("ij,ij->i", half, unit(X))
    np.testing.assert_allclose(to_rot, to_raw, atol=1e-5)  # half-way


def test_mlp_beats_affine_on_nonlinear_map():
    rng = np.random.default_rng(6)
    X = unit(rng.normal(size=(1500, 6)))
    M = rng.normal(size=(6, 8))

    def f(x):
        return np.concatenate([(x @ M) ** 2, x], axis=1)  # (n, 14): quadratic part + linear

    tr, te = X[:1200], X[1200:]
    kw = dict(nesting=(8, 14))
    aff = fit_adapter(tr, f(tr), "affine", **kw)
    mlp = fit_adapter(tr, f(tr), "mlp", hidden=64, epochs=20, lr=3e-3, batch_size=128,
                      threads=1, **kw)

    def held_out(a):
        return float(np.einsum("ij,ij->i", prefix_view(a.transform(te), 8),
                               prefix_view(f(te), 8)).mean())

    chance = float(np.einsum("ij,ij->i", prefix_view(f(te[::-1]), 8),
                             prefix_view(f(te), 8)).mean())
    assert held_out(mlp) > 0.95 > held_out(aff) + 0.2  # an even function: no affine map fits
    assert held_out(mlp) > chance + 0.3
    assert set(mlp.fit_info_["fit_cosine"]) == {8, 14}
    again = fit_adapter(tr, f(tr), "mlp", hidden=64, epochs=2, threads=1, **kw)
    same = fit_adapter(tr, f(tr), "mlp", hidden=64, epochs=2, threads=1, **kw)
    np.testing.assert_array_equal(again.transform(te), same.transform(te))  # seeded


# ------------------------------------------------------------------ save / load


@pytest.mark.parametrize("kind, extra", [("orthogonal", {}), ("orthogonal", {"slerp": 0.3}),
                                         ("affine", {}), ("mlp", {"epochs": 1, "hidden": 8})])
def test_save_load_round_trip(tmp_path, kind, extra):
    rng = np.random.default_rng(7)
    X, Y = rng.normal(size=(40, 8)), rng.normal(size=(40, 8 if "slerp" in extra else 12))
    tgt = NEW if Y.shape[1] == 12 else Manifest(model_id="new-net", model_version="bbbb",
                                                nesting=(8,), dim=8)
    a = fit_adapter(X, Y, kind, source_ref=OLD, target_ref=tgt, **extra)
    a.save(tmp_path / "ad")
    man = json.loads((tmp_path / "ad" / "manifest.json").read_text())
    assert man["kind"] == "adapter" and man["extra"]["adapter"]["kind"] == kind
    assert man["extra"]["adapter"]["source"]["model_version"] == "aaaa"
    assert man["extra"]["adapter"]["target"]["model_id"] == "new-net"
    assert man["extra"]["adapter"]["direction"] == "source->target"
    b = load_adapter(tmp_path / "ad")
    np.testing.assert_array_equal(b.transform(X, OLD), a.transform(X, OLD))
    assert (b.source_ref_, b.target_ref_, b.nesting_, b.version_) == (
        a.source_ref_, a.target_ref_, a.nesting_, a.version_)
    with pytest.raises(NestembError, match="already exists"):
        a.save(tmp_path / "ad")
    a.save(tmp_path / "ad", overwrite=True)


def test_load_refuses_corrupt_and_foreign(tmp_path, pair):
    X, Y, _ = pair
    fit_adapter(X, Y, source_ref=OLD, target_ref=NEW).save(tmp_path / "ad")
    w = tmp_path / "ad" / "weights.npz"
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(NestembError, match="checksum mismatch"):
        load_adapter(tmp_path / "ad")
    from nestemb.folders import save_embeddings

    save_embeddings(tmp_path / "emb", X, OLD)
    with pytest.raises(NestembError, match="holds embeddings, not an adapter"):
        load_adapter(tmp_path / "emb")
    with pytest.raises(NestembError, match="adapter directory not found"):
        load_adapter(tmp_path / "nothing")


# ------------------------------------------------------------------ identity


def test_transform_checks_identity(pair):
    X, Y, _ = pair
    a = fit_adapter(X, Y, source_ref=OLD, target_ref=NEW)
    a.transform(X, OLD)  # the source model: fine
    with pytest.raises(NestembError, match="wrong direction: these vectors come from the "
                                           "adapter's target model 'new-net'"):
        a.transform(Y, NEW)
    other = Manifest(model_id="third", model_version="cccc", nesting=(8,), dim=8)
    with pytest.raises(NestembError, match="wrong model: these vectors come from 'third'"):
        a.transform(X, other)
    retrained = Manifest(model_id="old-net", model_version="dddd", nesting=(4, 8), dim=8)
    with pytest.raises(NestembError, match="wrong model: .*'old-net' \\(version 'dddd'"):
        a.transform(X, retrained)  # same name, other weights: a manifest mismatch
    with pytest.raises(NestembError, match="X has 12 dims, but the adapter maps 8-dim"):
        a.transform(Y)
    with pytest.raises(NestembError, match="manifest must be a Manifest"):
        a.transform(X, {"model_id": "old-net"})


def test_unknown_identity_needs_trust(pair):
    X, Y, _ = pair
    unknown_old = Manifest(model_id="old-net", nesting=(8,), dim=8)  # version "unknown"
    with pytest.raises(NestembError, match="the source model .* unknown weights version.*set trust_unknown"):
        fit_adapter(X, Y, source_ref=unknown_old, target_ref=NEW)
    a = fit_adapter(X, Y, source_ref=unknown_old, target_ref=NEW, trust_unknown=True)
    with pytest.raises(NestembError, match="unknown weights version: their identity cannot"):
        a.transform(X, unknown_old)
    a.transform(X, unknown_old, trust_unknown=True)
    # trusted, it matches on model_id alone: another id is still refused
    with pytest.raises(NestembError, match="wrong model"):
        a.transform(X, Manifest(model_id="x", nesting=(8,), dim=8), trust_unknown=True)
    b = fit_adapter(X, Y, source_ref=OLD, target_ref=NEW)
    with pytest.raises(NestembError, match="unknown weights version"):
        b.transform(X, unknown_old)


def test_no_source_ref_cannot_check(pair):
    X, Y, _ = pair
    a = fit_adapter(X, Y)
    a.transform(X)  # bare arrays: width check only
    with pytest.raises(NestembError, match="fitted without source_ref"):
        a.transform(X, OLD)
    with pytest.raises(NestembError, match="no target model identity"):
        adapt_embeddings(X, OLD, fit_adapter(X, Y, source_ref=OLD))


def test_adapt_embeddings_speaks_the_target(pair):
    X, Y, _ = pair
    a = fit_adapter(X, Y, source_ref=OLD, target_ref=NEW)
    out, man = adapt_embeddings(X, OLD, a)
    assert out.shape == (300, 12)
    check_compatible(man, NEW)  # what an index of the new model checks
    assert man.extra["adapted"]["source"]["model_id"] == "old-net"
    assert man.extra["adapted"]["adapter_version"] == a.version_
    with pytest.raises(NestembError, match="wrong direction"):
        adapt_embeddings(Y, NEW, a)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "make, kw, match",
    [
        (lambda X, Y: (X, Y[:-1]), {}, "paired rows of the same items: got 300 and 299 rows"),
        (lambda X, Y: (np.where(np.arange(300)[:, None] == 7, np.nan, X), Y), {},
         "source contains NaN or inf values \\(row 7\\)"),
        (lambda X, Y: (X, np.where(np.arange(300)[:, None] == 2, np.inf, Y)), {},
         "target contains NaN or inf values \\(row 2\\)"),
        (lambda X, Y: (X[:7], Y[:7]), {}, "orthogonal adapter from 8 to 12 dims needs at least "
                                          "8 paired rows, got 7"),
        (lambda X, Y: (X[:8], Y[:8]), {"kind": "affine"}, "needs at least 9 paired rows, got 8"),
        (lambda X, Y: (X[:8], Y[:8]), {"kind": "mlp"}, "needs at least 9 paired rows, got 8"),
        (lambda X, Y: (X, Y), {"kind": "linear"}, "kind must be one of orthogonal, affine, mlp"),
        (lambda X, Y: (X, Y), {"ridge": 0.1}, "ridge applies to kinds 'affine' and 'mlp'"),
        (lambda X, Y: (X, Y), {"kind": "affine", "ridge": -1.0}, "ridge must be a finite number"),
        (lambda X, Y: (X, Y), {"slerp": 0.5}, "slerp needs equal source and target widths"),
        (lambda X, Y: (X, X), {"slerp": 1.5}, "slerp must be a number in \\[0, 1\\]"),
        (lambda X, Y: (X, Y), {"kind": "affine", "slerp": 0.5}, "slerp applies to kind"),
        (lambda X, Y: (X, Y), {"kind": "affine", "hidden": 8}, "hidden applies to kind 'mlp'"),
        (lambda X, Y: (X, Y), {"kind": "mlp", "epochs": 0}, "epochs must be a positive integer"),
        (lambda X, Y: (X, Y), {"kind": "mlp", "lr": -1.0}, "lr must be a positive number"),
        (lambda X, Y: (X, Y), {"nesting": (4, 8)}, "last nesting dimension must be the full"),
        (lambda X, Y: (X, Y), {"source_ref": NEW}, "source_ref 'new-net' .* does not match the "
                                                   "data's width 8"),
        (lambda X, Y: (X, X), {"source_ref": OLD, "target_ref": ModelRef("old-net", "aaaa", 8)},
         "source and target come from the same model"),
        (lambda X, Y: (X, Y), {"source_ref": "old-net"}, "source_ref must be a ModelRef"),
    ],
)
def test_fit_bad_input(pair, make, kw, match):
    X, Y, _ = pair
    src, tgt = make(X, Y)
    with pytest.raises(NestembError, match=match):
        fit_adapter(src, tgt, **kw)


def test_unfitted_and_bad_refs():
    with pytest.raises(NestembError, match="not fitted"):
        Adapter().transform(np.ones((2, 2)))
    with pytest.raises(NestembError, match="model_version must be a non-empty string"):
        ModelRef("m", "", 4)
    with pytest.raises(NestembError, match="dim must be a positive integer"):
        ModelRef("m", "v", 0)
