"""The authorization matrix of ``nestemb serve --api-keys``: every endpoint x {no key, wrong
key, read key for the collection, write key for another collection, write key for the
collection, admin key for the collection}, with the exact status (creating and dropping a
collection needs an admin key; writing points a write key), and proof that a refused request changed nothing (SQLite
rows and the data folder's files, byte for byte) and never had its body read (counted at the
ASGI ``receive`` and, on a real server, by answering before the body is sent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from nestemb.errors import NestembError
from nestemb.service import ApiKey, create_app, load_api_keys
from harness.server import call_asgi, db_rows, dir_listing, raw_exchange, running_server

READ = "read-key-0123456789abcdef"
WRITE = "write-key-0123456789abcdef"
WRITE_OTHER = "write-other-0123456789abcdef"
WRONG = "write-key-0123456789abcdeX"  # one character off a real key
ADMIN = "admin-key-0123456789abcdef"
KEYS = [{"key": READ, "access": "read", "collections": ["docs", "newc"]},
        {"key": WRITE, "access": "write", "collections": ["docs", "newc"]},
        {"key": WRITE_OTHER, "access": "write", "collections": ["other"]},
        {"key": ADMIN, "access": "admin", "collections": ["docs", "newc"]}]
V4 = [1.0, 0.5, 0.25, 2.0]

# (method, path, body, access needed)
ENDPOINTS = [
    ("GET", "/collections", None, "read"),
    ("PUT", "/collections/newc", {"nesting": [2, 4]}, "admin"),
    ("GET", "/collections/docs", None, "read"),
    ("DELETE", "/collections/docs", None, "admin"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 7, "vector": V4}]}, "write"),
    ("GET", "/collections/docs/points/1", None, "read"),
    ("POST", "/collections/docs/points/delete", {"ids": [1]}, "write"),
    ("POST", "/collections/docs/search", {"vector": V4, "k": 2}, "read"),
    ("POST", "/collections/docs/search/batch", {"searches": [{"vector": V4}]}, "read"),
]
CELLS = ["no key", "wrong key", "read key", "write key, other collection", "write key",
         "admin key"]


def api_keys() -> list[ApiKey]:
    return [ApiKey(k["key"], k["access"], tuple(k["collections"])) for k in KEYS]


def seed(data_dir: Path) -> None:
    """``docs`` with points 1 and 2, ``other`` with point 1 (written without keys)."""
    with TestClient(create_app(data_dir, tune_interval=3600)) as c:
        for name in ("docs", "other"):
            assert c.put(f"/collections/{name}", json={"nesting": [2, 4]}).status_code == 200
        c.put("/collections/docs/points", json={"points": [
            {"id": 1, "vector": V4, "payload": {"a": 1}}, {"id": 2, "vector": V4[::-1]}]})
        c.put("/collections/other/points", json={"points": [{"id": 1, "vector": V4}]})


def stored(data_dir: Path) -> tuple:
    return db_rows(data_dir), dir_listing(data_dir)


def headers_for(cell: str, style: str) -> dict[str, str]:
    key = {"no key": None, "wrong key": WRONG, "read key": READ,
           "write key, other collection": WRITE_OTHER, "write key": WRITE,
           "admin key": ADMIN}[cell]
    if key is None:
        return {}
    return {"authorization": f"Bearer {key}"} if style == "bearer" else {"x-api-key": key}


def expected_status(cell: str, access: str) -> int:
    if cell in ("no key", "wrong key"):
        return 401
    if cell == "read key":
        return 403 if access != "read" else 200
    if cell == "write key, other collection":
        return 403
    if cell == "write key":
        return 403 if access == "admin" else 200
    return 200


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
@pytest.mark.parametrize("method,path,body,access", ENDPOINTS,
                         ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_authorization_matrix(tmp_path, method, path, body, access, style):
    data_dir = tmp_path / "data"
    seed(data_dir)
    app = create_app(data_dir, api_keys=api_keys(), tune_interval=3600)
    chunks = [json.dumps(body).encode()] if body is not None else []
    for cell in CELLS:
        before = stored(data_dir)
        hdrs = {"content-type": "application/json", **headers_for(cell, style)}
        r = call_asgi(app, method, path, headers=hdrs, chunks=chunks)
        want = expected_status(cell, access)
        write = access != "read"
        if path == "/collections" and cell != "no key" and cell != "wrong key":
            want = 200  # listing: any valid key, filtered to what it may read
        assert r.status == want, (cell, r.status, r.body)
        if want in (401, 403):
            assert r.json()["error"]["status"] == want
            assert r.json()["error"]["field"] == "authorization"
            assert r.body_reads == 0  # refused before the body was read
        if want != 200 or not write:
            assert stored(data_dir) == before, cell  # nothing written
        elif cell != "admin key" or access == "admin":  # (the admin repeats a point write)
            assert stored(data_dir) != before  # the allowed write did write
            if body is not None:
                assert r.bytes_read == len(chunks[0])
        if path == "/collections" and want == 200:
            names = [c["name"] for c in r.json()["collections"]]
            assert names == {"read key": ["docs"], "write key": ["docs"], "admin key": ["docs"],
                             "write key, other collection": ["other"]}[cell]


def test_matrix_over_the_test_client_and_public_routes(tmp_path):
    """The same answers through a full HTTP client stack; public routes need no key."""
    data_dir = tmp_path / "data"
    seed(data_dir)
    with TestClient(create_app(data_dir, api_keys=api_keys(), tune_interval=3600)) as c:
        before = stored(data_dir)
        for path in ("/healthz", "/openapi.json", "/"):
            assert c.get(path).status_code == 200
            assert c.get(path, headers={"x-api-key": WRONG}).status_code == 200
        # unknown routes need a key too (no probing of what exists)
        r = c.get("/collections/docs/nothing")
        assert r.status_code == 401 and r.json()["error"]["field"] == "authorization"
        assert c.get("/redoc").status_code == 401 and c.get("/docs").status_code == 401
        # header forms: Bearer (any case) and X-API-Key; other schemes are not keys
        assert c.get("/collections/docs", headers={"Authorization": f"bearer {READ}"}
                     ).status_code == 200
        assert c.get("/collections/docs", headers={"Authorization": f"Basic {READ}"}
                     ).status_code == 401
        assert c.get("/collections/docs", headers={"Authorization": "Bearer "}).status_code == 401
        assert c.get("/collections/docs", headers={"x-api-key": READ[:-1]}).status_code == 401
        assert c.get("/collections/docs", headers={"x-api-key": READ + "x"}).status_code == 401
        # a read key cannot create, even a collection it may read
        r = c.put("/collections/newc", json={"nesting": [2]}, headers={"x-api-key": READ})
        assert r.status_code == 403
        # a write key scoped to docs cannot touch a collection outside its scope
        for method, path in (("GET", "/collections/other"), ("DELETE", "/collections/other"),
                             ("PUT", "/collections/zzz")):
            r = c.request(method, path, headers={"x-api-key": WRITE},
                          json={"nesting": [2]} if method == "PUT" else None)
            assert r.status_code == 403, (method, path)
        # names that try to leave the data folder: refused before they are even validated
        for path in ("/collections/%2E%2E", "/collections/..%2Fdocs"):
            assert c.put(path, json={"nesting": [2]},
                         headers={"x-api-key": WRITE}).status_code == 403
        assert stored(data_dir) == before


def test_refused_requests_never_read_the_body(tmp_path):
    """At the ASGI level: a declared body far past the limit, and bodies of refused keys, are
    answered without one ``receive()`` of body; an accepted key's oversized body gets 413 the
    same way."""
    data_dir = tmp_path / "data"
    seed(data_dir)
    app = create_app(data_dir, api_keys=api_keys(), tune_interval=3600)
    before = stored(data_dir)
    huge = 10**12
    pts = json.dumps({"points": [{"id": 9, "vector": V4}]}).encode()
    for hdrs, length, status in (({}, huge, 401), ({"x-api-key": WRONG}, huge, 401),
                                 ({"x-api-key": READ}, huge, 403),
                                 ({"x-api-key": WRITE_OTHER}, huge, 403),
                                 ({"x-api-key": WRITE}, huge, 413),
                                 ({}, len(pts), 401), ({"x-api-key": READ}, len(pts), 403)):
        r = call_asgi(app, "PUT", "/collections/docs/points",
                      headers={"content-type": "application/json", **hdrs},
                      chunks=[pts] * 3, content_length=length)
        assert (r.status, r.body_reads) == (status, 0), (hdrs, r.body)
        assert r.json()["error"]["field"] == ("body" if status == 413 else "authorization")
    # a streamed body without Content-Length, from a key that may not write: not read either
    r = call_asgi(app, "PUT", "/collections/docs/points", headers={"x-api-key": READ},
                  chunks=[pts] * 3, chunked=True)
    assert (r.status, r.body_reads) == (403, 0)
    assert stored(data_dir) == before


def test_real_server_answers_refused_requests_before_the_body_is_sent(tmp_path):
    """Over a socket to `nestemb serve --api-keys`: the request head is sent, the body only if
    no answer came within 2 s. Refused keys and an oversized declared body are answered
    at once; an accepted request waits for its body (the control)."""
    data_dir = tmp_path / "data"
    seed(data_dir)
    before = stored(data_dir)
    body = json.dumps({"points": [{"id": 9, "vector": V4}]}).encode()

    def head(key: str | None, length: int, path: str = "/collections/docs/points") -> bytes:
        lines = [f"PUT {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
                 f"Content-Length: {length}", "Connection: close"]
        if key:
            lines.append(f"X-API-Key: {key}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    with running_server(data_dir, api_keys=KEYS) as (url, proc):
        for key, length, status in ((None, 10**12, 401), (WRONG, 10**12, 401),
                                    (READ, 10**12, 403), (WRITE_OTHER, 10**12, 403),
                                    (WRITE, 10**12, 413), (None, len(body), 401),
                                    (WRONG, len(body), 401), (READ, len(body), 403)):
            resp, sent = raw_exchange(url, head(key, length), body)
            assert (resp.status, sent) == (status, False), (key, length, resp.body)
            assert resp.json()["error"]["status"] == status
        assert stored(data_dir) == before
        resp, sent = raw_exchange(url, head(WRITE, len(body)), body)
        assert (resp.status, sent) == (200, True) and resp.json() == {"upserted": 1}
    assert len(db_rows(data_dir)["points"]) == len(before[0]["points"]) + 1


def test_keys_file_is_checked(tmp_path, cli):
    def write(doc) -> Path:
        p = tmp_path / "keys.json"
        p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return p

    good = {"key": "k" * 16, "access": "read", "collections": ["docs"]}
    assert load_api_keys(write({"keys": [good]})) == [ApiKey("k" * 16, "read", ("docs",))]
    bad = [("{", "not valid JSON"), ({"keys": []}, "at least one key"), ([good], "at least one"),
           ({"keys": [{**good, "key": "short"}]}, "at least 16 printable"),
           ({"keys": [{**good, "key": "k" * 15 + " "}]}, "at least 16 printable"),
           ({"keys": [good, good]}, "duplicate key"),
           ({"keys": [{**good, "access": "owner"}]}, "access must be one of"),
           ({"keys": [{**good, "collections": []}]}, "non-empty list"),
           ({"keys": [{**good, "collections": "docs"}]}, "non-empty list"),
           ({"keys": ["k" * 16]}, "must be an object")]
    for doc, message in bad:
        with pytest.raises(NestembError, match=message):
            load_api_keys(write(doc))
    with pytest.raises(NestembError, match="not found"):
        load_api_keys(tmp_path / "missing.json")
    res = cli("serve", "--data-dir", tmp_path / "data", "--api-keys", write({"keys": []}))
    assert res.code != 0 and "at least one key" in res.err
    assert not (tmp_path / "data").exists()  # refused before the data folder is created
    # write implies read; "*" is every collection; no key may do anything without a match
    admin = ApiKey("a" * 16, "write", ("*",))
    assert admin.allows("anything", "write") and admin.allows(None, "read")
    reader = ApiKey("r" * 16, "read", ("docs",))
    assert reader.allows("docs", "read") and not reader.allows("docs", "write")
    assert not reader.allows("other", "read") and not reader.allows("*", "read")
