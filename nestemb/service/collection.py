"""A served collection in memory: one stored vector per point, searched as a Matryoshka funnel.

A request's budget is a list of stage dimensions (``dims``, ascending, each in the nesting):
stage 1 scans the ``dims[0]``-prefix of every live point exactly (cosine of prefix views),
keeps ``shortlist[0]`` candidates, and each later stage re-scores the survivors on a longer
prefix; the last stage returns ``k``. A recall target is answered with the cheapest budget whose
measured recall@10 (against exact search on the full vectors, on queries sampled from the
collection) reaches it (:meth:`LiveCollection.tune`, re-run in the background as the collection
grows). Vectors live in growable arrays with the norm of every nesting prefix precomputed, so a
prefix score is one matrix product and one division.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.exact import topk

DEFAULT_SHORTLIST = 200
"""Candidates kept per stage when a request gives stage dims but no shortlist (at least 4k)."""
TUNE_QUERIES = 400
TUNE_K = 10
TUNE_CHUNK = 25
"""Tuning searches this many queries at a time, so reads and writes interleave with it."""
TUNE_Z = 2.0
"""A recall target is met by a budget whose measured recall@10 minus ``TUNE_Z`` standard errors
(over the tuning queries) reaches it: the estimate from a few hundred queries is noisy, and a
budget picked on its mean alone falls short on new queries about half the time it is close."""


@dataclass
class Plan:
    """A search budget: stage dims and the candidates kept after each stage but the last."""

    dims: tuple[int, ...]
    shortlist: tuple[int, ...]
    source: str = "request"
    expected_recall: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"dims": list(self.dims), "shortlist": list(self.shortlist), "source": self.source,
                "expected_recall": self.expected_recall}


@dataclass
class Tuning:
    """Measured recall@10 of candidate budgets (cheapest first) at ``count`` points."""

    count: int
    configs: list[dict] = field(default_factory=list)
    seconds: float = 0.0


class LiveCollection:
    """Points of one collection (ids, float32 vectors, payloads) and their search.

    Thread safety: every method takes the collection's lock; numpy releases the GIL in the
    matrix products, so searches of different collections run in parallel.

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
        self._X = np.zeros((0, self.dim), dtype=np.float32)
        self._norms = np.zeros((0, len(self.nesting)), dtype=np.float32)
        self._live = np.zeros(0, dtype=bool)
        self._ids: list[Any] = []
        self._payloads: list[dict] = []
        self._row: dict[Any, int] = {}
        # payload filter index: (field, value key) -> rows holding that scalar value
        self._postings: dict[tuple, set[int]] = {}
        self._n = 0  # rows used (live or deleted)
        self.tuning: Tuning | None = None

    # ------------------------------------------------------------------- writes
    def __len__(self) -> int:
        return len(self._row)

    def _grow(self, need: int) -> None:
        cap = len(self._X)
        if need <= cap:
            return
        cap = max(need, 2 * cap, 1024)
        for name, width in (("_X", self.dim), ("_norms", len(self.nesting))):
            old = getattr(self, name)
            new = np.zeros((cap, width), dtype=np.float32)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)
        live = np.zeros(cap, dtype=bool)
        live[: self._n] = self._live[: self._n]
        self._live = live

    def _prefix_norms(self, X: np.ndarray) -> np.ndarray:
        sq = np.cumsum(X.astype(np.float64) ** 2, axis=1)
        return np.sqrt(sq[:, [d - 1 for d in self.nesting]]).astype(np.float32)

    def _post(self, row: int, payload: dict, add: bool) -> None:
        """Add (or remove) ``row`` to the postings of its payload's scalar fields."""
        for name, value in payload.items():
            key = value_key(value)
            if key is None:
                continue
            if add:
                self._postings.setdefault((name, key), set()).add(row)
            else:
                rows = self._postings.get((name, key))
                if rows is not None:
                    rows.discard(row)
                    if not rows:
                        del self._postings[(name, key)]

    def upsert(self, ids: Sequence[Any], X: np.ndarray, payloads: Sequence[dict]) -> None:
        """Insert or replace points (``X`` already checked: finite, ``(len(ids), dim)``)."""
        with self._lock:
            norms = self._prefix_norms(X)
            for i, pid in enumerate(ids):
                row = self._row.get(pid)
                if row is None:
                    self._grow(self._n + 1)
                    row = self._n
                    self._n += 1
                    self._ids.append(pid)
                    self._payloads.append(payloads[i])
                    self._row[pid] = row
                else:
                    self._post(row, self._payloads[row], add=False)
                    self._payloads[row] = payloads[i]
                self._post(row, payloads[i], add=True)
                self._X[row] = X[i]
                self._norms[row] = norms[i]
                self._live[row] = True
            if self._n > 2 * len(self._row) + 1024:
                self._compact()

    def delete(self, ids: Sequence[Any]) -> int:
        """Drop points by id; unknown ids are ignored. Returns how many were dropped."""
        with self._lock:
            gone = 0
            for pid in ids:
                row = self._row.pop(pid, None)
                if row is not None:
                    self._live[row] = False
                    self._post(row, self._payloads[row], add=False)
                    self._payloads[row] = {}
                    gone += 1
            return gone

    def _compact(self) -> None:
        keep = np.flatnonzero(self._live[: self._n])
        self._X = np.ascontiguousarray(self._X[keep])
        self._norms = np.ascontiguousarray(self._norms[keep])
        self._live = np.ones(len(keep), dtype=bool)
        self._ids = [self._ids[r] for r in keep]
        self._payloads = [self._payloads[r] for r in keep]
        self._row = {pid: r for r, pid in enumerate(self._ids)}
        self._n = len(keep)
        self._postings = {}
        for r, payload in enumerate(self._payloads):
            self._post(r, payload, add=True)

    def get(self, pid: Any) -> tuple[np.ndarray, dict] | None:
        with self._lock:
            row = self._row.get(pid)
            return None if row is None else (self._X[row].copy(), self._payloads[row])

    # ------------------------------------------------------------------- search
    def _mask(self, flt: dict | None) -> np.ndarray:
        live = self._live[: self._n].copy()
        if flt:
            rows: set[int] | None = None
            for name, value in flt.items():
                key = value_key(value)
                found = self._postings.get((name, key), set()) if key is not None else set()
                rows = set(found) if rows is None else rows & found
                if not rows:
                    break
            keep = np.zeros(self._n, dtype=bool)
            keep[np.fromiter(rows or (), dtype=np.int64)] = True
            live &= keep
        return live

    def _score(self, Q: np.ndarray, rows: np.ndarray | None, d: int) -> np.ndarray:
        """Cosine of the ``d``-prefix views: all rows ``(m, n)`` or per-query rows ``(m, c)``."""
        j = self.nesting.index(d)
        # the query's prefix is normalized in float64: any finite float32 query works (its
        # squares would overflow or underflow in float32)
        q64 = Q[:, :d].astype(np.float64)
        q = (q64 / np.maximum(np.linalg.norm(q64, axis=1, keepdims=True), 1e-300)
             ).astype(np.float32)
        tiny = np.finfo(np.float32).tiny
        if rows is None:
            s = q @ self._X[: self._n, :d].T
            return s / np.maximum(self._norms[: self._n, j], tiny)[None, :]
        cand = self._X[rows, :d]  # (m, c, d)
        s = np.einsum("mcd,md->mc", cand, q)
        return s / np.maximum(self._norms[rows, j], tiny)

    def search(self, Q: np.ndarray, k: int, plan: Plan, flt: dict | None = None
               ) -> tuple[list[list[dict]], list[dict]]:
        """Top-``k`` hits per query row of ``Q`` under ``plan``; also per-stage timings (ms)."""
        with self._lock:
            timing = []
            t = time.perf_counter()
            mask = self._mask(flt)
            n_live = int(mask.sum())
            if n_live == 0:
                return [[] for _ in Q], [{"stage": "filter", "ms": _ms(t)}]
            # a stage keeps at most the candidates it is cut from (the live, filtered points)
            keeps = [min(s, n_live) for s in plan.shortlist] + [min(k, n_live)]
            s = self._score(Q, None, plan.dims[0])
            s[:, ~mask] = -np.inf
            scores, rows = topk(s, keeps[0])
            timing.append({"stage": 1, "dims": plan.dims[0], "candidates": n_live,
                           "kept": keeps[0], "ms": _ms(t)})
            for i, (d, keep) in enumerate(zip(plan.dims[1:], keeps[1:]), start=2):
                t = time.perf_counter()
                s = self._score(Q, rows, d)
                s = np.where(np.isfinite(scores), s, -np.inf)  # rows beyond the live count
                scores, pos = topk(s, keep)
                rows = np.take_along_axis(rows, pos, axis=1)
                timing.append({"stage": i, "dims": d, "candidates": int(s.shape[1]),
                               "kept": keep, "ms": _ms(t)})
            hits = [[{"id": self._ids[r], "score": float(sc), "payload": self._payloads[r]}
                     for sc, r in zip(srow, rrow) if np.isfinite(sc)]
                    for srow, rrow in zip(scores, rows)]
            return hits, timing

    # ------------------------------------------------------------------- tuning
    def tune(self, seed: int = 0) -> Tuning:
        """Measure recall@10 of two-stage budgets (every shorter nesting prefix x shortlists
        40 ... 2,560) against exact full-vector search, on up to ``TUNE_QUERIES`` stored points
        used as queries (each query's own point excluded): the mean (``recall10``) and a lower
        bound (``recall10_low``, mean - ``TUNE_Z`` standard errors). Budgets are sorted by
        estimated cost (``n * dims[0] + shortlist * dim`` multiply-adds). The searches run
        ``TUNE_CHUNK`` queries at a time, each under the lock, so the collection stays
        available while it is tuned."""
        t0 = time.perf_counter()
        with self._lock:
            live = np.flatnonzero(self._live[: self._n])
            n = len(live)
            rng = np.random.default_rng(seed)
            qrows = rng.choice(live, size=min(TUNE_QUERIES, n), replace=False)
            Q = self._X[qrows].copy()
            ids = [self._ids[r] for r in qrows]
        k = TUNE_K
        configs = []
        if n > k + 1:
            truth = [set(t) for t in self._others(Q, ids, k, Plan((self.dim,), ()))]
            for d0 in self.nesting[:-1]:
                for sl in (40, 80, 160, 320, 640, 1280, 2560):
                    if sl >= n:
                        break
                    plan = Plan((d0, self.dim), (sl,))
                    got = self._others(Q, ids, k, plan)
                    per_q = np.array([len(tr.intersection(g)) / max(len(tr), 1)
                                      for g, tr in zip(got, truth)])
                    mean = float(per_q.mean())
                    se = float(per_q.std(ddof=1) / np.sqrt(len(per_q))) if len(per_q) > 1 else 1.0
                    configs.append({"dims": [d0, self.dim], "shortlist": [sl],
                                    "recall10": round(mean, 4),
                                    "recall10_low": round(max(0.0, mean - TUNE_Z * se), 4),
                                    "cost": n * d0 + sl * self.dim})
        configs.append({"dims": [self.dim], "shortlist": [], "recall10": 1.0,
                        "recall10_low": 1.0, "cost": n * self.dim})
        configs.sort(key=lambda c: (c["cost"], -c["recall10"]))
        self.tuning = Tuning(count=n, configs=configs, seconds=round(time.perf_counter() - t0, 3))
        return self.tuning

    def _others(self, Q: np.ndarray, ids: list, k: int, plan: Plan) -> list[list]:
        """Per query (a stored point), the ids of its top ``k`` other points under ``plan``,
        searched ``TUNE_CHUNK`` queries at a time."""
        out: list[list] = []
        for a in range(0, len(Q), TUNE_CHUNK):
            hits, _ = self.search(Q[a: a + TUNE_CHUNK], k + 1, plan)
            out.extend([h["id"] for h in hs if h["id"] != me][:k]
                       for hs, me in zip(hits, ids[a: a + TUNE_CHUNK]))
        return out

    def plan_for_recall(self, recall: float) -> Plan:
        """The cheapest tuned budget whose measured recall@10 reaches ``recall`` with margin
        (its ``recall10_low``; ``expected_recall`` is the measured mean); exact search on the
        full vectors for a target of 1, when the collection is not tuned yet, or when nothing
        cheaper qualifies."""
        tuning = self.tuning
        if tuning is not None and recall < 1:
            for c in tuning.configs:
                if c.get("recall10_low", c["recall10"]) >= recall:
                    return Plan(tuple(c["dims"]), tuple(c["shortlist"]), "tuned", c["recall10"])
        return Plan((self.dim,), (), "exact", 1.0)

    def default_plan(self) -> Plan:
        """The collection default: the tuned budget for recall@10 0.99."""
        plan = self.plan_for_recall(0.99)
        plan.source = "default:" + plan.source
        return plan


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


def check_plan(dims: Sequence[int], shortlist: Sequence[int] | None, nesting: Sequence[int],
               k: int) -> Plan:
    """A request's stage dims (and optional shortlist) as a :class:`Plan`, or a
    :class:`NestembError` naming the problem; its ``param`` is the request field at fault
    (``dims`` or ``shortlist``), which the service renders as the JSON field's path.

    Example:
        >>> check_plan([16, 64], None, (8, 16, 32, 64), 10).shortlist
        (200,)
        >>> check_plan([12], None, (8, 16), 10)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: dims: 12 is not in the collection's nesting [8, 16]
        >>> try:
        ...     check_plan([8, 16], [5], (8, 16), 10)
        ... except NestembError as e:
        ...     print(e.param, "|", e.render("searches.0.shortlist"))
        shortlist | searches.0.shortlist: every size must be >= k=10, got [5]
    """
    dims = tuple(int(d) for d in dims)
    if not dims:
        raise NestembError("{param}: give at least one stage dimension", param="dims")
    for d in dims:
        if d not in nesting:
            raise NestembError(f"{{param}}: {d} is not in the collection's nesting {list(nesting)}",
                              param="dims")
    if any(a >= b for a, b in zip(dims, dims[1:])):
        raise NestembError(f"{{param}}: stage dims must be strictly ascending, got {list(dims)}",
                          param="dims")
    if shortlist is None:
        shortlist = [max(DEFAULT_SHORTLIST, 4 * k)] * (len(dims) - 1)
    shortlist = tuple(int(s) for s in shortlist)
    if len(shortlist) != len(dims) - 1:
        raise NestembError(f"{{param}}: give one size per stage but the last "
                           f"({len(dims) - 1} for dims {list(dims)}), got {len(shortlist)}",
                           param="shortlist")
    if any(s < k for s in shortlist):
        raise NestembError(f"{{param}}: every size must be >= k={k}, got {list(shortlist)}",
                           param="shortlist")
    if any(a < b for a, b in zip(shortlist, shortlist[1:])):
        raise NestembError(f"{{param}}: sizes must be non-increasing, got {list(shortlist)}",
                           param="shortlist")
    return Plan(dims, shortlist)
