"""The engine protocol: a *collection* of Matryoshka points in a vector database
(:class:`Collection`: create, upsert, delete, get, count, search a stage plan, read / write its
manifest), the *engine* holding collections (:class:`Engine`), and a *funnel* searching one
collection with a stage configuration (:class:`Funnel`). What every engine shares lives here:
the export source (a :class:`~nestemb.index.FunnelIndex` or raw vectors), the collection
manifest, id and payload checks, the export flow, result assembly and stored-bytes accounting;
each engine module implements the engine calls once (:mod:`nestemb.engines.qdrant`,
:mod:`nestemb.engines.milvus`).

A collection written by nestemb holds one vector per *stored prefix* (the stage dims of the
funnel: the shortlist prefix, any intermediate re-rank prefixes and the full vector), each
stored as its :func:`~nestemb.nesting.prefix_view` (sliced, then L2-normalized), so the engine's
cosine / inner-product score of a stored prefix is exactly the score nestemb's funnel gives it.
Its manifest (model identity, nesting, stored prefixes, default stage configuration, id type,
the engine's layout options) travels with the collection, and every search checks it.

Two kinds of collections share that layout: an *export* (``nestemb backend export``, one id
type, written once) and a *service* collection (``nestemb serve --backend``: every nesting
prefix stored, integer and string ids mixed, written point by point; ``id_mode="service"``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Iterator, Self, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.nesting import Manifest, check_compatible, check_vectors, prefix_view

COLLECTION_KIND = "vector-db-collection"
"""The manifest ``kind`` of a collection written by :mod:`nestemb.engines`."""

FORMAT_VERSION = 1
"""Version of the collection layout (named vector / field per prefix, ``d{m}`` names)."""

ID_KEY = "nestemb_id"
"""Payload key reserved for the nestemb id (Qdrant keeps ids that are not point ids there)."""

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""Collection names (the service's and the engines': also a folder name for Qdrant Edge)."""


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
        field = self.param
        assert field is not None, "Unsupported is always about a field"
        return field


class Mismatch(NestembError):
    """A collection's metadata disagrees with what the engine holds (answered with 409)."""


def check_name(name: Any, param: str = "collection") -> str:
    """A collection name as the service and the engines take it (1-64 letters, digits, ``_``
    or ``-``, starting with a letter or digit), else an error about ``param``.

    Example:
        >>> check_name("docs-2")
        'docs-2'
        >>> check_name("../up")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: collection: invalid name '../up': use 1-64 letters, digits, '_' or '-', starting with a letter or digit
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise NestembError(f"invalid name {name!r}: use 1-64 letters, digits, '_' or '-', "
                           "starting with a letter or digit", param=param)
    return name


def require(module: str, extra: str = "backends"):
    """Import an optional engine client, or say which extra installs it.

    Example:
        >>> require("nestemb_no_such_engine")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: the nestemb_no_such_engine package is not installed: pip install 'nestemb[backends]'
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise NestembError(
            f"the {module.split('.')[0]} package is not installed: pip install 'nestemb[{extra}]'"
        ) from None


@contextlib.contextmanager
def engine_errors(where: str, modules: tuple[str, ...],
                  also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn an engine client's transport and server errors (raised from ``modules``, or of the
    types ``also``) into a :class:`NestembError` naming ``where``: a message, not a traceback.
    Each engine module wraps its client calls with it once.

    Example:
        >>> with engine_errors("qdrant collection 'c'", ("qdrant_client",), (OSError,)):
        ...     raise ConnectionRefusedError("refused")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: qdrant collection 'c': ConnectionRefusedError: refused
    """
    try:
        yield
    except NestembError:
        raise
    except Exception as e:
        if not (type(e).__module__ or "").startswith(modules) and not isinstance(e, also):
            raise
        message = getattr(e, "message", None)
        raise NestembError(f"{where}: {message or f'{type(e).__name__}: {e}'}") from None


def point_key(pid: Any) -> str:
    """The canonical text of a point id (its JSON: ``5`` and ``"5"`` differ); a Milvus
    collection of the service keys its rows by it.

    Example:
        >>> point_key(5), point_key("5")
        ('5', '"5"')
    """
    return json.dumps(pid)


def field_name(m: int) -> str:
    """The name of the stored ``m``-prefix view (a Qdrant named vector, a Milvus field).

    Example:
        >>> field_name(16)
        'd16'
    """
    return f"d{int(m)}"


@dataclasses.dataclass
class ExportSource:
    """Vectors to export with their ids, manifest and stage configuration (see
    :func:`export_source`).

    Attributes:
        vectors: ``(n, D)`` float32 raw embeddings (views are taken per stored prefix).
        ids: ``(n,)`` int64 or unicode ids.
        manifest: model identity and nesting (``kind`` is :data:`COLLECTION_KIND`).
        dims: stage dims of the funnel (stored prefixes), last = ``D``.
        shortlist: candidates kept after each stage but the last.
    """

    vectors: np.ndarray
    ids: np.ndarray
    manifest: Manifest
    dims: tuple[int, ...]
    shortlist: tuple[int, ...]


def export_source(
    source: Any,
    ids: Sequence[Any] | None = None,
    *,
    dims: Sequence[int] | None = None,
    shortlist: Sequence[int] | None = None,
    nesting: Sequence[int] | None = None,
    model_id: str = "unknown",
    model_version: str = "unknown",
    manifest: Manifest | None = None,
) -> ExportSource:
    """Resolve what to export: a fitted :class:`~nestemb.index.FunnelIndex` (its live vectors,
    ids, manifest and stage configuration; ``dims`` / ``shortlist`` override the latter) or a
    raw ``(n, D)`` array (then ``dims`` and ``shortlist`` are required, ids default to
    ``0..n-1`` and the identity comes from ``manifest`` or ``nesting`` / ``model_id`` /
    ``model_version``). The stage configuration is validated by the
    :class:`~nestemb.index.FunnelIndex` constructor, so it obeys the same rules.

    Example:
        >>> from nestemb.index import synthetic_matryoshka
        >>> src = export_source(synthetic_matryoshka(10, 32), dims=(8, 32), shortlist=(5,),
        ...                     model_id="demo")
        >>> src.dims, src.manifest.nesting, src.ids[:3].tolist()
        ((8, 32), (8, 32), [0, 1, 2])
        >>> export_source(synthetic_matryoshka(10, 32), dims=(8, 32))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: shortlist is required when exporting raw vectors (one size per stage but the last)
    """
    from nestemb.index import FunnelIndex
    from nestemb.index.base import PrefixIndex, normalize_ids

    if isinstance(source, PrefixIndex):
        if len(source) == 0:
            raise NestembError(f"the {type(source).__name__} to export is empty")
        if ids is not None:
            raise NestembError("ids: an index carries its own ids; pass ids only with raw vectors")
        live = ~np.asarray(source.deleted_)
        vectors = np.ascontiguousarray(np.asarray(source.vectors_)[live], dtype=np.float32)
        out_ids = np.asarray(source.ids_)[live]
        base = source.manifest_
        if manifest is not None:
            check_compatible(manifest, base, what="manifest and index")
        if dims is None:
            dims = getattr(source, "dims", None)
            shortlist = getattr(source, "shortlist", None) if shortlist is None else shortlist
        if dims is None or shortlist is None:
            raise NestembError(
                f"dims and shortlist are required to export a {type(source).__name__}"
            )
        nesting, model_id, model_version = base.nesting, base.model_id, base.model_version
    else:
        vectors = check_vectors(source, what="vectors")
        out_ids = (np.arange(len(vectors), dtype=np.int64) if ids is None
                   else normalize_ids(ids, len(vectors)))
        if dims is None:
            raise NestembError("dims is required when exporting raw vectors (the stage prefixes)")
        if shortlist is None:
            raise NestembError(
                "shortlist is required when exporting raw vectors (one size per stage but the last)"
            )
        if manifest is not None:
            if manifest.dim != vectors.shape[1]:
                raise NestembError(
                    f"manifest says dim {manifest.dim}, the vectors have dimension "
                    f"{vectors.shape[1]}"
                )
            nesting, model_id, model_version = (
                manifest.nesting, manifest.model_id, manifest.model_version)
    uniq, counts = np.unique(out_ids, return_counts=True)
    if (counts > 1).any():
        raise NestembError(f"duplicate ids: {uniq[counts > 1][:5].tolist()}")
    # FunnelIndex validates the stage configuration and resolves the nesting (one rule set)
    cfg = FunnelIndex(dims=dims, shortlist=shortlist, nesting=nesting, model_id=model_id,
                      model_version=model_version)
    cfg.train(vectors[:1])
    man = dataclasses.replace(cfg.manifest_, kind=COLLECTION_KIND, sha256={}, extra={})
    return ExportSource(vectors, out_ids, man, cfg.dims, cfg.shortlist)


def collection_meta(src: ExportSource, engine: str, complete: bool = True,
                    **extra: Any) -> dict[str, Any]:
    """The manifest stored with a collection: the embeddings' manifest plus the stored prefixes,
    the default stage configuration, the id type, the point count and engine-specific extras.
    An export first stores it with ``complete=False`` and rewrites it with ``complete=True``
    once every point is written, so a half-written collection is never searched.

    Example:
        >>> from nestemb.index import synthetic_matryoshka
        >>> src = export_source(synthetic_matryoshka(4, 16), dims=(4, 16), shortlist=(2,))
        >>> meta = collection_meta(src, "qdrant")
        >>> meta["extra"]["stored_dims"], meta["extra"]["id_kind"], meta["kind"]
        ([4, 16], 'int', 'vector-db-collection')
    """
    man = dataclasses.replace(src.manifest, extra={
        "format_version": FORMAT_VERSION,
        "engine": engine,
        "stored_dims": list(src.dims),
        "dims": list(src.dims),
        "shortlist": list(src.shortlist),
        "id_kind": "str" if src.ids.dtype.kind == "U" else "int",
        "count": int(len(src.ids)),
        "complete": bool(complete),
        **extra,
    })
    return man.to_dict()


def read_meta(meta: Any, where: str, allow_partial: bool = False) -> Manifest:
    """Parse a collection manifest read back from an engine; ``where`` names the collection in
    errors. A collection not written by nestemb (no manifest) is refused, and so is one whose
    export did not finish unless ``allow_partial`` (what an overwrite checks).

    Example:
        >>> read_meta(None, "qdrant collection 'docs'")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: qdrant collection 'docs' has no nestemb manifest: it was not written by nestemb
    """
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            meta = None
    if not isinstance(meta, dict):
        raise NestembError(
            f"{where} has no nestemb manifest: it was not written by nestemb"
        )
    man = Manifest.from_dict(meta, source=f"the manifest of {where}")
    if man.kind != COLLECTION_KIND or not isinstance(man.extra.get("stored_dims"), list):
        raise NestembError(f"{where}: its manifest does not describe a nestemb collection")
    if man.extra.get("format_version") != FORMAT_VERSION:
        raise NestembError(
            f"{where} uses collection format {man.extra.get('format_version')!r}; this nestemb "
            f"reads format {FORMAT_VERSION}"
        )
    if not allow_partial and man.extra.get("complete") is not True:
        raise NestembError(
            f"{where} is partially written (its export did not finish): export it again with "
            "{param}", param="overwrite"
        )
    return man


def service_meta(cfg: dict, engine: str, **layout: Any) -> dict[str, Any]:
    """The manifest of a collection the service creates from its collection config ``cfg``
    (``nesting``, ``model_id``, ``model_version``, ``encoder``): every nesting prefix stored,
    default stages = exact on the full vector, integer and string ids mixed
    (``id_mode="service"``), plus the engine's ``layout``.

    Example:
        >>> meta = service_meta({"nesting": [4, 16], "model_id": "m"}, "qdrant")
        >>> meta["extra"]["stored_dims"], meta["extra"]["dims"], meta["extra"]["id_mode"]
        ([4, 16], [16], 'service')
    """
    nesting = tuple(int(d) for d in cfg["nesting"])
    man = Manifest(model_id=cfg.get("model_id") or "unknown", nesting=nesting, dim=nesting[-1],
                   model_version=cfg.get("model_version") or "unknown", kind=COLLECTION_KIND)
    src = ExportSource(np.zeros((0, nesting[-1]), np.float32), np.zeros(0, np.int64), man,
                       nesting, ())
    meta = collection_meta(src, engine, id_mode="service", encoder=cfg.get("encoder"),
                           **layout)
    meta["extra"]["dims"], meta["extra"]["shortlist"] = [nesting[-1]], []
    return meta


def check_meta(name: str, cfg: dict, man: Manifest, where: str) -> None:
    """Refuse an engine collection whose manifest disagrees with the service's collection
    config (nesting, model id, model version), naming both values.

    Example:
        >>> check_meta("docs", {"nesting": [4, 8], "model_id": "m"},
        ...            Manifest("m", (2, 8), 8), "qdrant collection 'docs'")
        Traceback (most recent call last):
        ...
        nestemb.engines.base.Mismatch: collection 'docs': the service has nesting [4, 8], qdrant collection 'docs' holds nesting [2, 8]
    """
    want = [int(d) for d in cfg["nesting"]]
    if list(man.nesting) != want:
        raise Mismatch(f"collection {name!r}: the service has nesting {want}, {where} holds "
                       f"nesting {list(man.nesting)}")
    mid, ver = cfg.get("model_id") or "unknown", cfg.get("model_version") or "unknown"
    if (man.model_id, man.model_version) != (mid, ver):
        raise Mismatch(f"collection {name!r}: the service has model {mid!r} (version {ver!r}), "
                       f"{where} holds model {man.model_id!r} (version {man.model_version!r})")


def check_payloads(payloads: Sequence[Any] | None, n: int, item: str = "payload[{}]") -> None:
    """One dict per point, none using the reserved key :data:`ID_KEY`; ``item`` spells the
    parameter of entry ``j`` (``"points.{}.payload"`` for the service's requests).

    Example:
        >>> check_payloads([{}, {"nestemb_id": 3}], 2)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: payload[1] uses the reserved key 'nestemb_id' (nestemb keeps point ids there)
    """
    if payloads is None:
        return
    if len(payloads) != n:
        raise NestembError(f"{{param}} has {len(payloads)} entries for {n} vectors",
                           param="payload")
    for j, p in enumerate(payloads):
        if not isinstance(p, dict):
            raise NestembError(f"{{param}} must be a dict, got {type(p).__name__}",
                               param=item.format(j))
        if ID_KEY in p:
            raise NestembError(f"{{param}} uses the reserved key {ID_KEY!r} (nestemb keeps point "
                               "ids there)", param=item.format(j))


# ----------------------------------------------------------------------------- protocol
class Collection:
    """One collection of Matryoshka points in an engine: the protocol every engine implements.

    An engine module implements the engine calls (``exists``, ``raw_meta``, ``write_meta``,
    ``_create``, ``drop``, ``write``, ``_remove``, ``fetch``, ``count``, ``close`` and the
    search its :class:`Funnel` compiles to); the rest is shared: :meth:`create` and
    :meth:`open` (the manifest), :meth:`upsert`, :meth:`delete`, :meth:`get`, :meth:`export`
    and :meth:`funnel` (a stage plan to search with). A handle is cheap: nothing is opened
    before the first engine call.

    Attributes:
        kind: the engine's name in the registry (``qdrant``, ``qdrant-edge``, ``milvus``).
        where: the collection in messages.
        manifest_: the collection's manifest, once opened or created.
    """

    kind: ClassVar[str]
    funnel_class: ClassVar[type["Funnel"]]
    service_layout: ClassVar[dict[str, Any]] = {}
    """Layout options of a collection the service creates (exact stages, mixed ids)."""
    exact_search: ClassVar[dict[str, Any]] = {}
    """Funnel options that make every stage exact (how the service searches)."""
    where: str
    manifest_: Manifest | None = None

    # ---------------------------------------------------------------- engine calls
    def exists(self) -> bool:
        raise NotImplementedError

    def raw_meta(self) -> Any:
        """The stored manifest as the engine returns it (``None`` if there is none); an error
        if the collection does not exist."""
        raise NotImplementedError

    def write_meta(self, meta: dict) -> None:
        raise NotImplementedError

    def _create(self, meta: dict) -> None:
        """Create the collection laid out as ``meta`` says (stored dims, layout options)."""
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError

    def write(self, ids: list, views: dict[int, np.ndarray], payloads: list | None,
              batch_size: int, fresh: bool = False) -> None:
        """Store points: nestemb ids, the prefix view per stored dim, payloads (or ``None``);
        ``fresh``: the collection is being exported (no point exists yet)."""
        raise NotImplementedError

    def _remove(self, ids: list) -> None:
        raise NotImplementedError

    def fetch(self, ids: list, vectors: bool = True) -> dict[str, tuple[np.ndarray | None, dict]]:
        """The stored points among ``ids``: :func:`point_key` -> (full view or ``None``,
        payload)."""
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def _finish(self) -> None:
        """After an export's last write: flush, build the indexes."""

    def close(self) -> None:
        """Release what the handle opened (a client passed in belongs to the caller)."""

    # ---------------------------------------------------------------- manifest
    def open(self) -> Self:
        """Read and check the collection's manifest (a complete nestemb collection)."""
        self.manifest_ = read_meta(self.raw_meta(), self.where)
        return self

    def create(self, meta: dict) -> Self:
        """Create the collection with manifest ``meta`` (see :func:`collection_meta`)."""
        self._create(meta)
        self.manifest_ = Manifest.from_dict(meta, source=f"the manifest of {self.where}")
        return self

    def _opened_manifest(self) -> Manifest:
        """:attr:`manifest_`, once :meth:`open` or :meth:`create` has set it."""
        assert self.manifest_ is not None, "open() or create() the collection first"
        return self.manifest_

    @property
    def extra(self) -> dict[str, Any]:
        return self._opened_manifest().extra

    @property
    def stored(self) -> tuple[int, ...]:
        """The stored prefix dims."""
        return tuple(self.extra["stored_dims"])

    @property
    def service_ids(self) -> bool:
        """Whether ids are the service's (integers and strings mixed) or one exported type."""
        return self.extra.get("id_mode", "export") == "service"

    # ---------------------------------------------------------------- points
    def _int_only(self) -> bool:
        """Whether integer ids must be non-negative (an engine's point ids)."""
        return False

    def check_ids(self, ids: Sequence[Any], field: str = "points") -> None:
        """Ids a collection exported with one id type accepts (service collections take
        integers and strings)."""
        if self.service_ids:
            return
        kind = self.extra.get("id_kind", "int")
        want = str if kind == "str" else int
        for j, i in enumerate(ids):
            if not isinstance(i, want) or (
                    isinstance(i, int) and want is int and self._int_only() and i < 0):
                raise Unsupported(f"{field}.{j}.id", f"{self.where} was exported with {kind} "
                                  f"ids: id {i!r} cannot be stored there")

    def _valid(self, pid: Any) -> bool:
        try:
            self.check_ids([pid])
        except Unsupported:
            return False
        return True

    def upsert(self, ids: Sequence[Any], X: np.ndarray, payloads: Sequence[dict]) -> None:
        """Insert or replace points (vectors ``(n, D)``; each stored prefix is written as its
        view), durable when this returns."""
        self.check_ids(ids)
        check_payloads(payloads, len(ids), "points.{}.payload")
        views = {d: np.ascontiguousarray(prefix_view(X, d), dtype=np.float32)
                 for d in self.stored}
        self.write(list(ids), views, list(payloads), batch_size=max(1, len(ids)))

    def delete(self, ids: Sequence[Any]) -> int:
        """Delete the stored points among ``ids``; how many there were."""
        valid = [i for i in ids if self._valid(i)]
        got = self.fetch(valid, vectors=False) if valid else {}
        present = [i for i in valid if point_key(i) in got]
        if present:
            self._remove(present)
        return len(present)

    def get(self, pid: Any) -> tuple[np.ndarray, dict] | None:
        """A point's full-dimension view (as stored: L2-normalized) and payload, or ``None``."""
        if not self._valid(pid):
            return None
        hit = self.fetch([pid]).get(point_key(pid))
        if hit is None:
            return None
        vector, payload = hit
        assert vector is not None, "fetch(vectors=True) returns the stored vector"
        return vector, payload

    def payloads(self, ids: Sequence[Any]) -> list[dict]:
        """The payloads of stored points (``{}`` for one gone meanwhile)."""
        got = self.fetch(list(dict.fromkeys(ids)), vectors=False) if ids else {}
        return [got.get(point_key(i), (None, {}))[1] for i in ids]

    # ---------------------------------------------------------------- export
    def _layout(self, src: "ExportSource", payload: Sequence[dict] | None) -> dict[str, Any]:
        """The engine's layout options of an export, checked (they go into the manifest); an
        engine declares its options as keyword-only arguments."""
        raise NotImplementedError

    def export(self, source: Any, ids: Sequence[Any] | None = None, *,
               dims: Sequence[int] | None = None, shortlist: Sequence[int] | None = None,
               nesting: Sequence[int] | None = None, model_id: str = "unknown",
               model_version: str = "unknown", manifest: Manifest | None = None,
               payload: Sequence[dict] | None = None, overwrite: bool = False,
               batch_size: int = 1024, **options: Any) -> "Funnel":
        """Write ``source`` (with ``ids``, ``dims`` ... ``manifest``: see
        :func:`export_source`) into this collection, every check first; ``options`` are the
        engine's layout options. The manifest is marked complete last. An existing collection
        is replaced only with ``overwrite`` and only if nestemb wrote it. Returns a
        :class:`Funnel` over the collection with the exported stages (owning this handle).

        Example: see :func:`~nestemb.engines.qdrant.export_qdrant`."""
        from nestemb.checks import positive_int

        batch_size = positive_int(batch_size, "batch_size")
        src = export_source(source, ids, dims=dims, shortlist=shortlist, nesting=nesting,
                            model_id=model_id, model_version=model_version, manifest=manifest)
        check_payloads(payload, len(src.ids))
        layout = self._layout(src, payload, **options)  # every input check before a drop
        if self.exists():
            if not overwrite:
                raise NestembError(f"{self.where} already exists (set {{param}} to replace it)",
                                   param="overwrite")
            try:
                read_meta(self.raw_meta(), self.where, allow_partial=True)
            except NestembError as e:
                raise NestembError(f"refusing to overwrite {self.where}: {e}") from None
            self.drop()
        views = {d: np.ascontiguousarray(prefix_view(src.vectors, d), dtype=np.float32)
                 for d in src.dims}
        try:
            self.create(collection_meta(src, self.kind, complete=False, **layout))
            self.write(src.ids.tolist(), views, None if payload is None else list(payload),
                       batch_size, fresh=True)
            self._finish()
            self.write_meta(collection_meta(src, self.kind, **layout))  # last: complete
        except BaseException:
            self.close()  # the collection stays marked partial
            raise
        return self.funnel(owns=True)

    def funnel(self, dims: Sequence[int] | None = None, shortlist: Sequence[int] | None = None,
               manifest: Manifest | None = None, *, owns: bool = False,
               **options: Any) -> "Funnel":
        """A :class:`Funnel` searching this collection with a stage configuration (default:
        the stored one); ``owns``: closing the funnel closes this handle."""
        return self.funnel_class.over(self, dims, shortlist, manifest, owns=owns, **options)


class Funnel:
    """A collection searched with a stage configuration: the funnel compiled to the engine
    (:class:`~nestemb.engines.qdrant.QdrantFunnel`,
    :class:`~nestemb.engines.milvus.MilvusFunnel`); stage checks, input checks and result
    assembly are shared here, each engine compiles the stages in ``_hits``.

    Attributes:
        manifest_: the collection's manifest (model identity, nesting, stored prefixes).
        dims, shortlist: the stage configuration searched with.
    """

    manifest_: Manifest
    dims: tuple[int, ...]
    shortlist: tuple[int, ...]
    where: str
    _collection: Collection
    _owns: bool = False

    @classmethod
    def over(cls, collection: Collection, dims: Sequence[int] | None = None,
             shortlist: Sequence[int] | None = None, manifest: Manifest | None = None, *,
             owns: bool = False, **options: Any) -> Self:
        """The funnel over an engine collection handle (``options``: the engine's search
        options); ``owns``: :meth:`close` closes the handle (and so does a failed check)."""
        self = cls.__new__(cls)
        self._open(collection, dims, shortlist, manifest, owns, **options)
        return self

    def _open(self, collection: Collection, dims: Sequence[int] | None,
              shortlist: Sequence[int] | None, manifest: Manifest | None, owns: bool,
              **options: Any) -> None:
        self._collection, self.where, self._owns = collection, collection.where, owns
        try:
            self._setup(**options)
            self._configure(collection.raw_meta(), dims, shortlist, manifest)
            if collection.manifest_ is None:
                collection.manifest_ = self.manifest_
            self._ready()
        except NestembError:
            if owns:
                collection.close()
            raise

    def _setup(self) -> None:
        """Check and keep the engine's search options (an engine declares them as keyword
        arguments)."""

    def _ready(self) -> None:
        """Engine checks once the stage configuration is known."""

    def _hits(self, Q: np.ndarray, keeps: list[int]) -> list[list[tuple[Any, float]]]:
        """The engine's funnel: per query, ``(id, score)`` of the last stage."""
        raise NotImplementedError

    def _configure(self, meta: Any, dims: Sequence[int] | None, shortlist: Sequence[int] | None,
                   manifest: Manifest | None) -> None:
        from nestemb.index import FunnelIndex

        self.manifest_ = read_meta(meta, self.where)
        if manifest is not None:
            check_compatible(manifest, self.manifest_, what=f"the expected manifest and {self.where}")
        stored = tuple(self.manifest_.extra["stored_dims"])
        dims = self.manifest_.extra["dims"] if dims is None else dims
        if shortlist is None:
            default = tuple(self.manifest_.extra["shortlist"])
            shortlist = default if len(default) == len(tuple(dims)) - 1 else None
            if shortlist is None:
                raise NestembError(
                    f"shortlist is required with dims {tuple(dims)} (the collection's default "
                    f"shortlist {default} is for dims {tuple(self.manifest_.extra['dims'])})"
                )
        cfg = FunnelIndex(dims=dims, shortlist=shortlist, nesting=self.manifest_.nesting)
        if cfg.dims[-1] != self.manifest_.dim:
            raise NestembError(
                f"the last stage dim must be the full dimension {self.manifest_.dim}, got dims "
                f"{cfg.dims}"
            )
        missing = [d for d in cfg.dims if d not in stored]
        if missing:
            raise NestembError(
                f"stage dims {missing} are not stored in {self.where} (stored prefixes: {stored}):"
                " export again with those dims"
            )
        self.dims, self.shortlist = cfg.dims, cfg.shortlist

    @property
    def dim(self) -> int:
        """The full dimension of the collection's vectors."""
        return int(self.manifest_.dim)

    def __len__(self) -> int:
        return int(self.manifest_.extra["count"])

    def _prepare(self, Q: Any, k: Any, manifest: Manifest | None, count: int | None = None
                 ) -> tuple[np.ndarray, int, list[int]]:
        """Checked queries, ``k`` and the candidates kept per stage. ``count`` is the number of
        points the collection holds now (default: the count its manifest recorded at export;
        a collection written to live, as the service does, passes its current count)."""
        if manifest is not None:
            check_compatible(manifest, self.manifest_, what=f"queries and {self.where}")
        Q = check_vectors(Q, dim=self.dim, what="queries")
        from nestemb.checks import positive_int

        k = positive_int(k, "k")
        n = len(self) if count is None else int(count)
        if k > n:
            raise NestembError(f"k={k} is larger than {self.where}, which holds {n} vectors")
        if any(s < k for s in self.shortlist):
            raise NestembError(f"shortlist {self.shortlist} has a size smaller than k={k}")
        keeps = [min(s, n) for s in self.shortlist] + [k]
        return Q, k, keeps

    def _assemble(self, hits: list[list[tuple[Any, float]]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` arrays from per-query ``(id, score)`` lists, padded with ``-inf``
        and ``-1`` / ``""`` like :meth:`~nestemb.index.PrefixIndex.search`."""
        nq = len(hits)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        string = self.manifest_.extra["id_kind"] == "str"
        width = max([len(str(i)) for row in hits for i, _ in row] + [1])
        ids = np.full((nq, k), "" if string else -1, dtype=f"<U{width}" if string else np.int64)
        for q, row in enumerate(hits):
            for j, (i, s) in enumerate(row[:k]):
                scores[q, j], ids[q, j] = s, i
        return scores, ids

    def logical_bytes_per_point(self) -> dict[str, float]:
        """Bytes per point of the stored vectors (float32 per stored prefix, plus an int8 code of
        the first prefix where quantized) against the reference the issue sets: one full float32
        vector plus the short prefix, ``4 (D + d0)``.

        Example: see :func:`~nestemb.engines.qdrant.export_qdrant`.
        """
        stored = self.manifest_.extra["stored_dims"]
        vec = 4.0 * sum(stored)
        quant = float(self.manifest_.extra.get("quantized_bytes", 0))
        ref = 4.0 * (self.dim + stored[0])
        return {"vectors": vec + quant, "reference": ref, "ratio": (vec + quant) / ref}

    def search(self, Q: Any, k: int = 10, *, manifest: Manifest | None = None):
        """Top-``k`` of the funnel run inside the engine: ``(scores, ids)``, each
        ``(n_queries, k)``, like :meth:`nestemb.index.FunnelIndex.search` (scores are the
        cosine of the full vectors, ids the nestemb ids). ``manifest`` (the queries') is checked
        against the collection's.

        Example: see :class:`~nestemb.engines.qdrant.QdrantFunnel`.
        """
        return self._assemble(self.search_hits(Q, k, manifest=manifest), int(k))

    def search_hits(self, Q: Any, k: int = 10, *, manifest: Manifest | None = None,
                    count: int | None = None) -> list[list[tuple[Any, float]]]:
        """Like :meth:`search`, as one list of ``(id, score)`` per query (ids as stored: an int
        or a str, mixed if the collection mixes them); ``count`` is the number of points held
        now, for a collection written to after its export (the service's collections).

        Example: see :class:`~nestemb.engines.qdrant.QdrantFunnel`.
        """
        Q, k, keeps = self._prepare(Q, k, manifest, count)
        return self._hits(Q, keeps)

    def close(self) -> None:
        """Release the collection handle if this funnel owns it (an Edge shard: a shard is
        opened by one process; a client passed in stays the caller's)."""
        if self._owns:
            self._collection.close()


class Engine:
    """A vector database holding collections, opened from the registry
    (:func:`nestemb.engines.open_engine`): where ``nestemb backend export|search`` and
    ``nestemb serve --backend`` reach it. An engine module implements :meth:`collection` (a
    handle, nothing opened) and :meth:`names`.

    Attributes:
        kind: the engine's name in the registry.
        url: where it lives (a server URL, a folder or a file).
    """

    kind: ClassVar[str]
    url: str
    export_options: ClassVar[tuple[str, ...]] = ()
    """Export options of this engine beyond the common ones (shown by the CLI)."""
    search_options: ClassVar[tuple[str, ...]] = ()
    """Funnel options of this engine (``exact``, ``rerank`` ...)."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        """Open the engine at ``url`` (checked at once; the registry's one constructor)."""
        raise NotImplementedError

    def collection(self, name: str) -> Collection:
        raise NotImplementedError

    def names(self) -> list[str]:
        """Collections in the engine (nestemb's or not)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine (open collections are closed by their owners first)."""

    def exists(self, name: str) -> bool:
        return self.collection(name).exists()

    def export(self, source: Any, name: str, **kw: Any) -> Funnel:
        """Export ``source`` into collection ``name`` (:meth:`Collection.export`)."""
        return self.collection(name).export(source, **kw)

    def funnel(self, name: str, dims: Sequence[int] | None = None,
               shortlist: Sequence[int] | None = None, manifest: Manifest | None = None,
               **options: Any) -> Funnel:
        """Search collection ``name`` (see :class:`Funnel`); close the funnel when done."""
        return self.collection(name).funnel(dims, shortlist, manifest, owns=True, **options)

    def manifest(self, name: str) -> Manifest:
        """The complete nestemb manifest of collection ``name`` (NestembError otherwise)."""
        col = self.collection(name)
        try:
            return col.open()._opened_manifest()
        finally:
            col.close()

    def open(self, name: str, cfg: dict) -> Collection:
        """Open the engine collection behind the service's collection ``name``, checking that
        it exists and that its manifest agrees with the service's config ``cfg``."""
        col = self.collection(name)
        if not col.exists():
            raise Mismatch(f"collection {name!r} is registered in the service but "
                           f"{col.where} does not exist")
        try:
            check_meta(name, cfg, col.open()._opened_manifest(), col.where)
        except BaseException:
            col.close()
            raise
        return col

    def create(self, name: str, cfg: dict) -> Collection:
        """A new service collection, or the existing engine collection of that name when its
        manifest agrees with ``cfg`` (e.g. one written by ``nestemb backend export``)."""
        col = self.collection(name)
        if col.exists():
            return self.open(name, cfg)
        return col.create(service_meta(cfg, self.kind, **col.service_layout))

    def drop(self, name: str) -> None:
        col = self.collection(name)
        if col.exists():
            col.drop()


def disk_bytes(path: str | os.PathLike) -> int:
    """Bytes a directory (or file) occupies on disk: allocated blocks, so sparse preallocated
    files count what they hold, not their apparent size.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a").write_bytes(b"x" * 10000)
        >>> disk_bytes(d) >= 10000
        True
    """
    p = Path(path)
    if p.is_file():
        return int(p.stat().st_blocks) * 512
    total = 0
    for root, _dirs, files in os.walk(p):
        for name in files:
            try:
                total += int(os.lstat(os.path.join(root, name)).st_blocks) * 512
            except FileNotFoundError:
                pass
    return total
