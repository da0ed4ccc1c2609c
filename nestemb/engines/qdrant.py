"""Qdrant mapping of a funnel: one named vector per stage prefix, the funnel compiled to the
Query API's nested ``prefetch``.

Layout of an exported collection: a named vector ``d{m}`` (cosine distance) for every stage
prefix ``m`` of the funnel, the full vector included, each holding the
:func:`~nestemb.nesting.prefix_view` of the point (sliced, then L2-normalized); the first
(shortest) one carries an int8 scalar quantization config (``quantize="int8"``, the default)
and an HNSW graph, the re-rank prefixes have no graph (``m=0``: they are only scored on the
candidates of the stage before). Point ids are the nestemb ids where they are non-negative
integers; other ids (strings, negative integers) become UUIDs derived from them and the id is
kept in the payload key ``nestemb_id``. The collection manifest (model id and version, nesting,
stored prefixes, default stages, id type) is stored as the collection's ``metadata``
(Qdrant >= 1.16) and checked by every :class:`QdrantFunnel`; it is marked complete only after
every point is written, so a collection whose export was interrupted is refused (export it
again with ``overwrite=True``).

Search compiles the stage configuration ``dims=(d0, d1, ..., D)``,
``shortlist=(s0, s1, ...)`` to one Query API request per query::

    query(d{D}, limit=k,
          prefetch=prefetch(d{d1}, limit=s1,
                            prefetch=prefetch(d{d0}, limit=s0)))

so the shortlist and every re-rank run inside Qdrant (one round trip for a batch, through
``query_batch_points``).

Engines, all through the same functions:

- a cluster or a single server: ``client = connect_qdrant("http://qdrant:6333", api_key=...)``
  (the address is checked at once: an unreachable one raises :class:`NestembError`);
- qdrant-client's local mode, ``QdrantClient(":memory:")`` or ``QdrantClient(path=DIR)``: the
  same client API with no server (a pure-Python exact scan; it accepts but ignores quantization
  and HNSW settings, fine for tests and small collections, slow beyond ~20k points);
- Qdrant Edge (``qdrant-edge-py``): Qdrant's own engine in-process, on a shard directory, with
  :func:`export_qdrant_edge` and :meth:`QdrantFunnel.open_edge`; the same request tree
  is sent through Edge's query API, and quantization and HNSW are real there.

The same collections serve ``nestemb serve --backend qdrant|qdrant-edge``
(:class:`QdrantEngine`, :class:`QdrantEdgeEngine`: a collection per service collection, every
nesting prefix stored, points written and deleted one request at a time). One id mapping
(:func:`point_id`) and one layout builder serve exports and the service alike.

Example:
    >>> from qdrant_client import QdrantClient
    >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
    >>> X = synthetic_matryoshka(300, 32, seed=0)
    >>> index = FunnelIndex(dims=(8, 32), shortlist=(60,), model_id="demo").add(X)
    >>> funnel = export_qdrant(index, QdrantClient(":memory:"), "docs")
    >>> funnel.search(X[:2], k=3)[1][:, 0].tolist()
    [0, 1]
    >>> funnel.logical_bytes_per_point()   # d8 + d32 float32, d8 int8 codes (+4 B offset)
    {'vectors': 172.0, 'reference': 160.0, 'ratio': 1.075}
"""

from __future__ import annotations

import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nestemb.engines.base import (
    ID_KEY,
    Collection,
    Engine,
    ExportSource,
    Funnel,
    check_name,
    engine_errors,
    field_name,
    point_key,
    require,
)
from nestemb.checks import non_empty_str
from nestemb.errors import NestembError
from nestemb.nesting import Manifest, prefix_view

QUANTIZE = ("none", "int8")
EDGE_META = "nestemb.json"
EDGE_SHARD = "shard"
_NS = uuid.UUID("6b2c9a52-61b5-4d0e-9a52-6e657374656d")  # namespace of derived point ids


def _errors(where: str):
    """Qdrant's error wrapper: client, transport and connection errors as a NestembError."""
    return engine_errors(where, ("qdrant_client", "httpx", "httpcore", "grpc"),
                         (ConnectionError, TimeoutError, OSError))


def connect_qdrant(url: str, *, api_key: str | None = None, timeout: float = 5.0, **kwargs: Any):
    """A ``QdrantClient`` for the Qdrant server or cluster at ``url``, checked at once: an
    unreachable address raises :class:`NestembError` instead of failing on the first search.
    Extra keyword arguments go to ``QdrantClient`` (e.g. ``prefer_grpc=True``).

    Example:
        >>> connect_qdrant("http://127.0.0.1:9", timeout=1)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: cannot reach Qdrant at 'http://127.0.0.1:9': ...
    """
    qc = require("qdrant_client")
    non_empty_str(url, "url")
    client = qc.QdrantClient(url=url, api_key=api_key, timeout=max(1, int(np.ceil(timeout))),
                             check_compatibility=False, **kwargs)
    with _errors(f"cannot reach Qdrant at {url!r}"):
        client.get_collections()
    return client


def point_id(pid: Any, all_uuid: bool) -> int | str:
    """The Qdrant point id of the nestemb id ``pid``: the id itself where it is a non-negative
    integer (unless ``all_uuid``: an export whose ids are not all such), else a UUID derived
    from its type and value (the id then travels in the payload key ``nestemb_id``).

    Example:
        >>> point_id(5, False), point_id("5", False) == point_id("5", True) != point_id(5, True)
        (5, True)
    """
    if not all_uuid and isinstance(pid, (int, np.integer)) and pid >= 0:
        return int(pid)
    return str(uuid.uuid5(_NS, f"{'U' if isinstance(pid, str) else 'i'}:{pid}"))


def _layout(meta: dict) -> list[tuple[str, int, int, bool]]:
    """Per stored prefix of a collection manifest: the named vector, its size, its HNSW ``m``
    (only the first prefix has a graph, unless it is the only one) and whether it is int8
    quantized."""
    extra = meta["extra"]
    dims, hnsw_m = extra["stored_dims"], int(extra.get("hnsw_m", 16))
    out = []
    for j, d in enumerate(dims):
        first = j == 0 and len(dims) > 1
        out.append((field_name(d), int(d), hnsw_m if first or len(dims) == 1 else 0,
                    first and extra.get("quantize") == "int8"))
    return out


# --------------------------------------------------------------------- collections
class _QdrantCollection(Collection):
    """What the client and Edge collections share: the id mapping, the id payload and the
    layout options."""

    service_layout = {"quantize": "none", "quantized_bytes": 0, "id_payload": True,
                      "hnsw_m": 16, "ef_construct": 100}
    exact_search = {"exact": True}

    def _int_only(self) -> bool:  # an export of non-negative ints keeps no id payload
        return not self.extra.get("id_payload")

    def _key(self, pid: Any) -> int | str:
        return point_id(pid, not self.service_ids and bool(self.extra.get("id_payload")))

    def write(self, ids, views, payloads, batch_size, fresh=False):
        if self.extra.get("id_payload"):
            payloads = [{**({} if payloads is None else payloads[j]), ID_KEY: i}
                        for j, i in enumerate(ids)]
        self._store([self._key(i) for i in ids], {field_name(d): v for d, v in views.items()},
                    payloads, batch_size)

    def fetch(self, ids, vectors=True):
        full = field_name(self.manifest_.dim) if vectors else None
        out = {}
        for r in self._retrieve([self._key(i) for i in ids], full):
            payload = dict(r.payload or {})
            pid = payload.pop(ID_KEY, r.id)
            vec = None
            if full is not None and r.vector is not None:
                v = r.vector[full] if isinstance(r.vector, dict) else r.vector
                vec = np.asarray(v, dtype=np.float32)
            out[point_key(pid)] = (vec, payload)
        return out

    def _layout(self, src: ExportSource, payload, *, quantize: str = "int8", hnsw_m: int = 16,
                ef_construct: int = 100) -> dict[str, Any]:
        from nestemb.checks import positive_int

        if quantize not in QUANTIZE:
            raise NestembError(f"{{param}} must be one of {QUANTIZE}, got {quantize!r}",
                               param="quantize")
        hnsw_m = positive_int(hnsw_m, "hnsw_m")
        ef_construct = positive_int(ef_construct, "ef_construct")
        ids = src.ids
        with_id = not (ids.dtype.kind == "i" and (len(ids) == 0 or ids.min() >= 0))
        quant = src.dims[0] + 4 if quantize == "int8" and len(src.dims) > 1 else 0
        return dict(quantize=quantize if quant else "none", quantized_bytes=quant,
                    id_payload=with_id, hnsw_m=hnsw_m, ef_construct=ef_construct)

    def _hit(self, point: Any) -> Any:
        """The nestemb id of a returned point: its payload's ``nestemb_id`` where the
        collection keeps ids there (a point written without one keeps its point id)."""
        if self.extra.get("id_payload") and point.payload and ID_KEY in point.payload:
            return point.payload[ID_KEY]
        return point.id

    def _store(self, keys: list, views: dict[str, np.ndarray], payloads: list | None,
               batch_size: int) -> None:
        raise NotImplementedError

    def query(self, stages: list[tuple[str, np.ndarray, int]],
              params: dict) -> list[list[tuple[Any, float]]]:
        """The funnel's stages in one request per query: per query, ``(id, score)`` hits."""
        raise NotImplementedError

    def _retrieve(self, keys: list, full: str | None) -> list:
        raise NotImplementedError


class QdrantCollection(_QdrantCollection):
    """A collection through qdrant-client (a server, a cluster or local mode); the client
    belongs to the caller."""

    kind = "qdrant"

    def __init__(self, client: Any, collection: str, where: str | None = None):
        qc = require("qdrant_client")
        if not isinstance(client, qc.QdrantClient):
            raise NestembError(f"{{param}} must be a qdrant_client.QdrantClient, got "
                               f"{type(client).__name__}", param="client")
        non_empty_str(collection, "collection")
        self.client, self.name, self.models = client, collection, qc.models
        self.where = where or f"qdrant collection {collection!r}"

    def exists(self) -> bool:
        with _errors(f"{self.where}: cannot reach Qdrant"):
            return bool(self.client.collection_exists(self.name))

    def raw_meta(self) -> Any:
        with _errors(self.where):
            if not self.client.collection_exists(self.name):
                raise NestembError(f"{self.where} does not exist")
            return self.client.get_collection(self.name).config.metadata

    def write_meta(self, meta: dict) -> None:
        with _errors(self.where):
            self.client.update_collection(self.name, metadata=meta)

    def _create(self, meta: dict) -> None:
        m = self.models
        ef = int(meta["extra"].get("ef_construct", 100))
        cfg = {name: m.VectorParams(
            size=size, distance=m.Distance.COSINE,
            hnsw_config=m.HnswConfigDiff(m=hnsw, ef_construct=ef),
            quantization_config=m.ScalarQuantization(scalar=m.ScalarQuantizationConfig(
                type=m.ScalarType.INT8, always_ram=True)) if quantized else None,
        ) for name, size, hnsw, quantized in _layout(meta)}
        with _errors(self.where):
            self.client.create_collection(self.name, vectors_config=cfg, metadata=meta)

    def drop(self) -> None:
        with _errors(self.where):
            self.client.delete_collection(self.name)

    def _store(self, keys, views, payloads, batch_size):
        with _errors(self.where):
            self.client.upload_collection(self.name, vectors=views, ids=keys, payload=payloads,
                                          batch_size=batch_size, parallel=1, wait=True)

    def _remove(self, ids):
        with _errors(self.where):
            self.client.delete(self.name, points_selector=self.models.PointIdsList(
                points=[self._key(i) for i in ids]), wait=True)

    def _retrieve(self, keys, full):
        with _errors(self.where):
            return self.client.retrieve(self.name, ids=keys, with_payload=True,
                                        with_vectors=[full] if full else False)

    def count(self) -> int:
        with _errors(self.where):
            return int(self.client.count(self.name, exact=True).count)

    def query(self, stages: list[tuple[str, np.ndarray, int]], params: dict):
        """The funnel as nested ``prefetch`` requests, one per query, one round trip."""
        m = self.models
        sp = m.SearchParams(**params) if params else None
        with_id = bool(self.extra.get("id_payload"))
        requests = []
        for q in range(len(stages[0][1])):
            pf = None
            for j, (name, views, keep) in enumerate(stages[:-1]):
                pf = m.Prefetch(query=views[q].tolist(), using=name, limit=keep, prefetch=pf,
                                params=sp if j == 0 else None)
            name, views, keep = stages[-1]
            requests.append(m.QueryRequest(
                query=views[q].tolist(), using=name, prefetch=pf, limit=keep,
                params=sp if pf is None else None, with_payload=[ID_KEY] if with_id else False,
            ))
        with _errors(self.where), warnings.catch_warnings():
            # local mode scans exactly and says search params have no effect: known, not news
            warnings.filterwarnings("ignore", message="Local mode performs exact")
            res = self.client.query_batch_points(self.name, requests=requests)
        return [[(self._hit(p), p.score) for p in r.points] for r in res]


class EdgeCollection(_QdrantCollection):
    """A Qdrant Edge shard (Qdrant's engine in-process) in the folder ``path``: the shard in
    ``path/shard``, the manifest in ``path/nestemb.json``. A shard is opened by one handle at a
    time: :meth:`close` it when done."""

    kind = "qdrant-edge"

    def __init__(self, path: str | Path, max_search_threads: int | None = None):
        from nestemb.checks import positive_int

        self.qe = require("qdrant_edge")
        self.path = Path(path)
        self.where = f"qdrant edge shard {str(self.path)!r}"
        self.max_search_threads = positive_int(max_search_threads, "max_search_threads",
                                               allow_none=True)
        self.shard = None

    def exists(self) -> bool:
        return self.path.exists() and any(self.path.iterdir())

    def _loaded(self):
        if self.shard is None:  # opened on first use (a shard has one handle at a time)
            with _errors(self.where):
                self.shard = self.qe.EdgeShard.load(str(self.path / EDGE_SHARD))
        return self.shard

    def raw_meta(self) -> Any:
        if not self.path.is_dir():
            raise NestembError(f"{self.where} does not exist")
        f = self.path / EDGE_META
        if not f.is_file():
            return None
        self._loaded()
        return f.read_text()

    def write_meta(self, meta: dict) -> None:
        from nestemb.io import write_json

        write_json(self.path / EDGE_META, meta)

    def _create(self, meta: dict) -> None:
        qe = self.qe
        ef = int(meta["extra"].get("ef_construct", 100))
        vectors = {name: qe.EdgeVectorParams(
            size=size, distance=qe.Distance.Cosine,
            hnsw_config=qe.HnswIndexConfig(m=hnsw, ef_construct=ef, full_scan_threshold=10000,
                                           max_indexing_threads=1),
            quantization_config=qe.ScalarQuantizationConfig(
                type=qe.ScalarType.Int8, always_ram=True) if quantized else None,
        ) for name, size, hnsw, quantized in _layout(meta)}
        # no write-ahead log: an export is all-or-nothing (flushed, then the manifest is
        # written last) and the service flushes every write before acknowledging it
        cfg = qe.EdgeConfig(vectors=vectors, max_search_threads=self.max_search_threads,
                            wal_enabled=False)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NestembError(f"cannot use {str(self.path)!r} for Qdrant Edge: {e}") from None
        with _errors(self.where):
            self.shard = qe.EdgeShard.create(str(self.path / EDGE_SHARD), cfg)
        self.write_meta(meta)

    def drop(self) -> None:
        self.close()
        shutil.rmtree(self.path)

    def _store(self, keys, views, payloads, batch_size):
        qe, shard = self.qe, self._loaded()
        names = list(views)
        with _errors(self.where):
            for a in range(0, len(keys), batch_size):
                rows = {n: views[n][a : a + batch_size].tolist() for n in names}
                shard.update(qe.UpdateOperation.upsert_points([
                    qe.Point(keys[a + r], {n: rows[n][r] for n in names},
                             None if payloads is None else payloads[a + r])
                    for r in range(len(rows[names[0]]))]))
            shard.flush()  # durable before the write is acknowledged

    def _finish(self) -> None:
        with _errors(self.where):
            self._loaded().optimize()  # build the first stage's HNSW graph and int8 codes

    def _remove(self, ids):
        with _errors(self.where):
            self._loaded().update(self.qe.UpdateOperation.delete_points(
                [self._key(i) for i in ids]))
            self.shard.flush()

    def _retrieve(self, keys, full):
        with _errors(self.where):
            return self._loaded().retrieve(keys, with_payload=True,
                                           with_vector=[full] if full else False)

    def count(self) -> int:
        with _errors(self.where):
            return int(self._loaded().count(self.qe.CountRequest(exact=True)))

    def query(self, stages: list[tuple[str, np.ndarray, int]], params: dict):
        """The funnel as nested ``prefetches`` through Edge's query API."""
        qe, shard = self.qe, self._loaded()
        sp = qe.SearchParams(**params) if params else None
        with_id = bool(self.extra.get("id_payload"))
        requests = []
        for q in range(len(stages[0][1])):
            pf = None
            for j, (name, views, keep) in enumerate(stages[:-1]):
                pf = qe.Prefetch(keep, query=qe.Query.Nearest(views[q].tolist(), using=name),
                                 prefetches=None if pf is None else [pf],
                                 params=sp if j == 0 else None)
            name, views, keep = stages[-1]
            requests.append(qe.QueryRequest(
                keep, query=qe.Query.Nearest(views[q].tolist(), using=name),
                prefetches=None if pf is None else [pf], params=sp if pf is None else None,
                with_payload=[ID_KEY] if with_id else False,
            ))
        with _errors(self.where):
            if len(requests) == 1:
                res = [shard.query(requests[0])]
            else:
                res = shard.query_batch(qe.QueryBatchRequest(requests))
        return [[(self._hit(p), p.score) for p in r] for r in res]

    def close(self) -> None:
        if self.shard is not None:
            self.shard.close()
            self.shard = None


# --------------------------------------------------------------------- export
def export_qdrant(
    source: Any, client: Any, collection: str, ids: Sequence[Any] | None = None, **options: Any
) -> "QdrantFunnel":
    """Export a fitted :class:`~nestemb.index.FunnelIndex` (or raw ``(n, D)`` vectors with
    ``ids``, ``dims``, ``shortlist`` and the model identity) into the Qdrant collection
    ``collection`` through ``client`` (a ``QdrantClient``: local mode, a server, or a cluster
    from :func:`connect_qdrant`); returns a :class:`QdrantFunnel` searching it with the same
    stage configuration.

    ``options``: those of :meth:`~nestemb.engines.base.Collection.export` (``dims``,
    ``shortlist``, ``nesting``, ``model_id``, ``model_version``, ``manifest``, ``payload``,
    ``overwrite``, ``batch_size``, default 256) and Qdrant's layout: ``quantize`` (``"int8"``),
    ``hnsw_m`` (16), ``ef_construct`` (100).

    One named vector per stage prefix (see the module docstring); ``quantize="int8"`` adds
    Qdrant's int8 scalar quantization to the first prefix (``"none"`` to leave it float32);
    ``hnsw_m`` / ``ef_construct`` build the first prefix's HNSW graph. ``payload`` (one dict per
    vector) is stored with the points. An existing collection is refused unless
    ``overwrite=True``, and even then only a collection exported by nestemb is replaced.

    Example:
        >>> from qdrant_client import QdrantClient
        >>> from nestemb.index import synthetic_matryoshka
        >>> client = QdrantClient(":memory:")
        >>> X = synthetic_matryoshka(200, 16)
        >>> f = export_qdrant(X, client, "c", ids=[f"doc{i}" for i in range(200)],
        ...                   dims=(4, 16), shortlist=(40,), model_id="demo")
        >>> f.search(X[5], k=1)[1].tolist()
        [['doc5']]
        >>> export_qdrant(X, client, "c", dims=(4, 16), shortlist=(40,))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: qdrant collection 'c' already exists (set overwrite to replace it)
    """
    options.setdefault("batch_size", 256)
    funnel = QdrantCollection(client, collection).export(source, ids, **options)
    assert isinstance(funnel, QdrantFunnel)  # the collection's funnel_class
    return funnel


def export_qdrant_edge(
    source: Any, path: str | Path, ids: Sequence[Any] | None = None,
    max_search_threads: int | None = None, **options: Any,
) -> "QdrantFunnel":
    """Like :func:`export_qdrant`, into a Qdrant Edge shard at the directory ``path``
    (``qdrant-edge-py``: Qdrant's engine in-process; the shard lives in ``path/shard``, the
    collection manifest in ``path/nestemb.json``, marked complete only once every point is
    flushed; the shard is created without a write-ahead log, which an all-or-nothing export does
    not need). ``max_search_threads=1`` searches on one thread; ``batch_size`` defaults to 2048.

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.index import synthetic_matryoshka
        >>> X = synthetic_matryoshka(200, 16)
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "edge"
        >>> f = export_qdrant_edge(X, out, dims=(4, 16), shortlist=(40,), model_id="demo")
        >>> f.search(X[:2], k=1)[1].ravel().tolist()
        [0, 1]
        >>> f.close()
    """
    options.setdefault("batch_size", 2048)
    funnel = EdgeCollection(path, max_search_threads).export(source, ids, **options)
    assert isinstance(funnel, QdrantFunnel)  # the collection's funnel_class
    return funnel


# --------------------------------------------------------------------- search
class QdrantFunnel(Funnel):
    """Search a collection exported by :func:`export_qdrant` with the funnel compiled to
    Qdrant's Query API (nested ``prefetch``, one request per query, one round trip per batch).

    Args:
        client: a ``QdrantClient`` (local mode, a server, or :func:`connect_qdrant`).
        collection: the collection's name.
        dims, shortlist: stage configuration (default: the one exported); every stage dim must
            be a stored prefix of the collection.
        manifest: the manifest of the embeddings you will search with (e.g. the encoder's);
            checked against the collection's at once (model id, version, nesting).
        exact: scan the first prefix exhaustively instead of walking its HNSW graph.
        hnsw_ef: HNSW beam width of the first stage (Qdrant's default when ``None``).

    Attributes:
        manifest_: the collection's manifest.

    Example:
        >>> from qdrant_client import QdrantClient
        >>> from nestemb.index import synthetic_matryoshka
        >>> from nestemb.nesting import Manifest
        >>> client = QdrantClient(":memory:"); X = synthetic_matryoshka(100, 16)
        >>> _ = export_qdrant(X, client, "c", dims=(4, 16), shortlist=(20,), model_id="a")
        >>> QdrantFunnel(client, "c", dims=(16,), shortlist=()).search(X[3], k=1)[1].item()
        3
        >>> QdrantFunnel(client, "c").search(X[3], manifest=Manifest("b", (4, 16), 16))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: queries and qdrant collection 'c' come from different models: 'b' (version 'unknown') vs 'a' (version 'unknown')
    """

    _collection: _QdrantCollection

    def __init__(
        self,
        client: Any,
        collection: str,
        *,
        dims: Sequence[int] | None = None,
        shortlist: Sequence[int] | None = None,
        manifest: Manifest | None = None,
        exact: bool = False,
        hnsw_ef: int | None = None,
    ):
        self._open(QdrantCollection(client, collection), dims, shortlist, manifest, True,
                   exact=exact, hnsw_ef=hnsw_ef)

    @classmethod
    def open_edge(
        cls,
        path: str | Path,
        *,
        dims: Sequence[int] | None = None,
        shortlist: Sequence[int] | None = None,
        manifest: Manifest | None = None,
        exact: bool = False,
        hnsw_ef: int | None = None,
    ) -> "QdrantFunnel":
        """Open a Qdrant Edge shard written by :func:`export_qdrant_edge` (arguments as for
        the constructor). Call :meth:`close` when done: a shard is opened by one process.

        Example:
            >>> QdrantFunnel.open_edge("/nonexistent/shard")
            Traceback (most recent call last):
            ...
            nestemb.errors.NestembError: qdrant edge shard '/nonexistent/shard' does not exist
        """
        return cls.over(EdgeCollection(path), dims, shortlist, manifest, owns=True, exact=exact,
                        hnsw_ef=hnsw_ef)

    def _setup(self, exact: bool = False, hnsw_ef: int | None = None) -> None:
        from nestemb.checks import positive_int

        self.exact = bool(exact)
        self.hnsw_ef = positive_int(hnsw_ef, "hnsw_ef", allow_none=True)

    def _hits(self, Q: np.ndarray, keeps: list[int]) -> list[list[tuple[Any, float]]]:
        stages = [(field_name(d), prefix_view(Q, d), keep) for d, keep in zip(self.dims, keeps)]
        params: dict[str, Any] = {}
        if self.exact:
            params["exact"] = True
        if self.hnsw_ef is not None:
            params["hnsw_ef"] = self.hnsw_ef
        return self._collection.query(stages, params)


_QdrantCollection.funnel_class = QdrantFunnel


# --------------------------------------------------------------------- engines
class QdrantEngine(Engine):
    """Qdrant through qdrant-client: a server or cluster (``http(s)://`` URL, checked at once)
    or local mode (a folder, or ``:memory:``).

    Example:
        >>> engine = QdrantEngine(":memory:")
        >>> from nestemb.index import synthetic_matryoshka
        >>> f = engine.export(synthetic_matryoshka(50, 16), "docs", dims=(4, 16), shortlist=(10,))
        >>> engine.names(), len(engine.funnel("docs", exact=True))
        (['docs'], 50)
        >>> engine.close()
    """

    kind = "qdrant"
    export_options = ("quantize",)
    search_options = ("exact",)

    def __init__(self, url: str, api_key: str | None = None):
        self.url = url
        if url.startswith(("http://", "https://")):
            self.client = connect_qdrant(url, api_key=api_key)
        else:
            qc = require("qdrant_client")
            try:
                self.client = (qc.QdrantClient(":memory:") if url == ":memory:"
                               else qc.QdrantClient(path=url))
            except Exception as e:  # noqa: BLE001 - e.g. the folder is locked by another process
                raise NestembError(f"cannot open Qdrant local storage at {url!r}: {e}") from None
        self._closed = False

    def collection(self, name: str) -> QdrantCollection:
        return QdrantCollection(self.client, name, where=f"qdrant collection {name!r} at "
                                                         f"{self.url!r}")

    def names(self) -> list[str]:
        with _errors(f"qdrant at {self.url!r}"):
            return sorted(c.name for c in self.client.get_collections().collections)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()


class QdrantEdgeEngine(Engine):
    """Qdrant Edge: one shard folder per collection under the folder ``url`` (what
    :func:`export_qdrant_edge` writes; created with the first collection).

    Example:
        >>> import tempfile
        >>> from nestemb.index import synthetic_matryoshka
        >>> engine = QdrantEdgeEngine(tempfile.mkdtemp())
        >>> engine.export(synthetic_matryoshka(50, 16), "docs", dims=(16,), shortlist=()).close()
        >>> engine.names()
        ['docs']
    """

    kind = "qdrant-edge"
    export_options = ("quantize",)
    search_options = ("exact",)

    def __init__(self, url: str, api_key: str | None = None):
        require("qdrant_edge")
        self.url, self.root = url, Path(url)
        if self.root.exists() and not self.root.is_dir():
            raise NestembError(f"cannot use {url!r} for Qdrant Edge: not a folder")

    def collection(self, name: str, max_search_threads: int | None = None) -> EdgeCollection:
        return EdgeCollection(self.root / check_name(name), max_search_threads)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / EDGE_META).is_file())

    def export(self, source: Any, name: str, max_search_threads: int | None = None,
               **kw: Any) -> Funnel:
        return self.collection(name, max_search_threads).export(source, **kw)
