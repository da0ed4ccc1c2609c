"""Where a collection's points live: the storage protocol of the service.

The HTTP handlers talk to one :class:`PointStore` per collection. Two implementations:

* :class:`SqlitePoints` (the default, ``nestemb serve --engine sqlite``): points committed to
  the service's SQLite database (:class:`~nestemb.service.store.Store`) and searched in memory
  by a :class:`~nestemb.service.collection.LiveCollection` (funnel plans, recall targets,
  background tuning, payload filters);
* :class:`EnginePoints` (``--engine`` one of :data:`nestemb.engines.ENGINES`): a collection
  of a vector database (:class:`nestemb.engines.Collection`, opened through the engine registry,
  laid out as an export: one named vector / field per nesting prefix, each the
  :func:`~nestemb.nesting.prefix_view`), searched with the engine's funnel compiled from the
  request's stage dims and shortlist. The search is exact in every stage (Qdrant: ``exact`` first stage, no
  quantization; Milvus: ``FLAT`` indexes), so a plan returns the same top-k as the SQLite
  service on the same points.

What a backend does not offer answers 422 naming the option: recall targets (``recall``: the
embedded store measures them by tuning in memory; give ``dims`` and ``shortlist``) and payload
``filter``. Without ``dims``, a backend collection is searched with its stored default stages
(exact on the full vector for a collection the service created). ``GET`` of a point returns
the vector as the engine stores it: its full-dimension view, L2-normalized.

Collection metadata: the service's collection registry (name, nesting, encoder, model) stays in
its data folder; the engine's collection carries the nestemb collection manifest (model id and
version, nesting, stored prefixes). They are compared when the service starts and when a
collection is created over an existing engine collection; a mismatch names both values.

Example:
    >>> import tempfile, numpy as np
    >>> from nestemb.service.collection import Plan
    >>> backend = open_backend("qdrant", ":memory:")
    >>> pts = backend.create("docs", {"nesting": [2, 4], "model_id": None,
    ...                               "model_version": None})
    >>> pts.upsert([1, "a"], np.array([[1, 0, 0, 0], [0, 1, 0, 0]], "float32"), [{}, {"x": 1}])
    >>> hits, _ = pts.search(np.array([[0, 1, 0, 0]], "float32"), 1, Plan((2, 4), (2,)))
    >>> hits[0][0]["id"], hits[0][0]["payload"], len(pts)
    ('a', {'x': 1}, 2)
    >>> backend.close()
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol, Sequence

import numpy as np

from nestemb.engines import ENGINES, Collection, Engine, Mismatch, Unsupported, open_engine
from nestemb.index.plan import Plan
from nestemb.service.collection import LiveCollection
from nestemb.service.store import Store

BACKENDS = ("sqlite", *ENGINES)
"""Values of ``nestemb serve --engine``: the embedded store, then the engine registry."""


class PointStore(Protocol):
    """One collection's points, durable and searchable: what the HTTP handlers call.

    A write returns once it is durable (committed to SQLite, or acknowledged by the engine
    with ``wait``/flush), and is visible to the next search.
    """

    name: str
    nesting: tuple[int, ...]
    dim: int
    write_lock: threading.Lock
    kind: str
    """``"sqlite"`` or the backend's name (shown in the collection's info)."""

    def __len__(self) -> int: ...

    def upsert(self, ids: Sequence[Any], X: np.ndarray, payloads: Sequence[dict]) -> None: ...

    def delete(self, ids: Sequence[Any]) -> int: ...

    def get(self, pid: Any) -> tuple[np.ndarray, dict] | None: ...

    def search(self, Q: np.ndarray, k: int, plan: Plan, flt: dict | None = None
               ) -> tuple[list[list[dict]], list[dict]]: ...

    def plan_for_recall(self, recall: float) -> Plan: ...

    def default_plan(self) -> Plan: ...

    def tune_widths(self, encoder: Any, texts: Sequence[str], **options: Any) -> dict: ...

    def width_table(self) -> dict | None: ...

    def index_info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- SQLite
class SqlitePoints:
    """The embedded store: SQLite commit first, then the in-memory :class:`LiveCollection`.

    Example:
        >>> import tempfile
        >>> store = Store(tempfile.mkdtemp()); store.create_collection("c", {"nesting": [2]})
        >>> pts = SqlitePoints(store, "c", (2,))
        >>> pts.upsert([7], np.ones((1, 2), "float32"), [{}]); len(pts), pts.kind
        (1, 'sqlite')
    """

    kind = "sqlite"
    tunable = True

    def __init__(self, store: Store, name: str, nesting: Sequence[int], load: bool = False,
                 live: LiveCollection | None = None):
        self.store, self.name = store, name
        self.live = live if live is not None else LiveCollection(name, nesting)
        self.nesting, self.dim = self.live.nesting, self.live.dim
        self.write_lock = self.live.write_lock
        if load:
            ids, X, pays = store.load(name, self.dim)  # checks every vector's length
            if ids:
                self.live.upsert(ids, X, pays)

    @property
    def tuning(self):
        return self.live.tuning

    def tune(self):
        return self.live.tune()

    def __len__(self) -> int:
        return len(self.live)

    def upsert(self, ids: Sequence[Any], X: np.ndarray, payloads: Sequence[dict]) -> None:
        self.store.upsert(self.name, list(zip(ids, X, payloads)))  # durable first
        self.live.upsert(ids, X, payloads)

    def delete(self, ids: Sequence[Any]) -> int:
        self.store.delete(self.name, list(ids))
        return self.live.delete(ids)

    def get(self, pid: Any) -> tuple[np.ndarray, dict] | None:
        return self.live.get(pid)

    def search(self, Q, k, plan, flt=None):
        return self.live.search(Q, k, plan, flt)

    def plan_for_recall(self, recall: float) -> Plan:
        return self.live.plan_for_recall(recall)

    def default_plan(self) -> Plan:
        return self.live.default_plan()

    def tune_widths(self, encoder: Any, texts: Sequence[str], **options: Any) -> dict:
        return self.live.tune_widths(encoder, texts, **options)

    def width_table(self) -> dict | None:
        return self.live.width_table()

    def index_info(self) -> dict[str, Any]:
        t = self.live.tuning
        return {"kind": "funnel: exact scan of the first stage prefix, re-rank on longer "
                        "prefixes", "backend": "sqlite",
                "default_plan": self.default_plan().as_dict(),
                "tuning": None if t is None else {"count": t.count, "seconds": t.seconds,
                                                  "configs": t.configs},
                "width_table": self.live.width_table()}

    def close(self) -> None:
        """The store is closed by the service."""


# ----------------------------------------------------------------------------- engines
class EnginePoints:
    """One collection in a vector database (see the module docstring): the engine's
    :class:`~nestemb.engines.Collection`, its calls serialized by a lock, searched exactly in
    every stage with the request's plan.
    """

    tunable = False
    tuning = None

    def __init__(self, engine: Engine, name: str, collection: Collection):
        self.engine, self.name, self.kind = engine, name, engine.kind
        self.col, self.where = collection, collection.where
        self.write_lock = threading.Lock()
        self._lock = threading.RLock()
        self._funnels: dict[tuple, Any] = {}
        man = collection.manifest_
        self.nesting, self.dim = tuple(man.nesting), int(man.dim)

    def __len__(self) -> int:
        with self._lock:
            return self.col.count()

    def upsert(self, ids: Sequence[Any], X: np.ndarray, payloads: Sequence[dict]) -> None:
        with self._lock:
            self.col.upsert(ids, X, payloads)

    def delete(self, ids: Sequence[Any]) -> int:
        with self._lock:
            return self.col.delete(ids)

    def get(self, pid: Any) -> tuple[np.ndarray, dict] | None:
        with self._lock:
            return self.col.get(pid)

    def plan_for_recall(self, recall: float) -> Plan:
        raise Unsupported("recall", f"recall targets are not supported on the {self.kind} "
                          "backend (they need the embedded store's tuning): give dims and "
                          "shortlist instead")

    def tune_widths(self, encoder: Any, texts: Sequence[str], **options: Any) -> dict:
        raise Unsupported("queries", f"width tables are not measured on the {self.kind} backend "
                          "(they need the embedded store's plans): name width and dims instead")

    def width_table(self) -> dict | None:
        return None

    def default_plan(self) -> Plan:
        extra = self.col.extra
        return Plan(tuple(extra["dims"]), tuple(extra["shortlist"]), "default:collection",
                    1.0 if len(extra["dims"]) == 1 else None)

    def index_info(self) -> dict[str, Any]:
        return {"kind": f"funnel in {self.kind}: exact first stage on a stored prefix, re-rank "
                        "on longer stored prefixes (dims + shortlist plans only)",
                "backend": self.kind, "url": self.engine.url,
                "stored_dims": list(self.col.stored),
                "default_plan": self.default_plan().as_dict(), "tuning": None,
                "width_table": None}

    def search(self, Q: np.ndarray, k: int, plan: Plan, flt: dict | None = None
               ) -> tuple[list[list[dict]], list[dict]]:
        if flt:
            raise Unsupported("filter", f"payload filters are not supported on the {self.kind} "
                              "backend")
        missing = [d for d in plan.dims if d not in self.col.stored]
        if missing:
            raise Unsupported("dims", f"{missing} are not stored in {self.where} (stored "
                              f"prefixes: {list(self.col.stored)})")
        t = time.perf_counter()
        with self._lock:
            n = self.col.count()
            if n == 0:
                return [[] for _ in Q], [{"stage": "backend", "ms": _ms(t)}]
            key = (plan.dims, plan.shortlist)
            if key not in self._funnels:
                self._funnels[key] = self.col.funnel(plan.dims, plan.shortlist,
                                                     **self.col.exact_search)
            kk = min(int(k), n)
            rows = self._funnels[key].search_hits(Q, kk, count=n)
            pays = self.col.payloads([i for row in rows for i, _ in row])
        pays.reverse()
        hits = [[{"id": i, "score": float(s), "payload": pays.pop()} for i, s in row]
                for row in rows]
        keeps = [min(s, n) for s in plan.shortlist] + [kk]
        timing = [{"stage": "backend", "engine": self.kind, "dims": list(plan.dims),
                   "kept": keeps, "candidates": n, "ms": _ms(t)}]
        return hits, timing

    def close(self) -> None:
        self._funnels.clear()
        self.col.close()


def _ms(t: float) -> float:
    return round((time.perf_counter() - t) * 1000, 3)


class Backend:
    """The engine holding the service's collections (``nestemb serve --engine``): an
    :class:`~nestemb.engines.Engine` of the registry whose collections open as
    :class:`EnginePoints` (metadata checked against the service's collection config)."""

    def __init__(self, engine: Engine):
        self.engine, self.kind, self.url = engine, engine.kind, engine.url

    def names(self) -> list[str]:
        """Collections in the engine (nestemb's or not)."""
        return self.engine.names()

    def manifest(self, name: str) -> Any:
        """The complete nestemb manifest of collection ``name`` (NestembError otherwise)."""
        return self.engine.manifest(name)

    def open(self, name: str, cfg: dict) -> EnginePoints:
        """The engine collection behind the service's collection ``name`` (it must exist and
        its manifest agree with ``cfg``)."""
        return EnginePoints(self.engine, name, self.engine.open(name, cfg))

    def create(self, name: str, cfg: dict) -> EnginePoints:
        """A new collection, or the engine's collection of that name if its manifest agrees."""
        return EnginePoints(self.engine, name, self.engine.create(name, cfg))

    def drop(self, name: str) -> None:
        self.engine.drop(name)

    def close(self) -> None:
        self.engine.close()


def open_backend(kind: str, url: str, *, api_key: str | None = None) -> Backend:
    """The :class:`Backend` over engine ``kind`` of the registry at ``url``
    (:func:`nestemb.engines.open_engine`: checked at once).

    Example:
        >>> open_backend("qdrant", "http://127.0.0.1:9")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: cannot reach Qdrant at 'http://127.0.0.1:9': ...
    """
    return Backend(open_engine(kind, url, api_key=api_key))


__all__ = ["BACKENDS", "Backend", "EnginePoints", "Mismatch", "PointStore", "SqlitePoints",
           "Unsupported", "open_backend"]
