"""``nestemb migrate start|status|watch|pause|resume|finish|cancel`` against a real
``nestemb serve`` (tiny text models ``a`` and ``b`` as its encoders, API keys on).

Why: the verbs are the operator's handle on a live migration; what they print must be what
the server says (state, progress, map quality), ``watch`` must end with the migration (0:
complete, 1: failed), and every refusal of the server must come back as one line naming the
CLI option the server's error field is (``--sample-size``, ``--model``, ``--collection``...),
exit status 2, no traceback.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from harness.server import HOST, free_port, running_server
from nestemb.service.migration import wait_for

ADMIN = "migrate-cli-admin-key-0001"
READER = "migrate-cli-read-key-0002"
N_TEXTS = 240


def error_line(err: str) -> str:
    """The one ``error:`` line on stderr (progress lines of ``watch`` aside); no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server with encoders ``a`` (32-d) and ``b`` (48-d); yields ``(url, http)``,
    ``http`` an admin-keyed client."""
    from nestemb.text._tiny import make_tiny_model

    root = tmp_path_factory.mktemp("migrate-cli")
    a = make_tiny_model(root / "a", seed=0)
    b = make_tiny_model(root / "b", hidden=48, seed=1)
    keys = [{"key": ADMIN, "access": "admin", "collections": ["*"]},
            {"key": READER, "access": "read", "collections": ["*"]}]
    with running_server(root / "data", api_keys=keys, encoders={"a": a, "b": b}) as (url, _), \
            httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": ADMIN}) as http:
        yield url, http


@pytest.fixture(autouse=True)
def admin_key(monkeypatch):
    monkeypatch.setenv("NESTEMB_API_KEY", ADMIN)
    monkeypatch.setenv("MIGRATE_READ_KEY", READER)


def texts_collection(http: httpx.Client, name: str) -> list[str]:
    from nestemb.text._tiny import WORDS

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 6)) for _ in range(N_TEXTS)]
    assert http.put(f"/collections/{name}", json={"encoder": "a"}).status_code == 200
    r = http.put(f"/collections/{name}/points", json={"points": [
        {"id": i, "text": t, "payload": {"text": t}} for i, t in enumerate(texts)]})
    assert r.status_code == 200, r.text
    return texts


def vectors_collection(http: httpx.Client, name: str, n: int = 200) -> np.ndarray:
    X = np.random.default_rng(1).normal(size=(n, 8))
    assert http.put(f"/collections/{name}", json={"nesting": [4, 8]}).status_code == 200
    r = http.put(f"/collections/{name}/points", json={"points": [
        {"id": i, "vector": x.tolist()} for i, x in enumerate(X)]})
    assert r.status_code == 200, r.text
    return X


def test_encoder_migration_start_watch_status_finish(cli, server):
    url, http = server
    texts = texts_collection(http, "docs")
    r = cli("migrate", "start", "--url", url, "--collection", "docs", "--model", "b",
            "--sample-size", "60", "--min-quality", "0", "--batch-size", "32")
    assert r.code == 0, r
    assert "docs: migrating to b (sampling)" in r.out
    assert "migration of docs" in r.out and "a -> b (re-encoded by the server)" in r.out

    r = cli("migrate", "watch", "--url", url, "--collection", "docs", "--interval", "0.2")
    assert r.code == 0, r
    assert f"backfill complete: {N_TEXTS} of {N_TEXTS} points re-encoded by b" in r.out
    assert "docs: backfilling" in r.err  # the progress lines (stderr is no terminal here)

    api = http.get("/collections/docs/migration").json()
    r = cli("migrate", "status", "--url", url, "--collection", "docs", "--json")
    assert r.code == 0, r
    st = json.loads(r.out)
    assert st["state"] == api["state"] == "backfilling" and st["complete"] is True
    assert st["true"] == st["count"] == N_TEXTS and st["map"]["pairs"] == 60
    r = cli("migrate", "status", "--url", url, "--collection", "docs")
    assert r.code == 0, r
    table = r.out
    assert "backfilling, complete" in table
    assert f"{N_TEXTS} of {N_TEXTS} true new-model vectors (100.0 %), 0 mapped" in table
    assert f"agreement@10 {st['map']['forward_quality']:.3f}" in table
    assert "nestemb migrate finish --collection docs" in table

    # a query of the new model is answered from the new space meanwhile
    res = http.post("/collections/docs/search", json={"text": texts[5], "model": "new",
                                                      "k": 1}).json()
    assert res["migration"]["space"] == "new" and res["hits"][0]["id"] == 5

    r = cli("migrate", "finish", "--url", url, "--collection", "docs")
    assert r.code == 0, r
    assert "docs: finished: its model is now b, 240 points, nesting [32, 48]" in r.out
    info = http.get("/collections/docs").json()
    assert info["encoder"] == "b" and info["migration"] is None
    # no migration any more: the error names --collection
    r = cli("migrate", "status", "--url", url, "--collection", "docs")
    assert r.code == 2, r
    line = error_line(r.err)
    assert line.startswith("error: --collection: server answered 404:") and "not migrating" \
        in line, line


def test_client_vectors_pause_resume_and_a_forced_finish(cli, server):
    from nestemb.service.client import ServiceClient

    url, http = server
    X = vectors_collection(http, "vecs")
    R = np.random.default_rng(2).normal(size=(8, 12))
    r = cli("migrate", "start", "--url", url, "--collection", "vecs", "--nesting", "6,12",
            "--model-id", "v2", "--sample-size", "60", "--kind", "affine")
    assert r.code == 0, r
    assert "vecs: migrating to v2 (collecting)" in r.out
    assert "the client posts vectors" in r.out and "0 of 60 new-model vectors" in r.out

    r = cli("migrate", "pause", "--url", url, "--collection", "vecs")
    assert r.code == 0 and "vecs: migration paused (collecting, 0.0 % backfilled)" in r.out, r
    assert http.get("/collections/vecs/migration").json()["paused"] is True
    r = cli("migrate", "status", "--url", url, "--collection", "vecs")
    assert "collecting (paused)" in r.out, r
    r = cli("migrate", "resume", "--url", url, "--collection", "vecs")
    assert r.code == 0 and "vecs: migration resumed" in r.out, r
    assert http.get("/collections/vecs/migration").json()["paused"] is False

    with ServiceClient(url, ADMIN) as c:
        c.post_vectors("vecs", [{"id": i, "vector": (X[i] @ R).tolist()} for i in range(60)])
        wait_for(lambda: c.migration("vecs")["state"] == "backfilling", timeout=60)
        # half of the rest posted: not complete, so finish wants --force
        todo = c.migration_queue("vecs", limit=1000)
        assert len(todo) == 140
        c.post_vectors("vecs", [{"id": i, "vector": (X[i] @ R).tolist()} for i in todo[:70]])
    r = cli("migrate", "status", "--url", url, "--collection", "vecs")
    assert r.code == 0, r
    assert "130 of 200 true new-model vectors (65.0 %), 70 mapped" in r.out
    assert "affine, agreement@10" in r.out and "gate passed" in r.out
    r = cli("migrate", "finish", "--url", url, "--collection", "vecs")
    assert r.code == 2, r
    line = error_line(r.err)
    assert line.startswith("error: --force: server answered 409:") and "70 points" in line, line
    r = cli("migrate", "finish", "--url", url, "--collection", "vecs", "--force")
    assert r.code == 0, r
    assert "vecs: finished: its model is now v2, 200 points, nesting [6, 12]" in r.out


def test_watch_exits_1_when_the_map_is_refused_then_cancel(cli, server):
    from nestemb.service.client import ServiceClient

    url, http = server
    vectors_collection(http, "refused", n=120)
    r = cli("migrate", "start", "--url", url, "--collection", "refused", "--nesting", "4,8",
            "--sample-size", "60", "--min-quality", "0.99")
    assert r.code == 0, r
    noise = np.random.default_rng(3).normal(size=(60, 8))  # unrelated to the old vectors
    with ServiceClient(url, ADMIN) as c:
        c.post_vectors("refused", [{"id": i, "vector": v.tolist()} for i, v in enumerate(noise)])
    r = cli("migrate", "watch", "--url", url, "--collection", "refused", "--interval", "0.2")
    assert r.code == 1, r
    line = error_line(r.err)
    assert "the migration of 'refused' failed" in line and "nestemb migrate cancel" in line
    r = cli("migrate", "status", "--url", url, "--collection", "refused")
    assert "failed" in r.out and "nestemb migrate cancel --collection refused" in r.out, r
    r = cli("migrate", "cancel", "--url", url, "--collection", "refused")
    assert r.code == 0, r
    assert "refused: migration cancelled: its model stays 8-dim vectors, 120 points" in r.out
    assert http.get("/collections/refused").json()["nesting"] == [4, 8]


@pytest.mark.parametrize("args, option, words", [
    (["--model", "b", "--sample-size", "5"], "--sample-size", "greater than or equal to 10"),
    (["--model", "b", "--sample-size", "20"], "--sample-size", "too small for the quality gate"),
    (["--model", "nosuch"], "--model", "one of this server's encoders"),
    (["--model", "b", "--text-field", "title"], "--text-field", "'title'"),
    (["--nesting", "8,4"], "--nesting", "ascending"),
    (["--nesting", "4,x"], "--nesting", "comma-separated integers"),
    (["--nesting", ""], "--nesting", "at least 1 item"),
    (["--model", "b", "--min-quality", "1.5"], "--min-quality", "less than or equal to 1"),
    (["--model", "b", "--max-p99-ms", "-1"], "--max-p99-ms", "greater than 0"),
    (["--model", "b", "--batch-size", "0"], "--batch-size", "greater than or equal to 1"),
    (["--model", "b", "--model-id", "x"], "--model-id", "goes with --nesting"),
    ([], "--model", "give --model"),
    (["--model", "b", "--api-key-env", "MIGRATE_READ_KEY"], "--api-key-env",
     "may not create, drop or migrate"),
])
def test_bad_start_exits_2_naming_the_option(cli, server, args, option, words):
    url, http = server
    if http.get("/collections/bad").status_code == 404:
        texts_collection(http, "bad")
    r = cli("migrate", "start", "--url", url, "--collection", "bad", *args)
    assert r.code == 2, r
    line = error_line(r.err)
    assert option in line and words in line, line
    assert http.get("/collections/bad").json()["migration"] is None  # nothing started


def test_errors_about_the_collection_the_server_and_the_verb(cli, server):
    url, http = server
    r = cli("migrate", "status", "--url", url, "--collection", "nosuch")
    assert r.code == 2 and "error: --collection: server answered 404: collection 'nosuch' " \
        "does not exist" in error_line(r.err), r
    # a second start while one runs
    vectors_collection(http, "twice", n=60)
    args = ["migrate", "start", "--url", url, "--collection", "twice", "--nesting", "4,8",
            "--sample-size", "60"]
    assert cli(*args).code == 0
    r = cli(*args)
    assert r.code == 2 and "--collection: server answered 409:" in error_line(r.err), r
    assert "already migrating" in r.err
    assert cli("migrate", "cancel", "--url", url, "--collection", "twice").code == 0
    # no server there
    dead = f"http://{HOST}:{free_port()}"
    for verb in ("status", "watch", "pause"):
        r = cli("migrate", verb, "--url", dead, "--collection", "x")
        assert r.code == 2, r
        line = error_line(r.err)
        assert line.startswith(f"error: --url: cannot reach the service at {dead}"), line
    r = cli("migrate", "status", "--url", "http://[::1", "--collection", "x")
    assert r.code == 2 and "error: --url 'http://[::1' is not a URL" in error_line(r.err), r
    # a name the server refuses reaches it whole (quoted), never as a path or a query
    r = cli("migrate", "status", "--url", url, "--collection", "docs?x")
    assert r.code == 2, r
    assert "--collection: server answered 422: invalid collection name 'docs?x'" in \
        error_line(r.err), r
    r = cli("migrate", "watch", "--url", url, "--collection", "x", "--interval", "0")
    assert r.code == 2 and "--interval must be positive" in error_line(r.err), r
    r = cli("migrate", "start", "--url", url, "--collection", "x", "--nesting", "4,8", "--kind",
            "procrustes")
    assert r.code == 2 and "Traceback" not in r.err and "--kind" in r.err, r
