"""Parsers for CLI strings: comma-separated lists of integers and numbers.

The library core takes typed values (tuples of ints, floats); only the CLI turns ``"8,16,32"``
into them, naming the flag in its error.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.nesting import validate_nesting


def parse_ints(text: str | None, what: str = "values") -> tuple[int, ...] | None:
    """Parse a CLI list of integers such as ``"2,4,6"`` (``None`` passes through); ``what``
    names the option in the error.

    Example:
        >>> parse_ints("2, 4,6", "--layers")
        (2, 4, 6)
        >>> parse_ints("2,x", "--layers")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: --layers must be comma-separated integers, got '2,x'
    """
    if text is None:
        return None
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise NestembError(f"{what} must be comma-separated integers, got {text!r}") from None


def parse_dims(text: str | Sequence[int] | None, what: str = "--dims") -> tuple[int, ...] | None:
    """Parse a CLI list such as ``"8,16,32"`` into a tuple (not yet validated against a model).

    Example:
        >>> parse_dims("8, 16,32")
        (8, 16, 32)
        >>> parse_dims(None) is None
        True
    """
    if text is None:
        return None
    if not isinstance(text, str):
        return validate_nesting(text)
    return validate_nesting(parse_ints(text, what))


def parse_floats(text: str | None, what: str = "--weights") -> tuple[float, ...] | None:
    """Parse a CLI list of floats such as ``"2,1,1"``.

    Example:
        >>> parse_floats("2, 1.5")
        (2.0, 1.5)
    """
    if text is None:
        return None
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise NestembError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values or not all(np.isfinite(values)):
        raise NestembError(f"{what} must be finite numbers, got {text!r}")
    return values
