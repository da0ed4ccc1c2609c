"""Crash harness of live migrations: ``nestemb serve`` SIGKILLed at random moments of a
collection's migrations to a new model (:mod:`nestemb.service.migration`), restarted, and the
same migration driven to its end; every acknowledged write checked after every restart.

The server runs through the CLI (:class:`harness.crash.RestartableServer`) with two tiny text
models, ``--models a=PATH,b=PATH`` (:func:`nestemb.text._tiny.make_tiny_model`: 32 and 48
wide). The collection ``mig`` is created with encoder ``a`` and filled with ``points`` short
texts (each payload holds its text). Then, cycle after cycle, one migration each:

* the mode: *encoder* (the new model is the other tiny encoder, so the models go
  a -> b -> a ...: the server re-encodes the stored texts) or *client* (a new ``model_id`` each
  time, ``c1``, ``c2`` ...; sometimes the width of the current model, so that a vector of the
  wrong space would go unnoticed by its length): the harness posts the new vectors, the sample
  while ``collecting`` and the queue while ``backfilling``, as a client would;
* the end: ``finish`` (most cycles) or ``cancel``;
* one or two kill targets among the phases ``sampling``/``collecting``, ``mapping``,
  ``backfilling`` and the end request itself. The harness polls the migration's state; once a
  target phase (or a later one) is seen, it SIGKILLs the server after a random delay, restarts
  it, checks, and carries on with the same migration. An end request killed before its answer
  arrived is issued again when the restarted server still shows the migration.

Meanwhile ``writers`` client threads write (:class:`harness.crash.Gate` parks them while the
server is down or a check or an end runs): new points (texts; vectors when the current model is
a client's), updates by text, by old-model vector and by new-model vector (once the maps exist;
half of the vector updates keep the point's text, so that a re-encoding of that text racing the
write cannot tell it apart by the text), and deletes. A request is *acknowledged* (its 200
arrived), *refused* (no connection: nothing sent), *rejected* (a 4xx answer: the service refuses
before it writes, e.g. a new-model vector before the maps exist) or *in flight* (no answer:
killed mid-request; both outcomes are accepted, and the next check resolves it) — the
accounting of :mod:`harness.crash` (:func:`harness.crash.send`). Every vector a client writes is
a fixed function of its model and its text (a bag of random word vectors), so the harness knows
the exact bytes that must be stored, and where: a vector written for the model now serving is in
collection ``mig``; one written for the model being migrated to is in ``mig#new``.

Checked after every restart and after every end, from the SQLite file (read-only, one read
transaction; committed data only) and through the API:

* ``lost_writes``: an acknowledged upsert whose point is absent or older; ``wrong_vectors``: a
  vector that must be stored exactly (see above) differs; ``resurrected_deletes``,
  ``corrupt_points`` (a payload no write of the point had);
* ``points_in_neither``: an acknowledged point stored in neither space;
  ``points_in_one_space``: during a migration, a point in ``mig#new`` only, or (once the
  migration is ``backfilling``: every point has a new-model vector) in ``mig`` only;
  ``spaces_disagree``: the two spaces hold different payloads for a point;
* ``memory_mismatch``: what the server answers (count, ``GET`` of a sample of the touched ids
  and of the others, every id at the end; the migration's state and counts; a search of each
  space) differs from what is committed; ``unsearchable``: an exact search with the vector of
  one of those points (where it is exactly known) does not find it (a ``GET`` reads SQLite, a
  search the in-memory index: a snapshot plus the writes replayed after it);
* ``end_state_wrong``: after a finish, the collection's config must name the new model and
  its dim and nothing of ``mig#new`` may be left; after a cancel, the old model, no ``mig#new``
  rows and no maps folder under ``<data>/migrations/mig``;
* ``incomplete_migrations``: a migration that fails, or does not reach *complete*
  (``backfilling`` with no mapped vector left) within ``phase_timeout`` seconds, or whose end is
  refused.

Run (the 50-kill run: about 7 minutes on 2 cores)::

    PYTHONPATH=tests .venv/bin/python -m harness.migration_crash --kills 50 \\
        --out runs/migration/crash.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.crash import CheckResult, Gate, RestartableServer, _stats, send
from nestemb.errors import NestembError
from nestemb.service.migration import MIGRATIONS
from nestemb.service.store import DB_NAME, MAPPED, shadow_name

NAME = "mig"
SHADOW = shadow_name(NAME)
ENCODERS = {"a": 32, "b": 48}
"""The server's two tiny encoders: name -> width (``make_tiny_model(hidden=...)``)."""
FIRST = ("sampling", "collecting")
PHASES = ("first", "mapping", "backfilling", "end")
"""Kill targets: the first phase (sampling or collecting), mapping, backfilling, the end."""
ORDER = {"sampling": 0, "collecting": 0, "mapping": 1, "backfilling": 2}
KILL_DELAY = {"first": 0.15, "mapping": 0.03, "backfilling": 2.0, "end": 0.05}
"""Most seconds between seeing a target phase and the SIGKILL (uniform)."""
CLIENT_NESTINGS = ((8, 24), (16, 32), (12, 48), (16, 40))
WORDS: tuple[str, ...] = ()  # filled from nestemb.text._tiny on first use


# ----------------------------------------------------------------------------- the data
@lru_cache(maxsize=None)
def _word(label: str, dim: int, word: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{label}/{dim}/{word}".encode()))
    return rng.standard_normal(dim).astype(np.float32)


def vector(label: str, dim: int, text: str) -> np.ndarray:
    """The vector a client's model ``label`` gives ``text``: a sum of random word vectors (a
    fixed function, so the harness knows the exact bytes to find; any map fits it)."""
    v = np.zeros(dim, np.float32)
    for w in text.split():
        v += _word(label, dim, w)
    return v


def _words() -> tuple[str, ...]:
    global WORDS
    if not WORDS:
        from nestemb.text._tiny import WORDS as words

        WORDS = tuple(words)
    return WORDS


def make_text(rng: random.Random) -> str:
    words = _words()
    return " ".join(rng.choice(words) for _ in range(rng.randint(3, 8)))


@dataclass(frozen=True)
class Gen:
    """One model the collection has (or migrates to): ``number`` counts them (a->b->a is
    three generations: the vectors of the first a are not the second a's)."""

    number: int
    label: str  # encoder name, or the client's model_id
    encoder: str | None
    nesting: tuple[int, ...]
    model_id: str | None = None  # as the service records it (default: the label)

    @property
    def model(self) -> str:
        return self.model_id or self.label

    @property
    def dim(self) -> int:
        return self.nesting[-1]


@dataclass(frozen=True)
class Rec:
    """One acknowledged (or in-flight) version of a point. ``how``: ``"text"`` (embedded by
    the server), or ``"old"``/``"new"``: a vector of generation ``gen`` (exactly known)."""

    v: int
    text: str
    how: str
    gen: int
    stored: str | None = None  # a version read back from the store: its payload's JSON

    @property
    def payload(self) -> dict:
        if self.stored is not None:
            return json.loads(self.stored)
        return {"text": self.text, "v": self.v, "how": self.how}

    def exact(self, gen: Gen) -> bytes | None:
        """The stored bytes of this version's vector in ``gen``'s space, if known."""
        if self.how == "text" or self.gen != gen.number:
            return None
        return vector(gen.label, gen.dim, self.text).astype("<f4").tobytes()


def _rec_of(payload: Any) -> Rec:
    """A version read back from a stored payload (exact vector unknown)."""
    p = payload if isinstance(payload, dict) else {}
    return Rec(p["v"] if isinstance(p.get("v"), int) else -1, str(p.get("text", "")), "text",
               -1, json.dumps(payload))


class Ledger:
    """What the harness knows: per id its acknowledged (or last checked) version (None:
    absent), the version of an in-flight request, the ids touched since the last check, and
    claims (a writer and the vector-posting driver never work on one id at once)."""

    def __init__(self):
        self.state: dict[int, Rec | None] = {}
        self.pending: dict[int, Rec | None] = {}
        self.dirty: set[int] = set()
        self.claimed: set[int] = set()
        self.lock = threading.Lock()

    def claim(self, ids: list[int]) -> list[int]:
        """The ids of ``ids`` now claimed by the caller (not claimed, not in flight)."""
        with self.lock:
            got = [i for i in ids if i not in self.claimed and i not in self.pending]
            self.claimed.update(got)
            return got

    def release(self, ids: list[int]) -> None:
        with self.lock:
            self.claimed.difference_update(ids)

    def ids(self) -> list[int]:
        return sorted(set(self.state) | set(self.pending))


# ----------------------------------------------------------------------------- the checks
@dataclass
class MigrationCheck(CheckResult):
    """:class:`harness.crash.CheckResult` with the migration's own failures."""

    wrong_vectors: int = 0
    points_in_neither: int = 0
    points_in_one_space: int = 0
    spaces_disagree: int = 0
    memory_mismatch: int = 0
    end_state_wrong: int = 0
    incomplete_migrations: int = 0

    @property
    def failures(self) -> int:
        return (super().failures + self.wrong_vectors + self.points_in_neither
                + self.points_in_one_space + self.spaces_disagree + self.memory_mismatch
                + self.end_state_wrong + self.incomplete_migrations)


FAILURES = ("lost_writes", "resurrected_deletes", "corrupt_points", "wrong_vectors", "unsearchable",
            "points_in_neither", "points_in_one_space", "spaces_disagree", "memory_mismatch",
            "end_state_wrong", "incomplete_migrations", "server_errors")
"""Report figures that must be zero."""


def read_db(data_dir: str | Path) -> dict[str, Any]:
    """The committed state, in one read transaction of a read-only connection: collection
    configs, and ``{id: (vector bytes, payload, origin)}`` of ``mig`` and ``mig#new``."""
    con = sqlite3.connect(f"file:{Path(data_dir) / DB_NAME}?mode=ro", uri=True,
                          isolation_level=None)
    try:
        con.execute("BEGIN")
        configs = {n: json.loads(c) for n, c in con.execute(
            "SELECT name, config FROM collections")}
        spaces: dict[str, dict] = {NAME: {}, SHADOW: {}}
        for coll, pid, vec, pay, origin in con.execute(
                "SELECT collection, id, vector, payload, origin FROM points "
                "WHERE collection IN (?, ?)", (NAME, SHADOW)):
            spaces[coll][json.loads(pid)] = (bytes(vec), json.loads(pay), origin)
        others = con.execute("SELECT COUNT(*) FROM points WHERE collection NOT IN (?, ?)",
                             (NAME, SHADOW)).fetchone()[0]
        con.execute("COMMIT")
    finally:
        con.close()
    return {"configs": configs, "main": spaces[NAME], "shadow": spaces[SHADOW],
            "other_rows": others}


# ----------------------------------------------------------------------------- the writers
@dataclass
class Counters:
    upserts_acked: int = 0  # requests
    points_written: int = 0  # points in acknowledged upserts
    deletes_acked: int = 0  # ids
    new_model_writes_acked: int = 0  # points written with model 'new'
    vectors_posted: int = 0  # new-model vectors posted by the driver (client mode)
    requests_in_flight: int = 0
    requests_refused: int = 0
    rejected: dict = field(default_factory=dict)  # status -> count (4xx: no effect)
    server_errors: int = 0  # 5xx answers
    error_samples: list = field(default_factory=list)


class Writer(threading.Thread):
    """One client writing its own ids while the gate is open (see the module docstring)."""

    def __init__(self, wid: int, harness: "MigrationCrash"):
        super().__init__(name=f"migration-writer-{wid}", daemon=True)
        self.wid, self.h = wid, harness
        self.rng = random.Random(harness.cfg.seed * 1000 + wid)
        self.own: list[int] = [i for i in range(harness.cfg.points)
                               if i % harness.cfg.writers == wid]
        self.next_id = harness.cfg.points + wid
        self.most = int(1.2 * len(self.own))  # live points of this writer (the size is bounded)
        self.failure: BaseException | None = None

    def run(self) -> None:
        import httpx

        http: httpx.Client | None = None
        gen, need = 0, 1
        try:
            while True:
                entered = self.h.gate.enter(need)
                if entered is None:
                    return
                try:
                    g, url = entered
                    if g != gen or http is None:
                        if http is not None:
                            http.close()
                        http = httpx.Client(base_url=url, timeout=self.h.cfg.request_timeout)
                        gen = g
                    outcome = self._one(http)
                finally:
                    self.h.gate.leave()
                if outcome == "in_flight":
                    need = gen + 1  # the old request must be dead before the next one
                else:
                    time.sleep(self.h.cfg.write_pause)
        except BaseException as e:  # noqa: BLE001 - reported by the harness
            self.failure = e
        finally:
            if http is not None:
                http.close()

    def _pick(self, n: int) -> list[int]:
        """Up to ``n`` of this writer's present ids, claimed."""
        led = self.h.ledger
        cand = {self.own[self.rng.randrange(len(self.own))] for _ in range(2 * n)}
        cand = {i for i in cand if led.state.get(i) is not None}
        return led.claim(sorted(cand)[:n])

    def _one(self, http) -> str:
        h = self.h
        old, new, state = h.old, h.new, h.state
        maps = new is not None and state in ("mapping", "backfilling")
        r = self.rng.random()
        if r < 0.25 and sum(1 for i in self.own if h.ledger.state.get(i) is not None) < self.most:
            ids = []
            for _ in range(self.rng.randint(1, 8)):
                ids.append(self.next_id)
                self.own.append(self.next_id)
                self.next_id += h.cfg.writers
            ids = h.ledger.claim(ids)
            how = "text" if old.encoder else "old"
            return self._upsert(http, ids, how, new_text=True)
        ids = self._pick(self.rng.randint(1, 8))
        if not ids:
            return "skipped"
        if r < 0.4:
            how, same = ("text", False) if old.encoder else ("old", False)
        elif r < 0.6:
            how, same = "old", self.rng.random() < 0.5
        elif r < 0.85:
            how, same = ("new", self.rng.random() < 0.5) if maps else ("old", False)
        else:
            return self._delete_points(http, ids)
        return self._upsert(http, ids, how, new_text=not same)

    def _send(self, http, method: str, path: str, body: Any) -> str:
        outcome, resp = send(http, method, path, body)
        c, lock = self.h.counters, self.h.ledger.lock
        with lock:
            if outcome == "refused":
                c.requests_refused += 1
            elif outcome == "in_flight":
                c.requests_in_flight += 1
            elif outcome == "answered":
                status = resp.status_code
                if len(c.error_samples) < 20:
                    c.error_samples.append({"method": method, "path": path, "status": status,
                                            "body": resp.text[:300]})
                if status >= 500:  # its effect is unknown
                    c.server_errors += 1
                    c.requests_in_flight += 1
                    outcome = "in_flight"
                else:
                    c.rejected[str(status)] = c.rejected.get(str(status), 0) + 1
                    outcome = "rejected"
        return outcome

    def _upsert(self, http, ids: list[int], how: str, new_text: bool) -> str:
        h, led = self.h, self.h.ledger
        gen = h.new if how == "new" else h.old
        assert gen is not None
        recs = []
        for i in ids:
            prev = led.state.get(i)
            text = make_text(self.rng) if new_text or prev is None else prev.text
            recs.append(Rec(0 if prev is None else prev.v + 1, text, how, gen.number))
        pts = []
        for i, rec in zip(ids, recs):
            p: dict[str, Any] = {"id": i, "payload": rec.payload}
            if how == "text":
                p["text"] = rec.text
            else:
                p["vector"] = vector(gen.label, gen.dim, rec.text).tolist()
                p["model"] = how if how == "new" or self.rng.random() < 0.5 else None
            if p.get("model") is None:
                p.pop("model", None)
            pts.append(p)
        led.dirty.update(ids)
        try:
            outcome = self._send(http, "PUT", f"/collections/{NAME}/points", {"points": pts})
            with led.lock:
                if outcome == "acked":
                    for i, rec in zip(ids, recs):
                        led.state[i] = rec
                    h.counters.upserts_acked += 1
                    h.counters.points_written += len(ids)
                    if how == "new":
                        h.counters.new_model_writes_acked += len(ids)
                elif outcome == "in_flight":
                    for i, rec in zip(ids, recs):
                        led.pending[i] = rec
        finally:
            led.release(ids)
        return outcome

    def _delete_points(self, http, ids: list[int]) -> str:
        led = self.h.ledger
        led.dirty.update(ids)
        try:
            outcome = self._send(http, "POST", f"/collections/{NAME}/points/delete",
                                 {"ids": ids})
            with led.lock:
                if outcome == "acked":
                    for i in ids:
                        led.state[i] = None
                    self.h.counters.deletes_acked += len(ids)
                elif outcome == "in_flight":
                    for i in ids:
                        led.pending[i] = None
        finally:
            led.release(ids)
        return outcome


# ----------------------------------------------------------------------------- the harness
@dataclass
class MigrationCrashConfig:
    """One harness run: cycles (one migration each) until ``kills`` SIGKILLs were made (or
    ``max_seconds`` passed)."""

    data_dir: str | Path
    kills: int = 50
    points: int = 3000
    writers: int = 2
    sample_size: int = 400
    batch: int = 8
    """Texts re-encoded per step of the server's worker (small: kills land mid-phase)."""
    post_batch: int = 32
    """New-model vectors per request of the posting client (client mode)."""
    client_rate: float = 0.4
    """Share of migrations whose new vectors the client posts."""
    cancel_rate: float = 0.3
    second_kill_rate: float = 0.5
    """Share of migrations killed twice (two phases) instead of once."""
    same_dim_rate: float = 0.3
    """Share of client-mode migrations whose new model has the current model's width."""
    plan: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    """The first cycles as ``(mode, end, kill targets)``: ``("client", "cancel",
    ("mapping", "end"))``; random cycles follow."""
    write_pause: float = 0.02
    """Seconds a writer waits between two requests."""
    write_after: float = 2.0
    """Writers go on for up to this many seconds (uniform) after the last kill of a migration,
    then are parked so that its backfill completes."""
    phase_timeout: float = 180.0
    get_sample: int = 200
    """Ids fetched with GET per check: every in-flight one, and up to this many of the ids
    touched since the last check and of the others (the final checks fetch every id)."""
    durability: str = "full"
    seed: int = 0
    max_seconds: float | None = None
    log_path: str | Path | None = None
    models_dir: str | Path | None = None
    """Where the two tiny encoders are (made there if missing; default: beside data_dir)."""
    request_timeout: float = 60.0


class MigrationCrash:
    """The harness (see the module docstring): :meth:`run` does it all; the steps are
    separate so that a test can plant a failure between them."""

    def __init__(self, cfg: MigrationCrashConfig,
                 progress: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.progress = progress or (lambda msg: None)
        self.rng = random.Random(cfg.seed)
        self.data_dir = Path(cfg.data_dir)
        self.ledger = Ledger()
        self.gate = Gate()
        self.counters = Counters()
        self.total = MigrationCheck()
        self.server: RestartableServer | None = None
        self.writers: list[Writer] = []
        self.gens = 0
        self.old: Gen = Gen(0, "a", "a", (ENCODERS["a"],))
        self.new: Gen | None = None
        self.state: str | None = None
        """The migration's state as last seen (writers send new-model vectors once it is
        mapping or backfilling)."""
        self.client_ids = 0
        self._deck: list[str] = []
        self.kills_mid_post = 0
        self._post_error: BaseException | None = None
        self.kills = 0
        self.phases_killed: dict[str, int] = {}
        self.migrations: dict[str, int] = {"started": 0, "finished": 0, "cancelled": 0,
                                           "encoder_mode": 0, "client_mode": 0,
                                           "ends_reissued": 0}
        self.restarts: list[float] = []
        self.checks: list[float] = []
        self.migration_seconds: list[float] = []
        self._http: Any = None
        self._http_url = ""

    # ------------------------------------------------------------------ plumbing
    def http(self):
        """The harness's own client (its requests are sequential), renewed per server."""
        import httpx

        assert self.server is not None
        if self._http is None or self._http_url != self.server.url:
            if self._http is not None:
                self._http.close()
            self._http = httpx.Client(base_url=self.server.url,
                                      timeout=self.cfg.request_timeout)
            self._http_url = self.server.url
        return self._http

    def _reset_http(self) -> None:
        if self._http is not None:
            self._http.close()
        self._http = None

    def call(self, method: str, path: str, body: Any = None, ok: tuple = (200,)) -> Any:
        """A request of the harness itself that must be answered with one of ``ok``."""
        r = self.http().request(method, path, json=body)
        if r.status_code not in ok:
            raise NestembError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r

    def note(self, kind: str, **info: Any) -> None:
        self.total.note(kind, kills=self.kills, **info)

    def models(self) -> dict[str, Path]:
        from nestemb.text._tiny import make_tiny_model

        folder = Path(self.cfg.models_dir or self.data_dir.parent / "migration-models")
        out = {}
        for seed, (name, width) in enumerate(ENCODERS.items()):
            path = folder / name
            if not (path / "modules.json").is_file():
                make_tiny_model(path, hidden=width, seed=seed)
            out[name] = path
        return out

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Models, server, the collection with encoder ``a`` and ``points`` texts."""
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        models = self.models()
        log_path = Path(self.cfg.log_path) if self.cfg.log_path else \
            self.data_dir.parent / (self.data_dir.name + ".log")
        log_path.unlink(missing_ok=True)
        self.server = RestartableServer(
            self.data_dir, self.cfg.durability, log_path,
            extra_args=("--models", ",".join(f"{n}={p}" for n, p in models.items())))
        self.server.start()
        info = self.call("PUT", f"/collections/{NAME}", {"encoder": "a"}).json()
        self.old = Gen(0, "a", "a", tuple(info["nesting"]), info["model_id"])
        rng = random.Random(self.cfg.seed)
        for start in range(0, self.cfg.points, 250):
            ids = list(range(start, min(start + 250, self.cfg.points)))
            recs = [Rec(0, make_text(rng), "text", 0) for _ in ids]
            self.call("PUT", f"/collections/{NAME}/points", {"points": [
                {"id": i, "text": r.text, "payload": r.payload} for i, r in zip(ids, recs)]})
            self.ledger.state.update(zip(ids, recs))
        self.writers = [Writer(w, self) for w in range(self.cfg.writers)]
        for w in self.writers:
            w.start()

    def open_gate(self) -> None:
        assert self.server is not None
        self.gate.open(self.server.url)

    def park_writers(self) -> None:
        self.gate.close()
        self.gate.wait_idle()
        for w in self.writers:
            if w.failure is not None:
                raise NestembError(f"{w.name} failed: {w.failure!r}") from w.failure

    # ------------------------------------------------------------------ kills
    def kill_restart(self, phase: str, posting: threading.Thread | None = None) -> None:
        """SIGKILL the server (writers mid-request get no answer; so may ``posting``, a post of
        new-model vectors), restart it, check."""
        assert self.server is not None
        self.gate.close()
        self.server.kill()
        self.gate.wait_idle()
        if posting is not None:
            posting.join()
            self.kills_mid_post += 1
            if self._post_error is not None:
                raise self._post_error
        self.kills += 1
        self.phases_killed[phase] = self.phases_killed.get(phase, 0) + 1
        self._reset_http()
        self.restarts.append(self.server.start())
        self.check()

    # ------------------------------------------------------------------ a migration
    def start_migration(self, client: bool) -> None:
        """Start a migration (writers keep writing): to the other encoder, or to a new client
        model ``c<k>``."""
        self.gens += 1
        if client:
            self.client_ids += 1
            if self.rng.random() < self.cfg.same_dim_rate:
                d = self.old.dim
                nesting: tuple[int, ...] = (d // 2, d) if d >= 16 else (d,)
            else:
                nesting = self.rng.choice([n for n in CLIENT_NESTINGS
                                           if n[-1] != self.old.dim])
            target = Gen(self.gens, f"c{self.client_ids}", None, nesting)
            body: dict[str, Any] = {"nesting": list(nesting), "model_id": target.label}
        else:
            enc = "b" if self.old.encoder == "a" else "a" if self.old.encoder == "b" \
                else self.rng.choice(sorted(ENCODERS))
            target = Gen(self.gens, enc, enc, ())
            body = {"encoder": enc}
        body.update(sample_size=self.cfg.sample_size, min_quality=0.0, batch=self.cfg.batch)
        st = self.call("PUT", f"/collections/{NAME}/migration", body).json()
        if not client:
            target = Gen(target.number, enc, enc, tuple(st["target"]["nesting"]),
                         st["target"]["model_id"])
        self.new, self.state = target, st["state"]
        self.migrations["started"] += 1
        self.migrations["client_mode" if client else "encoder_mode"] += 1

    def status(self) -> dict:
        return self.call("GET", f"/collections/{NAME}/migration").json()

    def drive(self, target: str | None, timeout: float | None = None,
              park_after: float | None = None) -> str | None:
        """Move the migration on (posting vectors in client mode) until ``target`` (a phase of
        :data:`PHASES` but ``end``; reached or passed) is seen, then SIGKILL after a random
        delay and restart (returns the phase killed in); ``target`` None: until complete
        (parking the writers after ``park_after`` seconds)."""
        t0 = time.monotonic()
        deadline = t0 + (timeout or self.cfg.phase_timeout)
        kill_at: float | None = None
        while True:
            if park_after is not None and time.monotonic() - t0 > park_after:
                self.park_writers()
                park_after = None
            st = self.status()
            self.state = st["state"]
            if st["state"] == "failed":
                raise Incomplete(f"the migration failed: {st.get('error')}")
            now = time.monotonic()
            if target is not None and kill_at is None and ORDER[st["state"]] >= (
                    0 if target == "first" else ORDER[target]):
                kill_at = now + self.rng.uniform(0.0, KILL_DELAY[target])
            if kill_at is not None and now >= kill_at:
                phase, mid = st["state"], None
                if st["mode"] == "client" and self.rng.random() < 0.5:  # mid-request too
                    mid = threading.Thread(target=self._post_in_background, args=(st,))
                    mid.start()
                    time.sleep(self.rng.uniform(0.0, 0.02))
                self.kill_restart(phase, mid)
                return phase
            if target is None and st["complete"]:
                return None
            if now > deadline:
                raise Incomplete(f"the migration is still {st['state']} "
                                 f"({st['mapped']} mapped, {st['new_vectors']} new vectors of "
                                 f"{st['count']}) after {timeout or self.cfg.phase_timeout} s")
            if not (st["mode"] == "client" and self.post_step(st)):
                time.sleep(0.005)

    def post_step(self, st: dict) -> bool:
        """One request of a client posting new-model vectors: sample points while collecting,
        the queue's next ones after; False when there was nothing to post."""
        assert self.new is not None
        led, n = self.ledger, self.cfg.post_batch
        if st["state"] == "collecting":
            have = self.rng.sample(led.ids(), min(4 * n, len(led.state)))
        else:
            have = self.call("GET", f"/collections/{NAME}/migration/queue?limit={4 * n}"
                             ).json()["ids"] if st["mapped"] else []
        mine = led.claim(have)
        try:
            # a point written with the new model keeps its vector; deleted ones are skipped
            todo = [i for i in mine if (r := led.state.get(i)) is not None and (
                r.how != "new" or r.gen != self.new.number)][:n]
            if not todo:
                return False
            body = {"points": [{"id": i, "vector": vector(
                self.new.label, self.new.dim, led.state[i].text).tolist()}  # type: ignore
                for i in todo]}
            outcome, resp = send(self.http(), "PUT", f"/collections/{NAME}/migration/vectors",
                                 body)
            if outcome == "acked":
                self.counters.vectors_posted += len(todo)
            elif outcome == "answered":
                if resp.status_code >= 500:
                    self.counters.server_errors += 1
                raise NestembError(f"posting vectors: {resp.status_code} {resp.text[:300]}")
            return True
        finally:
            led.release(mine)

    def _post_in_background(self, st: dict) -> None:
        """:meth:`post_step` while the server is killed (an error of the killed connection is
        expected; any other is raised by :meth:`kill_restart`)."""
        import httpx

        try:
            self.post_step(st)
        except httpx.HTTPError:
            pass
        except BaseException as e:  # noqa: BLE001 - raised by kill_restart
            self._post_error = e

    def end(self, how: str, kill: bool) -> None:
        """Finish (or cancel) the migration with the writers parked; with ``kill``, SIGKILL
        the server a random moment after sending the request, restart, and issue it again if
        the restarted server still shows the migration."""
        assert self.new is not None and self.server is not None
        path = f"/collections/{NAME}/migration/{how}"
        if how == "finish":  # no write may make a vector mapped again now
            self.drive(None)
        if kill:
            got: list = []
            sender = threading.Thread(target=lambda: got.append(
                send(self.http(), "POST", path, None)))
            sender.start()
            time.sleep(self.rng.uniform(0.0, KILL_DELAY["end"]))
            self.gate.close()
            self.server.kill()
            sender.join()
            self.kills += 1
            self.phases_killed[how] = self.phases_killed.get(how, 0) + 1
            self._reset_http()
            self.restarts.append(self.server.start())
            outcome, resp = got[0]
            if outcome == "answered":
                raise Incomplete(f"{how} answered {resp.status_code}: {resp.text[:300]}")
            done = outcome == "acked" or self.http().get(
                f"/collections/{NAME}/migration").status_code == 404
            if not done:
                self.check()  # the migration goes on: a check of a migrating collection
                self.migrations["ends_reissued"] += 1
                if how == "finish":
                    self.drive(None)
                self.call("POST", path)
        else:
            r = self.http().post(path)
            if r.status_code != 200:
                raise Incomplete(f"{how} answered {r.status_code}: {r.text[:300]}")
        if how == "finish":
            self.old = self.new
        self.new, self.state = None, None
        self.migrations["finished" if how == "finish" else "cancelled"] += 1
        self.check()

    def cycle(self) -> None:
        """One migration: start, kills at one or two of its phases, driven to its end."""
        client = self.rng.random() < self.cfg.client_rate
        how = "cancel" if self.rng.random() < self.cfg.cancel_rate else "finish"
        targets = self._targets(2 if self.rng.random() < self.cfg.second_kill_rate else 1)
        done = self.migrations["started"]
        if done < len(self.cfg.plan):
            mode, how, planned = self.cfg.plan[done]
            client, targets = mode == "client", list(planned)
        targets.sort(key=PHASES.index)
        t0 = time.perf_counter()
        self.open_gate()  # a write may race the start: refused (409), or in the old space
        self.start_migration(client)
        try:
            for target in targets:
                if target != "end":
                    self.drive(target)
                    self.open_gate()
            self.drive(None, park_after=self.rng.uniform(0.0, self.cfg.write_after))
            self.park_writers()
            self.end(how, kill="end" in targets)
        except Incomplete as e:
            self.note("incomplete_migrations", error=str(e)[:500])
            self.abandon()
        self.migration_seconds.append(time.perf_counter() - t0)
        self.progress(f"migration {self.migrations['started']} "
                      f"({'client' if client else 'encoder'}, {how}, kills at {targets}): "
                      f"{time.perf_counter() - t0:.1f} s; kills {self.kills}, "
                      f"failures so far {self.total.failures}")

    def _targets(self, n: int) -> list[str]:
        """``n`` distinct kill targets, dealt from shuffled decks of :data:`PHASES` (every
        phase is aimed at about as often)."""
        out: list[str] = []
        while len(out) < n:
            if not self._deck:
                self._deck = self.rng.sample(PHASES, len(PHASES))
            t = self._deck.pop()
            if t in out:
                self._deck.insert(0, t)
            else:
                out.append(t)
        return out

    def abandon(self) -> None:
        """After an incomplete migration: cancel it (the run goes on from the old model)."""
        self.park_writers()
        if self.http().get(f"/collections/{NAME}/migration").status_code == 200:
            self.call("POST", f"/collections/{NAME}/migration/cancel")
        self.new, self.state = None, None
        self.check()

    # ------------------------------------------------------------------ the check
    def check(self, all_ids: bool = False) -> MigrationCheck:
        """Check every id against the committed state and a sample (``all_ids``: every id)
        against what the server answers; resolve the ledger to what is stored (so that a
        failure is counted once). Call with the writers parked and the server up."""
        t0 = time.perf_counter()
        self.park_writers()
        before = self.total.failures
        res = MigrationCheck()
        status0 = self._migration_status()
        db = read_db(self.data_dir)
        status1 = self._migration_status()
        main, shadow, configs = db["main"], db["shadow"], db["configs"]
        cfg = configs.get(NAME)
        record = (cfg or {}).get("migration")
        migrating = record is not None
        state = record["state"] if migrating else None
        self._check_config(res, cfg, configs, record, shadow)
        led = self.ledger
        touched = set(led.dirty) | set(led.pending)
        seen: dict[int, Rec | None] = {}
        for pid in sorted(set(led.ids()) | set(main) | set(shadow), key=str):
            m, s = main.get(pid), shadow.get(pid)
            allowed = [led.state.get(pid)] + ([led.pending[pid]] if pid in led.pending else [])
            acked = led.state.get(pid)
            rec: Rec | None = None
            if m is not None:
                rec = next((r for r in allowed if r is not None and r.payload == m[1]), None)
                if rec is None:
                    if all(r is None for r in allowed):
                        res.note("resurrected_deletes", id=pid, seen=m[1])
                    elif isinstance(m[1].get("v"), int) and acked is not None \
                            and m[1]["v"] < acked.v:
                        res.note("lost_writes", id=pid, seen=m[1], acked=acked.payload)
                    else:
                        res.note("corrupt", id=pid, seen=m[1],
                                 allowed=[r and r.payload for r in allowed])
                    rec = _rec_of(m[1])
                elif not self._exact(res, pid, rec, self.old, m, "old"):
                    rec = _rec_of(m[1])  # counted once: its vector is unknown from now on
            elif None not in allowed:
                res.note("lost_writes", id=pid, acked=acked and acked.payload)
                if s is None:
                    res.note("points_in_neither", id=pid)
            if migrating:
                if s is not None and m is None:
                    res.note("points_in_one_space", id=pid, only=SHADOW, state=state)
                elif s is None and m is not None and state == "backfilling":
                    res.note("points_in_one_space", id=pid, only=NAME, state=state)
                elif s is not None and m is not None and s[1] != m[1]:
                    res.note("spaces_disagree", id=pid, old=m[1], new=s[1])
                if rec is not None and m is not None and self.new is not None and \
                        not self._exact(res, pid, rec, self.new, s, "new"):
                    rec = _rec_of(m[1])
            seen[pid] = rec
        # memory: the server's answers against the committed state
        self._check_memory(res, main, shadow, touched, all_ids, status0, status1, seen)
        for pid, rec in seen.items():
            led.state[pid] = rec
        led.pending.clear()
        led.dirty.clear()
        res.checked_ids = len(seen)
        self.total.add(res)
        self.checks.append(time.perf_counter() - t0)
        if self.total.failures > before:
            self.progress(f"check after {self.kills} kills: {res.samples[:3]}")
        return res

    def _exact(self, res: MigrationCheck, pid: int, rec: Rec, gen: Gen,
               row: tuple | None, space: str) -> bool:
        """Whether ``row`` holds the vector ``rec`` must have in ``gen``'s space (if known)."""
        want = rec.exact(gen)
        if want is None:
            return True
        if row is None:
            res.note("lost_writes", id=pid, space=space, acked=rec.payload)
        elif row[0] != want:
            res.note("wrong_vectors", id=pid, space=space, payload=rec.payload,
                     origin=row[2])
        else:
            return True
        return False

    def _migration_status(self) -> dict | None:
        r = self.http().get(f"/collections/{NAME}/migration")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise NestembError(f"migration status: {r.status_code} {r.text[:300]}")
        return r.json()

    def _check_config(self, res: MigrationCheck, cfg: dict | None, configs: dict,
                      record: dict | None, shadow: dict) -> None:
        """The stored config names the model the harness expects; nothing of an ended
        migration is left."""
        if cfg is None:
            res.note("end_state_wrong", error=f"collection {NAME} is not stored")
            return
        old = self.old
        want = {"encoder": old.encoder, "model_id": old.model}
        got = {k: cfg.get(k) for k in want}
        if got != want or (old.nesting and tuple(cfg["nesting"]) != old.nesting):
            res.note("end_state_wrong", error="the config names another model",
                     want={**want, "nesting": old.nesting}, got={**got,
                                                                 "nesting": cfg["nesting"]})
        if record is None:
            if self.new is not None:
                res.note("end_state_wrong", error="the migration is not stored")
            if SHADOW in configs:
                res.note("end_state_wrong", error=f"{SHADOW} is stored without a migration")
            if shadow:
                res.note("end_state_wrong", error=f"{len(shadow)} rows of {SHADOW} are left "
                                                  "without a migration")
            if (self.data_dir / MIGRATIONS / NAME).exists():
                res.note("end_state_wrong", error=f"{MIGRATIONS}/{NAME} is left")
        else:
            new = self.new
            if new is None or record["target"]["model_id"] != new.model or \
                    (new.nesting and tuple(record["target"]["nesting"]) != new.nesting):
                res.note("end_state_wrong", error="a migration the harness did not start",
                         target=record["target"])
            if SHADOW not in configs:
                res.note("end_state_wrong", error=f"{SHADOW} is missing")

    def _check_memory(self, res: MigrationCheck, main: dict, shadow: dict, touched: set,
                      all_ids: bool, status0: dict | None, status1: dict | None,
                      seen: dict[int, Rec | None]) -> None:
        import http.client

        info = self.call("GET", f"/collections/{NAME}").json()
        if info["count"] != len(main):
            res.note("memory_mismatch", what="count", served=info["count"], stored=len(main))
        if not (status0 is None) == (status1 is None):
            res.note("memory_mismatch", what="migration", before=status0, after=status1)
        elif status1 is not None:
            if status1["count"] != len(main):
                res.note("memory_mismatch", what="migration count", served=status1["count"],
                         stored=len(main))
            keys = ("state", "new_vectors", "mapped")
            if all(status0[k] == status1[k] for k in keys):  # type: ignore[index]
                stored = {"new_vectors": len(shadow),
                          "mapped": sum(1 for r in shadow.values() if r[2] == MAPPED)}
                served = {k: status1[k] for k in stored}
                if served != stored:
                    res.note("memory_mismatch", what="new space", served=served,
                             stored=stored)
        # both spaces answer searches (the new one once every point has a vector there)
        for space, gen in (("old", self.old), ("new", self.new)):
            if gen is None or (space == "new" and (status1 or {}).get("state") != "backfilling"):
                continue
            q = vector(gen.label, gen.dim, "the cat sits on the mat").tolist()
            # no migration: the collection's own model (a finished one refuses 'old')
            model = {"model": space} if status1 is not None else {}
            r = self.http().post(f"/collections/{NAME}/search",
                                 json={"vector": q, "k": 3, **model})
            answered = r.json().get("migration") if r.status_code == 200 else None
            if r.status_code != 200 or (status1 is not None and (answered or {}).get(
                    "space") != space):
                res.note("memory_mismatch", what=f"search of the {space} space",
                         status=r.status_code, answer=r.text[:300])
        ids = self.ledger.ids()
        if all_ids:
            pick = ids
        else:
            rng, n = random.Random(self.kills), self.cfg.get_sample
            rest = [i for i in ids if i not in touched]
            touched_ = sorted(touched)
            pick = sorted(set(self.ledger.pending) | set(rng.sample(
                touched_, min(n, len(touched_)))) | set(rng.sample(rest, min(n, len(rest)))))
        assert self.server is not None
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port,
                                          timeout=self.cfg.request_timeout)
        try:
            for pid in pick:
                conn.request("GET", f"/collections/{NAME}/points/{pid}")
                r = conn.getresponse()
                body = json.loads(r.read())
                row = main.get(pid)
                if r.status == 404 and row is None:
                    continue
                if r.status != 200 or row is None or body["payload"] != row[1] or \
                        np.asarray(body["vector"], "<f4").tobytes() != row[0]:
                    res.note("memory_mismatch", what="point", id=pid, status=r.status,
                             served=str(body)[:200], stored=None if row is None else row[1])
        finally:
            conn.close()
        # searchable: a GET reads SQLite, a search the in-memory index (snapshot + replay), so
        # every picked point whose vector is exactly known is searched with it (exact plan)
        for space, gen in (("old", self.old), ("new", self.new)):
            if gen is None or (space == "new" and (status1 or {}).get("state") != "backfilling"):
                continue
            known = [(pid, rec) for pid in pick if (rec := seen.get(pid)) is not None
                     and rec.exact(gen) is not None]
            for start in range(0, len(known), 256):
                part = known[start: start + 256]
                model = {"model": space} if status1 is not None else {}
                body = {"searches": [{"vector": vector(gen.label, gen.dim, rec.text).tolist(),
                                      "k": 10, "dims": [gen.dim], **model}
                                     for _, rec in part]}
                r = self.http().post(f"/collections/{NAME}/search/batch", json=body)
                if r.status_code != 200:
                    res.note("unsearchable", space=space, status=r.status_code,
                             answer=r.text[:300])
                    continue
                for (pid, rec), out in zip(part, r.json()["results"]):
                    hits = out["hits"]
                    top = hits[0]["score"] if hits else 0.0
                    tied = [h["id"] for h in hits if h["score"] >= top - 1e-4 * max(1, abs(top))]
                    if pid not in tied:  # ties: points with the same text and vector
                        res.note("unsearchable", id=pid, space=space, payload=rec.payload,
                                 hits=[h["id"] for h in hits[:3]])

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        """Cycles until ``kills`` SIGKILLs (see the module docstring); the report."""
        t_start = time.perf_counter()
        stopped_by_time = False
        shutdown: dict[str, Any] = {}
        try:
            self.setup()
            self.check(all_ids=True)
            while self.kills < self.cfg.kills:
                if self.cfg.max_seconds and time.perf_counter() - t_start > self.cfg.max_seconds:
                    stopped_by_time = True
                    break
                self.cycle()
            self.park_writers()
            self.check(all_ids=True)  # every id, through the API too
            assert self.server is not None
            code, secs = self.server.stop()  # a graceful stop, then a last start and check
            shutdown = {"exit_status": code, "seconds": round(secs, 3)}
            self._reset_http()
            self.server.start()
            self.check(all_ids=True)
        finally:
            self.close()
        return self.report(time.perf_counter() - t_start, stopped_by_time, shutdown)

    def close(self) -> None:
        self.gate.shutdown()
        for w in self.writers:
            w.join(timeout=60)
        self._reset_http()
        if self.server is not None:
            self.server.kill()

    def report(self, seconds: float, stopped_by_time: bool, shutdown: dict) -> dict:
        t, c = self.total, self.counters
        live = sum(1 for r in self.ledger.state.values() if r is not None)
        return {
            "kills": self.kills,
            "migrations_started": self.migrations["started"],
            "migrations_finished": self.migrations["finished"],
            "migrations_cancelled": self.migrations["cancelled"],
            "migrations_encoder_mode": self.migrations["encoder_mode"],
            "migrations_client_mode": self.migrations["client_mode"],
            "ends_reissued_after_kill": self.migrations["ends_reissued"],
            "kills_mid_vector_post": self.kills_mid_post,
            "lost_writes": t.lost_writes,
            "points_in_neither": t.points_in_neither,
            "points_in_one_space": t.points_in_one_space,
            "incomplete_migrations": t.incomplete_migrations,
            "phases_killed": dict(sorted(self.phases_killed.items())),
            "resurrected_deletes": t.resurrected_deletes,
            "corrupt_points": t.corrupt,
            "wrong_vectors": t.wrong_vectors,
            "unsearchable": t.unsearchable,
            "spaces_disagree": t.spaces_disagree,
            "memory_mismatch": t.memory_mismatch,
            "end_state_wrong": t.end_state_wrong,
            "server_errors": c.server_errors,
            "failure_samples": t.samples,
            "writes": {"upserts_acknowledged": c.upserts_acked,
                       "points_written": c.points_written,
                       "new_model_points_written": c.new_model_writes_acked,
                       "deletes_acknowledged": c.deletes_acked,
                       "vectors_posted": c.vectors_posted,
                       "requests_in_flight_at_kill": c.requests_in_flight,
                       "requests_refused": c.requests_refused,
                       "rejected_by_status": dict(sorted(c.rejected.items())),
                       "rejected_samples": c.error_samples},
            "final_model": {"label": self.old.label, "dim": self.old.dim},
            "live_points_at_end": live,
            "ids_checked": t.checked_ids,
            "checks": len(self.checks),
            "stopped_by_time": stopped_by_time,
            "graceful_shutdown": shutdown,
            "restart_seconds": _stats(self.restarts),
            "check_seconds": _stats(self.checks),
            "migration_seconds": _stats(self.migration_seconds),
            "seconds": round(seconds, 1),
            "config": {k: (str(v) if isinstance(v, Path) else v)
                       for k, v in asdict(self.cfg).items()},
        }


class Incomplete(NestembError):
    """A migration that failed, stalled or whose end was refused."""


def run_migration_crash(cfg: MigrationCrashConfig,
                        progress: Callable[[str], None] | None = None) -> dict:
    """Run the harness (see the module docstring); returns the report as a dict."""
    return MigrationCrash(cfg, progress).run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--points", type=int, default=3000)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--sample-size", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--durability", choices=("full", "relaxed"), default="full")
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="(default: a folder crash-data beside --out)")
    ap.add_argument("--out", type=Path, default=Path("runs/migration/crash.json"))
    args = ap.parse_args(argv)
    data_dir = args.data_dir or args.out.parent / "crash-data"
    cfg = MigrationCrashConfig(data_dir=data_dir, kills=args.kills, points=args.points,
                               writers=args.writers, sample_size=args.sample_size,
                               batch=args.batch, seed=args.seed, durability=args.durability,
                               max_seconds=args.max_seconds)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f} s] {msg}", flush=True)

    report = run_migration_crash(cfg, log)
    report["command"] = ("PYTHONPATH=tests .venv/bin/python -m harness.migration_crash "
                         + " ".join(argv if argv is not None else __import__("sys").argv[1:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in (
        "kills", "migrations_finished", "migrations_cancelled", *FAILURES, "phases_killed",
        "seconds")}, indent=2))
    failed = {k: report[k] for k in FAILURES if report[k]}
    return 1 if failed or report["kills"] < cfg.kills else 0


if __name__ == "__main__":
    raise SystemExit(main())
