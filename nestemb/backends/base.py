"""What the Qdrant and Milvus mappings of a funnel share: the export source (a
:class:`~nestemb.index.FunnelIndex` or raw vectors), the collection manifest stored with the
collection, the stage configuration of a search, result assembly and stored-bytes accounting.

A collection exported by nestemb holds one vector per *stored prefix* (the stage dims of the
funnel: the shortlist prefix, any intermediate re-rank prefixes and the full vector), each
stored as its :func:`~nestemb.nesting.prefix_view` (sliced, then L2-normalized), so the engine's
cosine / inner-product score of a stored prefix is exactly the score nestemb's funnel gives it.
Its manifest (model identity, nesting, stored prefixes, default stage configuration, id type)
travels with the collection, and every search checks it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.nesting import Manifest, check_compatible, check_vectors

COLLECTION_KIND = "vector-db-collection"
"""The manifest ``kind`` of a collection exported by :mod:`nestemb.backends`."""

FORMAT_VERSION = 1
"""Version of the collection layout (named vector / field per prefix, ``d{m}`` names)."""


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
    from nestemb.index.base import PrefixIndex, _normalize_ids

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
                   else _normalize_ids(ids, len(vectors)))
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
                      model_version=model_version).train(vectors[:1])
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
        nestemb.errors.NestembError: qdrant collection 'docs' has no nestemb manifest: it was not exported by nestemb.backends
    """
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            meta = None
    if not isinstance(meta, dict):
        raise NestembError(
            f"{where} has no nestemb manifest: it was not exported by nestemb.backends"
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


class FunnelBackend:
    """Stage configuration, input checks and result assembly shared by
    :class:`~nestemb.backends.qdrant.QdrantFunnel` and
    :class:`~nestemb.backends.milvus.MilvusFunnel` (not used directly).

    Attributes:
        manifest_: the collection's manifest (model identity, nesting, stored prefixes).
        dims, shortlist: the stage configuration searched with.
    """

    manifest_: Manifest
    dims: tuple[int, ...]
    shortlist: tuple[int, ...]
    where: str

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
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise NestembError(f"k must be a positive integer, got {k!r}")
        k = int(k)
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

        Example: see :func:`~nestemb.backends.qdrant.export_qdrant`.
        """
        stored = self.manifest_.extra["stored_dims"]
        vec = 4.0 * sum(stored)
        quant = float(self.manifest_.extra.get("quantized_bytes", 0))
        ref = 4.0 * (self.dim + stored[0])
        return {"vectors": vec + quant, "reference": ref, "ratio": (vec + quant) / ref}


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
