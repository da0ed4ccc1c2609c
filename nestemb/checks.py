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
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise NestembError(f"{{param}} must be a positive number, got {value!r}", param=param)
    return number
