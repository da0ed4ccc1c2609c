"""Live migration of a served collection to a new model (``/collections/{name}/migration``),
through FastAPI's TestClient over :func:`create_app`, with two tiny random text models (``a``:
32-d, ``b``: 48-d) and client-posted vectors.

Answers are checked against independent references: a fresh collection of the new model over
the same texts (a re-index), brute-force numpy over the stored vectors, the maps read back from
the data folder, and the SQLite rows themselves (both spaces, each vector's ``origin``). Every
refused request is checked for its status, its JSON error field, and that nothing stored (SQLite
rows, files of the data folder) changed.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from harness.server import assert_error, db_rows, dir_listing
from nestemb.service import create_app
from nestemb.service.auth import ApiKey
from nestemb.service.migration import MIGRATIONS, wait_for
from nestemb.service.store import DB_NAME, MAPPED, MODEL
from nestemb.text._tiny import WORDS

TIMEOUT = 60.0
NO_THROTTLE = 60_000.0
"""A backfill bound on the search p99 (ms) that no test search reaches: searches slowed by
the backfill itself would make it wait up to 10 s (tested on its own)."""


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out[" ".join(rng.choice(WORDS, int(rng.integers(3, 9))))] = None
    return list(out)


TEXTS = _texts(260, seed=0)
QUERIES = [t for t in _texts(40, seed=1) if t not in TEXTS][:12] + TEXTS[:4]


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """The server's encoders: ``a`` (32-d, seed 0) and ``b`` (48-d, seed 1)."""
    from nestemb.text._tiny import make_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {"a": str(make_tiny_model(root / "a", hidden=32, seed=0)),
            "b": str(make_tiny_model(root / "b", hidden=48, seed=1))}


def serve(data: Path, models: dict | None = None, **kw: Any) -> TestClient:
    return TestClient(create_app(data, encoders=models, tune_interval=3600, **kw))


def ok(r) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def fill_texts(http: TestClient, name: str, texts: list[str], start: int = 0) -> None:
    for s in range(0, len(texts), 100):
        ok(http.put(f"/collections/{name}/points", json={"points": [
            {"id": start + i, "text": t, "payload": {"text": t, "i": start + i}}
            for i, t in enumerate(texts[s:s + 100], start=s)]}))


def fill_vectors(http: TestClient, name: str, X: np.ndarray) -> None:
    for s in range(0, len(X), 500):
        ok(http.put(f"/collections/{name}/points", json={"points": [
            {"id": i, "vector": X[i].tolist(), "payload": {"i": i}}
            for i in range(s, min(s + 500, len(X)))]}))


def search(http: TestClient, name: str, **body: Any) -> dict:
    return ok(http.post(f"/collections/{name}/search", json={"k": 10, **body}))


def answers(http: TestClient, name: str, queries: list[str], **body: Any) -> list[list]:
    """(id, score) of the top-10 of each text query."""
    return [[(h["id"], h["score"]) for h in search(http, name, text=q, **body)["hits"]]
            for q in queries]


def ids_of(ans: list[list]) -> list[list]:
    return [[i for i, _ in row] for row in ans]


def status(http: TestClient, name: str) -> dict:
    return ok(http.get(f"/collections/{name}/migration"))


def wait_state(http: TestClient, name: str, ready) -> dict:
    wait_for(lambda: ready(status(http, name)), timeout=TIMEOUT)
    return status(http, name)


def points(data: Path, name: str) -> dict[Any, tuple[np.ndarray, int]]:
    """The stored points of collection ``name`` (``"c#new"``: a migration's new space): id ->
    (vector, origin), read through a separate read-only connection."""
    con = sqlite3.connect(f"file:{Path(data) / DB_NAME}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT id, vector, origin FROM points WHERE collection = ?",
                           (name,)).fetchall()
    finally:
        con.close()
    return {json.loads(i): (np.frombuffer(v, "<f4").astype(np.float32), o) for i, v, o in rows}


def origins(data: Path, name: str) -> Counter:
    return Counter(o for _, o in points(data, name).values())


def configs(data: Path) -> dict[str, dict]:
    return {n: json.loads(c) for n, c in db_rows(data)["collections"]}


def stored(data: Path) -> tuple:
    """Everything stored: the SQLite rows (with each vector's origin) and the data folder's
    files."""
    con = sqlite3.connect(f"file:{Path(data) / DB_NAME}?mode=ro", uri=True)
    try:
        rows = sorted(con.execute("SELECT collection, id, vector, payload, origin FROM points"))
    finally:
        con.close()
    return db_rows(data)["collections"], rows, dir_listing(data)


def cosine_top(G: np.ndarray, ids: list, q: np.ndarray, k: int = 10,
               check: bool = True) -> list:
    """Brute-force top-k ids by cosine similarity (float64); ``check``: refuse a query with a
    near tie at rank k (float32 rounding could order it either way)."""
    G = np.asarray(G, np.float64)
    G = G / np.linalg.norm(G, axis=1, keepdims=True)
    q = np.asarray(q, np.float64) / np.linalg.norm(q)
    s = G @ q
    order = np.argsort(-s, kind="stable")[:k]
    gap = s[order[k - 1]] - s[np.argsort(-s)[k]] if len(s) > k else 1.0
    assert gap > 1e-5 or not check, "a near tie at rank k: pick another query"
    return [ids[i] for i in order]


def load_map(data: Path, name: str, record_id: int, which: str):
    from nestemb.maps import load_adapter

    return load_adapter(Path(data) / MIGRATIONS / name / str(record_id) / which)


def client_data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, Any]:
    """Old vectors X (8-d) and the new model's Y (12-d): a linear map plus a bend."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    R, B = rng.normal(size=(8, 12)), rng.normal(size=(8, 12))

    def new(V: np.ndarray) -> np.ndarray:
        return (V @ R + 0.3 * np.tanh(V @ B)).astype(np.float32)

    return X, new(X), new


def start_client(http: TestClient, name: str, X: np.ndarray, Y: np.ndarray,
                 sample: int = 60) -> dict:
    """Collection ``name`` of X (nesting 4/8), migrating to client vectors (nesting 6/12,
    model id ``m2``) with the first ``sample`` of Y posted: in ``backfilling``."""
    ok(http.put(f"/collections/{name}", json={"nesting": [4, 8]}))
    fill_vectors(http, name, X)
    st = ok(http.put(f"/collections/{name}/migration", json={
        "nesting": [6, 12], "model_id": "m2", "sample_size": sample, "min_quality": 0.0}))
    assert st["state"] == "collecting" and st["mode"] == "client"
    ok(http.put(f"/collections/{name}/migration/vectors", json={"points": [
        {"id": i, "vector": Y[i].tolist()} for i in range(sample)]}))
    return wait_state(http, name, lambda s: s["state"] in ("backfilling", "failed"))


def slow_encoders(http: TestClient, seconds: float = 0.03) -> None:
    """Make the migration worker's encoding (the new model) slow enough to watch (not the
    requests': slow searches would make the backfill wait for the search p99)."""
    svc = http.app.state.service
    encode = type(svc)._encode_with

    def slow(encoder: str, texts: list[str]) -> np.ndarray:
        if threading.current_thread().name.startswith("nestemb-migrate"):
            time.sleep(seconds)
        return encode(svc, encoder, texts)

    svc._encode_with = slow


# --------------------------------------------------------------------------- 1. encoder mode
def test_encoder_migration_equals_reindex_and_survives_restart(models, tmp_path):
    data = tmp_path / "data"
    n = len(TEXTS)
    with serve(data, models) as http:
        ok(http.put("/collections/c", json={"encoder": "a"}))
        fill_texts(http, "c", TEXTS)
        ok(http.put("/collections/f", json={"encoder": "b"}))  # the re-index reference
        fill_texts(http, "f", TEXTS)
        before = answers(http, "c", QUERIES)
        assert search(http, "c", text=QUERIES[0])["migration"] is None
        reference = answers(http, "f", QUERIES)
        old_rows = points(data, "c")

        st = ok(http.put("/collections/c/migration", json={
            "encoder": "b", "sample_size": 60, "min_quality": 0.0, "batch": 32,
            "max_p99_ms": NO_THROTTLE}))
        assert st["state"] == "sampling" and st["mode"] == "encoder" and st["count"] == n
        assert st["target"]["encoder"] == "b" and st["target"]["nesting"] == [32, 48]
        assert st["source"]["encoder"] == "a"
        # old-model queries while it runs: exactly what they were (ids and scores)
        during = [search(http, "c", text=q) for q in QUERIES[:4]]
        assert [[(h["id"], h["score"]) for h in r["hits"]] for r in during] == before[:4]
        assert all(r["migration"]["space"] == "old" for r in during)

        st = wait_state(http, "c", lambda s: s["complete"] or s["state"] == "failed")
        assert st["state"] == "backfilling" and st["error"] is None, st
        assert (st["true"], st["mapped"], st["new_vectors"], st["backfilled"]) == (n, 0, n, 1.0)
        assert st["map"]["pairs"] == 60

        for model in ("b", "new"):
            got = [search(http, "c", text=q, model=model) for q in QUERIES]
            assert [[h["id"] for h in r["hits"]] for r in got] == ids_of(reference), model
            assert all(r["migration"]["space"] == "new" for r in got)
            assert all(r["migration"]["state"] == "backfilling" for r in got)
            np.testing.assert_allclose([[h["score"] for h in r["hits"]] for r in got],
                                       [[s for _, s in row] for row in reference], atol=1e-5)
        for model in (None, "old", "a"):
            body = {} if model is None else {"model": model}
            got = [search(http, "c", text=q, **body) for q in QUERIES]
            assert [[(h["id"], h["score"]) for h in r["hits"]] for r in got] == before
            assert all(r["migration"]["space"] == "old" for r in got)
        info = ok(http.get("/collections/c"))
        assert info["encoder"] == "a" and info["dim"] == 32
        assert info["migration"]["state"] == "backfilling" and info["migration"]["space"] == "old"

        # stored: the old vectors untouched; the new space is the re-index, every one true
        cur = points(data, "c")
        assert cur.keys() == old_rows.keys()
        assert all(np.array_equal(cur[i][0], old_rows[i][0]) for i in cur)
        new, ref = points(data, "c#new"), points(data, "f")
        assert new.keys() == ref.keys() and Counter(o for _, o in new.values()) == {MODEL: n}
        np.testing.assert_allclose(np.stack([new[i][0] for i in ref]),
                                   np.stack([ref[i][0] for i in ref]), atol=1e-5)
        assert (data / MIGRATIONS / "c").is_dir()

        end = ok(http.post("/collections/c/migration/finish"))
        assert end["ended"] == "finish"
        info = ok(http.get("/collections/c"))
        assert (info["encoder"], info["model_id"], info["dim"], info["nesting"], info["count"],
                info["migration"]) == ("b", "b", 48, [32, 48], n, None)
        after = answers(http, "c", QUERIES)
        assert ids_of(after) == ids_of(reference)
        assert search(http, "c", text=QUERIES[0])["migration"] is None
        # the previous model's clients are told its vectors are gone; the new model's clients
        # (who named it 'new' during the migration) go on; an unknown model is a 422
        for model in ("a", "old"):
            assert_error(http.post("/collections/c/search",
                                   json={"text": "the cat", "model": model}), 409, "model")
        assert ids_of(answers(http, "c", QUERIES, model="new")) == ids_of(reference)
        assert_error(http.post("/collections/c/search", json={"text": "the cat", "model": "z"}),
                     422, "model")
        assert_error(http.get("/collections/c/migration"), 404, "name")

    # the old vectors are gone, the new ones are the collection's
    assert "c#new" not in configs(data) and "migration" not in configs(data)["c"]
    assert configs(data)["c"]["migrated_from"]["encoder"] == "a"
    assert points(data, "c#new") == {}
    final = points(data, "c")
    assert final.keys() == ref.keys() and origins(data, "c") == {MODEL: n}
    assert all(v.shape == (48,) for v, _ in final.values())
    np.testing.assert_allclose(np.stack([final[i][0] for i in ref]),
                               np.stack([ref[i][0] for i in ref]), atol=1e-5)
    assert not (data / MIGRATIONS / "c").exists()
    assert not (data / "snapshots" / "c#new").exists()

    with serve(data, models) as http:  # a restart reads the finished collection back
        info = ok(http.get("/collections/c"))
        assert (info["encoder"], info["dim"], info["count"], info["migration"]) == (
            "b", 48, n, None)
        assert answers(http, "c", QUERIES) == after
        assert_error(http.get("/collections/c/migration"), 404, "name")
        # and back to model a: the answers of the start again (a second migration of the
        # collection that the first one made)
        st = ok(http.put("/collections/c/migration", json={
            "encoder": "a", "sample_size": 60, "min_quality": 0.0, "max_p99_ms": NO_THROTTLE}))
        assert st["source"]["encoder"] == "b" and st["target"]["nesting"] == [32]
        wait_state(http, "c", lambda s: s["complete"] or s["state"] == "failed")
        assert ids_of(answers(http, "c", QUERIES, model="a")) == ids_of(before)
        assert ok(http.post("/collections/c/migration/finish"))["collection"]["dim"] == 32
        assert ids_of(answers(http, "c", QUERIES)) == ids_of(before)


# --------------------------------------------------------------------------- 2. client vectors
def test_client_vectors_migration_against_numpy(tmp_path):
    data = tmp_path / "data"
    X, Y, new = client_data()
    n, sample = len(X), 60
    rng = np.random.default_rng(7)
    Xq = rng.normal(size=(8, 8)).astype(np.float32)
    Yq = new(Xq)
    ids = list(range(n))
    with serve(data) as http:
        ok(http.put("/collections/v", json={"nesting": [4, 8]}))
        fill_vectors(http, "v", X)
        old_before = [[h["id"] for h in search(http, "v", vector=q.tolist())["hits"]] for q in Xq]
        assert old_before == [cosine_top(X, ids, q) for q in Xq]
        st = ok(http.put("/collections/v/migration", json={
            "nesting": [6, 12], "model_id": "m2", "sample_size": sample, "min_quality": 0.0}))
        assert (st["state"], st["mode"], st["new_vectors"]) == ("collecting", "client", 0)
        record_id = configs(data)["v"]["migration"]["id"]
        assert_error(http.post("/collections/v/search",
                               json={"vector": Yq[0].tolist(), "model": "new"}), 409, "model")

        # half the sample: still collecting, the posted vectors stored as true ones
        ok(http.put("/collections/v/migration/vectors", json={"points": [
            {"id": i, "vector": Y[i].tolist()} for i in range(sample // 2)]}))
        time.sleep(0.3)
        st = status(http, "v")
        assert (st["state"], st["true"], st["mapped"]) == ("collecting", sample // 2, 0)
        ok(http.put("/collections/v/migration/vectors", json={"points": [
            {"id": i, "vector": Y[i].tolist()} for i in range(sample // 2, sample)]}))
        st = wait_state(http, "v", lambda s: s["state"] in ("backfilling", "failed"))
        assert st["state"] == "backfilling", st
        assert (st["new_vectors"], st["true"], st["mapped"], st["complete"]) == (
            n, sample, n - sample, False)

        # stored: every point has a new vector; the posted ones exactly, the rest mapped
        new_rows = points(data, "v#new")
        assert sorted(new_rows) == ids
        assert {i for i, (_, o) in new_rows.items() if o == MODEL} == set(range(sample))
        assert all(np.array_equal(new_rows[i][0], Y[i]) for i in range(sample))
        forward = load_map(data, "v", record_id, "forward")
        M = forward.transform(X[sample:])
        np.testing.assert_allclose(np.stack([new_rows[i][0] for i in range(sample, n)]), M,
                                   rtol=1e-5, atol=1e-5)
        G = np.stack([new_rows[i][0] for i in ids])
        hit_ids: Counter = Counter()
        for q in Yq[:5]:
            r = search(http, "v", vector=q.tolist(), model="m2")
            assert [h["id"] for h in r["hits"]] == cosine_top(G, ids, q)
            assert r["migration"]["space"] == "new" and r["migration"]["backfilled"] == round(
                sample / n, 4)
            hit_ids.update(h["id"] for h in r["hits"])
        # the old space still answers as before (its hits count for the queue too)
        for q, want in zip(Xq, old_before):
            r = search(http, "v", vector=q.tolist(), model="old")
            assert [h["id"] for h in r["hits"]] == want and r["migration"]["space"] == "old"
            hit_ids.update(want)

        # the queue: every mapped id, the most retrieved first
        queue = ok(http.get("/collections/v/migration/queue", params={"limit": 100_000}))["ids"]
        assert sorted(queue) == list(range(sample, n))
        hot = {i: c for i, c in hit_ids.items() if i >= sample}
        assert set(queue[:len(hot)]) == set(hot)
        assert [hot[i] for i in queue[:len(hot)]] == sorted(hot.values(), reverse=True)
        assert ok(http.get("/collections/v/migration/queue", params={"limit": 3}))["ids"] == \
            queue[:3]

        posted = 0
        while ids_next := ok(http.get("/collections/v/migration/queue",
                                      params={"limit": 70}))["ids"]:
            r = ok(http.put("/collections/v/migration/vectors", json={"points": [
                {"id": i, "vector": Y[i].tolist()} for i in ids_next]}))
            posted += r["posted"]
            assert status(http, "v")["mapped"] == n - sample - posted
        assert posted == n - sample
        st = status(http, "v")
        assert st["complete"] and (st["true"], st["mapped"], st["backfilled"]) == (n, 0, 1.0)
        assert origins(data, "v#new") == {MODEL: n}
        # the probe, once complete: top-10 agreement of the mapped gallery with the true one
        st = wait_state(http, "v", lambda s: (s["probe"] or {}).get("backfilled") == 1.0)
        assert (st["probe"]["gallery"], st["probe"]["queries"]) == (n, 200)
        Mall = forward.transform(X)
        agree = [len((set(cosine_top(Y, ids, Y[i], 11, check=False)) - {i})
                     & (set(cosine_top(Mall, ids, Y[i], 11, check=False)) - {i})) / 10
                 for i in ids]
        assert abs(st["probe"]["agreement"] - np.mean(agree)) < 0.05, (st["probe"],
                                                                        np.mean(agree))
        # one batch, both spaces
        res = ok(http.post("/collections/v/search/batch", json={"searches": [
            {"vector": Xq[0].tolist(), "k": 10}, {"vector": Yq[0].tolist(), "model": "m2"}]}))
        assert [[h["id"] for h in r["hits"]] for r in res["results"]] == [
            old_before[0], cosine_top(Y, ids, Yq[0])]
        assert [r["migration"]["space"] for r in res["results"]] == ["old", "new"]
        for q in Yq:
            r = search(http, "v", vector=q.tolist(), model="new")
            assert [h["id"] for h in r["hits"]] == cosine_top(Y, ids, q)

        end = ok(http.post("/collections/v/migration/finish", json={"force": False}))
        info = end["collection"]
        assert (info["dim"], info["nesting"], info["model_id"], info["encoder"], info["count"]) == (
            12, [6, 12], "m2", None, n)
        for q in Yq:  # the new model is the collection's: named or not
            assert [h["id"] for h in search(http, "v", vector=q.tolist())["hits"]] == \
                cosine_top(Y, ids, q)
            assert [h["id"] for h in search(http, "v", vector=q.tolist(), model="m2")["hits"]] \
                == cosine_top(Y, ids, q)
        assert_error(http.post("/collections/v/search", json={"vector": Xq[0].tolist()}),
                     422, "vector")
    final = points(data, "v")
    assert sorted(final) == ids and all(np.array_equal(final[i][0], Y[i]) for i in ids)
    assert points(data, "v#new") == {} and not (data / MIGRATIONS / "v").exists()


# --------------------------------------------------------------------------- 3. writes
def test_writes_during_a_migration_go_to_both_spaces(models, tmp_path):
    data = tmp_path / "data"
    X, Y, new = client_data(200, seed=3)
    rng = np.random.default_rng(11)
    with serve(data, models) as http:
        # before the maps exist (collecting): an old-model write clears the new vector
        ok(http.put("/collections/w", json={"nesting": [4, 8]}))
        fill_vectors(http, "w", X)
        ok(http.put("/collections/w/migration", json={
            "nesting": [6, 12], "sample_size": 60, "min_quality": 0.0}))
        ok(http.put("/collections/w/migration/vectors", json={"points": [
            {"id": i, "vector": Y[i].tolist()} for i in range(10)]}))
        x0 = rng.normal(size=8).astype(np.float32)
        ok(http.put("/collections/w/points", json={"points": [
            {"id": 0, "vector": x0.tolist()}, {"id": 900, "vector": X[1].tolist()}]}))
        assert sorted(points(data, "w#new")) == list(range(1, 10))
        assert np.array_equal(points(data, "w")[0][0], x0)
        assert status(http, "w")["true"] == 9
        before = stored(data)
        assert_error(http.put("/collections/w/points", json={"points": [
            {"id": 901, "vector": Y[0].tolist(), "model": "new"}]}), 409, "points.0.model")
        assert stored(data) == before
        ok(http.put("/collections/w/migration/vectors", json={"points": [
            {"id": i, "vector": Y[i].tolist()} for i in range(10, 61)]}))
        st = wait_state(http, "w", lambda s: s["state"] in ("backfilling", "failed"))
        assert st["state"] == "backfilling", st
        assert points(data, "w").keys() == points(data, "w#new").keys()
        assert {i for i, (_, o) in points(data, "w#new").items() if o == MAPPED} == (
            set(range(61, 200)) | {0, 900})
        record_id = configs(data)["w"]["migration"]["id"]
        forward, reverse = (load_map(data, "w", record_id, k) for k in ("forward", "reverse"))

        # old-model vector: true in the old space, mapped in the new one, in one request
        # with a new-model vector (true in the new space, reverse-mapped into the old one)
        x, y = rng.normal(size=8).astype(np.float32), new(rng.normal(size=(1, 8)))[0]
        ok(http.put("/collections/w/points", json={"points": [
            {"id": 1000, "vector": x.tolist(), "payload": {"k": 1}},
            {"id": 1001, "vector": y.tolist(), "model": "new", "payload": {"k": 2}},
            {"id": 5, "vector": X[5].tolist()},  # had a true new vector: now a mapped one
            {"id": 7, "vector": Y[7].tolist(), "model": "new"}]}))
        old, shadow = points(data, "w"), points(data, "w#new")
        assert old.keys() == shadow.keys()
        assert np.array_equal(old[1000][0], x) and old[1000][1] == MODEL
        assert shadow[1000][1] == MAPPED
        np.testing.assert_allclose(shadow[1000][0], forward.transform(x[None])[0], atol=1e-5)
        assert np.array_equal(shadow[1001][0], y) and shadow[1001][1] == MODEL
        assert old[1001][1] == MAPPED
        np.testing.assert_allclose(old[1001][0], reverse.transform(y[None])[0], atol=1e-5)
        assert shadow[5][1] == MAPPED and old[5][1] == MODEL
        assert shadow[7][1] == MODEL and old[7][1] == MAPPED
        st = status(http, "w")
        assert st["mapped"] == sum(o == MAPPED for _, o in shadow.values()) == 139 + 2 + 1 + 1
        assert st["count"] == st["new_vectors"] == 203
        # both spaces answer with the new points
        hit = search(http, "w", vector=y.tolist(), model="new", k=1)["hits"][0]
        assert (hit["id"], hit["payload"]) == (1001, {"k": 2}) and hit["score"] > 0.9999
        hit = search(http, "w", vector=x.tolist(), k=1)["hits"][0]
        assert (hit["id"], hit["payload"]) == (1000, {"k": 1}) and hit["score"] > 0.9999
        # a new-model vector of the old width is refused, nothing stored
        before = stored(data)
        assert_error(http.put("/collections/w/points", json={"points": [
            {"id": 1002, "vector": X[0].tolist(), "model": "new"}]}), 422, "points.0.vector")
        assert_error(http.put("/collections/w/points", json={"points": [
            {"id": 1002, "vector": X[0].tolist()},
            {"id": 1003, "vector": X[0].tolist(), "model": "new"}]}), 422, "points.1.vector")
        assert stored(data) == before

        # a delete leaves the point in neither space
        assert ok(http.post("/collections/w/points/delete", json={"ids": [1000, 1001, 3]})
                  ) == {"deleted": 3}
        old, shadow = points(data, "w"), points(data, "w#new")
        assert not {1000, 1001, 3} & (old.keys() | shadow.keys())
        assert old.keys() == shadow.keys() and len(old) == 200
        assert http.get("/collections/w/points/1000").status_code == 404
        hits = search(http, "w", vector=y.tolist(), model="new", k=50)["hits"]
        assert not {1000, 1001, 3} & {h["id"] for h in hits}
        st = status(http, "w")
        assert (st["count"], st["new_vectors"], st["mapped"]) == (200, 200, 142)

        # encoder mode: a text is embedded by both models, true in both spaces
        ok(http.put("/collections/t", json={"encoder": "a"}))
        fill_texts(http, "t", TEXTS[:80])
        ok(http.put("/collections/t/migration", json={
            "encoder": "b", "sample_size": 60, "min_quality": 0.0}))
        wait_state(http, "t", lambda s: s["complete"] or s["state"] == "failed")
        text = "the red dog runs fast in the park"
        ok(http.put("/collections/t/points", json={"points": [
            {"id": 500, "text": text, "payload": {"text": text}},
            {"id": 3, "text": text, "payload": {"text": text, "again": True}}]}))
        svc = http.app.state.service
        va, vb = (np.asarray(svc.encoder(e).encode([text]), np.float32)[0] for e in "ab")
        old, shadow = points(data, "t"), points(data, "t#new")
        assert old.keys() == shadow.keys() and len(old) == 81
        for i in (500, 3):
            assert old[i][1] == MODEL and shadow[i][1] == MODEL
            np.testing.assert_allclose(old[i][0], va, atol=1e-5)
            np.testing.assert_allclose(shadow[i][0], vb, atol=1e-5)
        st = status(http, "t")
        assert st["complete"] and (st["count"], st["true"], st["mapped"]) == (81, 81, 0)
        for model, space in (("b", "new"), (None, "old")):
            r = search(http, "t", text=text, k=2, **({} if model is None else {"model": model}))
            assert {h["id"] for h in r["hits"]} == {500, 3} and r["migration"]["space"] == space
            assert r["hits"][1]["score"] > 0.9999
        before = stored(data)
        assert_error(http.put("/collections/t/points", json={"points": [
            {"id": 501, "text": text, "model": "new"}]}), 422, "points.0.model")
        assert stored(data) == before
        ok(http.post("/collections/t/points/delete", json={"ids": [500]}))
        assert 500 not in points(data, "t") and 500 not in points(data, "t#new")
        # a vector without a text to re-encode stays mapped: complete only by force
        ok(http.put("/collections/t/points", json={"points": [{"id": 600, "vector": va.tolist()}]}))
        st = status(http, "t")
        assert (st["mapped"], st["without_text"], st["complete"]) == (1, 1, False)
        assert points(data, "t#new")[600][1] == MAPPED
        assert ok(http.get("/collections/t/migration/queue"))["ids"] == [600]
        before = stored(data)
        assert_error(http.post("/collections/t/migration/finish"), 409, "force")
        assert stored(data) == before
        end = ok(http.post("/collections/t/migration/finish", json={"force": True}))
        assert (end["collection"]["encoder"], end["collection"]["count"]) == ("b", 81)
        assert origins(data, "t") == {MODEL: 80, MAPPED: 1} and points(data, "t#new") == {}


def test_writes_racing_a_finish_are_refused_as_conflicts(models, tmp_path):
    """A write that found the collection before its migration finished and commits after is
    refused with 409 (send it again), not 404 (the collection exists), and stores nothing."""
    data = tmp_path / "data"
    with serve(data, models) as http:
        ok(http.put("/collections/t", json={"encoder": "a"}))
        fill_texts(http, "t", TEXTS[:80])
        ok(http.put("/collections/t/migration", json={
            "encoder": "b", "sample_size": 60, "min_quality": 0.0}))
        wait_state(http, "t", lambda s: s["complete"] or s["state"] == "failed")
        svc = http.app.state.service
        get = svc.get
        va = np.asarray(svc.encoder("a").encode(["the big cat"]), np.float32)[0]
        for i, (method, path, body) in enumerate((
                ("PUT", "/collections/t/points", {"points": [{"id": 700, "vector": va.tolist()}]}),
                ("POST", "/collections/t/points/delete", {"ids": [1]}))):
            if i == 1:  # migrate once more, to finish again under the delete
                ok(http.put("/collections/t/migration", json={
                    "encoder": "a", "sample_size": 60, "min_quality": 0.0}))
                wait_state(http, "t", lambda s: s["complete"] or s["state"] == "failed")
            entered, go, armed = threading.Event(), threading.Event(), [True]

            def gated(name: str) -> Any:
                live = get(name)
                if armed[0]:  # the write's lookup waits for the finish
                    armed[0] = False
                    entered.set()
                    assert go.wait(TIMEOUT)
                return live

            svc.get = gated
            got: dict = {}
            writer = threading.Thread(
                target=lambda: got.update(r=http.request(method, path, json=body)))
            writer.start()
            assert entered.wait(TIMEOUT)
            ok(http.post("/collections/t/migration/finish"))
            before = stored(data)
            go.set()
            writer.join(TIMEOUT)
            svc.get = get
            assert_error(got["r"], 409, "name", "send the")
            assert stored(data) == before
        assert 700 not in points(data, "t") and 1 in points(data, "t")
        assert ok(http.get("/collections/t"))["count"] == 80


# --------------------------------------------------------------------------- 4. pause / cancel
def test_pause_resume_and_cancel(models, tmp_path):
    data = tmp_path / "data"
    texts = TEXTS[:200]
    n = len(texts)
    with serve(data, models) as http:
        ok(http.put("/collections/p", json={"encoder": "a"}))
        fill_texts(http, "p", texts)
        slow_encoders(http)
        before = answers(http, "p", QUERIES[:6])
        old_rows = stored(data)[1]
        ok(http.put("/collections/p/migration", json={
            "encoder": "b", "sample_size": 60, "min_quality": 0.0, "batch": 4,
            "max_p99_ms": NO_THROTTLE}))
        st = wait_state(http, "p", lambda s: s["state"] == "backfilling" and s["true"] >= 80)
        st = ok(http.post("/collections/p/migration/pause"))
        assert st["paused"] is True and st["state"] == "backfilling"
        assert configs(data)["p"]["migration"]["paused"] is True  # durable
        time.sleep(0.2)  # the step under way ends
        a = status(http, "p")
        assert 0 < a["mapped"] and a["true"] < n and a["paused"]
        rows = origins(data, "p#new")
        time.sleep(0.6)
        b = status(http, "p")
        assert (b["true"], b["mapped"], b["state"]) == (a["true"], a["mapped"], "backfilling")
        assert origins(data, "p#new") == rows == {MODEL: a["true"], MAPPED: a["mapped"]}
        # paused, it still answers both models
        assert answers(http, "p", QUERIES[:6]) == before
        r = search(http, "p", text=QUERIES[0], model="new")
        assert r["migration"]["space"] == "new" and len(r["hits"]) == 10

        st = ok(http.post("/collections/p/migration/resume"))
        assert st["paused"] is False
        st = wait_state(http, "p", lambda s: s["complete"] or s["state"] == "failed")
        assert (st["true"], st["mapped"]) == (n, 0)

        # cancel: the new space and the maps go, the old answers stay
        assert (data / MIGRATIONS / "p").is_dir()
        end = ok(http.post("/collections/p/migration/cancel"))
        assert end["ended"] == "cancel" and end["collection"]["migration"] is None
        info = ok(http.get("/collections/p"))
        assert (info["encoder"], info["dim"], info["count"], info["migration"]) == (
            "a", 32, n, None)
        assert answers(http, "p", QUERIES[:6]) == before
        assert search(http, "p", text=QUERIES[0])["migration"] is None
        assert_error(http.get("/collections/p/migration"), 404, "name")
        assert_error(http.post("/collections/p/search", json={"text": "the", "model": "b"}),
                     422, "model")
        _assert_cancelled(data, "p", old_rows)

        # it can start again, and be cancelled while its worker is busy
        st = ok(http.put("/collections/p/migration", json={
            "encoder": "b", "sample_size": 60, "min_quality": 0.0, "batch": 4,
            "max_p99_ms": NO_THROTTLE}))
        assert st["state"] == "sampling" and st["true"] == 0
        wait_state(http, "p", lambda s: s["true"] >= 8)
        ok(http.post("/collections/p/migration/cancel"))
        _assert_cancelled(data, "p", old_rows)
        assert answers(http, "p", QUERIES[:6]) == before

        # dropping a migrating collection drops both spaces and the maps
        ok(http.put("/collections/d", json={"encoder": "a"}))
        fill_texts(http, "d", texts[:80])
        ok(http.put("/collections/d/migration", json={
            "encoder": "b", "sample_size": 60, "min_quality": 0.0, "batch": 4}))
        wait_state(http, "d", lambda s: s["true"] >= 8)
        ok(http.delete("/collections/d"))
        assert "d" not in configs(data) and "d#new" not in configs(data)
        assert points(data, "d") == {} and points(data, "d#new") == {}
        assert not (data / MIGRATIONS / "d").exists()
        ok(http.put("/collections/d", json={"nesting": [4, 8]}))
        assert ok(http.get("/collections/d"))["migration"] is None
        assert_error(http.get("/collections/d/migration"), 404, "name")
    _assert_cancelled(data, "p", old_rows)
    with serve(data, models) as http:  # nothing comes back after a restart
        assert ok(http.get("/collections/p"))["migration"] is None
        assert answers(http, "p", QUERIES[:6]) == before


def _assert_cancelled(data: Path, name: str, old_rows: list) -> None:
    cfgs = configs(data)
    assert f"{name}#new" not in cfgs and "migration" not in cfgs[name]
    assert stored(data)[1] == old_rows  # every point row (and origin) as before the start
    assert not (data / MIGRATIONS / name).exists()
    assert not (data / "snapshots" / f"{name}#new").exists()


def test_backfill_waits_for_the_search_p99(models, tmp_path):
    """With the recent search p99 over ``max_p99_ms`` the worker stops after a batch (and
    says how long it waited); searches are answered meanwhile; cancel ends the wait."""
    data = tmp_path / "data"
    with serve(data, models) as http:
        ok(http.put("/collections/s", json={"encoder": "a"}))
        fill_texts(http, "s", TEXTS[:150])
        for q in QUERIES + QUERIES:  # >= 20 recent searches: a p99 to compare
            search(http, "s", text=q)
        ok(http.put("/collections/s/migration", json={
            "encoder": "b", "sample_size": 60, "min_quality": 0.0, "batch": 8,
            "max_p99_ms": 1e-3}))
        query = np.random.default_rng(0).normal(size=32).tolist()

        def throttled(s: dict) -> bool:
            search(http, "s", vector=query)  # searches go on: the p99 window stays full
            return s["true"] > 0 and s["throttled_s"] > 0

        st = wait_state(http, "s", throttled)
        assert st["max_p99_ms"] == 1e-3 and st["search_p99_ms"] > 1e-3
        for _ in range(10):
            search(http, "s", vector=query)
            time.sleep(0.05)
        st2 = status(http, "s")
        # one batch of 8 stored (sampling, or backfilling once 60 are), then it waits
        assert st2["true"] == st["true"] and st["true"] % 8 == 0 and st["true"] < 150
        assert st2["state"] == st["state"] and st2["throttled_s"] > st["throttled_s"]
        assert origins(data, "s#new") == {MODEL: st["true"]}
        r = search(http, "s", text=QUERIES[0])
        assert r["migration"]["space"] == "old" and len(r["hits"]) == 10
        ok(http.post("/collections/s/migration/cancel"))
        assert points(data, "s#new") == {}


def test_refused_map_fails_and_cancels(tmp_path):
    """A map under min_quality ends the migration in 'failed' with the reason; new-model
    queries and finish are refused; cancel clears it."""
    data = tmp_path / "data"
    rng = np.random.default_rng(5)
    X = rng.normal(size=(150, 8)).astype(np.float32)
    Y = rng.normal(size=(150, 12)).astype(np.float32)  # unrelated: no map can agree
    with serve(data) as http:
        ok(http.put("/collections/g", json={"nesting": [4, 8]}))
        fill_vectors(http, "g", X)
        rows = stored(data)[1]
        ok(http.put("/collections/g/migration", json={
            "nesting": [6, 12], "sample_size": 80, "min_quality": 0.9}))
        ok(http.put("/collections/g/migration/vectors", json={"points": [
            {"id": i, "vector": Y[i].tolist()} for i in range(80)]}))
        st = wait_state(http, "g", lambda s: s["state"] != "collecting")
        assert st["state"] == "failed" and "quality" in st["error"].lower(), st
        assert st["map"] is None and origins(data, "g#new") == {MODEL: 80}
        assert_error(http.post("/collections/g/search", json={"vector": Y[0].tolist(),
                                                              "model": "new"}), 409, "model")
        assert_error(http.post("/collections/g/migration/finish", json={"force": True}),
                     409, "force")
        ok(http.post("/collections/g/migration/cancel"))
        _assert_cancelled(data, "g", rows)


# --------------------------------------------------------------------------- 5. restart
def test_restart_mid_migration_resumes(models, tmp_path):
    data = tmp_path / "data"
    texts = TEXTS[:200]
    n = len(texts)
    X, Y, _ = client_data(120, seed=9)
    with serve(data, models) as http:
        ok(http.put("/collections/r", json={"encoder": "a"}))
        fill_texts(http, "r", texts)
        ok(http.put("/collections/f", json={"encoder": "b"}))
        fill_texts(http, "f", texts)
        reference = ids_of(answers(http, "f", QUERIES))
        before = answers(http, "r", QUERIES)
        slow_encoders(http)
        ok(http.put("/collections/r/migration", json={
            "encoder": "b", "sample_size": 60, "min_quality": 0.0, "batch": 4,
            "max_p99_ms": NO_THROTTLE}))
        ok(http.put("/collections/v", json={"nesting": [4, 8]}))
        fill_vectors(http, "v", X)
        ok(http.put("/collections/v/migration", json={
            "nesting": [6, 12], "sample_size": 60, "min_quality": 0.0}))
        ok(http.put("/collections/v/migration/vectors", json={"points": [
            {"id": i, "vector": Y[i].tolist()} for i in range(20)]}))
        wait_state(http, "r", lambda s: s["true"] >= 8)
    # stopped while sampling (encoder) and collecting (client vectors)
    with serve(data, models) as http:
        slow_encoders(http)
        st = status(http, "v")
        assert (st["state"], st["true"], st["new_vectors"]) == ("collecting", 20, 20)
        assert status(http, "r")["state"] in ("sampling", "mapping", "backfilling")
        assert answers(http, "r", QUERIES) == before
        st = wait_state(http, "r", lambda s: s["state"] == "backfilling" and s["true"] >= 80)
        st = ok(http.post("/collections/r/migration/pause"))
        time.sleep(0.2)
        paused = status(http, "r")
        assert 0 < paused["mapped"] < n - 60
        new_before = answers(http, "r", QUERIES, model="new")
        ok(http.put("/collections/v/migration/vectors", json={"points": [
            {"id": i, "vector": Y[i].tolist()} for i in range(20, 60)]}))
        wait_state(http, "v", lambda s: s["state"] == "backfilling")
        # a killed server: the files as they are now (no snapshot at exit)
        shutil.copytree(data, tmp_path / "killed")
    # stopped while paused mid-backfill: the same state, counts, maps and answers
    with serve(data, models) as http:
        st = status(http, "r")
        for key in ("state", "paused", "true", "mapped", "new_vectors", "map", "started"):
            assert st[key] == paused[key], key
        assert answers(http, "r", QUERIES) == before
        assert answers(http, "r", QUERIES, model="new") == new_before
        time.sleep(0.3)
        assert status(http, "r")["true"] == paused["true"]  # still paused
        st = status(http, "v")
        assert (st["state"], st["true"], st["mapped"]) == ("backfilling", 60, 60)
        ok(http.post("/collections/r/migration/resume"))
        st = wait_state(http, "r", lambda s: s["complete"] or s["state"] == "failed")
        assert (st["true"], st["mapped"]) == (n, 0)
        assert ids_of(answers(http, "r", QUERIES, model="b")) == reference
        ok(http.post("/collections/r/migration/finish"))
        assert ids_of(answers(http, "r", QUERIES)) == reference
    assert points(data, "r#new") == {} and origins(data, "r") == {MODEL: n}
    with serve(tmp_path / "killed", models) as http:  # resumes from the killed one's files
        st = status(http, "r")
        for key in ("state", "paused", "true", "mapped", "new_vectors", "map"):
            assert st[key] == paused[key], key
        assert answers(http, "r", QUERIES) == before
        assert answers(http, "r", QUERIES, model="new") == new_before
        assert status(http, "v")["mapped"] == 60
        ok(http.post("/collections/r/migration/resume"))
        wait_state(http, "r", lambda s: s["complete"] or s["state"] == "failed")
        assert ids_of(answers(http, "r", QUERIES, model="b")) == reference


# --------------------------------------------------------------------------- 6. bad input
def test_bad_migration_requests_are_refused_and_change_nothing(models, tmp_path):
    data = tmp_path / "data"
    X, Y, _ = client_data(150, seed=4)
    admin, writer = "A" * 16, "W" * 16
    reader, other = "R" * 16, "O" * 16
    keys = [ApiKey(admin, "admin", ("*",)), ApiKey(writer, "write", ("*",)),
            ApiKey(reader, "read", ("*",)), ApiKey(other, "admin", ("idle",))]
    as_admin = {"Authorization": f"Bearer {admin}"}
    as_writer = {"X-API-Key": writer}
    with serve(data, models, api_keys=keys) as http:
        http.headers.update(as_admin)
        ok(http.put("/collections/t", json={"encoder": "a"}))
        fill_texts(http, "t", TEXTS[:30])
        ok(http.put("/collections/bare", json={"encoder": "a"}))  # texts, not in payloads
        ok(http.put("/collections/bare/points", json={"points": [
            {"id": i, "text": t} for i, t in enumerate(TEXTS[:5])]}))
        ok(http.put("/collections/empty", json={"nesting": [4, 8]}))
        ok(http.put("/collections/idle", json={"nesting": [4, 8]}))
        fill_vectors(http, "idle", X[:20])
        ok(http.put("/collections/col", json={"nesting": [4, 8]}))
        fill_vectors(http, "col", X)
        ok(http.put("/collections/col/migration", json={
            "nesting": [6, 12], "sample_size": 60, "min_quality": 0.0}))  # collecting
        st = start_client(http, "v", X, Y, sample=60)
        assert st["state"] == "backfilling"
        before = stored(data)

        def refused(method: str, path: str, status_code: int, field: str, message: str = "",
                    **kw: Any) -> None:
            assert_error(http.request(method, path, **kw), status_code, field, message)
            assert stored(data) == before, (method, path)

        mig = "/collections/v/migration"
        # start: twice, same model, unknown encoder, a path, both/neither, no texts, empty
        refused("PUT", mig, 409, "name", "already migrating", json={"nesting": [6, 12]})
        refused("PUT", "/collections/t/migration", 422, "encoder", "already uses",
                json={"encoder": "a"})
        refused("PUT", "/collections/t/migration", 422, "encoder", json={"encoder": "zzz"})
        refused("PUT", "/collections/t/migration", 422, "encoder",
                json={"encoder": models["b"]})
        refused("PUT", "/collections/t/migration", 422, "encoder",
                json={"encoder": "b", "nesting": [24, 48]})
        refused("PUT", "/collections/t/migration", 422, "encoder", json={})
        refused("PUT", "/collections/t/migration", 422, "text_field",
                json={"encoder": "b", "text_field": "body"})
        refused("PUT", "/collections/bare/migration", 422, "text_field", json={"encoder": "b"})
        refused("PUT", "/collections/empty/migration", 409, "name", "no points",
                json={"nesting": [6, 12]})
        refused("PUT", "/collections/idle/migration", 422, "nesting",
                json={"nesting": [12, 6]})
        refused("PUT", "/collections/idle/migration", 422, "model_id",
                json={"nesting": [6, 12], "model_id": "old"})
        refused("PUT", "/collections/idle/migration", 422, "sample_size",
                json={"nesting": [6, 12], "sample_size": 1})
        # too few points for a map and its held-out gate: refused now, not "failed" later
        refused("PUT", "/collections/idle/migration", 422, "sample_size",
                json={"nesting": [6, 12]})
        refused("PUT", "/collections/t/migration", 422, "sample_size",
                json={"nesting": [6, 12], "sample_size": 20})
        refused("PUT", "/collections/t/migration", 422, "sample_size", json={"encoder": "b"})
        refused("PUT", "/collections/nope/migration", 404, "name", json={"nesting": [6, 12]})
        # authorization: starting and ending need an admin key; posting vectors a write key
        refused("PUT", "/collections/idle/migration", 403, "authorization",
                json={"nesting": [6, 12]}, headers=as_writer)
        for action in ("pause", "resume", "finish", "cancel"):
            refused("POST", f"{mig}/{action}", 403, "authorization", headers=as_writer)
        refused("POST", f"{mig}/cancel", 401, "authorization", headers={"Authorization": ""})
        refused("PUT", f"{mig}/vectors", 403, "authorization", headers={"X-API-Key": reader},
                json={"points": [{"id": 100, "vector": Y[100].tolist()}]})
        refused("PUT", f"{mig}/vectors", 403, "authorization", headers={"X-API-Key": other},
                json={"points": [{"id": 100, "vector": Y[100].tolist()}]})
        refused("POST", f"{mig}/pause", 403, "authorization", headers={"X-API-Key": other})
        seen = ok(http.get(mig, headers={"X-API-Key": reader}))  # a read key may look
        assert (seen["state"], seen["true"]) == ("backfilling", 60)
        assert http.get(mig, headers=as_writer).status_code == 200
        # routes of a collection that is not migrating
        for method, action in (("GET", ""), ("POST", "/pause"), ("POST", "/resume"),
                               ("POST", "/finish"), ("POST", "/cancel"), ("GET", "/queue")):
            refused(method, f"/collections/idle/migration{action}", 404, "name",
                    "not migrating")
        refused("PUT", "/collections/idle/migration/vectors", 404, "name",
                json={"points": [{"id": 0, "vector": Y[0].tolist()}]}, headers=as_writer)
        refused("GET", "/collections/nope/migration", 404, "name")
        # new-model vectors: width, unknown id, duplicates, zero prefix, limit
        refused("PUT", f"{mig}/vectors", 422, "points.0.vector",
                json={"points": [{"id": 100, "vector": X[0].tolist()}]}, headers=as_writer)
        refused("PUT", f"{mig}/vectors", 422, "points.1.id", "not stored",
                json={"points": [{"id": 100, "vector": Y[100].tolist()},
                                 {"id": 4000, "vector": Y[0].tolist()}]})
        refused("PUT", f"{mig}/vectors", 422, "points.1.id", "duplicate",
                json={"points": [{"id": 100, "vector": Y[100].tolist()},
                                 {"id": 100, "vector": Y[100].tolist()}]})
        refused("PUT", f"{mig}/vectors", 422, "points.0.vector",
                json={"points": [{"id": 100, "vector": [0.0] * 6 + [1.0] * 6}]})
        refused("PUT", f"{mig}/vectors", 422, "points", json={"points": []})
        refused("GET", f"{mig}/queue?limit=0", 422, "limit")
        refused("GET", f"{mig}/queue?limit=100001", 422, "limit")
        refused("GET", f"{mig}/queue?limit=ten", 422, "limit")
        refused("POST", "/collections/v/search", 422, "text",
                json={"text": "the cat", "model": "new"})  # client vectors: no new encoder
        refused("PUT", "/collections/v/points", 422, "points.0.vector",
                json={"points": [{"id": 1, "vector": X[1].tolist(), "model": "new"}]})
        refused("PUT", "/collections/v/points", 422, "points.0.vector",
                json={"points": [{"id": 1, "vector": Y[1].tolist()}]})
        refused("PUT", "/collections/v/points", 422, "points.0.model",
                json={"points": [{"id": 1, "vector": X[1].tolist(), "model": "other"}]})
        # queries naming a model neither old nor new; new-model queries before the maps
        refused("POST", "/collections/v/search", 422, "model", "neither",
                json={"vector": Y[0].tolist(), "model": "other"})
        refused("POST", "/collections/v/search/batch", 422, "searches.1.model",
                json={"searches": [{"vector": X[0].tolist()},
                                   {"vector": Y[0].tolist(), "model": "b"}]})
        refused("POST", "/collections/v/search", 422, "vector",
                json={"vector": X[0].tolist(), "model": "new"})
        refused("POST", "/collections/idle/search", 422, "model",
                json={"vector": X[0].tolist(), "model": "b"})
        refused("POST", "/collections/col/search", 409, "model",
                json={"vector": Y[0].tolist(), "model": "new"})
        # finish before the backfill is complete (mapped vectors left), or before the maps
        refused("POST", f"{mig}/finish", 409, "force", "mapped")
        refused("POST", f"{mig}/finish", 409, "force", json={"force": False})
        refused("POST", "/collections/col/migration/finish", 409, "force",
                json={"force": True})
        refused("POST", "/collections/col/migration/finish", 409, "name", "collecting")
        # the refusals left the migrations as they were
        st = status(http, "v")
        assert (st["state"], st["true"], st["mapped"]) == ("backfilling", 60, 90)
        assert status(http, "col")["state"] == "collecting"
        # a forced finish of a backfilling one is allowed: mapped vectors become the model's
        end = ok(http.post(f"{mig}/finish", json={"force": True}))
        assert (end["collection"]["dim"], end["collection"]["count"]) == (12, 150)
        assert sorted(points(data, "v")) == list(range(150))
        assert origins(data, "v") == {MODEL: 60, MAPPED: 90}


def test_qdrant_backend_refuses_migrations(tmp_path):
    pytest.importorskip("qdrant_client")
    from nestemb.service.points import open_backend

    backend = open_backend("qdrant", ":memory:")
    X, _, _ = client_data(20)
    data = tmp_path / "data"
    with serve(data, backend=backend) as http:
        ok(http.put("/collections/q", json={"nesting": [4, 8]}))
        fill_vectors(http, "q", X)
        before = db_rows(data)
        r = http.put("/collections/q/migration", json={"nesting": [6, 12]})
        assert_error(r, 409, "engine", "embedded engine")
        assert db_rows(data) == before
        assert_error(http.get("/collections/q/migration"), 404, "name")
        assert ok(http.get("/collections/q"))["migration"] is None
