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

import contextlib
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from nestemb.backends.base import (
    ExportSource,
    FunnelBackend,
    collection_meta,
    export_source,
    field_name,
    read_meta,
)
from nestemb.errors import NestembError
from nestemb.nesting import Manifest, prefix_view

ID_KEY = "nestemb_id"
"""Payload key holding the nestemb id of points whose id is not a Qdrant point id."""

QUANTIZE = ("none", "int8")
EDGE_META = "nestemb.json"
EDGE_SHARD = "shard"
_NS = uuid.UUID("6b2c9a52-61b5-4d0e-9a52-6e657374656d")  # namespace of derived point ids


def _require(module: str, extra: str = "backends"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise NestembError(
            f"the {module.split('.')[0]} package is not installed: pip install 'nestemb[{extra}]'"
        ) from None


@contextlib.contextmanager
def _qdrant_errors(where: str) -> Iterator[None]:
    """Turn the client's transport and server errors into a NestembError naming ``where``."""
    try:
        yield
    except NestembError:
        raise
    except Exception as e:  # httpx / grpc / qdrant exceptions: a message, not a traceback
        mod = type(e).__module__ or ""
        if not mod.startswith(("qdrant_client", "httpx", "httpcore", "grpc")) and not isinstance(
            e, (ConnectionError, TimeoutError, OSError)
        ):
            raise
        raise NestembError(f"{where}: {type(e).__name__}: {e}") from None


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
    qc = _require("qdrant_client")
    if not isinstance(url, str) or not url.strip():
        raise NestembError(f"url must be a non-empty string, got {url!r}")
    client = qc.QdrantClient(url=url, api_key=api_key, timeout=max(1, int(np.ceil(timeout))),
                             check_compatibility=False, **kwargs)
    with _qdrant_errors(f"cannot reach Qdrant at {url!r}"):
        client.get_collections()
    return client


def _point_ids(ids: np.ndarray) -> tuple[list, bool]:
    """Qdrant point ids for nestemb ids, and whether the ids must travel in the payload."""
    if ids.dtype.kind == "i" and (len(ids) == 0 or ids.min() >= 0):
        return ids.tolist(), False
    return [str(uuid.uuid5(_NS, f"{ids.dtype.kind}:{i}")) for i in ids.tolist()], True


def _payloads(src: ExportSource, payload: Sequence[dict] | None, with_id: bool) -> list[dict] | None:
    if payload is None and not with_id:
        return None
    if payload is not None and len(payload) != len(src.ids):
        raise NestembError(f"payload has {len(payload)} entries for {len(src.ids)} vectors")
    out = []
    for j, i in enumerate(src.ids.tolist()):
        p = {} if payload is None else payload[j]
        if not isinstance(p, dict):
            raise NestembError(f"payload[{j}] must be a dict, got {type(p).__name__}")
        if ID_KEY in p:
            raise NestembError(f"payload[{j}] uses the reserved key {ID_KEY!r}")
        out.append({**p, ID_KEY: i} if with_id else dict(p))
    return out


def _hit_id(point: Any, with_id: bool) -> Any:
    """The nestemb id of a returned point: its payload's ``nestemb_id`` where the collection
    keeps ids there (a point written without one keeps its point id)."""
    if with_id and point.payload and ID_KEY in point.payload:
        return point.payload[ID_KEY]
    return point.id


# --------------------------------------------------------------------- engines
class _ClientEngine:
    """qdrant-client (a server, a cluster or local mode)."""

    def __init__(self, client: Any, collection: str):
        qc = _require("qdrant_client")
        if not isinstance(client, qc.QdrantClient):
            raise NestembError(f"client must be a qdrant_client.QdrantClient, got {type(client).__name__}")
        if not isinstance(collection, str) or not collection.strip():
            raise NestembError(f"collection must be a non-empty string, got {collection!r}")
        self.client, self.collection, self.models = client, collection, qc.models
        self.where = f"qdrant collection {collection!r}"

    def exists(self) -> bool:
        with _qdrant_errors(f"{self.where}: cannot reach Qdrant"):
            return bool(self.client.collection_exists(self.collection))

    def meta(self) -> Any:
        with _qdrant_errors(self.where):
            if not self.client.collection_exists(self.collection):
                raise NestembError(f"{self.where} does not exist")
            return self.client.get_collection(self.collection).config.metadata

    def drop(self) -> None:
        with _qdrant_errors(self.where):
            self.client.delete_collection(self.collection)

    def create(self, dims: Sequence[int], quantize: str, hnsw_m: int, ef_construct: int,
               meta: dict) -> None:
        m = self.models
        cfg = {}
        for j, d in enumerate(dims):
            first = j == 0 and len(dims) > 1
            cfg[field_name(d)] = m.VectorParams(
                size=int(d), distance=m.Distance.COSINE,
                hnsw_config=m.HnswConfigDiff(m=hnsw_m if first or len(dims) == 1 else 0,
                                             ef_construct=ef_construct),
                quantization_config=m.ScalarQuantization(scalar=m.ScalarQuantizationConfig(
                    type=m.ScalarType.INT8, always_ram=True)) if first and quantize == "int8" else None,
            )
        with _qdrant_errors(self.where):
            self.client.create_collection(self.collection, vectors_config=cfg, metadata=meta)

    def upsert(self, ids: list, views: dict[str, np.ndarray], payloads: list | None,
               batch_size: int) -> None:
        with _qdrant_errors(self.where):
            self.client.upload_collection(self.collection, vectors=views, ids=ids, payload=payloads,
                                          batch_size=batch_size, parallel=1, wait=True)

    def set_meta(self, meta: dict) -> None:
        with _qdrant_errors(self.where):
            self.client.update_collection(self.collection, metadata=meta)

    def query(self, stages: list[tuple[str, np.ndarray, int]], params: dict, with_id: bool):
        m = self.models
        sp = m.SearchParams(**params) if params else None
        nq = len(stages[0][1])
        requests = []
        for q in range(nq):
            pf = None
            for j, (name, views, keep) in enumerate(stages[:-1]):
                pf = m.Prefetch(query=views[q].tolist(), using=name, limit=keep, prefetch=pf,
                                params=sp if j == 0 else None)
            name, views, keep = stages[-1]
            requests.append(m.QueryRequest(
                query=views[q].tolist(), using=name, prefetch=pf, limit=keep,
                params=sp if pf is None else None, with_payload=[ID_KEY] if with_id else False,
            ))
        with _qdrant_errors(self.where), warnings.catch_warnings():
            # local mode scans exactly and says search params have no effect: known, not news
            warnings.filterwarnings("ignore", message="Local mode performs exact")
            res = self.client.query_batch_points(self.collection, requests=requests)
        return [[(_hit_id(p, with_id), p.score) for p in r.points] for r in res]

    def close(self) -> None:
        """The client belongs to the caller: nothing to release."""


class _EdgeEngine:
    """Qdrant Edge: Qdrant's engine in-process on a shard directory."""

    def __init__(self, path: str | Path):
        self.qe = _require("qdrant_edge")
        self.path = Path(path)
        self.where = f"qdrant edge shard {str(self.path)!r}"
        self.shard = None

    def exists(self) -> bool:
        return self.path.exists() and any(self.path.iterdir())

    def meta(self) -> Any:
        if not self.path.is_dir():
            raise NestembError(f"{self.where} does not exist")
        f = self.path / EDGE_META
        if not f.is_file():
            return None
        if self.shard is None:
            with _qdrant_errors(self.where):
                self.shard = self.qe.EdgeShard.load(str(self.path / EDGE_SHARD))
        return f.read_text()

    def drop(self) -> None:
        if self.shard is not None:
            self.shard.close()
            self.shard = None
        shutil.rmtree(self.path)

    def create(self, dims: Sequence[int], quantize: str, hnsw_m: int, ef_construct: int,
               meta: dict, max_search_threads: int | None = None) -> None:
        qe = self.qe
        vectors = {}
        for j, d in enumerate(dims):
            first = j == 0 and len(dims) > 1
            vectors[field_name(d)] = qe.EdgeVectorParams(
                size=int(d), distance=qe.Distance.Cosine,
                hnsw_config=qe.HnswIndexConfig(
                    m=hnsw_m if first or len(dims) == 1 else 0, ef_construct=ef_construct,
                    full_scan_threshold=10000, max_indexing_threads=1),
                quantization_config=qe.ScalarQuantizationConfig(
                    type=qe.ScalarType.Int8, always_ram=True) if first and quantize == "int8" else None,
            )
        # no write-ahead log: the export is all-or-nothing (flushed, then the manifest is
        # written last), so a WAL would only double the bytes on disk
        cfg = qe.EdgeConfig(vectors=vectors, max_search_threads=max_search_threads,
                            wal_enabled=False)
        self.path.mkdir(parents=True, exist_ok=True)
        with _qdrant_errors(self.where):
            self.shard = qe.EdgeShard.create(str(self.path / EDGE_SHARD), cfg)
        self.set_meta(meta)

    def upsert(self, ids: list, views: dict[str, np.ndarray], payloads: list | None,
               batch_size: int) -> None:
        qe = self.qe
        names = list(views)
        with _qdrant_errors(self.where):
            for a in range(0, len(ids), batch_size):
                rows = {n: views[n][a : a + batch_size].tolist() for n in names}
                pts = [
                    qe.Point(ids[a + r], {n: rows[n][r] for n in names},
                             None if payloads is None else payloads[a + r])
                    for r in range(len(rows[names[0]]))
                ]
                self.shard.update(qe.UpdateOperation.upsert_points(pts))
            self.shard.flush()
            self.shard.optimize()  # build the first stage's HNSW graph and quantized codes

    def set_meta(self, meta: dict) -> None:
        from nestemb.io import write_json

        write_json(self.path / EDGE_META, meta)

    def query(self, stages: list[tuple[str, np.ndarray, int]], params: dict, with_id: bool):
        qe = self.qe
        if self.shard is None:
            raise NestembError(f"{self.where} is closed: open it again with QdrantFunnel.open_edge")
        sp = qe.SearchParams(**params) if params else None
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
        with _qdrant_errors(self.where):
            if len(requests) == 1:
                res = [self.shard.query(requests[0])]
            else:
                res = self.shard.query_batch(qe.QueryBatchRequest(requests))
        return [[(_hit_id(p, with_id), p.score) for p in r] for r in res]

    def close(self) -> None:
        if self.shard is not None:
            self.shard.close()
            self.shard = None


# --------------------------------------------------------------------- export
def _export(engine, source, ids, *, dims, shortlist, nesting, model_id, model_version, manifest,
            payload, quantize, hnsw_m, ef_construct, overwrite, batch_size, create_kw=None):
    if quantize not in QUANTIZE:
        raise NestembError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    from nestemb.index.base import pos_int

    hnsw_m = pos_int(hnsw_m, "hnsw_m")
    ef_construct = pos_int(ef_construct, "ef_construct")
    batch_size = pos_int(batch_size, "batch_size")
    src = export_source(source, ids, dims=dims, shortlist=shortlist, nesting=nesting,
                        model_id=model_id, model_version=model_version, manifest=manifest)
    point_ids, with_id = _point_ids(src.ids)
    payloads = _payloads(src, payload, with_id)  # every input check before anything is dropped
    if engine.exists():
        if not overwrite:
            raise NestembError(f"{engine.where} already exists (set {{param}} to replace it)", param="overwrite")
        try:
            read_meta(engine.meta(), engine.where, allow_partial=True)
        except NestembError as e:
            raise NestembError(f"refusing to overwrite {engine.where}: {e}") from None
        engine.drop()
    quant = src.dims[0] + 4 if quantize == "int8" and len(src.dims) > 1 else 0
    kw = dict(quantize=quantize if quant else "none", quantized_bytes=quant, id_payload=with_id)
    try:
        engine.create(src.dims, quantize, hnsw_m, ef_construct,
                      collection_meta(src, "qdrant", complete=False, **kw), **(create_kw or {}))
        views = {field_name(d): np.ascontiguousarray(prefix_view(src.vectors, d)) for d in src.dims}
        engine.upsert(point_ids, views, payloads, batch_size)
        engine.set_meta(collection_meta(src, "qdrant", **kw))  # last: the export is complete
    except BaseException:
        engine.close()  # the collection stays marked partial
        raise


def export_qdrant(
    source: Any,
    client: Any,
    collection: str,
    ids: Sequence[Any] | None = None,
    *,
    dims: Sequence[int] | None = None,
    shortlist: Sequence[int] | None = None,
    nesting: Sequence[int] | None = None,
    model_id: str = "unknown",
    model_version: str = "unknown",
    manifest: Manifest | None = None,
    payload: Sequence[dict] | None = None,
    quantize: str = "int8",
    hnsw_m: int = 16,
    ef_construct: int = 100,
    overwrite: bool = False,
    batch_size: int = 256,
) -> "QdrantFunnel":
    """Export a fitted :class:`~nestemb.index.FunnelIndex` (or raw ``(n, D)`` vectors with
    ``ids``, ``dims``, ``shortlist`` and the model identity) into the Qdrant collection
    ``collection`` through ``client`` (a ``QdrantClient``: local mode, a server, or a cluster
    from :func:`connect_qdrant`); returns a :class:`QdrantFunnel` searching it with the same
    stage configuration.

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
    engine = _ClientEngine(client, collection)
    _export(engine, source, ids, dims=dims, shortlist=shortlist, nesting=nesting,
            model_id=model_id, model_version=model_version, manifest=manifest, payload=payload,
            quantize=quantize, hnsw_m=hnsw_m, ef_construct=ef_construct, overwrite=overwrite,
            batch_size=batch_size)
    return QdrantFunnel(client, collection)


def export_qdrant_edge(
    source: Any,
    path: str | Path,
    ids: Sequence[Any] | None = None,
    *,
    dims: Sequence[int] | None = None,
    shortlist: Sequence[int] | None = None,
    nesting: Sequence[int] | None = None,
    model_id: str = "unknown",
    model_version: str = "unknown",
    manifest: Manifest | None = None,
    payload: Sequence[dict] | None = None,
    quantize: str = "int8",
    hnsw_m: int = 16,
    ef_construct: int = 100,
    overwrite: bool = False,
    batch_size: int = 2048,
    max_search_threads: int | None = None,
) -> "QdrantFunnel":
    """Like :func:`export_qdrant`, into a Qdrant Edge shard at the directory ``path``
    (``qdrant-edge-py``: Qdrant's engine in-process; the shard lives in ``path/shard``, the
    collection manifest in ``path/nestemb.json``, marked complete only once every point is
    flushed; the shard is created without a write-ahead log, which an all-or-nothing export does
    not need). ``max_search_threads=1`` searches on one thread.

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
    if max_search_threads is not None:
        from nestemb.index.base import pos_int

        max_search_threads = pos_int(max_search_threads, "max_search_threads")
    engine = _EdgeEngine(path)
    _export(engine, source, ids, dims=dims, shortlist=shortlist, nesting=nesting,
            model_id=model_id, model_version=model_version, manifest=manifest, payload=payload,
            quantize=quantize, hnsw_m=hnsw_m, ef_construct=ef_construct, overwrite=overwrite,
            batch_size=batch_size, create_kw={"max_search_threads": max_search_threads})
    return QdrantFunnel._from_engine(engine)


# --------------------------------------------------------------------- search
class QdrantFunnel(FunnelBackend):
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
        self._setup(_ClientEngine(client, collection), dims, shortlist, manifest, exact, hnsw_ef)

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
        return cls._from_engine(_EdgeEngine(path), dims, shortlist, manifest, exact, hnsw_ef)

    @classmethod
    def _from_engine(cls, engine, dims=None, shortlist=None, manifest=None, exact=False,
                     hnsw_ef=None) -> "QdrantFunnel":
        self = cls.__new__(cls)
        self._setup(engine, dims, shortlist, manifest, exact, hnsw_ef)
        return self

    def _setup(self, engine, dims, shortlist, manifest, exact, hnsw_ef) -> None:
        from nestemb.index.base import pos_int

        self._engine, self.where = engine, engine.where
        self.exact = bool(exact)
        self.hnsw_ef = pos_int(hnsw_ef, "hnsw_ef", allow_none=True)
        try:
            self._configure(engine.meta(), dims, shortlist, manifest)
        except NestembError:
            engine.close()
            raise

    def search(self, Q: Any, k: int = 10, *, manifest: Manifest | None = None):
        """Top-``k`` of the funnel run inside Qdrant: ``(scores, ids)``, each
        ``(n_queries, k)``, like :meth:`nestemb.index.FunnelIndex.search` (scores are the
        cosine of the full vectors, ids the nestemb ids). ``manifest`` (the queries') is checked
        against the collection's.

        Example: see :class:`QdrantFunnel`.
        """
        return self._assemble(self.search_hits(Q, k, manifest=manifest), int(k))

    def search_hits(self, Q: Any, k: int = 10, *, manifest: Manifest | None = None,
                    count: int | None = None) -> list[list[tuple[Any, float]]]:
        """Like :meth:`search`, as one list of ``(id, score)`` per query (ids as stored: an int
        or a str, mixed if the collection mixes them); ``count`` is the number of points held
        now, for a collection written to after its export (the service's live collections).

        Example: see :class:`QdrantFunnel`.
        """
        Q, k, keeps = self._prepare(Q, k, manifest, count)
        stages = [(field_name(d), prefix_view(Q, d), keep) for d, keep in zip(self.dims, keeps)]
        params = {}
        if self.exact:
            params["exact"] = True
        if self.hnsw_ef is not None:
            params["hnsw_ef"] = self.hnsw_ef
        return self._engine.query(stages, params, bool(self.manifest_.extra.get("id_payload")))

    def close(self) -> None:
        """Release an Edge shard (a no-op for a ``QdrantClient``, which belongs to the caller)."""
        self._engine.close()
