"""Where a collection's points live: the storage protocol of the service.

The HTTP handlers talk to one :class:`PointStore` per collection. Two implementations:

* :class:`SqlitePoints` (the default, ``nestemb serve --backend sqlite``): points committed to
  the service's SQLite database (:class:`~nestemb.service.store.Store`) and searched in memory
  by a :class:`~nestemb.service.collection.LiveCollection` (funnel plans, recall targets,
  background tuning, payload filters);
* :class:`BackendPoints` (``--backend qdrant-edge|qdrant|milvus``): points written to a vector
  database collection laid out as :mod:`nestemb.backends` lays out an export (one named vector
  / field per nesting prefix, each the :func:`~nestemb.nesting.prefix_view`), searched with the
  backend's funnel (:class:`~nestemb.backends.qdrant.QdrantFunnel`,
  :class:`~nestemb.backends.milvus.MilvusFunnel`) compiled from the request's stage dims and
  shortlist. The search is exact in every stage (Qdrant: ``exact`` first stage, no
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

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.service.collection import LiveCollection, Plan
from nestemb.service.store import Store, id_key

BACKENDS = ("sqlite", "qdrant-edge", "qdrant", "milvus")
"""Values of ``nestemb serve --backend``."""


class Unsupported(NestembError):
    """A request option the collection's storage cannot honour (answered with 422). ``field``
    (the request field at fault, e.g. ``filter`` or ``points.3.id``) is the error's
    ``param``; the service renders it as the JSON field's full path.

    Example:
        >>> e = Unsupported("filter", "payload filters are not supported on the milvus backend")
        >>> e.param, e.render("searches.1.filter")
        ('filter', 'searches.1.filter: payload filters are not supported on the milvus backend')
    """

    def __init__(self, field: str, message: str):
        super().__init__(message, param=field)

    @property
    def field(self) -> str:
        return self.param


class Mismatch(NestembError):
    """A collection's metadata disagrees with what the backend holds (answered with 409)."""


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

    def __init__(self, store: Store, name: str, nesting: Sequence[int], load: bool = False):
        self.store, self.name = store, name
        self.live = LiveCollection(name, nesting)
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

    def index_info(self) -> dict[str, Any]:
        t = self.live.tuning
        return {"kind": "funnel: exact scan of the first stage prefix, re-rank on longer "
                        "prefixes", "backend": "sqlite",
                "default_plan": self.default_plan().as_dict(),
                "tuning": None if t is None else {"count": t.count, "seconds": t.seconds,
                                                  "configs": t.configs}}

    def close(self) -> None:
        """The store is closed by the service."""


# ----------------------------------------------------------------------------- backends
def _model(cfg: dict) -> tuple[str, str]:
    """The (model id, version) a collection's manifest records for a service config."""
    return cfg.get("model_id") or "unknown", cfg.get("model_version") or "unknown"


def _collection_meta(name: str, cfg: dict, engine: str, **extra: Any) -> dict:
    """The nestemb collection manifest of a collection the service creates: every nesting
    prefix stored, default stages = exact on the full vector, ids kept as JSON values."""
    from nestemb.backends.base import ExportSource, collection_meta
    from nestemb.backends.base import COLLECTION_KIND
    from nestemb.nesting import Manifest

    nesting = tuple(int(d) for d in cfg["nesting"])
    model_id, version = _model(cfg)
    man = Manifest(model_id=model_id, nesting=nesting, dim=nesting[-1], model_version=version,
                   kind=COLLECTION_KIND)
    src = ExportSource(np.zeros((0, nesting[-1]), np.float32), np.zeros(0, np.int64), man,
                       nesting, ())
    meta = collection_meta(src, engine, id_mode="service", id_payload=True,
                           encoder=cfg.get("encoder"), **extra)
    meta["extra"]["dims"], meta["extra"]["shortlist"] = [nesting[-1]], []
    return meta


def check_meta(name: str, cfg: dict, man: Any, where: str) -> None:
    """Refuse an engine collection whose manifest disagrees with the service's collection
    config (nesting, model id, model version), naming both values.

    Example:
        >>> from nestemb.nesting import Manifest
        >>> check_meta("docs", {"nesting": [4, 8], "model_id": "m"},
        ...            Manifest("m", (2, 8), 8), "qdrant collection 'docs'")
        Traceback (most recent call last):
        ...
        nestemb.service.points.Mismatch: collection 'docs': the service has nesting [4, 8], qdrant collection 'docs' holds nesting [2, 8]
    """
    want = [int(d) for d in cfg["nesting"]]
    if list(man.nesting) != want:
        raise Mismatch(f"collection {name!r}: the service has nesting {want}, {where} holds "
                       f"nesting {list(man.nesting)}")
    mid, ver = _model(cfg)
    if (man.model_id, man.model_version) != (mid, ver):
        raise Mismatch(f"collection {name!r}: the service has model {mid!r} (version {ver!r}), "
                       f"{where} holds model {man.model_id!r} (version {man.model_version!r})")


class Backend:
    """A vector-database engine holding the service's collections (see :func:`open_backend`);
    subclasses implement the engine calls."""

    kind: str
    url: str

    def names(self) -> list[str]:
        """Collections in the engine (nestemb's or not)."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def _create(self, name: str, meta: dict, nesting: tuple[int, ...]) -> None:
        raise NotImplementedError

    def _open(self, name: str) -> "BackendPoints":
        raise NotImplementedError

    def _drop(self, name: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine (open collections are closed by the service first)."""

    def where(self, name: str) -> str:
        return f"{self.kind} collection {name!r} at {self.url!r}"

    def manifest(self, name: str) -> Any:
        """The complete nestemb manifest of collection ``name`` (NestembError otherwise)."""
        pts = self._open(name)
        man = pts.funnel_manifest()
        pts.close()
        return man

    def open(self, name: str, cfg: dict) -> "BackendPoints":
        """Open the engine collection behind the service's collection ``name``, checking that
        it exists and that its manifest agrees with ``cfg``."""
        if not self.exists(name):
            raise Mismatch(f"collection {name!r} is registered in the service but "
                           f"{self.where(name)} does not exist")
        pts = self._open(name)
        try:
            check_meta(name, cfg, pts.funnel_manifest(), self.where(name))
        except BaseException:
            pts.close()
            raise
        return pts

    def create(self, name: str, cfg: dict) -> "BackendPoints":
        """A new collection, or the existing engine collection of that name when its manifest
        agrees with ``cfg`` (e.g. one written by ``nestemb backend export``)."""
        if self.exists(name):
            return self.open(name, cfg)
        nesting = tuple(int(d) for d in cfg["nesting"])
        self._create(name, _collection_meta(name, cfg, self.kind), nesting)
        return self._open(name)

    def drop(self, name: str) -> None:
        if self.exists(name):
            self._drop(name)


class BackendPoints:
    """One collection in a vector database (see the module docstring). Engine calls of one
    collection are serialized by a lock; the search is the backend's funnel.

    Subclasses provide ``_funnel(dims, shortlist)``, ``_upsert``, ``_delete``, ``_get``,
    ``_count`` and ``_payloads``.
    """

    tunable = False
    tuning = None

    def __init__(self, backend: Backend, name: str):
        self.backend, self.name, self.kind = backend, name, backend.kind
        self.where = backend.where(name)
        self.write_lock = threading.Lock()
        self._lock = threading.RLock()
        self._funnels: dict[tuple, Any] = {}
        default = self._funnel_for(None, None)
        self.manifest_ = default.manifest_
        self.nesting = tuple(self.manifest_.nesting)
        self.dim = int(self.manifest_.dim)
        self.stored = tuple(self.manifest_.extra["stored_dims"])
        self.id_mode = self.manifest_.extra.get("id_mode", "export")
        self.id_kind = self.manifest_.extra.get("id_kind", "int")

    def funnel_manifest(self):
        return self.manifest_

    def _funnel_for(self, dims, shortlist):
        key = (None if dims is None else tuple(dims),
               None if shortlist is None else tuple(shortlist))
        f = self._funnels.get(key)
        if f is None:
            f = self._funnels[key] = self._funnel(dims, shortlist)
        return f

    # ---------------------------------------------------------------- ids
    def check_ids(self, ids: Sequence[Any], field: str = "points") -> None:
        """Ids a collection exported with one id type accepts (the service's own collections
        take integers and strings)."""
        if self.id_mode == "service":
            return
        want = str if self.id_kind == "str" else int
        for j, i in enumerate(ids):
            if not isinstance(i, want) or (want is int and self._int_only and i < 0):
                raise Unsupported(f"{field}.{j}.id", f"{self.where} was exported with "
                                  f"{self.id_kind} ids: id {i!r} cannot be stored there")

    _int_only = False

    # ---------------------------------------------------------------- protocol
    def __len__(self) -> int:
        with self._lock:
            return int(self._count())

    def upsert(self, ids: Sequence[Any], X: np.ndarray, payloads: Sequence[dict]) -> None:
        from nestemb.backends.qdrant import ID_KEY
        from nestemb.nesting import prefix_view

        self.check_ids(ids)
        for j, p in enumerate(payloads):
            if ID_KEY in p:
                raise Unsupported(f"points.{j}.payload",
                                  f"payload key {ID_KEY!r} is reserved on the {self.kind} backend")
        views = {d: np.ascontiguousarray(prefix_view(X, d), dtype=np.float32)
                 for d in self.stored}
        with self._lock:
            self._upsert(list(ids), views, list(payloads))

    def delete(self, ids: Sequence[Any]) -> int:
        with self._lock:
            valid = [i for i in ids if self._valid(i)]
            got = self._get(valid, vectors=False) if valid else {}
            present = [i for i in valid if id_key(i) in got]
            if present:
                self._delete(present)
            return len(present)

    def _valid(self, pid: Any) -> bool:
        try:
            self.check_ids([pid])
        except Unsupported:
            return False
        return True

    def get(self, pid: Any) -> tuple[np.ndarray, dict] | None:
        if not self._valid(pid):
            return None
        with self._lock:
            got = self._get([pid])
        return got.get(id_key(pid)) if got else None

    def plan_for_recall(self, recall: float) -> Plan:
        raise Unsupported("recall", f"recall targets are not supported on the {self.kind} "
                          "backend (they need the embedded store's tuning): give dims and "
                          "shortlist instead")

    def default_plan(self) -> Plan:
        extra = self.manifest_.extra
        return Plan(tuple(extra["dims"]), tuple(extra["shortlist"]), "default:collection",
                    1.0 if len(extra["dims"]) == 1 else None)

    def index_info(self) -> dict[str, Any]:
        return {"kind": f"funnel in {self.kind}: exact first stage on a stored prefix, re-rank "
                        "on longer stored prefixes (dims + shortlist plans only)",
                "backend": self.kind, "url": self.backend.url,
                "stored_dims": list(self.stored),
                "default_plan": self.default_plan().as_dict(), "tuning": None}

    def search(self, Q: np.ndarray, k: int, plan: Plan, flt: dict | None = None
               ) -> tuple[list[list[dict]], list[dict]]:
        if flt:
            raise Unsupported("filter", f"payload filters are not supported on the {self.kind} "
                              "backend")
        missing = [d for d in plan.dims if d not in self.stored]
        if missing:
            raise Unsupported("dims", f"{missing} are not stored in {self.where} (stored "
                              f"prefixes: {list(self.stored)})")
        t = time.perf_counter()
        with self._lock:
            n = int(self._count())
            if n == 0:
                return [[] for _ in Q], [{"stage": "backend", "ms": _ms(t)}]
            funnel = self._funnel_for(plan.dims, plan.shortlist)
            kk = min(int(k), n)
            rows = funnel.search_hits(Q, kk, count=n)
            rows = [[(self._decode(i), float(s)) for i, s in row] for row in rows]
            wanted = list(dict.fromkeys(i for row in rows for i, _ in row))
            got = self._get(wanted, vectors=False) if wanted else {}
        hits = [[{"id": i, "score": s, "payload": got.get(id_key(i), (None, {}))[1]}
                 for i, s in row] for row in rows]
        keeps = [min(s, n) for s in plan.shortlist] + [kk]
        timing = [{"stage": "backend", "engine": self.kind, "dims": list(plan.dims),
                   "kept": keeps, "candidates": n, "ms": _ms(t)}]
        return hits, timing

    def _decode(self, raw: Any) -> Any:
        return raw

    def close(self) -> None:
        for f in self._funnels.values():
            close = getattr(f, "close", None)
            if close is not None:
                close()
        self._funnels.clear()


def _ms(t: float) -> float:
    return round((time.perf_counter() - t) * 1000, 3)


# ----------------------------------------------------------------------------- Qdrant
_NS = uuid.UUID("6b2c9a52-61b5-4d0e-9a52-6e657374656d")  # as nestemb.backends.qdrant


class _QdrantPoints(BackendPoints):
    """Points of a Qdrant collection (client or Edge): a point id per nestemb id (the id itself
    when it is a non-negative integer, else a UUID derived from it, as an export does), the
    nestemb id and the payload in the point's payload."""

    def qid(self, pid: Any) -> Any:
        if self.id_mode == "export" and self.manifest_.extra.get("id_payload"):
            kind = "U" if isinstance(pid, str) else "i"
            return str(uuid.uuid5(_NS, f"{kind}:{pid}"))
        if isinstance(pid, int) and pid >= 0:
            return pid
        return str(uuid.uuid5(_NS, f"{'U' if isinstance(pid, str) else 'i'}:{pid}"))

    @property
    def _int_only(self) -> bool:  # an export of non-negative ints has no id payload
        return not self.manifest_.extra.get("id_payload")

    def _records(self, records: list, full: str | None) -> dict[str, tuple]:
        from nestemb.backends.qdrant import ID_KEY

        out = {}
        for r in records:
            payload = dict(r.payload or {})
            pid = payload.pop(ID_KEY, r.id)
            vec = None
            if full is not None and r.vector is not None:
                v = r.vector[full] if isinstance(r.vector, dict) else r.vector
                vec = np.asarray(v, dtype=np.float32)
            out[id_key(pid)] = (vec, payload)
        return out

    def _points(self, ids, views, payloads):
        from nestemb.backends.base import field_name
        from nestemb.backends.qdrant import ID_KEY

        names = {d: field_name(d) for d in views}
        for j, pid in enumerate(ids):
            yield (self.qid(pid), {names[d]: v[j].tolist() for d, v in views.items()},
                   {**payloads[j], ID_KEY: pid})


class _QdrantClientPoints(_QdrantPoints):
    def __init__(self, backend: "QdrantBackend", name: str):
        self.client = backend.client
        super().__init__(backend, name)

    def _funnel(self, dims, shortlist):
        from nestemb.backends.qdrant import QdrantFunnel

        return QdrantFunnel(self.client, self.name, dims=dims, shortlist=shortlist, exact=True)

    def _upsert(self, ids, views, payloads):
        from qdrant_client import models

        from nestemb.backends.qdrant import _qdrant_errors

        pts = [models.PointStruct(id=i, vector=v, payload=p)
               for i, v, p in self._points(ids, views, payloads)]
        with _qdrant_errors(self.where):
            self.client.upsert(self.name, points=pts, wait=True)

    def _delete(self, ids):
        from qdrant_client import models

        from nestemb.backends.qdrant import _qdrant_errors

        with _qdrant_errors(self.where):
            self.client.delete(self.name, points_selector=models.PointIdsList(
                points=[self.qid(i) for i in ids]), wait=True)

    def _get(self, ids, vectors=True):
        from nestemb.backends.base import field_name
        from nestemb.backends.qdrant import _qdrant_errors

        full = field_name(self.dim) if vectors else None
        with _qdrant_errors(self.where):
            recs = self.client.retrieve(self.name, ids=[self.qid(i) for i in ids],
                                        with_payload=True,
                                        with_vectors=[full] if full else False)
        return self._records(recs, full)

    def _count(self):
        from nestemb.backends.qdrant import _qdrant_errors

        with _qdrant_errors(self.where):
            return self.client.count(self.name, exact=True).count


class _QdrantEdgePoints(_QdrantPoints):
    def __init__(self, backend: "QdrantEdgeBackend", name: str):
        from nestemb.backends.qdrant import QdrantFunnel

        self.path = backend.root / name
        self._main = QdrantFunnel.open_edge(self.path, exact=True)  # owns the shard
        self.shard = self._main._engine.shard
        super().__init__(backend, name)

    def _funnel(self, dims, shortlist):
        from nestemb.backends.qdrant import QdrantFunnel

        if dims is None and shortlist is None:
            return self._main
        # the shard is opened once (one handle per process): share the open engine
        return QdrantFunnel._from_engine(_Shared(self._main._engine), dims, shortlist,
                                         exact=True)

    def _upsert(self, ids, views, payloads):
        import qdrant_edge as qe

        from nestemb.backends.qdrant import _qdrant_errors

        pts = [qe.Point(i, v, p) for i, v, p in self._points(ids, views, payloads)]
        with _qdrant_errors(self.where):
            self.shard.update(qe.UpdateOperation.upsert_points(pts))
            self.shard.flush()  # durable before the write is acknowledged

    def _delete(self, ids):
        import qdrant_edge as qe

        from nestemb.backends.qdrant import _qdrant_errors

        with _qdrant_errors(self.where):
            self.shard.update(qe.UpdateOperation.delete_points([self.qid(i) for i in ids]))
            self.shard.flush()

    def _get(self, ids, vectors=True):
        from nestemb.backends.base import field_name
        from nestemb.backends.qdrant import _qdrant_errors

        full = field_name(self.dim) if vectors else None
        with _qdrant_errors(self.where):
            recs = self.shard.retrieve([self.qid(i) for i in ids], with_payload=True,
                                       with_vector=[full] if full else False)
        return self._records(recs, full)

    def _count(self):
        import qdrant_edge as qe

        return self.shard.count(qe.CountRequest(exact=True))

    def close(self) -> None:
        self._funnels.clear()
        self._main.close()


class _Shared:
    """An open Edge engine shared by several funnels (closing one does not close it)."""

    def __init__(self, engine):
        self._engine, self.where = engine, engine.where

    def meta(self):
        return self._engine.meta()

    def query(self, *a, **kw):
        return self._engine.query(*a, **kw)

    def close(self) -> None:
        pass


class QdrantBackend(Backend):
    """Qdrant through qdrant-client: a server or cluster (``http(s)://`` URL, checked at once)
    or local mode (a folder, or ``:memory:``)."""

    kind = "qdrant"

    def __init__(self, url: str, api_key: str | None = None):
        from nestemb.backends.qdrant import _require, connect_qdrant

        self.url = url
        if url.startswith(("http://", "https://")):
            self.client = connect_qdrant(url, api_key=api_key)
        else:
            qc = _require("qdrant_client")
            try:
                self.client = (qc.QdrantClient(":memory:") if url == ":memory:"
                               else qc.QdrantClient(path=url))
            except Exception as e:  # noqa: BLE001 - e.g. the folder is locked by another process
                raise NestembError(f"cannot open Qdrant local storage at {url!r}: {e}") from None

    def names(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def exists(self, name: str) -> bool:
        return bool(self.client.collection_exists(name))

    def _create(self, name, meta, nesting):
        from nestemb.backends.qdrant import _ClientEngine

        _ClientEngine(self.client, name).create(nesting, "none", 16, 100, meta)

    def _open(self, name):
        return _QdrantClientPoints(self, name)

    def _drop(self, name):
        self.client.delete_collection(name)

    def close(self) -> None:
        if not getattr(self, "_closed", False):
            self._closed = True
            self.client.close()


class QdrantEdgeBackend(Backend):
    """Qdrant Edge: one shard folder per collection under a root folder (what
    :func:`~nestemb.backends.qdrant.export_qdrant_edge` writes)."""

    kind = "qdrant-edge"

    def __init__(self, url: str):
        from nestemb.backends.qdrant import _require

        _require("qdrant_edge")
        self.url, self.root = url, Path(url)
        if self.root.exists() and not self.root.is_dir():
            raise NestembError(f"cannot use {url!r} for Qdrant Edge: not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NestembError(f"cannot use {url!r} for Qdrant Edge: {e}") from None

    def where(self, name: str) -> str:
        return f"qdrant edge shard {str(self.root / name)!r}"

    def names(self) -> list[str]:
        from nestemb.backends.qdrant import EDGE_META

        return sorted(p.name for p in self.root.iterdir() if (p / EDGE_META).is_file())

    def exists(self, name: str) -> bool:
        p = self.root / name
        return p.is_dir() and any(p.iterdir())

    def _create(self, name, meta, nesting):
        from nestemb.backends.qdrant import _EdgeEngine

        engine = _EdgeEngine(self.root / name)
        engine.create(nesting, "none", 16, 100, meta)
        engine.close()

    def _open(self, name):
        return _QdrantEdgePoints(self, name)

    def _drop(self, name):
        import shutil

        shutil.rmtree(self.root / name)


# ----------------------------------------------------------------------------- Milvus
class _MilvusPoints(BackendPoints):
    """Points of a Milvus collection: the primary key is the id's JSON text (``5`` and
    ``"5"`` differ) in a collection the service created, the id itself in an exported one."""

    def __init__(self, backend: "MilvusBackend", name: str):
        self.client = backend.client
        super().__init__(backend, name)
        self.has_payload = any(f["name"] == "payload" for f in
                               self.client.describe_collection(name)["fields"])

    def _funnel(self, dims, shortlist):
        from nestemb.backends.milvus import MilvusFunnel

        # client re-rank: one round trip per batch, and no primary-key filter to escape
        return MilvusFunnel(self.client, self.name, dims=dims, shortlist=shortlist,
                            rerank="client")

    def pk(self, pid: Any) -> Any:
        return id_key(pid) if self.id_mode == "service" else pid

    def _decode(self, raw: Any) -> Any:
        return json.loads(raw) if self.id_mode == "service" else raw

    def _upsert(self, ids, views, payloads):
        from nestemb.backends.base import field_name
        from nestemb.backends.milvus import _milvus_errors

        if not self.has_payload and any(payloads):
            raise Unsupported("points", f"{self.where} has no payload field (exported without "
                              "payloads): send points without payload")
        rows = []
        for j, pid in enumerate(ids):
            row = {"id": self.pk(pid), **{field_name(d): v[j] for d, v in views.items()}}
            if self.has_payload:
                row["payload"] = payloads[j]
            rows.append(row)
        with _milvus_errors(self.where):
            self.client.upsert(self.name, rows)

    def _delete(self, ids):
        from nestemb.backends.milvus import _milvus_errors

        with _milvus_errors(self.where):
            self.client.delete(self.name, ids=[self.pk(i) for i in ids])

    def _get(self, ids, vectors=True):
        from nestemb.backends.base import field_name
        from nestemb.backends.milvus import _milvus_errors

        full = field_name(self.dim)
        fields = ([full] if vectors else []) + (["payload"] if self.has_payload else [])
        with _milvus_errors(self.where):
            rows = self.client.get(self.name, ids=[self.pk(i) for i in ids],
                                   output_fields=fields or ["id"])
        out = {}
        for r in rows:
            vec = np.asarray(r[full], dtype=np.float32) if vectors else None
            out[id_key(self._decode(r["id"]))] = (vec, dict(r.get("payload") or {}))
        return out

    def _count(self):
        from nestemb.backends.milvus import _milvus_errors

        with _milvus_errors(self.where):
            res = self.client.query(self.name, filter="", output_fields=["count(*)"],
                                    consistency_level="Strong")
        return int(res[0]["count(*)"])


class MilvusBackend(Backend):
    """Milvus through pymilvus: a server or cluster (``http(s)://`` URI, checked at once) or
    milvus-lite (a ``.db`` file)."""

    kind = "milvus"

    def __init__(self, url: str, token: str = ""):
        from nestemb.backends.milvus import connect_milvus

        self.url = url
        if not url.startswith(("http://", "https://", "tcp://")):
            parent = Path(url).parent
            if not parent.is_dir():
                raise NestembError(f"cannot open milvus-lite file {url!r}: folder {parent} "
                                   "does not exist")
        self.client = connect_milvus(url, token=token)

    def names(self) -> list[str]:
        return sorted(self.client.list_collections())

    def exists(self, name: str) -> bool:
        return bool(self.client.has_collection(name))

    def _create(self, name, meta, nesting):
        import pymilvus as pm

        from nestemb.backends.base import field_name
        from nestemb.backends.milvus import META_KEY, _milvus_errors

        schema = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        # a point id's JSON text: 256 characters, each up to 6 bytes escaped, and the quotes
        schema.add_field("id", pm.DataType.VARCHAR, is_primary=True, max_length=1600)
        for d in nesting:
            schema.add_field(field_name(d), pm.DataType.FLOAT_VECTOR, dim=int(d))
        schema.add_field("payload", pm.DataType.JSON)
        index_params = self.client.prepare_index_params()
        for d in nesting:
            index_params.add_index(field_name(d), index_type="FLAT", metric_type="IP")
        meta = {**meta, "extra": {**meta["extra"], "id_kind": "str", "index_type": "FLAT"}}
        with _milvus_errors(self.where(name)):
            self.client.create_collection(name, schema=schema, index_params=index_params,
                                          consistency_level="Strong",
                                          properties={META_KEY: json.dumps(meta)})
            self.client.load_collection(name)

    def _open(self, name):
        return _MilvusPoints(self, name)

    def _drop(self, name):
        self.client.drop_collection(name)

    def close(self) -> None:
        if not getattr(self, "_closed", False):
            self._closed = True
            self.client.close()


def default_backend_url(kind: str, data_dir: str | Path) -> str:
    """Where a backend keeps its data when ``--backend-url`` is not given: inside the data
    folder (``qdrant-edge/``, ``qdrant/``, ``milvus.db``).

    Example:
        >>> default_backend_url("milvus", "/srv/data")
        '/srv/data/milvus.db'
    """
    name = {"qdrant-edge": "qdrant-edge", "qdrant": "qdrant", "milvus": "milvus.db"}[kind]
    return str(Path(data_dir) / name)


def open_backend(kind: str, url: str, *, api_key: str | None = None) -> Backend:
    """The :class:`Backend` ``kind`` (``qdrant-edge``, ``qdrant`` or ``milvus``) at ``url``
    (a folder, a file or a server URL), checked at once: an unreachable or unusable address
    raises :class:`NestembError` naming it.

    Example:
        >>> open_backend("qdrant", "http://127.0.0.1:9")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: cannot reach Qdrant at 'http://127.0.0.1:9': ...
    """
    if kind == "qdrant-edge":
        return QdrantEdgeBackend(url)
    if kind == "qdrant":
        return QdrantBackend(url, api_key=api_key)
    if kind == "milvus":
        return MilvusBackend(url, token=api_key or "")
    raise NestembError(f"backend must be one of {BACKENDS[1:]}, got {kind!r}")


__all__ = ["BACKENDS", "Backend", "BackendPoints", "Mismatch", "PointStore", "SqlitePoints",
           "Unsupported", "check_meta", "default_backend_url", "open_backend"]
