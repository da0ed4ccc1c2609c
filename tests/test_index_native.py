"""The native (in-FAISS) funnel against the numpy path and exact brute-force search; mmapped
storage of the full vectors; fp16 full vectors; deletions; streaming builds; threads."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.index import (
    FunnelIndex,
    exact_search,
    knn_intersection,
    load_index,
    set_search_threads,
    synthetic_matryoshka,
)

N, D = 3000, 64
NEST = (8, 16, 32, 64)


@pytest.fixture(scope="module")
def data(matryoshka_data):
    return matryoshka_data(N, 40)


CONFIGS = [
    dict(dims=(16, 64), shortlist=(100,)),
    dict(dims=(16, 64), shortlist=(100,), prefix_dtype="float16"),
    dict(dims=(16, 64), shortlist=(200,), prefix_dtype="int8", int8_trim=0.001),
    dict(dims=(16, 64), shortlist=(100,), first_stage="hnsw", ef_search=32),
    dict(dims=(8, 32, 64), shortlist=(400, 60), prefix_dtype="int8", rescore_dtype="int8"),
    dict(dims=(16, 64, 64), shortlist=(300, 50), rescore_dtype="int8", first_stage="hnsw"),
    dict(dims=(16, 64), shortlist=(100,), full_dtype="float16"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_native_equals_numpy_path(data, cfg):
    X, Q, _ = data
    idx = FunnelIndex(**cfg, nesting=NEST).add(X)
    assert idx.is_native
    s_nat, i_nat = idx.search(Q, k=10)
    idx.set_params(native=False)
    assert not idx.is_native
    s_np, i_np = idx.search(Q, k=10)
    # same candidates -> same top-k (ties aside: compare sets and scores)
    assert knn_intersection(i_nat, i_np) >= 0.995
    np.testing.assert_allclose(s_nat, s_np, atol=2e-5)
    # one query at a time equals the batch
    for i in range(3):
        assert idx.set_params(native=True).search(Q[i], k=10)[1][0].tolist() == i_nat[i].tolist()


@pytest.mark.parametrize("cfg", [
    dict(dims=(8, 64), prefix_dtype="float32"),
    dict(dims=(8, 64), prefix_dtype="int8"),
    dict(dims=(8, 64), prefix_dtype="float32", first_stage="hnsw"),
    dict(dims=(8, 32, 64), prefix_dtype="int8", rescore_dtype="int8"),
    dict(dims=(64, 64, 64), prefix_dtype="binary", rescore_dtype="int8"),
])
def test_exact_when_shortlist_is_n(data, cfg):
    X, Q, (s, r) = data
    sl = (N,) if len(cfg["dims"]) == 2 else (N, N)
    idx = FunnelIndex(**cfg, shortlist=sl, nesting=NEST).add(X)
    scores, ids = idx.search(Q, k=10)
    assert knn_intersection(ids, r) == 1.0
    np.testing.assert_allclose(scores, s, rtol=1e-4, atol=1e-5)


def test_fp16_full_vectors_recall_effect(data):
    X, Q, (s, r) = data
    f32 = FunnelIndex(dims=(16, 64), shortlist=(N,), nesting=NEST).add(X)
    f16 = FunnelIndex(dims=(16, 64), shortlist=(N,), full_dtype="float16", nesting=NEST).add(X)
    s16, i16 = f16.search(Q, k=10)
    assert knn_intersection(i16, r) >= 0.99  # fp16 rounding swaps at most near-ties
    assert np.abs(s16 - s).max() < 2e-3 and np.abs(f32.search(Q, k=10)[0] - s).max() < 1e-5
    assert f16.bytes_per_vector()["parts"]["full_fp16"] == 2 * D


def test_deletions_stay_native_and_exact(data):
    X, Q, _ = data
    idx = FunnelIndex(dims=(8, 64), shortlist=(N,), nesting=NEST).add(X)
    gone = exact_search(X, Q, 10)[1][:, :3].ravel()  # delete true neighbours
    gone = np.unique(gone)
    idx.delete(gone)
    mask = np.zeros(N, bool)
    mask[gone] = True
    truth = exact_search(X, Q, 10, exclude=mask)[1]
    assert idx.is_native
    found = idx.search(Q, k=10)[1]
    assert knn_intersection(found, truth) == 1.0 and not np.isin(found, gone).any()
    short = idx.set_params(shortlist=(200,)).search(Q, k=10)[1]
    assert not np.isin(short, gone).any()
    np_path = idx.set_params(native=False).search(Q, k=10)[1]
    assert knn_intersection(short, np_path) >= 0.995
    idx.set_params(native=True, first_stage="hnsw")
    assert not np.isin(idx.search(Q, k=10)[1], gone).any()


def test_save_load_mmap_single_copy(tmp_path, data):
    X, Q, _ = data
    idx = FunnelIndex(dims=(16, 64), shortlist=(200,), prefix_dtype="int8", nesting=NEST).add(X)
    before = idx.search(Q, k=10)
    assert idx.bytes_per_vector()["mmap"] == 0  # in memory: all resident
    p = idx.save(tmp_path / "i")
    assert not (p / "vectors.npy").exists()  # the full vectors are stored once, in full.faiss
    loaded = load_index(p)
    assert isinstance(loaded.vectors_, np.memmap) and str(loaded.vectors_.filename).endswith("full.faiss")
    # vectors_ is the same file region FAISS maps: it equals the refine index's storage
    np.testing.assert_array_equal(np.asarray(loaded.vectors_[5]), loaded.full_.reconstruct(5))
    np.testing.assert_allclose(np.linalg.norm(loaded.vectors_[:100], axis=1), 1, rtol=1e-5)
    after = loaded.search(Q, k=10)
    np.testing.assert_array_equal(before[1], after[1])
    m = loaded.bytes_per_vector()
    assert m["mmap"] == 4 * D and m["resident"] == 16 + 8 + 1
    # exact search and not mapped loading agree
    unmapped = load_index(p, mmap=False)
    np.testing.assert_array_equal(unmapped.search(Q, k=10)[1], before[1])
    assert unmapped.bytes_per_vector()["mmap"] == 0
    # adding after load copies into memory (logged), then saves and reloads
    loaded.add(X[:5] * 2, ids=np.arange(N, N + 5))
    assert len(loaded) == N + 5 and loaded.search(X[0], k=1)[1][0, 0] in (0, N)
    again = load_index(loaded.save(tmp_path / "i", overwrite=True))
    assert len(again) == N + 5 and again.search(Q, k=10)[1].tolist() == loaded.search(Q, k=10)[1].tolist()


def test_save_load_fp16_and_rescore(tmp_path, data):
    X, Q, _ = data
    idx = FunnelIndex(dims=(32, 64, 64), shortlist=(400, 50), prefix_dtype="binary",
                      rescore_dtype="int8", full_dtype="float16", nesting=NEST).add(X)
    before = idx.search(Q, k=10)
    loaded = load_index(idx.save(tmp_path / "i"))
    after = loaded.search(Q, k=10)
    np.testing.assert_array_equal(before[1], after[1])
    m = loaded.bytes_per_vector()
    assert m["mmap"] == 2 * D + 4 * D and m["parts"]["rescore"] == 64


def test_streaming_build_from_memmap_and_path(tmp_path, data, monkeypatch):
    X, Q, _ = data
    p = tmp_path / "g.npy"
    np.save(p, X)
    import nestemb.io as io

    monkeypatch.setattr(io, "CHUNK_BYTES", 1)  # blocks of the smallest size, 1,024 rows
    assert len(X) > 2 * io.chunk_rows(X.shape[1])  # several blocks
    big = np.load(p, mmap_mode="r")
    a = FunnelIndex(dims=(16, 64), shortlist=(100,), nesting=NEST).add(str(p))
    b = FunnelIndex(dims=(16, 64), shortlist=(100,), nesting=NEST).add(X)
    assert a.search(Q, k=10)[1].tolist() == b.search(Q, k=10)[1].tolist()
    bad = np.array(big)
    bad[1500, 3] = np.nan
    np.save(p, bad)
    with pytest.raises(NestembError, match="NaN"):
        FunnelIndex(dims=(16, 64), shortlist=(100,), nesting=NEST).add(p)


def test_large_memmap_is_not_copied(tmp_path, monkeypatch):
    """An input above the streaming threshold is stored chunk by chunk, never made contiguous
    whole (check_vectors is not called on it)."""
    import nestemb.index.base as base

    n, d = 70000, 64  # 4.48M floats > the 4M-float threshold
    p = tmp_path / "big.npy"
    arr = np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(n, d))
    for a in range(0, n, 10000):
        arr[a:a + 10000] = synthetic_matryoshka(10000, d, seed=a)
    arr.flush()
    del arr
    seen = []
    real = base.check_vectors
    monkeypatch.setattr(base, "check_vectors", lambda x, **kw: seen.append(np.shape(x)) or real(x, **kw))
    idx = FunnelIndex(dims=(16, 64), shortlist=(50,), nesting=NEST).add(p)
    assert len(idx) == n and not [s for s in seen if s and s[0] == n]
    X = np.load(p, mmap_mode="r")
    assert idx.search(X[123], k=1)[1][0, 0] == 123


def test_search_threads_clamped_with_warning(caplog):
    import os

    with caplog.at_level(logging.WARNING, logger="nestemb.index"):
        assert set_search_threads(10 ** 6) == (os.cpu_count() or 1)
    assert "cores" in caplog.text
    assert set_search_threads(1) == 1
    with pytest.raises(NestembError, match="threads"):
        set_search_threads(-2)


def test_missing_faiss_class_is_a_clear_error(monkeypatch):
    import faiss

    from nestemb.index import quantize as qz

    monkeypatch.delattr(faiss, "IndexBinaryHNSW")
    with pytest.raises(NestembError, match="IndexBinaryHNSW"):
        qz.make_stage(32, "binary", "hnsw")


def test_bad_new_params():
    with pytest.raises(NestembError, match="rescore_dtype"):
        FunnelIndex(dims=(8, 64), shortlist=(10,), rescore_dtype="int4")
    with pytest.raises(NestembError, match="three stage dims"):
        FunnelIndex(dims=(8, 64), shortlist=(10,), rescore_dtype="int8")
    with pytest.raises(NestembError, match="full_dtype"):
        FunnelIndex(dims=(8, 64), shortlist=(10,), full_dtype="int8")
    with pytest.raises(NestembError, match="int8_trim"):
        FunnelIndex(dims=(8, 64), shortlist=(10,), int8_trim=0.6)
    with pytest.raises(NestembError, match="native"):
        FunnelIndex(dims=(8, 64), shortlist=(10,), native="yes")
