"""Persistence, checksums and every bad input of the index API."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.index import (
    AdaptiveIVFIndex,
    AdaptiveOPQIndex,
    FunnelIndex,
    load_index,
    synthetic_matryoshka,
    tune,
)
from nestemb.nesting import Manifest

D = 32
NEST = (8, 16, 32)


@pytest.fixture(scope="module")
def X():
    return synthetic_matryoshka(600, D, seed=3)


@pytest.fixture
def funnel(X):
    return FunnelIndex(dims=(8, 32), shortlist=(50,), nesting=NEST, model_id="m").add(X)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FunnelIndex(dims=(8, 16, 32), shortlist=(100, 30), prefix_dtype="int8", nesting=NEST),
        lambda: FunnelIndex(dims=(16, 32), shortlist=(60,), prefix_dtype="binary",
                            first_stage="hnsw", nesting=NEST),
        lambda: AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=8, nprobe=3, codec="sq8",
                                 rerank=40, nesting=NEST),
        lambda: AdaptiveOPQIndex(d_search=16, code_bytes=4, rerank=40, nesting=NEST),
    ],
)
def test_save_load_roundtrip(tmp_path, X, make):
    idx = make().add(X, ids=np.arange(len(X)) + 100)
    idx.delete([100, 101])
    before = idx.search(X[:20], k=5)
    idx.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    assert type(loaded) is type(idx) and len(loaded) == len(X) - 2
    assert isinstance(loaded.vectors_, np.memmap)
    after = loaded.search(X[:20], k=5)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], rtol=1e-6)
    # incremental add after load, then save over the same directory
    loaded.add(X[:3] * 1.01, ids=[1, 2, 3]).save(tmp_path / "idx")
    again = type(idx).load(tmp_path / "idx")
    assert len(again) == len(X) + 1
    assert again.manifest.nesting == NEST


def test_manifest_holds_config_and_tuning(tmp_path, X, funnel):
    tune(funnel, X[:20], k=5, recall=0.9, max_queries=20)
    funnel.save(tmp_path / "i")
    extra = json.loads((tmp_path / "i" / "manifest.json").read_text())["extra"]
    assert extra["index_type"] == "FunnelIndex"
    assert extra["params"]["dims"] == list(funnel.dims)
    assert extra["tuning"]["recall"] >= 0.9 and extra["tuning"]["target"] == 0.9
    man = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert set(man["sha256"]) >= {"vectors.npy", "ids.npy", "deleted.npy", "first_stage.faiss"}
    assert load_index(tmp_path / "i").tuning_["params"] == funnel.tuning_["params"]


@pytest.mark.parametrize("name", ["vectors.npy", "first_stage.faiss", "ids.npy"])
def test_checksum_mismatch_truncated_or_modified(tmp_path, funnel, name):
    p = funnel.save(tmp_path / "i") / name
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(NestembError, match="checksum mismatch"):
        load_index(tmp_path / "i")
    p.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(NestembError, match="checksum mismatch"):
        load_index(tmp_path / "i")


def test_failed_save_leaves_previous_index(tmp_path, funnel, monkeypatch):
    funnel.save(tmp_path / "i")
    import nestemb.index.funnel as fm

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fm.qz, "write_stage", boom)
    with pytest.raises(RuntimeError):
        funnel.add(synthetic_matryoshka(5, D, seed=9)).save(tmp_path / "i")
    assert len(load_index(tmp_path / "i")) == 600
    assert [p.name for p in tmp_path.iterdir()] == ["i"]


def test_load_errors(tmp_path, funnel):
    with pytest.raises(NestembError, match="index directory not found"):
        load_index(tmp_path / "nope")
    funnel.save(tmp_path / "i")
    with pytest.raises(NestembError, match="not a AdaptiveIVFIndex"):
        AdaptiveIVFIndex.load(tmp_path / "i")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    with pytest.raises(NestembError, match="not empty"):
        funnel.save(tmp_path / "other")


# ----------------------------------------------------------------------------- bad input
def test_bad_vectors(funnel):
    with pytest.raises(NestembError, match="dimension 16, expected 32"):
        funnel.search(np.zeros((2, 16), np.float32))
    with pytest.raises(NestembError, match="NaN or inf"):
        funnel.search(np.full((1, D), np.nan, np.float32))
    with pytest.raises(NestembError, match="NaN or inf"):
        funnel.add(np.full((1, D), np.inf, np.float32))
    with pytest.raises(NestembError, match="empty"):
        funnel.search(np.zeros((0, D), np.float32))
    with pytest.raises(NestembError, match="empty"):
        FunnelIndex(dims=(8, 32), shortlist=(10,)).add(np.zeros((0, D), np.float32))
    with pytest.raises(NestembError, match="dimension 16, expected 32"):
        funnel.add(np.zeros((2, 16), np.float32))


def test_bad_k(funnel):
    for k in (0, -1):
        with pytest.raises(NestembError, match="k must be positive"):
            funnel.search(np.ones(D), k=k)
    with pytest.raises(NestembError, match="k must be a positive integer"):
        funnel.search(np.ones(D), k=2.5)
    with pytest.raises(NestembError, match="larger than the index"):
        funnel.search(np.ones(D), k=601)
    with pytest.raises(NestembError, match="smaller than k=60"):
        funnel.search(np.ones(D), k=60)
    ivf = AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=4, rerank=20).add(funnel.vectors_)
    with pytest.raises(NestembError, match="smaller than k=30"):
        ivf.search(np.ones(D), k=30)


def test_bad_stage_dims_and_params(X):
    with pytest.raises(NestembError, match="strictly ascending"):
        FunnelIndex(dims=(32, 8), shortlist=(10,))
    with pytest.raises(NestembError, match="not in the nesting"):
        FunnelIndex(dims=(12, 32), shortlist=(10,), nesting=NEST).add(X)
    with pytest.raises(NestembError, match="last stage dim must be the full dimension 32"):
        FunnelIndex(dims=(8, 16), shortlist=(10,)).add(X)
    with pytest.raises(NestembError, match="one size per stage"):
        FunnelIndex(dims=(8, 16, 32), shortlist=(10,))
    with pytest.raises(NestembError, match="non-increasing"):
        FunnelIndex(dims=(8, 16, 32), shortlist=(10, 20))
    with pytest.raises(NestembError, match="prefix_dtype must be one of"):
        FunnelIndex(dims=(8, 32), shortlist=(10,), prefix_dtype="int4")
    with pytest.raises(NestembError, match="first_stage must be one of"):
        FunnelIndex(dims=(8, 32), shortlist=(10,), first_stage="lsh")
    with pytest.raises(NestembError, match="code_bytes=5 must divide d_search=16"):
        AdaptiveOPQIndex(d_search=16, code_bytes=5)
    with pytest.raises(NestembError, match="codec must be one of"):
        AdaptiveIVFIndex(codec="lsh")
    with pytest.raises(NestembError, match="d_search=64 exceeds the dimension 32"):
        AdaptiveIVFIndex(d_cluster=8, d_search=64, nlist=4).add(X)
    with pytest.raises(NestembError, match="not in the nesting"):
        AdaptiveIVFIndex(d_cluster=12, d_search=16, nlist=4, nesting=NEST).add(X)
    with pytest.raises(NestembError, match="nlist must be a positive integer"):
        AdaptiveIVFIndex(nlist=0)
    with pytest.raises(NestembError, match="unknown FunnelIndex parameters"):
        FunnelIndex(dims=(8, 32), shortlist=(10,)).set_params(nprobe=3)
    with pytest.raises(NestembError, match="recall target"):
        tune(FunnelIndex(dims=(8, 32), shortlist=(10,)).add(X), X[:5], recall=1.5)


def test_bad_ids(funnel, X):
    with pytest.raises(NestembError, match="duplicate ids in the batch"):
        FunnelIndex(dims=(8, 32), shortlist=(10,)).add(X[:3], ids=[1, 1, 2])
    with pytest.raises(NestembError, match="ids already in the index"):
        funnel.add(X[:2], ids=[5, 1000])
    with pytest.raises(NestembError, match="got 1 ids for 2 vectors"):
        funnel.add(X[:2], ids=[7000])
    with pytest.raises(NestembError, match="unknown ids"):
        funnel.delete([12345])
    with pytest.raises(NestembError, match="duplicate ids"):
        funnel.delete([3, 3])
    funnel.delete([3])
    with pytest.raises(NestembError, match="unknown ids"):
        funnel.delete([3])  # already deleted
    s = FunnelIndex(dims=(8, 32), shortlist=(10,)).add(X[:3], ids=["a", "b", "c"])
    with pytest.raises(NestembError, match="string ids"):
        s.add(X[:1])
    assert len(funnel) == 599


def test_manifest_mismatch(funnel):
    q = Manifest(model_id="other", nesting=NEST, dim=D)
    with pytest.raises(NestembError, match="different models"):
        funnel.search(np.ones(D), manifest=q)
    q = Manifest(model_id="m", nesting=(16, 32), dim=D)
    with pytest.raises(NestembError, match="different nestings"):
        funnel.search(np.ones(D), manifest=q)
    ok = Manifest(model_id="m", nesting=NEST, dim=D)
    assert funnel.search(np.ones(D), k=3, manifest=ok)[1].shape == (1, 3)


def test_empty_index(X):
    with pytest.raises(NestembError, match="is empty: call add"):
        FunnelIndex(dims=(8, 32), shortlist=(10,)).search(X[:1])
