"""Crash harness of live migrations, small: ``nestemb serve`` SIGKILLed in every phase of a
few migrations (both modes, finish and cancel), each driven to its end after the restart, every
acknowledged write checked (the 50-kill run: ``python -m harness.migration_crash``); and the
checker shown to catch each kind of planted damage, so that its zeros mean something."""

from __future__ import annotations

import json
import sqlite3

import httpx
import numpy as np
import pytest

from harness.migration_crash import (
    FAILURES, NAME, SHADOW, MigrationCrash, MigrationCrashConfig, Rec, Writer,
    run_migration_crash)
from nestemb.service.migration import MIGRATIONS
from nestemb.service.store import DB_NAME

PLAN = (("encoder", "finish", ("first", "end")),  # a -> b
        ("client", "cancel", ("mapping", "end")),  # b -> c1, cancelled
        ("client", "finish", ("first", "backfilling")),  # b -> c2
        ("encoder", "finish", ("mapping", "backfilling")))  # c2 -> a or b


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The two tiny encoders, made once for the module."""
    folder = tmp_path_factory.mktemp("migration-models")
    MigrationCrash(MigrationCrashConfig(data_dir=folder / "unused", models_dir=folder)).models()
    return folder


def test_sigkills_in_every_phase_lose_nothing(tmp_path, models):
    cfg = MigrationCrashConfig(data_dir=tmp_path / "data", models_dir=models, kills=8,
                               points=800, sample_size=150, batch=8, plan=PLAN, seed=3,
                               write_after=1.0, max_seconds=150)
    report = run_migration_crash(cfg)
    assert not report["stopped_by_time"], report["seconds"]
    assert report["kills"] >= 8
    assert {k: report[k] for k in FAILURES} == {k: 0 for k in FAILURES}, \
        report["failure_samples"]
    assert report["migrations_finished"] == 3 and report["migrations_cancelled"] == 1
    killed = report["phases_killed"]
    assert killed.get("finish", 0) == killed.get("cancel", 0) == 1, killed
    assert sum(killed.values()) == report["kills"]
    assert report["writes"]["points_written"] > 0 and report["writes"]["deletes_acknowledged"] > 0
    assert report["writes"]["vectors_posted"] > 0
    assert report["graceful_shutdown"]["exit_status"] == 0


def _plant(data_dir, sql: str, *args) -> None:
    con = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
    try:
        con.execute(sql, args)
    finally:
        con.close()


def test_checker_detects_planted_failures(tmp_path, models):
    """Damage planted in the database while the server is down: each kind is reported under
    its own name; an ended migration's leftovers too."""
    h = MigrationCrash(MigrationCrashConfig(data_dir=tmp_path / "data", models_dir=models,
                                            points=300, sample_size=100, writers=1, seed=5))
    try:
        h.setup()  # the writers are parked until the gate opens: the harness alone writes
        assert h.check(all_ids=True).failures == 0
        h.start_migration(client=True)
        h.drive(None)
        w = Writer(0, h)  # vectors the harness knows exactly: one of each model
        with httpx.Client(base_url=h.server.url) as http:
            assert w._upsert(http, [3], "new", new_text=False) == "acked"
            assert w._upsert(http, [4], "old", new_text=False) == "acked"
        clean = h.check()
        assert clean.failures == 0 and h.state == "backfilling", clean.samples
        assert h.server.stop()[0] == 0  # a graceful stop: the indexes are snapshotted
        d = h.data_dir
        key = json.dumps
        _plant(d, "DELETE FROM points WHERE collection = ? AND id = ?", SHADOW, key(0))
        _plant(d, "DELETE FROM points WHERE id = ?", key(1))  # from both spaces
        _plant(d, "UPDATE points SET payload = ? WHERE collection = ? AND id = ?",
               json.dumps({"text": "cat", "v": 7, "how": "text"}), NAME, key(2))
        _plant(d, "UPDATE points SET vector = ? WHERE collection = ? AND id = ?",
               np.ones(h.new.dim, "<f4").tobytes(), SHADOW, key(3))
        for coll, dim in ((NAME, h.old.dim), (SHADOW, h.new.dim)):  # never written
            _plant(d, "INSERT INTO points (collection, id, vector, payload, origin) "
                      "VALUES (?, ?, ?, '{}', 0)", coll, key(10**6), np.ones(dim, "<f4").tobytes())
        # point 4 rewritten behind the snapshot's back (the restart does not replay it): SQLite
        # and the ledger agree, the index still holds the old vector
        rec = Rec(h.ledger.state[4].v, "cat dog", "old", h.old.number)
        _plant(d, "UPDATE points SET payload = ? WHERE id = ?", json.dumps(rec.payload), key(4))
        _plant(d, "UPDATE points SET vector = ? WHERE collection = ? AND id = ?",
               rec.exact(h.old), NAME, key(4))
        h.ledger.state[4] = rec
        h.ledger.dirty.add(4)
        h.server.start()
        h._reset_http()
        res = h.check()
        got = {k: getattr(res, k) for k in ("points_in_one_space", "lost_writes",
                                            "points_in_neither", "corrupt", "spaces_disagree",
                                            "wrong_vectors", "resurrected_deletes",
                                            "unsearchable")}
        assert got == {"points_in_one_space": 1, "lost_writes": 1, "points_in_neither": 1,
                       "corrupt": 1, "spaces_disagree": 1, "wrong_vectors": 1,
                       "resurrected_deletes": 1, "unsearchable": 1}, res.samples
        # the ledger is resolved to what is stored: the same damage is not counted again
        again = h.check()
        assert again.lost_writes == again.corrupt == again.wrong_vectors == 0, again.samples
        # an ended migration must leave nothing behind
        h.end("cancel", kill=False)
        (h.data_dir / MIGRATIONS / NAME / "999").mkdir(parents=True)
        assert h.check().end_state_wrong == 1
    finally:
        h.close()



# ----------------------------------------------------------------------------- regressions
def test_backfill_keeps_a_new_model_vector_written_while_it_encodes(tmp_path, models):
    """The worker encodes a batch outside the write lock: a new-model vector written meanwhile
    for one of its points (same text) is kept, not replaced by the older encoding (found by
    the harness as ``wrong_vectors`` after a finish)."""
    from fastapi.testclient import TestClient

    from nestemb.service import create_app
    from nestemb.service.migration import wait_for
    from nestemb.text._tiny import WORDS

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 8)) for _ in range(300)]
    app = create_app(tmp_path / "data", encoders={"a": str(models / "a"),
                                                  "b": str(models / "b")})
    written: dict[int, list[float]] = {}
    with TestClient(app) as http:
        http.put("/collections/c", json={"encoder": "a"})
        http.put("/collections/c/points", json={"points": [
            {"id": i, "text": t, "payload": {"text": t}} for i, t in enumerate(texts)]})
        http.put("/collections/c/migration", json={"encoder": "b", "sample_size": 100,
                                                   "min_quality": 0.0, "batch": 8})
        wait_for(lambda: http.get("/collections/c/migration").json()["state"] == "backfilling")
        mig = app.state.service.migrations["c"]
        encode = mig.encode_new

        def racing(batch: list[str]):
            if not written:  # the first batch: a client writes its points while it encodes
                ids = [texts.index(t) for t in batch]
                written.update({i: [(i + 1) / 100] * 48 for i in ids})
                r = http.put("/collections/c/points", json={"points": [
                    {"id": i, "vector": written[i], "model": "new",
                     "payload": {"text": texts[i]}} for i in ids]})
                assert r.status_code == 200, r.text
            return encode(batch)

        mig.encode_new = racing
        wait_for(lambda: http.get("/collections/c/migration").json()["complete"])
    assert written
    for i, v in written.items():
        got = sqlite3.connect(tmp_path / "data" / DB_NAME).execute(
            "SELECT vector, origin FROM points WHERE collection = 'c#new' AND id = ?",
            (json.dumps(i),)).fetchone()
        assert got == (np.asarray(v, "<f4").tobytes(), 0), i


def test_a_finished_migrations_old_memory_is_never_snapshotted(tmp_path):
    """A tuner pass that began before a finish still holds the old space's memory: saving it
    then would make it the snapshot of the new epoch, and a restart would search the old
    model's vectors (same width: nothing else tells them apart)."""
    from fastapi.testclient import TestClient

    from nestemb.service import create_app
    from nestemb.service.migration import wait_for

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 16)).astype("float32")
    Y = X @ rng.normal(size=(16, 16)).astype("float32")
    app = create_app(tmp_path, tune_interval=3600)
    with TestClient(app) as http:
        http.put("/collections/c", json={"nesting": [8, 16]})
        http.put("/collections/c/points", json={"points": [
            {"id": i, "vector": x.tolist()} for i, x in enumerate(X)]})
        http.put("/collections/c/migration", json={"nesting": [8, 16], "model_id": "m2",
                                                   "sample_size": 100, "min_quality": 0.0})
        http.put("/collections/c/migration/vectors", json={"points": [
            {"id": i, "vector": y.tolist()} for i, y in enumerate(Y)]})
        wait_for(lambda: http.get("/collections/c/migration").json()["complete"])
        svc = app.state.service
        held = svc._spaces()  # what a tuner pass holds when the finish lands
        assert http.post("/collections/c/migration/finish").status_code == 200
        svc.snapshot(*held[0], force=True)  # the rest of that pass: the old memory of "c"
        # a crash now (no graceful stop): a second server on the same folder
        with TestClient(create_app(tmp_path, tune_interval=3600)) as again:
            found = [again.post("/collections/c/search", json={
                "vector": Y[i].tolist(), "k": 1, "dims": [16]}).json()["hits"][0]["id"]
                for i in range(20)]
    assert found == list(range(20))
