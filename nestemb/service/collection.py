"""A served collection in memory: its points in a :class:`~nestemb.index.FunnelIndex`.

The index holds the vectors (stored once, normalized) and the first stage: an exact scan of the
shortest nesting prefix while the collection is small, an HNSW graph on a prefix of at least 32
dims from :data:`HNSW_MIN` points on (sublinear: a search at 1M points costs about what one at
10k does). A request's budget is a :class:`~nestemb.index.plan.Plan` (stage dims and shortlists,
validated in one place, :meth:`Plan.check`), run by
:meth:`~nestemb.index.FunnelIndex.search_plan`; a recall target is answered with the cheapest
plan whose measured recall@10 reaches it, measured by :func:`nestemb.index.tune.tune` against
the one exact search (:func:`nestemb.exact.exact_search`) and re-run in the background as the
collection grows. An upsert is a delete and an add (a payload-only change touches no vector);
payload filters are postings of scalar payload values, searched exactly over the subset.

Restart: :meth:`LiveCollection.snapshot` writes the index and the point ids and payloads
atomically (:mod:`nestemb.io`) with the store's write sequence; :meth:`LiveCollection.restore`
reads the snapshot and replays from SQLite only what is newer. SQLite stays the source of
truth: a missing, damaged or foreign snapshot means a rebuild from it, never an error.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.index.funnel import FunnelIndex
from nestemb.index.plan import DEFAULT_SHORTLIST, Plan, first_stage_prefixes
from nestemb.index.tune import check_width_table, search_structure
from nestemb.index.tune import tune as tune_index
from nestemb.index.tune import tune_widths as tune_index_widths
from nestemb.nesting import prefix_view

log = logging.getLogger("nestemb.service")

__all__ = ["DEFAULT_SHORTLIST", "HNSW_MIN", "LiveCollection", "Plan", "Tuning", "value_key"]

HNSW_MIN = 50_000
"""Points from which a collection's first stage is an HNSW graph (built once, on a prefix of at
least 32 dims) instead of an exact scan of its shortest prefix."""
TUNE_QUERIES = 200
TUNE_K = 10
TUNE_CHUNK = 25
"""Exact searches of the tuning truth run this many queries at a time under the lock, so reads
and writes interleave with tuning."""
SNAPSHOT_NAME = "points.json"


@dataclass
class Tuning:
    """Measured recall@10 of candidate plans (cheapest first) at ``count`` points."""

    count: int
    configs: list[dict] = field(default_factory=list)
    seconds: float = 0.0


class LiveCollection:
    """Points of one collection (ids, vectors, payloads) and their search.

    Thread safety: every method takes the collection's lock.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> c = LiveCollection("demo", nesting=(4, 16))
        >>> X = rng.normal(size=(100, 16)).astype("float32")
        >>> c.upsert(list(range(100)), X, [{"even": i % 2 == 0} for i in range(100)])
        >>> hits, timing = c.search(X[:1], k=3, plan=Plan((4, 16), (50,)))
        >>> hits[0][0]["id"], len(timing)
        (0, 2)
    """

    def __init__(self, name: str, nesting: Sequence[int]):
        self.name = name
        self.nesting = tuple(int(d) for d in nesting)
        self.dim = self.nesting[-1]
        self._lock = threading.RLock()
        self.write_lock = threading.Lock()
        """Held by the service around a write's SQLite commit and in-memory update (and a
        drop), so concurrent writes of one id leave the same winner on disk and in memory."""
        self.store: Any = None
        """The service's :class:`~nestemb.service.store.Store` once :meth:`attach` ed."""
        self._clear()

    def _clear(self) -> None:
        """Forget every point (the locks and the store stay)."""
        self.index: FunnelIndex | None = None
        self._iid: dict[Any, int] = {}  # point id -> index id
        self._pids: list[Any] = []  # index id -> point id (None once replaced or deleted)
        self._payloads: list[dict | None] = []  # index id -> payload (None once gone)
        self._norms: list[float | None] = []  # index id -> norm of the vector as given
        self._postings: dict[tuple, set[int]] = {}  # (field, value key) -> index ids
        self.tuning: Tuning | None = None
        self.width_plans: dict | None = None
        """The width table :meth:`tune_widths` measured (kept by snapshots)."""
        self.writes = 0
        """Writes applied since the last snapshot."""

    # ------------------------------------------------------------------- writes
    def __len__(self) -> int:
        return len(self._iid)

    def _post(self, iid: int, payload: dict, add: bool) -> None:
        """Add (or remove) ``iid`` to the postings of its payload's scalar fields."""
        for name, value in payload.items():
            key = value_key(value)
            if key is None:
                continue
            if add:
                self._postings.setdefault((name, key), set()).add(iid)
            else:
                rows = self._postings.get((name, key))
                if rows is not None:
                    rows.discard(iid)
                    if not rows:
                        del self._postings[(name, key)]

    def _new_index(self, n: int) -> FunnelIndex:
        """The index of a collection of ``n`` points: flat first stage on the shortest prefix,
        or (``n >= HNSW_MIN``) an HNSW graph on the shortest prefix of at least 32 dims."""
        D, graph = self.dim, n >= HNSW_MIN
        d0 = next(d for d in self.nesting if d >= min(32, D)) if graph else self.nesting[0]
        return FunnelIndex(dims=(d0, D) if d0 < D else (D,),
                           shortlist=(DEFAULT_SHORTLIST,) if d0 < D else (),
                           first_stage="hnsw" if graph else "flat", nesting=self.nesting)

    def _drop_iids(self, iids: list[int]) -> None:
        """Remove index ids from the index (a tombstone each) and from the maps."""
        if not iids:
            return
        if self.index is not None:
            if len(iids) >= len(self.index):
                self.index = None  # nothing left: the next add starts a new index
            else:
                self.index.delete(iids)
        for iid in iids:
            self._post(iid, self._payloads[iid], add=False)
            self._pids[iid] = self._payloads[iid] = self._norms[iid] = None

    def upsert(self, ids: Sequence[Any], X: np.ndarray, payloads: Sequence[dict]) -> None:
        """Insert or replace points (``X`` already checked: finite, ``(len(ids), dim)``): a
        replaced vector is a delete and an add; a point whose vector is unchanged keeps its
        place and only its payload changes."""
        X = np.asarray(X, dtype=np.float32)
        with self._lock:
            last = {pid: i for i, pid in enumerate(ids)}  # the last of repeated ids wins
            new, gone = [], []
            for pid, i in last.items():
                iid = self._iid.get(pid)
                if iid is not None and self._same_vector(iid, X[i]):
                    self._post(iid, self._payloads[iid], add=False)
                    self._payloads[iid] = payloads[i]
                    self._post(iid, payloads[i], add=True)
                    continue
                if iid is not None:
                    gone.append(iid)
                new.append((pid, i))
            self._drop_iids(gone)
            if new:
                rows = np.array([i for _, i in new], dtype=np.int64)
                V = X[rows]
                if self.index is None:
                    self.index = self._new_index(len(V))
                self.index.add(V, ids=np.arange(len(self._pids), len(self._pids) + len(V)))
                norms = np.linalg.norm(V.astype(np.float64), axis=1)
                for (pid, i), norm in zip(new, norms.tolist()):
                    iid = len(self._pids)
                    self._iid[pid] = iid
                    self._pids.append(pid)
                    self._payloads.append(payloads[i])
                    self._norms.append(norm)
                    self._post(iid, payloads[i], add=True)
            self._maybe_compact()
            self.writes += 1

    def _same_vector(self, iid: int, x: np.ndarray) -> bool:
        """Whether ``x`` has the stored point's norm and normalized view (what the index
        holds: nothing to re-index)."""
        row = self.index._id_map()[iid]
        return (float(np.linalg.norm(x.astype(np.float64))) == self._norms[iid]
                and bool(np.array_equal(prefix_view(x[None], self.dim)[0],
                                        self.index.vectors_[row])))

    def _vectors(self, iids: Sequence[int], rows: Sequence[int]) -> np.ndarray:
        """Vectors as given, from their stored views and norms (float64 product, float32)."""
        norms = np.array([self._norms[i] for i in iids], dtype=np.float64)
        return (np.asarray(self.index.vectors_[list(rows)], dtype=np.float64) * norms[:, None]
                ).astype(np.float32)

    def _maybe_compact(self) -> None:
        index = self.index
        if index is not None and index.n_deleted_ > len(index) + 1024:
            index.compact()

    def delete(self, ids: Sequence[Any]) -> int:
        """Drop points by id; unknown ids are ignored. Returns how many were dropped."""
        with self._lock:
            iids = []
            for pid in dict.fromkeys(ids):
                iid = self._iid.pop(pid, None)
                if iid is not None:
                    iids.append(iid)
            self._drop_iids(iids)
            self._maybe_compact()
            self.writes += 1
            return len(iids)

    def get(self, pid: Any) -> tuple[np.ndarray, dict] | None:
        """The point's vector and payload: the stored bytes from SQLite once :meth:`attach` ed
        (exactly as given), else rebuilt from the index's view and the vector's norm."""
        with self._lock:
            iid = self._iid.get(pid)
            if iid is None:
                return None
            if self.store is not None:
                return self.store.point(self.name, pid)
            return self._vectors([iid], [self.index._id_map()[iid]])[0], self._payloads[iid]

    def ids(self) -> list[Any]:
        """Every point id, in index order."""
        with self._lock:
            return list(self._iid)

    def vectors_of(self, pids: Sequence[Any]) -> np.ndarray:
        """The vectors of points ``pids`` (all present) as given, float32, in one gather
        from the index (no SQLite read).

        Example:
            >>> c = LiveCollection("demo", nesting=(2,))
            >>> c.upsert(["a", "b"], np.array([[3, 4], [0, 2]], "float32"), [{}, {}])
            >>> c.vectors_of(["b", "a"]).tolist()
            [[0.0, 2.0], [3.0, 4.0]]
        """
        with self._lock:
            if not pids:
                return np.zeros((0, self.dim), np.float32)
            iids = [self._iid[p] for p in pids]
            lookup = self.index._id_map()
            return self._vectors(iids, [lookup[i] for i in iids])

    def payload_of(self, pid: Any) -> dict | None:
        """The payload of point ``pid``, or None when it is not stored."""
        with self._lock:
            iid = self._iid.get(pid)
            return None if iid is None else self._payloads[iid]

    # ------------------------------------------------------------------- search
    def _filter_rows(self, flt: dict) -> np.ndarray:
        iids: set[int] | None = None
        for name, value in flt.items():
            key = value_key(value)
            found = self._postings.get((name, key), set()) if key is not None else set()
            iids = set(found) if iids is None else iids & found
            if not iids:
                break
        lookup = self.index._id_map()
        return np.array(sorted(lookup[i] for i in iids or ()), dtype=np.int64)

    def search(self, Q: np.ndarray, k: int, plan: Plan, flt: dict | None = None
               ) -> tuple[list[list[dict]], list[dict]]:
        """Top-``k`` hits per query row of ``Q`` under ``plan``; also per-stage timings (ms)."""
        with self._lock:
            t = time.perf_counter()
            if self.index is None:
                return [[] for _ in Q], [{"stage": "filter", "ms": _ms(t)}]
            rows = self._filter_rows(flt) if flt else None
            if rows is not None and len(rows) == 0:
                return [[] for _ in Q], [{"stage": "filter", "ms": _ms(t)}]
            scores, found, stages = self.index.search_plan(Q, k, plan.dims, plan.shortlist,
                                                           rows=rows)
            ids = self.index.ids_
            return [[{"id": self._pids[i], "score": float(sc), "payload": self._payloads[i]}
                     for sc, i in zip(srow, ids[np.maximum(rrow, 0)].tolist())
                     if np.isfinite(sc)]
                    for srow, rrow in zip(scores, found)], stages

    # ------------------------------------------------------------------- tuning
    def _grid(self) -> list[list[dict]]:
        """Plans tuning measures, in groups of growing shortlists: two stages from every
        shorter prefix (only the graph's prefix on an HNSW first stage)."""
        n, D = len(self), self.dim
        index = self.index
        prefixes = first_stage_prefixes(index, self.nesting)
        lists = [s for s in (40, 80, 160, 320, 640, 1280, 2560) if s < n]  # >= 4k
        return [[{"dims": (d0, D), "shortlist": (s,)} for s in lists] for d0 in prefixes]

    def _cost(self, dims: Sequence[int], shortlist: Sequence[int]) -> float:
        """Multiply-adds of a plan: the first stage (every point on a flat stage; about
        ``8 ef log2 n`` points on a graph) times its dims, plus each re-ranked candidate."""
        n, index = max(len(self), 2), self.index
        first = (8 * max(index.ef_search, shortlist[0]) * math.log2(n)
                 if index.first_stage == "hnsw" and dims[0] == index.dims[0] and shortlist
                 else n)
        return float(first * dims[0] + sum(s * d for s, d in zip(shortlist, dims[1:])))

    def tune(self, seed: int = 0) -> Tuning:
        """Measure recall@10 of two-stage plans (:meth:`_grid`) with
        :func:`nestemb.index.tune.tune` against the exact full-vector search, on up to
        ``TUNE_QUERIES`` stored points used as queries (each query's own point excluded): the
        mean (``recall10``) and a lower bound (``recall10_low``, mean - 2 standard errors).
        Plans are sorted by estimated cost (``cost``, multiply-adds); exact search closes the
        table. Searches run under the lock a few at a time, so the collection stays available
        while it is tuned. A first stage that the collection outgrew (flat past
        :data:`HNSW_MIN` points) is rebuilt as a graph first."""
        t0 = time.perf_counter()
        with self._lock:
            if self.index is not None and len(self) >= HNSW_MIN \
                    and self.index.first_stage == "flat":
                self._regraph()
            n = len(self)
            configs, grid = [], []
            if self.index is not None and n > TUNE_K + 1:
                live = np.flatnonzero(~self.index.deleted_)
                rng = np.random.default_rng(seed)
                qrows = np.sort(rng.choice(live, size=min(TUNE_QUERIES, n), replace=False))
                Q = np.asarray(self.index.vectors_[qrows], dtype=np.float32)
                view = _TuneView(self, Q, self.index.ids_[qrows])
                grid = self._grid()
        if grid:
            res = tune_index(view, Q, k=TUNE_K, recall=1.0, groups=grid, exhaustive=True,
                             max_queries=TUNE_QUERIES)
            for c in res["candidates"]:
                dims, sl = c["params"]["dims"], c["params"]["shortlist"]
                configs.append({"dims": list(dims), "shortlist": list(sl),
                                "recall10": round(c["recall"], 4),
                                "recall10_low": round(c["recall_low"], 4),
                                "latency_ms": round(c["latency_ms"], 4),
                                "cost": self._cost(dims, sl)})
        configs.append({"dims": [self.dim], "shortlist": [], "recall10": 1.0,
                        "recall10_low": 1.0, "latency_ms": None, "cost": float(n * self.dim)})
        configs.sort(key=lambda c: (c["cost"], -c["recall10"]))
        self.tuning = Tuning(count=n, configs=configs, seconds=round(time.perf_counter() - t0, 3))
        return self.tuning

    def _regraph(self) -> None:
        """Rebuild the index with an HNSW first stage (the collection outgrew a flat one)."""
        new = self._new_index(len(self))
        log.info("collection %s: %d points: building an HNSW first stage", self.name, len(self))
        self.index.set_params(dims=new.dims, shortlist=new.shortlist, first_stage="hnsw")

    def plan_for_recall(self, recall: float) -> Plan:
        """The cheapest tuned plan whose measured recall@10 reaches ``recall`` with margin
        (its ``recall10_low``; ``expected_recall`` is the measured mean); exact search on the
        full vectors for a target of 1, when the collection is not tuned yet, or when nothing
        cheaper qualifies."""
        tuning = self.tuning
        if tuning is not None and recall < 1:
            for c in tuning.configs:
                if c["recall10_low"] >= recall:
                    return Plan(tuple(c["dims"]), tuple(c["shortlist"]), "tuned", c["recall10"])
        return Plan((self.dim,), (), "exact", 1.0)

    def tune_widths(self, encoder: Any, texts: Sequence[str], k: int = TUNE_K,
                    **options: Any) -> dict:
        """Measure the collection's width table (:func:`nestemb.index.tune.tune_widths`): held-out
        query ``texts`` encoded by the elastic ``encoder`` at each trained width, every plan's
        recall@``k`` against what the full model finds, latency = encoding + search. Each search
        runs under the collection's lock (writes interleave); the table is kept in the index's
        collection (:attr:`width_plans`, written by the next snapshot); ``count`` records the
        points it was measured at. ``options`` go to ``tune_widths`` (``timing_queries``,
        ``repeat``, ``max_seconds``)."""
        with self._lock:
            if self.index is None:
                raise NestembError("{param}: the collection is empty: add points before "
                                   "measuring its width table", param="index")
            view = _LockedIndex(self)
        # the service checked the encoder's weights against the collection's (its indexes
        # hold no model id)
        table = tune_index_widths(view, encoder, list(texts), k, check_model=False, **options)
        with self._lock:
            if self.index is not view._index:
                raise NestembError("{param}: the collection changed while its width table "
                                   "was measured: measure it again", param="index")
            table["count"] = len(self)
            self.width_plans = table
            self.writes += 1  # a snapshot is due: it keeps the table
        return table

    def width_table(self) -> dict | None:
        """The width table :meth:`tune_widths` measured, or ``None``: never measured, or
        measured on search structures the index has changed since (a flat first stage the
        collection outgrew)."""
        with self._lock:
            table = self.width_plans
            if table is None or self.index is None \
                    or table["structure"] != search_structure(self.index):
                return None
            return table

    def default_plan(self) -> Plan:
        """The collection default: the tuned plan for recall@10 0.99."""
        plan = self.plan_for_recall(0.99)
        plan.source = "default:" + plan.source
        return plan

    # ------------------------------------------------------------------- snapshots
    def attach(self, store: Any) -> "LiveCollection":
        """Read points (:meth:`get`) and write snapshots through the service's store."""
        self.store = store
        return self

    def snapshot(self) -> Path | None:
        """Write the index, point ids and payloads under the store's snapshot folder, with
        the store's write sequence they include; atomically (the index folder first, then the
        JSON that names it), so a crash leaves the previous snapshot. None when empty."""
        from nestemb.io import write_json

        with self.write_lock, self._lock:  # no write of this collection between commit and memory
            store = self.store  # read under the lock: a memory detached meanwhile is not saved
            if store is None or self.index is None:
                return None
            seq, epoch = store.sequence(), store.epoch(self.name)
            index = self.index.copy()  # written outside the locks
            meta = {"seq": seq, "epoch": epoch, "index": f"index-{seq}",
                    "pids": list(self._pids),
                    "payloads": list(self._payloads), "norms": list(self._norms),
                    "count": len(self),
                    "tuning": None if self.tuning is None else vars(self.tuning),
                    "width_plans": self.width_plans}
            self.writes = 0
        folder = store.snapshot_dir(self.name)
        path = folder / meta["index"]
        if not path.exists():
            index.save(path)
        write_json(folder / SNAPSHOT_NAME, meta)
        store.prune(self.name, seq)
        for old in folder.glob("index-*"):
            if old.name != path.name:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def restore(self) -> str:
        """Fill an empty collection from its snapshot plus the newer writes in SQLite
        (``"snapshot"``), or from SQLite alone when there is no usable snapshot
        (``"rebuild"``, logged with the reason)."""
        store = self.store
        try:
            self._read_snapshot()
        except Exception as e:  # noqa: BLE001 - any damage: rebuild from the source of truth
            self._clear()
            if not isinstance(e, FileNotFoundError):
                log.warning("collection %s: snapshot not used (%s): rebuilding from SQLite",
                            self.name, e)
            ids, X, pays = store.load(self.name, self.dim)
            if ids:
                self.upsert(ids, X, pays)
            self.writes = len(ids)
            return "rebuild"
        return "snapshot"

    def _read_snapshot(self) -> None:
        from nestemb.index import load_index
        from nestemb.io import read_json

        store = self.store
        folder = store.snapshot_dir(self.name, create=False)
        if not (folder / SNAPSHOT_NAME).is_file():
            raise FileNotFoundError(folder / SNAPSHOT_NAME)
        meta = read_json(folder / SNAPSHOT_NAME, "collection snapshot")
        if meta["epoch"] != store.epoch(self.name):
            raise NestembError("it belongs to an earlier collection of that name")
        index = load_index(folder / meta["index"], mmap=False)
        pids, pays, norms = meta["pids"], meta["payloads"], meta["norms"]
        if not (isinstance(index, FunnelIndex) and index.dim == self.dim
                and tuple(index.manifest.nesting) == self.nesting
                and len(pids) == len(pays) == len(norms) >= len(index.ids_)):
            raise NestembError("it does not match the collection")
        self.index, self._pids, self._payloads, self._norms = index, pids, pays, norms
        for iid, (pid, pay) in enumerate(zip(pids, pays)):
            if pay is not None:
                self._iid[pid] = iid
                self._post(iid, pay, add=True)
        held = np.sort(np.fromiter(self._iid.values(), dtype=np.int64, count=len(self._iid)))
        if len(held) != meta["count"] or not np.array_equal(
                held, np.sort(index.ids_[~index.deleted_])):
            raise NestembError("its points do not match its index")
        if meta.get("tuning") is not None:  # re-tuned in the background as the size changes
            self.tuning = Tuning(**meta["tuning"])
        if meta.get("width_plans") is not None:
            check_width_table(meta["width_plans"])
            self.width_plans = meta["width_plans"]
        up_ids, X, up_pays, gone = store.changes(self.name, meta["seq"], self.dim)
        if gone:
            self.delete(gone)
        if up_ids:
            self.upsert(up_ids, X, up_pays)
        self.writes = len(gone) + len(up_ids)


class _LockedIndex:
    """The collection's index as :func:`nestemb.index.tune.tune_widths` sees it: every method
    call runs under the collection's lock (so writes interleave with a long measurement), and
    stops with an error if the collection's index was replaced meanwhile."""

    def __init__(self, live: LiveCollection):
        self._live, self._index = live, live.index

    def __len__(self) -> int:
        with self._live._lock:
            return len(self._index)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._index, name)
        if not callable(value):
            return value

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._live._lock:
                if self._live.index is not self._index:
                    raise NestembError("{param}: the collection changed while its width table "
                                       "was measured: measure it again", param="index")
                return value(*args, **kwargs)

        return locked


class _TuneView:
    """The collection's index as :func:`nestemb.index.tune.tune` sees it: a plan
    (``dims``, ``shortlist``) set by ``set_params`` is run by
    :meth:`~nestemb.index.FunnelIndex.search_plan` under the collection's lock, the index's own
    parameters untouched; each query (a stored point) has its own point excluded."""

    def __init__(self, live: LiveCollection, Q: np.ndarray, own: np.ndarray):
        self.live, self.index = live, live.index
        self.params: dict = {"dims": tuple(live.index.dims),
                             "shortlist": tuple(live.index.shortlist)}
        self._own = {q.tobytes(): int(i) for q, i in zip(Q, own)}
        self.manifest, self.dim = self.index.manifest, self.index.dim

    def __len__(self) -> int:
        return len(self.live)

    def get_params(self) -> dict:
        return dict(self.params)

    def set_params(self, **params) -> "_TuneView":
        self.params.update(params)
        return self

    def set_tuning(self, result: dict) -> "_TuneView":
        return self

    def _drop_own(self, Q: np.ndarray, k: int, search) -> tuple[np.ndarray, np.ndarray]:
        out_s, out_i = [], []
        for a in range(0, len(Q), TUNE_CHUNK):
            with self.live._lock:
                if self.live.index is not self.index:
                    raise NestembError("the collection changed while it was tuned")
                s, rows = search(Q[a:a + TUNE_CHUNK], k + 1)
                ids = self.index.ids_[np.maximum(rows, 0)]
            for q, srow, irow in zip(Q[a:a + TUNE_CHUNK], s, ids):
                keep = irow != self._own.get(q.tobytes(), -1)
                pad = max(0, k - int(keep.sum()))  # a shortlist of k that held the query
                out_s.append(np.concatenate([srow[keep][:k], np.full(pad, -np.inf, srow.dtype)]))
                out_i.append(np.concatenate([irow[keep][:k], np.full(pad, -1, irow.dtype)]))
        return np.stack(out_s), np.stack(out_i)

    def search(self, Q: np.ndarray, k: int):
        Q = np.asarray(Q, dtype=np.float32).reshape(-1, self.dim)
        return self._drop_own(Q, k, lambda q, kk: self.index.search_plan(
            q, kk, self.params["dims"], self.params["shortlist"])[:2])

    def search_exact(self, Q: np.ndarray, k: int):
        from nestemb.exact import exact_search

        exclude = lambda: self.index.deleted_ if self.index.n_deleted_ else None  # noqa: E731
        return self._drop_own(np.asarray(Q, dtype=np.float32), k, lambda q, kk: exact_search(
            self.index.vectors_, q, kk, exclude=exclude()))


def value_key(value: Any) -> tuple | None:
    """The filter-index key of a scalar JSON value (None for arrays and objects, which filters
    never match): keys are equal exactly when the values are equal as JSON sees them (``1``
    and ``1.0`` share a key; ``true`` and ``1`` do not, though Python calls them equal).

    Example:
        >>> value_key(1) == value_key(1.0), value_key(True) == value_key(1), value_key([1])
        (True, False, None)
    """
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("num", value)  # Python's int/float equality and hashing are exact
    if isinstance(value, str):
        return ("str", value)
    if value is None:
        return ("null", None)
    return None


def _ms(t: float) -> float:
    return round((time.perf_counter() - t) * 1000, 3)
