"""Property-based fuzzing of every public index entry point (run in a subprocess by
``tests/test_fuzz.py``, so that a native crash fails that test instead of killing the suite).

Contract: whatever the parameters, vectors, ids and k, a call either raises ``NestembError`` or
returns a well-formed answer; a configuration that is exact by construction must equal
brute-force search.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nestemb.errors import NestembError
from nestemb.exact import exact_search, knn_intersection
from nestemb.index import AdaptiveIVFIndex, AdaptiveOPQIndex, FunnelIndex, load_index
from nestemb.index.synthetic import synthetic_matryoshka

DIM = 32
# Mostly plausible values, plus the kinds of wrong value a user passes.
ANY_INT = st.one_of(st.integers(-2, 70), st.sampled_from([0, 1, 2**40]), st.floats(allow_nan=True),
                    st.text(max_size=2), st.none())
DIMS = st.one_of(st.lists(st.sampled_from([-1, 0, 4, 8, 16, 32, 33]), max_size=3), st.text(max_size=3))
PARAMS = {
    FunnelIndex: {
        "dims": DIMS, "shortlist": st.lists(ANY_INT, max_size=3),
        "prefix_dtype": st.sampled_from(["float32", "float16", "int8", "binary", "int4", ""]),
        "first_stage": st.sampled_from(["flat", "hnsw", "ivf"]), "hnsw_m": ANY_INT,
        "ef_construction": ANY_INT, "ef_search": ANY_INT, "train_size": ANY_INT,
    },
    AdaptiveIVFIndex: {
        "d_cluster": ANY_INT, "d_search": ANY_INT, "nlist": ANY_INT, "nprobe": ANY_INT,
        "codec": st.sampled_from([None, "flat", "fp16", "sq8", "pq", "opq", "zip"]),
        "code_bytes": ANY_INT, "rerank": ANY_INT, "train_size": ANY_INT,
    },
    AdaptiveOPQIndex: {
        "d_cluster": ANY_INT, "d_search": ANY_INT, "nlist": ANY_INT, "nprobe": ANY_INT,
        "code_bytes": ANY_INT, "rerank": ANY_INT, "train_size": ANY_INT,
    },
}


VALID = {
    FunnelIndex: lambda: st.sampled_from([(8, DIM), (4, 16, DIM), (DIM,)]).flatmap(
        lambda dims: st.fixed_dictionaries({
            "dims": st.just(dims),
            "shortlist": st.lists(st.one_of(st.just(400), st.integers(1, 400)),
                                  min_size=len(dims) - 1, max_size=len(dims) - 1),
            "prefix_dtype": st.sampled_from(["float32", "float32", "float16", "int8", "binary"]),
            "first_stage": st.sampled_from(["flat", "flat", "hnsw"]),
            "hnsw_m": st.integers(2, 32), "ef_search": st.integers(1, 128)})),
    AdaptiveIVFIndex: lambda: st.integers(1, 16).flatmap(lambda nlist: st.fixed_dictionaries({
        "d_cluster": st.sampled_from([4, 8, 16, DIM]), "d_search": st.sampled_from([8, 16, DIM]),
        "nlist": st.just(nlist), "nprobe": st.integers(1, nlist),  # nprobe > nlist is refused
        "codec": st.sampled_from(["flat", "fp16", "sq8"]),
        "rerank": st.one_of(st.none(), st.integers(1, 300))})),
    AdaptiveOPQIndex: lambda: st.integers(1, 4).flatmap(lambda nlist: st.fixed_dictionaries({
        "d_search": st.sampled_from([16, DIM]), "code_bytes": st.sampled_from([4, 8]),
        "nlist": st.just(nlist), "nprobe": st.integers(1, nlist),
        "rerank": st.integers(1, 300)})),
}


@st.composite
def cases(draw):
    """Half the cases are valid end to end (so the answer is checked), half carry one or more
    faults of the kinds users make."""
    cls = draw(st.sampled_from(list(PARAMS)))
    faulty = draw(st.booleans())
    params = draw(VALID[cls]())
    if faulty and draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(sorted(PARAMS[cls])), unique=True, min_size=1,
                             max_size=3))
        params.update({k: draw(PARAMS[cls][k]) for k in keys})
    n = draw(st.integers(1, 300) if faulty else st.integers(40, 300))
    X = synthetic_matryoshka(n, DIM, seed=draw(st.integers(0, 3)))
    corrupt = draw(st.sampled_from(["nan", "inf", "dim", "3d", "empty", "text", "object", "zero",
                                    "none"])
                   if faulty else st.just("none"))
    if corrupt == "nan":
        X[draw(st.integers(0, n - 1)), 0] = np.nan
    elif corrupt == "inf":
        X[0, -1] = np.inf
    elif corrupt == "dim":
        X = X[:, : DIM - 1]
    elif corrupt == "3d":
        X = X[None]
    elif corrupt == "empty":
        X = np.zeros((0, DIM), dtype=np.float32)
    elif corrupt == "text":
        X = [["a"] * DIM] * n
    elif corrupt == "object":
        X = X.astype(object)
    elif corrupt == "zero":  # a vector with no direction: refused, never ranked at score 0
        X[draw(st.integers(0, n - 1))] = 0.0
    kinds = ["none", "ints", "str"] + (["dup", "short", "mixed"] if faulty else [])
    ids = {"none": None, "ints": list(range(5, 5 + n)), "dup": [1] * n,
           "str": [f"d{i}" for i in range(n)], "short": list(range(max(0, n - 1))),
           "mixed": ([1, "a"] * n)[:n]}[draw(st.sampled_from(kinds))]
    k = draw(st.one_of(st.integers(-1, 320), st.just(True), st.just(2.5)) if faulty
             else st.integers(1, 20))
    q = draw(st.sampled_from(["rows", "one", "wrongdim", "nan", "zero"] if faulty
                             else ["rows", "one"]))
    return cls, params, X, ids, k, q


def _queries(kind: str) -> np.ndarray:
    Q = synthetic_matryoshka(7, DIM, seed=11)
    return {"rows": Q, "one": Q[0], "wrongdim": Q[:, :8], "zero": np.zeros(DIM, np.float32),
            "nan": np.where(np.arange(DIM) == 3, np.nan, Q)}[kind]


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_index_entry_points_answer_or_refuse_cleanly(case):
    cls, params, X, ids, k, q = case
    try:
        index = cls(**params)
        index.add(X, ids=ids)
        Q = _queries(q)
        scores, found = index.search(Q, k=k)
    except NestembError:
        event("refused with NestembError")
        return
    event("answered")
    Xf = np.asarray(X, dtype=np.float32)
    Qf = np.atleast_2d(np.asarray(Q, dtype=np.float32))
    d0 = index.manifest.nesting[0]
    for V in (Xf, Qf):
        assert np.linalg.norm(V[:, :d0], axis=1).min() > 0, "zero-norm prefixes are refused"
    assert found.shape == scores.shape == (len(Qf), k)
    finite = np.isfinite(scores)
    for row_s, row_ok in zip(scores, finite):
        assert np.all(np.diff(row_s[row_ok]) <= 1e-5), "scores must come best first"
    known = set(np.asarray(ids if ids is not None else range(len(Xf))).tolist())
    assert set(found[finite].tolist()) <= known, "answers must be ids of added vectors"
    exact_by_construction = (
        cls is FunnelIndex and index.first_stage == "flat" and index.prefix_dtype == "float32"
        and all(s >= len(Xf) for s in index.shortlist)
    )
    if exact_by_construction:
        rows = exact_search(Xf, Qf, k)[1]
        truth = np.asarray(sorted(known) if ids is None else ids)[rows]
        event("checked against exact search")
        assert knn_intersection(found, truth) == 1.0


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.sampled_from(list(PARAMS)), st.integers(0, 2), st.sampled_from(["delete", "add", "both"]))
def test_delete_compact_save_load_round_trip(cls, seed, ops):
    import tempfile
    from pathlib import Path

    X = synthetic_matryoshka(400, DIM, seed=seed)
    params = ({"dims": (8, DIM), "shortlist": (400,)} if cls is FunnelIndex
              else {"nlist": 4, "nprobe": 4, "d_cluster": 8, "d_search": 16, "rerank": 400})
    if cls is AdaptiveOPQIndex:
        params["code_bytes"] = 4
    index = cls(**params).add(X[:300])
    if ops in ("delete", "both"):
        index.delete(list(range(0, 300, 7)))
    if ops in ("add", "both"):
        index.add(X[300:])
    index.compact()
    path = Path(tempfile.mkdtemp()) / "idx"
    index.save(path)
    again = load_index(path)
    Q = synthetic_matryoshka(5, DIM, seed=9)
    np.testing.assert_array_equal(again.search(Q, k=5)[1], index.search(Q, k=5)[1])
    deleted = set(range(0, 300, 7)) if ops in ("delete", "both") else set()
    assert not deleted & set(again.search(Q, k=5)[1].ravel().tolist())
