"""AdANNS-style IVF and OPQ over Matryoshka prefixes (Rege et al., 2023).

:class:`AdaptiveIVFIndex` decouples the two dimensions a rigid IVF ties together: the coarse
clustering runs on a ``d_cluster`` prefix (cheap assignment), the in-list scan on a ``d_search``
prefix, and an optional re-rank uses the full stored vectors. FAISS does the heavy lifting: the
lists are a ``faiss.IndexIVF*`` over ``d_search`` views filled and searched with the
preassigned-list helpers of ``faiss.contrib.ivf_tools``, the coarse quantizer an
``IndexFlatIP`` over ``d_cluster`` views.

:class:`AdaptiveOPQIndex` (AdANNS-OPQ) stores each vector as an (O)PQ code of its ``d_search``
prefix within a byte budget (``code_bytes``), scans the codes (optionally through IVF lists)
and re-ranks the best candidates with full vectors.
"""

from __future__ import annotations

from typing import Any, Sequence, cast

import numpy as np

from nestemb.errors import NestembError
from nestemb.checks import positive_int
from nestemb.index.base import PrefixIndex, ladder
from nestemb.nesting import prefix_view

CODECS = ("flat", "fp16", "sq8", "pq", "opq")
"""In-list storage of the ``d_search`` prefix."""

PQ_CENTROIDS = 256
"""Centroids per PQ sub-quantizer (8 bits per code byte)."""

QUANTIZER_NAME = "coarse.faiss"
LISTS_NAME = "lists.faiss"
OPQ_NAME = "opq.faiss"


class AdaptiveIVFIndex(PrefixIndex):
    """AdANNS-IVF: cluster on one prefix, scan lists on another, re-rank at full dimension.

    Args:
        d_cluster: prefix used for k-means and for assigning queries to lists.
        d_search: prefix stored in the lists and scanned (independent of ``d_cluster``).
        nlist: number of lists; nprobe: lists visited per query, at most ``nlist`` (default:
            ``min(16, nlist)``).
        codec: in-list storage of the ``d_search`` view: ``flat`` (float32), ``fp16``, ``sq8``
            (int8, per-dimension ranges), ``pq`` or ``opq`` (``code_bytes`` bytes per vector).
        code_bytes: PQ sub-quantizers (8 bits each) for ``pq``/``opq``; must divide ``d_search``.
        rerank: if set, this many candidates from the lists are re-scored with full vectors
            (must be ``>= k``); otherwise the in-list scores are final.
        train_size: vectors sampled by :meth:`train` for k-means and the codec.
        nesting, model_id, model_version: as for :class:`~nestemb.index.FunnelIndex`.

    Search-time parameters (no rebuild): ``nprobe`` and ``rerank``; changing ``d_cluster``,
    ``d_search``, ``nlist``, ``codec`` or ``code_bytes`` retrains on the stored vectors.

    Example:
        >>> from nestemb.index import AdaptiveIVFIndex, synthetic_matryoshka
        >>> X = synthetic_matryoshka(2000, 64, seed=1)
        >>> idx = AdaptiveIVFIndex(d_cluster=8, d_search=32, nlist=16, nprobe=4, rerank=50).add(X)
        >>> idx.search(X[:2], k=3)[1][:, 0].tolist()
        [0, 1]
    """

    _param_names = (
        "d_cluster", "d_search", "nlist", "nprobe", "codec", "code_bytes", "rerank",
        "train_size", "nesting", "model_id", "model_version",
    )
    _default_codec = "flat"

    # fitted state (see PrefixIndex): FAISS objects, set by _train / _read
    quantizer_: Any
    lists_: Any
    opq_: Any
    centroids_: np.ndarray

    def __init__(
        self,
        *,
        d_cluster: int = 16,
        d_search: int = 64,
        nlist: int = 1024,
        nprobe: int | None = None,
        codec: str | None = None,
        code_bytes: int | None = None,
        rerank: int | None = None,
        train_size: int = 131072,
        nesting: Sequence[int] | None = None,
        model_id: str = "unknown",
        model_version: str = "unknown",
    ):
        self.d_cluster = positive_int(d_cluster, "d_cluster")
        self.d_search = positive_int(d_search, "d_search")
        self.nlist = positive_int(nlist, "nlist")
        self.nprobe = min(16, self.nlist) if nprobe is None else positive_int(nprobe, "nprobe")
        if self.nprobe > self.nlist:
            raise NestembError(f"{{param}} must be at most nlist, the number of lists "
                               f"({self.nlist}), got {self.nprobe}", param="nprobe")
        codec = self._default_codec if codec is None else codec
        if codec not in CODECS:
            raise NestembError(f"codec must be one of {CODECS}, got {codec!r}")
        self.codec = codec
        self.code_bytes = positive_int(code_bytes, "code_bytes", allow_none=True)
        if codec in ("pq", "opq"):
            if self.code_bytes is None:
                raise NestembError(f"codec {codec!r} needs code_bytes (bytes per vector)")
            if self.d_search % self.code_bytes:
                raise NestembError(f"{{param}} must divide the search dimension "
                                   f"{self.d_search}, got {self.code_bytes}", param="code_bytes")
        self.rerank = positive_int(rerank, "rerank", allow_none=True)
        self.train_size = positive_int(train_size, "train_size")
        self._set_identity(nesting, model_id, model_version)

    def _used_dims(self, dim: int) -> tuple[int, ...]:
        return tuple(sorted({self.d_cluster, self.d_search}))

    def _validate(self, dim: int) -> None:
        for name in ("d_cluster", "d_search"):
            if getattr(self, name) > dim:
                raise NestembError(f"{{param}}={getattr(self, name)} exceeds the dimension {dim}",
                                   param=name)

    def _structure(self) -> tuple:
        return (self.d_cluster, self.d_search, self.nlist, self.codec, self.code_bytes)

    # ----------------------------------------------------------------- build
    def _search_view(self, X: np.ndarray) -> np.ndarray:
        P = np.ascontiguousarray(prefix_view(np.asarray(X, dtype=np.float32), self.d_search))
        if self.codec == "opq":
            P = self.opq_.apply(P)
        return P

    def _train(self, X: np.ndarray) -> None:
        import faiss

        if len(X) < self.nlist:
            raise NestembError(f"{{param}}={self.nlist} needs at least as many vectors, got "
                               f"{len(X)}", param="nlist")
        if self.codec in ("pq", "opq") and min(len(X), self.train_size) < PQ_CENTROIDS:
            raise NestembError(
                f"codec {self.codec!r} trains {PQ_CENTROIDS} centroids per sub-quantizer: it needs "
                f"at least {PQ_CENTROIDS} training vectors, got {min(len(X), self.train_size)}"
            )
        rng = np.random.default_rng(1234)
        sample = X if len(X) <= self.train_size else X[np.sort(rng.choice(len(X), self.train_size, replace=False))]
        sample = np.asarray(sample, dtype=np.float32)
        Pc = np.ascontiguousarray(prefix_view(sample, self.d_cluster))
        km = faiss.Kmeans(self.d_cluster, self.nlist, niter=20, seed=1234, spherical=True,
                          max_points_per_centroid=256, verbose=False)
        km.train(Pc)
        self.quantizer_ = faiss.IndexFlatIP(self.d_cluster)
        self.quantizer_.add(km.centroids)
        if self.codec == "opq":
            self.opq_ = faiss.OPQMatrix(self.d_search, self.code_bytes)
            self.opq_.niter = 20
            self.opq_.train(np.ascontiguousarray(prefix_view(sample, self.d_search)))
        Ps = self._search_view(sample)
        # list centroids in d_search space: the mean d_search view of each d_cluster cluster
        assign = self.quantizer_.search(Pc, 1)[1][:, 0]
        sums = np.zeros((self.nlist, self.d_search), dtype=np.float64)
        np.add.at(sums, assign, Ps)
        counts = np.bincount(assign, minlength=self.nlist)[:, None]
        self.centroids_ = (sums / np.maximum(counts, 1)).astype(np.float32)
        inner: Any = faiss.IndexFlatIP(self.d_search)  # a SWIG proxy: .this is not in the stub
        inner.add(self.centroids_)
        ip = faiss.METRIC_INNER_PRODUCT
        lists: Any  # IndexIVFFlat / IndexIVFScalarQuantizer / IndexIVFPQ
        if self.codec == "flat":
            lists = faiss.IndexIVFFlat(inner, self.d_search, self.nlist, ip)
        elif self.codec in ("fp16", "sq8"):
            qt = faiss.ScalarQuantizer.QT_fp16 if self.codec == "fp16" else faiss.ScalarQuantizer.QT_8bit
            lists = faiss.IndexIVFScalarQuantizer(inner, self.d_search, self.nlist, qt, ip, False)
        else:
            lists = faiss.IndexIVFPQ(inner, self.d_search, self.nlist, self.code_bytes, 8, ip)
        lists.own_fields = True
        inner.this.disown()
        lists.train(Ps)  # quantizer already holds nlist centroids: only the codec is trained
        self.lists_ = lists

    def _clear(self) -> None:
        self.lists_.reset()  # keeps the coarse quantizer and the trained codec

    def _add_rows(self, X: np.ndarray, rows: np.ndarray) -> None:
        from faiss.contrib.ivf_tools import add_preassigned

        for a in range(0, len(X), 131072):
            block = np.asarray(X[a : a + 131072], dtype=np.float32)
            Pc = np.ascontiguousarray(prefix_view(block, self.d_cluster))
            assign = self.quantizer_.search(Pc, 1)[1][:, 0].astype(np.int64)
            add_preassigned(self.lists_, self._search_view(block), assign,
                            np.ascontiguousarray(rows[a : a + 131072]))

    # ----------------------------------------------------------------- search
    def _search_rows(self, Q: np.ndarray, k: int):
        from faiss.contrib.ivf_tools import search_preassigned

        if self.rerank is not None and self.rerank < k:
            raise NestembError(f"{{param}}={self.rerank} (the shortlist) is smaller than k={k}",
                               param="rerank")
        nprobe = min(self.nprobe, self.nlist)
        keep = min(self.rerank or k, len(self))
        fetch = min(keep + self.n_deleted_, len(self.ids_))
        coarse_d, lists = self.quantizer_.search(
            np.ascontiguousarray(prefix_view(Q, self.d_cluster)), nprobe
        )
        Qs = self._search_view(Q)
        lists = np.maximum(lists, 0)
        coarse = np.einsum("qd,qpd->qp", Qs, self.centroids_[lists]).astype(np.float32)
        self.lists_.nprobe = nprobe
        scores, rows = search_preassigned(self.lists_, Qs, fetch, lists, coarse)
        scores[rows < 0] = -np.inf
        scores, rows = self._drop_deleted(scores, rows, keep)
        if self.rerank is not None:
            scores, rows = self._rerank(Q, rows, self.dim, k)
        return scores[:, :k], rows[:, :k]

    def candidate_grid(self, k: int = 10, *, max_candidates: int = 8192) -> list[list[dict]]:
        """Configurations :func:`~nestemb.index.tune` tries: for each re-rank depth (none, then
        ``k`` doubling up to ``min(64 k, max_candidates)``), ``nprobe`` doubling up to ``nlist``.

        Example:
            >>> from nestemb.index import synthetic_matryoshka
            >>> idx = AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=4).add(
            ...     synthetic_matryoshka(200, 32))
            >>> grid = idx.candidate_grid(k=10)
            >>> grid[0], [g[0]["rerank"] for g in grid]
            ([{'nprobe': 1, 'rerank': None}, {'nprobe': 2, 'rerank': None}, {'nprobe': 4, 'rerank': None}], [None, 10, 20, 40, 80, 160])
        """
        self._check_fitted()
        probes = ladder(1, self.nlist)
        depths = [None, *ladder(k, min(len(self), 64 * k, max_candidates))]
        return [[{"nprobe": p, "rerank": r} for p in probes] for r in depths]

    def _memory_parts(self) -> dict[str, float]:
        code = {"flat": 4 * self.d_search, "fp16": 2 * self.d_search, "sq8": self.d_search,
                "pq": self.code_bytes, "opq": self.code_bytes}[self.codec]
        # coarse centroids (d_cluster) + list centroids (d_search) + OPQ rotation, amortized
        shared = 4.0 * self.nlist * (self.d_cluster + self.d_search)
        if self.codec == "opq":
            shared += 4.0 * self.d_search * self.d_search
        return {"lists": float(code + 8), "trained": shared / max(1, len(self.ids_))}

    # ----------------------------------------------------------------- persistence
    def _write(self, tmp) -> list[str]:
        import faiss

        faiss.write_index(self.quantizer_, str(tmp / QUANTIZER_NAME))
        faiss.write_index(self.lists_, str(tmp / LISTS_NAME))
        names = [QUANTIZER_NAME, LISTS_NAME]
        if self.codec == "opq":
            faiss.write_VectorTransform(self.opq_, str(tmp / OPQ_NAME))
            names.append(OPQ_NAME)
        return names

    def _read(self, path, mmap: bool = True) -> None:
        import faiss

        try:
            self.quantizer_ = faiss.read_index(str(path / QUANTIZER_NAME))
            self.lists_ = faiss.read_index(str(path / LISTS_NAME))
            if self.codec == "opq":
                self.opq_ = faiss.read_VectorTransform(str(path / OPQ_NAME))
        except RuntimeError as e:
            raise NestembError(f"cannot read index files in {path}: {str(e).splitlines()[0]}") from None
        self._check_read_structure(path)
        # the lists' quantizer is the IndexFlatIP _train built (downcast_index returns the class)
        coarse = cast(faiss.IndexFlat, faiss.downcast_index(self.lists_.quantizer))
        self.centroids_ = faiss.rev_swig_ptr(
            coarse.get_xb(), self.nlist * self.d_search
        ).reshape(self.nlist, self.d_search).copy()
        if self.lists_.ntotal != len(self.ids_):
            raise NestembError(f"{path}: lists hold {self.lists_.ntotal} vectors, expected {len(self.ids_)}")


    def _check_read_structure(self, path) -> None:
        """The FAISS files must be what these parameters build (an edited manifest would
        otherwise reach FAISS with mismatched dimensions)."""
        import faiss

        lists = self.lists_
        kind = {"flat": "IndexIVFFlat", "fp16": "IndexIVFScalarQuantizer",
                "sq8": "IndexIVFScalarQuantizer", "pq": "IndexIVFPQ", "opq": "IndexIVFPQ"}
        found = {
            "d_cluster": int(self.quantizer_.d), "nlist": int(self.quantizer_.ntotal),
            "d_search": int(lists.d), "lists": int(lists.nlist), "codec": type(lists).__name__,
        }
        want = {"d_cluster": self.d_cluster, "nlist": self.nlist, "d_search": self.d_search,
                "lists": self.nlist, "codec": kind[self.codec]}
        if self.codec in ("fp16", "sq8") and hasattr(lists, "sq"):
            found["qtype"] = int(lists.sq.qtype)
            want["qtype"] = int(faiss.ScalarQuantizer.QT_fp16 if self.codec == "fp16"
                                else faiss.ScalarQuantizer.QT_8bit)
        if self.codec in ("pq", "opq") and found["codec"] == "IndexIVFPQ":
            found["code_bytes"], want["code_bytes"] = int(lists.pq.M), self.code_bytes
        if self.codec == "opq":
            found["opq"], want["opq"] = (int(self.opq_.d_in), int(self.opq_.d_out)), (self.d_search,) * 2
        bad = [n for n in want if found[n] != want[n]]
        if bad:
            detail = ", ".join(f"{n} {found[n]} on disk vs {want[n]}" for n in bad)
            raise NestembError(
                f"{path}: the index files do not match the manifest's parameters ({detail}): "
                "was manifest.json edited?"
            )


class AdaptiveOPQIndex(AdaptiveIVFIndex):
    """AdANNS-OPQ: OPQ codes of the ``d_search`` prefix within ``code_bytes`` bytes per vector,
    scanned (``nlist=1``: every code; more lists: IVF-OPQ) and re-ranked with full vectors.

    Example:
        >>> from nestemb.index import AdaptiveOPQIndex, synthetic_matryoshka
        >>> X = synthetic_matryoshka(3000, 64, seed=2)
        >>> idx = AdaptiveOPQIndex(d_search=32, code_bytes=8, rerank=100).add(X)
        >>> idx.search(X[:2], k=1)[1].ravel().tolist()
        [0, 1]
    """

    _default_codec = "opq"

    def __init__(
        self,
        *,
        d_cluster: int | None = None,
        d_search: int = 64,
        nlist: int = 1,
        nprobe: int | None = None,
        codec: str = "opq",
        code_bytes: int = 32,
        rerank: int | None = 100,
        train_size: int = 65536,
        nesting: Sequence[int] | None = None,
        model_id: str = "unknown",
        model_version: str = "unknown",
    ):
        """As :class:`AdaptiveIVFIndex`, with OPQ defaults; ``d_cluster`` defaults to ``d_search``."""
        super().__init__(
            d_cluster=d_search if d_cluster is None else d_cluster, d_search=d_search,
            nlist=nlist, nprobe=nprobe, codec=codec, code_bytes=code_bytes, rerank=rerank,
            train_size=train_size, nesting=nesting, model_id=model_id, model_version=model_version,
        )
