"""The one convention every part of nestemb shares.

A *nesting* is an ascending tuple of prefix sizes whose last entry is the full dimension, e.g.
``(8, 16, 32, 64, 128, 256)``. The ``m``-dimensional *view* of an embedding is its first ``m``
coordinates, **sliced first, then L2-normalized** (:func:`prefix_view`). Every loss, index and
evaluator goes through :func:`prefix_view`; nothing else truncates.

Every artefact that stores embeddings carries a :class:`Manifest` (model identity, nesting,
normalization rule, dtype, sha256 of the data); :func:`check_compatible` refuses to compare
artefacts whose manifests disagree.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from nestemb.errors import NestembError
from nestemb.io import article

NORMALIZATION = "slice-then-l2"
"""The name written into manifests for the prefix-view rule of :func:`prefix_view`."""

_EPS = 1e-12

Array = TypeVar("Array")


def validate_nesting(dims: Iterable[int], full_dim: int | None = None) -> tuple[int, ...]:
    """Check a nesting and return it as a tuple of ints.

    A nesting is non-empty, strictly ascending, of positive integers; when ``full_dim`` is
    given its last entry must equal it (the full embedding is always one of the views).

    Example:
        >>> validate_nesting([8, 16, 32], full_dim=32)
        (8, 16, 32)
        >>> validate_nesting([16, 8])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: nesting must be strictly ascending, got (16, 8)
    """
    try:
        out = tuple(int(d) for d in dims)
    except (TypeError, ValueError):
        raise NestembError(f"nesting must be a list of integers, got {dims!r}") from None
    if not out:
        raise NestembError("nesting is empty: give at least one dimension")
    if any(d <= 0 for d in out):
        raise NestembError(f"nesting dimensions must be positive, got {out}")
    if len(set(out)) != len(out):
        raise NestembError(f"nesting has duplicate dimensions: {out}")
    if any(a >= b for a, b in zip(out, out[1:])):
        raise NestembError(f"nesting must be strictly ascending, got {out}")
    if full_dim is not None:
        if out[-1] > full_dim:
            raise NestembError(
                f"nesting dimension {out[-1]} is larger than the embedding dimension {full_dim}"
            )
        if out[-1] != full_dim:
            raise NestembError(
                f"the last nesting dimension must be the full dimension {full_dim}, got {out[-1]}"
            )
    return out


def default_nesting(full_dim: int, start: int = 2) -> tuple[int, ...]:
    """Doubling nesting from ``start`` up to ``full_dim`` (which is always included).

    Example:
        >>> default_nesting(256)
        (2, 4, 8, 16, 32, 64, 128, 256)
        >>> default_nesting(384, start=32)
        (32, 64, 128, 256, 384)
    """
    if full_dim < 1 or start < 1:
        raise NestembError(f"full_dim and start must be positive, got {full_dim}, {start}")
    dims, d = [], start
    while d < full_dim:
        dims.append(d)
        d *= 2
    return tuple(dims) + (full_dim,)


def prefix_view(x: Array, m: int) -> Array:
    """The ``m``-dimensional view: first ``m`` coordinates (last axis), then L2-normalized.

    Works on numpy arrays and torch tensors (differentiably). Zero vectors stay zero.

    Example:
        >>> import numpy as np
        >>> prefix_view(np.array([[3.0, 4.0, 12.0]]), 2)
        array([[0.6, 0.8]])
    """
    d = x.shape[-1]
    if not 1 <= m <= d:
        raise NestembError(f"prefix size {m} is outside 1..{d}, the embedding dimension")
    head = x[..., :m]
    if isinstance(head, np.ndarray):
        # einsum: same result as np.linalg.norm, several times less overhead on small inputs
        # (this sits on the per-query search path)
        norm = np.sqrt(np.einsum("...i,...i->...", head, head))[..., None]
        return head / np.maximum(norm, _EPS)
    import torch  # only torch inputs reach here; keep numpy-only users free of the import cost

    return torch.nn.functional.normalize(head, p=2, dim=-1, eps=_EPS)


def check_vectors(x: Any, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """Validate a float matrix from a user: 2-D (a single 1-D vector becomes one row), non-empty,
    finite, and of dimension ``dim`` when given. Returns a C-contiguous float32 array.

    Example:
        >>> check_vectors([1.0, 2.0]).shape
        (1, 2)
        >>> check_vectors([[float("nan"), 1.0]])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: vectors contain NaN or inf values (row 0)
    """
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise NestembError(f"{what} must be a numeric array") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise NestembError(f"{what} must be 2-D (n, dim), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise NestembError(f"{what} is empty: got 0 rows")
    if dim is not None and arr.shape[1] != dim:
        raise NestembError(f"{what} have dimension {arr.shape[1]}, expected {dim}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise NestembError(f"{what} contain NaN or inf values (row {int(np.argmin(finite))})")
    return np.ascontiguousarray(arr)


def finite_matrix(x: object, name: str) -> np.ndarray:
    """``x`` as a finite, non-empty 2-D float64 array; errors name the parameter ``name``.
    The float64 sibling of :func:`check_vectors` for the analyses (Procrustes, the comparison
    measures, relative projections); unlike it, a 1-D input is refused rather than made a row.

    Example:
        >>> finite_matrix([[1, 2]], "X").dtype
        dtype('float64')
        >>> finite_matrix([[1.0, float("nan")]], "X")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: X contains NaN or inf values (row 0)
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise NestembError(f"{name} must be a numeric array") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise NestembError(f"{name} must be a non-empty 2-D (n, dim) array, got shape {arr.shape}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise NestembError(f"{name} contains NaN or inf values (row {int(np.argmin(finite))})")
    return arr


@dataclasses.dataclass
class Manifest:
    """What every stored set of embeddings says about itself.

    ``model_id`` (human-readable) and ``model_version`` (the content hash of the weights, from
    :func:`weights_version`; never hand-set) identify the encoder; ``nesting`` its valid prefixes;
    ``normalization`` the view rule (always :data:`NORMALIZATION`); ``sha256`` maps each data
    file name to its checksum; ``extra`` holds artefact-specific fields (training config, index
    configuration ...).

    Example:
        >>> m = Manifest(model_id="mrl-cnn", nesting=(8, 16), dim=16)
        >>> Manifest.from_dict(m.to_dict()) == m
        True
    """

    model_id: str
    nesting: tuple[int, ...]
    dim: int
    model_version: str = "unknown"  # vectors from outside nestemb; models set weights_version
    normalization: str = NORMALIZATION
    dtype: str = "float32"
    kind: str = "embeddings"
    sha256: dict[str, str] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = 1

    def __post_init__(self) -> None:
        self.nesting = validate_nesting(self.nesting, full_dim=self.dim)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["nesting"] = list(self.nesting)
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "manifest") -> "Manifest":
        """A manifest from its JSON form, every field checked for type and range; an error
        names ``source`` (the file) and the field.

        Example:
            >>> Manifest.from_dict({"model_id": "m", "nesting": [2, 4], "dim": "4"}, "m.json")
            Traceback (most recent call last):
            ...
            nestemb.errors.NestembError: m.json: field 'dim' must be an integer, got '4'
        """
        if not isinstance(d, dict):
            raise NestembError(f"{source}: a manifest is a JSON object, got {type(d).__name__}")
        missing = {"model_id", "nesting", "dim"} - set(d)
        if missing:
            raise NestembError(f"{source} is missing fields: {sorted(missing)}")

        def bad(field: str, want: str) -> NestembError:
            return NestembError(f"{source}: field {field!r} must be {want}, got {d[field]!r}")

        for field in ("model_id", "model_version", "normalization", "dtype", "kind"):
            if field in d and not (isinstance(d[field], str) and d[field]):
                raise bad(field, "a non-empty string")
        for field in ("dim", "format_version"):
            if field in d and not (_is_int(d[field]) and d[field] >= 1):
                raise bad(field, "an integer" if not _is_int(d[field]) else "positive")
        if not (isinstance(d["nesting"], list) and d["nesting"]
                and all(_is_int(m) for m in d["nesting"])):
            raise bad("nesting", "a non-empty list of integers")
        if d.get("normalization", NORMALIZATION) != NORMALIZATION:
            raise NestembError(
                f"{source} uses normalization {d['normalization']!r}; nestemb only reads "
                f"{NORMALIZATION!r}"
            )
        if "dtype" in d:
            try:
                np.dtype(d["dtype"])
            except TypeError:
                raise bad("dtype", "a numpy dtype name") from None
        sha = d.get("sha256", {})
        if not (isinstance(sha, dict) and all(
                isinstance(k, str) and k and not Path(k).is_absolute() and ".." not in Path(k).parts
                and isinstance(v, str) and len(v) == 64 for k, v in sha.items())):
            raise NestembError(f"{source}: field 'sha256' must map file names to sha256 hex "
                               f"digests, got {sha!r}")
        if "extra" in d and not isinstance(d["extra"], dict):
            raise bad("extra", "a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in fields})
        except NestembError as e:
            raise NestembError(f"{source}: {e}") from None

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``manifest.json`` into ``directory`` (atomically); returns its path."""
        from nestemb.io import write_json

        path = Path(directory) / MANIFEST_NAME
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Manifest":
        """Read ``manifest.json`` from ``directory``."""
        from nestemb.io import read_json

        path = Path(directory) / MANIFEST_NAME
        return cls.from_dict(read_json(path, "manifest"), source=str(path))

    @classmethod
    def open(
        cls, directory: str | os.PathLike, kind: str, what: str, verify: bool = True
    ) -> "Manifest":
        """Read the manifest of the artefact directory ``directory``, check that it holds a
        ``kind`` (``what`` names it in errors) and, unless ``verify=False``, its checksums.

        Example:
            >>> import numpy as np, tempfile, pathlib
            >>> out = pathlib.Path(tempfile.mkdtemp()) / "emb"
            >>> X = np.ones((2, 4), dtype="float32")
            >>> _ = save_embeddings(out, X, Manifest(model_id="demo", nesting=(2, 4), dim=4))
            >>> Manifest.open(out, "embeddings", "embedding directory").dim
            4
            >>> Manifest.open(out, "index", "index directory")
            Traceback (most recent call last):
            ...
            nestemb.errors.NestembError: ... holds embeddings, not an index
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise NestembError(f"{what} not found: {directory}")
        manifest = cls.load(directory)
        if manifest.kind != kind:
            raise NestembError(
                f"{directory} holds {article(manifest.kind)}, not {article(kind)}"
            )
        if verify:
            manifest.verify(directory)
        return manifest

    def verify(self, directory: str | os.PathLike) -> None:
        """Check every data file listed in ``sha256`` against its checksum."""
        from nestemb.io import sha256_file

        for name, digest in self.sha256.items():
            path = Path(directory) / name
            if not path.is_file():
                raise NestembError(f"data file listed in the manifest is missing: {path}")
            if sha256_file(path) != digest:
                raise NestembError(
                    f"checksum mismatch for {path}: the file is truncated or was modified"
                )


def _is_int(x: Any) -> bool:
    """A JSON integer (``True`` is not one)."""
    return isinstance(x, int) and not isinstance(x, bool)


MANIFEST_NAME = "manifest.json"
EMBEDDINGS_NAME = "embeddings.npy"
IDS_NAME = "ids.json"


def weights_version(weights: Mapping[str, Any] | Sequence[str | os.PathLike]) -> str:
    """A model version derived from the content of its weights: the first 16 hex digits of a
    sha256 over every tensor (name, dtype, shape, bytes; from a ``state_dict``) or over every
    weight file (name and bytes; from a list of paths). Never hand-set: two checkpoints share a
    version exactly when their weights are identical.

    Example:
        >>> import torch
        >>> a = {"w": torch.zeros(2, 2)}
        >>> weights_version(a) == weights_version({"w": torch.zeros(2, 2)})
        True
        >>> weights_version(a) == weights_version({"w": torch.ones(2, 2)})
        False
        >>> len(weights_version(a))
        16
    """
    import hashlib

    h = hashlib.sha256()
    if isinstance(weights, Mapping):
        if not weights:
            raise NestembError("weights_version: the state dict is empty")
        for name in sorted(weights):
            t = weights[name]
            arr = t.detach().cpu().contiguous().numpy() if hasattr(t, "detach") else np.asarray(t)
            h.update(f"{name}|{arr.dtype}|{tuple(arr.shape)}|".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    else:
        from nestemb.io import sha256_file

        paths = sorted(Path(p) for p in weights)
        if not paths:
            raise NestembError("weights_version: no weight files given")
        for p in paths:
            if not p.is_file():
                raise NestembError(f"weight file not found: {p}")
            h.update(f"{p.name}|{sha256_file(p)}|".encode())
    return h.hexdigest()[:16]


def check_compatible(a: Manifest, b: Manifest, what: str = "query and index") -> None:
    """Refuse to compare embeddings from different models (id or weights version) or nestings;
    the message says which of them differs.

    Example:
        >>> a = Manifest(model_id="m1", model_version="aa", nesting=(8, 16), dim=16)
        >>> check_compatible(a, Manifest(model_id="m1", model_version="bb", nesting=(8, 16), dim=16))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: query and index come from different weights of model 'm1': version 'aa' vs 'bb'
    """
    if a.model_id != b.model_id:
        raise NestembError(
            f"{what} come from different models: {a.model_id!r} (version {a.model_version!r}) "
            f"vs {b.model_id!r} (version {b.model_version!r})"
        )
    if a.model_version != b.model_version:
        raise NestembError(
            f"{what} come from different weights of model {a.model_id!r}: version "
            f"{a.model_version!r} vs {b.model_version!r}"
        )
    if a.nesting != b.nesting:
        raise NestembError(f"{what} have different nestings: {a.nesting} vs {b.nesting}")


def check_unique_ids(ids: Sequence[Any], param: str = "ids", what: str | None = None) -> None:
    """Refuse a list of ids in which one appears twice (naming it and both rows): rows are
    paired, looked up and deleted by id, so a duplicate silently loses one of them. The message
    names the parameter ``param``, or describes the ids as ``what`` (``"query ids in DIR"``).

    Example:
        >>> check_unique_ids(["a", "b", "a"])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: ids must be unique: 'a' appears at rows 0 and 2
        >>> check_unique_ids([1, 1], what="query ids in q/")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: query ids in q/ must be unique: 1 appears at rows 0 and 1
    """
    first: dict[Any, int] = {}
    for row, i in enumerate(ids):
        key = json.dumps(i) if isinstance(i, (list, dict)) else i
        if key in first:
            raise NestembError(f"{what or '{param}'} must be unique: {i!r} appears at rows "
                               f"{first[key]} and {row}", param=None if what else param)
        first[key] = row


def save_embeddings(
    directory: str | os.PathLike,
    vectors: np.ndarray,
    manifest: Manifest,
    ids: Sequence[Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an embedding file: a directory with ``embeddings.npy``, optional ``ids.json`` and
    ``manifest.json`` (with their checksums). Built in a temporary directory, then renamed.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "emb"
        >>> X = np.random.default_rng(0).normal(size=(5, 16)).astype("float32")
        >>> _ = save_embeddings(out, X, Manifest(model_id="demo", nesting=(8, 16), dim=16))
        >>> Y, man = load_embeddings(out); Y.shape, man.nesting
        ((5, 16), (8, 16))
    """
    from nestemb.io import atomic_dir, sha256_file

    vectors = check_vectors(vectors, dim=manifest.dim, what="embeddings")
    if ids is not None:
        if len(ids) != len(vectors):
            raise NestembError(f"got {len(ids)} ids for {len(vectors)} embeddings", param="ids")
        check_unique_ids(ids)
    with atomic_dir(directory, kind="embeddings", overwrite=overwrite) as tmp:
        np.save(tmp / EMBEDDINGS_NAME, vectors)
        names = [EMBEDDINGS_NAME]
        if ids is not None:
            (tmp / IDS_NAME).write_text(json.dumps(list(ids)))
            names.append(IDS_NAME)
        manifest = dataclasses.replace(
            manifest,
            dtype=str(vectors.dtype),
            kind="embeddings",
            sha256={n: sha256_file(tmp / n) for n in names},
        )
        manifest.save(tmp)
    return Path(directory)


def load_embeddings(
    directory: str | os.PathLike, mmap: bool = False, with_ids: bool = False
) -> tuple[np.ndarray, Manifest] | tuple[np.ndarray, Manifest, list | None]:
    """Read an embedding file written by :func:`save_embeddings`, verifying its checksums.
    The sharded directory of ``nestemb embed --ray`` is read too (:func:`nestemb.bulk.load_shards`).

    Example: see :func:`save_embeddings`.
    """
    directory = Path(directory)
    from nestemb import bulk

    if bulk.is_shard_dir(directory):
        X, man, ids = bulk.load_shards(directory, mmap=mmap)
        return (X, man, ids) if with_ids else (X, man)
    manifest = Manifest.open(directory, "embeddings", "embedding directory")
    try:
        vectors = np.load(directory / EMBEDDINGS_NAME, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
        raise NestembError(f"cannot read {directory / EMBEDDINGS_NAME}: {e}") from None
    if vectors.dtype.kind != "f":
        raise NestembError(f"{directory / EMBEDDINGS_NAME} holds {vectors.dtype} values, not "
                           "floats")
    if vectors.ndim != 2 or vectors.shape[1] != manifest.dim:
        raise NestembError(
            f"{directory / EMBEDDINGS_NAME} has shape {vectors.shape}, manifest says dim "
            f"{manifest.dim}"
        )
    if not with_ids:
        return vectors, manifest
    ids_path = directory / IDS_NAME
    if not ids_path.is_file():
        return vectors, manifest, None
    from nestemb.io import read_json

    ids = read_json(ids_path, "ids file")
    if not isinstance(ids, list) or len(ids) != len(vectors):
        raise NestembError(f"{ids_path} must be a JSON list of {len(vectors)} ids, one per row")
    try:
        check_unique_ids(ids)
    except NestembError as e:
        raise NestembError(f"{ids_path}: {e}") from None
    return vectors, manifest, ids
