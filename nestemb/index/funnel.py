"""Funnel search: shortlist with a short prefix, re-rank the shortlist with longer ones.

Each vector is stored once (full, float32, memory-mapped after :meth:`FunnelIndex.load`). The
first stage scans a compact copy of the shortest prefix view (float32 / float16 / int8 / sign
bits), exactly (``first_stage="flat"``) or through an HNSW graph built on that prefix
(``first_stage="hnsw"``, sublinear). Every later stage re-scores only the surviving candidates
with :func:`nestemb.nesting.prefix_view` of the stored vectors.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.index import quantize as qz
from nestemb.index.base import PrefixIndex, doubling, pos_int
from nestemb.nesting import prefix_view

STAGE_NAME = "first_stage.faiss"
HNSW_M_MAX = 1024
"""The largest ``hnsw_m`` accepted (FAISS allocates ``2 hnsw_m`` links per vector)."""


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
        hnsw_m, ef_construction, ef_search: HNSW parameters (``first_stage="hnsw"`` only;
            ``hnsw_m`` at most 1024).
        train_size: vectors sampled (evenly) by :meth:`train` to learn int8 ranges.
        nesting: the model's nesting (default: the stage dims); stage dims must belong to it.
        model_id, model_version: identity of the embeddings' model (copy them from the
            embeddings' manifest); saved in the index manifest and checked against the queries'
            manifest by ``search(..., manifest=...)``.

    Search-time parameters (no rebuild): ``shortlist``, ``ef_search`` and the re-rank dims
    ``dims[1:]``; changing ``dims[0]``, ``prefix_dtype``, ``first_stage``, ``hnsw_m`` or
    ``ef_construction`` rebuilds the first stage.

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
        "ef_search", "train_size", "nesting", "model_id", "model_version",
    )

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
        nesting: Sequence[int] | None = None,
        model_id: str = "unknown",
        model_version: str = "unknown",
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
        self.hnsw_m = pos_int(hnsw_m, "hnsw_m", max_value=HNSW_M_MAX)
        self.ef_construction = pos_int(ef_construction, "ef_construction")
        self.ef_search = pos_int(ef_search, "ef_search")
        self.train_size = pos_int(train_size, "train_size")
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
        return (self.dims[0], self.prefix_dtype, self.first_stage, self.hnsw_m, self.ef_construction)

    def _train(self, X: np.ndarray) -> None:
        self.stage_ = qz.make_stage(
            self.dims[0], self.prefix_dtype, self.first_stage, self.hnsw_m, self.ef_construction
        )
        if self.prefix_dtype == "int8":  # per-dimension ranges from (a sample of) the data
            sample = np.asarray(X[:: max(1, len(X) // self.train_size)], dtype=np.float32)
            self.stage_.train(np.ascontiguousarray(prefix_view(sample, self.dims[0])))

    def _clear(self) -> None:
        self.stage_.reset()  # keeps int8 ranges

    def _add_rows(self, X: np.ndarray, rows: np.ndarray) -> None:
        d0 = self.dims[0]
        for a in range(0, len(X), 262144):
            qz.train_add(self.stage_, prefix_view(X[a : a + 262144], d0), self.prefix_dtype)

    def candidate_grid(self, k: int = 10, *, max_candidates: int = 8192) -> list[list[dict]]:
        """Configurations :func:`~nestemb.index.tune` tries, in groups ordered by shortlist size.

        A flat first stage: every first-stage prefix of the nesting in float32, int8 and binary
        (32 dims or more), with two stages and, where the nesting has a prefix ``>= 4 d0``, three;
        an HNSW first stage: its prefix with shortlists and ``ef_search`` doubling.

        Example:
            >>> from nestemb.index import synthetic_matryoshka
            >>> idx = FunnelIndex(dims=(8, 32), shortlist=(40,)).add(synthetic_matryoshka(100, 32))
            >>> grid = idx.candidate_grid(k=10)
            >>> grid[0][0]["dims"], [g["shortlist"][0] for g in grid[0]]
            ((8, 32), [10, 20, 40, 80, 100])
        """
        self._check_fitted()
        n, D, nesting = len(self), self.dim, self.manifest_.nesting
        top = min(n, max_candidates)
        lists = doubling(k, top)
        if not lists or lists[-1] < top:
            lists.append(top)
        if self.first_stage == "hnsw":
            d0 = self.dims[0]
            return [
                [{"dims": (d0, D), "shortlist": (s,), "ef_search": ef}
                 for ef in doubling(16, 1024) if ef >= s]
                or [{"dims": (d0, D), "shortlist": (s,), "ef_search": s}]
                for s in lists[:8]
            ]
        groups: list[list[dict]] = []
        for dtype in ("float32", "int8", "binary"):
            for d0 in nesting[:-1]:
                if dtype == "binary" and d0 < 32:
                    continue
                groups.append([
                    {"dims": (d0, D), "shortlist": (s,), "prefix_dtype": dtype} for s in lists
                ])
                mids = [m for m in nesting if 4 * d0 <= m < D]
                if mids:
                    groups.append([
                        {"dims": (d0, mids[0], D), "shortlist": (s, max(k, s // 4)),
                         "prefix_dtype": dtype}
                        for s in lists if s >= 4 * k
                    ])
        return [g for g in groups if g]

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

    def _memory_parts(self) -> dict[str, float]:
        parts = {"first_stage": float(qz.code_bytes(self.dims[0], self.prefix_dtype))}
        if self.first_stage == "hnsw":
            parts["hnsw_links"] = qz.hnsw_link_bytes(self.stage_)
        return parts

    # ----------------------------------------------------------------- persistence
    def _write(self, tmp) -> list[str]:
        qz.write_stage(self.stage_, tmp / STAGE_NAME, self.prefix_dtype)
        return [STAGE_NAME]

    def _read(self, path) -> None:
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
        if self.stage_.ntotal != len(self.ids_):
            raise NestembError(
                f"{path}: first stage holds {self.stage_.ntotal} vectors, expected {len(self.ids_)}"
            )

