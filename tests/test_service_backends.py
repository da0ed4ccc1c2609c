"""`nestemb serve --backend qdrant-edge|qdrant|milvus`: the same HTTP API with the points in a
vector database. Real servers (harness.server) on the same points as the SQLite
service: equal top-k for every dims + shortlist plan, equal to a brute-force numpy funnel;
deletes, overwrites, restart persistence, metadata mismatches and unreachable engines.

Engines that need no separate server: Qdrant Edge, qdrant-client local mode (a folder) and
milvus-lite; each test skips with a message when its package is missing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import httpx
import numpy as np
import pytest

from nestemb.index import synthetic_matryoshka
from harness.server import running_server, stop_server

N, D, NQ, K = 600, 32, 15, 10
NEST = [8, 16, 32]
PLANS = [{"dims": [8, 32], "shortlist": [40]}, {"dims": [16, 32], "shortlist": [20]},
         {"dims": [8, 16, 32], "shortlist": [120, 30]}, {"dims": [32]}]
_MODULE = {"qdrant-edge": "qdrant_edge", "qdrant": "qdrant_client", "milvus": "milvus_lite"}


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (optional extra: pip install 'nestemb[backends]')")


def _pid(i: int):
    """Mixed ids: integers, strings, and a string that spells an integer."""
    return f"p{i}" if i % 4 == 1 else (str(i) if i % 4 == 2 else i)


@pytest.fixture(scope="module")
def data():
    X = synthetic_matryoshka(N + NQ, D, seed=5)
    return X[:N], X[N:]


def _fill(url: str, X: np.ndarray) -> None:
    r = httpx.put(f"{url}/collections/docs", json={"nesting": NEST})
    assert r.status_code == 200, r.text
    for a in range(0, len(X), 300):
        pts = [{"id": _pid(i), "vector": X[i].tolist(), "payload": {"i": i}}
               for i in range(a, min(a + 300, len(X)))]
        r = httpx.put(f"{url}/collections/docs/points", json={"points": pts}, timeout=60)
        assert r.status_code == 200, r.text


def _search(url: str, Q: np.ndarray, plan: dict, k: int = K) -> list[list]:
    body = {"searches": [{"vector": q.tolist(), "k": k, **plan} for q in Q]}
    r = httpx.post(f"{url}/collections/docs/search/batch", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return [[(h["id"], h["score"], h["payload"]) for h in res["hits"]] for res in r.json()["results"]]


def _funnel_ref(X: np.ndarray, live: np.ndarray, q: np.ndarray, plan: dict, k: int) -> list[int]:
    """The funnel by hand in float64: prefix views (slice, then normalize), top shortlist,
    re-rank on the next prefix; rows of ``X`` among ``live``."""
    cand = np.flatnonzero(live)
    keeps = list(plan.get("shortlist", [])) + [k]
    for d, keep in zip(plan["dims"], keeps):
        V = X[cand, :d].astype(np.float64)
        V /= np.linalg.norm(V, axis=1, keepdims=True)
        qd = q[:d].astype(np.float64) / np.linalg.norm(q[:d])
        cand = cand[np.argsort(-(V @ qd), kind="stable")[:keep]]
    return cand.tolist()


@pytest.fixture(scope="module")
def sqlite_results(tmp_path_factory, data):
    """The SQLite service's answers for every plan (its own server, filled once)."""
    X, Q = data
    with running_server(tmp_path_factory.mktemp("sqlite") / "data") as (url, _):
        _fill(url, X)
        return {i: _search(url, Q, plan) for i, plan in enumerate(PLANS)}


@pytest.mark.parametrize("engine", ["qdrant-edge", "qdrant", "milvus"])
def test_backend_service_equals_sqlite_service_and_brute_force(engine, data, sqlite_results,
                                                                tmp_path):
    _need(_MODULE[engine])
    X, Q = data
    live = np.ones(N, dtype=bool)
    # qdrant-client local mode on a folder commits every point on its own (~20 ms each here):
    # it is served from memory in this test (no restart); Qdrant Edge and milvus-lite persist
    args = ["--engine", engine] + (["--engine-url", ":memory:"] if engine == "qdrant" else [])
    with running_server(tmp_path / "data", extra_args=args) as (url, proc):
        _fill(url, X)
        info = httpx.get(f"{url}/collections/docs").json()
        assert info["count"] == N and info["index"]["backend"] == engine
        for j, plan in enumerate(PLANS):
            got = _search(url, Q, plan)
            ref = sqlite_results[j]
            assert [[h[0] for h in row] for row in got] == [[h[0] for h in row] for row in ref]
            np.testing.assert_allclose([[h[1] for h in row] for row in got],
                                       [[h[1] for h in row] for row in ref], atol=1e-5)
            assert [[h[2] for h in row] for row in got] == [[h[2] for h in row] for row in ref]
            brute = [[_pid(r) for r in _funnel_ref(X, live, q, plan, K)] for q in Q]
            assert [[h[0] for h in row] for row in got] == brute
        # a point comes back with its id type and payload; the vector as stored (normalized)
        for i in (0, 1, 2):
            r = httpx.get(f"{url}/collections/docs/points/{_pid(i) if i != 2 else '%222%22'}")
            assert r.status_code == 200, r.text
            assert r.json()["id"] == _pid(i) and r.json()["payload"] == {"i": i}
            np.testing.assert_allclose(r.json()["vector"], X[i] / np.linalg.norm(X[i]),
                                       atol=1e-6)
        # delete: unknown ids are not counted; deleted points are gone from every answer
        gone = [int(j) for j in np.flatnonzero(np.isin(np.arange(N), [0, 1, 2, 5]))]
        top = _search(url, Q[:1], PLANS[3])[0][0][0]
        gone.append(next(i for i in range(N) if _pid(i) == top))
        ids = [_pid(i) for i in gone] + ["never-stored"]
        r = httpx.post(f"{url}/collections/docs/points/delete", json={"ids": ids})
        assert r.json() == {"deleted": len(gone)}
        live[gone] = False
        # an overwrite moves a point: query 0's nearest neighbour is now point 7
        X = X.copy()
        X[7] = Q[0]
        r = httpx.put(f"{url}/collections/docs/points", json={"points": [
            {"id": _pid(7), "vector": Q[0].tolist(), "payload": {"i": 7, "moved": True}}]})
        assert r.status_code == 200
        after = {j: _search(url, Q, plan) for j, plan in enumerate(PLANS)}
        for j, plan in enumerate(PLANS):
            brute = [[_pid(r) for r in _funnel_ref(X, live, q, plan, K)] for q in Q]
            assert [[h[0] for h in row] for row in after[j]] == brute
        assert after[3][0][0][0] == _pid(7) and after[3][0][0][2] == {"i": 7, "moved": True}
        assert httpx.get(f"{url}/collections/docs").json()["count"] == N - len(gone)
        # what the embedded store offers and a backend does not: 422 naming the option
        q = Q[0].tolist()
        for body, field in [({"recall": 0.9}, "recall"), ({"filter": {"i": 3}}, "filter")]:
            r = httpx.post(f"{url}/collections/docs/search", json={"vector": q, **body})
            assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
            assert engine in r.json()["error"]["message"]
        r = httpx.put(f"{url}/collections/docs/points", json={"points": [
            {"id": 1, "vector": q, "payload": {"nestemb_id": 3}}]})
        assert r.status_code == 422 and "reserved" in r.json()["error"]["message"]
        assert stop_server(proc) == 0
    if engine == "qdrant":
        return
    # restart: the engine kept every write
    with running_server(tmp_path / "data", extra_args=args) as (url, _):
        assert httpx.get(f"{url}/collections/docs").json()["count"] == N - len(gone)
        for j in range(len(PLANS)):
            again = _search(url, Q, PLANS[j])
            assert [[(h[0], h[2]) for h in row] for row in again] == \
                [[(h[0], h[2]) for h in row] for row in after[j]]
            np.testing.assert_allclose([[h[1] for h in row] for row in again],
                                       [[h[1] for h in row] for row in after[j]], atol=1e-5)
        r = httpx.delete(f"{url}/collections/docs")
        assert r.status_code == 200
        assert httpx.get(f"{url}/collections").json() == {"collections": []}


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nestemb", "serve", "--port", "1", *args],
                          capture_output=True, text=True, timeout=60)


def test_mismatch_and_unreachable_are_clear_errors(data, tmp_path):
    """Startup refuses a registered collection whose engine collection holds another nesting
    or model, or is missing (exit 2, both values named); an unreachable engine exits 2 naming
    its URL; a collection exported into the engine is served, with its stored prefixes."""
    _need("qdrant_edge")
    from nestemb.engines.qdrant import export_qdrant_edge

    X, Q = data
    data_dir, edge = tmp_path / "data", tmp_path / "edge"
    with running_server(data_dir, extra_args=["--engine", "qdrant-edge", "--engine-url",
                                              str(edge)]) as (url, _):
        assert httpx.put(f"{url}/collections/docs", json={"nesting": NEST}).status_code == 200
    # another engine folder where "docs" holds other metadata
    other = tmp_path / "other"
    export_qdrant_edge(X, other / "docs", dims=(16, 32), shortlist=(50,), nesting=(16, 32),
                       model_id="m").close()
    r = _serve("--data-dir", str(data_dir), "--engine", "qdrant-edge", "--engine-url",
               str(other))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "nesting [8, 16, 32]" in r.stderr and "nesting [16, 32]" in r.stderr, r.stderr
    export_qdrant_edge(X, other / "docs", dims=(16, 32), shortlist=(50,), nesting=NEST,
                       model_id="m", overwrite=True).close()
    r = _serve("--data-dir", str(data_dir), "--engine", "qdrant-edge", "--engine-url",
               str(other))
    assert r.returncode == 2 and "model 'unknown'" in r.stderr and "model 'm'" in r.stderr
    r = _serve("--data-dir", str(data_dir), "--engine", "qdrant-edge", "--engine-url",
               str(tmp_path / "empty"))
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr
    r = _serve("--data-dir", str(tmp_path / "d2"), "--engine", "qdrant", "--engine-url",
               "http://127.0.0.1:9")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot reach Qdrant at 'http://127.0.0.1:9'" in r.stderr, r.stderr
    r = _serve("--data-dir", str(tmp_path / "d3"), "--engine-url", str(other))
    assert r.returncode == 2 and "--engine-url needs --engine" in r.stderr
    # a fresh service over the exported collection serves it (its stored prefixes only)
    with running_server(tmp_path / "d4", extra_args=["--engine", "qdrant-edge",
                                                     "--engine-url", str(other)]) as (url, _):
        info = httpx.get(f"{url}/collections/docs").json()
        assert info["count"] == N and info["nesting"] == NEST and info["model_id"] == "m"
        r = httpx.post(f"{url}/collections/docs/search", json={"vector": Q[0].tolist(), "k": K})
        assert r.status_code == 200 and r.json()["plan"]["dims"] == [16, 32]
        brute = _funnel_ref(X, np.ones(N, bool), Q[0], {"dims": [16, 32], "shortlist": [50]}, K)
        assert [h["id"] for h in r.json()["hits"]] == brute
        r = httpx.post(f"{url}/collections/docs/search", json={
            "vector": Q[0].tolist(), "k": K, "dims": [8, 32], "shortlist": [50]})
        assert r.status_code == 422 and "[8] are not stored" in r.json()["error"]["message"]
        r = httpx.put(f"{url}/collections/docs/points", json={"points": [
            {"id": "s", "vector": Q[0].tolist()}]})
        assert r.status_code == 422 and "int ids" in r.json()["error"]["message"], r.text


def test_create_over_mismatched_engine_collection_is_409(tmp_path):
    """PUT of a collection the engine already holds with another nesting names both."""
    _need("qdrant_client")
    from fastapi.testclient import TestClient

    from nestemb.engines.qdrant import export_qdrant
    from nestemb.service import create_app
    from nestemb.service.points import open_backend

    backend = open_backend("qdrant", ":memory:")
    X = synthetic_matryoshka(50, 32, seed=1)
    with TestClient(create_app(tmp_path / "data", backend=backend)) as client:
        export_qdrant(X, backend.engine.client, "late", dims=(8, 32), shortlist=(20,), nesting=(8, 32))
        r = client.put("/collections/late", json={"nesting": [16, 32]})
        assert r.status_code == 409, r.text
        msg = r.json()["error"]["message"]
        assert "nesting [16, 32]" in msg and "nesting [8, 32]" in msg
        assert client.get("/collections/late").status_code == 404  # nothing registered
        r = client.put("/collections/late", json={"nesting": [8, 32]})
        assert r.status_code == 200 and r.json()["count"] == 50
