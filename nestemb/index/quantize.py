"""Compact codes for the first (shortlist) stage of a search over a prefix.

A first stage scans the ``d``-dimensional prefix views of the gallery, stored compactly as one
of :data:`PREFIX_DTYPES`:

``float32``  4 bytes / dim, exact inner product (FAISS ``IndexFlatIP``: BLAS for batches, SIMD
             for single queries);
``float16``  2 bytes / dim (FAISS ``IndexScalarQuantizer`` ``QT_fp16``);
``int8``     1 byte / dim, scalar-quantized with a per-dimension [min, max] range learned from
             the data (FAISS ``QT_8bit``); queries stay float (asymmetric distance);
``binary``   1 bit / dim, the sign of each coordinate, ranked by Hamming distance with popcount
             (FAISS ``IndexBinaryFlat``); scores are ``d - 2 * hamming``, i.e. the inner product
             of the +-1 sign vectors.
``rabitq``   1 bit / dim plus 8 bytes of per-vector factors (FAISS ``IndexRaBitQ``, flat first
             stage only): an unbiased inner-product estimate from rotated sign codes, with the
             query quantized to :data:`RABITQ_QB` bits; unlike ``binary`` it chains natively.

The same dtypes back a graph (HNSW) first stage: ``IndexHNSWFlat``, ``IndexHNSWSQ`` and
``IndexBinaryHNSW``. Every function takes prefix *views* (already sliced and normalized with
:func:`nestemb.nesting.prefix_view`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nestemb.errors import NestembError

PREFIX_DTYPES = ("float32", "float16", "int8", "binary", "rabitq")
"""Supported storage types of a first-stage prefix."""

FIRST_STAGES = ("flat", "hnsw")
"""Supported first-stage structures: an exact scan, or an HNSW graph over the prefix."""


STAGE_CLASSES = {
    ("float32", "flat"): "IndexFlatIP", ("float16", "flat"): "IndexScalarQuantizer",
    ("int8", "flat"): "IndexScalarQuantizer", ("binary", "flat"): "IndexBinaryFlat",
    ("float32", "hnsw"): "IndexHNSWFlat", ("float16", "hnsw"): "IndexHNSWSQ",
    ("int8", "hnsw"): "IndexHNSWSQ", ("binary", "hnsw"): "IndexBinaryHNSW",
    ("rabitq", "flat"): "IndexRaBitQ", ("rabitq", "hnsw"): None,
}
RABITQ_QB = 8
"""Bits per query coordinate of a RaBitQ first stage (FAISS ``qb``; 0 would binarize queries)."""
"""The FAISS class behind each (prefix dtype, first stage); a build without it is an error."""


def check_prefix_dtype(dtype: str) -> str:
    """Validate a prefix dtype name.

    Example:
        >>> check_prefix_dtype("int8")
        'int8'
        >>> check_prefix_dtype("int4")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: prefix_dtype must be one of ('float32', 'float16', 'int8', 'binary', 'rabitq'), got 'int4'
    """
    if dtype not in PREFIX_DTYPES:
        raise NestembError(f"prefix_dtype must be one of {PREFIX_DTYPES}, got {dtype!r}")
    return dtype


def code_bytes(d: int, dtype: str) -> int:
    """Bytes one ``d``-dimensional prefix takes in ``dtype``.

    Example:
        >>> [code_bytes(64, t) for t in PREFIX_DTYPES]
        [256, 128, 64, 8, 16]
    """
    check_prefix_dtype(dtype)
    if dtype == "binary":
        return (d + 7) // 8
    if dtype == "rabitq":
        return (d + 7) // 8 + 8
    return d * {"float32": 4, "float16": 2, "int8": 1}[dtype]


def sign_bits(P: np.ndarray) -> np.ndarray:
    """Pack the signs of each row (``> 0`` -> 1) into uint8 bytes, zero-padded to a multiple of 8.

    Padding bits are zero for gallery and query alike, so they never change a Hamming distance.

    Example:
        >>> sign_bits(np.array([[0.5, -1.0, 2.0]], dtype="float32"))
        array([[160]], dtype=uint8)
    """
    return np.ascontiguousarray(np.packbits(np.asarray(P) > 0, axis=1))


def make_stage(
    d: int, dtype: str, structure: str = "flat", hnsw_m: int = 32, ef_construction: int = 40
) -> Any:
    """A new, empty FAISS index for ``d``-dimensional prefix views stored as ``dtype``.

    An int8 stage learns its per-dimension ranges with :func:`train_sq8`.

    Example:
        >>> make_stage(16, "binary").d   # bits
        16
    """
    import faiss

    check_prefix_dtype(dtype)
    ip = faiss.METRIC_INNER_PRODUCT
    if structure not in FIRST_STAGES:
        raise NestembError(f"first_stage must be one of {FIRST_STAGES}, got {structure!r}")
    needed = STAGE_CLASSES[(dtype, structure)]
    if needed is None:
        raise NestembError(f"prefix_dtype {dtype!r} supports first_stage='flat' only, got {structure!r}")
    if not hasattr(faiss, needed):
        raise NestembError(
            f"prefix_dtype {dtype!r} with first_stage {structure!r} needs faiss.{needed}, which "
            f"this FAISS build ({getattr(faiss, '__version__', '?')}) lacks: pick another dtype"
        )
    index: Any  # a FAISS index of the class STAGE_CLASSES names
    if dtype == "binary":
        nbits = 8 * code_bytes(d, "binary")
        if structure == "flat":
            return faiss.IndexBinaryFlat(nbits)
        index = faiss.IndexBinaryHNSW(nbits, hnsw_m)
        index.hnsw.efConstruction = ef_construction
        return index
    if dtype == "rabitq":
        index = faiss.IndexRaBitQ(d, ip)
        index.qb = RABITQ_QB
        return index
    if structure == "flat":
        if dtype == "float32":
            return faiss.IndexFlatIP(d)
        qt = faiss.ScalarQuantizer.QT_fp16 if dtype == "float16" else faiss.ScalarQuantizer.QT_8bit
        return faiss.IndexScalarQuantizer(d, qt, ip)
    if dtype == "float32":
        index = faiss.IndexHNSWFlat(d, hnsw_m, ip)
    else:
        qt = faiss.ScalarQuantizer.QT_fp16 if dtype == "float16" else faiss.ScalarQuantizer.QT_8bit
        # the stub types argument 2 as ScalarQuantizer; FAISS takes its QuantizerType (an int)
        index = faiss.IndexHNSWSQ(d, qt, hnsw_m, ip)  # type: ignore[arg-type]
    index.hnsw.efConstruction = ef_construction
    return index


def check_int8_trim(trim: float) -> float:
    """Validate ``int8_trim``: a fraction in ``[0, 0.25)``.

    Example:
        >>> check_int8_trim(0.001)
        0.001
        >>> check_int8_trim(0.5)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: int8_trim must be a number in [0, 0.25), got 0.5
    """
    if isinstance(trim, bool) or not isinstance(trim, (int, float, np.floating)) or not 0 <= trim < 0.25:
        raise NestembError(f"int8_trim must be a number in [0, 0.25), got {trim!r}")
    return float(trim)


def train_sq8(index, P: np.ndarray, trim: float = 0.0) -> None:
    """Learn the per-dimension int8 ranges of a FAISS int8 index (``IndexScalarQuantizer`` or
    ``IndexHNSWSQ``) from the views ``P``: ``[min, max]`` (FAISS's own training) when ``trim``
    is 0, else the ``[trim, 1 - trim]`` quantiles of each dimension, computed here (FAISS's
    ``RS_quantiles`` training gave different ranges on identical data in FAISS 1.15.1), so that
    one outlier cannot stretch a range and coarsen every code.

    Example:
        >>> P = np.concatenate([np.linspace(0, 1, 1001)[:, None]] * 2, axis=1).astype("float32")
        >>> P[0, 0] = -50.0
        >>> idx = make_sq8(2); train_sq8(idx, P, trim=0.01); vmin, vstep = sq8_tables(idx)
        >>> [round(float(v), 3) for v in vmin], [round(float(v * 255), 3) for v in vstep]
        ([0.01, 0.01], [0.98, 0.98])
    """
    import faiss

    P = np.ascontiguousarray(P, dtype=np.float32)
    if trim <= 0:
        index.train(P)
        return
    lo, hi = np.quantile(P, [trim, 1.0 - trim], axis=0).astype(np.float32)
    diff = np.maximum(hi - lo, np.float32(1e-12))
    target: Any = index if hasattr(index, "sq") else faiss.downcast_index(index.storage)
    faiss.copy_array_to_vector(np.concatenate([lo, diff]).astype(np.float32), target.sq.trained)
    target.is_trained = True
    index.is_trained = True


def make_sq8(d: int):
    """An empty int8 scalar quantizer index (inner product) over ``d``-dim views (train it with
    :func:`train_sq8`).

    Example:
        >>> make_sq8(8).code_size
        8
    """
    import faiss

    return faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)


def sq8_tables(index) -> tuple[np.ndarray, np.ndarray]:
    """``(vmin, vstep)`` of a trained FAISS int8 scalar quantizer (QT_8bit, per dimension):
    code ``c`` of dimension ``j`` decodes to ``vmin[j] + (c + 0.5) * vstep[j]``.

    Example:
        >>> idx = make_sq8(2); X = np.array([[0, 1], [1, 3]], dtype="float32")
        >>> idx.train(X); vmin, vstep = sq8_tables(idx)
        >>> vmin.tolist(), (vstep * 255).tolist()
        ([0.0, 1.0], [1.0, 2.0])
    """
    import faiss

    tr = faiss.vector_to_array(index.sq.trained).astype(np.float32)
    d = index.d
    return tr[:d], tr[d:] / 255.0


def codes_view(index, n: int, code_size: int) -> np.ndarray:
    """The ``(n, code_size)`` uint8 codes of a FAISS flat-codes index as a numpy view without a
    copy (valid while the index holds them; the view keeps ``index`` alive).

    Example:
        >>> idx = make_sq8(2); idx.train(np.eye(2, dtype="float32")); idx.add(np.eye(2, dtype="float32"))
        >>> codes_view(idx, 2, 2).tolist()
        [[255, 0], [0, 255]]
    """
    import faiss

    if n == 0:
        return np.empty((0, code_size), dtype=np.uint8)
    flat = faiss.rev_swig_ptr(index.codes.data(), n * code_size).reshape(n, code_size).view(_Owned)
    flat._owner = index
    return flat


class _Owned(np.ndarray):
    """A numpy view of memory owned by a FAISS object, which it keeps alive (``_owner``)."""

    def __array_finalize__(self, obj):
        self._owner = getattr(obj, "_owner", None)


def train_add(index, P: np.ndarray, dtype: str) -> None:
    """Train ``index`` if it needs it (int8 ranges) on ``P``, then add ``P``.

    Example:
        >>> idx = make_stage(4, "int8")
        >>> train_add(idx, np.eye(4, dtype="float32"), "int8"); idx.ntotal
        4
    """
    if dtype == "binary":
        index.add(sign_bits(P))
        return
    P = np.ascontiguousarray(P, dtype=np.float32)
    if not index.is_trained:
        index.train(P)
    index.add(P)


def stage_search(index: Any, Qp: np.ndarray, k: int, dtype: str,
                 ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search a first stage; returns ``(scores, rows)``, higher score = closer, row -1 = none.

    Example:
        >>> idx = make_stage(2, "float32"); train_add(idx, np.eye(2, dtype="float32"), "float32")
        >>> stage_search(idx, np.array([[1.0, 0.0]], dtype="float32"), 1, "float32")[1]
        array([[0]])
    """
    if ef_search is not None and hasattr(index, "hnsw"):
        index.hnsw.efSearch = max(int(ef_search), int(k))
    if dtype == "binary":
        dist, rows = index.search(sign_bits(Qp), k)
        scores = (index.d - 2 * dist).astype(np.float32)
    else:
        scores, rows = index.search(np.ascontiguousarray(Qp, dtype=np.float32), k)
    scores[rows < 0] = -np.inf
    return scores, rows


def read_stage(path, dtype: str):
    """Read a stage written by :func:`write_stage`.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.faiss"
        >>> write_stage(make_stage(16, "binary"), p, "binary"); read_stage(p, "binary").d
        16
    """
    import faiss

    try:
        if dtype == "binary":
            return faiss.read_index_binary(str(path))
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise NestembError(f"cannot read index file {path}: {str(e).splitlines()[0]}") from None


def stage_signature(index) -> tuple:
    """What identifies a first stage's structure: FAISS class, dimension (bits for binary
    codes), scalar quantizer type and HNSW ``M`` (``None`` where they do not apply). A stage read
    from disk must have the signature of the one its parameters would build.

    Example:
        >>> stage_signature(make_stage(16, "float16", "hnsw", hnsw_m=8))
        ('IndexHNSWSQ', 16, 4, 8)
        >>> stage_signature(make_stage(16, "float32")) == stage_signature(make_stage(16, "int8"))
        False
    """
    sq = getattr(index, "sq", None)
    hnsw = getattr(index, "hnsw", None)
    storage = getattr(index, "storage", None)
    import faiss

    if sq is None and storage is not None and not isinstance(index, faiss.IndexBinary):
        sq = getattr(faiss.downcast_index(storage), "sq", None)  # IndexHNSWSQ: in its storage
    return (
        type(index).__name__,
        int(index.d),
        None if sq is None else int(sq.qtype),
        None if hnsw is None else int(hnsw.nb_neighbors(1)),
    )


def write_stage(index, path, dtype: str) -> None:
    """Write a FAISS stage index (binary or float) to ``path``. Example: see :func:`read_stage`."""
    import faiss

    if dtype == "binary":
        faiss.write_index_binary(index, str(path))
    else:
        faiss.write_index(index, str(path))


def hnsw_link_bytes(index) -> float:
    """Average bytes of an HNSW graph's neighbour lists per vector (int32 per slot, all levels,
    plus the per-vector offsets).

    Example:
        >>> idx = make_stage(8, "float32", "hnsw", hnsw_m=4)
        >>> train_add(idx, np.random.default_rng(0).normal(size=(100, 8)), "float32")
        >>> hnsw_link_bytes(idx) > 4 * 2 * 4   # at least 2*M int32 slots on level 0
        True
    """
    import faiss

    n = max(1, index.ntotal)
    return 4.0 * faiss.vector_to_array(index.hnsw.neighbors).size / n + 8.0
