"""Funnel search: shortlist with a short prefix, re-rank the shortlist with longer ones.

Each vector is stored once: the L2-normalized full vectors live in the last stage's FAISS index
(float32 ``IndexFlatIP``, or fp16 codes with ``full_dtype="float16"``), and ``vectors_`` is a
view of that storage (memory-mapped from the index file after :meth:`FunnelIndex.load`).
Normalizing a full vector changes none of its prefix views, so every stage sees the same views.
The first stage scans a compact copy of the shortest prefix view (float32 / float16 / int8 /
sign bits), exactly (``first_stage="flat"``) or through an HNSW graph built on that prefix
(``first_stage="hnsw"``, sublinear); an optional int8 rescoring stage (``rescore_dtype="int8"``)
re-scores the shortlist from int8 codes of a longer prefix; the last stage re-ranks in float.

Native search (``native=True``, the default) runs the whole funnel inside FAISS, one call per
batch, no Python per query or candidate::

    IndexPreTransform(normalize D)
      -> IndexRefine(refine = full vectors, k_factor = last shortlist / k)
           [-> IndexRefine(refine = IndexPreTransform(remap D->d1, normalize) -> SQ8(d1))]
                -> IndexPreTransform(remap D->d0, normalize) -> first stage (flat / HNSW)

Deletions pending :meth:`compact` are excluded inside FAISS (an ``IDSelectorBitmap`` of the live
rows on the first stage), so they stay native. Configurations FAISS cannot chain fall back to
the numpy path (one FAISS call for the first stage, then one vectorized numpy call per stage and
batch): a ``binary`` first stage (FAISS has no refine over binary codes), and three stages with
a float32 middle prefix. ``native=False`` forces the numpy path; both return the same results
(tested).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from nestemb.checks import check_finite_rows, positive_int
from nestemb.errors import NestembError
from nestemb.exact import exact_search
from nestemb.index import quantize as qz
from nestemb.index.base import PrefixIndex, _score_candidates, ladder
from nestemb.index.plan import check_stages
from nestemb.io import chunk_rows
from nestemb.nesting import prefix_view

logger = logging.getLogger("nestemb.index")

STAGE_NAME = "first_stage.faiss"
RESCORE_NAME = "rescore.faiss"
FULL_NAME = "full.faiss"
HNSW_M_MAX = 1024
"""The largest ``hnsw_m`` accepted (FAISS allocates ``2 hnsw_m`` links per vector)."""
EF_RATIO = 2**0.5
"""Step between the ``ef_search`` values :meth:`FunnelIndex.candidate_grid` tries: 16, 23, 32, 45 ..."""
FULL_DTYPES = ("float32", "float16")
"""Storage of the full vectors the last stage re-ranks with."""
RESCORE_DTYPES = (None, "int8")
"""Storage of the middle stage of a three-stage funnel: float32 vectors, or int8 codes."""


def _as_float32_rows(X: Any, a: int, b: int) -> np.ndarray:
    chunk = np.asarray(X[a:b], dtype=np.float32)
    check_finite_rows(chunk, "vectors", offset=a)
    return chunk


class FunnelIndex(PrefixIndex):
    """Multi-stage search over the prefixes of Matryoshka embeddings.

    Args:
        dims: stage prefixes, strictly ascending, each in the nesting; the last is the full
            dimension. With a quantized ``prefix_dtype`` the first two may be equal (e.g.
            ``(384, 384)``: binary codes of the full vector, re-scored in float32). With
            ``rescore_dtype`` exactly three, non-decreasing: ``(d0, d1, D)``.
        shortlist: candidates kept after each stage but the last (``len(dims) - 1`` entries,
            non-increasing, each ``>= k`` at search time).
        prefix_dtype: storage of the first-stage prefix: ``float32``, ``float16``, ``int8``,
            ``binary`` or ``rabitq`` (FAISS RaBitQ, flat first stage only).
        first_stage: ``"flat"`` (exact scan of the prefix) or ``"hnsw"`` (graph on the prefix).
        hnsw_m, ef_construction, ef_search: HNSW parameters (``first_stage="hnsw"`` only;
            ``hnsw_m`` at most 1024).
        train_size: vectors sampled (evenly) by :meth:`train` to learn int8 ranges.
        int8_trim: fraction of each dimension's values clipped at each end of its int8 range
            (0: FAISS's per-dimension [min, max]; e.g. 0.001 trims outliers that would stretch
            the range). Applies to an int8 first stage and to int8 rescoring.
        rescore_dtype: ``None``, or ``"int8"``: the middle stage of ``dims=(d0, d1, D)`` scores
            the ``d1``-prefix views from int8 codes (``d1`` may equal ``D``), e.g. a binary
            first stage, int8 rescoring, float re-rank.
        full_dtype: storage of the full vectors the last stage re-ranks with: ``float32`` or
            ``float16`` (half the bytes; scores differ by ~1e-3).
        native: run the funnel inside FAISS where the configuration allows (see the module
            docstring); ``False`` forces the numpy path, which returns the same results.
        nesting: the model's nesting (default: the stage dims); stage dims must belong to it.
        model_id, model_version: identity of the embeddings' model (copy them from the
            embeddings' manifest); saved in the index manifest and checked against the queries'
            manifest by ``search(..., manifest=...)``.

    Search-time parameters (no rebuild): ``shortlist``, ``ef_search``, ``native`` and the
    re-rank dims ``dims[1:]`` without rescoring; changing ``dims[0]``, ``prefix_dtype``,
    ``first_stage``, ``hnsw_m``, ``ef_construction``, ``int8_trim``, ``rescore_dtype``, the
    rescoring prefix or ``full_dtype`` rebuilds the structures from the stored vectors.

    Example:
        >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
        >>> X = synthetic_matryoshka(1000, 64, seed=0)
        >>> index = FunnelIndex(dims=(8, 16, 64), shortlist=(200, 50)).add(X)
        >>> scores, ids = index.search(X[:3], k=5)
        >>> ids.shape, ids[:, 0].tolist()
        ((3, 5), [0, 1, 2])
        >>> fast = FunnelIndex(dims=(16, 64), shortlist=(100,)).add(X)
        >>> fast.is_native, fast.search(X[:3], k=5)[1][:, 0].tolist()
        (True, [0, 1, 2])
    """

    _param_names = (
        "dims", "shortlist", "prefix_dtype", "first_stage", "hnsw_m", "ef_construction",
        "ef_search", "train_size", "int8_trim", "rescore_dtype", "full_dtype", "native",
        "nesting", "model_id", "model_version",
    )
    _streams_input = True

    # fitted state (see PrefixIndex): FAISS objects, set by _train / _read
    stage_: Any
    rescore_: Any | None
    full_: Any  # None only while _rebuild / _train_prefix_only swap it
    _mapped: bool
    _native: dict[str, Any] | None
    _selector: tuple[np.ndarray, Any, np.ndarray] | None

    def __init__(
        self,
        *,
        dims: Sequence[int] = (16, 64, 384),
        shortlist: Sequence[int] = (400, 100),
        prefix_dtype: str = "float32",
        first_stage: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        train_size: int = 131072,
        int8_trim: float = 0.0,
        rescore_dtype: str | None = None,
        full_dtype: str = "float32",
        native: bool = True,
        nesting: Sequence[int] | None = None,
        model_id: str = "unknown",
        model_version: str = "unknown",
    ):
        if rescore_dtype not in RESCORE_DTYPES:
            raise NestembError(f"rescore_dtype must be one of {RESCORE_DTYPES}, got {rescore_dtype!r}")
        self.rescore_dtype = rescore_dtype
        self.dims, self.shortlist = check_stages(dims, shortlist, prefix_dtype=prefix_dtype,
                                                 rescore_dtype=rescore_dtype)
        self.prefix_dtype = qz.check_prefix_dtype(prefix_dtype)
        if first_stage not in qz.FIRST_STAGES:
            raise NestembError(f"first_stage must be one of {qz.FIRST_STAGES}, got {first_stage!r}")
        self.first_stage = first_stage
        self.hnsw_m = positive_int(hnsw_m, "hnsw_m", max_value=HNSW_M_MAX)
        self.ef_construction = positive_int(ef_construction, "ef_construction")
        self.ef_search = positive_int(ef_search, "ef_search")
        self.train_size = positive_int(train_size, "train_size")
        self.int8_trim = qz.check_int8_trim(int8_trim)
        if full_dtype not in FULL_DTYPES:
            raise NestembError(f"full_dtype must be one of {FULL_DTYPES}, got {full_dtype!r}")
        self.full_dtype = full_dtype
        if not isinstance(native, (bool, np.bool_)):
            raise NestembError(f"native must be True or False, got {native!r}")
        self.native = bool(native)
        self._set_identity(nesting, model_id, model_version)

    # ----------------------------------------------------------------- structure
    def _used_dims(self, dim: int) -> tuple[int, ...]:
        return self.dims

    def _validate(self, dim: int) -> None:
        if self.dims[-1] != dim:
            raise NestembError(
                f"the last stage dim must be the full dimension {dim}, got dims {self.dims}"
            )

    def _structure(self) -> tuple:
        d1 = self.dims[1] if self.rescore_dtype else None
        return (self.dims[0], self.prefix_dtype, self.first_stage, self.hnsw_m,
                self.ef_construction, self.int8_trim, self.rescore_dtype, d1, self.full_dtype)

    @property
    def is_native(self) -> bool:
        """Whether :meth:`search` runs the whole funnel inside FAISS (see the module docstring)."""
        return (self.native and self.prefix_dtype != "binary"
                and (len(self.dims) <= 2 or (len(self.dims) == 3 and self.rescore_dtype is not None)))

    def _new_full(self, D: int):
        import faiss

        if self.full_dtype == "float32":
            return faiss.IndexFlatIP(D)
        return faiss.IndexScalarQuantizer(D, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)

    def _train(self, X: np.ndarray) -> None:
        D = X.shape[1]
        self.stage_ = qz.make_stage(self.dims[0], self.prefix_dtype, self.first_stage, self.hnsw_m,
                                    self.ef_construction)
        sample: np.ndarray | None = None
        if self.prefix_dtype == "int8" or self.rescore_dtype:
            sample = np.asarray(X[:: max(1, len(X) // self.train_size)], dtype=np.float32)
        # int8: per-dimension ranges from (a sample of) the data
        if self.prefix_dtype == "int8" and sample is not None:
            qz.train_sq8(self.stage_, prefix_view(sample, self.dims[0]), self.int8_trim)
        self.rescore_ = None
        if self.rescore_dtype and sample is not None:
            self.rescore_ = qz.make_sq8(self.dims[1])
            qz.train_sq8(self.rescore_, prefix_view(sample, self.dims[1]), self.int8_trim)
        full = getattr(self, "full_", None)
        if full is None or full.d != D or self._full_kind(full) != self.full_dtype or full.ntotal:
            self.full_ = self._new_full(D)
            self._mapped = False
        self._native = None

    @staticmethod
    def _full_kind(full) -> str:
        return "float16" if hasattr(full, "sq") else "float32"

    def _clear(self) -> None:
        self.stage_.reset()  # keeps int8 ranges
        if self.rescore_ is not None:
            self.rescore_.reset()
        self.full_ = self._new_full(self.full_.d)
        self._mapped = False
        self._native = None

    def _append_vectors(self, X: Any) -> None:
        """Store vectors (normalized, once, in ``full_``) and fill the structures, in chunks:
        a memory-mapped input is never read whole."""
        self._add_rows(X, None)

    def _unmap_full(self) -> None:
        """Copy memory-mapped full vectors into RAM (FAISS cannot append to a mapped file)."""
        old, n, D = self.full_, self.full_.ntotal, self.full_.d
        logger.info("FunnelIndex: adding to a memory-mapped index: copying its %d full vectors "
                    "into memory (save and load again to map them)", n)
        self.full_ = self._new_full(D)
        step = chunk_rows(D)
        for a in range(0, n, step):
            b = min(n, a + step)
            if self.full_dtype == "float32":
                rows = np.asarray(self.vectors_[a:b], dtype=np.float32)
            else:
                rows = np.asarray(old.reconstruct_n(a, b - a), dtype=np.float32)
            self.full_.add(np.ascontiguousarray(rows))
        self._mapped = False
        if self.full_dtype == "float32":
            self.vectors_ = qz.codes_view(self.full_, n, 4 * D).view(np.float32)

    @contextlib.contextmanager
    def _spill_full(self, folder: Path) -> Iterator[None]:
        """While open, :meth:`add` streams the normalized full vectors into ``folder``'s
        ``full.faiss`` (a FAISS flat file, written by :class:`_FlatFile`) instead of keeping
        them in memory (:func:`~nestemb.index.persist.build_on_disk`); :meth:`_write` then
        leaves that file as it is."""
        if self.full_dtype != "float32":
            raise NestembError(f"{{param}}: an on-disk build streams float32 full vectors; "
                               f"full_dtype={self.full_dtype!r} keeps float16 codes in memory",
                               param="full_dtype")
        self._spill: _FlatFile | None = _FlatFile(folder / FULL_NAME)
        try:
            yield
            self._spill.close()
        finally:
            if self._spill is not None:
                self._spill.discard()
            self._spill = None

    def _add_rows(self, X: Any, rows: Any) -> None:
        if getattr(self, "_mapped", False) and len(X):
            self._unmap_full()
        spill = getattr(self, "_spill", None)
        if spill is not None:
            spill.open(len(X), X.shape[1])
        d0 = self.dims[0]
        extra = []
        step = chunk_rows(X.shape[1])
        for a in range(0, len(X), step):
            V = prefix_view(_as_float32_rows(X, a, a + step), X.shape[1])
            if spill is not None:  # straight to the index directory: never all in memory
                spill.write(V)
            else:
                self.full_.add(np.ascontiguousarray(V))
            qz.train_add(self.stage_, prefix_view(V, d0), self.prefix_dtype)
            if self.rescore_ is not None:
                self.rescore_.add(np.ascontiguousarray(prefix_view(V, self.dims[1])))
            if self.full_dtype == "float16":
                extra.append(V)
        if self.full_dtype == "float32":
            self.vectors_ = qz.codes_view(self.full_, self.full_.ntotal, 4 * self.full_.d).view(np.float32)
        else:
            old = np.asarray(self.vectors_) if len(getattr(self, "vectors_", ())) else None
            parts = ([old] if old is not None and len(old) + sum(map(len, extra)) == self.full_.ntotal
                     else []) + extra
            self.vectors_ = np.concatenate(parts) if parts else np.empty((0, X.shape[1]), np.float32)
        self._native = None

    def _rebuild(self) -> None:
        X = np.asarray(self.vectors_)
        if self._full_kind(self.full_) != self.full_dtype or self.full_dtype == "float16":
            X = np.array(X)  # the old storage goes away
            self.full_ = None
            self._train(X)
            self.vectors_ = np.empty((0, X.shape[1]), np.float32)
            self._add_rows(X, None)
            return
        # the full vectors stay where they are; only the prefix structures are rebuilt
        self._train_prefix_only(X)

    def _train_prefix_only(self, X: np.ndarray) -> None:
        keep = self.full_
        self.full_ = None
        self._train(X)
        self.full_ = keep
        d0 = self.dims[0]
        step = chunk_rows(X.shape[1])
        for a in range(0, len(X), step):
            V = np.asarray(X[a : a + step])
            qz.train_add(self.stage_, prefix_view(V, d0), self.prefix_dtype)
            if self.rescore_ is not None:
                self.rescore_.add(np.ascontiguousarray(prefix_view(V, self.dims[1])))
        self._native = None

    def candidate_grid(self, k: int = 10, *, max_candidates: int = 8192) -> list[list[dict]]:
        """Configurations :func:`~nestemb.index.tune` tries, in groups ordered by shortlist size.

        A flat first stage: every first-stage prefix of the nesting in float32, int8 (ranges
        trimmed by ``int8_trim`` 0.001) with two stages and, where the nesting has a prefix
        ``>= 4 d0``, three (float32 middle stage); binary codes of every prefix of 32 dims or
        more (the full dimension included) followed by int8 rescoring of the full vector and the
        float re-rank, ``dims=(d0, D, D)``, rescoring shortlist 1/8 of the first, and RaBitQ
        codes of those prefixes below ``D`` (two stages); an HNSW first stage: its prefix with
        shortlists doubling and ``ef_search`` growing by :data:`EF_RATIO` (latency follows ``ef``
        closely, so a doubling ladder could overshoot the fastest setting by up to 2x).
        ``full_dtype`` and ``native`` are kept.

        Example:
            >>> from nestemb.index import synthetic_matryoshka
            >>> idx = FunnelIndex(dims=(8, 32), shortlist=(40,)).add(synthetic_matryoshka(100, 32))
            >>> grid = idx.candidate_grid(k=10)
            >>> grid[0][0]["dims"], [g["shortlist"][0] for g in grid[0]]
            ((8, 32), [10, 20, 40, 80, 100])
            >>> sorted({g[0]["prefix_dtype"] for g in grid})
            ['binary', 'float32', 'int8']
            >>> idx = FunnelIndex(dims=(32, 64), shortlist=(40,)).add(synthetic_matryoshka(100, 64))
            >>> sorted({g[0]["prefix_dtype"] for g in idx.candidate_grid(k=10)})
            ['binary', 'float32', 'int8', 'rabitq']
        """
        self._check_fitted()
        n, D, nesting = len(self), self.dim, self.manifest_.nesting
        top = min(n, max_candidates)
        lists = ladder(k, top)
        if not lists or lists[-1] < top:
            lists.append(top)
        if self.first_stage == "hnsw":
            d0 = self.dims[0]
            return [
                [{"dims": (d0, D), "shortlist": (s,), "ef_search": ef, "rescore_dtype": None}
                 for ef in ladder(16, 1024, EF_RATIO) if ef >= s]
                or [{"dims": (d0, D), "shortlist": (s,), "ef_search": s, "rescore_dtype": None}]
                for s in lists[:8]
            ]
        groups: list[list[dict]] = []
        for dtype in ("float32", "int8", "binary"):
            trim = 0.001 if dtype == "int8" else 0.0
            for d0 in (nesting if dtype == "binary" else nesting[:-1]):
                if dtype == "binary":
                    if d0 < 32:
                        continue
                    if d0 < D:  # RaBitQ: 1 bit / dim too, but an unbiased estimate, native
                        groups.append([
                            {"dims": (d0, D), "shortlist": (s,), "prefix_dtype": "rabitq",
                             "rescore_dtype": None, "int8_trim": 0.0} for s in lists
                        ])
                    groups.append([
                        {"dims": (d0, D, D), "shortlist": (s, r), "prefix_dtype": dtype,
                         "rescore_dtype": "int8", "int8_trim": trim}
                        for s in lists if s >= 4 * k for r in (max(k, s // 8),)
                    ])
                    continue
                groups.append([
                    {"dims": (d0, D), "shortlist": (s,), "prefix_dtype": dtype,
                     "rescore_dtype": None, "int8_trim": trim} for s in lists
                ])
                mids = [m for m in nesting if 4 * d0 <= m < D]
                if mids:
                    groups.append([
                        {"dims": (d0, mids[0], D), "shortlist": (s, max(k, s // 4)),
                         "prefix_dtype": dtype, "rescore_dtype": None, "int8_trim": trim}
                        for s in lists if s >= 4 * k
                    ])
        return [g for g in groups if g]

    # ----------------------------------------------------------------- search
    def _keeps(self, k: int) -> list[int]:
        live = len(self)
        for s in self.shortlist:
            if s < k:
                raise NestembError(f"shortlist {self.shortlist} has a size smaller than k={k}")
        return [min(s, live) for s in self.shortlist] + [k]

    def _search_rows(self, Q: np.ndarray, k: int):
        if self.is_native:
            return self._search_native(Q, k)
        return self._search_numpy(Q, k)

    def search_plan(self, Q: np.ndarray, k: int, dims: Sequence[int], shortlist: Sequence[int],
                    *, rows: np.ndarray | None = None):
        """Run one plan (stage dims and shortlists, :class:`~nestemb.index.plan.Plan`) on
        normalized-view scores, stage by stage, without changing the index's parameters:
        ``(scores, rows, stages)`` where ``rows`` are row positions (``-1``: none) and
        ``stages`` the per-stage record (``dims``, ``candidates``, ``kept``, ``ms``).

        The first stage is the index's own when ``dims[0]`` is its first-stage prefix (an HNSW
        graph is searched with ``ef_search`` at least the shortlist; int8 rescoring and float16
        full vectors are used as the native search uses them), else an exact scan of the
        ``dims[0]``-prefix views (:func:`~nestemb.exact.exact_search`); with ``rows`` (a subset,
        e.g. a payload filter) an exact scan of those rows only. Later stages re-rank the
        survivors on longer prefixes. Deleted rows never appear; ``k`` and the shortlists are
        cut to the candidates there are.

        Example:
            >>> from nestemb.index import synthetic_matryoshka
            >>> X = synthetic_matryoshka(300, 32)
            >>> idx = FunnelIndex(dims=(8, 32), shortlist=(40,)).add(X)
            >>> s, r, stages = idx.search_plan(X[:2], 5, (16, 32), (50,))
            >>> r[:, 0].tolist(), [(st["dims"], st["candidates"], st["kept"]) for st in stages]
            ([0, 1], [(16, 300, 50), (32, 50, 5)])
        """
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        live = len(self) if rows is None else len(rows)
        keeps = [min(int(s), live) for s in shortlist] + [min(int(k), live)]
        d0, stages = int(dims[0]), []
        t = time.perf_counter()
        if live == 0:
            return (np.zeros((len(Q), 0), np.float32), np.zeros((len(Q), 0), np.int64),
                    [{"stage": 1, "dims": d0, "candidates": 0, "kept": 0, "ms": _ms(t)}])
        if rows is not None:
            cand = np.broadcast_to(np.asarray(rows, dtype=np.int64), (len(Q), len(rows)))
            scores, cand = self._rerank(Q, cand, d0, keeps[0])
        elif d0 == self.dims[0] and self.prefix_dtype == "float32":
            scores, cand = self._first_stage(prefix_view(Q, d0), keeps[0])
        elif d0 == self.dims[0]:  # quantized codes: tombstones dropped after the scan
            fetch = min(keeps[0] + self.n_deleted_, len(self.ids_))
            ef = max(self.ef_search, fetch) if self.first_stage == "hnsw" else None
            scores, cand = self._drop_deleted(*qz.stage_search(
                self.stage_, prefix_view(Q, d0), fetch, self.prefix_dtype, ef), keeps[0])
        else:
            exclude = self.deleted_ if self.n_deleted_ else None
            scores, cand = exact_search(self.vectors_, Q, keeps[0], dim=d0, exclude=exclude)
        stages.append({"stage": 1, "dims": d0, "candidates": live, "kept": keeps[0],
                       "ms": _ms(t)})
        for i, (d, keep) in enumerate(zip(dims[1:], keeps[1:]), start=2):
            t = time.perf_counter()
            n_cand = cand.shape[1]
            if i == 2 and self.rescore_ is not None and rows is None and d == self.dims[1]:
                scores, cand = self._rescore_int8(Q, cand, keep)
            elif d == self.dim and self.full_dtype == "float16":  # the codes native search uses
                codes = qz.codes_view(self.full_, self.full_.ntotal, 2 * d).view(np.float16)
                scores, cand = _score_candidates(prefix_view(Q, d), cand, keep,
                                                 lambda r: codes[r].astype(np.float32))
            else:
                scores, cand = self._rerank(Q, cand, int(d), keep)
            stages.append({"stage": i, "dims": int(d), "candidates": n_cand, "kept": keep,
                           "ms": _ms(t)})
        return scores, cand, stages

    def _first_stage(self, Qp: np.ndarray, keep: int):
        """The stored first stage (float32 prefix views), live rows only (a bitmap selector
        inside FAISS), an HNSW graph searched with ``ef_search >= keep``."""
        import faiss

        if self.first_stage == "hnsw":
            p = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from the stub
            p.efSearch = max(self.ef_search, keep)
        else:
            p = faiss.SearchParameters()
        if self.n_deleted_:
            cached = getattr(self, "_selector", None)
            if cached is None or cached[0] is not self.deleted_:
                cached = self._selector = (self.deleted_, *self._live_selector())
            p.sel = cached[1]
        scores, rows = self.stage_.search(Qp, keep, params=p)
        scores[rows < 0] = -np.inf
        return scores, rows

    # native ------------------------------------------------------------
    def _pipeline(self) -> dict[str, Any]:
        """The FAISS funnel over the stored structures (built on first use, then cached)."""
        import faiss

        D, d0 = self.full_.d, self.dims[0]
        keep: list = []

        def prefix(index: Any, d: int) -> Any:
            pre = faiss.IndexPreTransform(index)
            pre.prepend_transform(faiss.NormalizationTransform(d))
            if d < D:
                # the stub lacks the (d_in, d_out, uniform) overload; SWIG takes no keywords
                pre.prepend_transform(faiss.RemapDimensionsTransform(D, d, False))  # type: ignore[arg-type]
            keep.append(pre)
            return pre

        base = prefix(self.stage_, d0)
        if len(self.dims) == 1:  # one stage: the scan of the full views is the search
            self._native = {"index": base, "keep": keep, "params": {}}
            return self._native
        if self.rescore_ is not None:
            base = faiss.IndexRefine(base, prefix(self.rescore_, self.dims[1]))
            keep.append(base)
        top = faiss.IndexRefine(base, self.full_)
        outer = faiss.IndexPreTransform(top)
        outer.prepend_transform(faiss.NormalizationTransform(D))
        keep += [top, outer]
        self._native = {"index": outer, "keep": keep, "params": {}}
        return self._native

    def _live_selector(self):
        import faiss

        bits = np.packbits(~self.deleted_, bitorder="little")
        return faiss.IDSelectorBitmap(len(self.deleted_), faiss.swig_ptr(bits)), bits

    def _native_params(self, k: int):
        import faiss

        key = (k, self.shortlist, self.ef_search, self.n_deleted_)
        assert self._native is not None, "_search_native builds the pipeline first"
        cache = self._native["params"]
        if key in cache:  # the single-query path: one dict lookup
            return cache[key]
        keeps = self._keeps(k)
        if self.first_stage == "hnsw":
            p0 = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from the stub
            p0.efSearch = max(self.ef_search, keeps[0])
        else:
            p0 = faiss.SearchParameters()
        refs: list = [p0]
        if self.n_deleted_:
            sel, bits = self._live_selector()
            p0.sel = sel
            refs += [sel, bits]
        # k_factor: float; + 0.5 so that int(k * k_factor) is the shortlist exactly
        p = p0
        if len(keeps) == 1:
            cache.clear()
            cache[key] = (p0, refs)
            return cache[key]
        if self.rescore_ is not None:
            mid = faiss.IndexRefineSearchParameters()
            mid.k_factor = (keeps[0] + 0.5) / keeps[1]
            mid.base_index_params = p0
            refs.append(mid)
            p = mid
        top = faiss.IndexRefineSearchParameters()
        top.k_factor = (keeps[-2] + 0.5) / k
        top.base_index_params = p
        refs.append(top)
        cache.clear()  # one configuration at a time: parameters change rarely
        cache[key] = (top, refs)
        return cache[key]

    def _search_native(self, Q: np.ndarray, k: int):
        native = self._native or self._pipeline()
        params, _ = self._native_params(k)
        scores, rows = native["index"].search(Q, k, params=params)
        if rows.min() < 0:  # a row found by no stage
            scores[rows < 0] = -np.inf
        return scores, rows

    # numpy -------------------------------------------------------------
    def _search_numpy(self, Q: np.ndarray, k: int):
        self._keeps(k)  # shortlists >= k
        return self.search_plan(Q, k, self.dims, self.shortlist)[:2]

    def _rescore_int8(self, Q: np.ndarray, cand: np.ndarray, keep: int):
        """Score candidates from the int8 codes of the ``d1``-prefix views: with code ``c``
        decoding to ``vmin + (c + 0.5) vstep``, ``q . x = (q vstep) . c + q . (vmin + vstep/2)``."""
        d1 = self.dims[1]
        assert self.rescore_ is not None, "only called with int8 rescoring"
        vmin, vstep = qz.sq8_tables(self.rescore_)
        Qd = prefix_view(Q, d1)
        qs = Qd * vstep
        const = Qd @ (vmin + 0.5 * vstep)
        codes = qz.codes_view(self.rescore_, self.rescore_.ntotal, d1)
        return _score_candidates(qs, cand, keep, lambda r: codes[r].astype(np.float32), const)

    def _memory_parts(self) -> dict[str, float]:
        parts = {"first_stage": float(qz.code_bytes(self.dims[0], self.prefix_dtype))}
        if self.first_stage == "hnsw":
            parts["hnsw_links"] = qz.hnsw_link_bytes(self.stage_)
        if self.rescore_ is not None:
            parts["rescore"] = float(self.dims[1])
        return parts

    def _vector_parts(self) -> dict[str, tuple[float, bool]]:
        D = self.dim
        mapped = bool(getattr(self, "_mapped", False))
        if self.full_dtype == "float32":  # vectors_ is the refine storage: one copy
            return {"vectors": (4.0 * D, mapped)}
        return {"full_fp16": (2.0 * D, mapped), "vectors": (4.0 * D, isinstance(self.vectors_, np.memmap))}

    def copy(self) -> "FunnelIndex":
        """An independent copy (the FAISS structures cloned, arrays shared: they are replaced,
        never changed in place), to save or search while this index keeps changing.

        Example:
            >>> from nestemb.index import synthetic_matryoshka
            >>> idx = FunnelIndex(dims=(8, 32), shortlist=(40,)).add(synthetic_matryoshka(100, 32))
            >>> snap = idx.copy(); _ = idx.add(synthetic_matryoshka(10, 32, seed=1))
            >>> len(snap), len(idx), snap.stage_.ntotal
            (100, 110, 100)
        """
        import copy

        import faiss

        self._check_fitted()
        if getattr(self, "_mapped", False):
            self._unmap_full()
        new = copy.copy(self)
        new.stage_ = faiss.clone_index(self.stage_)
        new.full_ = faiss.clone_index(self.full_)
        new.rescore_ = None if self.rescore_ is None else faiss.clone_index(self.rescore_)
        new._native, new._selector, new._lookup = None, None, None
        if self.full_dtype == "float32":
            new.vectors_ = qz.codes_view(new.full_, new.full_.ntotal, 4 * self.dim).view(np.float32)
        return new

    # ----------------------------------------------------------------- persistence
    def writes_vectors_file(self) -> bool:
        return self.full_dtype != "float32"  # float32: vectors_ lives in full.faiss

    def _write(self, tmp) -> list[str]:
        import faiss

        qz.write_stage(self.stage_, tmp / STAGE_NAME, self.prefix_dtype)
        names = [STAGE_NAME, FULL_NAME]
        if not (tmp / FULL_NAME).exists():  # else streamed there by an on-disk build
            faiss.write_index(self.full_, str(tmp / FULL_NAME))
        if self.rescore_ is not None:
            faiss.write_index(self.rescore_, str(tmp / RESCORE_NAME))
            names.append(RESCORE_NAME)
        return names

    def _read(self, path, mmap: bool = True) -> None:
        import faiss

        self.stage_ = qz.read_stage(path / STAGE_NAME, self.prefix_dtype)
        expected = qz.stage_signature(qz.make_stage(
            self.dims[0], self.prefix_dtype, self.first_stage, self.hnsw_m, self.ef_construction
        ))
        if qz.stage_signature(self.stage_) != expected:
            raise NestembError(
                f"{path}: the first stage on disk {qz.stage_signature(self.stage_)} does not match "
                f"the manifest's parameters (dims[0]={self.dims[0]}, prefix_dtype="
                f"{self.prefix_dtype!r}, first_stage={self.first_stage!r}, hnsw_m={self.hnsw_m}): "
                "was manifest.json edited?"
            )
        n = len(self.ids_)
        if self.stage_.ntotal != n:
            raise NestembError(
                f"{path}: first stage holds {self.stage_.ntotal} vectors, expected {n}"
            )
        self.rescore_ = None
        if self.rescore_dtype:
            self.rescore_ = qz.read_stage(path / RESCORE_NAME, "int8")
            if self.rescore_.ntotal != n or self.rescore_.d != self.dims[1]:
                raise NestembError(f"{path}: {RESCORE_NAME} does not match the manifest")
        self._native = None
        D = self.manifest_.dim
        full_path = path / FULL_NAME
        if not full_path.exists():  # written before the full vectors moved into full.faiss
            logger.info("%s: no %s (older format): building it in memory", path, FULL_NAME)
            X = self.vectors_
            self.full_ = self._new_full(D)
            self.vectors_ = np.empty((0, D), np.float32)
            self._add_rows(X, None)
            return
        flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
        try:
            self.full_ = faiss.read_index(str(full_path), flags)
        except RuntimeError as e:
            raise NestembError(f"cannot read index file {full_path}: {str(e).splitlines()[0]}") from None
        if self.full_.ntotal != n or self.full_.d != D or self._full_kind(self.full_) != self.full_dtype:
            raise NestembError(f"{path}: {FULL_NAME} does not match the manifest")
        self._mapped = bool(mmap)
        if self.full_dtype == "float32":
            if mmap:  # the same file region FAISS maps: one copy in the page cache
                offset = os.path.getsize(full_path) - 4 * n * D
                self.vectors_ = (np.memmap(full_path, dtype=np.float32, mode="r", offset=offset,
                                           shape=(n, D)) if n else np.empty((0, D), np.float32))
            else:
                self.vectors_ = qz.codes_view(self.full_, n, 4 * D).view(np.float32)


def _ms(t: float) -> float:
    return round((time.perf_counter() - t) * 1000, 3)


class _FlatFile:
    """A FAISS ``IndexFlatIP`` file written row block by row block: FAISS's own header for
    ``n`` vectors (taken from FAISS, a one-vector index, with its two counts set to ``n``), then
    the float32 rows as they come. :meth:`close` checks that exactly ``n`` rows came and that
    FAISS reads the file back (memory-mapped) with the first row in place."""

    def __init__(self, path: Path):
        self.path, self.n, self.dim, self.rows = path, 0, 0, 0
        self.file: Any = None
        self.first: np.ndarray | None = None

    @staticmethod
    def header(n: int, d: int) -> bytes:
        import faiss

        one = faiss.IndexFlatIP(d)
        one.add(np.zeros((1, d), np.float32))
        head = bytearray(faiss.serialize_index(one).tobytes()[: -4 * d])
        # the layout: fourcc, d (int32), ntotal (int64), ..., the float count (uint64) last
        if (int.from_bytes(head[8:16], "little"), int.from_bytes(head[-8:], "little")) != (1, d):
            raise NestembError("this FAISS version writes flat indexes in a layout nestemb does not "
                               "know: build in memory (index.add, then save)")
        head[8:16] = n.to_bytes(8, "little")
        head[-8:] = (n * d).to_bytes(8, "little")
        return bytes(head)

    def open(self, n: int, d: int) -> None:
        if self.file is not None:
            raise NestembError("an on-disk build takes the whole gallery in one add")
        self.n, self.dim = int(n), int(d)
        self.file = open(self.path, "wb")
        self.file.write(self.header(self.n, self.dim))

    def write(self, V: np.ndarray) -> None:
        block = np.ascontiguousarray(V, dtype=np.float32)
        if self.first is None and len(block):
            self.first = block[0].copy()
        self.file.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        import faiss

        if self.file is None:
            raise NestembError("{param}: an on-disk build needs vectors", param="X")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = None
        back = faiss.read_index(str(self.path), faiss.IO_FLAG_MMAP_IFC)
        if self.rows != self.n or back.ntotal != self.n or back.d != self.dim or (
                self.first is not None and not np.array_equal(back.reconstruct(0), self.first)):
            raise NestembError(f"{self.path}: the streamed full vectors do not read back "
                               f"({self.rows} of {self.n} rows written)")

    def discard(self) -> None:
        if self.file is not None:  # an error mid-build: the folder is removed by atomic_dir
            self.file.close()
            self.file = None
