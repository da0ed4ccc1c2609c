"""Nothing lost, nothing silently wrong, at the service's edges: ``nestemb upload`` checks the
whole corpus before its first request and gives an account of what was stored when a request
fails midway; ``nestemb serve`` on a corrupted data folder or an unusable address stops with
one line; and the details of the HTTP API (bodies that are not UTF-8, a bad
``Content-Length``, stage timings, scopes of keys, ``/healthz``, the encoder allow-list)."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from nestemb.errors import NestembError
from nestemb.service import ApiKey, create_app
from nestemb.index.plan import Plan
from nestemb.service.points import Unsupported
from nestemb.service.store import DB_NAME, Store
from harness.server import HOST, db_rows, free_port, raw_exchange, running_server

JSON_HEADERS = {"content-type": "application/json"}
N_DOCS = 181


def write_corpus(folder: Path, lines: dict[int, bytes] | None = None, n: int = N_DOCS) -> Path:
    """A BEIR folder whose corpus.jsonl has ``n`` good records (``_id`` d1 ... dn, one a line),
    with the lines numbered in ``lines`` (1-based) replaced by the given bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(1, n + 1):
        row = json.dumps({"_id": f"d{i}", "title": f"title {i}",
                          "text": f"document number {i} about cells"}).encode()
        rows.append((lines or {}).get(i, row))
    (folder / "corpus.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    return folder


def one_line(err: str) -> str:
    """The one line of an error on stderr (progress lines of ``uploading`` aside)."""
    lines = [line for line in err.splitlines() if line.strip()
             and not line.startswith("uploading:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- nestemb upload
@pytest.fixture(scope="module")
def text_server(tmp_path_factory, tiny_model):
    """A real server whose encoder ``tiny`` is the tiny test model."""
    data_dir = tmp_path_factory.mktemp("upload") / "data"
    with running_server(data_dir, extra_args=["--models", f"tiny={tiny_model}"]) as (url, _):
        yield url, data_dir


def test_upload_checks_every_record_before_the_first_request(tmp_path, cli, text_server):
    """A bad record anywhere (here line 150 of 181) stops the upload before anything is sent:
    the error names the file, the line and the ``_id``; nothing is created or stored."""
    url, data_dir = text_server
    empty = json.dumps({"_id": "d150", "title": "", "text": "  "}).encode()
    cases = {
        "empty": ({150: empty}, ["line 150", "'d150'", "empty"]),
        "duplicate": ({150: json.dumps({"_id": "d3", "text": "x"}).encode()},
                      ["line 150", "'d3'", "duplicate", "line 3"]),
        "no id": ({150: json.dumps({"text": "x"}).encode()}, ["line 150", "_id"]),
        "bad id": ({150: json.dumps({"_id": "", "text": "x"}).encode()}, ["line 150", "_id"]),
        "not json": ({150: b'{"_id": "d150", "text": '}, ["line 150", "not valid JSON"]),
        "not utf-8": ({150: b'{"_id": "d150", "text": "\xff\xfe"}'}, ["line 150", "UTF-8"]),
        "not an object": ({150: b'["d150"]'}, ["line 150", "object"]),
    }
    for name, (lines, words) in cases.items():
        beir = write_corpus(tmp_path / name.replace(" ", "_"), lines)
        res = cli("upload", "--url", url, "--collection", "c", "--beir", beir,
                  "--model", "tiny")
        assert res.code == 2, (name, res)
        line = one_line(res.err)
        for w in [str(beir / "corpus.jsonl")] + words:
            assert w in line, (name, w, line)
        assert "points." not in line  # no offset inside a batch
        assert db_rows(data_dir) == {"collections": [], "points": []}, name


def test_upload_failing_midway_says_what_was_stored(tmp_path, cli, text_server):
    """The server refuses the third batch (a text past its 20,000-character limit at line
    150): the upload exits 2 with one line saying which lines are stored and that a rerun
    upserts them all again; exactly those points are stored."""
    url, data_dir = text_server
    long = json.dumps({"_id": "d150", "title": "t", "text": "cell " * 5000}).encode()
    beir = write_corpus(tmp_path / "beir", {150: long})
    res = cli("upload", "--url", url, "--collection", "mid", "--beir", beir,
              "--model", "tiny", "--batch-size", "64")
    assert res.code == 2, res
    line = one_line(res.err)
    for w in ("stored 128 of 181 points", "lines 1-128", "rerun", "line 150", "'d150'"):
        assert w in line, (w, line)
    stored = sorted(json.loads(k) for c, k, _, _ in db_rows(data_dir)["points"] if c == "mid")
    assert stored == sorted(f"d{i}" for i in range(1, 129))
    # a rerun with the corpus fixed upserts everything (the first 128 again, by id)
    write_corpus(tmp_path / "beir")
    res = cli("upload", "--url", url, "--collection", "mid", "--beir", beir, "--model", "tiny")
    assert res.code == 0, res
    assert "mid: 181 points" in res.out


def test_upload_with_the_server_gone_says_nothing_was_stored(tmp_path, cli):
    beir = write_corpus(tmp_path / "beir", n=3)
    res = cli("upload", "--url", f"http://{HOST}:{free_port()}", "--collection", "c",
              "--beir", beir)
    assert res.code == 2, res
    line = one_line(res.err)
    assert "cannot reach the service" in line and "stored 0 of 3 points" in line, line


# --------------------------------------------------------------------------- nestemb serve
def _serve(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nestemb", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_serve_on_corrupted_state_or_a_bad_address_stops_with_one_line(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / DB_NAME).write_bytes(b"this is not a database, just some bytes\n" * 50)
    bad_config = tmp_path / "config"
    Store(bad_config).close()
    con = sqlite3.connect(bad_config / DB_NAME)
    con.execute("INSERT INTO collections (name, config) VALUES ('docs', '{\"nesting\": [2, 4')")
    con.commit()
    con.close()
    no_nesting = tmp_path / "no_nesting"
    Store(no_nesting).close()
    con = sqlite3.connect(no_nesting / DB_NAME)
    con.execute("INSERT INTO collections (name, config) VALUES ('docs', '{\"encoder\": null}')")
    con.commit()
    con.close()
    taken = socket.socket()
    taken.bind((HOST, 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    ok = str(tmp_path / "ok")
    cases = {  # name: (args, words in the one line)
        "garbage db": (["--data-dir", str(garbage)], [str(garbage / DB_NAME), "not a SQLite"]),
        "config not json": (["--data-dir", str(bad_config)],
                            [str(bad_config / DB_NAME), "'docs'", "config", "JSON"]),
        "config without nesting": (["--data-dir", str(no_nesting)],
                                   [str(no_nesting / DB_NAME), "'docs'", "nesting"]),
        "port in use": (["--data-dir", ok, "--port", port], ["--port", port, "in use"]),
        "host unknown": (["--data-dir", ok, "--host", "no-such-host.invalid"],
                         ["--host", "no-such-host.invalid"]),
        "host not here": (["--data-dir", ok, "--host", "192.0.2.1", "--port", port],
                          ["--host", "192.0.2.1"]),
        "encoder missing": (["--data-dir", ok, "--models", f"t={tmp_path / 'nope'}"],
                            ["--models", "'t'", str(tmp_path / "nope")]),
        "encoder bad spec": (["--data-dir", ok, "--models", "just-a-path"],
                             ["--models", "NAME=PATH"]),
    }
    # each case on its own port (they run at once); "port" cases name theirs
    procs = {name: _serve(args if "--port" in args else [*args, "--port", str(free_port())])
             for name, (args, _) in cases.items()}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 2, (name, proc.returncode, err)
            line = one_line(err)
            assert line.startswith("error:"), (name, line)
            for w in cases[name][1]:
                assert w in line, (name, w, line)
    finally:
        taken.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # nothing was changed in the corrupted folders
    assert (garbage / DB_NAME).read_bytes().startswith(b"this is not a database")


# --------------------------------------------------------------------------- HTTP details
def test_library_errors_carry_the_json_field_as_data():
    with pytest.raises(NestembError) as e:
        Plan.check([12], None, (8, 16), 10)
    assert e.value.param == "dims"
    with pytest.raises(NestembError) as e:
        Plan.check([8, 16], [5], (8, 16), 10)
    assert e.value.param == "shortlist"
    err = Unsupported("filter", "payload filters are not supported here")
    assert err.param == "filter" and err.render("searches.2.filter").startswith(
        "searches.2.filter: ")


def test_http_details(tmp_path):
    with TestClient(create_app(tmp_path / "data", tune_interval=3600)) as c:
        assert c.put("/collections/docs", json={"nesting": [4, 8, 16]}).status_code == 200
        pts = [{"id": i, "vector": [1.0 + i] + [0.5] * 15} for i in range(4)]
        assert c.put("/collections/docs/points", json={"points": pts}).status_code == 200
        # a body that is not UTF-8 is named as such, not as malformed JSON
        for body in (b'{"vector": [1, 0], "text": "\xff"}', b"\xff\xfe{}",
                     b'{"vector": "\xc3"}'):
            r = c.post("/collections/docs/search", content=body, headers=JSON_HEADERS)
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["field"] == "body" and "not valid UTF-8" in err["message"], err
        # stage timing: a stage never keeps more than the candidates it was cut from
        r = c.post("/collections/docs/search", json={"vector": [1.0] * 16, "k": 10,
                                                     "dims": [4, 8, 16]}).json()
        assert len(r["hits"]) == 4
        stages = r["timing"]["stages"]
        assert [s["candidates"] for s in stages] == [4, 4, 4], stages
        assert all(s["kept"] <= s["candidates"] for s in stages), stages
        assert [s["kept"] for s in stages] == [4, 4, 4], stages
        # an error from the library names the JSON field, also inside a batch
        r = c.post("/collections/docs/search/batch", json={"searches": [
            {"vector": [1.0] * 16}, {"vector": [1.0] * 16, "dims": [5]}]})
        err = r.json()["error"]
        assert (r.status_code, err["field"]) == (422, "searches.1.dims"), err
        assert err["message"].startswith("searches.1.dims: 5 is not in"), err
        # no pages that need a CDN; the spec stays
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
        assert c.get("/openapi.json").status_code == 200
        # without keys configured, /healthz tells everything
        assert c.get("/healthz").json()["collections"] == 1


READ = "read-key-0123456789abcdef"
WRITE = "write-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"


def test_write_keys_cannot_create_or_drop_and_healthz_hides_counts(tmp_path):
    keys = [ApiKey(READ, "read", ("docs",)), ApiKey(WRITE, "write", ("docs", "newc")),
            ApiKey(ADMIN, "admin", ("docs", "newc"))]
    data_dir = tmp_path / "data"
    with TestClient(create_app(data_dir, tune_interval=3600)) as c:
        c.put("/collections/docs", json={"nesting": [2, 4]})
    with TestClient(create_app(data_dir, api_keys=keys, tune_interval=3600)) as c:
        before = db_rows(data_dir)
        for key in (READ, WRITE):
            h = {"x-api-key": key}
            for r in (c.delete("/collections/docs", headers=h),
                      c.put("/collections/newc", json={"nesting": [2]}, headers=h)):
                assert r.status_code == 403, (key, r.text)
                assert r.json()["error"]["field"] == "authorization"
        assert db_rows(data_dir) == before
        # a write key still writes points
        h = {"x-api-key": WRITE}
        assert c.put("/collections/docs/points", json={"points": [
            {"id": 1, "vector": [1, 0, 0, 0]}]}, headers=h).status_code == 200
        assert c.post("/collections/docs/points/delete", json={"ids": [1]},
                      headers=h).json() == {"deleted": 1}
        # an admin key creates and drops
        h = {"x-api-key": ADMIN}
        assert c.put("/collections/newc", json={"nesting": [2]}, headers=h).status_code == 200
        assert c.delete("/collections/newc", headers=h).json() == {"dropped": "newc"}
        # /healthz: only the status without a key, the rest with one
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/healthz", headers={"x-api-key": READ + "x"}).json() == {"status": "ok"}
        full = c.get("/healthz", headers={"x-api-key": READ}).json()
        assert full["status"] == "ok" and full["collections"] == 1


def test_encoders_come_from_the_allow_list(tmp_path, tiny_model):
    """A request names an encoder the server was started with; a path, or any other name,
    gets the same 422 on ``encoder`` whether or not such a folder exists."""
    data_dir = tmp_path / "data"
    fake = tmp_path / "etc"
    fake.mkdir()
    with TestClient(create_app(data_dir, encoders={"tiny": tiny_model},
                               tune_interval=3600)) as c:
        answers = set()
        for spec in ("../../../../etc", str(fake), "../../../../no-such-folder",
                     str(tmp_path / "nope"), str(tiny_model), "other"):
            r = c.put("/collections/t", json={"encoder": spec})
            assert r.status_code == 422, (spec, r.text)
            err = r.json()["error"]
            assert err["field"] == "encoder" and "tiny" in err["message"], err
            answers.add(r.text)
        assert len(answers) == 1, answers  # the same answer, folder or not
        info = c.put("/collections/t", json={"encoder": "tiny"}).json()
        assert info["encoder"] == "tiny" and info["dim"] == 32
        assert c.put("/collections/t/points", json={"points": [
            {"id": 1, "text": "what is the cell"}]}).json() == {"upserted": 1}
    assert db_rows(data_dir)["collections"][0][0] == "t"
    # restarted without that encoder: text requests are refused, naming it
    with TestClient(create_app(data_dir, tune_interval=3600)) as c:
        r = c.post("/collections/t/search", json={"text": "cell"})
        assert r.status_code == 409 and r.json()["error"]["field"] == "encoder", r.text
        assert "'tiny'" in r.json()["error"]["message"]
    with pytest.raises(NestembError, match="encoders"):
        create_app(tmp_path / "d2", encoders={"x": tmp_path / "missing"})
    with pytest.raises(NestembError, match="encoders"):
        create_app(tmp_path / "d3", encoders={"a/b": tiny_model})


def test_real_server_answers_a_bad_content_length_with_json(tmp_path):
    with running_server(tmp_path / "data") as (url, _):
        for value in ("abc", "-1", "1 2"):
            head = (f"PUT /collections/docs/points HTTP/1.1\r\nHost: {HOST}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {value}\r\n\r\n").encode()
            resp, _ = raw_exchange(url, head, b"{}")
            assert resp.status == 400, (value, resp)
            assert resp.headers["content-type"] == "application/json", resp.headers
            err = resp.json()["error"]
            assert err["status"] == 400 and err["field"] == "content-length", err
            assert "Content-Length" in err["message"], err
        # the server still answers afterwards
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "version": httpx.get(
            f"{url}/healthz").json()["version"], "collections": 0}


def test_service_client_example_runs():
    import doctest

    from nestemb.service import client

    result = doctest.testmod(client)
    assert result.attempted > 0 and result.failed == 0, result
