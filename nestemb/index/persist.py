"""The on-disk format of every nestemb index, and reading / writing it.

An index directory holds::

    manifest.json   kind "index": model id and version (those of the embeddings it was built
                    from), nesting, normalization, dim, dtype, the index type and its parameters,
                    the tuning record, sha256 of every file
    vectors.npy     the full float32 vectors, exactly as added (memory-mapped on load)
    ids.npy         the external id of each row (int64 or unicode)
    deleted.npy     a tombstone flag per row (``delete`` marks, ``compact`` removes)
    *.faiss         the index type's own search structures (first stage, quantizer, lists)

Saving builds the whole directory in a temporary sibling and renames it into place
(:func:`nestemb.io.atomic_dir`): a crash mid-write leaves the previous index readable. Like every
nestemb writer, saving refuses an existing non-empty path unless ``overwrite=True``, and even then
replaces only a nestemb index (recognized by its manifest kind). Loading verifies every checksum.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nestemb.errors import NestembError
from nestemb.nesting import MANIFEST_NAME, Manifest

if TYPE_CHECKING:  # base imports this module
    from nestemb.index.base import PrefixIndex

logger = logging.getLogger("nestemb.index")

INDEX_KIND = "index"
"""The manifest ``kind`` of an index directory."""

_INDEX_TYPES: dict[str, type[PrefixIndex]] = {}


def register_index_type(cls: type[PrefixIndex]) -> type[PrefixIndex]:
    """Make the index class ``cls`` readable from disk under its name (every subclass of
    :class:`~nestemb.index.PrefixIndex` registers itself); returns ``cls``.

    Example:
        >>> from nestemb.index import FunnelIndex
        >>> register_index_type(FunnelIndex) is index_type("FunnelIndex")
        True
    """
    _INDEX_TYPES[cls.__name__] = cls
    return cls


def index_type(name: str) -> type[PrefixIndex]:
    """The registered index class called ``name``, or an error listing the known ones.

    Example:
        >>> index_type("NoSuchIndex")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: unknown index type 'NoSuchIndex' (known: ...)
    """
    cls = _INDEX_TYPES.get(name)
    if cls is None:
        raise NestembError(f"unknown index type {name!r} (known: {', '.join(sorted(_INDEX_TYPES))})")
    return cls

VECTORS_NAME = "vectors.npy"
IDS_NAME = "ids.npy"
DELETED_NAME = "deleted.npy"


def save_index(index: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``index`` to the directory ``path`` atomically; see :meth:`PrefixIndex.save`.

    Example: see :func:`load_index`.
    """
    from nestemb.io import atomic_dir

    index._check_fitted()
    path = Path(path)
    with atomic_dir(path, kind=INDEX_KIND, overwrite=overwrite) as tmp:
        _write_files(index, tmp)
    return path


def _write_files(index: Any, tmp: Path) -> None:
    """Every file of the index directory and its manifest (checksums included), into ``tmp``."""
    from nestemb.io import chunk_rows, save_npy_blocks, sha256_file

    names = [IDS_NAME, DELETED_NAME]
    if index.writes_vectors_file():
        V, step = index.vectors_, chunk_rows(index.vectors_.shape[1])
        save_npy_blocks(tmp / VECTORS_NAME, tuple(V.shape),  # a memory map is never read whole
                        (V[a : a + step] for a in range(0, len(V), step)))
        names.insert(0, VECTORS_NAME)
    np.save(tmp / IDS_NAME, index.ids_)
    np.save(tmp / DELETED_NAME, index.deleted_)
    names += index._write(tmp)
    config = {
        "index_type": type(index).__name__,
        "params": index.get_params(),
        "n_vectors": int(len(index.ids_)),
        "n_deleted": int(index.n_deleted_),
        "next_id": int(index.next_id_),
        "tuning": index.tuning_,
    }
    index.manifest_ = dataclasses.replace(
        index.manifest_, extra=config, sha256={n: sha256_file(tmp / n) for n in names}
    )
    index.manifest_.save(tmp)


def build_on_disk(index: Any, X: Any, path: str | os.PathLike, ids: Any = None, *,
                  overwrite: bool = False) -> Any:
    """Index the gallery ``X`` (an array, a ``np.memmap`` or a ``.npy`` path) straight into the
    index directory ``path``, for galleries larger than memory: the normalized full vectors are
    streamed chunk by chunk into the directory's re-rank file as they are read, never held in
    memory; only the first stage (and int8 rescoring codes) is built in RAM. ``index`` is a new
    :class:`~nestemb.index.FunnelIndex` (its parameters; float32 full vectors). Returns the index
    loaded from ``path`` (full vectors memory-mapped): what ``index.add(X, ids).save(path)`` and
    :func:`load_index` give, without the full copy in between. Atomic like :func:`save_index`.

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
        >>> X = synthetic_matryoshka(500, 32)
        >>> d = pathlib.Path(tempfile.mkdtemp()) / "idx"
        >>> idx = build_on_disk(FunnelIndex(dims=(8, 32), shortlist=(50,)), X, d)
        >>> ref = FunnelIndex(dims=(8, 32), shortlist=(50,)).add(X)
        >>> bool((idx.search(X[:5], 3)[1] == ref.search(X[:5], 3)[1]).all()), idx.bytes_per_vector()["mmap"]
        (True, 128.0)
    """
    from nestemb.io import atomic_dir

    if getattr(index, "is_trained", False) or not hasattr(index, "_spill_full"):
        raise NestembError(f"{{param}}: build_on_disk takes a new FunnelIndex (its parameters), "
                           f"got {'a trained ' if getattr(index, 'is_trained', False) else ''}"
                           f"{type(index).__name__}", param="index")
    path = Path(path)
    with atomic_dir(path, kind=INDEX_KIND, overwrite=overwrite) as tmp:
        with index._spill_full(tmp):
            index.add(X, ids)
        _write_files(index, tmp)
    return load_index(path, mmap=True)


def read_index(
    path: str | os.PathLike, cls: type | None = None, mmap: bool = True, verify: bool = True
) -> Any:
    """Read an index directory holding a ``cls`` (any index for :class:`PrefixIndex`). Every
    field of the index configuration (``extra`` of the manifest) and every data file is checked
    for type, shape and range: a damaged or hand-edited directory is a :class:`NestembError`
    naming the file and the field, never a ``TypeError`` from deep inside.

    Example: see :func:`load_index`.
    """
    from nestemb.io import article

    path = Path(path)
    manifest = Manifest.open(path, INDEX_KIND, "index directory", verify=False)
    where = path / MANIFEST_NAME
    extra = manifest.extra
    if not isinstance(extra, dict):
        raise NestembError(f"{where}: extra must be a JSON object (the index configuration), "
                           f"got {_short(extra)}")
    kind = _field(where, extra, "index_type", str)
    try:
        target = index_type(kind)
    except NestembError as e:
        raise NestembError(f"{where}: {e} in extra.index_type") from None
    if cls is not None and not issubclass(target, cls):
        raise NestembError(f"{path} holds {article(kind)}, not {article(cls.__name__)}")
    tuning = _check_tuning(where, extra.get("tuning"))
    if verify:
        manifest.verify(path)
    index = _index_from_manifest(path, target, manifest)
    index.ids_ = _load_npy(path, IDS_NAME, "iU", 1)
    n = len(index.ids_)
    index.deleted_ = _load_npy(path, DELETED_NAME, "b", 1)
    # an index may keep the full vectors in its own files (FunnelIndex: full.faiss)
    has_npy = (path / VECTORS_NAME).exists()
    if has_npy:
        index.vectors_ = _load_npy(path, VECTORS_NAME, "f", 2, mmap=mmap)
        if index.vectors_.dtype != np.float32:
            raise NestembError(f"{path / VECTORS_NAME} holds {index.vectors_.dtype} vectors, "
                               "expected float32")
    if len(index.deleted_) != n:
        raise NestembError(f"{path}: {DELETED_NAME} holds {len(index.deleted_)} flags for the {n} "
                           f"ids of {IDS_NAME}")
    index.n_deleted_ = int(index.deleted_.sum())
    for name, want in (("n_vectors", n), ("n_deleted", index.n_deleted_)):
        saved = extra.get(name, want)  # absent: written before the field existed
        if isinstance(saved, bool) or not isinstance(saved, int) or saved != want:
            raise NestembError(f"{where}: extra.{name} is {_short(saved)}, but the data files "
                               f"hold {want}")
    index.next_id_ = _next_id(path, manifest, index.ids_)
    index.tuning_ = tuning
    index.manifest_ = manifest
    index._lookup = None
    if has_npy:
        _check_vectors_shape(path, index.vectors_, n, manifest.dim)
    elif index.writes_vectors_file():
        raise NestembError(f"cannot read index data in {path}: {VECTORS_NAME} is missing")
    index._read(path, mmap=mmap)
    _check_vectors_shape(path, index.vectors_, n, manifest.dim)
    return index


def _short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a manifest field may be long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field(where: Path, d: dict, name: str, types, prefix: str = "extra."):
    """``d[name]``, which must exist and be of ``types``; else an error naming the field."""
    if name not in d:
        raise NestembError(f"{where}: {prefix}{name} is missing")
    value = d[name]
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise NestembError(f"{where}: {prefix}{name} has the wrong type: {_short(value)}")
    return value


def _check_tuning(where: Path, tuning):
    """The saved tuning record: ``null``, or an object with a ``params`` object whose known
    fields have their types and ranges (``k`` a positive integer, ``recall`` and ``target`` in
    [0, 1], ``met`` / ``complete`` booleans ...)."""
    if tuning is None:
        return None
    if not isinstance(tuning, dict):
        raise NestembError(f"{where}: extra.tuning must be null or a JSON object, got "
                           f"{_short(tuning)}")
    _field(where, tuning, "params", dict, "extra.tuning.")
    number = (int, float)
    rules = {"k": (int, 1, None), "n_queries": (int, 0, None), "grid_size": (int, 0, None),
             "recall": (number, 0.0, 1.0), "target": (number, 0.0, 1.0),
             "latency_ms": (number, 0.0, None), "seconds": (number, 0.0, None),
             "max_seconds": ((int, float, type(None)), 0.0, None), "met": (bool, None, None),
             "complete": (bool, None, None), "candidates": (list, None, None)}
    for name, (types, lo, hi) in rules.items():
        if name not in tuning:
            continue
        value = _field(where, tuning, name, types, "extra.tuning.")
        if lo is not None and value is not None and not (value >= lo and (hi is None or value <= hi)):
            span = f"at least {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise NestembError(f"{where}: extra.tuning.{name} must be {span}, got {_short(value)}")
    return dict(tuning)


def _load_npy(path: Path, name: str, kinds: str, ndim: int, mmap: bool = False) -> np.ndarray:
    """A data file of the index: readable, of a dtype kind in ``kinds``, ``ndim``-dimensional."""
    try:
        arr = np.load(path / name, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NestembError(f"cannot read {path / name}: {first}") from None
    if arr.dtype.kind not in kinds or arr.ndim != ndim:
        raise NestembError(f"{path / name} holds a {arr.dtype} array of shape {arr.shape}; "
                           f"expected {ndim}-D of kind {' or '.join(_KINDS[c] for c in kinds)}")
    return arr


_KINDS = {"i": "integer", "U": "unicode", "b": "bool", "f": "float"}


def _check_vectors_shape(path: Path, vectors, n: int, dim: int) -> None:
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise NestembError(f"{path}: vectors have shape {vectors.shape}, manifest dim {dim}")
    if len(vectors) != n:
        raise NestembError(f"{path}: ids/deleted flags do not match the {len(vectors)} vectors")


def _index_from_manifest(path: Path, target: type[PrefixIndex], manifest: Manifest) -> Any:
    """The index the manifest's ``extra.params`` describe, validated exactly as the constructor
    validates them and checked against the manifest's own identity, dim and nesting: an edited
    manifest is a clean error, never a FAISS assertion."""
    where = path / MANIFEST_NAME
    if not isinstance(manifest.extra.get("params"), dict):
        got = _short(manifest.extra["params"]) if "params" in manifest.extra else "nothing"
        raise NestembError(f"{where}: extra.params must be a JSON object, got {got}")
    params = dict(manifest.extra["params"])
    nprobe, nlist = params.get("nprobe"), params.get("nlist")
    if ("nprobe" in target._param_names and type(nprobe) is int and type(nlist) is int
            and 0 < nlist < nprobe):  # saved before nprobe was bounded: what search did with it
        logger.info("%s: nprobe %d is above nlist %d: reading it as %d", where, nprobe, nlist, nlist)
        params["nprobe"] = nlist
    valid = target._param_names
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise NestembError(
            f"{where}: unknown {target.__name__} parameters {unknown} (valid: {', '.join(valid)})"
        )
    try:
        index = target(**params)
        index._validate(manifest.dim)
        nesting = index.resolve_nesting(manifest.dim)
    except NestembError as e:
        raise NestembError(f"{where}: invalid index parameters: {e}") from None
    if tuple(nesting) != tuple(manifest.nesting):
        raise NestembError(
            f"{where}: params nesting {list(nesting)} differs from the manifest's nesting "
            f"{list(manifest.nesting)}"
        )
    for name in ("model_id", "model_version"):
        if getattr(index, name) != getattr(manifest, name):
            raise NestembError(
                f"{where}: params {name} {getattr(index, name)!r} differs from the manifest's "
                f"{getattr(manifest, name)!r}"
            )
    return index


def _next_id(path: Path, manifest: Manifest, ids: np.ndarray) -> int:
    """The saved auto-id counter (never below one past the largest integer id held)."""
    floor = int(ids.max()) + 1 if ids.dtype.kind == "i" and len(ids) else 0
    saved = manifest.extra.get("next_id", floor)  # indexes saved before the counter existed
    if isinstance(saved, bool) or not isinstance(saved, int) or saved < 0:
        raise NestembError(f"{path / MANIFEST_NAME}: next_id must be a non-negative integer, got {saved!r}")
    return max(saved, floor)


def load_index(path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> Any:
    """Load any nestemb index directory (the type is read from its manifest; checksums are
    verified unless ``verify=False``; vectors are memory-mapped unless ``mmap=False``).

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
        >>> X = synthetic_matryoshka(200, 32, seed=0)
        >>> index = FunnelIndex(dims=(8, 32), shortlist=(50,), model_id="demo").add(X)
        >>> p = index.save(pathlib.Path(tempfile.mkdtemp()) / "idx")
        >>> loaded = load_index(p)
        >>> type(loaded).__name__, len(loaded), loaded.manifest.model_id
        ('FunnelIndex', 200, 'demo')
        >>> bool((loaded.search(X[:5], k=3)[1] == index.search(X[:5], k=3)[1]).all())
        True
        >>> index.save(p)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: ...already exists...
    """
    return read_index(path, None, mmap=mmap, verify=verify)
