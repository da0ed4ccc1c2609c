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
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, overload

import numpy as np

from nestemb.checks import check_matrix
from nestemb.errors import NestembError
from nestemb.io import article

if TYPE_CHECKING:
    import torch

NORMALIZATION = "slice-then-l2"
"""The name written into manifests for the prefix-view rule of :func:`prefix_view`."""

_EPS = 1e-12



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


@overload
def prefix_view(x: np.ndarray, m: int) -> np.ndarray: ...
@overload
def prefix_view(x: "torch.Tensor", m: int) -> "torch.Tensor": ...
def prefix_view(x: Any, m: int) -> Any:
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


def prefix_norms(x: "torch.Tensor", ends: "torch.Tensor") -> "torch.Tensor":
    """L2 norms of every prefix of the rows of a torch tensor ``x`` at once: ``(..., K)`` for the
    prefix lengths ``ends + 1`` (an int64 tensor of last indices), each at least the epsilon
    of :func:`prefix_view`. One cumulative sum instead of one reduction per prefix: the
    per-prefix heads and the prefix-cosine loss take every prefix's norm each training step.

    Example:
        >>> import torch
        >>> prefix_norms(torch.tensor([[3.0, 4.0, 12.0]]), torch.tensor([0, 1, 2]))
        tensor([[ 3.,  5., 13.]])
    """
    return x.pow(2).cumsum(-1).index_select(-1, ends).clamp_min(_EPS * _EPS).sqrt()


def check_vectors(x: Any, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """Validate a float matrix from a user: 2-D (a single 1-D vector becomes one row), non-empty,
    finite, and of dimension ``dim`` when given. Returns a C-contiguous float32 array
    (:func:`nestemb.checks.check_matrix` with ``one_row``).

    Example:
        >>> check_vectors([1.0, 2.0]).shape
        (1, 2)
        >>> check_vectors([[float("nan"), 1.0]])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: vectors contains NaN or inf values (row 0)
    """
    return check_matrix(x, what, dim=dim, one_row=True)


def finite_matrix(x: object, name: str) -> np.ndarray:
    """``x`` as a finite, non-empty 2-D float64 array for the analyses (Procrustes, the
    comparison measures, relative projections): :func:`nestemb.checks.check_matrix` in float64,
    a 1-D input refused.

    Example:
        >>> finite_matrix([[1, 2]], "X").dtype
        dtype('float64')
        >>> finite_matrix([[1.0, float("nan")]], "X")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: X contains NaN or inf values (row 0)
    """
    return check_matrix(x, name, dtype=np.float64)


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
        parent = d.get("extra", {}).get("parent")
        if parent is not None and not (isinstance(parent, dict) and all(
                isinstance(parent.get(k), str) and parent[k] for k in ("model_id", "model_version"))):
            raise NestembError(f"{source}: field 'extra.parent' must name the parent model "
                               f"(model_id and model_version, non-empty strings), got {parent!r}")
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
            >>> import tempfile, pathlib
            >>> out = pathlib.Path(tempfile.mkdtemp())
            >>> _ = Manifest(model_id="demo", nesting=(2, 4), dim=4).save(out)
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


def parent_of(manifest: Manifest) -> tuple[str, str] | None:
    """``(model_id, model_version)`` of the model whose submodel wrote ``manifest``'s
    embeddings (``extra.parent``, set by :func:`nestemb.models.elastic.extract`), or ``None``.

    Example:
        >>> m = Manifest(model_id="cnn-w0.25", model_version="bb", nesting=(4,), dim=4,
        ...              extra={"parent": {"model_id": "cnn", "model_version": "aa"}})
        >>> parent_of(m), parent_of(Manifest(model_id="cnn", nesting=(4,), dim=4))
        (('cnn', 'aa'), None)
    """
    p = manifest.extra.get("parent")
    if isinstance(p, dict) and isinstance(p.get("model_id"), str) and isinstance(p.get("model_version"), str):
        return p["model_id"], p["model_version"]
    return None


def lineage(manifest: Manifest) -> dict[str, Any]:
    """What an artefact made from ``manifest``'s model or embeddings copies into its own
    manifest's ``extra`` so that its identity travels: the parent of a submodel (``{}`` for an
    ordinary model).

    Example:
        >>> lineage(Manifest(model_id="cnn-w0.5", nesting=(4,), dim=4, extra={
        ...     "parent": {"model_id": "cnn", "model_version": "aa"}, "slice": {}}))
        {'parent': {'model_id': 'cnn', 'model_version': 'aa'}}
    """
    p = parent_of(manifest)
    return {} if p is None else {"parent": {"model_id": p[0], "model_version": p[1]}}


def check_compatible(a: Manifest, b: Manifest, what: str = "query and index") -> None:
    """Refuse to compare embeddings from different models (id or weights version) or nestings;
    the message says which of them differs.

    The embeddings of a submodel cut out of an elastic model (``extra.parent``, see
    :func:`parent_of`) live in their parent's space: they are compared with the parent's, and
    with those of the parent's other submodels, without an adapter; a submodel of another
    parent is refused, naming both parents.

    Example:
        >>> a = Manifest(model_id="m1", model_version="aa", nesting=(8, 16), dim=16)
        >>> check_compatible(a, Manifest(model_id="m1", model_version="bb", nesting=(8, 16), dim=16))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: query and index come from different weights of model 'm1': version 'aa' vs 'bb'
        >>> sub = Manifest(model_id="m1-w0.5", model_version="cc", nesting=(8, 16), dim=16,
        ...                extra={"parent": {"model_id": "m1", "model_version": "aa"}})
        >>> check_compatible(sub, a)                  # a submodel's queries, its parent's index
        >>> check_compatible(sub, Manifest(model_id="m1", model_version="bb", nesting=(8, 16), dim=16))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: query and index come from different parents: 'm1-w0.5' (version 'cc') is a submodel of 'm1' (version 'aa'); 'm1' (version 'bb') is a full model, no submodel
    """
    pa, pb = parent_of(a), parent_of(b)
    if (pa or pb) and (a.model_id, a.model_version) != (b.model_id, b.model_version):
        space_a = pa or (a.model_id, a.model_version)
        space_b = pb or (b.model_id, b.model_version)
        if space_a != space_b:

            def whose(m: Manifest, p: tuple[str, str] | None) -> str:
                me = f"{m.model_id!r} (version {m.model_version!r})"
                if p is None:
                    return f"{me} is a full model, no submodel"
                return f"{me} is a submodel of {p[0]!r} (version {p[1]!r})"

            raise NestembError(f"{what} come from different parents: {whose(a, pa)}; {whose(b, pb)}")
        if a.nesting != b.nesting:
            raise NestembError(f"{what} have different nestings: {a.nesting} vs {b.nesting}")
        return
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
