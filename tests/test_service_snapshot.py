"""A served collection is a FunnelIndex: its search (flat and HNSW first stages, filters,
upserts as delete + add) against brute force, and restarts from a snapshot plus the writes
SQLite holds after it (a missing, damaged or foreign snapshot: a rebuild, never an error)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nestemb.exact import exact_search
from nestemb.index import synthetic_matryoshka
from nestemb.index.plan import Plan
from nestemb.service import collection as coll
from nestemb.service.collection import LiveCollection
from nestemb.service.store import Store

NESTING = (8, 16, 32, 64)


def brute(X: np.ndarray, q: np.ndarray, k: int, rows=None) -> list[int]:
    rows = np.arange(len(X)) if rows is None else np.asarray(rows)
    return rows[exact_search(X[rows], q[None], k)[1][0]].tolist()


def state(live: LiveCollection, Q: np.ndarray) -> tuple:
    """What a client can see: the points (id, payload) and the ids of some searches."""
    pts = sorted((json.dumps(pid), json.dumps(live.get(pid)[1])) for pid in live._iid)
    hits = [[h["id"] for h in hs] for hs in live.search(Q, 10, Plan((64,), ()))[0]]
    return pts, hits


@pytest.fixture
def hnsw(monkeypatch):
    monkeypatch.setattr(coll, "HNSW_MIN", 500)


def test_hnsw_collection_searches_like_brute_force(hnsw):
    A = synthetic_matryoshka(3100, 64, seed=1)
    X, Q = A[:3000], A[3000:]
    live = LiveCollection("c", NESTING)
    live.upsert(list(range(3000)), X, [{"odd": i % 2} for i in range(3000)])
    assert live.index.first_stage == "hnsw" and live.index.dims == (32, 64)
    # the graph's prefix: HNSW with ef >= shortlist; another prefix: an exact scan
    for dims in ((32, 64), (16, 64)):
        found = [[h["id"] for h in hs] for hs in live.search(Q, 10, Plan(dims, (400,)))[0]]
        got = np.mean([len(set(f) & set(brute(X, q, 10))) / 10 for f, q in zip(found, Q)])
        assert got >= 0.99, (dims, got)
    # a filter: exact over the subset
    for q in Q[:10]:
        hits = live.search(q[None], 10, Plan((32, 64), (40,)), {"odd": 1})[0][0]
        assert [h["id"] for h in hits] == brute(X, q, 10, rows=np.arange(1, 3000, 2))
    # upsert = delete + add: moved points are found at their new place, never the old one
    live.upsert([0, 1], X[[10, 11]] * 2, [{"odd": 0}, {"odd": 1}])
    hits = live.search(X[10][None], 3, Plan((32, 64), (100,)))[0][0]
    assert {h["id"] for h in hits[:2]} == {0, 10}
    assert live.index.n_deleted_ == 2 and len(live) == 3000
    # a payload-only change touches no vector
    live.upsert([5], X[[5]], [{"odd": 7}])
    assert live.index.n_deleted_ == 2 and live.search(X[5][None], 1, Plan((64,), ()),
                                                      {"odd": 7})[0][0][0]["id"] == 5
    # tuning measures the graph's prefix against exact search; the default plan holds
    live.tune()
    plan = live.default_plan()
    assert plan.source == "default:tuned" and plan.dims == (32, 64)
    found = [[h["id"] for h in hs] for hs in live.search(Q, 10, plan)[0]]
    Xn = np.array([live.get(i)[0] for i in range(3000)])
    truth = [brute(Xn, q, 10) for q in Q]
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]) >= 0.98


def test_growing_past_hnsw_min_rebuilds_the_first_stage_as_a_graph(hnsw):
    X = synthetic_matryoshka(800, 64, seed=2)
    live = LiveCollection("c", NESTING)
    live.upsert(list(range(300)), X[:300], [{}] * 300)
    assert live.index.first_stage == "flat"
    live.upsert(list(range(300, 800)), X[300:], [{}] * 500)
    live.tune()
    assert live.index.first_stage == "hnsw" and len(live) == 800
    assert live.search(X[7][None], 1, live.default_plan())[0][0][0]["id"] == 7


def test_restart_replays_the_writes_after_the_snapshot(tmp_path, hnsw):
    A = synthetic_matryoshka(2200, 64, seed=3)
    X, Q = A[:2000], A[2000:]
    store = Store(tmp_path)
    store.create_collection("c", {"nesting": list(NESTING)})

    def write(live, ids, V, pays):
        store.upsert("c", list(zip(ids, V, pays)))
        live.upsert(ids, V, pays)

    live = LiveCollection("c", NESTING).attach(store)
    assert live.restore() == "rebuild"  # nothing yet
    write(live, list(range(1500)), X[:1500], [{"n": i} for i in range(1500)])
    live.tune()
    assert live.snapshot() is not None and live.writes == 0
    # after the snapshot: new points, moved points, payload-only changes, deletes, a
    # deleted id written again, string ids
    write(live, list(range(1500, 1800)), X[1500:1800], [{"n": i} for i in range(1500, 1800)])
    write(live, [3, 4], X[[1900, 1901]], [{"moved": True}] * 2)
    write(live, [5], X[[5]], [{"n": "payload only"}])
    gone = list(range(100, 400, 3))
    store.delete("c", gone)
    live.delete(gone)
    write(live, [103, "103"], X[[1950, 1951]], [{"back": 1}, {"s": 1}])
    want = state(live, Q)

    def reopen() -> tuple[LiveCollection, str]:
        again = LiveCollection("c", NESTING).attach(Store(tmp_path))
        return again, again.restore()

    again, how = reopen()
    assert how == "snapshot" and state(again, Q) == want
    assert again.tuning is not None and again.default_plan().source == "default:tuned"
    assert np.array_equal(again.get(3)[0], X[1900])  # the stored vector, exactly
    # damaged or missing snapshots: a rebuild from SQLite, the same answers
    folder = store.snapshot_dir("c")
    index_dir = folder / json.loads((folder / coll.SNAPSHOT_NAME).read_text())["index"]
    (index_dir / "full.faiss").write_bytes(b"garbage")
    again, how = reopen()
    assert how == "rebuild" and state(again, Q) == want
    (folder / coll.SNAPSHOT_NAME).write_text("{not json")
    assert reopen()[1] == "rebuild"
    # a snapshot of a dropped collection never serves the new one of that name
    again.snapshot()
    store.drop_collection("c")
    store.create_collection("c", {"nesting": list(NESTING)})
    assert reopen()[0].__len__() == 0


def test_store_changes_and_prune(tmp_path):
    store = Store(tmp_path)
    store.create_collection("c", {"nesting": [2]})
    store.upsert("c", [(1, np.ones(2), {}), (2, np.ones(2), {})])
    mark = store.sequence()
    store.delete("c", [1])
    store.upsert("c", [(3, np.zeros(2) + 2, {"x": 1})])
    store.delete("c", [3])
    store.upsert("c", [(3, np.zeros(2) + 3, {"x": 2})])
    ids, X, pays, gone = store.changes("c", mark, 2)
    assert (ids, X.tolist(), pays, gone) == ([3], [[3.0, 3.0]], [{"x": 2}], [1])
    store.prune("c", store.sequence())
    assert store.changes("c", mark, 2)[3] == []
    assert store.changes("c", store.sequence(), 2)[0] == []
