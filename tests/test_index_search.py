"""Every index type against brute-force exact search on data with Matryoshka structure."""

from __future__ import annotations

import numpy as np
import pytest

from nestemb.index import (
    AdaptiveIVFIndex,
    AdaptiveOPQIndex,
    FunnelIndex,
    exact_search,
    recall_at_k,
    synthetic_matryoshka,
    tune,
)
from nestemb.nesting import prefix_view

N, D = 3000, 64
NEST = (8, 16, 32, 64)


@pytest.fixture(scope="module")
def data():
    X = synthetic_matryoshka(N, D, seed=0, decay=0.05)
    Q = synthetic_matryoshka(50, D, seed=1, decay=0.05)
    return X, Q, exact_search(X, Q, 10)


def test_exact_search_matches_numpy(data):
    X, Q, (s, r) = data
    full = prefix_view(Q, D) @ prefix_view(X, D).T
    ref = np.argsort(-full, axis=1)[:, :10]
    assert recall_at_k(r, ref) == 1.0
    np.testing.assert_allclose(s, np.take_along_axis(full, ref, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "binary"])
@pytest.mark.parametrize("first_stage", ["flat", "hnsw"])
def test_funnel_exact_when_shortlist_is_n(data, dtype, first_stage):
    X, Q, (s, r) = data
    idx = FunnelIndex(dims=(8, 32, 64), shortlist=(N, N), prefix_dtype=dtype,
                      first_stage=first_stage, nesting=NEST).add(X)
    scores, ids = idx.search(Q, k=10)
    assert ids.shape == (50, 10) and scores.dtype == np.float32
    assert recall_at_k(ids, r) == 1.0
    np.testing.assert_allclose(scores, s, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype,short,floor", [("float32", 200, 0.97), ("float16", 200, 0.97),
                                               ("int8", 200, 0.95), ("binary", 1000, 0.85)])
def test_funnel_high_recall_with_short_shortlist(data, dtype, short, floor):
    X, Q, (_, r) = data
    d0 = 32 if dtype == "binary" else 16
    idx = FunnelIndex(dims=(d0, D), shortlist=(short,), prefix_dtype=dtype, nesting=NEST).add(X)
    assert recall_at_k(idx.search(Q, k=10)[1], r) >= floor


def test_funnel_single_query_and_custom_ids(data):
    X, Q, (_, r) = data
    ids = np.arange(N) * 7 + 3
    idx = FunnelIndex(dims=(16, 64), shortlist=(300,)).add(X, ids=ids)
    s, i = idx.search(Q[0], k=5)
    assert i.shape == (1, 5)
    assert i[0].tolist() == (r[0, :5] * 7 + 3).tolist()
    sidx = FunnelIndex(dims=(16, 64), shortlist=(300,)).add(X[:100], ids=[f"d{j}" for j in range(100)])
    assert sidx.search(X[5], k=1)[1][0, 0] == "d5"


@pytest.mark.parametrize("codec", ["flat", "fp16", "sq8", "pq", "opq"])
def test_adaptive_ivf_all_lists_is_exact_on_prefix(data, codec):
    X, Q, (_, r) = data
    cb = 16 if codec in ("pq", "opq") else None
    idx = AdaptiveIVFIndex(d_cluster=8, d_search=32, nlist=16, nprobe=16, codec=codec,
                           code_bytes=cb, rerank=N, nesting=NEST).add(X)
    # every list visited + re-rank of everything = exact full-dimension search
    assert recall_at_k(idx.search(Q, k=10)[1], r) == 1.0
    idx.set_params(nprobe=8, rerank=100)
    assert recall_at_k(idx.search(Q, k=10)[1], r) >= 0.85


def test_adaptive_ivf_without_rerank_matches_prefix_search(data):
    X, Q, _ = data
    idx = AdaptiveIVFIndex(d_cluster=8, d_search=32, nlist=16, nprobe=16).add(X)
    ref = exact_search(X, Q, 10, dim=32)[1]
    assert recall_at_k(idx.search(Q, k=10)[1], ref) == 1.0


def test_adaptive_opq(data):
    X, Q, (_, r) = data
    idx = AdaptiveOPQIndex(d_search=32, code_bytes=8, rerank=200, nesting=NEST).add(X)
    assert recall_at_k(idx.search(Q, k=10)[1], r) >= 0.95
    assert idx.bytes_per_vector()["lists"] == 16.0


def test_incremental_add_delete_compact(data):
    X, Q, _ = data
    idx = FunnelIndex(dims=(16, 64), shortlist=(N,)).add(X[:2000])
    idx.add(X[2000:])
    assert len(idx) == N
    assert recall_at_k(idx.search(Q, k=10)[1], exact_search(X, Q, 10)[1]) == 1.0
    gone = idx.search(Q, k=3)[1][:, 0]
    gone = np.unique(gone)
    idx.delete(gone)
    assert len(idx) == N - len(gone)
    mask = np.isin(np.arange(N), gone)
    truth = exact_search(X, Q, 10, exclude=mask)[1]
    for index in (idx, idx.compact()):
        found = index.search(Q, k=10)[1]
        assert not np.isin(found, gone).any()
        assert recall_at_k(found, truth) == 1.0
    ivf = AdaptiveIVFIndex(d_cluster=8, d_search=32, nlist=8, nprobe=8, rerank=N).add(X)
    ivf.delete(gone)
    assert recall_at_k(ivf.search(Q, k=10)[1], truth) == 1.0
    assert recall_at_k(ivf.compact().search(Q, k=10)[1], truth) == 1.0


def test_tune_funnel_meets_target_and_records(data):
    X, Q, _ = data
    idx = FunnelIndex(dims=(8, 64), shortlist=(20,), nesting=NEST).add(X)
    res = tune(idx, Q, k=10, recall=0.98, max_queries=30)
    assert res["met"] and res["recall"] >= 0.98
    assert idx.tuning_["params"] == res["params"]
    assert list(idx.dims) == res["params"]["dims"]
    ex = tune(idx, Q, k=10, recall=0.98, max_queries=30, exhaustive=True)
    assert len(ex["candidates"]) > len(res["candidates"])


def test_tune_ivf(data):
    X, Q, _ = data
    idx = AdaptiveIVFIndex(d_cluster=8, d_search=32, nlist=16, nprobe=1, nesting=NEST).add(X)
    res = tune(idx, Q, k=10, recall=0.95, max_queries=30)
    assert res["met"] and idx.nprobe == res["params"]["nprobe"]


def test_single_query_path_matches_batch(data):
    X, Q, _ = data
    idx = FunnelIndex(dims=(8, 32, 64), shortlist=(300, 60), nesting=NEST).add(X)
    bs, bi = idx.search(Q, k=10)
    for i in range(5):
        s, r = idx.search(Q[i], k=10)
        np.testing.assert_array_equal(r[0], bi[i])
        np.testing.assert_allclose(s[0], bs[i], rtol=1e-5, atol=1e-6)
