"""Pair-free translation (fit_unpaired): recovery of a hidden rotation / isometry from
different items on each side, a control that plain Procrustes on wrong pairs fails, save/load,
identity, and every bad input."""

from __future__ import annotations

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.maps import Adapter, ModelRef, adapt_embeddings, fit_adapter, load_adapter
from nestemb.maps.unpaired import fit_unpaired
from nestemb.nesting import Manifest, prefix_view

N = 800  # rows per side; the two sides hold different items
OLD = Manifest(model_id="old-net", model_version="aaaa", nesting=(8, 24), dim=24)
NEW = Manifest(model_id="new-net", model_version="bbbb", nesting=(8, 16, 24), dim=24)


def mixture(rng, n, d, components=22):
    """A clustered, anisotropic cloud: a Gaussian mixture whose centres spread more along the
    first axes, each component with its own per-axis spread (isotropic data has nothing for
    an unpaired method to match)."""
    centres = rng.normal(size=(components, d)) * np.linspace(3, 0.5, d)
    spread = rng.uniform(0.2, 0.6, size=(components, d))
    label = rng.integers(components, size=n)
    return centres[label] + spread[label] * rng.normal(size=(n, d))


def quality(adapter, held, truth):
    """Mean cosine between mapped held-out rows and their true images, and top-1 retrieval
    accuracy of the mapped rows among the true images."""
    out, tgt = prefix_view(adapter.transform(held), truth.shape[1]), prefix_view(
        truth, truth.shape[1])
    top1 = float(((out @ tgt.T).argmax(axis=1) == np.arange(len(held))).mean())
    return float(np.einsum("ij,ij->i", out, tgt).mean()), top1


@pytest.fixture(scope="module")
def rotated():
    """Source rows, target rows (other items) seen through a hidden rotation, held-out source
    rows with their true images, and the adapter fitted without pairs."""
    rng = np.random.default_rng(2)
    X = mixture(rng, 2 * N + 300, 24)
    R = np.linalg.qr(rng.normal(size=(24, 24)))[0]
    source, target = X[:N], X[N:2 * N] @ R
    a = fit_unpaired(source, target, source_ref=OLD, target_ref=NEW)
    return source, target, X[2 * N:], X[2 * N:] @ R, a


def test_recovers_rotation_without_pairs(rotated):
    _, _, held, truth, a = rotated
    cos, top1 = quality(a, held, truth)
    assert cos > 0.95 and top1 > 0.9, (cos, top1)
    assert a.kind == "orthogonal" and a.scaling == "center" and a.nesting_ == (8, 16, 24)
    W = a.weights_["W"].astype(np.float64)
    np.testing.assert_allclose(W.T @ W, np.eye(24), atol=1e-4)  # a rotation
    info = a.fit_info_
    assert info["method"] == "unpaired" and info["rows"] == [N, N]
    assert info["clusters"] == [8, 10, 12, 14, 17, 20, 24, 29, 34]  # the ladder to N // 20
    assert info["rounds"] and len(info["mnn_pairs"]) - len(info["rounds"]) in (0, 1)
    assert info["score"]["final"] > 0.9 and info["mnn_cosine"][24] > 0.9
    assert {"clusters", "qap_objective", "score"} <= set(info["candidates"][0])


def test_recovers_isometry_into_a_wider_space():
    rng = np.random.default_rng(3)
    X = mixture(rng, 2 * N + 300, 16)
    Q = np.linalg.qr(rng.normal(size=(24, 16)))[0].T  # (16, 24), orthonormal rows
    Y = X @ Q + 0.01 * rng.normal(size=(len(X), 24))
    a = fit_unpaired(X[:N], Y[N:2 * N], seed=1)
    cos, top1 = quality(a, X[2 * N:], Y[2 * N:])
    assert cos > 0.95 and top1 > 0.9, (cos, top1)
    assert a.weights_["W"].shape == (16, 24)


def test_procrustes_on_wrong_pairs_is_far_worse(rotated):
    # the control: without the matching, rows paired at random teach nothing, so a test data
    # set on which any orthogonal map scored well would be caught here
    source, target, held, truth, a = rotated
    guess = fit_adapter(source, target[np.random.default_rng(0).permutation(N)],
                        scaling="center")
    cos_guess, top1_guess = quality(guess, held, truth)
    cos, top1 = quality(a, held, truth)
    assert cos_guess < 0.5 and top1_guess < 0.2, (cos_guess, top1_guess)
    assert cos - cos_guess > 0.5 and top1 - top1_guess > 0.7


def test_save_load_and_identity(rotated, tmp_path):
    source, target, held, _, a = rotated
    b = load_adapter(a.save(tmp_path / "unpaired"))
    np.testing.assert_array_equal(b.transform(held), a.transform(held))
    assert b.fit_info_["method"] == "unpaired" and b.scaling == "center"
    assert b.version_ == a.version_
    out, man = adapt_embeddings(held, OLD, b)  # the adapter machinery takes it as is
    assert (man.model_id, man.model_version, man.nesting) == ("new-net", "bbbb", (8, 16, 24))
    with pytest.raises(NestembError, match="wrong direction"):
        adapt_embeddings(target, NEW, b)


def test_same_seed_same_map():
    rng = np.random.default_rng(4)
    X = mixture(rng, 400, 8, components=10)
    R = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    a, b = (fit_unpaired(X[:200], X[200:] @ R, clusters=10, seed=5) for _ in range(2))
    np.testing.assert_array_equal(a.weights_["W"], b.weights_["W"])


def _inputs():
    rng = np.random.default_rng(5)
    return rng.normal(size=(60, 6)), rng.normal(size=(50, 6))


@pytest.mark.parametrize(
    "make, kw, param, match",
    [
        (lambda X, Y: (X, Y), {"clusters": 55}, "clusters",
         "target has 50 rows, fewer than the 55 clusters of clusters"),
        (lambda X, Y: (X[:5], Y), {}, "clusters", "source has 5 rows, fewer than the 8 clusters"),
        (lambda X, Y: (X, Y), {"clusters": 2}, "clusters", "clusters must be at least 3"),
        (lambda X, Y: (X, Y), {"clusters": 4.5}, "clusters", "clusters must be a positive int"),
        (lambda X, Y: (X, X), {}, "target", "source and target hold the same vectors: two "
                                            "samples of the same model"),
        (lambda X, Y: (X, X.copy()), {}, "target", "hold the same vectors"),
        (lambda X, Y: (X, Y), {"source_ref": ModelRef("m", "v1", 6),
                               "target_ref": ModelRef("m", "v1", 6)},
         "target_ref", "name the same model 'm'.*two samples of the same model"),
        (lambda X, Y: (np.where(np.arange(60)[:, None] == 3, np.nan, X), Y), {}, "source",
         "source contains NaN or inf values \\(row 3\\)"),
        (lambda X, Y: (X, np.where(np.arange(50)[:, None] == 7, np.inf, Y)), {}, "target",
         "target contains NaN or inf values \\(row 7\\)"),
        (lambda X, Y: (X[:, :1], Y), {}, "source", "source must have at least 2 dims"),
        (lambda X, Y: (X, Y[:, :1]), {}, "target", "target must have at least 2 dims"),
        (lambda X, Y: (X, Y), {"refine": -1}, "refine", "refine must be an integer >= 0, got -1"),
        (lambda X, Y: (X, Y), {"trials": 0}, "trials", "trials must be a positive integer"),
        (lambda X, Y: (X, Y), {"source_ref": Manifest(model_id="m", nesting=(6,), dim=6)},
         "trust_unknown", "unknown weights version"),
        (lambda X, Y: (X, Y), {"nesting": (4, 5)}, "nesting", "nesting"),
        (lambda X, Y: (X, Y), {"target_ref": "new"}, "target_ref", "must be a ModelRef"),
    ],
)
def test_bad_input(make, kw, param, match):
    source, target = make(*_inputs())
    with pytest.raises(NestembError, match=match) as e:
        fit_unpaired(source, target, **kw)
    assert e.value.param == param


def test_ref_width_must_match_data():
    X, Y = _inputs()
    with pytest.raises(NestembError, match="does not match the data's width 6"):
        fit_unpaired(X, Y, source_ref=ModelRef("m", "v1", 7))


def test_result_is_a_plain_adapter(rotated):
    a = rotated[4]
    assert type(a) is Adapter and a.source_ref_ == ModelRef.of(OLD)
    assert a.target_ref_ == ModelRef.of(NEW)
