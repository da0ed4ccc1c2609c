"""Adapter chains (v1 -> v2 -> v3): the chain is the composed map, it speaks the last model,
links are checked (missing middle model, wrong order, unknown versions), collapse."""

from __future__ import annotations

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.maps import Adapter, ModelRef, fit_adapter, load_adapter
from nestemb.maps.chain import AdapterChain, chain_embeddings
from nestemb.nesting import Manifest, check_compatible, prefix_view

A = Manifest(model_id="enc", model_version="v1", nesting=(4, 8), dim=8)
B = Manifest(model_id="enc", model_version="v2", nesting=(4, 8), dim=8)
C = Manifest(model_id="enc", model_version="v3", nesting=(6, 12), dim=12)
D = Manifest(model_id="other", model_version="x", nesting=(8,), dim=8)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def models():
    """Rows of model A, a rotation A -> B and an isometry B -> C (8 -> 12 dims), the two
    adapters fitted on pairs, and held-out A rows."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8))
    R1 = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    Q2 = np.linalg.qr(rng.normal(size=(12, 8)))[0].T  # (8, 12), orthonormal rows
    ab = fit_adapter(X[:200], X[:200] @ R1, source_ref=A, target_ref=B)
    bc = fit_adapter(X[:200] @ R1, X[:200] @ R1 @ Q2, source_ref=B, target_ref=C)
    return X[:200], X[200:], R1 @ Q2, ab, bc


def test_chain_is_the_direct_map(models):
    X, held, M, ab, bc = models
    chain = AdapterChain([ab, bc])
    out = chain.transform(held, A)
    np.testing.assert_allclose(prefix_view(out, 12), prefix_view(held @ M, 12), atol=1e-5)
    direct = fit_adapter(X, X @ M, source_ref=A, target_ref=C)  # A -> C fitted on pairs
    np.testing.assert_allclose(out, direct.transform(held), atol=1e-5)
    assert (chain.source_ref_, chain.target_ref_) == (ModelRef.of(A), ModelRef.of(C))
    assert chain.nesting_ == (6, 12) and (chain.in_dim_, chain.out_dim_) == (8, 12)
    assert len(chain) == 2 and "'enc' (version 'v3'" in repr(chain)


def test_chain_embeddings_speak_the_last_model(models):
    _, held, _, ab, bc = models
    out, man = chain_embeddings(held, A, [ab, bc])
    check_compatible(man, C)  # what an index of model C checks
    assert (man.model_id, man.model_version, man.nesting) == ("enc", "v3", (6, 12))
    np.testing.assert_array_equal(out, AdapterChain([ab, bc]).transform(held))
    adapted = man.extra["adapted"]
    assert adapted["source"] == ModelRef.of(A).to_dict()
    assert [h["source"]["model_version"] for h in adapted["chain"]] == ["v1", "v2"]
    assert adapted["adapter_version"] == bc.version_
    # one adapter is a chain too
    out1, man1 = chain_embeddings(held, A, [ab])
    assert man1.model_version == "v2" and out1.shape == (100, 8)


def test_loaded_adapters_chain(models, tmp_path):
    _, held, _, ab, bc = models
    loaded = [load_adapter(a.save(tmp_path / str(i))) for i, a in enumerate((ab, bc))]
    np.testing.assert_allclose(AdapterChain(loaded).transform(held),
                               AdapterChain([ab, bc]).transform(held), atol=1e-6)


def test_missing_middle_model_is_refused(models):
    X, _, _, ab, _ = models
    v9 = Manifest(model_id="enc", model_version="v9", nesting=(8,), dim=8)
    cd = fit_adapter(X, X, source_ref=v9, target_ref=D)
    with pytest.raises(NestembError, match="adapter 2 maps 'enc' \\(version 'v9'.*but adapter 1 "
                                           "produces 'enc' \\(version 'v2'.*middle model is "
                                           "missing") as e:
        AdapterChain([ab, cd])
    assert e.value.param == "adapters"


def test_wrong_order_is_refused(models):
    _, held, _, ab, bc = models
    with pytest.raises(NestembError, match="out of order: pass them as 2, 1") as e:
        AdapterChain([bc, ab])
    assert e.value.param == "adapters"
    with pytest.raises(NestembError, match="out of order") as e:
        chain_embeddings(held, A, [bc, ab])
    assert e.value.param == "adapters"


def test_vectors_of_the_wrong_model_are_refused(models):
    X, held, _, ab, bc = models
    chain = AdapterChain([ab, bc])
    with pytest.raises(NestembError, match="wrong direction"):
        chain.transform(X @ np.eye(8), B)  # B vectors into an A -> B -> C chain
    with pytest.raises(NestembError, match="wrong model"):
        chain_embeddings(held, D, chain)
    with pytest.raises(NestembError, match="X has 12 dims"):
        chain.transform(np.ones((2, 12)))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda ab, bc: [], "adapters is empty"),
        (lambda ab, bc: ab, "adapters must be a sequence of adapters"),
        (lambda ab, bc: [ab, "bc"], "item 2 is a str, not an Adapter"),
        (lambda ab, bc: [ab, Adapter()], "adapter is not fitted"),
        (lambda ab, bc: [ab, fit_adapter(np.eye(8), np.eye(8), source_ref=B)],
         "adapter 2 has no target model identity"),
        (lambda ab, bc: [fit_adapter(np.eye(8), np.eye(8), target_ref=B), bc],
         "adapter 1 has no source model identity"),
    ],
)
def test_bad_chains(models, make, match):
    *_, ab, bc = models
    with pytest.raises(NestembError, match=match):
        AdapterChain(make(ab, bc))


def test_unknown_link_needs_trust(models):
    X, held, _, _, _ = models
    mid = Manifest(model_id="mid", nesting=(8,), dim=8)  # version unknown
    a1 = fit_adapter(X, X, source_ref=A, target_ref=mid, trust_unknown=True)
    a2 = fit_adapter(X, X, source_ref=mid, target_ref=B, trust_unknown=True)
    with pytest.raises(NestembError, match="unknown weights version cannot be checked") as e:
        AdapterChain([a1, a2])
    assert e.value.param == "trust_unknown"
    out, man = chain_embeddings(held, A, [a1, a2], trust_unknown=True)
    assert man.model_version == "v2"


def test_collapse(models, tmp_path):
    X, held, M, ab, bc = models
    chain = AdapterChain([ab, bc])
    one = chain.collapse()
    np.testing.assert_allclose(one.weights_["W"], M, atol=1e-5)
    # rotations keep unit rows unit: collapsed and sequential agree
    np.testing.assert_allclose(one.transform(held), chain.transform(held), atol=1e-5)
    assert (one.source_ref_, one.target_ref_) == (ModelRef.of(A), ModelRef.of(C))
    np.testing.assert_allclose(load_adapter(one.save(tmp_path / "one")).transform(held),
                               one.transform(held), atol=1e-6)
    # centred maps: the product skips the intermediate normalization, so it differs from the
    # chain, but is exactly the composition of the two affine maps
    c1 = fit_adapter(X, X @ M[:, :8] + 0.3, source_ref=A, target_ref=B, scaling="center")
    c2 = fit_adapter(X + 1, X @ M, source_ref=B, target_ref=C, kind="affine")
    both = AdapterChain([c1, c2])
    x = unit(held)
    w1, w2 = c1.weights_, c2.weights_
    step1 = (x - w1["x_mean"]) / w1["x_scale"] @ w1["W"] * w1["y_scale"] + w1["y_mean"]
    manual = step1 @ w2["W"] + w2["b"]
    np.testing.assert_allclose(both.collapse().transform(held), manual, atol=1e-4)
    assert not np.allclose(both.collapse().transform(held), both.transform(held), atol=1e-3)
    with pytest.raises(NestembError, match="adapter 1 is a slerped orthogonal adapter") as e:
        AdapterChain([fit_adapter(X, X @ M[:, :8], source_ref=A, target_ref=B, slerp=0.5),
                      bc]).collapse()
    assert e.value.param == "adapters"
