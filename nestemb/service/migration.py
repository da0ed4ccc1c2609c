"""A served collection that changes model while it serves (a *migration*).

A migration is a state of an embedded collection, durable in the store: the collection's config
holds its record (``config["migration"]``) and the new model's vectors are stored beside the old
ones as the collection ``<name>#new`` (:func:`~nestemb.service.store.shadow_name`), never over
them. Every stored vector says how it was made (``origin``: by a model, or by a map). Phases:

1. ``sampling`` (the new model is one of the server's encoders: the worker re-encodes
   ``sample_size`` stored texts) or ``collecting`` (the client posts new-model vectors,
   ``PUT .../migration/vectors``, until ``sample_size`` points have one). The sample's new
   vectors are stored as true ones at once.
2. *Fit and gate*: the gallery-side map (old -> new) and the reverse one are fitted on the
   sample (:func:`nestemb.maps.fit_adapter` with a holdout share; ``kind="auto"``: orthogonal,
   affine and per-cluster Procrustes, the best held-out neighbour agreement@10 wins), and the
   forward map must pass :func:`nestemb.maps.gate.check_quality` (``min_quality``, unless
   ``force``); a refused map ends the migration in ``failed`` (cancel it). Both maps are saved
   under ``<data>/migrations/<name>/`` before the phase advances.
3. ``mapping``: every stored vector without a new one is mapped (one matrix product per chunk)
   and stored in the new space, marked mapped. From here on, queries from the new model are
   answered from the new space, each answer carrying the migration's state and quality.
4. ``backfilling``: the worker re-encodes stored texts (``text_field`` of the payloads) with the
   new model and replaces mapped vectors with true ones, most-retrieved points first, throttled
   so that the search p99 of the last seconds stays under ``max_p99_ms`` (default: 3x the p99
   measured when the migration started); with client vectors, the client posts them (in the
   order :meth:`Migration.queue` gives). It is *complete* when no mapped vector is left.
   As it goes, a probe measures how well the map did: top-10 agreement, over the backfilled
   points, of searching their mapped vectors vs their true ones (200 probe queries).
5. ``finish`` (complete, or forced) makes the new space the collection and the new model its
   model, dropping the old vectors; ``cancel`` drops the new space. Each is one SQLite
   transaction (:meth:`~nestemb.service.store.Store.finish_migration`,
   :meth:`~nestemb.service.store.Store.cancel_migration`).

While it runs, every write is stored in both spaces in one transaction: a text is encoded by
both models; a vector is stored in the space of the model its client names (``model``) and
mapped into the other (before the maps exist, an old-model vector clears the point's new one,
which the mapping phase then fills). A killed server resumes every phase where it stopped:
each step is idempotent (what it has to do is read back from the store).

Example (vectors posted by the client; a few seconds)::

    >>> import tempfile
    >>> from fastapi.testclient import TestClient
    >>> from nestemb.service import create_app
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 8)).astype("float32"); R = rng.normal(size=(8, 12))
    >>> with TestClient(create_app(tempfile.mkdtemp())) as http:
    ...     _ = http.put("/collections/c", json={"nesting": [4, 8]})
    ...     _ = http.put("/collections/c/points", json={"points": [
    ...         {"id": i, "vector": x.tolist()} for i, x in enumerate(X)]})
    ...     _ = http.put("/collections/c/migration", json={"nesting": [6, 12], "sample_size": 100})
    ...     _ = http.put("/collections/c/migration/vectors", json={"points": [
    ...         {"id": i, "vector": (X[i] @ R).tolist()} for i in range(100)]})
    ...     wait_for(lambda: http.get("/collections/c/migration").json()["state"] == "backfilling")
    ...     hit = http.post("/collections/c/search", json={"vector": (X[7] @ R).tolist(),
    ...                     "model": "new", "k": 1}).json()
    ...     hit["hits"][0]["id"], hit["migration"]["space"]
    (7, 'new')
"""

from __future__ import annotations

import heapq
import json
import logging
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.service.points import SqlitePoints
from nestemb.service.store import MAPPED, MODEL, Store

log = logging.getLogger("nestemb.service")

__all__ = ["Conflict", "Migration", "MIGRATIONS", "wait_for"]

MIGRATIONS = "migrations"
"""Folder (in the data folder) of the migrations' fitted maps."""
HOLDOUT = 0.2
"""Share of the sample held out to estimate the maps' quality (the gate reads it)."""
MAP_CHUNK = 4096
PROBE_QUERIES = 200
PROBE_GALLERY = 20_000
PROBE_EVERY = 10.0
"""Seconds between two probe measurements of the map's quality during the backfill."""
P99_FACTOR = 3.0
"""Default search p99 bound of the backfill: this times the p99 measured when it started."""
MAX_BACKOFF = 2.0


class Conflict(NestembError):
    """A request that the migration's state refuses (HTTP 409); ``param`` names the field."""


def wait_for(ready: Callable[[], bool], timeout: float = 120.0, every: float = 0.05) -> None:
    """Poll ``ready()`` until it is true; a :class:`NestembError` after ``timeout`` seconds.

    Example:
        >>> wait_for(lambda: True)
    """
    end = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > end:
            raise NestembError(f"not ready after {timeout:g} s")
        time.sleep(every)


class Migration:
    """The migration of the embedded collection ``name`` (see the module docstring): its
    durable record, its two spaces (``main``: the old model's vectors, ``shadow``: the new
    model's), its maps and its background worker.

    ``save_config(config)`` makes a new record durable; ``encode_new(texts)`` embeds with the
    new model (None: the client posts vectors); ``search_p99()`` is the service's recent search
    p99 in ms (None when too few searches).
    """

    def __init__(self, name: str, store: Store, main: SqlitePoints, shadow: SqlitePoints,
                 config: dict, *, save_config: Callable[[dict], None],
                 encode_new: Callable[[list[str]], np.ndarray] | None,
                 search_p99: Callable[[], float | None]):
        self.name, self.store, self.main, self.shadow = name, store, main, shadow
        self.config = config
        self._save_config = save_config
        self.encode_new, self.search_p99 = encode_new, search_p99
        self.forward: Any = None
        self.reverse: Any = None
        self.mapped: set = set(store.mapped_ids(shadow.name))
        self.hits: Counter = Counter()
        self.probe: dict[str, Any] | None = None
        self.rate = 0.0  # points per second of the backfill (moving average)
        self.throttled = 0.0  # seconds the backfill waited for the search p99
        self._queue: list = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._probe_at = 0.0
        if self.record.get("map"):
            self._load_maps()

    # --------------------------------------------------------------- the record
    @property
    def record(self) -> dict:
        return self.config["migration"]

    @property
    def state(self) -> str:
        return self.record["state"]

    def _update(self, **changes: Any) -> None:
        """Make changes to the record durable (a new config dict: readers never see a half
        update)."""
        cfg = {**self.config, "migration": {**self.record, **changes}}
        self._save_config(cfg)
        self.config = cfg

    def maps_dir(self) -> Path:
        return self.store.data_dir / MIGRATIONS / self.name / str(self.record["id"])

    def _load_maps(self) -> None:
        from nestemb.maps import load_adapter

        self.forward = load_adapter(self.maps_dir() / "forward")
        self.reverse = load_adapter(self.maps_dir() / "reverse")

    @property
    def client_vectors(self) -> bool:
        return self.record["target"]["encoder"] is None

    def space_of(self, model: str | None, param: str = "model") -> str:
        """``"old"`` or ``"new"``: the space of a request naming ``model`` (None: the old one;
        else ``"old"``/``"new"``, an encoder name or a model id of either side)."""
        if model is None:
            return "old"
        for side, ref in (("old", self.record["source"]), ("new", self.record["target"])):
            if model == side or model in (ref.get("encoder"), ref.get("model_id")):
                return side
        raise NestembError(f"{{param}} {model!r} is neither the collection's model "
                           f"({_describe(self.record['source'])}) nor the one it migrates to "
                           f"({_describe(self.record['target'])}): give 'old' or 'new'",
                           param=param)

    def points_of(self, space: str) -> SqlitePoints:
        return self.main if space == "old" else self.shadow

    def searchable(self, space: str) -> None:
        """Refuse a search of the new space before every point has a vector there."""
        if space == "new" and self.state not in ("backfilling",):
            raise Conflict(f"the migration of {self.name!r} is {self.state}: queries from the "
                           "new model are answered once every stored vector is mapped (ask "
                           "with model 'old' meanwhile)", param="model")

    def answer(self, space: str, hits: Sequence[Sequence[dict]]) -> dict[str, Any]:
        """What a search answer says about the migration; counts the hits (backfill order)."""
        for row in hits:
            self.hits.update(h["id"] for h in row)
        gate = (self.record.get("map") or {}).get("forward_quality")
        return {"state": self.state, "space": space, "backfilled": self.fraction(),
                "map_agreement": gate, "probe_agreement": (self.probe or {}).get("agreement")}

    def fraction(self) -> float:
        """The share of the stored points whose new-model vector is a true one."""
        return round((len(self.shadow) - len(self.mapped)) / max(len(self.main), 1), 4)

    def status(self) -> dict[str, Any]:
        """The record with live progress: counts, rate, estimate, measured quality."""
        r = self.record
        n, mapped = len(self.main), len(self.mapped)
        true = len(self.shadow) - mapped
        left = mapped if self.state == "backfilling" else max(n - true, 0)
        without = (self._without_text() if self.state == "backfilling" and not
                   self.client_vectors else None)
        p99 = self.search_p99()
        return {"state": r["state"], "paused": r["paused"], "error": r.get("error"),
                "complete": self.complete(), "source": r["source"], "target": r["target"],
                "mode": "client" if self.client_vectors else "encoder",
                "count": n, "new_vectors": len(self.shadow), "true": true, "mapped": mapped,
                "backfilled": self.fraction(), "without_text": without,
                "rate_per_s": round(self.rate, 2),
                "eta_s": round(left / self.rate, 1) if self.rate > 0 and left else None,
                "sample_size": r["sample_size"], "map": r.get("map"), "probe": self.probe,
                "search_p99_ms": None if p99 is None else round(p99, 3),
                "max_p99_ms": self.p99_bound(), "throttled_s": round(self.throttled, 2),
                "started": r["started"]}

    def complete(self) -> bool:
        return self.state == "backfilling" and not self.mapped

    def p99_bound(self) -> float | None:
        r = self.record
        if r.get("max_p99_ms") is not None:
            return float(r["max_p99_ms"])
        base = r.get("baseline_p99_ms")
        return None if base is None else P99_FACTOR * float(base)

    def _text(self, pid: Any) -> str | None:
        pay = self.main.live.payload_of(pid)
        t = None if pay is None else pay.get(self.record["text_field"])
        return t if isinstance(t, str) and t.strip() else None

    def _without_text(self) -> int:
        return sum(1 for pid in list(self.mapped) if self._text(pid) is None)

    # --------------------------------------------------------------- control
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"nestemb-migrate-{self.name}",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    def pause(self, paused: bool) -> None:
        self._update(paused=bool(paused))
        self._wake.set()

    # --------------------------------------------------------------- writes
    def upsert(self, ids: Sequence[Any], vectors: Sequence[np.ndarray], spaces: Sequence[str],
               payloads: Sequence[dict], new_from_text: np.ndarray | None = None,
               text_rows: Sequence[int] = ()) -> None:
        """Store points in both spaces in one transaction: row ``i`` of ``vectors`` is in
        space ``spaces[i]`` (its width: that space's), mapped into the other one; rows
        ``text_rows`` were embedded from text by both models (``new_from_text``, in order).
        Call with the collection's write lock held."""
        forward, reverse = self.forward, self.reverse
        n_old, n_new = self.main.dim, self.shadow.dim
        X_old = np.zeros((len(ids), n_old), np.float32)
        X_new = np.zeros((len(ids), n_new), np.float32)
        o_old, o_new = [MODEL] * len(ids), [MAPPED] * len(ids)
        have_new = np.zeros(len(ids), bool)
        for i, (v, s) in enumerate(zip(vectors, spaces)):
            if s == "old":
                X_old[i] = v[:n_old]
            else:
                X_new[i], o_new[i], have_new[i] = v[:n_new], MODEL, True
        rows_new = [i for i, s in enumerate(spaces) if s == "new"]
        if rows_new:
            if reverse is None:
                raise Conflict(f"the migration of {self.name!r} is {self.state}: its maps are "
                               "not fitted yet, so a new-model point has no old-model vector "
                               "(send it with model 'old', or wait)",
                               param=f"points.{rows_new[0]}.model")
            X_old[rows_new] = reverse.transform(X_new[rows_new])
            for i in rows_new:
                o_old[i] = MAPPED
        for j, i in enumerate(text_rows):
            if new_from_text is not None:
                X_new[i], o_new[i], have_new[i] = new_from_text[j], MODEL, True
        rows_map = [i for i in range(len(ids)) if not have_new[i]]
        if rows_map and forward is not None:
            X_new[rows_map] = forward.transform(X_old[rows_map])
            have_new[rows_map] = True
        keep = [i for i in range(len(ids)) if have_new[i]]
        kept = set(keep)
        clear = [ids[i] for i in range(len(ids)) if not have_new[i]
                 and self.shadow.live.payload_of(ids[i]) is not None]
        pts_old = list(zip(ids, X_old, payloads))
        pts_new = [(ids[i], X_new[i], payloads[i]) for i in keep]
        self.store.write([(self.main.name, pts_old, o_old),
                          (self.shadow.name, pts_new, [o_new[i] for i in keep])],
                         deletes=[(self.shadow.name, clear)] if clear else (),
                         require=self.main.name)
        self.main.live.upsert(list(ids), X_old, list(payloads))
        if keep:
            self.shadow.live.upsert([ids[i] for i in keep], X_new[keep],
                                    [payloads[i] for i in keep])
        if clear:
            self.shadow.live.delete(clear)
        for i in range(len(ids)):
            if i in kept and o_new[i] == MAPPED:
                self.mapped.add(ids[i])
            else:
                self.mapped.discard(ids[i])
        self._wake.set()

    def delete(self, ids: Sequence[Any]) -> int:
        """Delete points from both spaces in one transaction (write lock held)."""
        self.store.write(deletes=[(self.main.name, list(ids)), (self.shadow.name, list(ids))])
        self.shadow.live.delete(ids)
        self.mapped.difference_update(ids)
        return self.main.live.delete(ids)

    def post_vectors(self, ids: Sequence[Any], Y: np.ndarray) -> int:
        """Store new-model vectors of stored points (true ones: they replace mapped vectors),
        with the collection's write lock held; an id not stored is a :class:`NestembError`
        naming ``points.<i>.id``."""
        pays = []
        for i, pid in enumerate(ids):
            pay = self.main.live.payload_of(pid)
            if pay is None:
                raise NestembError(f"{{param}}: point {pid!r} is not stored in {self.name!r}",
                                   param=f"points.{i}.id")
            pays.append(pay)
        self._store_true(list(ids), Y, pays)
        self._wake.set()
        return len(ids)

    def _store_true(self, ids: list, Y: np.ndarray, pays: list) -> None:
        self.store.write([(self.shadow.name, list(zip(ids, Y, pays)), MODEL)],
                         require=self.shadow.name)
        self.shadow.live.upsert(ids, Y, pays)
        self.mapped.difference_update(ids)

    # --------------------------------------------------------------- finish / cancel
    def finished_config(self) -> dict:
        """The collection's config once the new model is its model."""
        t = self.record["target"]
        cfg = {k: v for k, v in self.config.items() if k != "migration"}
        cfg.update(encoder=t["encoder"], model_id=t["model_id"],
                   model_version=t["model_version"], nesting=list(t["nesting"]),
                   migrated_from={**self.record["source"], "finished": time.time()})
        return cfg

    def drop_maps(self) -> None:
        shutil.rmtree(self.store.data_dir / MIGRATIONS / self.name, ignore_errors=True)

    # --------------------------------------------------------------- the worker
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                did = False if self.record["paused"] else self._step()
            except Exception as e:  # noqa: BLE001 - recorded, the migration waits for cancel
                if self._stop.is_set():
                    return
                log.exception("migration of %s failed", self.name)
                self._update(state="failed", error=str(e))
                did = False
            if not did:
                self._wake.wait(1.0)

    def _step(self) -> bool:
        """One bounded piece of work of the current phase; False when there is none now."""
        state = self.state
        if state == "sampling":
            return self._sample()
        if state == "collecting":
            if len(self.shadow) >= min(self.record["sample_size"], len(self.main)):
                self._fit()
                return True
            return False
        if state == "mapping":
            return self._map_chunk()
        if state == "backfilling":
            last = (self.probe or {}).get("backfilled")
            if time.monotonic() - self._probe_at > PROBE_EVERY or (
                    self.complete() and last is not None and last < 1):
                self._measure_probe()
            return False if self.client_vectors else self._backfill()
        return False

    def _sample(self) -> bool:
        r = self.record
        want = min(r["sample_size"], len(self.main))
        if len(self.shadow) >= want:
            self._fit()
            return True
        have = set(self.shadow.live.ids())
        todo = [p for p in self.main.live.ids() if p not in have and self._text(p) is not None]
        if not todo:
            self._fit()
            return True
        rng = np.random.default_rng(len(have))
        pick = [todo[i] for i in rng.choice(len(todo), size=min(r["batch"], want - len(have),
                                                                 len(todo)), replace=False)]
        self._encode_and_store(pick)
        return True

    def _encode_and_store(self, pids: list) -> int:
        """Encode the texts of ``pids`` with the new model and store them as true vectors
        (skipping points deleted or rewritten meanwhile, and points that got a true vector
        meanwhile: a client's new-model vector is never replaced by an encoding started before
        it was written); returns how many were stored."""
        texts = [self._text(p) for p in pids]
        pids = [p for p, t in zip(pids, texts) if t is not None]
        texts = [t for t in texts if t is not None]
        if not pids:
            return 0
        assert self.encode_new is not None
        t = time.perf_counter()
        Y = np.asarray(self.encode_new(texts), dtype=np.float32)
        with self.main.write_lock:
            if self._stop.is_set():
                return 0
            keep = [i for i, p in enumerate(pids) if self._text(p) == texts[i] and (
                p in self.mapped or self.shadow.live.payload_of(p) is None)]
            if keep:
                self._store_true([pids[i] for i in keep], Y[keep],
                                 [self.main.live.payload_of(pids[i]) for i in keep])
        rate = len(keep) / max(time.perf_counter() - t, 1e-6)
        self.rate = rate if self.rate == 0 else 0.8 * self.rate + 0.2 * rate
        self._throttle()  # sampling and backfill alike: searches come first
        return len(keep)

    def _fit(self) -> None:
        r = self.record
        with self.main.write_lock:
            pids = [p for p in self.shadow.live.ids() if p not in self.mapped]
            X, Y = self.main.live.vectors_of(pids), self.shadow.live.vectors_of(pids)
        if not pids:
            raise NestembError("no point has a new-model vector to fit the map on")
        t = time.perf_counter()
        from nestemb.maps import fit_adapter
        from nestemb.maps.gate import check_quality

        forward = fit_adapter(X, Y, r["kind"], holdout=HOLDOUT)
        reverse = fit_adapter(Y, X, r["kind"], holdout=HOLDOUT)
        gate = check_quality(forward, r["min_quality"], force=r["force"])
        folder = self.maps_dir()
        forward.save(folder / "forward", overwrite=True)
        reverse.save(folder / "reverse", overwrite=True)
        self.forward, self.reverse = forward, reverse
        q = forward.fit_info_["quality"]["agreement"]
        rq = reverse.fit_info_["quality"]["agreement"]
        self._update(state="mapping", map={
            "kind": forward.kind, "reverse_kind": reverse.kind, "pairs": len(pids),
            "forward_quality": round(q["mean"], 4),
            "forward_interval": [round(q["low"], 4), round(q["high"], 4)],
            "reverse_quality": round(rq["mean"], 4), "gate": gate,
            "seconds": round(time.perf_counter() - t, 2)})
        log.info(json.dumps({"event": "migration_mapped", "name": self.name,
                             "map": self.record["map"]}))

    def _map_chunk(self) -> bool:
        with self.main.write_lock:
            have = self.shadow.live
            todo = [p for p in self.main.live.ids() if have.payload_of(p) is None][:MAP_CHUNK]
            if todo:
                X = self.main.live.vectors_of(todo)
                Y = self.forward.transform(X)
                pays = [self.main.live.payload_of(p) for p in todo]
                self.store.write([(self.shadow.name, list(zip(todo, Y, pays)), MAPPED)],
                                 require=self.shadow.name)
                self.shadow.live.upsert(todo, Y, pays)
                self.mapped.update(todo)
                return True
        self._update(state="backfilling")
        self._measure_probe()
        return True

    def queue(self, limit: int) -> list:
        """The next ``limit`` points to backfill: mapped ones, most retrieved first."""
        hits = self.hits
        return heapq.nlargest(limit, list(self.mapped), key=lambda p: hits.get(p, 0))

    def _backfill(self) -> bool:
        r = self.record
        if not self._queue:
            self._queue = [p for p in self.queue(len(self.mapped)) if self._text(p) is not None]
            self._queue.reverse()  # popped from the end
        batch = []
        while self._queue and len(batch) < r["batch"]:
            p = self._queue.pop()
            if p in self.mapped:
                batch.append(p)
        if not batch:
            return False
        self._encode_and_store(batch)
        return True

    def _throttle(self) -> None:
        """Wait while the recent search p99 is over the bound (doubling waits)."""
        bound, wait = self.p99_bound(), 0.05
        while bound is not None and not self._stop.is_set():
            p99 = self.search_p99()
            if p99 is None or p99 <= bound:
                return
            time.sleep(wait)
            self.throttled += wait
            wait = min(2 * wait, MAX_BACKOFF)

    def _measure_probe(self) -> None:
        """Top-10 agreement, over (up to :data:`PROBE_GALLERY`) backfilled points, of their
        mapped vectors vs their true ones, for :data:`PROBE_QUERIES` of their true vectors."""
        from nestemb.exact import exact_search

        self._probe_at = time.monotonic()
        if self.forward is None:
            return
        with self.main.write_lock:
            true = [p for p in self.shadow.live.ids() if p not in self.mapped]
            rng = np.random.default_rng(0)
            if len(true) > PROBE_GALLERY:
                true = [true[i] for i in rng.choice(len(true), PROBE_GALLERY, replace=False)]
            if len(true) <= 10:
                return
            Y = self.shadow.live.vectors_of(true)
            X = self.main.live.vectors_of(true)
        M = self.forward.transform(X)
        from nestemb.nesting import prefix_view

        Y, M = prefix_view(Y, Y.shape[1]), prefix_view(M, M.shape[1])
        q = rng.choice(len(true), size=min(PROBE_QUERIES, len(true)), replace=False)
        _, a = exact_search(Y, Y[q], 11)
        _, b = exact_search(M, Y[q], 11)
        agree = [len((set(x) - {i}) & (set(y) - {i})) / 10 for i, x, y in
                 zip(q.tolist(), a.tolist(), b.tolist())]
        self.probe = {"agreement": round(float(np.mean(agree)), 4), "gallery": len(true),
                      "queries": len(q), "backfilled": self.fraction(), "at": time.time()}


def _describe(ref: dict) -> str:
    return ref.get("encoder") or ref.get("model_id") or f"{ref['nesting'][-1]}-dim vectors"
