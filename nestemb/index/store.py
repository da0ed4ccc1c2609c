"""What every nestemb index shares: vectors stored once, an id map, deletion, re-ranking with
prefix views, and the on-disk directory format.

An index directory holds::

    manifest.json   kind "index": model id/version, nesting, normalization, dim, dtype,
                    the index type and its parameters, tuning results, sha256 of every file
    vectors.npy     the full float32 vectors, exactly as added (memory-mapped on load)
    ids.npy         the external id of each row (int64 or unicode)
    deleted.npy     a tombstone flag per row (``delete`` marks, ``compact`` removes)
    *.faiss         the index type's own search structures (first stage, quantizer, lists)

Saving builds the whole directory in a temporary sibling and renames it into place
(:func:`nestemb.io.atomic_dir`): a crash mid-write leaves the previous index readable. Loading
verifies every checksum.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.nesting import Manifest, check_compatible, check_vectors, prefix_view, validate_nesting

VECTORS_NAME = "vectors.npy"
IDS_NAME = "ids.npy"
DELETED_NAME = "deleted.npy"
INDEX_KIND = "index"

_REGISTRY: dict[str, type] = {}


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` largest scores in descending order and their column positions.

    Uses ``argpartition`` (linear) and sorts only the ``k`` kept.

    Example:
        >>> topk(np.array([[0.1, 0.9, 0.5]]), 2)
        (array([[0.9, 0.5]]), array([[1, 2]]))
    """
    n = scores.shape[1]
    k = min(k, n)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(part, order, axis=1)


def exact_search(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    dim: int | None = None,
    exclude: np.ndarray | None = None,
    block: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-``k`` by inner product of ``dim``-prefix views (default: full dimension).

    The reference every index is tested and benchmarked against. Scans ``vectors`` in blocks
    (works on a memory map); rows flagged in ``exclude`` never appear. Returns ``(scores, rows)``.

    Example:
        >>> X = np.array([[1, 0], [0, 1], [1, 1]], dtype="float32")
        >>> exact_search(X, np.array([[1, 0.1]], dtype="float32"), 2)[1]
        array([[0, 2]])
    """
    dim = dim or vectors.shape[1]
    Q = prefix_view(np.asarray(queries, dtype=np.float32), dim)
    nq = len(Q)
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_r = np.zeros((nq, 0), dtype=np.int64)
    for a in range(0, len(vectors), block):
        V = prefix_view(np.asarray(vectors[a : a + block], dtype=np.float32), dim)
        s = Q @ V.T
        if exclude is not None:
            s[:, exclude[a : a + block]] = -np.inf
        rows = np.broadcast_to(np.arange(a, a + len(V)), s.shape)
        s = np.concatenate([best_s, s], axis=1)
        rows = np.concatenate([best_r, rows], axis=1)
        best_s, pos = topk(s, k)
        best_r = np.take_along_axis(rows, pos, axis=1)
    return best_s, best_r


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` found in the same row of ``found``.

    Example:
        >>> recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 4, 1]]))
        0.6666666666666666
    """
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.sum(hits) / truth.size)


def _normalize_ids(ids: Any, n: int) -> np.ndarray:
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if arr.ndim != 1 or len(arr) != n:
        raise NestembError(f"got {arr.size} ids for {n} vectors; give one id per vector")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "U":
        return arr
    raise NestembError(f"ids must be all integers or all strings, got dtype {arr.dtype}")


class PrefixIndex:
    """Base class of nestemb indexes (not used directly): see :class:`~nestemb.index.FunnelIndex`
    and :class:`~nestemb.index.AdaptiveIVFIndex`.

    Subclasses implement ``_validate(dim)``, ``_train(X)`` (build empty, trained structures),
    ``_add_rows(X, rows)``, ``_search_rows(Q, k)``, ``_files()`` / ``_write(dir)`` /
    ``_read(dir)`` and ``_used_dims()``.

    Example:
        >>> issubclass(PrefixIndex, object)
        True
    """

    _param_names: tuple[str, ...] = ()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _REGISTRY[cls.__name__] = cls

    # ----------------------------------------------------------------- parameters
    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, as a dict (JSON-serializable)."""
        out = {}
        for name in self._param_names:
            v = getattr(self, name)
            out[name] = list(v) if isinstance(v, tuple) else v
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "vectors_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NestembError(f"{type(self).__name__} is empty: call add(X) first")

    def __len__(self) -> int:
        """Number of live (not deleted) vectors."""
        if not self.is_fitted:
            return 0
        return int(len(self.ids_) - self.n_deleted_)

    @property
    def dim(self) -> int:
        self._check_fitted()
        return int(self.vectors_.shape[1])

    # ----------------------------------------------------------------- nesting / manifest
    def _resolve_nesting(self, dim: int) -> tuple[int, ...]:
        used = tuple(self._used_dims(dim))
        if self.nesting is None:
            nesting = tuple(sorted(set(used) | {dim}))
        else:
            nesting = tuple(int(d) for d in self.nesting)
        nesting = validate_nesting(nesting, full_dim=dim)
        for d in used:
            if d not in nesting:
                raise NestembError(f"stage dim {d} is not in the nesting {nesting}")
        return nesting

    def _make_manifest(self, dim: int) -> Manifest:
        return Manifest(
            model_id=str(self.model_id),
            model_version=str(self.model_version),
            nesting=self._resolve_nesting(dim),
            dim=dim,
            kind=INDEX_KIND,
            dtype="float32",
        )

    @property
    def manifest(self) -> Manifest:
        """The index's manifest (model identity, nesting, configuration)."""
        self._check_fitted()
        return self.manifest_

    # ----------------------------------------------------------------- add / delete
    def add(self, X: Any, ids: Sequence[Any] | None = None):
        """Add vectors (raw embeddings; views are normalized per stage) with optional ids.

        Without ``ids`` rows get consecutive integers after the largest existing integer id.
        Returns ``self``.
        """
        first = not self.is_fitted
        X = check_vectors(X, dim=None if first else self.dim, what="vectors")
        if first:
            self._validate(X.shape[1])
            manifest = self._make_manifest(X.shape[1])
        n_old = 0 if first else len(self.ids_)
        if ids is None:
            if not first and self.ids_.dtype.kind == "U":
                raise NestembError("this index uses string ids: pass ids= for new vectors")
            start = 0 if first or n_old == 0 else int(self.ids_.max()) + 1
            new_ids = np.arange(start, start + len(X), dtype=np.int64)
        else:
            new_ids = _normalize_ids(ids, len(X))
            if not first and new_ids.dtype.kind != self.ids_.dtype.kind:
                raise NestembError(
                    f"ids must have the same type as the index's ids ({self.ids_.dtype.kind!r}"
                    f" kind), got {new_ids.dtype}"
                )
        uniq, counts = np.unique(new_ids, return_counts=True)
        if (counts > 1).any():
            raise NestembError(f"duplicate ids in the batch: {uniq[counts > 1][:5].tolist()}")
        if not first:
            lookup = self._id_map()
            clash = [i for i in new_ids.tolist() if i in lookup]
            if clash:
                raise NestembError(f"ids already in the index: {clash[:5]}")
        if first:
            self.manifest_ = manifest
            self._train(X)
            self.vectors_ = X
            self.ids_ = new_ids
            self.deleted_ = np.zeros(len(X), dtype=bool)
            self.n_deleted_ = 0
            self.tuning_ = None
        else:
            self.vectors_ = np.concatenate([np.asarray(self.vectors_), X])
            self.ids_ = np.concatenate([self.ids_, new_ids])
            self.deleted_ = np.concatenate([self.deleted_, np.zeros(len(X), dtype=bool)])
        self._add_rows(X, np.arange(n_old, n_old + len(X), dtype=np.int64))
        self._lookup = None
        return self

    def _id_map(self) -> dict:
        if getattr(self, "_lookup", None) is None:
            live = np.flatnonzero(~self.deleted_)
            self._lookup = dict(zip(self.ids_[live].tolist(), live.tolist()))
        return self._lookup

    def delete(self, ids: Sequence[Any]):
        """Mark the vectors with these ids deleted (they never appear in results again).

        Unknown or duplicate ids raise :class:`NestembError` and nothing is deleted. Space is
        reclaimed by :meth:`compact`. Returns ``self``.
        """
        self._check_fitted()
        arr = np.atleast_1d(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids))
        if arr.size == 0:
            raise NestembError("delete: no ids given")
        uniq, counts = np.unique(arr, return_counts=True)
        if (counts > 1).any():
            raise NestembError(f"delete: duplicate ids {uniq[counts > 1][:5].tolist()}")
        lookup = self._id_map()
        keys = arr.tolist()
        unknown = [i for i in keys if i not in lookup]
        if unknown:
            raise NestembError(f"delete: unknown ids {unknown[:5]}")
        if len(keys) >= len(self):
            raise NestembError("delete: cannot delete every vector of the index")
        rows = np.array([lookup[i] for i in keys], dtype=np.int64)
        self.deleted_ = self.deleted_.copy()
        self.deleted_[rows] = True
        self.n_deleted_ = int(self.deleted_.sum())
        self._lookup = None
        return self

    def compact(self):
        """Drop deleted rows for good and rebuild the search structures. Returns ``self``."""
        self._check_fitted()
        if self.n_deleted_ == 0:
            return self
        keep = ~self.deleted_
        X = np.ascontiguousarray(np.asarray(self.vectors_)[keep])
        self.vectors_, self.ids_ = X, self.ids_[keep]
        self.deleted_ = np.zeros(len(X), dtype=bool)
        self.n_deleted_ = 0
        self._train(X)
        self._add_rows(X, np.arange(len(X), dtype=np.int64))
        self._lookup = None
        return self

    # ----------------------------------------------------------------- search
    def _check_k(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise NestembError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if k <= 0:
            raise NestembError(f"k must be positive, got {k}")
        if k > len(self):
            raise NestembError(f"k={k} is larger than the index, which holds {len(self)} vectors")
        return k

    def search(self, Q: Any, k: int = 10, manifest: Manifest | None = None):
        """Top-``k`` by inner product of normalized views: ``(scores, ids)``, each
        ``(n_queries, k)``. ``Q`` is one raw query ``(D,)`` or a batch ``(n, D)``. Pass the
        queries' ``manifest`` to have model and nesting checked against the index's.
        A row found by no stage (possible with approximate first stages) has score ``-inf``.
        """
        self._check_fitted()
        if manifest is not None:
            check_compatible(manifest, self.manifest_, what="queries and index")
        Q = check_vectors(Q, dim=self.dim, what="queries")
        k = self._check_k(k)
        scores, rows = self._search_rows(Q, k)
        return scores, self._rows_to_ids(rows)

    def _rows_to_ids(self, rows: np.ndarray) -> np.ndarray:
        ids = self.ids_[np.maximum(rows, 0)]
        if (rows < 0).any():
            ids = ids.copy()
            ids[rows < 0] = -1 if ids.dtype.kind == "i" else ""
        return ids

    def _drop_deleted(self, scores: np.ndarray, rows: np.ndarray, keep: int):
        """Remove tombstoned rows from a first-stage result, keeping the best ``keep``."""
        if self.n_deleted_:
            dead = (rows >= 0) & self.deleted_[np.maximum(rows, 0)]
            scores = np.where(dead, -np.inf, scores)
            rows = np.where(dead, -1, rows)
            scores, pos = topk(scores, keep)
            rows = np.take_along_axis(rows, pos, axis=1)
        return scores[:, :keep], rows[:, :keep]

    def _rerank(self, Q: np.ndarray, cand: np.ndarray, d: int, keep: int):
        """Re-score candidate rows with ``d``-prefix views of the stored full vectors."""
        nq, s = cand.shape
        keep = min(keep, s)
        Qd = prefix_view(Q, d)
        vectors = self.vectors_
        if isinstance(vectors, np.memmap):  # plain view: memmap fancy indexing costs ~30 us more
            vectors = vectors.view(np.ndarray)
        if nq == 1:  # single query: fewer numpy calls (latency is dominated by overhead)
            c = cand[0]
            c = c[c >= 0]
            sc = prefix_view(vectors[c, :d], d) @ Qd[0]
            part = np.argpartition(-sc, keep - 1)[:keep] if keep < len(c) else np.arange(len(c))
            part = part[np.argsort(-sc[part], kind="stable")]
            out_s = np.full((1, keep), -np.inf, dtype=np.float32)
            out_r = np.full((1, keep), -1, dtype=np.int64)
            out_s[0, : len(part)], out_r[0, : len(part)] = sc[part], c[part]
            return out_s, out_r
        out_s = np.empty((nq, keep), dtype=np.float32)
        out_r = np.empty((nq, keep), dtype=np.int64)
        chunk = max(1, (1 << 22) // max(1, s * d))
        for a in range(0, nq, chunk):
            c = cand[a : a + chunk]
            safe = np.maximum(c, 0)
            V = prefix_view(vectors[safe.ravel(), :d], d).reshape(len(c), s, d)
            sc = np.matmul(V, Qd[a : a + chunk, :, None])[..., 0]
            sc[c < 0] = -np.inf
            best, pos = topk(sc, keep)
            out_s[a : a + chunk] = best
            out_r[a : a + chunk] = np.where(np.isfinite(best), np.take_along_axis(c, pos, 1), -1)
        return out_s, out_r

    # ----------------------------------------------------------------- persistence
    def _config(self) -> dict[str, Any]:
        return {
            "index_type": type(self).__name__,
            "params": self.get_params(),
            "n_vectors": int(len(self.ids_)),
            "n_deleted": int(self.n_deleted_),
            "tuning": self.tuning_,
        }

    def save(self, path: str | os.PathLike, overwrite: bool | None = None) -> Path:
        """Write the index directory atomically; returns its path.

        An existing nestemb index at ``path`` is replaced (only once the new one is complete);
        any other non-empty directory is refused unless ``overwrite=True``.
        """
        import dataclasses

        from nestemb.io import atomic_dir, sha256_file

        self._check_fitted()
        path = Path(path)
        if overwrite is None:
            overwrite = (path / "manifest.json").is_file()
        with atomic_dir(path, overwrite=overwrite) as tmp:
            np.save(tmp / VECTORS_NAME, np.asarray(self.vectors_))
            np.save(tmp / IDS_NAME, self.ids_)
            np.save(tmp / DELETED_NAME, self.deleted_)
            names = [VECTORS_NAME, IDS_NAME, DELETED_NAME, *self._write(tmp)]
            self.manifest_ = dataclasses.replace(
                self.manifest_,
                extra=self._config(),
                sha256={n: sha256_file(tmp / n) for n in names},
            )
            self.manifest_.save(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True):
        """Read an index directory (vectors memory-mapped by default), verifying checksums."""
        path = Path(path)
        manifest = Manifest.open(path, INDEX_KIND, "index directory", verify=False)
        kind = manifest.extra.get("index_type")
        target = _REGISTRY.get(kind)
        if target is None:
            raise NestembError(f"{path}: unknown index type {kind!r}")
        if cls is not PrefixIndex and not issubclass(target, cls):
            raise NestembError(f"{path} holds a {kind}, not a {cls.__name__}")
        if verify:
            manifest.verify(path)
        params = dict(manifest.extra.get("params", {}))
        self = target(**params)
        try:
            self.vectors_ = np.load(path / VECTORS_NAME, mmap_mode="r" if mmap else None)
            self.ids_ = np.load(path / IDS_NAME)
            self.deleted_ = np.load(path / DELETED_NAME)
        except (OSError, ValueError) as e:
            raise NestembError(f"cannot read index data in {path}: {e}") from None
        n = len(self.vectors_)
        if self.vectors_.ndim != 2 or self.vectors_.shape[1] != manifest.dim:
            raise NestembError(f"{path}: vectors have shape {self.vectors_.shape}, manifest dim "
                               f"{manifest.dim}")
        if len(self.ids_) != n or len(self.deleted_) != n:
            raise NestembError(f"{path}: ids/deleted flags do not match the {n} vectors")
        self.n_deleted_ = int(self.deleted_.sum())
        self.tuning_ = manifest.extra.get("tuning")
        self.manifest_ = manifest
        self._lookup = None
        self._read(path)
        return self


def load_index(path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> PrefixIndex:
    """Load any nestemb index directory (the type is read from its manifest).

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
        >>> X = synthetic_matryoshka(200, 32, seed=0)
        >>> p = FunnelIndex(dims=(8, 32), shortlist=(50,)).add(X).save(
        ...     pathlib.Path(tempfile.mkdtemp()) / "idx")
        >>> type(load_index(p)).__name__, len(load_index(p))
        ('FunnelIndex', 200)
    """
    return PrefixIndex.load(path, mmap=mmap, verify=verify)


def synthetic_matryoshka(
    n: int, dim: int, seed: int = 0, decay: float = 0.08, n_clusters: int = 64
) -> np.ndarray:
    """Clustered test vectors whose energy decays across coordinates (like MRL embeddings),
    so that short prefixes already rank well. Plain Gaussian noise has no such structure.

    Example:
        >>> X = synthetic_matryoshka(100, 16)
        >>> X.shape, X.dtype, bool(np.abs(X[:, 0]).mean() > np.abs(X[:, -1]).mean())
        ((100, 16), dtype('float32'), True)
    """
    rng = np.random.default_rng(seed)
    scale = np.exp(-decay * np.arange(dim))
    centers = rng.normal(size=(n_clusters, dim))
    X = centers[rng.integers(0, n_clusters, size=n)] + 0.6 * rng.normal(size=(n, dim))
    return (X * scale).astype(np.float32)
