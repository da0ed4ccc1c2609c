"""The one search plan of a funnel: stage dims and the candidates kept after each stage.

:func:`check_stages` is the one validation of stage dims and shortlists: :class:`FunnelIndex`
checks its parameters with it, and :meth:`Plan.check` (a request's budget, as the HTTP service
and the CLI take it) adds the nesting and ``k``. Every error names its parameter (``dims`` or
``shortlist``), which the service renders as the JSON field's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from nestemb.errors import NestembError

DEFAULT_SHORTLIST = 200
"""Candidates kept per stage when a plan gives stage dims but no shortlist (at least 4k)."""


def _ints(values: Any, param: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise NestembError(f"{{param}} must be a list of integers, got {values!r}",
                           param=param) from None


def check_stages(dims: Sequence[int], shortlist: Sequence[int], *, prefix_dtype: str = "float32",
                 rescore_dtype: str | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Stage dims (positive, strictly ascending; with a quantized first stage the first two may
    be equal; with ``rescore_dtype`` exactly three, non-decreasing) and one shortlist size per
    stage but the last (positive, non-increasing), as tuples.

    Example:
        >>> check_stages([8, 32], [40])
        ((8, 32), (40,))
        >>> check_stages([32, 8], [40])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: dims: stage dims must be strictly ascending, got [32, 8]
    """
    dims, shortlist = _ints(dims, "dims"), _ints(shortlist, "shortlist")
    if not dims:
        raise NestembError("{param}: give at least one stage dimension", param="dims")
    if any(d <= 0 for d in dims):
        raise NestembError(f"{{param}}: stage dims must be positive, got {list(dims)}",
                           param="dims")
    if rescore_dtype is not None:
        if len(dims) != 3:
            raise NestembError(
                f"{{param}}: rescore_dtype={rescore_dtype!r} needs three stage dims (d0, d1, D): "
                f"the first stage, the int8 rescoring prefix d1 and the full dimension, got "
                f"{list(dims)}", param="dims")
        if not dims[0] <= dims[1] <= dims[2]:
            raise NestembError(f"{{param}}: stage dims must be non-decreasing with rescoring, "
                               f"got {list(dims)}", param="dims")
    else:
        # a quantized first stage may be re-scored in float32 at the same prefix: (D, D)
        rest = dims[1:] if len(dims) > 1 and dims[0] == dims[1] and prefix_dtype != "float32" \
            else dims
        if any(a >= b for a, b in zip(rest, rest[1:])):
            raise NestembError(f"{{param}}: stage dims must be strictly ascending, got "
                               f"{list(dims)}", param="dims")
    if len(shortlist) != len(dims) - 1:
        raise NestembError(f"{{param}}: give one size per stage but the last "
                           f"({len(dims) - 1} for dims {list(dims)}), got {len(shortlist)}",
                           param="shortlist")
    if any(s <= 0 for s in shortlist):
        raise NestembError(f"{{param}}: sizes must be positive, got {list(shortlist)}",
                           param="shortlist")
    if any(a < b for a, b in zip(shortlist, shortlist[1:])):
        raise NestembError(f"{{param}}: sizes must be non-increasing, got {list(shortlist)}",
                           param="shortlist")
    return dims, shortlist


@dataclass
class Plan:
    """A search budget: stage dims and the candidates kept after each stage but the last;
    ``source`` says where it came from (``request``, ``tuned``, ``exact``, ``default:...``)
    and ``expected_recall`` the recall@10 tuning measured for it.

    Example:
        >>> Plan((16, 64), (200,)).as_dict()
        {'dims': [16, 64], 'shortlist': [200], 'source': 'request', 'expected_recall': None}
    """

    dims: tuple[int, ...]
    shortlist: tuple[int, ...]
    source: str = "request"
    expected_recall: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"dims": list(self.dims), "shortlist": list(self.shortlist), "source": self.source,
                "expected_recall": self.expected_recall}

    @classmethod
    def check(cls, dims: Sequence[int], shortlist: Sequence[int] | None,
              nesting: Sequence[int], k: int) -> "Plan":
        """A request's stage dims (and optional shortlist, default
        ``max(DEFAULT_SHORTLIST, 4 k)`` per stage) as a plan over ``nesting``, or a
        :class:`NestembError` naming the field at fault (``dims`` or ``shortlist``).

        Example:
            >>> Plan.check([16, 64], None, (8, 16, 32, 64), 10).shortlist
            (200,)
            >>> Plan.check([12], None, (8, 16), 10)
            Traceback (most recent call last):
            ...
            nestemb.errors.NestembError: dims: 12 is not in the collection's nesting [8, 16]
            >>> try:
            ...     Plan.check([8, 16], [5], (8, 16), 10)
            ... except NestembError as e:
            ...     print(e.param, "|", e.render("searches.0.shortlist"))
            shortlist | searches.0.shortlist: every size must be >= k=10, got [5]
        """
        dims = _ints(dims, "dims")
        for d in dims:
            if d not in nesting:
                raise NestembError(f"{{param}}: {d} is not in the collection's nesting "
                                   f"{list(nesting)}", param="dims")
        if shortlist is None:
            shortlist = [max(DEFAULT_SHORTLIST, 4 * k)] * max(0, len(dims) - 1)
        dims, shortlist = check_stages(dims, shortlist)
        if any(s < k for s in shortlist):
            raise NestembError(f"{{param}}: every size must be >= k={k}, got {list(shortlist)}",
                               param="shortlist")
        return cls(dims, shortlist)
