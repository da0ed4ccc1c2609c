"""Vector databases holding Matryoshka points: one protocol, one registry.

- :mod:`nestemb.engines.base`: the protocol (:class:`~nestemb.engines.base.Collection`: create,
  upsert, delete, get, count, search a stage plan, read / write the manifest;
  :class:`~nestemb.engines.base.Engine`: the database holding collections;
  :class:`~nestemb.engines.base.Funnel`: a collection searched with a stage configuration) and
  what every engine shares (export source and flow, collection manifest, id and payload checks,
  result assembly).
- :mod:`nestemb.engines.qdrant`: a named vector per stage prefix (the shortest one int8
  quantized), the funnel compiled to the Query API's nested ``prefetch``; qdrant-client (a
  server, a cluster or local mode) and Qdrant Edge (in-process)
  (:func:`~nestemb.engines.qdrant.export_qdrant`,
  :func:`~nestemb.engines.qdrant.export_qdrant_edge`,
  :class:`~nestemb.engines.qdrant.QdrantFunnel`,
  :func:`~nestemb.engines.qdrant.connect_qdrant`).
- :mod:`nestemb.engines.milvus`: a ``FLOAT_VECTOR`` field per stage prefix, the funnel
  compiled to a search on the short field and re-rank searches on the longer ones
  (:func:`~nestemb.engines.milvus.export_milvus`,
  :class:`~nestemb.engines.milvus.MilvusFunnel`,
  :func:`~nestemb.engines.milvus.connect_milvus`).

The registry (:data:`REGISTRY`) maps an engine's name to its implementation and to where it
keeps its data inside a data folder; ``nestemb backend export|search``, ``nestemb serve
--backend`` and the benchmarks open engines through :func:`open_engine` only, and their
choices are :data:`ENGINES`.

The engines are optional: ``pip install 'nestemb[backends]'`` (qdrant-client, qdrant-edge-py,
pymilvus, milvus-lite). Importing this package imports none of them.

Example:
    >>> from nestemb.engines import ENGINES, field_name, default_url
    >>> field_name(64), ENGINES
    ('d64', ('qdrant-edge', 'qdrant', 'milvus'))
    >>> default_url("milvus", "/srv/data")
    '/srv/data/milvus.db'
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nestemb.engines.base import (
    COLLECTION_KIND,
    ID_KEY,
    NAME_RE,
    Collection,
    Engine,
    Funnel,
    Mismatch,
    Unsupported,
    check_name,
    disk_bytes,
    export_source,
    field_name,
)
from nestemb.engines.milvus import MilvusEngine
from nestemb.engines.qdrant import QdrantEdgeEngine, QdrantEngine
from nestemb.errors import NestembError


@dataclasses.dataclass(frozen=True)
class EngineEntry:
    """One engine of the registry: its implementation, where it keeps its data inside a data
    folder (``nestemb serve --data-dir``) and what its address is (for help texts)."""

    name: str
    engine: type[Engine]
    default: str
    address: str


REGISTRY: dict[str, EngineEntry] = {e.name: e for e in (
    EngineEntry("qdrant-edge", QdrantEdgeEngine, "qdrant-edge",
                "a folder: Qdrant's engine in-process, a shard folder per collection"),
    EngineEntry("qdrant", QdrantEngine, "qdrant",
                "a server/cluster URL, or a local-mode folder"),
    EngineEntry("milvus", MilvusEngine, "milvus.db",
                "a server/cluster URI, or a milvus-lite .db file"),
)}
"""Engine name -> implementation; the one list of engines."""

ENGINES: tuple[str, ...] = tuple(REGISTRY)
"""The engines' names (choices of ``--engine`` and ``--backend``)."""


def _entry(kind: str) -> EngineEntry:
    if kind not in REGISTRY:
        raise NestembError(f"{{param}} must be one of {ENGINES}, got {kind!r}", param="engine")
    return REGISTRY[kind]


def open_engine(kind: str, url: str, *, api_key: str | None = None) -> Engine:
    """The engine ``kind`` (one of :data:`ENGINES`) at ``url`` (a folder, a file or a server
    URL), checked at once: an unreachable or unusable address raises :class:`NestembError`
    naming it.

    Example:
        >>> open_engine("qdrant", "http://127.0.0.1:9")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: cannot reach Qdrant at 'http://127.0.0.1:9': ...
        >>> open_engine("faiss", "x")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: engine must be one of ('qdrant-edge', 'qdrant', 'milvus'), got 'faiss'
    """
    return _entry(kind).engine(url, api_key=api_key)


def default_url(kind: str, data_dir: str | Path) -> str:
    """Where engine ``kind`` keeps its data when no address is given: inside the data folder
    (``qdrant-edge/``, ``qdrant/``, ``milvus.db``).

    Example:
        >>> default_url("qdrant-edge", "/srv/data")
        '/srv/data/qdrant-edge'
    """
    return str(Path(data_dir) / _entry(kind).default)


__all__ = ["COLLECTION_KIND", "ENGINES", "ID_KEY", "NAME_RE", "REGISTRY", "Collection", "Engine",
           "EngineEntry", "Funnel", "Mismatch", "Unsupported", "check_name", "default_url",
           "disk_bytes", "export_source", "field_name", "open_engine"]
