"""Crash harness of the service: write while ``nestemb serve`` is SIGKILLed, then check every
acknowledged write.

Why a real process: only a killed process shows what the storage promises (SQLite's WAL
recovery, a half-written request, a commit that never got its answer). The harness starts the
server through the CLI on a loopback port, lets client threads upsert (new points, updates of
their own points) and delete their own acknowledged points, SIGKILLs the server after a random
delay, restarts it and checks:

* every acknowledged upsert is present (``GET`` returns the same vector and payload) and
  searchable (exact search with its own vector returns it first);
* every acknowledged delete is absent;
* every collection opens, with ``acknowledged-live <= count <= acknowledged-live + in-flight``.

A request is *acknowledged* when its 200 answer arrived, *refused* when the connection could not
be opened (nothing was sent) and *in flight* otherwise (killed mid-request, or any other error):
its effect may or may not be there, and the check accepts both. Each id belongs to one client
thread, whose requests on it are sequential; after an in-flight failure the thread waits for the
next server, so an old request can never land after a newer one. Every ``check_every``-th
restart is followed by a check: every collection's count against the bounds above, every
in-flight id, the ids touched since the last check (all, or ``dirty_sample`` of them) and a
random sample of the others; every ``full_every``-th restart checks every id by search; the end
checks every id by ``GET`` and by search. A check resolves each in-flight outcome to what the
server shows, so later checks are exact again.

Small collections ``tmp-0`` ... ``tmp-2`` are created, filled, dropped and re-created during the
run (acknowledged drops must stay dropped, and a re-created collection must come back empty).

Example (a few seconds)::

    from harness.crash import CrashConfig, run_crash
    report = run_crash(CrashConfig(data_dir="runs/service/crash-demo", cycles=3, points=300))
    assert report["lost_writes"] == report["resurrected_deletes"] == 0
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from nestemb.errors import NestembError
from harness.server import HOST, free_port, kill_server, stop_server

MAIN = ("crash-int", "crash-str")
"""The two long-lived collections: integer ids and string ids."""
TMP = ("tmp-0", "tmp-1", "tmp-2")
TMP_POINTS = 10
ABSENT = -1


# ----------------------------------------------------------------------------- the server
class RestartableServer:
    """``nestemb serve`` (through the CLI, as a user starts it) in its own process group, so a
    SIGKILL reaches it and nothing it started survives it; started, killed and started again on
    the same data folder (:func:`harness.server.running_server` is the one-shot form).

    The port is kept across restarts (``nestemb serve`` binds it with ``SO_REUSEADDR``); if it
    is taken by something else meanwhile, a new free one is picked.
    """

    def __init__(self, data_dir: str | Path, durability: str = "full",
                 log_path: str | Path | None = None, extra_args: tuple[str, ...] = (),
                 startup_timeout: float = 120.0, log_level: str = "warning"):
        self.data_dir = Path(data_dir)
        self.durability = durability
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.command_prefix: list[str] = [sys.executable, "-m", "nestemb"]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def spawn(self) -> subprocess.Popen:
        """Start the process without waiting for it to answer."""
        if self.proc is not None and self.proc.poll() is None:
            raise NestembError("server already running")
        cmd = [*self.command_prefix, "serve", "--data-dir", str(self.data_dir),
               "--port", str(self.port), "--durability", self.durability,
               "--log-level", self.log_level, *self.extra_args]
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        try:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        return self.proc

    def start(self) -> float:
        """Start and wait for ``/healthz``; returns the seconds it took."""
        import httpx

        for _attempt in range(3):
            t0 = time.perf_counter()
            proc = self.spawn()
            deadline = t0 + self.startup_timeout
            while time.perf_counter() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    r = httpx.get(self.url + "/healthz", timeout=2.0)
                    if r.status_code == 200:
                        return time.perf_counter() - t0
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
            else:
                self.kill()
                raise NestembError(f"server did not answer /healthz within "
                                   f"{self.startup_timeout:.0f} s (log: {self.log_path})")
            if self._port_taken():  # someone else took the port between two runs
                self.port = free_port()
                continue
            raise NestembError(f"server exited with status {proc.returncode} at startup "
                               f"(log: {self.log_path})")
        raise NestembError("no free port for the server after 3 tries")

    def _port_taken(self) -> bool:
        with socket.socket() as s:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((HOST, self.port))
            except OSError:
                return True
        return False

    def kill(self) -> None:
        """SIGKILL the whole process group and reap the process."""
        if self.proc is not None:
            kill_server(self.proc, timeout=60)
            self.proc = None

    def stop(self, timeout: float = 20.0) -> tuple[int | None, float]:
        """Graceful stop (SIGTERM), SIGKILL after ``timeout``; returns (exit status or None
        if it had to be killed, seconds)."""
        if self.proc is None:
            return None, 0.0
        t0 = time.perf_counter()
        code = stop_server(self.proc, timeout)
        self.proc = None
        return code, time.perf_counter() - t0


# ----------------------------------------------------------------------------- the model
@dataclass
class CrashConfig:
    """One harness run. ``cycles`` and ``points`` are both minimums: the run kills and
    restarts until it has done ``cycles`` cycles and ``points`` distinct points were
    acknowledged (or ``max_seconds`` passed)."""

    data_dir: str | Path
    durability: str = "full"
    cycles: int = 500
    points: int = 100_000
    clients: int = 4
    batch: int = 100
    dim: int = 64
    nesting: tuple[int, ...] = (8, 16, 32, 64)
    kill_min: float = 0.05
    kill_max: float = 0.5
    startup_kill_rate: float = 0.05
    """Share of cycles that also kill the server while it is still starting (WAL recovery)."""
    delete_rate: float = 0.10
    update_rate: float = 0.05
    tmp_rate: float = 0.05
    """Share of client 0's operations spent on creating / filling / dropping tmp-* collections."""
    sample: int = 100
    """Untouched ids re-checked after every restart (besides every touched id)."""
    get_sample: int = 20
    """Ids per check fetched with GET besides the absent and unsettled ones (the final check
    fetches every id)."""
    full_every: int = 100
    check_every: int = 1
    """Check after every N-th restart (the writes of the cycles between are checked then)."""
    dirty_sample: int | None = None
    """Touched ids checked one by one per check (None: all); the others are covered by the
    count bounds then and one by one at the final check. In-flight ids are always checked."""
    max_seconds: float | None = None
    seed: int = 0
    log_path: str | Path | None = None
    request_timeout: float = 60.0
    verify_threads: int = 4


def _vector(seed: int, coll: int, client: int, seq: int, version: int, dim: int) -> np.ndarray:
    """The vector of one version of one point (recomputed, never stored by the harness)."""
    rng = np.random.default_rng([seed, coll, client, seq, version])
    return rng.standard_normal(dim).astype(np.float32)


@dataclass(frozen=True)
class Key:
    coll: int  # index into MAIN
    client: int
    seq: int

    @property
    def collection(self) -> str:
        return MAIN[self.coll]

    @property
    def id(self) -> int | str:
        return self.client * 1_000_000_000 + self.seq if self.coll == 0 else \
            f"c{self.client}-{self.seq}"


def _payload(key: Key, version: int) -> dict:
    return {"v": version, "tag": f"{key.collection}/{key.id}", "n": [key.client, key.seq]}


@dataclass
class Counters:
    points_acked: int = 0  # distinct ids whose first upsert was acknowledged
    upserts_acked: int = 0  # requests
    updates_acked: int = 0  # points re-upserted with a new version
    deletes_acked: int = 0  # ids
    requests_in_flight: int = 0  # unknown outcome
    requests_refused: int = 0
    http_errors: int = 0
    tmp_ops_acked: int = 0
    error_samples: list = field(default_factory=list)


class Model:
    """What the harness knows: per id its version (``ABSENT`` after a delete) as acknowledged
    or as last checked, and the version of an in-flight request whose outcome is unknown.

    Each key is written by one client thread only, and checks run while every client is parked,
    so plain dicts suffice (single dict operations are atomic under the GIL)."""

    def __init__(self):
        self.state: dict[Key, int] = {}
        self.pending: dict[Key, int] = {}
        self.dirty: set[Key] = set()
        self.tmp_state: dict[str, tuple[bool, int]] = {n: (False, 0) for n in TMP}
        self.tmp_pending: dict[str, tuple[bool, int]] = {}
        self.lock = threading.Lock()  # counters only

    def allowed(self, key: Key) -> set[int]:
        got = {self.state.get(key, ABSENT)}
        if key in self.pending:
            got.add(self.pending[key])
        return got

    def count_bounds(self) -> list[tuple[int, int]]:
        """Per main collection: (ids surely present, ids maybe present)."""
        lo, hi = [0] * len(MAIN), [0] * len(MAIN)
        pending = self.pending
        for key, v in self.state.items():
            p = pending.get(key, v)
            lo[key.coll] += v != ABSENT and p != ABSENT
            hi[key.coll] += v != ABSENT or p != ABSENT
        for key, v in pending.items():  # in-flight first upserts (not in state yet)
            if key not in self.state and v != ABSENT:
                hi[key.coll] += 1
        return list(zip(lo, hi))


# ----------------------------------------------------------------------------- the clients
def send(http: Any, method: str, path: str, body: Any) -> tuple[str, Any]:
    """One request on an ``httpx.Client``, classified for the acknowledged / in-flight
    accounting: ``("acked", response)`` for a 200; ``("refused", None)`` when the connection
    could not be opened (nothing was sent: no effect); ``("answered", response)`` for any other
    answer; ``("in_flight", None)`` when no answer came (killed mid-request: its effect may or
    may not be there)."""
    import httpx

    try:
        r = http.request(method, path, json=body)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        return "refused", None
    except httpx.HTTPError:
        return "in_flight", None
    return ("acked" if r.status_code == 200 else "answered"), r


class Gate:
    """Lets clients run only while the server is up; the killer waits for all of them to
    be parked before restarting and checking."""

    def __init__(self):
        self.cond = threading.Condition()
        self.up = False
        self.generation = 0
        self.active = 0
        self.stop = False
        self.url = ""

    def enter(self, min_generation: int) -> tuple[int, str] | None:
        with self.cond:
            while not self.stop and not (self.up and self.generation >= min_generation):
                self.cond.wait()
            if self.stop:
                return None
            self.active += 1
            return self.generation, self.url

    def leave(self) -> None:
        with self.cond:
            self.active -= 1
            self.cond.notify_all()

    def open(self, url: str) -> None:
        with self.cond:
            self.url = url
            self.generation += 1
            self.up = True
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.up = False

    def wait_idle(self, timeout: float = 120.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.active == 0, timeout):
                raise NestembError(f"clients still busy {timeout:.0f} s after the kill")

    def shutdown(self) -> None:
        with self.cond:
            self.stop = True
            self.cond.notify_all()


class Client(threading.Thread):
    """One writer: new points in batches, updates and deletes of its own acknowledged points,
    and (client 0) the tmp-* collection life cycle."""

    def __init__(self, cid: int, cfg: CrashConfig, model: Model, gate: Gate,
                 counters: Counters, want_points: Callable[[], bool]):
        super().__init__(name=f"crash-client-{cid}", daemon=True)
        self.cid, self.cfg, self.model, self.gate, self.c = cid, cfg, model, gate, counters
        self.want_points = want_points
        self.rng = random.Random(cfg.seed * 1000 + cid)
        self.seq = 0
        self.keys: list[Key] = []  # every key this client ever wrote
        self.tmp_index = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        import httpx

        http: httpx.Client | None = None
        gen, need = 0, 1
        try:
            while True:
                entered = self.gate.enter(need)
                if entered is None:
                    return
                try:
                    g, url = entered
                    if g != gen or http is None:
                        if http is not None:
                            http.close()
                        http = httpx.Client(base_url=url, timeout=self.cfg.request_timeout)
                        gen = g
                    outcome = self._one(http)
                finally:
                    self.gate.leave()
                if outcome == "in_flight":
                    need = gen + 1  # the old request must be dead before the next one
        except BaseException as e:  # noqa: BLE001 - reported by the harness
            self.failure = e
        finally:
            if http is not None:
                http.close()

    # ------------------------------------------------------------------ operations
    def _send(self, http, method: str, path: str, body: Any) -> str:
        outcome, r = send(http, method, path, body)
        if outcome == "acked":
            return outcome
        with self.model.lock:
            if outcome == "refused":
                self.c.requests_refused += 1
                return outcome
            self.c.requests_in_flight += 1  # any other answer: counted as in flight too
            if outcome == "in_flight":
                return outcome
            self.c.http_errors += 1
            if len(self.c.error_samples) < 20:
                self.c.error_samples.append({"method": method, "path": path,
                                             "status": r.status_code, "body": r.text[:300]})
        return "in_flight"

    def _live_keys(self, n: int) -> list[Key]:
        """Up to ``n`` distinct keys of this client that are acknowledged present."""
        got: dict[Key, None] = {}
        if not self.keys:
            return []
        for _ in range(4 * n):
            k = self.keys[self.rng.randrange(len(self.keys))]
            if self.model.state.get(k, ABSENT) != ABSENT and k not in self.model.pending:
                got[k] = None
                if len(got) == n:
                    break
        return list(got)

    def _one(self, http) -> str:
        r = self.rng.random()
        if self.cid == 0 and r < self.cfg.tmp_rate:
            outcome = self._tmp(http)
            if outcome != "skipped":
                return outcome
        r = self.rng.random()
        if r < self.cfg.delete_rate:
            keys = self._live_keys(self.rng.randint(1, 20))
            if keys:
                return self._delete_points(http, keys)
        elif r < self.cfg.delete_rate + self.cfg.update_rate or not self.want_points():
            keys = self._live_keys(self.rng.randint(1, 20))
            if keys:
                return self._upsert(http, keys, new=False)
        coll = self.rng.randrange(len(MAIN))
        keys = []
        for _ in range(self.cfg.batch):
            self.seq += 1
            keys.append(Key(coll, self.cid, self.seq))
        self.keys.extend(keys)
        return self._upsert(http, keys, new=True)

    def _by_collection(self, keys: list[Key]) -> dict[int, list[Key]]:
        out: dict[int, list[Key]] = {}
        for k in keys:
            out.setdefault(k.coll, []).append(k)
        return out

    def _upsert(self, http, keys: list[Key], new: bool) -> str:
        m = self.model
        coll = keys[0].coll
        keys = self._by_collection(keys)[coll]
        versions = [0 if new else m.state[k] + 1 for k in keys]
        body = {"points": [{"id": k.id, "vector": _vector(self.cfg.seed, k.coll, k.client,
                                                          k.seq, v, self.cfg.dim).tolist(),
                            "payload": _payload(k, v)} for k, v in zip(keys, versions)]}
        for k in keys:
            m.dirty.add(k)
        outcome = self._send(http, "PUT", f"/collections/{MAIN[coll]}/points", body)
        if outcome == "acked":
            for k, v in zip(keys, versions):
                m.state[k] = v
            with m.lock:
                self.c.upserts_acked += 1
                if new:
                    self.c.points_acked += len(keys)
                else:
                    self.c.updates_acked += len(keys)
        elif outcome == "in_flight":
            for k, v in zip(keys, versions):
                m.pending[k] = v
        return outcome

    def _delete_points(self, http, keys: list[Key]) -> str:
        m = self.model
        coll = keys[0].coll
        keys = self._by_collection(keys)[coll]
        for k in keys:
            m.dirty.add(k)
        outcome = self._send(http, "POST", f"/collections/{MAIN[coll]}/points/delete",
                             {"ids": [k.id for k in keys]})
        if outcome == "acked":
            for k in keys:
                m.state[k] = ABSENT
            with m.lock:
                self.c.deletes_acked += len(keys)
        elif outcome == "in_flight":
            for k in keys:
                m.pending[k] = ABSENT
        return outcome

    def _tmp(self, http) -> str:
        """One step of create -> fill -> drop of the current tmp collection."""
        m = self.model
        name = TMP[self.tmp_index % len(TMP)]
        if name in m.tmp_pending:  # outcome unknown until the next check: leave it alone
            return "skipped"
        exists, count = m.tmp_state[name]
        if not exists:
            after = (True, 0)
            outcome = self._send(http, "PUT", f"/collections/{name}",
                                 {"nesting": list(self.cfg.nesting), "encoder": None})
        elif count == 0:
            after = (True, TMP_POINTS)
            pts = [{"id": i, "vector": _vector(self.cfg.seed, 9, 0, i, self.tmp_index,
                                               self.cfg.dim).tolist(), "payload": {"i": i}}
                   for i in range(TMP_POINTS)]
            outcome = self._send(http, "PUT", f"/collections/{name}/points", {"points": pts})
        else:
            after = (False, 0)
            outcome = self._send(http, "DELETE", f"/collections/{name}", None)
        if outcome == "acked":
            m.tmp_state[name] = after
            with m.lock:
                self.c.tmp_ops_acked += 1
            if not after[0]:
                self.tmp_index += 1
        elif outcome == "in_flight":
            m.tmp_pending[name] = after
        return outcome


# ----------------------------------------------------------------------------- checks
@dataclass
class CheckResult:
    checked_ids: int = 0
    lost_writes: int = 0
    resurrected_deletes: int = 0
    stale_versions: int = 0  # an older acknowledged version came back
    corrupt: int = 0  # present but vector or payload differs from the version it claims
    unsearchable: int = 0
    collections_failing: int = 0
    count_out_of_bounds: int = 0
    tmp_lost: int = 0
    tmp_resurrected: int = 0
    in_flight_applied: int = 0
    in_flight_not_applied: int = 0
    samples: list = field(default_factory=list)

    def add(self, other: "CheckResult") -> None:
        for k, v in asdict(other).items():
            if k == "samples":
                self.samples.extend(other.samples[: max(0, 20 - len(self.samples))])
            else:
                setattr(self, k, getattr(self, k) + v)

    def note(self, kind: str, **info: Any) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.samples) < 20:
            self.samples.append({"kind": kind, **info})

    @property
    def failures(self) -> int:
        return (self.lost_writes + self.resurrected_deletes + self.stale_versions + self.corrupt
                + self.unsearchable + self.collections_failing + self.count_out_of_bounds
                + self.tmp_lost + self.tmp_resurrected)


def _chunks(xs: list, n: int) -> Iterator[list]:
    for i in range(0, len(xs), n):
        yield xs[i: i + n]


def check(url: str, cfg: CrashConfig, model: Model, keys: list[Key], cycle: int,
          get_sample: int | None = None) -> CheckResult:
    """Check ``keys`` against the model and resolve the model to what the server shows.

    Every collection opens with a count within the model's bounds; every key the model says
    may be present is searched (exact, k=1, with its own vector: it must come first with its
    payload); keys expected absent, keys the search did not settle and the others (all with
    ``get_sample=None``, else a random sample of that many) are fetched with ``GET``, which
    must return exactly the vector and payload of a version the model allows (or 404)."""
    import httpx
    from concurrent.futures import ThreadPoolExecutor

    res = CheckResult()
    bounds = model.count_bounds()
    with httpx.Client(base_url=url, timeout=cfg.request_timeout) as hc:
        for coll, name in enumerate(MAIN):
            r = hc.get(f"/collections/{name}")
            if r.status_code != 200:
                res.note("collections_failing", cycle=cycle, name=name, status=r.status_code)
                continue
            count = r.json()["count"]
            lo, hi = bounds[coll]
            if not lo <= count <= hi:
                res.note("count_out_of_bounds", cycle=cycle, name=name, count=count, lo=lo,
                         hi=hi)
        for name in TMP:
            r = hc.get(f"/collections/{name}")
            seen = (True, r.json()["count"]) if r.status_code == 200 else (False, 0)
            if r.status_code not in (200, 404):
                res.note("collections_failing", cycle=cycle, name=name, status=r.status_code)
                continue
            state = model.tmp_state[name]
            ok = {state} | ({model.tmp_pending[name]} if name in model.tmp_pending else set())
            if seen not in ok:
                if seen[0] and not any(e for e, _ in ok):
                    res.note("tmp_resurrected", cycle=cycle, name=name, seen=seen,
                             allowed=sorted(ok))
                elif not seen[0]:
                    res.note("collections_failing", cycle=cycle, name=name, status=404)
                    res.note("tmp_lost", cycle=cycle, name=name, allowed=sorted(ok))
                elif seen[1] > max(c for _, c in ok):
                    res.note("tmp_resurrected", cycle=cycle, name=name, seen=seen,
                             allowed=sorted(ok))
                else:
                    res.note("tmp_lost", cycle=cycle, name=name, seen=seen, allowed=sorted(ok))
            model.tmp_state[name] = seen  # resolved: later checks are exact again
            model.tmp_pending.pop(name, None)

    # 1. searchable: exact search (one stage, the full dimension) with the vector of every
    #    version the point may have; the point itself must come first, with that payload
    found: dict[Key, list[int]] = {k: [] for k in keys}
    searches = [(k, v) for k in keys for v in sorted(model.allowed(k)) if v != ABSENT]
    with httpx.Client(base_url=url, timeout=cfg.request_timeout) as hc:
        for coll, name in enumerate(MAIN):
            for part in _chunks([(k, v) for k, v in searches if k.coll == coll], 256):
                body = {"searches": [{"vector": _vector(cfg.seed, k.coll, k.client, k.seq, v,
                                                        cfg.dim).tolist(),
                                      "k": 1, "dims": [cfg.dim]} for k, v in part]}
                r = hc.post(f"/collections/{name}/search/batch", json=body)
                if r.status_code != 200:
                    raise NestembError(f"batch search answered {r.status_code}: {r.text[:300]}")
                for (k, v), out in zip(part, r.json()["results"]):
                    hits = out["hits"]
                    if hits and hits[0]["id"] == k.id and hits[0]["payload"] == _payload(k, v):
                        found[k].append(v)

    # 2. GET (vector and payload equal): points expected absent, points the search did not
    #    settle, and all others (get_sample None) or a random sample of them
    settled = [k for k in keys if len(found[k]) == 1]
    to_get = [k for k in keys if len(found[k]) != 1]
    if get_sample is None:
        to_get += settled
    else:
        to_get += random.Random(cycle).sample(settled, min(get_sample, len(settled)))

    def get_many(part: list[Key]) -> list[tuple[Key, int, Any]]:
        """GETs on one kept-alive connection (the stdlib client: a third of httpx's CPU per
        request, which matters for 100,000 of them on a small machine)."""
        host, port = url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=cfg.request_timeout)
        out = []
        try:
            for k in part:
                conn.request("GET", f"/collections/{k.collection}/points/{k.id}")
                r = conn.getresponse()
                out.append((k, r.status, json.loads(r.read())))
        finally:
            conn.close()
        return out

    parts = [to_get[i:: cfg.verify_threads] for i in range(cfg.verify_threads)]
    with ThreadPoolExecutor(cfg.verify_threads) as pool:
        got = {k: (status, body) for part in pool.map(get_many, parts)
               for k, status, body in part}

    # 3. judge each key against what the model allows, then resolve the model to it
    for k in keys:
        res.checked_ids += 1
        allowed, acked = model.allowed(k), model.state.get(k, ABSENT)
        seen: int | None = found[k][0] if len(found[k]) == 1 else None
        if k in got:
            status, body = got[k]
            if status == 404:
                fetched = ABSENT
            elif status == 200:
                w = body["payload"].get("v") if isinstance(body.get("payload"), dict) else None
                if not isinstance(w, int) or w < 0 or body["id"] != k.id \
                        or body["payload"] != _payload(k, w) \
                        or body["vector"] != _vector(cfg.seed, k.coll, k.client, k.seq, w,
                                                     cfg.dim).tolist():
                    res.note("corrupt", cycle=cycle, id=k.id, collection=k.collection,
                             body=str(body)[:200])
                    fetched = w if isinstance(w, int) and w >= 0 else ABSENT
                else:
                    fetched = w
            else:
                res.note("collections_failing", cycle=cycle, id=k.id, status=status)
                continue
            if seen is not None and fetched != seen:
                res.note("corrupt", cycle=cycle, id=k.id, collection=k.collection,
                         searched=seen, fetched=fetched)
            if seen is None and fetched != ABSENT and fetched in allowed:
                res.note("unsearchable", cycle=cycle, id=k.id, collection=k.collection,
                         version=fetched)
            seen = fetched
        if seen is None:  # cannot happen: every unsettled key was fetched
            raise NestembError(f"key {k} neither found nor fetched")
        if seen not in allowed:
            if seen == ABSENT:
                res.note("lost_writes", cycle=cycle, id=k.id, collection=k.collection,
                         acked=acked)
            elif acked == ABSENT:
                res.note("resurrected_deletes", cycle=cycle, id=k.id, collection=k.collection,
                         seen=seen)
            else:
                res.note("stale_versions", cycle=cycle, id=k.id, collection=k.collection,
                         seen=seen, acked=acked)
        elif k in model.pending:
            if seen == model.pending[k] and seen != acked:
                res.in_flight_applied += 1
            elif seen != model.pending[k]:
                res.in_flight_not_applied += 1
        model.state[k] = seen
        model.pending.pop(k, None)
        model.dirty.discard(k)
    return res


# ----------------------------------------------------------------------------- the run
def _stats(xs: list[float]) -> dict:
    if not xs:
        return {}
    a = np.asarray(xs)
    return {"n": len(xs), "mean": round(float(a.mean()), 3),
            "p50": round(float(np.percentile(a, 50)), 3),
            "p95": round(float(np.percentile(a, 95)), 3), "max": round(float(a.max()), 3)}


def _all_keys(model: Model) -> list[Key]:
    return list(model.state) + [k for k in model.pending if k not in model.state]


def run_crash(cfg: CrashConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Run the harness (see the module docstring); returns the report as a dict."""
    import httpx

    data_dir = Path(cfg.data_dir)
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    log_path = Path(cfg.log_path) if cfg.log_path else data_dir.parent / (data_dir.name + ".log")
    if log_path.exists():
        log_path.unlink()
    rng = random.Random(cfg.seed)
    server = RestartableServer(data_dir, cfg.durability, log_path)
    model, gate, counters = Model(), Gate(), Counters()
    want_points = lambda: counters.points_acked < cfg.points  # noqa: E731
    clients = [Client(i, cfg, model, gate, counters, want_points) for i in range(cfg.clients)]
    total = CheckResult()
    restarts: list[float] = []
    restarts_late: list[float] = []  # restarts in the last tenth of the run (largest data)
    checks: list[float] = []
    startup_kills = 0
    alive_total = kill_total = 0.0
    t_start = time.perf_counter()
    cycle = 0
    stopped_by_time = False
    shutdown: dict[str, Any] = {}
    try:
        server.start()
        with httpx.Client(base_url=server.url, timeout=cfg.request_timeout) as http:
            for name in MAIN:
                r = http.put(f"/collections/{name}", json={"nesting": list(cfg.nesting),
                                                          "encoder": None})
                if r.status_code != 200:
                    raise NestembError(f"creating {name}: {r.status_code} {r.text[:200]}")
        for c in clients:
            c.start()
        while cycle < cfg.cycles or counters.points_acked < cfg.points:
            if cfg.max_seconds and time.perf_counter() - t_start > cfg.max_seconds:
                stopped_by_time = True
                break
            cycle += 1
            gate.open(server.url)
            alive = rng.uniform(cfg.kill_min, cfg.kill_max)
            time.sleep(alive)
            alive_total += alive
            gate.close()
            t0 = time.perf_counter()
            server.kill()
            gate.wait_idle()
            kill_total += time.perf_counter() - t0
            for c in clients:
                if c.failure is not None:
                    raise NestembError(f"{c.name} failed: {c.failure!r}") from c.failure
            if rng.random() < cfg.startup_kill_rate:  # killed again while recovering
                server.spawn()
                time.sleep(rng.uniform(0.0, restarts[-1] if restarts else 0.5))
                server.kill()
                startup_kills += 1
            t = server.start()
            restarts.append(t)
            if cycle > 0.9 * cfg.cycles:
                restarts_late.append(t)
            t0 = time.perf_counter()
            full = cfg.full_every > 0 and cycle % cfg.full_every == 0
            if not full and cycle % cfg.check_every:
                continue
            if full:  # every point that may be present, by search
                maybe = [k for k in _all_keys(model) if model.allowed(k) != {ABSENT}]
                gone = [k for k in _all_keys(model) if model.allowed(k) == {ABSENT}]
                keys = maybe + rng.sample(gone, min(10 * cfg.sample, len(gone)))
                res = check(server.url, cfg, model, keys, cycle, get_sample=10 * cfg.get_sample)
            else:  # in-flight writes, touched ids (or a sample), a sample of the others
                touched = [k for k in model.dirty if k not in model.pending]
                if cfg.dirty_sample is not None and len(touched) > cfg.dirty_sample:
                    touched = rng.sample(touched, cfg.dirty_sample)
                clean = [k for k in model.state if k not in model.dirty]
                keys = list(model.pending) + touched + rng.sample(clean,
                                                                  min(cfg.sample, len(clean)))
                res = check(server.url, cfg, model, keys, cycle, get_sample=cfg.get_sample)
                model.dirty.clear()  # the rest: in the counts now, one by one at the end
            checks.append(time.perf_counter() - t0)
            total.add(res)
            if progress and (cycle % 10 == 0 or res.failures):
                progress(f"cycle {cycle}: {counters.points_acked} points acked, "
                         f"{counters.deletes_acked} deletes acked, restart {t:.2f} s, "
                         f"check {checks[-1]:.2f} s ({res.checked_ids} ids), "
                         f"failures so far {total.failures}")
        # final: every id, searched and fetched, on the server of the last cycle
        gate.shutdown()
        for c in clients:
            c.join(timeout=60)
        t0 = time.perf_counter()
        final = check(server.url, cfg, model, _all_keys(model), cycle, get_sample=None)
        total.add(final)
        final_seconds = time.perf_counter() - t0
        code, secs = server.stop()
        shutdown = {"exit_status": code, "seconds": round(secs, 3)}
        t = server.start()  # reopens after a graceful stop too
        reopened = check(server.url, cfg, model,
                         rng.sample(list(model.state), min(1000, len(model.state))), cycle,
                         get_sample=cfg.get_sample)
        total.add(reopened)
        server.kill()
    finally:
        gate.shutdown()
        server.kill()
    live = sum(v != ABSENT for v in model.state.values())
    return {
        "durability": cfg.durability,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "cycles": cycle,
        "sigkills": cycle + startup_kills,
        "sigkills_during_startup": startup_kills,
        "stopped_by_time": stopped_by_time,
        "points_acknowledged": counters.points_acked,
        "upsert_requests_acknowledged": counters.upserts_acked,
        "updates_acknowledged": counters.updates_acked,
        "deletes_acknowledged": counters.deletes_acked,
        "tmp_collection_ops_acknowledged": counters.tmp_ops_acked,
        "requests_in_flight_at_kill": counters.requests_in_flight,
        "requests_refused": counters.requests_refused,
        "http_errors": counters.http_errors,
        "http_error_samples": counters.error_samples,
        "in_flight_applied": total.in_flight_applied,
        "in_flight_not_applied": total.in_flight_not_applied,
        "live_points_at_end": live,
        "ids_checked": total.checked_ids,
        "final_check_ids": final.checked_ids,
        "final_check_seconds": round(final_seconds, 2),
        "lost_writes": total.lost_writes,
        "resurrected_deletes": total.resurrected_deletes,
        "stale_versions": total.stale_versions,
        "corrupt_points": total.corrupt,
        "unsearchable": total.unsearchable,
        "collections_failing_to_open": total.collections_failing,
        "counts_out_of_bounds": total.count_out_of_bounds,
        "tmp_collections_lost": total.tmp_lost,
        "tmp_collections_resurrected": total.tmp_resurrected,
        "failure_samples": total.samples,
        "restart_seconds": _stats(restarts),
        "restart_seconds_last_tenth": _stats(restarts_late),
        "check_seconds": _stats(checks),
        "graceful_shutdown": shutdown,
        "seconds": round(time.perf_counter() - t_start, 1),
        "seconds_split": {"serving_writes": round(alive_total, 1),
                          "killing": round(kill_total, 1),
                          "restarting": round(float(sum(restarts)), 1),
                          "checking": round(float(sum(checks)) + final_seconds, 1)},
    }


def summary(report: dict) -> str:
    """One line per figure, for a terminal."""
    keys = ("durability", "cycles", "sigkills", "points_acknowledged", "deletes_acknowledged",
            "updates_acknowledged", "requests_in_flight_at_kill", "lost_writes",
            "resurrected_deletes", "stale_versions", "corrupt_points", "unsearchable",
            "collections_failing_to_open", "counts_out_of_bounds", "http_errors", "seconds")
    lines = [f"{k}: {report[k]}" for k in keys]
    lines.append(f"restart_seconds: {json.dumps(report['restart_seconds'])}")
    return "\n".join(lines)
