"""The one search plan of a funnel: stage dims, the candidates kept after each stage and,
for queries encoded by an elastic model, the encoder width.

:func:`check_stages` is the one validation of stage dims and shortlists: :class:`FunnelIndex`
checks its parameters with it, and :meth:`Plan.check` (a request's budget, as the HTTP service
and the CLI take it) adds the nesting and ``k``. Every error names its parameter (``dims`` or
``shortlist``), which the service renders as the JSON field's path.

:func:`plan_grid` lists the plans a tuner measures (two stages from each shorter prefix, growing
shortlists); :func:`choose_plan` is the planner: from a measured table of (width, dims,
shortlist) rows (:func:`nestemb.index.tune.tune_widths`) it picks the fastest whose conservative
recall meets a target within a latency budget, or says which parameter no row can meet
(``recall`` or ``latency_ms``) and the best figures there are.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

from nestemb.checks import positive_float
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
    ``source`` says where it came from (``request``, ``tuned``, ``exact``, ``default:...``,
    ``width-table``) and ``expected_recall`` the recall@k tuning measured for it.

    ``width`` is the encoder width the queries are to be encoded with, for an elastic image
    model (a trained granularity such as ``0.25``, or one per layer for Mix'n'Match; ``None``:
    the queries' own encoder, the full model), and ``expected_ms`` the measured latency of one
    query under the plan (encoding at that width plus the search). Both appear in
    :meth:`as_dict` only for a plan that names a width, so plans of a fixed encoder read as
    they always did.

    Example:
        >>> Plan((16, 64), (200,)).as_dict()
        {'dims': [16, 64], 'shortlist': [200], 'source': 'request', 'expected_recall': None}
        >>> Plan((16, 64), (200,), "width-table", 0.97, width=0.5, expected_ms=1.25).as_dict()
        {'dims': [16, 64], 'shortlist': [200], 'source': 'width-table', 'expected_recall': 0.97, 'width': 0.5, 'expected_ms': 1.25}
    """

    dims: tuple[int, ...]
    shortlist: tuple[int, ...]
    source: str = "request"
    expected_recall: float | None = None
    width: float | tuple[float, ...] | None = None
    expected_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dims": list(self.dims), "shortlist": list(self.shortlist),
                               "source": self.source, "expected_recall": self.expected_recall}
        if self.width is not None:
            out["width"] = list(self.width) if isinstance(self.width, tuple) else self.width
            out["expected_ms"] = self.expected_ms
        return out

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


def check_recall(recall: Any, param: str = "recall") -> float:
    """A recall target as a float in (0, 1], or an error naming ``param``.

    Example:
        >>> check_recall(0.95)
        0.95
        >>> check_recall(1.5)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: recall target must be in (0, 1], got 1.5
    """
    if (isinstance(recall, bool) or not isinstance(recall, numbers.Real)
            or not 0.0 < float(recall) <= 1.0):
        raise NestembError(f"{{param}} target must be in (0, 1], got {recall}", param=param)
    return float(recall)


def width_key(width: Any) -> float | tuple[float, ...]:
    """An encoder width in the one form plans and tables compare: a trained granularity as a
    float, a per-layer (Mix'n'Match) list as a tuple of floats, a list of one repeated width
    as that width. Raises naming ``width`` for anything else.

    Example:
        >>> width_key(1), width_key([0.25, 0.5]), width_key((0.5, 0.5))
        (1.0, (0.25, 0.5), 0.5)
        >>> width_key("half")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: width must be a fraction such as 0.25 or one per layer, got 'half'
    """
    def real(v: Any) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

    if real(width):
        return float(width)
    if not isinstance(width, (str, bytes)) and hasattr(width, "__iter__"):
        values = list(width)
        if values and all(real(v) for v in values):
            floats = tuple(float(v) for v in values)
            return floats[0] if len(set(floats)) == 1 else floats
    raise NestembError(f"{{param}} must be a fraction such as 0.25 or one per layer, got {width!r}",
                       param="width")


def _same_width(a: float | tuple[float, ...], b: float | tuple[float, ...]) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)
            and all(_same_width(x, y) for x, y in zip(a, b)))


def width_text(width: Any) -> str:
    """A width as the CLI spells it: ``0.5``, or ``0.25,0.5`` per layer.

    Example:
        >>> width_text(0.5), width_text([0.25, 1.0])
        ('0.5', '0.25,1')
    """
    w = width_key(width)
    return f"{w:g}" if isinstance(w, float) else ",".join(f"{g:g}" for g in w)


def first_stage_prefixes(index: Any, nesting: Sequence[int]) -> list[int]:
    """The first-stage prefixes a tuner tries on a funnel ``index`` whose vectors have
    ``nesting``: only the graph's prefix over an HNSW first stage (any other prefix would be a
    scan), else every prefix shorter than the full dimension.

    Example:
        >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
        >>> first_stage_prefixes(FunnelIndex(dims=(8, 32), shortlist=(40,)).add(synthetic_matryoshka(100, 32)),
        ...                      (4, 8, 16, 32))
        [4, 8, 16]
    """
    D = nesting[-1]
    if index.first_stage == "hnsw" and index.dims[0] < D:
        return [index.dims[0]]
    return [d for d in nesting if d < D]


def plan_grid(index: Any, k: int = 10, *, max_candidates: int = 8192) -> list[list[dict]]:
    """The plans a tuner measures on a :class:`~nestemb.index.FunnelIndex` without changing it
    (:meth:`~nestemb.index.FunnelIndex.search_plan` runs each): first the exact plan (the
    full dimension alone), then one group per first-stage prefix shorter than the full
    dimension (only the graph's prefix over an HNSW first stage, where any other prefix would
    be a scan), each with shortlists doubling from ``k`` up to ``max_candidates`` or the
    index's size, and the second stage at the full dimension. Each plan is a dict with
    ``dims`` and ``shortlist``, the form :func:`~nestemb.index.tune.tune` takes as groups.

    Example:
        >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
        >>> idx = FunnelIndex(dims=(8, 32), shortlist=(40,)).add(synthetic_matryoshka(100, 32))
        >>> grid = plan_grid(idx, k=10)
        >>> grid[0], [g[0]["dims"] for g in grid[1:]], [p["shortlist"] for p in grid[1]]
        ([{'dims': (32,), 'shortlist': ()}], [(8, 32)], [(10,), (20,), (40,), (80,), (100,)])
    """
    from nestemb.index.base import ladder

    n, D, nesting = len(index), index.dim, index.manifest.nesting
    top = min(n, max_candidates)
    lists = ladder(k, top)
    if not lists or lists[-1] < top:
        lists.append(top)
    prefixes = first_stage_prefixes(index, nesting)
    groups: list[list[dict]] = [[{"dims": (D,), "shortlist": ()}]]
    groups += [[{"dims": (d0, D), "shortlist": (s,)} for s in lists] for d0 in prefixes]
    return groups


def _row_text(row: dict, at: str) -> str:
    sl = ",".join(map(str, row["shortlist"])) or "none"
    return (f"width {width_text(row['width'])}, stages {','.join(map(str, row['dims']))}, "
            f"shortlist {sl}: {at} {row['recall']:.4f} (conservative {row['recall_low']:.4f}), "
            f"{row['latency_ms']:.3f} ms a query")


def choose_plan(rows: Sequence[dict], *, recall: float | None = None,
                latency_ms: float | None = None, width: Any = None, k: int | None = None) -> Plan:
    """The planner: from measured ``rows`` (dicts with ``width``, ``dims``, ``shortlist``,
    ``recall``, ``recall_low`` and ``latency_ms``, as :func:`~nestemb.index.tune.tune_widths`
    records them), the fastest whose conservative recall (``recall_low``: the mean less two
    standard errors over the tuning queries, the rule the service's tuned plans follow) meets
    ``recall`` and whose latency is within ``latency_ms``; with only ``latency_ms``, the most
    accurate row within it (then the fastest of those). ``width`` restricts the choice to rows of
    that encoder width. ``k`` only names recall@k in messages.

    No row meeting both raises :class:`NestembError` naming the parameter at fault: ``recall``
    when no row (of that width) reaches the target at any latency, with the best recall there
    is; else ``latency_ms``, with the latency of the fastest row that reaches it. A ``width``
    that was not measured raises naming ``width``.

    Example:
        >>> rows = [
        ...     {"width": 0.25, "dims": [8, 64], "shortlist": [40], "recall": 0.9,
        ...      "recall_low": 0.88, "latency_ms": 0.4},
        ...     {"width": 1.0, "dims": [8, 64], "shortlist": [80], "recall": 0.99,
        ...      "recall_low": 0.98, "latency_ms": 1.5},
        ...     {"width": 1.0, "dims": [64], "shortlist": [], "recall": 1.0,
        ...      "recall_low": 1.0, "latency_ms": 3.0}]
        >>> choose_plan(rows, recall=0.85).as_dict()
        {'dims': [8, 64], 'shortlist': [40], 'source': 'width-table', 'expected_recall': 0.9, 'width': 0.25, 'expected_ms': 0.4}
        >>> p = choose_plan(rows, recall=0.95, latency_ms=2.0); p.width, p.dims
        (1.0, (8, 64))
        >>> choose_plan(rows, latency_ms=2.0).dims, choose_plan(rows, recall=0.5, width=1).shortlist
        ((8, 64), (80,))
        >>> choose_plan(rows, recall=0.99, latency_ms=2.0, k=10)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: no measured plan reaching recall@10 0.99 runs within latency_ms 2 ms: the fastest that does takes 3.000 ms (width 1, stages 64, shortlist none: recall@10 1.0000 (conservative 1.0000), 3.000 ms a query)
        >>> choose_plan(rows, recall=0.95, width=0.25)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: no measured plan of width 0.25 reaches recall 0.95 (the recall target) at any latency: the best is width 0.25, stages 8,64, shortlist 40: recall 0.9000 (conservative 0.8800), 0.400 ms a query
        >>> choose_plan(rows, recall=0.9, width=0.5)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: width 0.5 was not measured: the table holds widths 0.25, 1 (run the tuning with this width)
    """
    if recall is None and latency_ms is None:
        raise NestembError("give a {param} target, a latency_ms budget or both", param="recall")
    target = None if recall is None else check_recall(recall)
    budget = positive_float(latency_ms, "latency_ms", allow_none=True)
    at = "recall" if k is None else f"recall@{k}"
    rows = list(rows)
    of = ""
    if width is not None:
        key = width_key(width)
        measured: list[float | tuple[float, ...]] = []
        for r in rows:
            if not any(_same_width(width_key(r["width"]), m) for m in measured):
                measured.append(width_key(r["width"]))
        rows = [r for r in rows if _same_width(width_key(r["width"]), key)]
        if not rows:
            held = ", ".join(width_text(m) for m in measured) or "none"
            raise NestembError(f"{{param}} {width_text(key)} was not measured: the table holds "
                               f"widths {held} (run the tuning with this width)", param="width")
        of = f" of width {width_text(key)}"
    if not rows:
        raise NestembError("{param}: there are no measured plans to choose from (tune first)",
                           param="recall" if target is not None else "latency_ms")
    meets = [r for r in rows if target is None or r["recall_low"] >= target]
    if not meets:
        best = max(rows, key=lambda r: (r["recall_low"], -r["latency_ms"]))
        raise NestembError(f"no measured plan{of} reaches {at} {target:g} (the {{param}} "
                           f"target) at any latency: the best is {_row_text(best, at)}",
                           param="recall")
    fits = [r for r in meets if budget is None or r["latency_ms"] <= budget]
    if not fits:
        fastest = min(meets, key=lambda r: r["latency_ms"])
        what = f"no measured plan{of}" + ("" if target is None else f" reaching {at} {target:g}")
        raise NestembError(f"{what} runs within {{param}} {budget:g} ms: the fastest"
                           f"{'' if target is None else ' that does'} takes "
                           f"{fastest['latency_ms']:.3f} ms ({_row_text(fastest, at)})",
                           param="latency_ms")
    if target is not None:
        best = min(fits, key=lambda r: (r["latency_ms"], -r["recall_low"]))
    else:
        best = max(fits, key=lambda r: (r["recall_low"], -r["latency_ms"]))
    return Plan(tuple(int(d) for d in best["dims"]), tuple(int(s) for s in best["shortlist"]),
                "width-table", float(best["recall"]), width=width_key(best["width"]),
                expected_ms=float(best["latency_ms"]))


def search_with_plan(index: Any, Q: Any, k: int, plan: Plan, *, manifest: Any = None):
    """Search a :class:`~nestemb.index.FunnelIndex` under ``plan`` (its stage dims and
    shortlists; the index's own parameters unchanged), with the checks of
    :meth:`~nestemb.index.PrefixIndex.search`: the queries (one raw query or a batch), ``k``,
    and, given their ``manifest``, their model against the index's. Returns ``(scores, ids,
    stages)``: ``(n_queries, k)`` arrays and the per-stage record of
    :meth:`~nestemb.index.FunnelIndex.search_plan`.

    Example:
        >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
        >>> X = synthetic_matryoshka(300, 32)
        >>> idx = FunnelIndex(dims=(8, 32), shortlist=(40,)).add(X)
        >>> s, ids, stages = search_with_plan(idx, X[:2], 3, Plan((16, 32), (50,)))
        >>> ids[:, 0].tolist(), [st["dims"] for st in stages]
        ([0, 1], [16, 32])
        >>> search_with_plan(idx, X[:2], 60, Plan((16, 32), (50,)))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: shortlist: every size must be >= k=60, got [50]
    """
    if not hasattr(index, "search_plan"):
        raise NestembError(f"{{param}}: a plan of stage dims and shortlists runs on a FunnelIndex, "
                           f"not on {type(index).__name__}", param="index")
    Q, k = index._prepare(Q, k, manifest)
    if any(s < k for s in plan.shortlist):
        raise NestembError(f"{{param}}: every size must be >= k={k}, got {list(plan.shortlist)}",
                           param="shortlist")
    scores, rows, stages = index.search_plan(Q, k, plan.dims, plan.shortlist)
    return scores, index._rows_to_ids(rows), stages
