"""Milvus mapping of a funnel: one ``FLOAT_VECTOR`` field per stage prefix, the funnel compiled
to a search on the short field and a re-rank of its shortlist on the longer fields.

Layout of an exported collection: a primary key ``id`` (``INT64``, or ``VARCHAR`` for string
ids, holding the nestemb id), a ``FLOAT_VECTOR`` field ``d{m}`` for every stage prefix ``m``
(the full vector included) holding the :func:`~nestemb.nesting.prefix_view` of the point
(sliced, then L2-normalized), indexed with metric ``IP`` (so scores are the cosines nestemb's
funnel computes), and an optional ``JSON`` field ``payload``. The first field gets
``index_type`` (``"FLAT"``: exact; ``"HNSW"``: a graph); the re-rank fields get ``FLAT``
(Milvus loads a collection only when every vector field has an index; with milvus-lite,
``index_rerank_fields=False`` skips those indexes, which only copy the vectors). The collection
manifest (model identity, nesting, stored prefixes, default stages, id type) is stored in the
collection property ``nestemb.manifest`` and checked by every :class:`MilvusFunnel`; it is
marked complete only after every row is written, so an interrupted export is refused.

Where the re-rank runs. Milvus has no cascade search (a search scores one field; milvus#51187
asks for one), and ``hybrid_search`` runs every route over the whole collection and fuses the
lists, which is not a re-rank. Two compilations are offered:

- ``rerank="server"`` (default): the re-rank runs in Milvus as a second search on the longer
  field restricted to the shortlist by a primary-key filter (``id in [...]``, limit = the next
  stage's size): the full vectors never leave the server, at the cost of one round trip per
  query and re-rank stage (a filter is per request, so queries of a batch cannot share it).
- ``rerank="client"``: the first-stage search returns the shortlist's re-rank fields
  (``output_fields``) and nestemb re-scores them in one vectorized numpy call per stage: one
  round trip per batch, ``shortlist x D x 4`` bytes per query on the wire.

Engines: a Milvus server or cluster, ``client = connect_milvus("http://milvus:19530",
token=...)`` (checked at once: an unreachable address raises :class:`NestembError`), or
milvus-lite, ``MilvusClient("./file.db")`` (pymilvus starts it in-process; same client API).

Example:
    >>> import tempfile, pathlib
    >>> from pymilvus import MilvusClient
    >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
    >>> X = synthetic_matryoshka(300, 32, seed=0)
    >>> index = FunnelIndex(dims=(8, 32), shortlist=(60,), model_id="demo").add(X)
    >>> client = MilvusClient(str(pathlib.Path(tempfile.mkdtemp()) / "demo.db"))
    >>> funnel = export_milvus(index, client, "docs")
    >>> funnel.search(X[:2], k=3)[1][:, 0].tolist()
    [0, 1]
    >>> client.close()
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator, Sequence

import numpy as np

from nestemb.backends.base import (
    FunnelBackend,
    collection_meta,
    export_source,
    field_name,
    read_meta,
)
from nestemb.errors import NestembError
from nestemb.exact import topk
from nestemb.nesting import Manifest, prefix_view

META_KEY = "nestemb.manifest"
"""The collection property holding the nestemb manifest (JSON)."""

PK = "id"
PAYLOAD = "payload"
INDEX_TYPES = ("FLAT", "HNSW")
RERANK = ("server", "client")
MAX_TOPK = 16384
"""Milvus's largest ``limit`` of one search (a shortlist above it is refused)."""


def _pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise NestembError(
            "the pymilvus package is not installed: pip install 'nestemb[backends]'"
        ) from None
    return pymilvus


@contextlib.contextmanager
def _milvus_errors(where: str) -> Iterator[None]:
    """Turn pymilvus / grpc errors into a NestembError naming ``where``."""
    try:
        yield
    except NestembError:
        raise
    except Exception as e:
        mod = type(e).__module__ or ""
        if not mod.startswith(("pymilvus", "grpc", "milvus_lite")):
            raise
        raise NestembError(f"{where}: {getattr(e, 'message', None) or e}") from None


def connect_milvus(uri: str, *, token: str = "", timeout: float = 5.0, **kwargs: Any):
    """A ``MilvusClient`` for the Milvus server or cluster at ``uri`` (or a milvus-lite file
    ``./name.db``), connected at once: an unreachable address raises :class:`NestembError`.
    Extra keyword arguments go to ``MilvusClient`` (``user``, ``password``, ``db_name`` ...).

    Example:
        >>> connect_milvus("http://127.0.0.1:9", timeout=1)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: cannot reach Milvus at 'http://127.0.0.1:9': ...
    """
    pm = _pymilvus()
    if not isinstance(uri, str) or not uri.strip():
        raise NestembError(f"uri must be a non-empty string, got {uri!r}")
    with _milvus_errors(f"cannot reach Milvus at {uri!r}"):
        return pm.MilvusClient(uri=uri, token=token, timeout=timeout, **kwargs)


def _check_client(client: Any, collection: str) -> str:
    pm = _pymilvus()
    if not isinstance(client, pm.MilvusClient):
        raise NestembError(f"client must be a pymilvus.MilvusClient, got {type(client).__name__}")
    if not isinstance(collection, str) or not collection.strip():
        raise NestembError(f"collection must be a non-empty string, got {collection!r}")
    return f"milvus collection {collection!r}"


def _read_properties(client: Any, collection: str, where: str) -> Any:
    with _milvus_errors(where):
        if not client.has_collection(collection):
            raise NestembError(f"{where} does not exist")
        desc = client.describe_collection(collection)
    return (desc.get("properties") or {}).get(META_KEY)


def export_milvus(
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
    index_type: str = "FLAT",
    hnsw_m: int = 16,
    ef_construction: int = 100,
    index_rerank_fields: bool = True,
    overwrite: bool = False,
    batch_size: int = 5000,
) -> "MilvusFunnel":
    """Export a fitted :class:`~nestemb.index.FunnelIndex` (or raw ``(n, D)`` vectors with
    ``ids``, ``dims``, ``shortlist`` and the model identity) into the Milvus collection
    ``collection`` through ``client`` (a ``MilvusClient``: milvus-lite ``"./x.db"``, a server, or
    :func:`connect_milvus`); returns a :class:`MilvusFunnel` with the same stage configuration.

    Layout and index choices: see the module docstring (``index_type`` ``"FLAT"`` or
    ``"HNSW"`` with ``hnsw_m`` / ``ef_construction`` for the first field). ``payload`` (one dict
    per vector) goes to a JSON field. An existing collection is refused unless
    ``overwrite=True``, and even then only a collection exported by nestemb is replaced.

    Example:
        >>> import tempfile, pathlib
        >>> from pymilvus import MilvusClient
        >>> from nestemb.index import synthetic_matryoshka
        >>> client = MilvusClient(str(pathlib.Path(tempfile.mkdtemp()) / "x.db"))
        >>> X = synthetic_matryoshka(100, 16)
        >>> f = export_milvus(X, client, "c", ids=[f"doc{i}" for i in range(100)],
        ...                   dims=(4, 16), shortlist=(20,), model_id="demo")
        >>> f.search(X[7], k=1)[1].tolist()
        [['doc7']]
        >>> export_milvus(X, client, "c", dims=(4, 16), shortlist=(20,))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: milvus collection 'c' already exists (set overwrite to replace it)
        >>> client.close()
    """
    from nestemb.index.base import pos_int

    pm = _pymilvus()
    where = _check_client(client, collection)
    if index_type not in INDEX_TYPES:
        raise NestembError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
    hnsw_m = pos_int(hnsw_m, "hnsw_m")
    ef_construction = pos_int(ef_construction, "ef_construction")
    batch_size = pos_int(batch_size, "batch_size")
    src = export_source(source, ids, dims=dims, shortlist=shortlist, nesting=nesting,
                        model_id=model_id, model_version=model_version, manifest=manifest)
    if payload is not None:
        if len(payload) != len(src.ids):
            raise NestembError(f"payload has {len(payload)} entries for {len(src.ids)} vectors")
        bad = [j for j, p in enumerate(payload) if not isinstance(p, dict)]
        if bad:
            raise NestembError(f"payload[{bad[0]}] must be a dict, got {type(payload[bad[0]]).__name__}")
    with _milvus_errors(where):
        exists = client.has_collection(collection)
    if exists:
        if not overwrite:
            raise NestembError(f"{where} already exists (set {{param}} to replace it)", param="overwrite")
        try:
            read_meta(_read_properties(client, collection, where), where, allow_partial=True)
        except NestembError as e:
            raise NestembError(f"refusing to overwrite {where}: {e}") from None
        with _milvus_errors(where):
            client.drop_collection(collection)

    string = src.ids.dtype.kind == "U"
    kw = dict(index_type=index_type, index_rerank_fields=bool(index_rerank_fields))
    schema = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    if string:
        width = max(1, max(len(i.encode()) for i in src.ids.tolist()))
        if width > 65535:
            raise NestembError(f"ids must be at most 65535 bytes for Milvus, got {width}")
        schema.add_field(PK, pm.DataType.VARCHAR, is_primary=True, max_length=width)
    else:
        schema.add_field(PK, pm.DataType.INT64, is_primary=True)
    for d in src.dims:
        schema.add_field(field_name(d), pm.DataType.FLOAT_VECTOR, dim=int(d))
    if payload is not None:
        schema.add_field(PAYLOAD, pm.DataType.JSON)
    index_params = client.prepare_index_params()
    for j, d in enumerate(src.dims):
        if j == 0 and index_type == "HNSW":
            index_params.add_index(field_name(d), index_type="HNSW", metric_type="IP",
                                   params={"M": hnsw_m, "efConstruction": ef_construction})
        elif j == 0 or index_rerank_fields:
            index_params.add_index(field_name(d), index_type="FLAT", metric_type="IP")
    views = {field_name(d): prefix_view(src.vectors, d).astype(np.float32) for d in src.dims}
    ids_list = src.ids.tolist()
    with _milvus_errors(where):
        client.create_collection(collection, schema=schema, index_params=index_params,
                                 properties={META_KEY: json.dumps(
                                     collection_meta(src, "milvus", complete=False, **kw))})
        for a in range(0, len(ids_list), batch_size):
            rows = []
            for r in range(a, min(len(ids_list), a + batch_size)):
                row = {PK: ids_list[r], **{n: v[r] for n, v in views.items()}}
                if payload is not None:
                    row[PAYLOAD] = payload[r]
                rows.append(row)
            client.insert(collection, rows)
        client.flush(collection)
        client.load_collection(collection)
        client.alter_collection_properties(collection, properties={META_KEY: json.dumps(
            collection_meta(src, "milvus", **kw))})  # last: the export is complete
    return MilvusFunnel(client, collection)


class MilvusFunnel(FunnelBackend):
    """Search a collection exported by :func:`export_milvus` with the funnel compiled to Milvus
    searches (see the module docstring for ``rerank="server"`` vs ``"client"``).

    Args:
        client: a ``MilvusClient`` (milvus-lite, a server, or :func:`connect_milvus`).
        collection: the collection's name.
        dims, shortlist: stage configuration (default: the one exported); every stage dim must
            be a stored field of the collection.
        manifest: the manifest of the embeddings you will search with; checked against the
            collection's at once (model id, version, nesting).
        rerank: ``"server"`` (filtered searches inside Milvus) or ``"client"`` (one numpy call
            per stage on the fetched shortlist).
        search_params: engine parameters of the first-stage search (e.g. ``{"ef": 256}`` for
            HNSW).

    Attributes:
        manifest_: the collection's manifest.

    Example:
        >>> import tempfile, pathlib
        >>> from pymilvus import MilvusClient
        >>> from nestemb.index import synthetic_matryoshka
        >>> client = MilvusClient(str(pathlib.Path(tempfile.mkdtemp()) / "x.db"))
        >>> X = synthetic_matryoshka(100, 16)
        >>> _ = export_milvus(X, client, "c", dims=(4, 16), shortlist=(20,), model_id="a")
        >>> MilvusFunnel(client, "c", rerank="client").search(X[3], k=1)[1].item()
        3
        >>> MilvusFunnel(client, "c", dims=(16,))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: shortlist is required with dims (16,) ...
        >>> client.close()
    """

    def __init__(
        self,
        client: Any,
        collection: str,
        *,
        dims: Sequence[int] | None = None,
        shortlist: Sequence[int] | None = None,
        manifest: Manifest | None = None,
        rerank: str = "server",
        search_params: dict | None = None,
    ):
        self.where = _check_client(client, collection)
        if rerank not in RERANK:
            raise NestembError(f"rerank must be one of {RERANK}, got {rerank!r}")
        if search_params is not None and not isinstance(search_params, dict):
            raise NestembError(f"search_params must be a dict, got {type(search_params).__name__}")
        self.client, self.collection = client, collection
        self.rerank, self.search_params = rerank, dict(search_params or {})
        self._configure(_read_properties(client, collection, self.where), dims, shortlist, manifest)
        with _milvus_errors(self.where):  # a collection is released when its process ended
            client.load_collection(collection)
        if self.shortlist and self.shortlist[0] > MAX_TOPK:
            raise NestembError(
                f"shortlist {self.shortlist}: Milvus returns at most {MAX_TOPK} hits per search"
            )

    def _search(self, data: np.ndarray, d: int, limit: int, expr: str = "",
                output: list[str] | None = None) -> list:
        params = {"metric_type": "IP", "params": self.search_params if not expr else {}}
        with _milvus_errors(self.where):
            return self.client.search(self.collection, data=[r for r in data],
                                      anns_field=field_name(d), limit=limit, filter=expr,
                                      output_fields=output or [], search_params=params)

    def search(self, Q: Any, k: int = 10, *, manifest: Manifest | None = None):
        """Top-``k`` of the funnel over the Milvus collection: ``(scores, ids)``, each
        ``(n_queries, k)``, like :meth:`nestemb.index.FunnelIndex.search`. ``manifest`` (the
        queries') is checked against the collection's.

        Example: see :class:`MilvusFunnel`.
        """
        return self._assemble(self.search_hits(Q, k, manifest=manifest), int(k))

    def search_hits(self, Q: Any, k: int = 10, *, manifest: Manifest | None = None,
                    count: int | None = None) -> list[list[tuple[Any, float]]]:
        """Like :meth:`search`, as one list of ``(id, score)`` per query (primary keys as
        stored); ``count`` is the number of rows held now, for a collection written to after
        its export (the service's live collections).

        Example: see :class:`MilvusFunnel`.
        """
        Q, k, keeps = self._prepare(Q, k, manifest, count)
        dims = self.dims
        later = [field_name(d) for d in dims[1:]]
        first = self._search(prefix_view(Q, dims[0]), dims[0], keeps[0],
                             output=later if self.rerank == "client" else None)
        hits = [[(h[PK], float(h["distance"])) for h in row] for row in first]
        if len(dims) == 1:
            return hits
        if self.rerank == "server":
            for d, keep in zip(dims[1:], keeps[1:]):
                Qd = prefix_view(Q, d)
                for q, row in enumerate(hits):
                    if not row:
                        continue
                    expr = f"{PK} in {json.dumps([i for i, _ in row])}"
                    res = self._search(Qd[q : q + 1], d, min(keep, len(row)), expr)[0]
                    hits[q] = [(h[PK], float(h["distance"])) for h in res]
            return hits
        # client re-rank: the shortlist's stored views, re-scored in one numpy call per stage
        nq, s = len(first), max(1, max(len(row) for row in first))
        ids = [[h[PK] for h in row] for row in first]
        cand = np.broadcast_to(np.arange(s), (nq, s)).copy()  # positions in the shortlist
        alive = np.zeros((nq, s), dtype=bool)
        for q, row in enumerate(first):
            alive[q, : len(row)] = True
        for d, keep in zip(dims[1:], keeps[1:]):
            name = field_name(d)
            V = np.zeros((nq, s, d), dtype=np.float32)  # views as stored (normalized)
            for q, row in enumerate(first):
                if row:
                    V[q, : len(row)] = np.asarray([h["entity"][name] for h in row], np.float32)
            V = np.take_along_axis(V, cand[:, :, None], axis=1)
            sc = np.einsum("qsd,qd->qs", V, prefix_view(Q, d))
            sc[~alive] = -np.inf
            best, order = topk(sc, keep)
            cand, alive = np.take_along_axis(cand, order, axis=1), np.isfinite(best)
        return [[(ids[q][p], float(b)) for p, b, ok in zip(cand[q], best[q], alive[q]) if ok]
                for q in range(nq)]
