"""What every nestemb index shares: vectors stored once, an id map, training, add / delete /
compact, re-ranking with prefix views, one ``set_params`` contract, tuning records and one
memory report.

Life cycle: ``train(X)`` learns the search structures (k-means lists, int8 ranges, OPQ ...)
from a sample; ``add(X, ids)`` stores vectors and fills the structures. ``add`` on an index
that was never trained trains on that first batch (logged on the ``nestemb.index`` logger), so
``Index(...).add(X)`` stays a one-liner. Persistence lives in :mod:`nestemb.index.persist`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nestemb.checks import check_finite_rows, non_empty_str, positive_int
from nestemb.errors import NestembError
from nestemb.exact import exact_search, topk
from nestemb.io import chunk_rows
from nestemb.index.persist import INDEX_KIND, read_index, register_index_type, save_index
from nestemb.nesting import Manifest, check_compatible, check_vectors, prefix_view, validate_nesting

logger = logging.getLogger("nestemb.index")

IDENTITY_PARAMS = ("nesting", "model_id", "model_version")
"""Parameters that describe the embeddings (not the search); fixed once an index is trained."""


def normalize_ids(ids: Any, n: int) -> np.ndarray:
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if arr.ndim != 1 or len(arr) != n:
        raise NestembError(f"got {arr.size} ids for {n} vectors; give one id per vector")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "U":
        return arr
    raise NestembError(f"ids must be all integers or all strings, got dtype {arr.dtype}")


pos_int = positive_int
"""Kept for the engines (``nestemb/engines``) until they import :func:`nestemb.checks.positive_int`."""


MIN_PREFIX_NORM = 1e-30
"""The smallest norm a vector's first nesting prefix may have (stored and query vectors alike):
below it the prefix has no direction to compare, and every score against it would be 0. The
HTTP service refuses the same vectors."""


def check_prefix_norms(X: Any, d: int, what: str = "vectors", chunk: int = 65536) -> None:
    """Refuse rows of ``X`` whose first ``d`` coordinates have norm below
    :data:`MIN_PREFIX_NORM` (computed in float64), naming the first such row. A memory map is
    read in chunks of ``chunk`` rows, never whole.

    Example:
        >>> check_prefix_norms(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 5.0]]), 2)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: vectors row 1: the first 2 dims are all zero or nearly (norm < 1e-30): no direction to compare
        >>> check_prefix_norms(np.array([[1e-20, 0.0, 0.0]]), 2)   # tiny is still a direction
    """
    if len(X) == 1 and isinstance(X, np.ndarray) and X.dtype.kind == "f":  # one query: fast
        v = X[0, :d]
        if float(v @ v) > 1e-36:
            return
    for a in range(0, len(X), chunk):
        head = np.asarray(X[a : a + chunk, :d])
        if head.dtype.kind == "f" and np.einsum("ij,ij->i", head, head).min() > 1e-36:
            continue  # the common case, cheap on the per-query path; else exactly, in float64
        head = head.astype(np.float64)
        sq = np.einsum("ij,ij->i", head, head)
        bad = sq < MIN_PREFIX_NORM * MIN_PREFIX_NORM
        if bad.any():
            row = a + int(np.argmax(bad))
            raise NestembError(
                f"{what} row {row}: the first {d} dims are all zero or nearly (norm < "
                f"{MIN_PREFIX_NORM:g}): no direction to compare"
            )


def ladder(start: int, stop: int, ratio: float = 2.0) -> list[int]:
    """``start, start * ratio, start * ratio^2 ...`` (rounded, distinct) up to ``stop``: the
    sizes candidate grids walk (doubling by default).

    Example:
        >>> ladder(10, 100)
        [10, 20, 40, 80]
        >>> ladder(16, 64, ratio=2 ** 0.5)
        [16, 23, 32, 45, 64]
    """
    out: list[int] = []
    i = 0
    while (v := int(round(start * ratio**i))) <= stop:
        if not out or v > out[-1]:
            out.append(v)
        i += 1
    return out


def _plain(value: Any) -> Any:
    """Tuples as lists (the JSON form of a parameter), so that values compare like saved ones."""
    return list(value) if isinstance(value, tuple) else value


class PrefixIndex:
    """Base class of nestemb indexes (not used directly): see :class:`~nestemb.index.FunnelIndex`,
    :class:`~nestemb.index.AdaptiveIVFIndex` and :class:`~nestemb.index.AdaptiveOPQIndex`.

    Public fitted attributes (read them, never assign): ``vectors_`` (the full float32 vectors,
    one row per added vector, memory-mapped after load; :class:`~nestemb.index.FunnelIndex`
    stores them L2-normalized, which changes none of their prefix views), ``ids_`` (the external id of each row),
    ``deleted_`` (tombstone per row), ``next_id_`` (the next auto-assigned integer id: ids are
    never reused), ``manifest_`` and ``tuning_`` (the last
    :meth:`set_tuning` record, or ``None``).

    Subclasses implement ``_validate(dim)``, ``_used_dims(dim)``, ``_train(X)`` (build trained,
    empty structures), ``_clear()`` (empty them, keeping what was learned), ``_add_rows(X, rows)``,
    ``_search_rows(Q, k)``, ``_structure()`` (the parameters whose change needs a rebuild),
    ``_memory_parts()``, ``_write(dir)`` / ``_read(dir)`` and :meth:`candidate_grid`.

    Example:
        >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
        >>> idx = FunnelIndex(dims=(8, 32), shortlist=(40,))
        >>> isinstance(idx, PrefixIndex), idx.is_trained, len(idx)
        (True, False, 0)
        >>> idx.train(synthetic_matryoshka(300, 32)).is_trained, len(idx)
        (True, 0)
    """

    _param_names: tuple[str, ...] = ()

    # identity (set by ``_set_identity`` in every subclass constructor)
    nesting: tuple[int, ...] | None
    model_id: str
    model_version: str
    # fitted state: set by ``train`` / ``add`` / ``load``, absent before (``is_trained`` tests
    # for ``manifest_``), hence declared here without values
    manifest_: Manifest
    vectors_: np.ndarray
    ids_: np.ndarray
    deleted_: np.ndarray
    n_deleted_: int
    next_id_: int
    tuning_: dict[str, Any] | None
    _lookup: dict[Any, int] | None
    _warned_k: int

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        register_index_type(cls)

    def _set_identity(self, nesting: Sequence[int] | None, model_id: str, model_version: str) -> None:
        self.nesting = None if nesting is None else validate_nesting(nesting)
        for name, value in (("model_id", model_id), ("model_version", model_version)):
            non_empty_str(value, name)
        self.model_id, self.model_version = model_id, model_version

    # ----------------------------------------------------------------- subclass hooks
    def _validate(self, dim: int) -> None:
        """Refuse parameters that do not fit ``dim``-dimensional embeddings."""
        raise NotImplementedError

    def _used_dims(self, dim: int) -> tuple[int, ...]:
        """The prefix dims the search structures use."""
        raise NotImplementedError

    def _structure(self) -> tuple:
        """The parameters whose change needs a rebuild."""
        raise NotImplementedError

    def _train(self, X: np.ndarray) -> None:
        """Build trained, empty search structures from ``X``."""
        raise NotImplementedError

    def _clear(self) -> None:
        """Empty the search structures, keeping what was learned."""
        raise NotImplementedError

    def _add_rows(self, X: Any, rows: Any) -> None:
        """Fill the search structures with ``X`` stored at row positions ``rows``."""
        raise NotImplementedError

    def _search_rows(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, rows)`` of the prepared queries ``Q``."""
        raise NotImplementedError

    def _memory_parts(self) -> dict[str, float]:
        """Bytes per vector of the search structures, by part."""
        raise NotImplementedError

    # ----------------------------------------------------------------- parameters
    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, as a JSON-serializable dict (tuples become lists).

        Example:
            >>> from nestemb.index import AdaptiveIVFIndex
            >>> AdaptiveIVFIndex(nlist=8, nprobe=2).get_params()["nprobe"]
            2
        """
        return {name: _plain(getattr(self, name)) for name in self._param_names}

    def set_params(self, **params: Any) -> "PrefixIndex":
        """Change parameters, validated exactly as the constructor validates them; returns
        ``self``. Unknown names are an error naming them.

        On a trained index, search-time parameters (shortlists, re-rank depth, ``nprobe``,
        ``ef_search`` ...) apply at once; a change of structure (first-stage prefix, dtype, lists,
        codec ...) rebuilds the search structures from the stored vectors (logged); ``nesting``,
        ``model_id`` and ``model_version`` describe the embeddings and cannot change. A changed
        configuration drops the :meth:`set_tuning` record, which described the old one.

        Example:
            >>> from nestemb.index import AdaptiveIVFIndex
            >>> AdaptiveIVFIndex(nlist=8).set_params(nprobe=4).nprobe
            4
            >>> AdaptiveIVFIndex(nlist=8).set_params(nprobes=4)
            Traceback (most recent call last):
            ...
            nestemb.errors.NestembError: unknown AdaptiveIVFIndex parameters: ['nprobes'] (valid: ...)
        """
        current = self.get_params()
        unknown = sorted(set(params) - set(current))
        if unknown:
            raise NestembError(
                f"unknown {type(self).__name__} parameters: {unknown} (valid: {', '.join(current)})"
            )
        new = type(self)(**{**current, **params})
        changed = [n for n in self._param_names if _plain(getattr(new, n)) != current[n]]
        if not changed:
            return self
        if self.is_trained:
            fixed = [n for n in changed if n in IDENTITY_PARAMS]
            if fixed:
                raise NestembError(
                    f"{', '.join(fixed)} cannot change once the index is trained (they describe "
                    "its embeddings): build a new index"
                )
            new._validate(self.dim)
            nesting = new.resolve_nesting(self.dim)
            rebuild = new._structure() != self._structure()
            if rebuild and len(self.ids_) == 0:
                raise NestembError(
                    f"changing {', '.join(changed)} needs retraining: call train(X) again"
                )
        for name in self._param_names:
            setattr(self, name, getattr(new, name))
        if self.is_trained:
            self.manifest_ = dataclasses.replace(self.manifest_, nesting=nesting)
            self.tuning_ = None
            if rebuild:
                logger.info("%s: rebuilding the search structures from %d stored vectors "
                            "(changed: %s)", type(self).__name__, len(self.ids_), ", ".join(changed))
                self._rebuild()
        return self

    def _rebuild(self) -> None:
        """Rebuild the search structures from the stored vectors (after a structural change)."""
        X = np.asarray(self.vectors_)
        self._train(X)
        self._add_rows(X, np.arange(len(X), dtype=np.int64))

    def candidate_grid(self, k: int = 10, *, max_candidates: int = 8192) -> list[list[dict]]:
        """The search configurations :func:`~nestemb.index.tune` tries on this index: groups of
        :meth:`set_params` keyword sets, each group ordered by one cost knob so that recall grows
        along it. Shortlist / re-rank sizes stay within ``max_candidates``."""
        raise NestembError(f"{type(self).__name__} defines no candidate grid to tune")

    def set_tuning(self, result: dict[str, Any]) -> "PrefixIndex":
        """Apply a tuning result (``result["params"]`` through :meth:`set_params`) and record it
        as ``tuning_`` (saved in the manifest by :meth:`save`). Returns ``self``.

        Example:
            >>> from nestemb.index import AdaptiveIVFIndex
            >>> idx = AdaptiveIVFIndex(nlist=8).set_tuning({"params": {"nprobe": 2}, "recall": 0.9})
            >>> idx.nprobe, idx.tuning_["recall"]
            (2, 0.9)
        """
        if not isinstance(result, dict) or not isinstance(result.get("params"), dict):
            raise NestembError("a tuning result must be a dict with a 'params' dict")
        self.set_params(**result["params"])
        self.tuning_ = dict(result)
        self._warned_k = 0
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ----------------------------------------------------------------- state
    @property
    def is_trained(self) -> bool:
        """Whether the search structures are trained (by :meth:`train` or a first :meth:`add`)."""
        return hasattr(self, "manifest_")

    def _check_fitted(self) -> None:
        if len(self) == 0:
            raise NestembError(f"{type(self).__name__} is empty: call add(X) first")

    def __len__(self) -> int:
        """Number of live (not deleted) vectors."""
        if not self.is_trained:
            return 0
        return int(len(self.ids_) - self.n_deleted_)

    @property
    def dim(self) -> int:
        """The full dimension of the stored vectors."""
        if not self.is_trained:
            raise NestembError(f"{type(self).__name__} is not trained: call train(X) or add(X)")
        return int(self.manifest_.dim)

    @property
    def manifest(self) -> Manifest:
        """The index's manifest (model identity, nesting, configuration)."""
        self.dim  # noqa: B018 (raises when untrained)
        return self.manifest_

    def resolve_nesting(self, dim: int) -> tuple[int, ...]:
        """The nesting of ``dim``-dimensional embeddings under this index's parameters (the
        given one, or the stage dims and ``dim``), checked to hold every stage dim."""
        used = tuple(self._used_dims(dim))
        nesting = tuple(sorted(set(used) | {dim})) if self.nesting is None else self.nesting
        nesting = validate_nesting(nesting, full_dim=dim)
        for d in used:
            if d not in nesting:
                raise NestembError(f"stage dim {d} is not in the nesting {nesting}")
        return nesting

    def _make_manifest(self, dim: int) -> Manifest:
        return Manifest(
            model_id=self.model_id,
            model_version=self.model_version,
            nesting=self.resolve_nesting(dim),
            dim=dim,
            kind=INDEX_KIND,
            dtype="float32",
        )

    # ----------------------------------------------------------------- train / add / delete
    def train(self, X: Any) -> "PrefixIndex":
        """Learn the search structures from the sample ``X`` (raw embeddings, not stored), leaving
        the index trained and empty; returns ``self``. Retraining is allowed while the index
        holds no vectors.

        Example:
            >>> from nestemb.index import AdaptiveIVFIndex, synthetic_matryoshka
            >>> X = synthetic_matryoshka(1000, 32, seed=0)
            >>> idx = AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=8).train(X[:500])
            >>> len(idx.add(X)), idx.search(X[:2], k=1)[1].ravel().tolist()
            (1000, [0, 1])
        """
        if self.is_trained and len(self.ids_):
            raise NestembError(
                f"{type(self).__name__} already holds {len(self.ids_)} vectors: build a new index"
                " to train again"
            )
        X = check_vectors(X, what="training vectors")
        self._fit(X)
        return self

    def _fit(self, X: np.ndarray) -> None:
        dim = X.shape[1]
        self._validate(dim)
        manifest = self._make_manifest(dim)
        self._train(X)
        self.manifest_ = manifest
        self.vectors_ = np.empty((0, dim), dtype=np.float32)
        self.ids_ = np.empty(0, dtype=np.int64)
        self.deleted_ = np.empty(0, dtype=bool)
        self.n_deleted_ = 0
        self.next_id_ = 0
        self.tuning_ = None
        self._lookup = None

    def add(self, X: Any, ids: Sequence[Any] | None = None) -> "PrefixIndex":
        """Add vectors (raw embeddings; views are normalized per stage) with optional ids;
        returns ``self``.

        Without ``ids`` rows get consecutive integers from ``next_id_``: one past the largest
        integer id the index has ever held (deleted and compacted ones included, and kept by
        :meth:`save`), so an auto-assigned id is never reused within the index's life. On
        an untrained index, ``add`` first trains on this batch (logged at INFO on the
        ``nestemb.index`` logger); call :meth:`train` first to learn from another sample.

        Example:
            >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
            >>> X = synthetic_matryoshka(100, 16)
            >>> idx = FunnelIndex(dims=(4, 16), shortlist=(20,)).add(X[:60]).add(X[60:])
            >>> len(idx), idx.ids_[-1].item()
            (100, 99)
        """
        first = not self.is_trained
        X = self._check_input(X, dim=None if first else self.dim)
        if first:  # fail on bad parameters or ids before the (possibly long) training
            self._validate(X.shape[1])
            self._make_manifest(X.shape[1])
        nesting = self.resolve_nesting(X.shape[1]) if first else self.manifest_.nesting
        check_prefix_norms(X, nesting[0])  # before anything is stored or trained
        n_old = 0 if first else len(self.ids_)
        if ids is None:
            if n_old and self.ids_.dtype.kind == "U":
                raise NestembError("this index uses string ids: pass ids= for new vectors")
            start = max(self.next_id_, int(self.ids_.max()) + 1) if n_old else getattr(self, "next_id_", 0)
            new_ids = np.arange(start, start + len(X), dtype=np.int64)
        else:
            new_ids = normalize_ids(ids, len(X))
            if n_old and new_ids.dtype.kind != self.ids_.dtype.kind:
                raise NestembError(
                    f"ids must have the same type as the index's ids ({self.ids_.dtype.kind!r}"
                    f" kind), got {new_ids.dtype}"
                )
        uniq, counts = np.unique(new_ids, return_counts=True)
        if (counts > 1).any():
            raise NestembError(f"duplicate ids in the batch: {uniq[counts > 1][:5].tolist()}")
        if n_old:
            lookup = self._id_map()
            clash = [i for i in new_ids.tolist() if i in lookup]
            if clash:
                raise NestembError(f"ids already in the index: {clash[:5]}")
        if first:
            logger.info("%s is not trained: training on the first batch of %d vectors",
                        type(self).__name__, len(X))
            self._fit(X)
        if n_old:
            self.ids_ = np.concatenate([self.ids_, new_ids])
            self.deleted_ = np.concatenate([self.deleted_, np.zeros(len(X), dtype=bool)])
        else:
            self.ids_ = new_ids
            self.deleted_ = np.zeros(len(X), dtype=bool)
        self._append_vectors(X)
        if new_ids.dtype.kind == "i" and len(new_ids):
            self.next_id_ = max(self.next_id_, int(new_ids.max()) + 1)
        cached: dict[Any, int] | None = getattr(self, "_lookup", None)
        if cached is not None:  # kept up to date: O(batch), not O(n)
            cached.update(zip(new_ids.tolist(), range(n_old, n_old + len(new_ids))))
        return self

    def _check_input(self, X: Any, dim: int | None) -> np.ndarray:
        """Validate vectors given to :meth:`add`. Indexes that stream their input
        (``_streams_input``) accept a path to a ``.npy`` file (memory-mapped) and keep a large
        array or memory map as it is (shape checked here, values chunk by chunk as they are
        stored), so a gallery larger than memory is never read whole."""
        if isinstance(X, (str, os.PathLike)):
            if not getattr(self, "_streams_input", False):
                raise NestembError(f"{type(self).__name__}.add takes an array, not a path")
            try:
                X = np.load(X, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise NestembError(f"cannot read vectors from {X}: {e}") from None
        if (getattr(self, "_streams_input", False) and isinstance(X, np.ndarray) and X.ndim == 2
                and X.dtype.kind == "f" and X.size > (1 << 22)):
            if dim is not None and X.shape[1] != dim:
                raise NestembError(f"vectors have dimension {X.shape[1]}, expected {dim}")
            step = chunk_rows(X.shape[1])
            for a in range(0, len(X), step):  # all of it, before anything is stored
                check_finite_rows(X[a : a + step], "vectors", offset=a)
            return X
        return check_vectors(X, dim=dim, what="vectors")

    def _append_vectors(self, X: np.ndarray) -> None:
        """Store new vectors after the existing rows and fill the search structures."""
        n_old = len(self.vectors_)
        self.vectors_ = np.concatenate([np.asarray(self.vectors_), X]) if n_old else X
        self._add_rows(X, np.arange(n_old, n_old + len(X), dtype=np.int64))

    def _id_map(self) -> dict[Any, int]:
        lookup = getattr(self, "_lookup", None)
        if lookup is None:
            live = np.flatnonzero(~self.deleted_)
            lookup = self._lookup = dict(zip(self.ids_[live].tolist(), live.tolist()))
        return lookup

    def delete(self, ids: Sequence[Any]) -> "PrefixIndex":
        """Mark the vectors with these ids deleted (they never appear in results again).

        Unknown or duplicate ids raise :class:`NestembError` and nothing is deleted. Space is
        reclaimed by :meth:`compact`. Returns ``self``.

        Example:
            >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
            >>> X = synthetic_matryoshka(50, 16)
            >>> idx = FunnelIndex(dims=(16,), shortlist=()).add(X).delete([0])
            >>> len(idx), idx.search(X[0], k=1)[1].item() != 0
            (49, True)
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
        for i in keys:
            del lookup[i]
        return self

    def compact(self) -> "PrefixIndex":
        """Drop deleted rows for good and refill the search structures (what :meth:`train`
        learned is kept). Returns ``self``.

        Example:
            >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
            >>> idx = FunnelIndex(dims=(16,), shortlist=()).add(synthetic_matryoshka(50, 16))
            >>> len(idx.delete([3, 4]).compact().ids_)
            48
        """
        self._check_fitted()
        if self.n_deleted_ == 0:
            return self
        keep = ~self.deleted_
        X = np.ascontiguousarray(np.asarray(self.vectors_)[keep])
        self.vectors_, self.ids_ = X, self.ids_[keep]
        self.deleted_ = np.zeros(len(X), dtype=bool)
        self.n_deleted_ = 0
        self._clear()
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

    def _prepare(self, Q: Any, k: Any, manifest: Manifest | None) -> tuple[np.ndarray, int]:
        self._check_fitted()
        if manifest is not None:
            check_compatible(manifest, self.manifest_, what="queries and index")
        dim = self.dim
        if (isinstance(Q, np.ndarray) and Q.dtype == np.float32 and 0 < Q.ndim <= 2
                and Q.shape[-1] == dim and Q.size and Q.flags.c_contiguous
                and np.isfinite(Q).all()):  # fast path: a valid float32 query, no copy
            Q = Q.reshape(-1, dim)
        else:
            Q = check_vectors(Q, dim=dim, what="queries")
        check_prefix_norms(Q, self.manifest_.nesting[0], "queries")
        return Q, self._check_k(k)

    def search(self, Q: Any, k: int = 10, *, manifest: Manifest | None = None):
        """Top-``k`` by inner product of normalized views: ``(scores, ids)``, each
        ``(n_queries, k)``. ``Q`` is one raw query ``(D,)`` or a batch ``(n, D)``. Pass the
        queries' ``manifest`` to have model id, model version and nesting checked against the
        index's. A row found by no stage (possible with approximate first stages) has score
        ``-inf`` and id ``-1`` (or ``""``). A ``k`` above the one recorded by :meth:`set_tuning`
        logs a warning on the ``nestemb.index`` logger (once per index and ``k``).

        Example:
            >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
            >>> X = synthetic_matryoshka(200, 16)
            >>> FunnelIndex(dims=(4, 16), shortlist=(50,)).add(X).search(X[7], k=2)[1][0, 0].item()
            7
        """
        Q, k = self._prepare(Q, k, manifest)
        tuned_k = (self.tuning_ or {}).get("k")
        if isinstance(tuned_k, int) and k > tuned_k and getattr(self, "_warned_k", 0) < k:
            self._warned_k = k  # once per index and larger k, not on every query
            logger.warning("%s: searching with k=%d above the k=%d it was tuned for: recall@%d "
                           "may fall below the tuned target (run tune with k=%d)",
                           type(self).__name__, k, tuned_k, k, k)
        scores, rows = self._search_rows(Q, k)
        return scores, self._rows_to_ids(rows)

    def search_exact(self, Q: Any, k: int = 10, *, manifest: Manifest | None = None):
        """Brute-force top-``k`` over the live vectors at full dimension
        (:func:`nestemb.exact.exact_search`): the reference :meth:`search` is measured
        against. Same arguments and result as :meth:`search`.

        Example:
            >>> from nestemb.index import FunnelIndex, knn_intersection, synthetic_matryoshka
            >>> X = synthetic_matryoshka(500, 32); Q = synthetic_matryoshka(10, 32, seed=1)
            >>> idx = FunnelIndex(dims=(8, 32), shortlist=(500,)).add(X)
            >>> knn_intersection(idx.search(Q, k=5)[1], idx.search_exact(Q, k=5)[1])
            1.0
        """
        Q, k = self._prepare(Q, k, manifest)
        exclude = self.deleted_ if self.n_deleted_ else None
        scores, rows = exact_search(self.vectors_, Q, k, exclude=exclude)
        return scores, self._rows_to_ids(rows)

    def _rows_to_ids(self, rows: np.ndarray) -> np.ndarray:
        if rows.size and rows.min() >= 0:  # the common case, kept cheap for single queries
            return self.ids_[rows]
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
        return _score_candidates(Qd, cand, keep, lambda r: prefix_view(vectors[r, :d], d))

    # ----------------------------------------------------------------- memory
    def bytes_per_vector(self) -> dict[str, Any]:
        """Memory per stored vector, one scheme for every index type, true to the index's
        current state: ``resident`` (held in RAM: codes, graph links, lists, ids, tombstones,
        trained structures amortized over the vectors, and the full vectors while they are in
        memory), ``mmap`` (the full vectors once memory-mapped, i.e. after :meth:`load`: only
        rows that are re-ranked are read), ``total`` and ``parts`` (bytes of each part by name).
        For deployment figures, save the index and report the loaded one.

        Example:
            >>> import tempfile, pathlib
            >>> from nestemb.index import FunnelIndex, load_index, synthetic_matryoshka
            >>> idx = FunnelIndex(dims=(8, 32), shortlist=(40,)).add(synthetic_matryoshka(100, 32))
            >>> m = idx.bytes_per_vector()
            >>> m["resident"], m["mmap"], m["parts"]["first_stage"]
            (169.0, 0.0, 32.0)
            >>> m = load_index(idx.save(pathlib.Path(tempfile.mkdtemp()) / "i")).bytes_per_vector()
            >>> m["resident"], m["mmap"]
            (41.0, 128.0)
        """
        self._check_fitted()
        parts = dict(self._memory_parts())
        parts["ids"] = float(self.ids_.dtype.itemsize)
        parts["deleted"] = 1.0
        resident = float(sum(parts.values()))
        mmap = 0.0
        for name, (size, mapped) in self._vector_parts().items():
            parts[name] = size
            if mapped:
                mmap += size
            else:
                resident += size
        return {"resident": resident, "mmap": mmap, "total": resident + mmap, "parts": parts}

    def _vector_parts(self) -> dict[str, tuple[float, bool]]:
        """Bytes per vector of the stored full vectors, by part, and whether each is mapped."""
        return {"vectors": (float(4 * self.dim), isinstance(self.vectors_, np.memmap))}

    def writes_vectors_file(self) -> bool:
        """Whether :meth:`save` writes ``vectors.npy`` (an index may keep them in its own files)."""
        return True

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the index directory atomically (see :mod:`nestemb.index.persist`); returns its
        path. An existing non-empty ``path`` is refused unless ``overwrite=True``, and even
        then only a nestemb index directory is replaced.

        Example: see :func:`~nestemb.index.load_index`.
        """
        return save_index(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True):
        """Read an index directory of this class (vectors memory-mapped by default), verifying
        checksums. Example: see :func:`~nestemb.index.load_index`."""
        return read_index(path, cls, mmap=mmap, verify=verify)


def _score_candidates(Qs: np.ndarray, cand: np.ndarray, keep: int, rows_of, const=None):
    """Top-``keep`` of candidate rows scored as ``rows_of(rows) @ Qs[i]`` (+ ``const[i]``), one
    vectorized call per block of queries; row ``-1`` scores ``-inf``."""
    nq, s = cand.shape
    keep = min(keep, s)
    d = Qs.shape[1]
    out_s = np.empty((nq, keep), dtype=np.float32)
    out_r = np.empty((nq, keep), dtype=np.int64)
    chunk = max(1, (1 << 22) // max(1, s * d))
    for a in range(0, nq, chunk):
        c = cand[a : a + chunk]
        V = rows_of(np.maximum(c, 0).ravel()).reshape(len(c), s, d)
        sc = np.matmul(V, Qs[a : a + chunk, :, None].astype(np.float32))[..., 0]
        if const is not None:
            sc += const[a : a + chunk, None]
        sc[c < 0] = -np.inf
        best, pos = topk(sc, keep)
        out_s[a : a + chunk] = best
        out_r[a : a + chunk] = np.where(np.isfinite(best), np.take_along_axis(c, pos, 1), -1)
    return out_s, out_r
