"""Congruence of the point stores, in the style of qdrant-client's ``tests/congruence_tests``
(``compare_client_results``): the same operations (create, upsert, delete, get, count, search
with the same stage plans) on every engine of the registry that runs here (Qdrant Edge,
qdrant-client local mode, milvus-lite) and on the service's own SQLite store, the answers
compared with one another (ids, order, payloads, scores within 1e-5) and with brute force
(:func:`nestemb.exact.exact_search` on the prefix views, stage by stage).

Every engine is reached through the registry (:func:`nestemb.engines.open_engine`) and behind
the service's :class:`~nestemb.service.points.PointStore` protocol, as ``nestemb serve
--backend`` reaches it; an engine whose package is missing is left out with a note.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from nestemb.engines import ENGINES, open_engine
from nestemb.exact import exact_search
from nestemb.index.plan import Plan
from nestemb.index.synthetic import synthetic_matryoshka
from nestemb.nesting import prefix_view
from nestemb.service.points import EnginePoints, SqlitePoints
from nestemb.service.store import Store

N, D, NQ, K = 2000, 64, 20, 10
NEST = (8, 16, 32, 64)
PLANS = [Plan((64,), ()), Plan((8, 64), (200,)), Plan((8, 16, 64), (300, 60)),
         Plan((16, 32, 64), (100, 40))]
_MODULE = {"qdrant-edge": "qdrant_edge", "qdrant": "qdrant_client", "milvus": "milvus_lite"}
RUNNABLE = [e for e in ENGINES if importlib.util.find_spec(_MODULE.get(e, e)) is not None]


def _pid(i: int):
    """Mixed ids: integers, strings, and a string spelling an integer (``"6"`` is not ``6``)."""
    return f"doc-{i}" if i % 3 == 1 else (str(i) if i % 3 == 2 else i)


def _brute(X: np.ndarray, live: np.ndarray, Q: np.ndarray, plan: Plan, k: int):
    """The plan by brute force: exact top-``keep`` on each stage's prefix views of the
    previous stage's candidates; ``(rows, scores)`` per query."""
    out = []
    for q in Q:
        cand = np.flatnonzero(live)
        for d, keep in zip(plan.dims, list(plan.shortlist) + [k]):
            s, rows = exact_search(prefix_view(X[cand], d), prefix_view(q[None], d), keep)
            cand = cand[rows[0]]
        out.append((cand.tolist(), s[0].tolist()))
    return out


@pytest.fixture(scope="module")
def data():
    X = synthetic_matryoshka(N + NQ, D, seed=11)
    return X[:N], X[N:]


def _stores(tmp) -> dict:
    """One empty collection ``docs`` (nesting :data:`NEST`) per point store."""
    store = Store(tmp / "sqlite")
    store.create_collection("docs", {"nesting": list(NEST)})
    stores = {"sqlite": SqlitePoints(store, "docs", NEST)}
    engines = []
    for kind in RUNNABLE:
        url = ":memory:" if kind == "qdrant" else str(tmp / ("m.db" if kind == "milvus" else kind))
        engine = open_engine(kind, url)
        engines.append(engine)
        col = engine.create("docs", {"nesting": list(NEST), "model_id": "synthetic"})
        stores[kind] = EnginePoints(engine, "docs", col)
    return stores, engines, store


def compare_results(name_a: str, a: list[list[dict]], name_b: str, b: list[list[dict]]) -> None:
    """Same ids in the same order, same payloads, scores within 1e-5, query by query."""
    assert len(a) == len(b)
    for q, (ra, rb) in enumerate(zip(a, b)):
        assert [h["id"] for h in ra] == [h["id"] for h in rb], (name_a, name_b, q)
        assert [h["payload"] for h in ra] == [h["payload"] for h in rb], (name_a, name_b, q)
        np.testing.assert_allclose([h["score"] for h in ra], [h["score"] for h in rb],
                                   atol=1e-5, err_msg=f"{name_a} vs {name_b}, query {q}")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    stores, engines, store = _stores(tmp_path_factory.mktemp("congruence"))
    yield stores
    for s in stores.values():
        s.close()
    for e in engines:
        e.close()
    store.close()


def _check_all(stores: dict, X: np.ndarray, live: np.ndarray, Q: np.ndarray) -> None:
    for plan in PLANS:
        answers = {name: s.search(Q, K, plan)[0] for name, s in stores.items()}
        truth = _brute(X, live, Q, plan, K)
        for name, got in answers.items():
            assert [[h["id"] for h in row] for row in got] == \
                [[_pid(r) for r in rows] for rows, _ in truth], (name, plan)
            np.testing.assert_allclose([[h["score"] for h in row] for row in got],
                                       [s for _, s in truth], atol=1e-5, err_msg=name)
            compare_results("sqlite", answers["sqlite"], name, got)


def test_every_engine_answers_like_sqlite_and_brute_force(stores, data):
    """upsert, count, search (4 plans), delete, count, get, overwrite, search again: the same
    answers from every store, equal to brute force."""
    if len(stores) == 1:
        pytest.skip("no engine of the registry is installed (pip install 'nestemb[backends]')")
    X, Q = data
    X = X.copy()
    ids = [_pid(i) for i in range(N)]
    payloads = [{"i": i, "tag": "even" if i % 2 == 0 else "odd"} for i in range(N)]
    for s in stores.values():
        for a in range(0, N, 500):
            s.upsert(ids[a : a + 500], X[a : a + 500], payloads[a : a + 500])
    assert {name: len(s) for name, s in stores.items()} == {name: N for name in stores}
    live = np.ones(N, dtype=bool)
    _check_all(stores, X, live, Q)

    # delete: every store deletes the same points and counts the same (unknown ids: not counted)
    gone = list(range(0, N, 37)) + [1, 2]
    deleted = {name: s.delete([_pid(i) for i in gone] + ["never-stored", 10**9])
               for name, s in stores.items()}
    assert deleted == {name: len(gone) for name in stores}
    live[gone] = False
    assert {len(s) for s in stores.values()} == {N - len(gone)}
    for name, s in stores.items():
        assert s.get(_pid(0)) is None and s.get("never-stored") is None, name
        for i in (3, 4, 5):  # an int, a string, a string spelling an int
            vec, payload = s.get(_pid(i))
            assert payload == payloads[i], (name, i)
            np.testing.assert_allclose(vec / np.linalg.norm(vec), X[i] / np.linalg.norm(X[i]),
                                       atol=1e-6, err_msg=name)
        assert s.get(5) is None, name  # the string "5" is stored, not the integer 5

    # overwrite: point 7 moves onto query 0 and gets a new payload
    X[7] = Q[0]
    payloads[7] = {"i": 7, "moved": True}
    for s in stores.values():
        s.upsert([_pid(7)], Q[:1], [payloads[7]])
    _check_all(stores, X, live, Q)
    for name, s in stores.items():
        top = s.search(Q[:1], 1, PLANS[0])[0][0][0]
        assert (top["id"], top["payload"]) == (_pid(7), payloads[7]), name
