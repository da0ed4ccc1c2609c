"""Every index type against brute-force exact search on data with Matryoshka structure."""

from __future__ import annotations

import numpy as np
import pytest

from nestemb.index import (
    AdaptiveIVFIndex,
    AdaptiveOPQIndex,
    FunnelIndex,
    exact_search,
    knn_intersection,
    synthetic_matryoshka,
    tune,
)
from nestemb.nesting import prefix_view

N, D = 3000, 64
NEST = (8, 16, 32, 64)


@pytest.fixture(scope="module")
def data(matryoshka_data):
    return matryoshka_data(N, 50)


def test_exact_search_matches_numpy(data):
    X, Q, (s, r) = data
    full = prefix_view(Q, D) @ prefix_view(X, D).T
    ref = np.argsort(-full, axis=1)[:, :10]
    assert knn_intersection(r, ref) == 1.0
    np.testing.assert_allclose(s, np.take_along_axis(full, ref, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "binary"])
@pytest.mark.parametrize("first_stage", ["flat", "hnsw"])
def test_funnel_exact_when_shortlist_is_n(data, dtype, first_stage):
    X, Q, (s, r) = data
    idx = FunnelIndex(dims=(8, 32, 64), shortlist=(N, N), prefix_dtype=dtype,
                      first_stage=first_stage, nesting=NEST).add(X)
    scores, ids = idx.search(Q, k=10)
    assert ids.shape == (50, 10) and scores.dtype == np.float32
    assert knn_intersection(ids, r) == 1.0
    np.testing.assert_allclose(scores, s, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype,short,floor", [("float32", 200, 0.97), ("float16", 200, 0.97),
                                               ("int8", 200, 0.95), ("binary", 1000, 0.85)])
def test_funnel_high_recall_with_short_shortlist(data, dtype, short, floor):
    X, Q, (_, r) = data
    d0 = 32 if dtype == "binary" else 16
    idx = FunnelIndex(dims=(d0, D), shortlist=(short,), prefix_dtype=dtype, nesting=NEST).add(X)
    assert knn_intersection(idx.search(Q, k=10)[1], r) >= floor


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
    assert knn_intersection(idx.search(Q, k=10)[1], r) == 1.0
    idx.set_params(nprobe=8, rerank=100)
    assert knn_intersection(idx.search(Q, k=10)[1], r) >= 0.85


def test_adaptive_ivf_without_rerank_matches_prefix_search(data):
    X, Q, _ = data
    idx = AdaptiveIVFIndex(d_cluster=8, d_search=32, nlist=16, nprobe=16).add(X)
    ref = exact_search(X, Q, 10, dim=32)[1]
    assert knn_intersection(idx.search(Q, k=10)[1], ref) == 1.0


def test_adaptive_opq(data):
    X, Q, (_, r) = data
    idx = AdaptiveOPQIndex(d_search=32, code_bytes=8, rerank=200, nesting=NEST).add(X)
    assert knn_intersection(idx.search(Q, k=10)[1], r) >= 0.95
    assert idx.bytes_per_vector()["parts"]["lists"] == 16.0  # 8 code bytes + 8 id bytes


def test_incremental_add_delete_compact(data):
    X, Q, _ = data
    idx = FunnelIndex(dims=(16, 64), shortlist=(N,)).add(X[:2000])
    idx.add(X[2000:])
    assert len(idx) == N
    assert knn_intersection(idx.search(Q, k=10)[1], exact_search(X, Q, 10)[1]) == 1.0
    gone = idx.search(Q, k=3)[1][:, 0]
    gone = np.unique(gone)
    idx.delete(gone)
    assert len(idx) == N - len(gone)
    mask = np.isin(np.arange(N), gone)
    truth = exact_search(X, Q, 10, exclude=mask)[1]
    for index in (idx, idx.compact()):
        found = index.search(Q, k=10)[1]
        assert not np.isin(found, gone).any()
        assert knn_intersection(found, truth) == 1.0
    ivf = AdaptiveIVFIndex(d_cluster=8, d_search=32, nlist=8, nprobe=8, rerank=N).add(X)
    ivf.delete(gone)
    assert knn_intersection(ivf.search(Q, k=10)[1], truth) == 1.0
    assert knn_intersection(ivf.compact().search(Q, k=10)[1], truth) == 1.0


def test_tune_funnel_meets_target_and_records(data):
    X, Q, _ = data
    idx = FunnelIndex(dims=(8, 64), shortlist=(20,), nesting=NEST).add(X)
    res = tune(idx, Q, k=10, recall=0.98, max_queries=30)
    # measured here, independently of what tune reports
    measured = knn_intersection(idx.search(Q[:30], k=10)[1], exact_search(X, Q[:30], 10)[1])
    assert res["met"] is True and measured >= 0.98
    assert measured == pytest.approx(res["recall"])
    assert idx.tuning_ == res and idx.get_params()["dims"] == res["params"]["dims"]
    ex = tune(idx, Q, k=10, recall=0.98, max_queries=30, exhaustive=True)
    assert len(ex["candidates"]) > len(res["candidates"])


def test_tune_ivf(data):
    X, Q, _ = data
    idx = AdaptiveIVFIndex(d_cluster=8, d_search=32, nlist=16, nprobe=1, nesting=NEST).add(X)
    res = tune(idx, Q, k=10, recall=0.95, max_queries=30)
    measured = knn_intersection(idx.search(Q[:30], k=10)[1], exact_search(X, Q[:30], 10)[1])
    assert res["met"] is True and measured >= 0.95
    assert measured == pytest.approx(res["recall"])
    assert idx.nprobe == res["params"]["nprobe"]


def test_tune_unreachable_target_reports_not_met(data):
    X, Q, _ = data
    # one list, no re-rank: in-list scores on a 16-d prefix can never reach exact 64-d top-10
    idx = AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=1, nesting=NEST).add(X)
    res = tune(idx, Q, k=10, recall=1.0, max_queries=20,
               groups=[[{"nprobe": 1, "rerank": None}]])
    measured = knn_intersection(idx.search(Q[:20], k=10)[1], exact_search(X, Q[:20], 10)[1])
    assert res["met"] is False and measured < 1.0 and measured == pytest.approx(res["recall"])


def test_hnsw_first_stage_shortlist_far_below_n():
    n, d0 = 5000, 32
    X = synthetic_matryoshka(n, D, seed=0, decay=0.05)
    Q = synthetic_matryoshka(50, D, seed=1, decay=0.05)
    # the graph alone, on the prefix: its top-20 against exact top-20 of the 32-d views
    graph = FunnelIndex(dims=(d0,), shortlist=(), first_stage="hnsw", ef_search=64)
    graph.add(np.ascontiguousarray(X[:, :d0]))
    agree = knn_intersection(graph.search(Q[:, :d0], k=20)[1], exact_search(X, Q, 20, dim=d0)[1])
    assert 0.93 <= agree
    # shortlist of 20 out of 5000 (0.4 %), re-ranked at full dimension, against exact search
    idx = FunnelIndex(dims=(d0, D), shortlist=(20,), first_stage="hnsw", ef_search=64).add(X)
    truth = exact_search(X, Q, 10)[1]
    assert knn_intersection(idx.search(Q, k=10)[1], truth) >= 0.93
    # single-query path and deletions keep to the same answer
    gone = truth[:5, 0]
    idx.delete(gone)
    found = np.concatenate([idx.search(q, k=10)[1] for q in Q])
    assert not np.isin(found, gone).any()
    live = np.ones(n, bool)
    live[gone] = False
    assert knn_intersection(found, exact_search(X, Q, 10, exclude=~live)[1]) >= 0.93


def test_hnsw_grid_steps_ef_finely_and_tune_lands_near_the_sweep_best():
    X = synthetic_matryoshka(3000, D, seed=0, decay=0.05)
    Q = synthetic_matryoshka(200, D, seed=1, decay=0.05)
    idx = FunnelIndex(dims=(16, D), shortlist=(20,), first_stage="hnsw", hnsw_m=8).add(X)
    grid = idx.candidate_grid(k=10, max_candidates=160)
    for group in grid:  # within a shortlist, ef grows by at most sqrt(2) (rounding aside)
        efs = [c["ef_search"] for c in group]
        assert efs == sorted(set(efs)) and all(b <= a * 1.5 for a, b in zip(efs, efs[1:]))
    # the walk stops at the first ef meeting the target: that ef is the smallest meeting it
    res = tune(idx, Q, k=10, recall=0.95, groups=grid)
    chosen = res["params"]
    group = next(g for g in grid if g[0]["shortlist"] == tuple(chosen["shortlist"]))
    below = [c for c in group if c["ef_search"] < chosen["ef_search"]]
    truth = exact_search(X, Q[:200], 10)[1]
    for c in below:
        idx.set_params(**c)
        assert knn_intersection(idx.search(Q[:200], k=10)[1], truth) < 0.95


def test_tune_measures_close_calls_on_every_query():
    X = synthetic_matryoshka(3000, D, seed=0, decay=0.05)
    Q = synthetic_matryoshka(600, D, seed=1, decay=0.05)
    idx = FunnelIndex(dims=(16, D), shortlist=(20,), first_stage="hnsw", hnsw_m=8).add(X)
    res = tune(idx, Q, k=10, recall=0.95, exhaustive=True, max_queries=500, screen_queries=100,
               groups=idx.candidate_grid(k=10, max_candidates=160))
    assert res["n_queries"] == 500 and res["screen_queries"] == 100
    truth = exact_search(X, Q[:500], 10)[1]
    extended = 0
    for c in res["candidates"]:
        idx.set_params(**c["params"])
        found = idx.search(Q[:500], k=10)[1]
        # per-query recall of the first 100 queries, computed here: is 0.95 within 2 SE?
        hits = np.array([len(set(f) & set(t)) / 10 for f, t in zip(found[:100], truth[:100])])
        se = hits.std(ddof=1) / np.sqrt(100)
        close = hits.mean() - 2 * se < 0.95 <= hits.mean() + 2 * se
        n = 500 if close else 100
        assert c["n_queries"] == n
        assert c["recall"] == pytest.approx(knn_intersection(found[:n], truth[:n]))
        extended += close
    assert 0 < extended < len(res["candidates"])  # some decided on 100 queries, some on 500
    assert res["n_settled"] == extended


@pytest.mark.parametrize("make", [
    lambda: FunnelIndex(dims=(16, 32, 64), shortlist=(300, 100), prefix_dtype="int8", nesting=NEST),
    lambda: AdaptiveIVFIndex(d_cluster=8, d_search=32, nlist=16, nprobe=16, rerank=N, nesting=NEST),
    lambda: AdaptiveOPQIndex(d_search=16, code_bytes=4, nlist=4, nprobe=4, rerank=N, train_size=500,
                             nesting=NEST),
])
def test_train_then_add_uses_the_trained_structures(data, make, caplog):
    X, Q, (_, r) = data
    idx = make()
    with caplog.at_level("INFO", logger="nestemb.index"):
        idx.train(X[:1000])
        assert idx.is_trained and len(idx) == 0
        learned = faiss_bytes(idx)
        idx.add(X[:1500]).add(X[1500:])
    assert not [m for m in caplog.messages if "training on the first batch" in m]
    assert faiss_bytes(idx) == learned  # add did not retrain
    found = idx.search(Q, k=10)[1]
    assert knn_intersection(found, r) >= (0.95 if isinstance(idx, FunnelIndex) else 1.0)
    assert knn_intersection(idx.search_exact(Q, k=10)[1], r) == 1.0


def test_add_untrained_trains_and_logs(data, caplog):
    X, Q, (_, r) = data
    with caplog.at_level("INFO", logger="nestemb.index"):
        idx = AdaptiveIVFIndex(d_cluster=8, d_search=64, nlist=8, nprobe=8).add(X)
    assert any("training on the first batch of 3000 vectors" in m for m in caplog.messages)
    assert knn_intersection(idx.search(Q, k=10)[1], r) == 1.0


def faiss_bytes(idx):
    """What training learned, as bytes: int8 ranges / coarse centroids / OPQ rotation."""
    import faiss

    if isinstance(idx, FunnelIndex):
        return faiss.vector_to_array(idx.stage_.sq.trained).tobytes()
    out = faiss.vector_to_array(faiss.downcast_index(idx.quantizer_).codes).tobytes()
    if idx.codec == "opq":
        out += faiss.vector_to_array(idx.opq_.A).tobytes()
    return out


def test_memory_report_has_one_scheme(data, tmp_path):
    from nestemb.index import load_index

    X, _, _ = data
    indexes = [
        FunnelIndex(dims=(16, 64), shortlist=(50,), prefix_dtype="binary", nesting=NEST),
        FunnelIndex(dims=(16, 64), shortlist=(50,), first_stage="hnsw", nesting=NEST),
        AdaptiveIVFIndex(d_cluster=8, d_search=32, nlist=16, codec="fp16", nesting=NEST),
        AdaptiveOPQIndex(d_search=16, code_bytes=4, train_size=500, nesting=NEST),
    ]
    for j, idx in enumerate(indexes):
        m = idx.add(X).bytes_per_vector()
        assert set(m) == {"resident", "mmap", "total", "parts"}, type(idx)
        # built in memory: the full vectors are resident; after save + load they are mapped
        assert m["mmap"] == 0 and m["parts"]["vectors"] == 4 * D
        assert m["total"] == pytest.approx(sum(m["parts"].values()))
        loaded = load_index(idx.save(tmp_path / str(j))).bytes_per_vector()
        assert loaded["mmap"] == loaded["parts"]["vectors"] == 4 * D
        assert loaded["resident"] == pytest.approx(m["resident"] - 4 * D, rel=0.01)
        m = loaded
        assert m["resident"] == pytest.approx(m["total"] - m["mmap"])
        assert m["parts"]["ids"] == 8 and m["parts"]["deleted"] == 1
    binary, hnsw, fp16, opq = (i.bytes_per_vector()["parts"] for i in indexes)
    assert binary["first_stage"] == 2 and "hnsw_links" not in binary
    assert hnsw["first_stage"] == 64 and hnsw["hnsw_links"] > 4 * 32  # >= 2M int32 on level 0
    assert fp16["lists"] == 2 * 32 + 8 and opq["lists"] == 4 + 8


def test_single_query_path_matches_batch(data):
    X, Q, _ = data
    idx = FunnelIndex(dims=(8, 32, 64), shortlist=(300, 60), nesting=NEST).add(X)
    bs, bi = idx.search(Q, k=10)
    for i in range(5):
        s, r = idx.search(Q[i], k=10)
        np.testing.assert_array_equal(r[0], bi[i])
        np.testing.assert_allclose(s[0], bs[i], rtol=1e-5, atol=1e-6)
