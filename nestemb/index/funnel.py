"""Funnel search: shortlist with a short prefix, re-rank the shortlist with longer ones.

Each vector is stored once (full, float32, memory-mapped after :meth:`FunnelIndex.load`). The
first stage scans a compact copy of the shortest prefix view (float32 / float16 / int8 / sign
bits), exactly (``first_stage="flat"``) or through an HNSW graph built on that prefix
(``first_stage="hnsw"``, sublinear). Every later stage re-scores only the surviving candidates
with :func:`nestemb.nesting.prefix_view` of the stored vectors.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.index import quantize as qz
from nestemb.index.store import PrefixIndex
from nestemb.nesting import prefix_view

STAGE_NAME = "first_stage.faiss"


def _check_stage_dims(dims: Sequence[int], prefix_dtype: str = "float32") -> tuple[int, ...]:
    try:
        out = tuple(int(d) for d in dims)
    except (TypeError, ValueError):
        raise NestembError(f"dims must be a list of integers, got {dims!r}") from None
    if not out:
        raise NestembError("dims is empty: give at least the full dimension")
    if any(d <= 0 for d in out):
        raise NestembError(f"stage dims must be positive, got {out}")
    # a quantized first stage may be re-scored in float32 at the same prefix: (D, D) is allowed
    rest = out[1:] if len(out) > 1 and out[0] == out[1] and prefix_dtype != "float32" else out
    if any(a >= b for a, b in zip(rest, rest[1:])):
        raise NestembError(f"stage dims must be strictly ascending, got {out}")
    return out


class FunnelIndex(PrefixIndex):
    """Multi-stage search over the prefixes of Matryoshka embeddings.

    Args:
        dims: stage prefixes, strictly ascending, each in the nesting; the last is the full
            dimension. With a quantized ``prefix_dtype`` the first two may be equal (e.g.
            ``(384, 384)``: binary codes of the full vector, re-scored in float32).
        shortlist: candidates kept after each stage but the last (``len(dims) - 1`` entries,
            non-increasing, each ``>= k`` at search time).
        prefix_dtype: storage of the first-stage prefix: ``float32``, ``float16``, ``int8`` or
            ``binary``.
        first_stage: ``"flat"`` (exact scan of the prefix) or ``"hnsw"`` (graph on the prefix).
        hnsw_m, ef_construction, ef_search: HNSW parameters (``first_stage="hnsw"`` only).
        nesting: the model's nesting (default: the stage dims); stage dims must belong to it.
        model_id, model_version: identity of the encoder, checked against queries' manifests.

    Example:
        >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
        >>> X = synthetic_matryoshka(1000, 64, seed=0)
        >>> index = FunnelIndex(dims=(8, 16, 64), shortlist=(200, 50)).add(X)
        >>> scores, ids = index.search(X[:3], k=5)
        >>> ids.shape, ids[:, 0].tolist()
        ((3, 5), [0, 1, 2])
    """

    _param_names = (
        "dims", "shortlist", "prefix_dtype", "first_stage", "hnsw_m", "ef_construction",
        "ef_search", "nesting", "model_id", "model_version",
    )

    def __init__(
        self,
        dims: Sequence[int] = (16, 64, 384),
        shortlist: Sequence[int] = (400, 100),
        prefix_dtype: str = "float32",
        first_stage: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        nesting: Sequence[int] | None = None,
        model_id: str = "unknown",
        model_version: str = "1",
    ):
        self.dims = _check_stage_dims(dims, prefix_dtype)
        try:
            self.shortlist = tuple(int(s) for s in shortlist)
        except (TypeError, ValueError):
            raise NestembError(f"shortlist must be a list of integers, got {shortlist!r}") from None
        if len(self.shortlist) != len(self.dims) - 1:
            raise NestembError(
                f"shortlist needs one size per stage but the last: {len(self.dims) - 1} for dims "
                f"{self.dims}, got {len(self.shortlist)}"
            )
        if any(s <= 0 for s in self.shortlist):
            raise NestembError(f"shortlist sizes must be positive, got {self.shortlist}")
        if any(a < b for a, b in zip(self.shortlist, self.shortlist[1:])):
            raise NestembError(f"shortlist sizes must be non-increasing, got {self.shortlist}")
        self.prefix_dtype = qz.check_prefix_dtype(prefix_dtype)
        if first_stage not in qz.FIRST_STAGES:
            raise NestembError(f"first_stage must be one of {qz.FIRST_STAGES}, got {first_stage!r}")
        self.first_stage = first_stage
        self.hnsw_m, self.ef_construction, self.ef_search = int(hnsw_m), int(ef_construction), int(ef_search)
        self.nesting = None if nesting is None else tuple(int(d) for d in nesting)
        self.model_id, self.model_version = model_id, model_version

    # ----------------------------------------------------------------- structure
    def _used_dims(self, dim: int) -> tuple[int, ...]:
        return self.dims

    def _validate(self, dim: int) -> None:
        if self.dims[-1] != dim:
            raise NestembError(
                f"the last stage dim must be the full dimension {dim}, got dims {self.dims}"
            )

    def _train(self, X: np.ndarray) -> None:
        self.stage_ = qz.make_stage(
            self.dims[0], self.prefix_dtype, self.first_stage, self.hnsw_m, self.ef_construction
        )
        if self.prefix_dtype == "int8":  # per-dimension ranges from (a sample of) the data
            sample = X[:: max(1, len(X) // 100_000)]
            self.stage_.train(np.ascontiguousarray(prefix_view(sample, self.dims[0])))

    def _add_rows(self, X: np.ndarray, rows: np.ndarray) -> None:
        d0 = self.dims[0]
        for a in range(0, len(X), 262144):
            qz.train_add(self.stage_, prefix_view(X[a : a + 262144], d0), self.prefix_dtype)

    def set_params(self, **params: Any) -> "FunnelIndex":
        """Change parameters; the first stage is rebuilt only when its prefix dim, dtype or
        structure changes (shortlists and ``ef_search`` apply immediately). Returns ``self``.

        Example:
            >>> from nestemb.index import synthetic_matryoshka
            >>> idx = FunnelIndex(dims=(8, 32), shortlist=(40,)).add(synthetic_matryoshka(100, 32))
            >>> idx.set_params(dims=(16, 32), prefix_dtype="int8").stage_.d
            16
        """
        current = self.get_params()
        unknown = set(params) - set(current)
        if unknown:
            raise NestembError(f"unknown FunnelIndex parameters: {sorted(unknown)}")
        current.update(params)
        new = type(self)(**current)
        if self.is_fitted:
            new._validate(self.dim)
            new._resolve_nesting(self.dim)
        rebuild = self.is_fitted and (
            new.dims[0] != self.dims[0]
            or (new.prefix_dtype, new.first_stage, new.hnsw_m, new.ef_construction)
            != (self.prefix_dtype, self.first_stage, self.hnsw_m, self.ef_construction)
        )
        for name in self._param_names:
            setattr(self, name, getattr(new, name))
        if rebuild:
            X = np.asarray(self.vectors_)
            self._train(X)
            self._add_rows(X, np.arange(len(X)))
        return self

    # ----------------------------------------------------------------- search
    def _search_rows(self, Q: np.ndarray, k: int):
        live = len(self)
        for s in self.shortlist:
            if s < k:
                raise NestembError(f"shortlist {self.shortlist} has a size smaller than k={k}")
        keeps = [min(s, live) for s in self.shortlist] + [k]
        fetch = min(keeps[0] + self.n_deleted_, len(self.ids_))
        ef = max(self.ef_search, fetch) if self.first_stage == "hnsw" else None
        scores, rows = qz.stage_search(
            self.stage_, prefix_view(Q, self.dims[0]), fetch, self.prefix_dtype, ef
        )
        scores, rows = self._drop_deleted(scores, rows, keeps[0])
        for d, keep in zip(self.dims[1:], keeps[1:]):
            scores, rows = self._rerank(Q, rows, d, keep)
        return scores, rows

    def bytes_per_vector(self) -> dict[str, float]:
        """Memory per vector: ``first_stage`` (codes + graph links, resident), ``ids`` and
        ``full_vectors`` (float32, memory-mapped after load; only re-ranked rows are touched).

        Example:
            >>> from nestemb.index import synthetic_matryoshka
            >>> FunnelIndex(dims=(8, 32), shortlist=(40,)).add(
            ...     synthetic_matryoshka(100, 32)).bytes_per_vector()["first_stage"]
            32.0
        """
        self._check_fitted()
        code = qz.code_bytes(self.dims[0], self.prefix_dtype)
        links = 0.0
        if self.first_stage == "hnsw":
            links = _hnsw_link_bytes(self.stage_)
        return {
            "first_stage": float(code + links),
            "ids": float(self.ids_.dtype.itemsize),
            "full_vectors": float(4 * self.dim),
        }

    # ----------------------------------------------------------------- persistence
    def _write(self, tmp) -> list[str]:
        qz.write_stage(self.stage_, tmp / STAGE_NAME, self.prefix_dtype)
        return [STAGE_NAME]

    def _read(self, path) -> None:
        self.stage_ = qz.read_stage(path / STAGE_NAME, self.prefix_dtype)
        if self.stage_.ntotal != len(self.ids_):
            raise NestembError(
                f"{path}: first stage holds {self.stage_.ntotal} vectors, expected {len(self.ids_)}"
            )


def _hnsw_link_bytes(index) -> float:
    """Average bytes of HNSW neighbour lists per vector (int32 per slot, all levels)."""
    import faiss

    hnsw = index.hnsw
    n = max(1, index.ntotal)
    return 4.0 * faiss.vector_to_array(hnsw.neighbors).size / n + 8.0  # + offsets
