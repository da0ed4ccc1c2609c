"""API tests of ``nestemb serve``: every endpoint and every error answer (through FastAPI's
TestClient over :func:`create_app`), search results against brute-force numpy, recall targets
against held-out queries, text search on SciFact against in-process MiniLM and ``nestemb index
search``, and a real server stopped with SIGTERM and restarted on its data.

Every refused request is checked three ways: the status, the JSON error (status, message,
field), and that nothing stored changed (SQLite rows, the files under the test folder, and the
collections as the server holds them in memory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from nestemb.index import synthetic_matryoshka
from nestemb.service import Limits, create_app
from harness.server import (assert_error, call_asgi, db_rows, dir_listing, running_server,
                                     stop_server)

SMALL = Limits(max_body_bytes=64_000, max_batch=8, max_k=50, max_payload_bytes=200,
               max_text_chars=100, max_dim=1024, max_queries=4)
NEST = [4, 8, 16]
JSON_HEADERS = {"content-type": "application/json"}


def vec(i: int, dim: int = 16) -> list[float]:
    """A deterministic vector with a non-zero first prefix."""
    return [float(((i * 7 + j * 3) % 11) - 5 + (j == 0)) for j in range(dim)]


def memory_state(client: TestClient) -> dict:
    """What the server holds in memory: collections, counts, and every point's id, payload and
    score against a fixed query (the scores fingerprint the vectors)."""
    cols = client.get("/collections").json()["collections"]
    out: dict[str, Any] = {"list": cols}
    for c in cols:
        info = client.get(f"/collections/{c['name']}").json()
        r = client.post(f"/collections/{c['name']}/search",
                        json={"vector": [1.0] * info["dim"], "k": SMALL.max_k,
                              "dims": [info["dim"]]})
        out[c["name"]] = (info["count"], info["nesting"],
                          sorted((json.dumps(h["id"]), json.dumps(h["payload"], sort_keys=True),
                                  round(h["score"], 6)) for h in r.json()["hits"]))
    return out


def snapshot(client: TestClient, root: Path, data_dir: Path) -> tuple:
    return db_rows(data_dir), dir_listing(root), memory_state(client)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(tmp_path / "data", limits=SMALL, tune_interval=3600)) as c:
        yield c


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_model):
    """One app for the bad-input table: ``docs`` (vectors, nesting 4/8/16) and ``txt`` (the
    tiny text model), a few points each."""
    root = tmp_path_factory.mktemp("bad")
    data_dir = root / "data"
    with TestClient(create_app(data_dir, limits=SMALL, tune_interval=3600,
                               encoders={"tiny": tiny_model})) as c:
        assert c.put("/collections/docs", json={"nesting": NEST}).status_code == 200
        pts = [{"id": i, "vector": vec(i), "payload": {"color": ["red", "blue"][i % 2], "n": i}}
               for i in (1, 2, 3)]
        pts += [{"id": s, "vector": vec(10 + j), "payload": {"flag": j == 0}}
                for j, s in enumerate(["a", "b", "3"])]
        assert c.put("/collections/docs/points", json={"points": pts}).json() == {"upserted": 6}
        assert c.put("/collections/txt", json={"encoder": "tiny"}).status_code == 200
        r = c.put("/collections/txt/points", json={"points": [
            {"id": "t1", "text": "what is the cell"}, {"id": "t2", "text": "a protein binds"}]})
        assert r.json() == {"upserted": 2}
        yield c, root, data_dir


# --------------------------------------------------------------------------- endpoints
def test_public_endpoints(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["collections"] == 0
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        "/healthz", "/collections", "/collections/{name}", "/collections/{name}/points",
        "/collections/{name}/points/{point_id}", "/collections/{name}/points/delete",
        "/collections/{name}/search", "/collections/{name}/search/batch", "/collections/{name}/widths",
        "/collections/{name}/migration", "/collections/{name}/migration/pause",
        "/collections/{name}/migration/resume", "/collections/{name}/migration/finish",
        "/collections/{name}/migration/cancel", "/collections/{name}/migration/queue",
        "/collections/{name}/migration/vectors"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()
    assert client.get("/docs").status_code == 404  # its scripts would come from a CDN


def test_collection_lifecycle(client, tmp_path):
    r = client.put("/collections/docs", json={"nesting": NEST})
    assert r.status_code == 200
    info = r.json()
    assert {k: info[k] for k in ("name", "count", "dim", "nesting", "encoder", "model_id",
                                 "model_version")} == {
        "name": "docs", "count": 0, "dim": 16, "nesting": NEST, "encoder": None,
        "model_id": None, "model_version": None}
    assert info["index"]["default_plan"] == {"dims": [16], "shortlist": [],
                                             "source": "default:exact", "expected_recall": 1.0}
    assert info["index"]["tuning"] is None
    assert_error(client.put("/collections/docs", json={"nesting": [2, 4]}), 409, "name",
                 "already exists")
    assert client.put("/collections/b-2_x", json={"nesting": [3]}).json()["dim"] == 3
    assert client.get("/collections").json() == {"collections": [
        {"name": "b-2_x", "count": 0}, {"name": "docs", "count": 0}]}
    client.put("/collections/docs/points", json={"points": [{"id": 1, "vector": vec(1)}]})
    assert client.get("/collections/docs").json()["count"] == 1
    assert client.delete("/collections/docs").json() == {"dropped": "docs"}
    assert_error(client.get("/collections/docs"), 404, "name", "does not exist")
    assert_error(client.delete("/collections/docs"), 404, "name")
    assert db_rows(tmp_path / "data")["points"] == []
    # a new collection of the same name starts empty, with its own nesting
    assert client.put("/collections/docs", json={"nesting": [2, 4]}).json()["count"] == 0
    assert client.get("/collections").json()["collections"][1] == {"name": "docs", "count": 0}


def test_points_roundtrip(client, tmp_path):
    client.put("/collections/docs", json={"nesting": NEST})
    big = 2**53 - 1  # the largest JSON-safe integer id
    payload = {"title": "Zürich ☃", "tags": ["a", 1, 2.5, True, None], "nested": {"x": {"y": 0}},
               "flag": False}
    pts = [{"id": 5, "vector": vec(5), "payload": payload},
           {"id": "5", "vector": vec(6), "payload": {"kind": "string"}},
           {"id": big, "vector": vec(7)}, {"id": -3, "vector": vec(8)},
           {"id": "doc/with space", "vector": vec(9)}]
    assert client.put("/collections/docs/points", json={"points": pts}).json() == {"upserted": 5}
    got = client.get("/collections/docs/points/5").json()
    assert got == {"id": 5, "vector": vec(5), "payload": payload}
    # the string id "5" beside the integer 5: reached as the JSON string literal
    assert client.get('/collections/docs/points/"5"').json() == {
        "id": "5", "vector": vec(6), "payload": {"kind": "string"}}
    assert client.get(f"/collections/docs/points/{big}").json()["id"] == big
    assert client.get("/collections/docs/points/-3").json()["id"] == -3
    assert client.get("/collections/docs/points/doc%2Fwith%20space").status_code == 404
    # (a "/" in a string id cannot be a path segment; it is reached by search)
    X = np.array(vec(5), dtype=np.float32)
    assert np.array_equal(np.array(got["vector"], dtype=np.float32), X)
    # replace: same id, new vector and payload; the count does not change
    r = client.put("/collections/docs/points",
                   json={"points": [{"id": 5, "vector": vec(11), "payload": {"v": 2}}]})
    assert r.json() == {"upserted": 1}
    assert client.get("/collections/docs/points/5").json() == {"id": 5, "vector": vec(11),
                                                               "payload": {"v": 2}}
    assert client.get("/collections/docs").json()["count"] == 5
    # non-float32 input is stored as float32
    client.put("/collections/docs/points", json={"points": [{"id": 9, "vector": [0.1] * 16}]})
    assert client.get("/collections/docs/points/9").json()["vector"] == [
        float(np.float32(0.1))] * 16
    # delete: counts only ids that existed; 5 and "5" are different points
    r = client.post("/collections/docs/points/delete", json={"ids": [5, "nope", 12345]})
    assert r.json() == {"deleted": 1}
    # the path 5 now reaches the string id "5" (the integer 5 is gone)
    assert client.get("/collections/docs/points/5").json()["id"] == "5"
    assert client.get("/collections/docs/points/%225%22").json()["id"] == "5"
    assert_error(client.get("/collections/docs/points/12345"), 404, "id", "not found")
    assert client.get("/collections/docs").json()["count"] == 5
    stored = {json.loads(k) for _, k, _, _ in db_rows(tmp_path / "data")["points"]}
    assert stored == {"5", big, -3, "doc/with space", 9}
    # JSON Schema's integers include 7.0: an integral float is that integer (ids, k, dims)
    client.put("/collections/docs/points", json={"points": [{"id": 7.0, "vector": vec(13)}]})
    assert client.get("/collections/docs/points/7").json()["id"] == 7
    r = client.post("/collections/docs/search", json={"vector": vec(13), "k": 2.0,
                                                      "dims": [4.0, 16], "shortlist": [6.0]})
    assert r.json()["hits"][0]["id"] == 7 and r.json()["plan"]["shortlist"] == [6]


def test_filters_compare_json_types(client):
    client.put("/collections/docs", json={"nesting": NEST})
    pts = [{"id": 1, "vector": vec(1), "payload": {"v": 1}},
           {"id": 2, "vector": vec(2), "payload": {"v": True}},
           {"id": 3, "vector": vec(3), "payload": {"v": 1.0}},
           {"id": 4, "vector": vec(4), "payload": {"v": "1"}},
           {"id": 5, "vector": vec(5), "payload": {"v": None}},
           {"id": 6, "vector": vec(6), "payload": {}}]
    client.put("/collections/docs/points", json={"points": pts})

    def ids(flt):
        r = client.post("/collections/docs/search", json={"vector": vec(0), "k": 10,
                                                          "filter": flt})
        return sorted(h["id"] for h in r.json()["hits"])

    assert ids({"v": 1}) == [1, 3]          # 1 == 1.0 in JSON
    assert ids({"v": True}) == [2]          # true is not 1
    assert ids({"v": "1"}) == [4]
    assert ids({"v": None}) == [5]          # null matches null, not a missing field
    assert ids({"v": 1, "w": 1}) == []
    assert ids({}) == [1, 2, 3, 4, 5, 6]


# --------------------------------------------------------------------------- bad input
V16 = vec(1)
_deep = "[" * 30000 + "]" * 30000
BAD = [
    # unknown collection or point
    ("GET", "/collections/nope", None, 404, "name", "does not exist"),
    ("DELETE", "/collections/nope", None, 404, "name", "does not exist"),
    ("PUT", "/collections/nope/points", {"points": [{"id": 9, "vector": V16}]}, 404, "name", ""),
    ("GET", "/collections/nope/points/1", None, 404, "name", ""),
    ("POST", "/collections/nope/points/delete", {"ids": [1]}, 404, "name", ""),
    ("POST", "/collections/nope/search", {"vector": V16}, 404, "name", ""),
    ("POST", "/collections/nope/search/batch", {"searches": [{"vector": V16}]}, 404, "name", ""),
    ("GET", "/collections/docs/points/999", None, 404, "id", "not found"),
    ("GET", "/collections/docs/points/%22999%22", None, 404, "id", "not found"),
    # wrong vector length
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": V16[:15]}]}, 422,
     "points.0.vector", "length 15"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": V16},
                                                    {"id": 10, "vector": V16 + [1.0]}]}, 422,
     "points.1.vector", "length 17"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": []}]}, 422,
     "points.0.vector", "length 0"),
    ("POST", "/collections/docs/search", {"vector": V16 + [0.0]}, 422, "vector", "length 17"),
    ("POST", "/collections/docs/search/batch", {"searches": [{"vector": V16}, {"vector": [1.0]}]},
     422, "searches.1.vector", "length 1"),
    # NaN, infinities (JSON literals the parser accepts), out-of-range and zero vectors
    ("PUT", "/collections/docs/points",
     b'{"points": [{"id": 9, "vector": [NaN' + b', 1' * 15 + b']}]}', 422, "points.0.vector.0",
     "finite"),
    ("PUT", "/collections/docs/points",
     b'{"points": [{"id": 9, "vector": [1' + b', 1' * 14 + b', Infinity]}]}', 422,
     "points.0.vector.15", "finite"),
    ("PUT", "/collections/docs/points",
     b'{"points": [{"id": 9, "vector": [-Infinity' + b', 1' * 15 + b']}]}', 422,
     "points.0.vector.0", "finite"),
    ("PUT", "/collections/docs/points",
     b'{"points": [{"id": 9, "vector": [1e999' + b', 1' * 15 + b']}]}', 422,
     "points.0.vector.0", "finite"),
    ("POST", "/collections/docs/search", b'{"vector": [NaN' + b', 1' * 15 + b']}', 422,
     "vector.0", "finite"),
    ("POST", "/collections/docs/search", b'{"vector": ' + json.dumps(V16).encode()
     + b', "recall": NaN}', 422, "recall", "finite"),
    ("PUT", "/collections/docs/points", b'{"points": [{"id": 9, "vector": '
     + json.dumps(V16).encode() + b', "payload": {"x": NaN}}]}', 422, "points.0.payload",
     "finite"),
    ("PUT", "/collections/docs/points", b'{"points": [{"id": 9, "vector": '
     + json.dumps(V16).encode() + b', "payload": {"x": [1e999]}}]}', 422, "points.0.payload",
     "finite"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": [1e31] + V16[1:]}]}, 422,
     "points.0.vector", "within"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": [0.0] * 4 + V16[4:]}]},
     422, "points.0.vector", "zero"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": [1e-31] * 4 + V16[4:]}]},
     422, "points.0.vector", "nearly"),
    ("POST", "/collections/docs/search", {"vector": [0.0] * 4 + V16[4:]}, 422, "vector", "zero"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": [True] + V16[1:]}]}, 422,
     "points.0.vector.0", "valid number"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": ["1"] + V16[1:]}]}, 422,
     "points.0.vector.0", "valid number"),
    # text: empty, too long, where there is no encoder, both or neither of vector and text
    ("PUT", "/collections/txt/points", {"points": [{"id": 9, "text": ""}]}, 422,
     "points.0.text", "empty"),
    ("PUT", "/collections/txt/points", {"points": [{"id": 9, "text": "cell"},
                                                   {"id": 10, "text": " \n\t "}]}, 422,
     "points.1.text", "empty"),
    ("POST", "/collections/txt/search", {"text": ""}, 422, "text", "empty"),
    ("POST", "/collections/txt/search/batch", {"searches": [{"text": "  "}]}, 422,
     "searches.0.text", "empty"),
    ("PUT", "/collections/txt/points", {"points": [{"id": 9, "text": "x" * 101}]}, 413,
     "points.0.text", "exceeds the limit of 100"),
    ("POST", "/collections/txt/search", {"text": "y" * 101}, 413, "text", "limit of 100"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "text": "cell"}]}, 422,
     "points.0.text", "no encoder"),
    ("POST", "/collections/docs/search", {"text": "cell"}, 422, "text", "no encoder"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": V16, "text": "a"}]}, 422,
     "points.0", "exactly one"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9}]}, 422, "points.0", "exactly one"),
    ("POST", "/collections/docs/search", {"vector": V16, "text": "a"}, 422, "vector",
     "exactly one"),
    ("POST", "/collections/docs/search", {"k": 3}, 422, "vector", "exactly one"),
    # oversized payloads, batches, bodies; payloads nested too deeply
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": V16,
                                                     "payload": {"x": "y" * 200}}]}, 413,
     "points.0.payload", "exceeds the limit of 200"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": V16, "payload": {
        "x": json.loads("[" * 64 + "]" * 64)}}]}, 422, "points.0.payload", "deeper than 64"),
    ("PUT", "/collections/docs/points", {"points": [{"id": i, "vector": V16} for i in range(9)]},
     413, "points", "batch of 9 points exceeds the limit of 8"),
    ("POST", "/collections/docs/points/delete", {"ids": list(range(9))}, 413, "ids",
     "limit of 8"),
    ("POST", "/collections/docs/search/batch", {"searches": [{"vector": V16}] * 5}, 413,
     "searches", "limit of 4"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": V16,
                                                     "payload": {"x": "y" * 70_000}}]}, 413,
     "body", "exceeds the limit of 64000 bytes"),
    # k out of range
    ("POST", "/collections/docs/search", {"vector": V16, "k": 0}, 422, "k", "greater than"),
    ("POST", "/collections/docs/search", {"vector": V16, "k": -1}, 422, "k", "greater than"),
    ("POST", "/collections/docs/search", {"vector": V16, "k": 51}, 422, "k", "1 ... 50"),
    ("POST", "/collections/docs/search", {"vector": V16, "k": 10**30}, 422, "k",
     "less than or equal"),
    ("POST", "/collections/docs/search", {"vector": V16, "k": "10"}, 422, "k", "valid integer"),
    ("POST", "/collections/docs/search", {"vector": V16, "k": 2.5}, 422, "k", "valid integer"),
    ("POST", "/collections/docs/search", {"vector": V16, "k": True}, 422, "k", "valid integer"),
    ("POST", "/collections/docs/search/batch", {"searches": [{"vector": V16, "k": 99}]}, 422,
     "searches.0.k", "1 ... 50"),
    # dims not in the nesting, bad shortlists, dims with recall
    ("POST", "/collections/docs/search", {"vector": V16, "dims": [5]}, 422, "dims",
     "5 is not in the collection's nesting [4, 8, 16]"),
    ("POST", "/collections/docs/search", {"vector": V16, "dims": [32]}, 422, "dims", "not in"),
    ("POST", "/collections/docs/search", {"vector": V16, "dims": [8, 4]}, 422, "dims",
     "ascending"),
    ("POST", "/collections/docs/search", {"vector": V16, "dims": [8, 8]}, 422, "dims",
     "ascending"),
    ("POST", "/collections/docs/search", {"vector": V16, "dims": []}, 422, "dims", "at least one"),
    ("POST", "/collections/docs/search", {"vector": V16, "dims": [0]}, 422, "dims.0",
     "greater than or equal to 1"),
    ("POST", "/collections/docs/search", {"vector": V16, "dims": [4, 16], "shortlist": [5]}, 422,
     "shortlist", ">= k=10"),
    ("POST", "/collections/docs/search", {"vector": V16, "dims": [4, 8, 16],
                                          "shortlist": [20, 40]}, 422, "shortlist",
     "non-increasing"),
    ("POST", "/collections/docs/search", {"vector": V16, "dims": [4, 8, 16], "shortlist": [20]},
     422, "shortlist", "one size per stage"),
    ("POST", "/collections/docs/search", {"vector": V16, "shortlist": [20]}, 422, "shortlist",
     "needs dims"),
    ("POST", "/collections/docs/search", {"vector": V16, "dims": [16], "recall": 0.9}, 422,
     "recall", "not both"),
    # recall outside (0, 1]
    ("POST", "/collections/docs/search", {"vector": V16, "recall": 0}, 422, "recall",
     "greater than 0"),
    ("POST", "/collections/docs/search", {"vector": V16, "recall": -0.5}, 422, "recall",
     "greater than 0"),
    ("POST", "/collections/docs/search", {"vector": V16, "recall": 1.01}, 422, "recall",
     "less than or equal to 1"),
    ("POST", "/collections/docs/search", {"vector": V16, "recall": "0.9"}, 422, "recall",
     "valid number"),
    ("POST", "/collections/docs/search/batch", {"searches": [{"vector": V16, "recall": 2}]}, 422,
     "searches.0.recall", "less than or equal to 1"),
    # malformed JSON, missing or wrong bodies
    ("PUT", "/collections/docs/points", b'{"points": [', 400, "body", "malformed JSON"),
    ("PUT", "/collections/docs/points", b"{'points': []}", 400, "body", "malformed JSON"),
    ("PUT", "/collections/docs/points", b'{"points": [],}', 400, "body", "malformed JSON"),
    ("POST", "/collections/docs/search", b'\xff\xfe{"vector": 1}', 400, "body",
     "not valid UTF-8"),
    ("POST", "/collections/docs/search", _deep.encode(), 400, "body", "malformed JSON"),
    ("PUT", "/collections/docs/points", b"", 422, "body", "required"),
    ("PUT", "/collections/docs/points", b"[]", 422, "body", "valid dictionary"),
    ("PUT", "/collections/docs/points", {"points": []}, 422, "points", "must not be empty"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": V16}], "x": 1}, 422, "x",
     "extra inputs"),
    ("POST", "/collections/docs/points/delete", {"ids": []}, 422, "ids", "must not be empty"),
    ("POST", "/collections/docs/search/batch", {"searches": []}, 422, "searches",
     "must not be empty"),
    ("POST", "/collections/docs/search", {"vector": V16, "filter": {"color": ["red"]}}, 422,
     "filter.color", "valid"),
    ("POST", "/collections/docs/search", b'{"vector": ' + json.dumps(V16).encode()
     + b', "filter": {"color": "\\ud800"}}', 422, "filter.color", "surrogate"),
    # duplicate ids in one batch (1 and "1" are different ids)
    ("PUT", "/collections/docs/points", {"points": [{"id": 1, "vector": V16},
                                                    {"id": "1", "vector": V16},
                                                    {"id": 1, "vector": V16}]}, 422,
     "points.2.id", "duplicate id 1"),
    ("PUT", "/collections/docs/points", {"points": [{"id": "x", "vector": V16},
                                                    {"id": "x", "vector": V16}]}, 422,
     "points.1.id", "duplicate id 'x'"),
    ("POST", "/collections/docs/points/delete", {"ids": [2, "2", 2]}, 422, "ids.2",
     "duplicate id 2"),
    # bad ids and payloads
    ("PUT", "/collections/docs/points", {"points": [{"id": 1.5, "vector": V16}]}, 422,
     "points.0.id", "valid integer"),
    ("PUT", "/collections/docs/points", {"points": [{"id": True, "vector": V16}]}, 422,
     "points.0.id", "valid integer"),
    ("PUT", "/collections/docs/points", {"points": [{"id": "", "vector": V16}]}, 422,
     "points.0.id", "at least 1 character"),
    ("PUT", "/collections/docs/points", {"points": [{"id": "i" * 257, "vector": V16}]}, 422,
     "points.0.id", "at most 256"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 2**53, "vector": V16}]}, 422,
     "points.0.id", "less than or equal to 9007199254740991"),
    ("PUT", "/collections/docs/points", {"points": [{"id": -(2**53), "vector": V16}]}, 422,
     "points.0.id", "greater than or equal to -9007199254740991"),
    ("PUT", "/collections/docs/points", {"points": [{"id": None, "vector": V16}]}, 422,
     "points.0.id", "valid"),
    ("PUT", "/collections/docs/points", {"points": [{"vector": V16}]}, 422, "points.0.id",
     "required"),
    ("PUT", "/collections/docs/points", b'{"points": [{"id": "\\udc00", "vector": '
     + json.dumps(V16).encode() + b'}]}', 422, "points.0.id", "unicode"),
    ("PUT", "/collections/docs/points", b'{"points": [{"id": 9, "vector": '
     + json.dumps(V16).encode() + b', "payload": {"k": "\\ud800"}}]}', 422, "points.0.payload",
     "surrogate"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": V16, "payload": [1]}]},
     422, "points.0.payload", "valid dictionary"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 9, "vector": V16, "extra": 1}]}, 422,
     "points.0.extra", "extra inputs"),
    # collection names: separators, dots, url-encoded too
    ("PUT", "/collections/a.b", {"nesting": [2, 4]}, 422, "name", "invalid collection name"),
    ("PUT", "/collections/%2E%2E", {"nesting": [2, 4]}, 422, "name", "'..'"),
    ("PUT", "/collections/.hidden", {"nesting": [2, 4]}, 422, "name", "invalid"),
    ("PUT", "/collections/a%5Cb", {"nesting": [2, 4]}, 422, "name", "invalid"),
    ("PUT", "/collections/a%20b", {"nesting": [2, 4]}, 422, "name", "invalid"),
    ("PUT", "/collections/a%00b", {"nesting": [2, 4]}, 422, "name", "invalid"),
    ("PUT", "/collections/-x", {"nesting": [2, 4]}, 422, "name", "invalid"),
    ("PUT", "/collections/%C3%A9", {"nesting": [2, 4]}, 422, "name", "invalid"),
    ("PUT", "/collections/" + "n" * 65, {"nesting": [2, 4]}, 422, "name", "invalid"),
    ("PUT", "/collections/..%2Fescape", {"nesting": [2, 4]}, 404, "path", "not found"),
    ("PUT", "/collections/%2E%2E%2F%2E%2E%2Fetc", {"nesting": [2, 4]}, 404, "path", ""),
    ("PUT", "/collections/docs%2F..%2Fother/points", {"points": [{"id": 9, "vector": V16}]}, 404,
     "path", ""),
    ("GET", "/collections/%2E%2E/points/1", None, 422, "name", "invalid"),
    ("POST", "/collections/..%5Cdocs/search", {"vector": V16}, 422, "name", "invalid"),
    ("DELETE", "/collections/%2E%2E", None, 422, "name", "invalid"),
    # creating collections
    ("PUT", "/collections/docs", {"nesting": [2, 4]}, 409, "name", "already exists"),
    ("PUT", "/collections/new", {}, 422, "nesting", "required"),
    ("PUT", "/collections/new", {"nesting": [8, 4]}, 422, "nesting", "ascending"),
    ("PUT", "/collections/new", {"nesting": [0, 4]}, 422, "nesting.0", "greater than"),
    ("PUT", "/collections/new", {"nesting": [2048]}, 422, "nesting", "limit of 1024"),
    ("PUT", "/collections/new", {"nesting": "4,8"}, 422, "nesting", "valid list"),
    ("PUT", "/collections/new", {"encoder": "/does/not/exist"}, 422, "encoder",
     "one of this server's encoders: minilm, tiny"),
    ("PUT", "/collections/new", {"encoder": "x" * 4000}, 422, "encoder", "a name, not a path"),
    ("PUT", "/collections/new", {"nesting": [2, 4], "colour": 1}, 422, "colour", "extra inputs"),
    # wrong method or route
    ("POST", "/collections/docs", {"nesting": [2, 4]}, 405, "method", "not allowed"),
    ("GET", "/collections/docs/points", None, 405, "method", "not allowed"),
    ("GET", "/nothing/here", None, 404, "path", "not found"),
]


@pytest.mark.parametrize("method,path,body,status,field,message", BAD,
                         ids=[f"{i}-{b[0]}-{b[1][:40]}" for i, b in enumerate(BAD)])
def test_bad_input_is_refused_and_changes_nothing(seeded, method, path, body, status, field,
                                                   message):
    client, root, data_dir = seeded
    before = snapshot(client, root, data_dir)
    if isinstance(body, bytes):
        r = client.request(method, path, content=body, headers=JSON_HEADERS)
    elif body is None:
        r = client.request(method, path)
    else:
        r = client.request(method, path, json=body)
    assert_error(r, status, field, message)
    assert snapshot(client, root, data_dir) == before


def test_bad_input_as_sent_on_the_wire(seeded):
    """Paths a client would normalize (literal ``..``), a chunked body past the limit, and a
    body that is not declared JSON: sent straight to the ASGI app."""
    client, root, data_dir = seeded
    before = snapshot(client, root, data_dir)
    app = client.app
    cases = [("PUT", "/collections/..", 422, "name"), ("PUT", "/collections/../x", 404, "path"),
             ("PUT", "/collections/../../etc/points", 404, "path"),
             ("GET", "/collections/docs/../docs", 404, "path"),
             ("DELETE", "/collections/./docs", 404, "path")]
    for method, path, status, field in cases:
        body = [json.dumps({"nesting": [2, 4]}).encode()] if method == "PUT" else []
        r = call_asgi(app, method, path, headers=JSON_HEADERS, chunks=body)
        assert (r.status, r.json()["error"]["field"]) == (status, field), (path, r.body)
    # a chunked (no Content-Length) body growing past 64,000 bytes: 413, and reading stops
    chunks = [b'{"points": [' + b" " * 20_000] + [b" " * 20_000] * 10
    r = call_asgi(app, "PUT", "/collections/docs/points", headers=JSON_HEADERS, chunks=chunks,
                  chunked=True)
    assert r.status == 413 and r.json()["error"] == {
        "status": 413, "field": "body",
        "message": "request body exceeds the limit of 64000 bytes"}
    assert r.body_reads == 4  # 4 x 20,000 bytes > 64,000: the rest is never pulled
    # a body not declared as JSON
    r = client.put("/collections/docs/points", content=json.dumps(
        {"points": [{"id": 9, "vector": V16}]}), headers={"content-type": "text/plain"})
    assert_error(r, 415, "content-type", "application/json")
    r = client.put("/collections/docs/points", content=b"ids=1",
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert_error(r, 415, "content-type", "application/json")
    r = call_asgi(app, "PUT", "/collections/docs/points", headers={"content-length": "x1"},
                  chunks=[b"{}"])
    assert r.status == 400 and r.json()["error"]["field"] == "content-length"
    assert snapshot(client, root, data_dir) == before


# --------------------------------------------------------------------------- search results
N, DIM, NESTING = 2000, 64, [8, 16, 32, 64]


def brute(X: np.ndarray, q: np.ndarray, k: int, rows: np.ndarray | None = None,
          d: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows of ``X`` (restricted to ``rows``) by float64 cosine of ``d``-prefixes."""
    rows = np.arange(len(X)) if rows is None else np.asarray(rows)
    d = d or X.shape[1]
    A = X[rows, :d].astype(np.float64)
    s = (A / np.linalg.norm(A, axis=1, keepdims=True)) @ (q[:d] / np.linalg.norm(q[:d]))
    order = np.argsort(-s, kind="stable")[:k]
    return rows[order], s[order]


def check_exact(hits: list[dict], ref_rows: np.ndarray, ref_scores: np.ndarray) -> None:
    assert [h["id"] for h in hits] == ref_rows.tolist()
    np.testing.assert_allclose([h["score"] for h in hits], ref_scores, atol=2e-5)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """2,000 synthetic Matryoshka vectors (ids 0..1999, payloads with a cluster and a flag)
    in a served collection, plus 300 held-out query vectors from the same distribution."""
    A = synthetic_matryoshka(N + 300, DIM, seed=3)
    X, Q = A[:N], A[N:]
    with TestClient(create_app(tmp_path_factory.mktemp("synth") / "data",
                               tune_interval=3600)) as c:
        c.put("/collections/s", json={"nesting": NESTING})
        for a in range(0, N, 1000):
            pts = [{"id": i, "vector": X[i].tolist(),
                    "payload": {"cluster": i % 7, "even": i % 2 == 0, "half": int(i % 2 == 0),
                                "rare": i % 97 == 0}}
                   for i in range(a, min(N, a + 1000))]
            assert c.put("/collections/s/points", json={"points": pts}).json() == {
                "upserted": len(pts)}
        yield c, X, Q


def search(c, **req) -> dict:
    r = c.post("/collections/s/search", json=req)
    assert r.status_code == 200, r.text
    return r.json()


def test_full_dim_search_equals_brute_force(synth):
    c, X, Q = synth
    for q in Q[:40]:
        ref = brute(X, q, 10)
        out = search(c, vector=q.tolist(), k=10, dims=[DIM])
        check_exact(out["hits"], *ref)
        assert out["plan"] == {"dims": [DIM], "shortlist": [], "source": "request",
                               "expected_recall": None}
        assert [s["dims"] for s in out["timing"]["stages"]] == [DIM]
        assert out["timing"]["stages"][0]["candidates"] == N
        # untuned: the default plan is exact search
        out = search(c, vector=q.tolist(), k=10)
        check_exact(out["hits"], *ref)
        assert out["plan"]["source"] == "default:exact"
    # k = 1, and k up to the limit
    out = search(c, vector=Q[0].tolist(), k=1)
    check_exact(out["hits"], *brute(X, Q[0], 1))
    out = search(c, vector=Q[0].tolist(), k=1000, dims=[16, 64], shortlist=[N])
    check_exact(out["hits"], *brute(X, Q[0], 1000))


def test_funnel_search_equals_numpy_funnel(synth):
    c, X, Q = synth
    for q in Q[:25]:
        ref = brute(X, q, 10)
        # a shortlist as long as the collection: the funnel is exact
        check_exact(search(c, vector=q.tolist(), k=10, dims=[8, 64], shortlist=[N])["hits"],
                    *ref)
        check_exact(search(c, vector=q.tolist(), k=10, dims=[8, 16, 64],
                           shortlist=[N, N])["hits"], *ref)
        # a short shortlist: exactly the numpy funnel (top 60 on 8 dims, re-ranked on 64)
        cand, _ = brute(X, q, 60, d=8)
        out = search(c, vector=q.tolist(), k=10, dims=[8, 64], shortlist=[60])
        check_exact(out["hits"], *brute(X, q, 10, rows=cand))
        assert [(s["dims"], s["candidates"], s["kept"]) for s in out["timing"]["stages"]] == [
            (8, N, 60), (64, 60, 10)]
        # three stages: 200 on 8 dims, 50 of them on 32 dims, 10 on 64
        c1, _ = brute(X, q, 200, d=8)
        c2, _ = brute(X, q, 50, rows=c1, d=32)
        out = search(c, vector=q.tolist(), k=10, dims=[8, 32, 64], shortlist=[200, 50])
        check_exact(out["hits"], *brute(X, q, 10, rows=c2))


def test_filtered_search_equals_brute_force_on_the_subset(synth):
    c, X, Q = synth
    ids = np.arange(N)
    for q in Q[:20]:
        for flt, keep in (({"cluster": 3}, ids % 7 == 3), ({"even": True}, ids % 2 == 0),
                          ({"half": 1}, ids % 2 == 0), ({"even": False, "cluster": 5},
                                                        (ids % 2 == 1) & (ids % 7 == 5))):
            out = search(c, vector=q.tolist(), k=10, filter=flt)
            check_exact(out["hits"], *brute(X, q, 10, rows=ids[keep]))
            assert all(all(h["payload"][f] == v and type(h["payload"][f]) is type(v)
                           for f, v in flt.items()) for h in out["hits"])
    # a filter matching fewer points than k returns all of them, best first; none, no hit
    rare = ids[ids % 97 == 0]
    assert len(rare) == 21
    out = search(c, vector=Q[0].tolist(), k=50, filter={"rare": True})
    check_exact(out["hits"], *brute(X, Q[0], 50, rows=rare))
    assert search(c, vector=Q[0].tolist(), filter={"cluster": 99})["hits"] == []
    assert search(c, vector=Q[0].tolist(), filter={"even": 1})["hits"] == []  # 1 is not true


def test_batch_search_equals_single_searches(synth):
    c, X, Q = synth
    reqs = [{"vector": Q[0].tolist()}, {"vector": Q[1].tolist(), "k": 3, "dims": [16, 64]},
            {"vector": Q[2].tolist(), "k": 5, "filter": {"cluster": 2}},
            {"vector": Q[3].tolist(), "recall": 0.9}]
    batch = c.post("/collections/s/search/batch", json={"searches": reqs})
    assert batch.status_code == 200
    results = batch.json()["results"]
    assert len(results) == 4
    for req, res in zip(reqs, results):
        single = search(c, **req)
        assert res["hits"] == single["hits"] and res["plan"] == single["plan"]


def test_deleted_points_never_come_back_in_search(tmp_path):
    A = synthetic_matryoshka(500, 16, seed=5)
    with TestClient(create_app(tmp_path / "data", tune_interval=3600)) as c:
        c.put("/collections/s", json={"nesting": [4, 16]})
        c.put("/collections/s/points", json={"points": [
            {"id": i, "vector": A[i].tolist()} for i in range(400)]})
        gone = list(range(0, 400, 3))
        assert c.post("/collections/s/points/delete", json={"ids": gone}).json() == {
            "deleted": len(gone)}
        left = np.array(sorted(set(range(400)) - set(gone)))
        for q in A[400:420]:
            out = search(c, vector=q.tolist(), k=20, dims=[4, 16], shortlist=[400])
            check_exact(out["hits"], *brute(A, q, 20, rows=left))
        assert c.get("/collections/s").json()["count"] == len(left)


def test_recall_targets_hold_on_held_out_queries(tmp_path):
    """After tuning, the plan for recall target r reaches recall@10 >= r against brute force
    on 1,000 held-out queries, is the cheapest tuned plan whose lower bound reaches r, and a
    target of 1 is exact search."""
    n = 3000
    A = synthetic_matryoshka(n + 1000, DIM, seed=11)
    X, Q = A[:n], A[n:]
    app = create_app(tmp_path / "data", tune_interval=3600)
    with TestClient(app) as c:
        c.put("/collections/s", json={"nesting": NESTING})
        for a in range(0, n, 1000):
            c.put("/collections/s/points", json={"points": [
                {"id": i, "vector": X[i].tolist()} for i in range(a, a + 1000)]})
        assert search(c, vector=Q[0].tolist(), recall=0.9)["plan"]["source"] == "exact"
        tuning = app.state.service.collections["s"].tune()
        info = c.get("/collections/s").json()["index"]
        assert info["tuning"]["count"] == n and info["tuning"]["configs"] == tuning.configs
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
        truth = np.argsort(-(Qn.astype(np.float64) @ Xn.T), axis=1)[:, :10]
        plans = []
        for r in (0.8, 0.9, 0.95, 0.99, 1.0):
            reqs = [{"vector": q.tolist(), "recall": r} for q in Q]
            results = []
            for a in range(0, len(reqs), 250):
                got = c.post("/collections/s/search/batch", json={"searches": reqs[a:a + 250]})
                results += got.json()["results"]
            plan = results[0]["plan"]
            assert all(res["plan"] == plan for res in results)
            measured = np.mean([len({h["id"] for h in res["hits"]} & set(t.tolist())) / 10
                                for res, t in zip(results, truth)])
            assert measured >= r, (r, plan, measured)
            cheapest = next(cfg for cfg in tuning.configs if cfg["recall10_low"] >= r)
            if r < 1:
                assert (plan["dims"], plan["shortlist"]) == (cheapest["dims"],
                                                             cheapest["shortlist"])
                assert plan["expected_recall"] == cheapest["recall10"] >= r
            else:
                assert plan == {"dims": [DIM], "shortlist": [], "source": "exact",
                                "expected_recall": 1.0}
            plans.append((tuple(plan["dims"]), tuple(plan["shortlist"])))
        assert len(set(plans)) >= 3  # the targets pick different budgets
        default = c.get("/collections/s").json()["index"]["default_plan"]
        assert default["source"] == "default:tuned" and default["expected_recall"] >= 0.99


# --------------------------------------------------------------------------- text search
def test_text_search_on_scifact_matches_in_process_minilm(tmp_path, shared_data, cli):
    """200 SciFact documents embedded by the server (MiniLM): searching by text returns the
    ids of in-process brute force over ``load_text_model("minilm").encode`` and of
    ``nestemb index search`` over the same embeddings."""
    from nestemb.nesting import Manifest
    from nestemb.folders import save_embeddings
    from nestemb.text.encoder import load_text_model

    corpus = shared_data / "scifact" / "corpus.jsonl"
    if not corpus.is_file():
        pytest.skip(f"SciFact corpus not found at {corpus}")
    docs = []
    with corpus.open(encoding="utf-8") as f:
        for line, _ in zip(f, range(200)):
            d = json.loads(line)
            docs.append((str(d["_id"]), (d["title"] + " " + d["text"])[:200].strip()))
    queries = [json.loads(line)["text"] for line, _ in
               zip((shared_data / "scifact" / "queries.jsonl").open(encoding="utf-8"), range(8))]
    with TestClient(create_app(tmp_path / "data", tune_interval=3600)) as c:
        info = c.put("/collections/sci", json={"encoder": "minilm"}).json()
        assert (info["dim"], info["nesting"], info["model_id"]) == (
            384, [32, 64, 128, 256, 384], "all-MiniLM-L6-v2")
        for a in range(0, len(docs), 100):
            r = c.put("/collections/sci/points", json={"points": [
                {"id": i, "text": t, "payload": {"n": a + j}}
                for j, (i, t) in enumerate(docs[a:a + 100])]})
            assert r.json() == {"upserted": 100}
        served = [c.post("/collections/sci/search",
                         json={"text": q, "k": 10, "dims": [384]}).json() for q in queries]
    assert all("embed_ms" in s["timing"] for s in served)
    model = load_text_model("minilm")
    assert model.manifest.model_version == info["model_version"]
    E = model.encode([t for _, t in docs])
    QE = model.encode(queries)
    ids = [i for i, _ in docs]
    for s, q in zip(served, QE):
        rows, scores = brute(E, q, 10)
        assert [h["id"] for h in s["hits"]] == [ids[r] for r in rows]
        np.testing.assert_allclose([h["score"] for h in s["hits"]], scores, atol=1e-4)
    # the same ranking from the CLI's exact index over these embeddings
    m = model.manifest
    man = Manifest(model_id=m.model_id, model_version=m.model_version, nesting=m.nesting,
                   dim=m.dim)
    save_embeddings(tmp_path / "emb", E, man, ids=ids)
    save_embeddings(tmp_path / "q", QE, man, ids=[str(i) for i in range(len(queries))])
    res = cli("index", "build", "--embeddings", tmp_path / "emb", "--out", tmp_path / "idx", "--stages", "384")
    assert res.code == 0, res
    res = cli("index", "search", tmp_path / "idx", "--queries", tmp_path / "q", "-k", "10",
              "--out", tmp_path / "res.json")
    assert res.code == 0, res
    out = json.loads((tmp_path / "res.json").read_text())
    for i, s in enumerate(served):
        assert [h["id"] for h in s["hits"]] == out[str(i)]["ids"]


# --------------------------------------------------------------------------- real server
def test_real_server_keeps_every_point_across_a_graceful_restart(tmp_path):
    """`nestemb serve` on loopback: write points, stop with SIGTERM (exit code 0), start again
    on the same folder, and find every point (exact vectors, payloads), no deleted one, and
    the same search results."""
    import httpx

    data_dir = tmp_path / "data"
    A = synthetic_matryoshka(600, 16, seed=2)
    ids: list[Any] = [i if i % 2 else f"p{i}" for i in range(600)]
    payloads = [{"i": i, "tags": ["x"] * (i % 3), "ok": i % 5 == 0} for i in range(600)]
    with running_server(data_dir) as (url, proc):
        with httpx.Client(base_url=url, timeout=30) as h:
            assert h.put("/collections/live", json={"nesting": [4, 16]}).status_code == 200
            for a in range(0, 600, 200):
                r = h.put("/collections/live/points", json={"points": [
                    {"id": ids[i], "vector": A[i].tolist(), "payload": payloads[i]}
                    for i in range(a, a + 200)]})
                assert r.json() == {"upserted": 200}
            gone = ids[::7]
            assert h.post("/collections/live/points/delete", json={"ids": gone}).json() == {
                "deleted": len(gone)}
            before = h.post("/collections/live/search", json={"vector": A[0].tolist(),
                                                              "k": 20}).json()["hits"]
        assert stop_server(proc) == 0
        assert '"event": "stopped"' in proc.log_tail(100_000)
    with running_server(data_dir) as (url, proc):
        with httpx.Client(base_url=url, timeout=30) as h:
            assert h.get("/collections").json() == {
                "collections": [{"name": "live", "count": 600 - len(gone)}]}
            for i in range(600):
                pid = ids[i]
                r = h.get(f"/collections/live/points/{pid}")
                if pid in gone:
                    assert r.status_code == 404
                else:
                    got = r.json()
                    assert got["id"] == pid and got["payload"] == payloads[i]
                    assert np.array_equal(np.array(got["vector"], dtype=np.float32), A[i])
            after = h.post("/collections/live/search", json={"vector": A[0].tolist(),
                                                             "k": 20}).json()["hits"]
            assert after == before
        assert stop_server(proc) == 0
    assert len(db_rows(data_dir)["points"]) == 600 - len(gone)


# --------------------------------------------------------------------------- integrity
def test_a_changed_encoder_is_refused_not_mixed(tmp_path, tiny_model):
    """A collection remembers its encoder's weights version: when the model folder holds
    other weights after a restart (or is gone), text requests get 409 instead of vectors
    that are not comparable with the stored ones; vector search keeps working."""
    import shutil

    from nestemb.text._tiny import make_tiny_model

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    data_dir = tmp_path / "data"
    with TestClient(create_app(data_dir, limits=SMALL, tune_interval=3600,
                               encoders={"t": model})) as c:
        info = c.put("/collections/t", json={"encoder": "t"}).json()
        assert c.put("/collections/t/points", json={"points": [
            {"id": 1, "text": "what is the cell"}]}).json() == {"upserted": 1}
    shutil.rmtree(model)
    make_tiny_model(tmp_path / "other", seed=1)
    shutil.copytree(tmp_path / "other", model)
    before = db_rows(data_dir)
    with TestClient(create_app(data_dir, limits=SMALL, tune_interval=3600,
                               encoders={"t": model})) as c:
        assert_error(c.put("/collections/t/points", json={"points": [{"id": 2, "text": "a"}]}),
                     409, "encoder", f"built with {info['model_version']}")
        assert_error(c.post("/collections/t/search", json={"text": "cell"}), 409, "encoder",
                     "not be comparable")
        r = c.post("/collections/t/search", json={"vector": [1.0] * info["dim"]})
        assert [h["id"] for h in r.json()["hits"]] == [1]
    shutil.rmtree(model)
    model.mkdir()  # an empty folder where the model was
    with TestClient(create_app(data_dir, limits=SMALL, tune_interval=3600,
                               encoders={"t": model})) as c:
        assert_error(c.post("/collections/t/search", json={"text": "cell"}), 409, "encoder",
                     "cannot be loaded")
    assert db_rows(data_dir) == before


def test_stored_state_is_checked_and_never_inherited(tmp_path):
    """Rows of an earlier collection of the same name never reach a new one; a stored vector
    whose length contradicts its collection stops the start with a clear error."""
    import sqlite3

    from nestemb.errors import NestembError
    from nestemb.service.store import DB_NAME, Store

    data_dir = tmp_path / "data"
    Store(data_dir).close()

    def insert(collection: str, blob: bytes) -> None:  # as an older version could leave
        con = sqlite3.connect(data_dir / DB_NAME)
        con.execute("INSERT INTO points (collection, id, vector, payload) VALUES (?, '1', ?, '{}')", (collection, blob))
        con.commit()
        con.close()

    insert("ghost", np.ones(3, "float32").tobytes())  # no collection row: stale
    with TestClient(create_app(data_dir, tune_interval=3600)) as c:
        assert c.put("/collections/ghost", json={"nesting": [2, 4]}).json()["count"] == 0
        assert db_rows(data_dir)["points"] == []
    with TestClient(create_app(data_dir, tune_interval=3600)) as c:
        assert c.get("/collections/ghost").json()["count"] == 0
    insert("ghost", np.ones(3, "float32").tobytes())  # 3 values, the nesting says 4
    with pytest.raises(NestembError, match=r"collection 'ghost': stored vectors of byte "
                                           r"lengths \[12\] \(expected 16\)"):
        create_app(data_dir)


def test_every_request_is_logged_once(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="nestemb.service"):
        with TestClient(create_app(tmp_path / "data", limits=SMALL, tune_interval=3600)) as c:
            c.put("/collections/docs", json={"nesting": [2, 4]})
            c.get("/collections/nope")
            c.put("/collections/docs/points", content=b"{", headers=JSON_HEADERS)
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.getMessage().startswith('{"event": "request"')]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("PUT", "/collections/docs", 200), ("GET", "/collections/nope", 404),
        ("PUT", "/collections/docs/points", 400)]
    assert all(x["ms"] >= 0 for x in lines)


def test_concurrent_writes_leave_memory_and_disk_equal(tmp_path, monkeypatch):
    """Rounds of simultaneous writes: three threads upsert the same ids with different vectors
    (and delete some), while a fourth drops and re-creates the collection; after every round
    what the server answers equals what SQLite holds (a write commits and updates memory under
    one lock, so no interleaving splits them). A random pause after each commit widens the
    window a race would need."""
    import random
    import threading
    import time

    from nestemb.service.store import Store, id_key

    for method in ("upsert", "delete", "drop_collection"):
        def paused(self, *a, _orig=getattr(Store, method), **kw):
            _orig(self, *a, **kw)
            time.sleep(random.random() * 0.004)

        monkeypatch.setattr(Store, method, paused)
    data_dir = tmp_path / "data"
    ids = list(range(6)) + ["a", "b"]
    rounds, barrier = 12, threading.Barrier(5, timeout=60)
    errors: list[str] = []
    with TestClient(create_app(data_dir, tune_interval=3600)) as c:
        c.put("/collections/w", json={"nesting": [2, 4]})

        def writer(seed: int) -> None:
            rng = np.random.default_rng(seed)
            for n in range(rounds):
                barrier.wait()
                pts = [{"id": i, "vector": (rng.normal(size=4) + 3).tolist(),
                        "payload": {"by": seed, "n": n}} for i in ids]
                r = c.put("/collections/w/points", json={"points": pts})
                if n % 3 == 1:
                    r = c.post("/collections/w/points/delete", json={"ids": ids[seed::3]})
                if r.status_code not in (200, 404):
                    errors.append(r.text)
                barrier.wait()

        def dropper() -> None:
            for n in range(rounds):
                barrier.wait()
                if n % 2:
                    c.delete("/collections/w")
                    c.put("/collections/w", json={"nesting": [2, 4]})
                barrier.wait()

        threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
        threads.append(threading.Thread(target=dropper))
        for t in threads:
            t.start()
        try:
            for _ in range(rounds):
                barrier.wait()
                barrier.wait()  # the round's writes are done
                points = db_rows(data_dir)["points"]
                assert {col for col, *_ in points} <= {"w"}
                rows = {(k, blob, payload) for _, k, blob, payload in points}
                served = set()
                for i in ids:
                    r = c.get(f"/collections/w/points/{json.dumps(i) if isinstance(i, str) else i}")
                    if r.status_code == 200:
                        got = r.json()
                        served.add((id_key(got["id"]),
                                    np.asarray(got["vector"], dtype="<f4").tobytes(),
                                    json.dumps(got["payload"])))
                assert served == rows
                assert c.get("/collections/w").json()["count"] == len(rows)
        finally:
            barrier.abort()
            for t in threads:
                t.join(timeout=60)
    assert not errors, errors[:3]
