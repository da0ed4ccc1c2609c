"""Checks of scalar parameters, one of each: every positive count (batch size, steps, k,
workers, nlist ...) and every positive number (learning rate, time budget) in nestemb goes
through these, so each error names its parameter as data (:class:`NestembError.param`) and the
CLI and the service spell it as a flag or a field.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nestemb.errors import NestembError

INT32_MAX = 2**31 - 1
"""The largest count FAISS (and most native code below nestemb) takes without overflowing."""


def positive_int(value: Any, param: str, *, allow_none: bool = False,
                 max_value: int = INT32_MAX) -> Any:
    """``value`` as a positive ``int`` no larger than ``max_value`` (``None`` passes when
    ``allow_none``); otherwise an error about ``param``. ``True`` is not a count.

    Example:
        >>> positive_int(4, "nprobe")
        4
        >>> positive_int(0, "batch_size")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: batch_size must be a positive integer, got 0
        >>> positive_int(2**40, "nlist")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: nlist must be at most 2147483647, got 1099511627776
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise NestembError(f"{{param}} must be a positive integer, got {value!r}", param=param)
    if value > max_value:
        raise NestembError(f"{{param}} must be at most {max_value}, got {value!r}", param=param)
    return int(value)


def positive_float(value: Any, param: str, *, allow_none: bool = False) -> Any:
    """``value`` as a finite ``float`` above zero (``None`` passes when ``allow_none``);
    otherwise an error about ``param``.

    Example:
        >>> positive_float(2, "max_seconds")
        2.0
        >>> positive_float(float("nan"), "lr")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: lr must be a positive number, got nan
    """
    if value is None and allow_none:
        return None
    is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool)  # a string or a flag is not a number, even when float() would take it
    number = float(value) if is_number else math.nan
    if not math.isfinite(number) or number <= 0:
        raise NestembError(f"{{param}} must be a positive number, got {value!r}", param=param)
    return number


def check_matrix(x: Any, param: str, *, dim: int | None = None, dtype: Any = np.float32,
                 one_row: bool = False, min_rows: int = 1) -> np.ndarray:
    """``x`` as a finite, C-contiguous 2-D ``(n, dim)`` array of ``dtype`` with at least
    ``min_rows`` rows (and ``dim`` columns when given); with ``one_row`` a single 1-D vector is
    taken as one row. Every error is about ``param`` and names the first bad row. The one
    matrix check of nestemb (embeddings, queries, anchors, features).

    Example:
        >>> check_matrix([1.0, 2.0], "query", one_row=True).shape
        (1, 2)
        >>> check_matrix([[1.0, float("nan")]], "X", dtype=np.float64)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: X contains NaN or inf values (row 0)
        >>> check_matrix([1.0, 2.0], "X")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: X must be a non-empty 2-D (n, dim) array, got shape (2,)
    """
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError):
        raise NestembError("{param} must be a numeric array", param=param) from None
    if arr.ndim == 1 and one_row:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise NestembError(f"{{param}} must be a non-empty 2-D (n, dim) array, got shape "
                           f"{arr.shape}", param=param)
    if len(arr) < min_rows:
        raise NestembError(f"{{param}} has {len(arr)} rows, at least {min_rows} are needed",
                           param=param)
    if dim is not None and arr.shape[1] != dim:
        raise NestembError(f"{{param}} have dimension {arr.shape[1]}, expected {dim}",
                           param=param)
    check_finite_rows(arr, param)
    return np.ascontiguousarray(arr)


def check_finite_rows(arr: np.ndarray, param: str, offset: int = 0) -> None:
    """Refuse a 2-D array (or a chunk of one starting at row ``offset``) with a NaN or an
    infinity, naming the first bad row.

    Example:
        >>> check_finite_rows(np.array([[1.0], [np.inf]]), "vectors", offset=10)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: vectors contains NaN or inf values (row 11)
    """
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise NestembError(f"{{param}} contains NaN or inf values (row "
                           f"{offset + int(np.argmin(finite))})", param=param)


def non_empty_str(value: Any, param: str) -> str:
    """``value`` when it is a string with something besides blanks; otherwise an error about
    ``param`` (names, ids, addresses).

    Example:
        >>> non_empty_str("docs", "collection")
        'docs'
        >>> non_empty_str(" ", "model_id")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: model_id must be a non-empty string, got ' '
    """
    if not isinstance(value, str) or not value.strip():
        raise NestembError(f"{{param}} must be a non-empty string, got {value!r}", param=param)
    return value
