"""The adapter kinds beyond orthogonal/affine/mlp: ``lowrank`` (Drift-Adapter), ``cluster``
(per-cluster Procrustes) and Matryoshka-aware ``affine`` (``matryoshka=True``): recovery of
known maps, save/load, and every new parameter's refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.maps import Adapter, fit_adapter, load_adapter
from nestemb.nesting import Manifest, prefix_view

OLD = Manifest(model_id="old-net", model_version="aaaa", nesting=(8,), dim=8)
NEW = Manifest(model_id="new-net", model_version="bbbb", nesting=(8,), dim=8)
FAST = dict(epochs=1, hidden=4, threads=1)  # enough to exercise a trained kind, not to fit


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cosines(a, b, m):
    return np.einsum("ij,ij->i", prefix_view(np.asarray(a, np.float64), m),
                     prefix_view(np.asarray(b, np.float64), m))


def rotation(rng, d):
    return np.linalg.qr(rng.normal(size=(d, d)))[0]


# ------------------------------------------------------------------ lowrank


def test_lowrank_recovers_low_rank_map(tmp_path):
    rng = np.random.default_rng(0)
    X = unit(rng.normal(size=(1200, 24)))
    M = rng.normal(size=(24, 4)) @ rng.normal(size=(4, 16))  # rank 4, 24 -> 16 dims
    Y = unit(X @ M)
    tr, te = slice(0, 1000), slice(1000, None)
    src = Manifest(model_id="old-net", model_version="aaaa", nesting=(24,), dim=24)
    tgt = Manifest(model_id="new-net", model_version="bbbb", nesting=(8, 16), dim=16)
    a = fit_adapter(X[tr], Y[tr], "lowrank", rank=4, hidden=16, epochs=5, lr=3e-3,
                    batch_size=128, threads=1, source_ref=src, target_ref=tgt)
    assert cosines(a.transform(X[te]), Y[te], 16).min() > 0.99
    # the least-squares start alone does not get there: the prefix-loss training does
    affine = fit_adapter(X[tr], Y[tr], "affine")
    assert cosines(affine.transform(X[te]), Y[te], 16).mean() < 0.99
    s = np.linalg.svd(a.weights_["W"], compute_uv=False)  # saved as the product U V
    assert a.weights_["W"].shape == (24, 16) and s[4] < 1e-5 * s[0] and s[3] > 0.01 * s[0]
    assert a.fit_info_["rank"] == 4 and "W1" in a.weights_  # plus the residual MLP
    a.save(tmp_path / "ad")
    man = json.loads((tmp_path / "ad" / "manifest.json").read_text())
    assert man["extra"]["adapter"]["kind"] == "lowrank"
    assert man["extra"]["adapter"]["params"]["rank"] == 4
    b = load_adapter(tmp_path / "ad")
    assert (b.kind, b.rank, b.version_) == ("lowrank", 4, a.version_)
    np.testing.assert_array_equal(b.transform(X[te], src), a.transform(X[te], src))


def test_lowrank_rank_is_clipped_to_the_narrower_side():
    # a rank above min(d_s, d_t) adds nothing a full matrix lacks: documented as clipped
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(40, 8)), rng.normal(size=(40, 6))
    assert fit_adapter(X, Y, "lowrank", rank=100, **FAST).fit_info_["rank"] == 6
    assert fit_adapter(X, Y, "lowrank", **FAST).fit_info_["rank"] == 6  # default 64, clipped
    assert fit_adapter(X, Y, "lowrank", rank=2, **FAST).fit_info_["rank"] == 2


# ------------------------------------------------------------------ cluster


@pytest.fixture
def regions():
    """Three tight regions of the 8-d sphere, each rotated by a different known rotation."""
    rng = np.random.default_rng(2)
    centers = rotation(rng, 8)[:3]
    rots = [rotation(rng, 8) for _ in range(3)]
    X = np.concatenate([unit(c + 0.2 * rng.normal(size=(400, 8))) for c in centers])
    labels = np.repeat(np.arange(3), 400)
    Y = np.concatenate([X[labels == j] @ rots[j] for j in range(3)])
    order = rng.permutation(len(X))
    return X[order], Y[order], labels[order], centers, rots


def test_cluster_recovers_each_rotation(regions):
    X, Y, labels, centers, rots = regions
    tr, te = slice(0, 900), slice(900, None)
    c = fit_adapter(X[tr], Y[tr], "cluster", clusters=3)
    o = fit_adapter(X[tr], Y[tr], "orthogonal")
    cluster_cos = cosines(c.transform(X[te]), Y[te], 8).mean()
    assert cluster_cos > 0.99 > cosines(o.transform(X[te]), Y[te], 8).mean() + 0.1
    assert sorted(c.fit_info_["cluster_rows"]) == sorted(np.bincount(labels[tr]).tolist())
    for j, (center, R) in enumerate(zip(centers, rots)):
        k = int(np.argmax(c.weights_["C"] @ center))  # the centroid of region j
        rows = X[te][labels[te] == j]
        assert cosines(rows @ c.weights_["Ws"][k], rows @ R, 8).min() > 0.99
        np.testing.assert_allclose(c.weights_["Ws"][k], R, atol=0.05)
    assert c.weights_["W"].shape == (8, 8)  # the global map, which loading reads


def test_cluster_save_load_round_trip(tmp_path, regions):
    X, Y, *_ = regions
    c = fit_adapter(X, Y, "cluster", clusters=3, seed=4, source_ref=OLD, target_ref=NEW)
    c.save(tmp_path / "ad")
    man = json.loads((tmp_path / "ad" / "manifest.json").read_text())
    assert man["extra"]["adapter"]["params"]["clusters"] == 3
    b = load_adapter(tmp_path / "ad")
    assert (b.kind, b.clusters, b.seed, b.version_) == ("cluster", 3, 4, c.version_)
    np.testing.assert_array_equal(b.transform(X, OLD), c.transform(X, OLD))
    again = fit_adapter(X, Y, "cluster", clusters=3, seed=4, source_ref=OLD, target_ref=NEW)
    assert again.version_ == c.version_  # seeded k-means: the same adapter
    weights = dict(b.weights_)
    del weights["Ws"]
    with pytest.raises(NestembError, match="does not hold a cluster adapter's centroids"):
        Adapter._read(tmp_path / "ad", b.manifest(), weights,
                      {"kind": "cluster"}, check_version=False)


def test_small_cluster_falls_back_on_the_global_map():
    # one region of 300 rows and one of 3 rows (fewer than the 8 dims), the same rotation
    # everywhere: the 3 rows alone leave 5 directions undetermined, the global map fills them
    rng = np.random.default_rng(5)
    c1 = unit(rng.normal(size=(1, 8)))[0]
    X = np.concatenate([unit(c1 + 0.03 * rng.normal(size=(300, 8))),
                        unit(-c1 + 0.01 * rng.normal(size=(3, 8)))])
    R = rotation(rng, 8)
    a = fit_adapter(X, X @ R, "cluster", clusters=2)
    assert sorted(a.fit_info_["cluster_rows"]) == [3, 300]
    for W in a.weights_["Ws"]:
        np.testing.assert_allclose(W, R, atol=1e-4)


def test_cluster_default_count():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(100, 8))
    # min(8, rows // (2 * min(d_s, d_t))), at least 1
    assert fit_adapter(X, X, "cluster").fit_info_["clusters"] == 6
    assert fit_adapter(X[:20], X[:20], "cluster").fit_info_["clusters"] == 1
    assert fit_adapter(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)),
                       "cluster").fit_info_["clusters"] == 8


# ------------------------------------------------------------------ matryoshka affine


def test_matryoshka_affine_fits_the_prefixes(tmp_path):
    # the first 8 target coordinates are x A times a row-dependent scale: no affine map fits
    # the scale, so least squares bends the direction to chase it, while the prefix cosine
    # ignores scale and finds A's direction
    rng = np.random.default_rng(7)
    X = unit(rng.normal(size=(1000, 12)))
    A, B = rng.normal(size=(12, 8)), rng.normal(size=(12, 8))
    scale = np.exp(5 * X @ unit(rng.normal(size=(1, 12)))[0])[:, None]
    Y = np.concatenate([scale * (X @ A), X @ B], axis=1)
    tr, te = slice(0, 800), slice(800, None)
    kw = dict(nesting=(8, 16))
    plain = fit_adapter(X[tr], Y[tr], "affine", **kw)
    mat = fit_adapter(X[tr], Y[tr], "affine", matryoshka=True, epochs=5, lr=1e-2,
                      batch_size=64, threads=1, **kw)
    assert "W1" not in mat.weights_ and set(mat.weights_) == {"W", "b"}  # no hidden layer
    c8 = [cosines(a.transform(X[te]), Y[te], 8).mean() for a in (plain, mat)]
    c16 = [cosines(a.transform(X[te]), Y[te], 16).mean() for a in (plain, mat)]
    assert c8[1] > 0.995 and c8[1] > c8[0] + 0.005
    assert c16[1] > c16[0] - 0.01
    mat.save(tmp_path / "ad")
    b = load_adapter(tmp_path / "ad")
    assert b.matryoshka is True and b.version_ == mat.version_
    np.testing.assert_array_equal(b.transform(X[te]), mat.transform(X[te]))
    nobias = fit_adapter(X[tr], Y[tr], "affine", matryoshka=True, bias=False, epochs=1,
                         threads=1, **kw)
    assert set(nobias.weights_) == {"W"}


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kw, param, match",
    [
        ({"rank": 4}, "rank", "rank applies to kind 'lowrank' only, not 'orthogonal'"),
        ({"kind": "mlp", "rank": 4}, "rank", "rank applies to kind 'lowrank' only"),
        ({"kind": "lowrank", "rank": 0}, "rank", "rank must be a positive integer"),
        ({"kind": "lowrank", "rank": 2.5}, "rank", "rank must be a positive integer"),
        ({"kind": "affine", "clusters": 2}, "clusters", "clusters applies to kind 'cluster'"),
        ({"kind": "cluster", "clusters": 0}, "clusters", "clusters must be a positive integer"),
        ({"kind": "cluster", "clusters": 41}, "clusters",
         "clusters must be at most the number of paired rows \\(40\\), got 41"),
        ({"matryoshka": True}, "matryoshka",
         "matryoshka=True applies to kind 'affine' only .*, not 'orthogonal'"),
        ({"kind": "lowrank", "matryoshka": True}, "matryoshka", "applies to kind 'affine' only"),
        ({"kind": "affine", "matryoshka": "yes"}, "matryoshka", "must be True or False"),
        ({"kind": "affine", "matryoshka": True, "hidden": 8}, "hidden",
         "hidden applies to kind 'mlp' or 'lowrank', not 'affine' with matryoshka=True"),
        ({"kind": "affine", "epochs": 3}, "epochs",
         "epochs applies to kind 'mlp' or 'lowrank' \\(or 'affine' with matryoshka=True\\)"),
        ({"kind": "cluster", "threads": 1}, "threads", "threads applies to kind 'mlp'"),
        ({"kind": "affine", "matryoshka": True, "scaling": "center"}, "scaling",
         "scaling applies to kinds 'orthogonal' and 'affine' \\(without matryoshka\\)"),
        ({"kind": "lowrank", "scaling": "center"}, "scaling", "not 'lowrank'"),
        ({"kind": "cluster", "underdetermined": True}, "underdetermined", "not 'cluster'"),
        ({"kind": "cluster", "ridge": 0.1}, "ridge", "ridge applies to .*, not 'cluster'"),
        ({"kind": "cluster", "slerp": 0.5}, "slerp", "slerp applies to kind 'orthogonal'"),
    ],
)
def test_new_params_refused(kw, param, match):
    rng = np.random.default_rng(8)
    X, Y = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    with pytest.raises(NestembError, match=match) as e:
        fit_adapter(X, Y, **kw)
    assert e.value.param == param


def test_too_few_rows_for_the_new_kinds():
    rng = np.random.default_rng(9)
    X, Y = rng.normal(size=(8, 8)), rng.normal(size=(8, 12))
    with pytest.raises(NestembError, match="a lowrank adapter from 8 to 12 dims needs at least "
                                           "9 paired rows, got 8$"):
        fit_adapter(X, Y, "lowrank")
    with pytest.raises(NestembError, match="a cluster adapter from 8 to 12 dims needs at least "
                                           "8 paired rows, got 7$"):
        fit_adapter(X[:7], Y[:7], "cluster")
    with pytest.raises(NestembError, match="an affine adapter .* got 8$"):
        fit_adapter(X, Y, "affine", matryoshka=True)  # no underdetermined hint: it is refused
