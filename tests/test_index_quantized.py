"""Quantized first stages (int8 with trimmed ranges, binary + int8 rescoring) against exact
search, the distance-gap diagnostics on a hand-computed case, and tune on the new grid."""

from __future__ import annotations

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.index import FunnelIndex, exact_search, knn_intersection, tune
from nestemb.index import quantize as qz
from nestemb.index.diagnostics import gap_statistics, stage_scores

N, D = 4000, 64
NEST = (8, 16, 32, 64)


@pytest.fixture(scope="module")
def data(matryoshka_data):
    return matryoshka_data(N, 200)


def test_gap_statistics_hand_computed():
    # query (1, 0, 0, 0); gallery rows whose 2-d prefix cosines with it are 1.0, 0.9 ... 0.3
    cos = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    X = np.zeros((8, 4), dtype=np.float32)
    X[:, 0], X[:, 1] = cos, np.sqrt(1 - cos**2)
    X[:, 2] = 0.5 * np.arange(8)  # trailing dims: the full-dim ranking differs from the prefix
    q = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    g = gap_statistics(X, q, 2, "float32", k=2, ranks=(4, 6), shortlists=(1, 2, 3, 8))
    assert g.gaps[4][0] == pytest.approx(0.9 - 0.7, abs=1e-6)
    assert g.gaps[6][0] == pytest.approx(0.9 - 0.5, abs=1e-6)
    assert g.score_error[0] < 1e-6  # float32 codes: no quantization error
    # full-dim scores: cos_i / sqrt(1 + (0.5 i)^2) -> rows 0 (1.0) and 1 (0.9/1.118=0.805)
    assert exact_search(X, q, 2)[1][0].tolist() == [0, 1]
    assert g.survival == {1: 0.5, 2: 1.0, 3: 1.0, 8: 1.0}
    s = g.summary()
    assert s["holds_at"] == {4: 1.0, 6: 1.0} and s["median_gap"][4] == pytest.approx(0.2, abs=1e-6)
    # binary codes of the 2-d prefix: row 0 is (1, 0) like the query (score 2), rows 1..7 are
    # (1, 1) (score 0). Affine fit over the exact top 4 (1, .9, .8, .7): row 0 -> 1.0, rows
    # 1..3 -> their mean .8; residuals (0, .1, 0, -.1), RMS sqrt(.02 / 4)
    gb = gap_statistics(X, q, 2, "binary", k=2, ranks=(4,), shortlists=(2,))
    assert gb.score_error[0] == pytest.approx(np.sqrt(0.02 / 4), abs=1e-6)
    assert gb.summary()["holds_at"] == {4: 1.0}  # gap .2 > 2 x .0707
    with pytest.raises(NestembError, match="ranks"):
        gap_statistics(X, q, 2, k=2, ranks=(2,))


def test_gap_statistics_explains_int8_vs_binary(data):
    X, Q, _ = data
    stats = {t: gap_statistics(X[:2000], Q[:30], 8, t, k=10, ranks=(50,), shortlists=(50, 400))
             for t in ("float32", "int8", "binary")}
    err = {t: float(np.median(s.score_error)) for t, s in stats.items()}
    assert err["float32"] < 1e-5 < err["int8"] < err["binary"]
    surv = {t: s.survival[50] for t, s in stats.items()}
    assert surv["binary"] < surv["int8"] - 0.05 and abs(surv["int8"] - surv["float32"]) < 0.03
    # the stage scores are those of the FAISS stage: int8 decoded codes, float32 exact
    exact = stage_scores(X[:50], Q[:2], 8, "float32")
    assert np.abs(stage_scores(X[:50], Q[:2], 8, "int8") - exact).max() < 0.05


def test_int8_trimmed_range_learns_quantiles(data):
    """int8_trim: per-dimension [q, 1 - q] quantile ranges, for flat and HNSW int8 stages."""
    X, _, _ = data
    from nestemb.nesting import prefix_view

    P = prefix_view(X, 16)
    P[0, 0] = 50.0  # one outlier stretches the min/max range of dimension 0
    plain, trimmed = qz.make_sq8(16), qz.make_sq8(16)
    qz.train_sq8(plain, P)
    qz.train_sq8(trimmed, P, trim=0.001)
    again = qz.make_sq8(16)
    qz.train_sq8(again, P, trim=0.001)  # deterministic (FAISS's RS_quantiles was not)
    assert qz.sq8_tables(again)[0].tolist() == qz.sq8_tables(trimmed)[0].tolist()
    vmin_p, step_p = qz.sq8_tables(plain)
    vmin_t, step_t = qz.sq8_tables(trimmed)
    assert step_p[0] * 255 > 49 and step_t[0] < step_p[0] / 10
    lo, hi = np.quantile(P[:, 1], [0.001, 0.999])
    assert vmin_t[1] == pytest.approx(lo, abs=1e-5) and vmin_t[1] + 255 * step_t[1] == pytest.approx(hi, abs=1e-5)
    h = qz.make_stage(16, "int8", "hnsw", hnsw_m=8)
    qz.train_sq8(h, P, trim=0.001)
    qz.train_add(h, P[:500], "int8")
    assert h.ntotal == 500 and h.search(P[:1], 1)[1][0, 0] == 0


@pytest.mark.parametrize("native", [True, False])
def test_binary_then_int8_rescoring_against_exact(data, native):
    X, Q, (s, r) = data
    idx = FunnelIndex(dims=(16, 64, 64), shortlist=(2000, 100), prefix_dtype="binary",
                      rescore_dtype="int8", native=native, nesting=NEST).add(X)
    assert not idx.is_native  # binary codes: FAISS call + one numpy call per stage
    found = idx.search(Q, k=10)[1]
    assert knn_intersection(found, r) >= 0.95
    # int8 rescoring to 100 holds: the same as re-ranking all 2000 in float32
    floats = FunnelIndex(dims=(16, 64), shortlist=(2000,), prefix_dtype="binary", nesting=NEST).add(X)
    assert knn_intersection(found, r) >= knn_intersection(floats.search(Q, k=10)[1], r) - 0.01
    # while binary codes alone at the final budget of 100 lose most of the top 10
    alone = FunnelIndex(dims=(16, 64), shortlist=(100,), prefix_dtype="binary", nesting=NEST).add(X)
    assert knn_intersection(found, r) > knn_intersection(alone.search(Q, k=10)[1], r) + 0.2
    # int8 rescoring scores equal the FAISS int8 decoding (same as the native middle stage)
    sc, rows = idx._rescore_int8(Q[:3], np.tile(np.arange(20), (3, 1)), 20)
    dec = idx.rescore_.reconstruct_n(0, 20)  # FAISS's own decoding of the int8 codes
    from nestemb.nesting import prefix_view
    ref = prefix_view(Q[:3], 64) @ dec.T
    np.testing.assert_allclose(sc, np.take_along_axis(ref, rows, 1), atol=1e-5)


def test_int8_first_stage_with_rescoring_native_matches_exact_at_n(data):
    X, Q, (s, r) = data
    idx = FunnelIndex(dims=(16, 32, 64), shortlist=(N, N), prefix_dtype="int8",
                      rescore_dtype="int8", int8_trim=0.001, nesting=NEST).add(X)
    assert idx.is_native
    assert knn_intersection(idx.search(Q, k=10)[1], r) == 1.0


def test_tune_on_new_grid_holds_on_held_out_queries(data):
    X, Q, _ = data
    X = X[:2000]
    idx = FunnelIndex(dims=(8, 64), shortlist=(100,), nesting=NEST).add(X)
    grid = idx.candidate_grid(k=10, max_candidates=1000)
    kinds = {(g[0]["prefix_dtype"], g[0].get("rescore_dtype")) for g in grid}
    assert {("float32", None), ("int8", None), ("binary", "int8")} <= kinds
    tune_q, held = Q[:60], Q[60:]
    some = [g for g in grid if g[0]["dims"][0] == 16 or g[0]["prefix_dtype"] == "binary"]
    res = tune(idx, tune_q, k=10, recall=0.95, groups=some)
    assert res["met"]
    held_recall = knn_intersection(idx.search(held, k=10)[1], idx.search_exact(held, k=10)[1])
    assert held_recall >= 0.95 - 0.02  # the target is 0.005 on 1M benchmark queries
    # the binary + int8 group alone also reaches the target (with long enough shortlists)
    binary = [g for g in idx.candidate_grid(k=10) if g[0]["prefix_dtype"] == "binary"
              and g[0]["dims"][0] == 32]
    res_b = tune(idx, tune_q, k=10, recall=0.95, groups=binary)
    assert res_b["met"] and res_b["params"]["rescore_dtype"] == "int8"
    held_b = knn_intersection(idx.search(held, k=10)[1], idx.search_exact(held, k=10)[1])
    assert held_b >= 0.95 - 0.02


def test_rabitq_first_stage_native_and_exact(data, tmp_path):
    from nestemb.index import load_index

    X, Q, (s, r) = data
    idx = FunnelIndex(dims=(32, 64), shortlist=(N,), prefix_dtype="rabitq", nesting=NEST).add(X)
    assert idx.is_native
    assert knn_intersection(idx.search(Q, k=10)[1], r) == 1.0
    idx.set_params(shortlist=(300,))
    nat = idx.search(Q, k=10)[1]
    assert knn_intersection(nat, r) >= 0.85
    assert knn_intersection(idx.set_params(native=False).search(Q, k=10)[1], nat) >= 0.995
    binary = FunnelIndex(dims=(32, 64), shortlist=(300,), prefix_dtype="binary", nesting=NEST).add(X)
    assert knn_intersection(nat, r) > knn_intersection(binary.search(Q, k=10)[1], r)
    loaded = load_index(idx.save(tmp_path / "r"))
    assert loaded.search(Q, k=10)[1].tolist() == idx.search(Q, k=10)[1].tolist()
    assert loaded.bytes_per_vector()["parts"]["first_stage"] == 32 // 8 + 8
    with pytest.raises(NestembError, match="flat"):
        FunnelIndex(dims=(32, 64), shortlist=(10,), prefix_dtype="rabitq", first_stage="hnsw").add(X)
