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

The same collections serve ``nestemb serve --backend milvus`` (:class:`MilvusEngine`: the
primary key is the id's JSON text, so integer and string ids mix; a ``payload`` field; ``FLAT``
everywhere). One schema builder (:meth:`MilvusCollection._create`) serves both.

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

import json
from typing import Any, Sequence

import numpy as np

from nestemb.engines.base import (
    Collection,
    Engine,
    ExportSource,
    Funnel,
    Unsupported,
    engine_errors,
    field_name,
    point_key,
    require,
)
from nestemb.checks import non_empty_str
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
SERVICE_ID_BYTES = 1600
"""Primary-key width of a service collection: a point id's JSON text (256 characters, each up
to 6 bytes escaped, and the quotes)."""


def _errors(where: str):
    """Milvus's error wrapper: pymilvus / grpc / milvus-lite errors as a NestembError."""
    return engine_errors(where, ("pymilvus", "grpc", "milvus_lite"))


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
    pm = require("pymilvus")
    non_empty_str(uri, "uri")
    with _errors(f"cannot reach Milvus at {uri!r}"):
        return pm.MilvusClient(uri=uri, token=token, timeout=timeout, **kwargs)


class MilvusCollection(Collection):
    """A Milvus collection through a ``MilvusClient`` (which belongs to the caller). The
    primary key is the nestemb id in an export, its JSON text (:func:`point_key`) in a service
    collection."""

    kind = "milvus"
    service_layout = {"id_kind": "str", "id_max_bytes": SERVICE_ID_BYTES, "payload_field": True,
                      "index_type": "FLAT", "index_rerank_fields": True}
    exact_search = {"rerank": "client"}  # one round trip per batch, no primary-key filter

    def __init__(self, client: Any, collection: str, where: str | None = None):
        pm = require("pymilvus")
        if not isinstance(client, pm.MilvusClient):
            raise NestembError(f"{{param}} must be a pymilvus.MilvusClient, got "
                               f"{type(client).__name__}", param="client")
        non_empty_str(collection, "collection")
        self.client, self.name, self.pm = client, collection, pm
        self.where = where or f"milvus collection {collection!r}"
        self._has_payload: bool | None = None

    def exists(self) -> bool:
        with _errors(self.where):
            return bool(self.client.has_collection(self.name))

    def raw_meta(self) -> Any:
        with _errors(self.where):
            if not self.client.has_collection(self.name):
                raise NestembError(f"{self.where} does not exist")
            desc = self.client.describe_collection(self.name)
        self._has_payload = any(f["name"] == PAYLOAD for f in desc.get("fields", []))
        return (desc.get("properties") or {}).get(META_KEY)

    def write_meta(self, meta: dict) -> None:
        with _errors(self.where):
            self.client.alter_collection_properties(self.name,
                                                    properties={META_KEY: json.dumps(meta)})

    def _create(self, meta: dict) -> None:
        """The one schema builder: primary key, a vector field per stored prefix, the optional
        payload field, the first field's index and the re-rank fields' ``FLAT`` indexes."""
        pm, extra = self.pm, meta["extra"]
        schema = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        if extra["id_kind"] == "str":
            schema.add_field(PK, pm.DataType.VARCHAR, is_primary=True,
                             max_length=int(extra["id_max_bytes"]))
        else:
            schema.add_field(PK, pm.DataType.INT64, is_primary=True)
        for d in extra["stored_dims"]:
            schema.add_field(field_name(d), pm.DataType.FLOAT_VECTOR, dim=int(d))
        self._has_payload = bool(extra.get("payload_field"))
        if self._has_payload:
            schema.add_field(PAYLOAD, pm.DataType.JSON)
        index_params = self.client.prepare_index_params()
        for j, d in enumerate(extra["stored_dims"]):
            if j == 0 and extra["index_type"] == "HNSW":
                index_params.add_index(field_name(d), index_type="HNSW", metric_type="IP",
                                       params={"M": int(extra["hnsw_m"]),
                                               "efConstruction": int(extra["ef_construction"])})
            elif j == 0 or extra.get("index_rerank_fields", True):
                index_params.add_index(field_name(d), index_type="FLAT", metric_type="IP")
        with _errors(self.where):
            self.client.create_collection(self.name, schema=schema, index_params=index_params,
                                          consistency_level="Strong",
                                          properties={META_KEY: json.dumps(meta)})
            self.client.load_collection(self.name)

    def drop(self) -> None:
        with _errors(self.where):
            self.client.drop_collection(self.name)

    def _layout(self, src: ExportSource, payload, *, index_type: str = "FLAT",
                hnsw_m: int = 16, ef_construction: int = 100,
                index_rerank_fields: bool = True) -> dict[str, Any]:
        from nestemb.checks import positive_int

        if index_type not in INDEX_TYPES:
            raise NestembError(f"{{param}} must be one of {INDEX_TYPES}, got {index_type!r}",
                               param="index_type")
        out = dict(index_type=index_type, index_rerank_fields=bool(index_rerank_fields),
                   hnsw_m=positive_int(hnsw_m, "hnsw_m"),
                   ef_construction=positive_int(ef_construction, "ef_construction"),
                   payload_field=payload is not None)
        if src.ids.dtype.kind == "U":
            width = max([len(i.encode()) for i in src.ids.tolist()] + [1])
            if width > 65535:
                raise NestembError(f"ids must be at most 65535 bytes for Milvus, got {width}",
                                   param="ids")
            out["id_max_bytes"] = width
        return out

    def _pk(self, pid: Any) -> Any:
        return point_key(pid) if self.service_ids else pid

    def _decode(self, raw: Any) -> Any:
        return json.loads(raw) if self.service_ids else raw

    @property
    def has_payload(self) -> bool:
        if self._has_payload is None:
            self.raw_meta()
        return bool(self._has_payload)

    def write(self, ids, views, payloads, batch_size, fresh=False):
        if not self.has_payload and payloads and any(payloads):
            raise Unsupported("points", f"{self.where} has no payload field (exported without "
                              "payloads): send points without payload")
        names = {d: field_name(d) for d in views}
        with _errors(self.where):
            for a in range(0, len(ids), batch_size):
                rows = []
                for r in range(a, min(len(ids), a + batch_size)):
                    row = {PK: self._pk(ids[r]), **{names[d]: v[r] for d, v in views.items()}}
                    if self.has_payload:
                        row[PAYLOAD] = {} if payloads is None else payloads[r]
                    rows.append(row)
                (self.client.insert if fresh else self.client.upsert)(self.name, rows)

    def _finish(self) -> None:
        with _errors(self.where):
            self.client.flush(self.name)
            self.client.load_collection(self.name)

    def _remove(self, ids):
        with _errors(self.where):
            self.client.delete(self.name, ids=[self._pk(i) for i in ids])

    def fetch(self, ids, vectors=True):
        full = field_name(self.manifest_.dim)
        fields = ([full] if vectors else []) + ([PAYLOAD] if self.has_payload else [])
        with _errors(self.where):
            rows = self.client.get(self.name, ids=[self._pk(i) for i in ids],
                                   output_fields=fields or [PK])
        return {point_key(self._decode(r[PK])): (
            np.asarray(r[full], dtype=np.float32) if vectors else None,
            dict(r.get(PAYLOAD) or {})) for r in rows}

    def count(self) -> int:
        with _errors(self.where):
            res = self.client.query(self.name, filter="", output_fields=["count(*)"],
                                    consistency_level="Strong")
        return int(res[0]["count(*)"])

    def search_field(self, data: np.ndarray, d: int, limit: int, params: dict, expr: str = "",
                     output: list[str] | None = None) -> list:
        """One Milvus search of the stored ``d``-prefix field (``IP``), optionally filtered."""
        with _errors(self.where):
            return self.client.search(self.name, data=[r for r in data],
                                      anns_field=field_name(d), limit=limit, filter=expr,
                                      output_fields=output or [],
                                      search_params={"metric_type": "IP", "params": params})

    def load(self) -> None:
        with _errors(self.where):  # a collection is released when its process ended
            self.client.load_collection(self.name)


def export_milvus(
    source: Any, client: Any, collection: str, ids: Sequence[Any] | None = None, **options: Any
) -> "MilvusFunnel":
    """Export a fitted :class:`~nestemb.index.FunnelIndex` (or raw ``(n, D)`` vectors with
    ``ids``, ``dims``, ``shortlist`` and the model identity) into the Milvus collection
    ``collection`` through ``client`` (a ``MilvusClient``: milvus-lite ``"./x.db"``, a server, or
    :func:`connect_milvus`); returns a :class:`MilvusFunnel` with the same stage configuration.

    ``options``: those of :meth:`~nestemb.engines.base.Collection.export` (``dims``,
    ``shortlist``, ``nesting``, ``model_id``, ``model_version``, ``manifest``, ``payload``,
    ``overwrite``, ``batch_size``, default 5000) and Milvus's layout: ``index_type``
    (``"FLAT"`` or ``"HNSW"``, with ``hnsw_m`` / ``ef_construction`` for the first field) and
    ``index_rerank_fields``; see the module docstring. ``payload`` (one dict
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
    options.setdefault("batch_size", 5000)
    funnel = MilvusCollection(client, collection).export(source, ids, **options)
    assert isinstance(funnel, MilvusFunnel)  # the collection's funnel_class
    return funnel


class MilvusFunnel(Funnel):
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

    _collection: MilvusCollection

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
        self._open(MilvusCollection(client, collection), dims, shortlist, manifest, True,
                   rerank=rerank, search_params=search_params)

    def _setup(self, rerank: str = "server", search_params: dict | None = None) -> None:
        if rerank not in RERANK:
            raise NestembError(f"{{param}} must be one of {RERANK}, got {rerank!r}",
                               param="rerank")
        if search_params is not None and not isinstance(search_params, dict):
            raise NestembError(f"{{param}} must be a dict, got {type(search_params).__name__}",
                               param="search_params")
        self.rerank, self.search_params = rerank, dict(search_params or {})

    def _ready(self) -> None:
        self._collection.load()
        if self.shortlist and self.shortlist[0] > MAX_TOPK:
            raise NestembError(
                f"shortlist {self.shortlist}: Milvus returns at most {MAX_TOPK} hits per search"
            )

    def _hits(self, Q: np.ndarray, keeps: list[int]) -> list[list[tuple[Any, float]]]:
        col, dims = self._collection, self.dims
        later = [field_name(d) for d in dims[1:]]
        first = col.search_field(prefix_view(Q, dims[0]), dims[0], keeps[0], self.search_params,
                                 output=later if self.rerank == "client" else None)
        hits = [[(h[PK], float(h["distance"])) for h in row] for row in first]
        if len(dims) > 1 and self.rerank == "server":
            for d, keep in zip(dims[1:], keeps[1:]):
                Qd = prefix_view(Q, d)
                for q, row in enumerate(hits):
                    if not row:
                        continue
                    expr = f"{PK} in {json.dumps([i for i, _ in row])}"
                    res = col.search_field(Qd[q : q + 1], d, min(keep, len(row)), {}, expr)[0]
                    hits[q] = [(h[PK], float(h["distance"])) for h in res]
        elif len(dims) > 1:
            hits = self._client_rerank(Q, first, keeps)
        return [[(col._decode(i), s) for i, s in row] for row in hits]

    def _client_rerank(self, Q: np.ndarray, first: list, keeps: list[int]
                       ) -> list[list[tuple[Any, float]]]:
        """The shortlist's stored views, re-scored in one numpy call per stage."""
        nq, s = len(first), max(1, max(len(row) for row in first))
        ids = [[h[PK] for h in row] for row in first]
        cand = np.broadcast_to(np.arange(s), (nq, s)).copy()  # positions in the shortlist
        alive = np.zeros((nq, s), dtype=bool)
        for q, row in enumerate(first):
            alive[q, : len(row)] = True
        for d, keep in zip(self.dims[1:], keeps[1:]):
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


MilvusCollection.funnel_class = MilvusFunnel


class MilvusEngine(Engine):
    """Milvus through pymilvus: a server or cluster (``http(s)://`` URI, checked at once) or
    milvus-lite (a ``.db`` file).

    Example:
        >>> MilvusEngine("/nonexistent/folder/m.db")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: cannot open milvus-lite file '/nonexistent/folder/m.db': folder /nonexistent/folder does not exist
    """

    kind = "milvus"
    search_options = ("rerank",)

    def __init__(self, url: str, api_key: str | None = None):
        from pathlib import Path

        self.url = url
        if not url.startswith(("http://", "https://", "tcp://")):
            parent = Path(url).parent
            if not parent.is_dir():
                raise NestembError(f"cannot open milvus-lite file {url!r}: folder {parent} "
                                   "does not exist")
        self.client = connect_milvus(url, token=api_key or "")
        self._closed = False

    def collection(self, name: str) -> MilvusCollection:
        return MilvusCollection(self.client, name,
                                where=f"milvus collection {name!r} at {self.url!r}")

    def names(self) -> list[str]:
        with _errors(f"milvus at {self.url!r}"):
            return sorted(self.client.list_collections())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()
