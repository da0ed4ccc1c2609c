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
    return FunnelIndex(dims=(8, 32), shortlist=(50,), nesting=NEST, model_id="m",
                       model_version="v1").add(X)


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
    loaded.add(X[:3] * 1.01, ids=[1, 2, 3]).save(tmp_path / "idx", overwrite=True)
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
    assert set(man["sha256"]) >= {"full.faiss", "ids.npy", "deleted.npy", "first_stage.faiss"}
    assert load_index(tmp_path / "i").tuning_["params"] == funnel.tuning_["params"]


@pytest.mark.parametrize("name", ["full.faiss", "first_stage.faiss", "ids.npy"])
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
        funnel.add(synthetic_matryoshka(5, D, seed=9)).save(tmp_path / "i", overwrite=True)
    assert len(load_index(tmp_path / "i")) == 600
    assert [p.name for p in tmp_path.iterdir()] == ["i"]


def test_load_errors(tmp_path, funnel):
    with pytest.raises(NestembError, match="index directory not found"):
        load_index(tmp_path / "nope")
    funnel.save(tmp_path / "i")
    with pytest.raises(NestembError, match="holds a FunnelIndex, not an AdaptiveIVFIndex"):
        AdaptiveIVFIndex.load(tmp_path / "i")


def test_save_refuses_existing_path_unless_overwrite(tmp_path, funnel, X):
    p = funnel.save(tmp_path / "i")
    before = (p / "manifest.json").read_text()
    with pytest.raises(NestembError, match=r"already exists.*i \(.*overwrite"):
        funnel.save(p)
    assert (p / "manifest.json").read_text() == before
    # overwrite replaces an index, here by one of another type
    AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=4, nesting=NEST).add(X[:100]).save(p, overwrite=True)
    assert type(load_index(p)) is AdaptiveIVFIndex and len(load_index(p)) == 100
    # an empty directory is free; a file is not
    (tmp_path / "empty").mkdir()
    funnel.save(tmp_path / "empty")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NestembError, match="exists and is not a directory"):
        funnel.save(tmp_path / "f", overwrite=True)


@pytest.mark.parametrize("content", ["notes", "embeddings"])
def test_overwrite_refuses_a_folder_that_is_not_an_index(tmp_path, funnel, X, content):
    other = tmp_path / "other"
    if content == "notes":
        other.mkdir()
        (other / "x.txt").write_text("precious")
    else:  # another nestemb artefact (an embedding file) is not an index either
        from nestemb.folders import save_embeddings

        save_embeddings(other, X[:3], Manifest(model_id="m", nesting=NEST, dim=D))
    files = sorted(p.name for p in other.iterdir())
    with pytest.raises(NestembError, match="other is not a nestemb index directory|refusing to replace .*other"):
        funnel.save(other, overwrite=True)
    assert sorted(p.name for p in other.iterdir()) == files


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
    with pytest.raises(NestembError, match="code_bytes must divide the search dimension 16, got 5"):
        AdaptiveOPQIndex(d_search=16, code_bytes=5)
    with pytest.raises(NestembError, match="codec must be one of"):
        AdaptiveIVFIndex(codec="lsh")
    with pytest.raises(NestembError, match="d_search=64 exceeds the dimension 32"):
        AdaptiveIVFIndex(d_cluster=8, d_search=64, nlist=4).add(X)
    with pytest.raises(NestembError, match="not in the nesting"):
        AdaptiveIVFIndex(d_cluster=12, d_search=16, nlist=4, nesting=NEST).add(X)
    with pytest.raises(NestembError, match="nlist must be a positive integer"):
        AdaptiveIVFIndex(nlist=0)
    with pytest.raises(NestembError, match=r"unknown FunnelIndex parameters: \['nprobe'\]"):
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
    q = Manifest(model_id="other", model_version="v1", nesting=NEST, dim=D)
    with pytest.raises(NestembError, match="different models"):
        funnel.search(np.ones(D), manifest=q)
    q = Manifest(model_id="m", model_version="v1", nesting=(16, 32), dim=D)
    with pytest.raises(NestembError, match="different nestings"):
        funnel.search(np.ones(D), manifest=q)
    ok = Manifest(model_id="m", model_version="v1", nesting=NEST, dim=D)
    assert funnel.search(np.ones(D), k=3, manifest=ok)[1].shape == (1, 3)


def test_model_version_mismatch(tmp_path, funnel, X):
    q = Manifest(model_id="m", model_version="v2", nesting=NEST, dim=D)
    msg = "different weights of model 'm': version 'v2' vs 'v1'"
    with pytest.raises(NestembError, match=msg):
        funnel.search(X[:2], manifest=q)
    with pytest.raises(NestembError, match=msg):
        funnel.search_exact(X[:2], manifest=q)
    with pytest.raises(NestembError, match=msg):
        tune(funnel, X[:5], k=3, manifest=q)
    assert funnel.tuning_ is None
    # the identity survives a save/load round trip
    loaded = load_index(funnel.save(tmp_path / "i"))
    assert (loaded.manifest.model_id, loaded.manifest.model_version) == ("m", "v1")
    with pytest.raises(NestembError, match=msg):
        loaded.search(X[:2], manifest=q)


def test_empty_index(X):
    with pytest.raises(NestembError, match="is empty: call add"):
        FunnelIndex(dims=(8, 32), shortlist=(10,)).search(X[:1])


# ----------------------------------------------------------------------------- one family
ALL = (FunnelIndex, AdaptiveIVFIndex, AdaptiveOPQIndex)


def test_constructors_are_keyword_only_with_shared_names():
    import inspect

    sigs = {cls: inspect.signature(cls.__init__).parameters for cls in ALL}
    for cls, params in sigs.items():
        kinds = {p.kind for name, p in params.items() if name != "self"}
        assert kinds == {inspect.Parameter.KEYWORD_ONLY}, cls
        assert {"train_size", "nesting", "model_id", "model_version"} <= set(params), cls
        assert set(params) - {"self"} == set(cls._param_names), cls
    assert list(sigs[AdaptiveIVFIndex]) == list(sigs[AdaptiveOPQIndex])
    with pytest.raises(TypeError):
        FunnelIndex((8, 32), (10,))
    with pytest.raises(TypeError):
        AdaptiveIVFIndex(8, 16)
    with pytest.raises(TypeError):
        AdaptiveOPQIndex(16, 4)


@pytest.mark.parametrize("cls", ALL)
def test_set_params_contract(cls, X):
    kw = {FunnelIndex: dict(dims=(8, 32), shortlist=(50,)),
          AdaptiveIVFIndex: dict(d_cluster=8, d_search=32, nlist=4),
          AdaptiveOPQIndex: dict(d_search=32, code_bytes=8, nlist=4)}[cls]
    idx = cls(**kw, nesting=NEST)
    with pytest.raises(NestembError, match=rf"unknown {cls.__name__} parameters: \['bogus', 'nprob'\]"):
        idx.set_params(nprob=2, bogus=1)
    with pytest.raises(NestembError, match="must be"):  # validated like the constructor
        idx.set_params(**({"shortlist": (0,)} if cls is FunnelIndex else {"nprobe": 0}))
    if cls is not FunnelIndex:  # before training: no rebuild, just validated
        assert idx.set_params(d_search=16, code_bytes=4).d_search == 16
    idx.add(X)
    with pytest.raises(NestembError, match="model_version cannot change once the index is trained"):
        idx.set_params(model_version="v9")
    before = idx.get_params()
    assert idx.set_params() is idx and idx.get_params() == before
    # every candidate tune would try is accepted, and the index stays correct under it
    truth = idx.search_exact(X[:10], k=5)[1]
    for group in idx.candidate_grid(k=5, max_candidates=100):
        for params in group[-1:]:
            assert idx.set_params(**params) is idx
            assert all(idx.get_params()[n] == (list(v) if isinstance(v, tuple) else v)
                       for n, v in params.items())
    idx.set_params(**before)
    assert idx.get_params() == before and idx.search_exact(X[:10], k=5)[1].tolist() == truth.tolist()


def test_structural_set_params_rebuilds_and_stays_exact(X):
    from nestemb.index import exact_search, knn_intersection

    idx = AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=4, nprobe=4, nesting=NEST).add(X)
    idx.set_tuning({"params": {"nprobe": 4}, "recall": 1.0})
    idx.set_params(d_search=32)  # rebuilds the lists on the stored vectors
    assert idx.tuning_ is None  # the record described the old configuration
    assert knn_intersection(idx.search(X[:20], k=5)[1], exact_search(X, X[:20], 5, dim=32)[1]) == 1.0
    f = FunnelIndex(dims=(8, 32), shortlist=(600,), nesting=NEST).add(X)
    f.set_params(dims=(16, 32), prefix_dtype="binary")
    assert f.stage_.d == 16 and f.stage_.ntotal == len(X)
    assert knn_intersection(f.search(X[:20], k=5)[1], exact_search(X, X[:20], 5)[1]) == 1.0


def test_train_errors(X):
    idx = FunnelIndex(dims=(8, 32), shortlist=(50,), nesting=NEST).train(X[:100])
    with pytest.raises(NestembError, match="is empty: call add"):
        idx.search(X[:1])
    with pytest.raises(NestembError, match="dimension 16, expected 32"):
        idx.add(X[:5, :16])
    with pytest.raises(NestembError, match="needs retraining: call train"):
        idx.set_params(prefix_dtype="int8")
    idx.train(X[:200])  # still empty: retraining is fine
    idx.add(X)
    with pytest.raises(NestembError, match="already holds 600 vectors"):
        idx.train(X)
    with pytest.raises(NestembError, match="nlist=64 needs at least as many vectors, got 10"):
        AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=64).train(X[:10])
    with pytest.raises(NestembError, match="NaN or inf"):
        AdaptiveIVFIndex(nlist=4).train(np.full((10, D), np.nan, np.float32))
    # bad ids fail before the first add trains anything
    fresh = AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=4)
    with pytest.raises(NestembError, match="duplicate ids"):
        fresh.add(X[:10], ids=[1] * 10)
    assert not fresh.is_trained


def test_set_tuning_validates_and_applies(X):
    idx = AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=4, nesting=NEST).add(X)
    with pytest.raises(NestembError, match="'params' dict"):
        idx.set_tuning({"recall": 1.0})
    with pytest.raises(NestembError, match=r"unknown AdaptiveIVFIndex parameters: \['shortlist'\]"):
        idx.set_tuning({"params": {"shortlist": [10]}})
    idx.set_tuning({"params": {"nprobe": 3, "rerank": 40}, "recall": 0.97})
    assert (idx.nprobe, idx.rerank, idx.tuning_["recall"]) == (3, 40, 0.97)


# ----------------------------------------------------------------- issue 9 hardening
def test_auto_ids_never_reused_after_delete_compact_and_reload(tmp_path, X):
    idx = FunnelIndex(dims=(8, 32), shortlist=(50,), nesting=NEST).add(X[:100])
    idx.delete([99]).compact().add(X[100:101])
    assert idx.ids_[-1] == 100 and idx.next_id_ == 101
    idx.delete([100]).compact()
    idx.save(tmp_path / "i")
    loaded = load_index(tmp_path / "i")
    assert json.loads((tmp_path / "i" / "manifest.json").read_text())["extra"]["next_id"] == 101
    loaded.add(X[101:103])
    assert loaded.ids_[-2:].tolist() == [101, 102]
    # explicit ids also advance the counter
    loaded.add(X[103:104], ids=[500]).add(X[104:105])
    assert loaded.ids_[-1] == 501


def _edit_params(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    for k, v in changes.items():
        if k == "PARAMS":
            m["extra"]["params"] = v
        else:
            m["extra"]["params"][k] = v
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "kind, changes, match",
    [
        ("funnel", {"bogus": 1}, r"unknown FunnelIndex parameters \['bogus'\]"),
        ("funnel", {"PARAMS": "x"}, "extra.params must be a JSON object"),
        ("funnel", {"hnsw_m": 0}, "invalid index parameters: hnsw_m must be a positive integer"),
        ("funnel", {"dims": [16, 32]}, "first stage on disk .* does not match"),
        ("funnel", {"dims": [8, 16]}, "last stage dim must be the full dimension 32"),
        ("funnel", {"prefix_dtype": "int8"}, "does not match the manifest's parameters"),
        ("funnel", {"first_stage": "hnsw"}, "does not match the manifest's parameters"),
        ("funnel", {"nesting": [8, 32]}, "differs from the manifest's nesting"),
        ("funnel", {"model_id": "other"}, "params model_id 'other' differs"),
        ("ivf", {"nlist": 4}, r"nlist 8 on disk vs 4"),
        ("ivf", {"d_search": 8}, r"d_search 16 on disk vs 8"),
        ("ivf", {"d_cluster": 16}, r"d_cluster 8 on disk vs 16"),
        ("ivf", {"codec": "sq8"}, r"codec IndexIVFFlat on disk vs IndexIVFScalarQuantizer"),
        ("ivf", {"nprobe": "x"}, "nprobe must be a positive integer"),
    ],
)
def test_edited_manifest_params_are_a_clean_error(tmp_path, X, kind, changes, match):
    if kind == "funnel":
        idx = FunnelIndex(dims=(8, 32), shortlist=(50,), nesting=NEST)
    else:
        idx = AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=8, nesting=NEST)
    idx.add(X).save(tmp_path / "i")
    _edit_params(tmp_path / "i", **changes)
    with pytest.raises(NestembError, match=match):
        load_index(tmp_path / "i", verify=False).search(X[:2], k=3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: FunnelIndex(dims=(8, 32), shortlist=(50,), first_stage="hnsw", hnsw_m=0),
         "hnsw_m must be a positive integer, got 0"),
        (lambda: FunnelIndex(dims=(8, 32), shortlist=(50,), first_stage="hnsw", hnsw_m=2**40),
         "hnsw_m must be at most 1024"),
        (lambda: FunnelIndex(dims=(8, 32), shortlist=(50,), first_stage="hnsw", ef_search=2**40),
         "ef_search must be at most 2147483647"),
        (lambda: FunnelIndex(dims=(8, 32), shortlist=(50,), ef_construction=2**31),
         "ef_construction must be at most"),
        (lambda: AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=2**40), "nlist must be at most"),
        (lambda: AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=4, nprobe=2**40),
         "nprobe must be at most"),
        (lambda: AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=4, codec="pq", code_bytes=4),
         "needs at least 256 training vectors, got 100"),
        (lambda: AdaptiveOPQIndex(d_search=32, code_bytes=8), "needs at least 256 training vectors"),
    ],
)
def test_faiss_facing_params_validated_before_faiss(X, make, match):
    with pytest.raises(NestembError, match=match):
        make().add(X[:100])
