"""Crash harness, small: ``nestemb serve`` SIGKILLed mid-write a few times, every acknowledged
write checked (the full-size run is ``benchmarks/crash.py``); the checker itself shown to catch
a lost write, a resurrected delete, a stale version and a wrong count; and the store's own
durability guards (no rows for a dropped collection, vector lengths checked on load, the
background WAL fsync of ``relaxed``)."""

from __future__ import annotations

import httpx
import pytest

from harness.crash import (
    ABSENT, MAIN, CrashConfig, Key, Model, RestartableServer, _payload, _vector, check,
    run_crash)

FAILURES = ("lost_writes", "resurrected_deletes", "stale_versions", "corrupt_points",
            "unsearchable", "collections_failing_to_open", "counts_out_of_bounds",
            "tmp_collections_lost", "tmp_collections_resurrected", "http_errors")


@pytest.mark.parametrize("durability", ["full", "relaxed"])
def test_sigkill_cycles_lose_nothing(tmp_path, durability):
    cfg = CrashConfig(data_dir=tmp_path / "data", durability=durability, cycles=4,
                      points=1000, clients=3, batch=50, kill_min=0.1, kill_max=0.3,
                      startup_kill_rate=0.25, full_every=2, tmp_rate=0.3, seed=7,
                      max_seconds=40)
    report = run_crash(cfg)
    assert not report["stopped_by_time"], report["seconds"]
    assert report["cycles"] >= 4 and report["sigkills"] >= report["cycles"]
    assert report["points_acknowledged"] >= 1000
    assert report["deletes_acknowledged"] > 0
    assert report["final_check_ids"] >= report["points_acknowledged"]
    assert {k: report[k] for k in FAILURES} == {k: 0 for k in FAILURES}, \
        report["failure_samples"]
    assert report["graceful_shutdown"]["seconds"] < 15


def test_checker_detects_each_failure(tmp_path):
    """A model that disagrees with the server in known ways: each disagreement is reported
    under its own name (so a zero above means something)."""
    cfg = CrashConfig(data_dir=tmp_path / "data", dim=16, nesting=(4, 16), seed=3)
    server = RestartableServer(cfg.data_dir, "full", tmp_path / "server.log")
    server.start()
    try:
        keys = [Key(0, 1, s) for s in range(1, 7)]
        with httpx.Client(base_url=server.url) as http:
            for name in MAIN:
                assert http.put(f"/collections/{name}",
                                json={"nesting": [4, 16], "encoder": None}).status_code == 200
            stored = {keys[0]: 0, keys[1]: 0, keys[2]: 0, keys[3]: 1}
            pts = [{"id": k.id, "vector": _vector(3, k.coll, k.client, k.seq, v, 16).tolist(),
                    "payload": _payload(k, v)} for k, v in stored.items()]
            assert http.put(f"/collections/{MAIN[0]}/points",
                            json={"points": pts}).status_code == 200
        model = Model()
        model.state.update({
            keys[0]: 0,  # as stored: fine
            keys[1]: ABSENT,  # acknowledged delete, yet present: resurrected
            keys[2]: 1,  # acknowledged version 1, server has 0: stale
            keys[3]: 1,  # as stored (version 1): fine
            keys[4]: 0,  # acknowledged, never stored: lost
        })
        model.pending[keys[5]] = 0  # in flight, not applied: fine
        res = check(server.url, cfg, model, list(model.state) + [keys[5]], cycle=1)
        assert (res.lost_writes, res.resurrected_deletes, res.stale_versions, res.corrupt,
                res.unsearchable, res.collections_failing) == (1, 1, 1, 0, 0, 0), res.samples
        # count bounds: surely present 0, 2, 3, 4 (lo 4), maybe 5 (hi 5); the server has 4
        assert res.count_out_of_bounds == 0
        # the model is resolved to what the server shows: a second check is clean
        again = check(server.url, cfg, model, list(model.state), cycle=2, get_sample=None)
        assert again.failures == 0 and again.checked_ids == 6, again.samples
        assert model.state[keys[4]] == ABSENT and model.state[keys[1]] == 0
        # a count the model cannot explain is reported
        model.state[Key(0, 2, 1)] = 0  # one more acknowledged point than the server has
        assert check(server.url, cfg, model, [], cycle=3).count_out_of_bounds == 1
    finally:
        server.kill()


# ----------------------------------------------------------------------------- the store
def test_store_refuses_writes_to_a_dropped_collection(tmp_path):
    """An upsert that loses the race with a drop must not leave rows behind (they would come
    back in a re-created collection of the same name)."""
    import numpy as np

    from nestemb.service.store import MissingCollection, Store

    s = Store(tmp_path)
    s.create_collection("c", {"nesting": [2]})
    s.upsert("c", [(1, np.ones(2), {"a": 1})])
    s.drop_collection("c")
    with pytest.raises(MissingCollection, match="^collection 'c' does not exist"):
        s.upsert("c", [(2, np.ones(2), {})])
    raw = s._db.execute("SELECT COUNT(*) FROM points").fetchone()[0]
    assert raw == 0
    # rows orphaned by an older version are cleared when the name is created again
    s._db.execute("INSERT INTO points (collection, id, vector, payload) VALUES ('c', '7', ?, '{}')", (np.ones(2, "<f4").tobytes(),))
    s.create_collection("c", {"nesting": [2]})
    assert s.load("c", 2)[0] == []
    s.close()


def test_store_load_rejects_vectors_of_the_wrong_length(tmp_path):
    import numpy as np

    from nestemb.errors import NestembError
    from nestemb.service.store import Store

    s = Store(tmp_path)
    s.create_collection("c", {"nesting": [4]})
    s.upsert("c", [(1, np.ones(4), {}), ("x", np.zeros(4), {"p": [1, "a"]})])
    ids, X, payloads = s.load("c", 4)
    assert ids == ["x", 1] and X.tolist() == [[0.0] * 4, [1.0] * 4]
    assert payloads == [{"p": [1, "a"]}, {}] and X.flags.writeable
    s._db.execute("UPDATE points SET vector = ? WHERE id = '1'", (np.ones(3, "<f4").tobytes(),))
    with pytest.raises(NestembError, match=r"collection 'c': stored vectors of byte lengths "
                                           r"\[12, 16\] \(expected 16\)"):
        s.load("c", 4)
    s.close()


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="needs /proc")
def test_relaxed_store_fsyncs_the_wal_in_the_background(tmp_path, monkeypatch):
    """relaxed: a commit does not wait for the disk, but the WAL is fsynced within about
    ``sync_interval`` (SQLite alone would wait for a checkpoint, ~1,000 pages later)."""
    import os
    import time

    import numpy as np

    from nestemb.service import store as store_mod

    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(store_mod.os, "fsync", spy)
    s = store_mod.Store(tmp_path / "d", "relaxed", sync_interval=0.05)
    s.create_collection("c", {"nesting": [2]})
    synced.clear()
    s.upsert("c", [(1, np.ones(2), {})])
    deadline = time.time() + 5
    while not synced and time.time() < deadline:
        time.sleep(0.01)
    assert synced and synced[0].endswith("nestemb.sqlite3-wal"), synced
    n = len(synced)
    time.sleep(0.3)  # nothing committed since: no more fsyncs
    assert len(synced) == n
    s.close()
    full = store_mod.Store(tmp_path / "f", "full", sync_interval=0.05)
    assert full._flusher is None  # full: SQLite fsyncs every commit itself
    full.close()
