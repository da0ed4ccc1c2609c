"""Compatibility between embedding models: the cross-model matrix at every prefix, the
backward-compatibility criterion, AC, AM, the update gain and partial backfill.

``C[i, j]`` is a retrieval metric of *queries encoded by model i* against a *gallery encoded by
model j*; models are ordered old -> new, so the lower triangle (``i > j``) holds new queries
searching old galleries. Every entry is computed at a prefix ``m`` of the nesting: both sides
are cut to their ``m``-prefix view (:func:`~nestemb.nesting.prefix_view`) and searched with the
one exact search (:func:`~nestemb.exact.exact_search`), so a pair of models of different widths
is compared on their common prefixes.

The criterion (Shen et al., 2020, BCT; both inequalities, as CoReS/BT2 evaluate chains):
a new model ``n`` is compatible with an old model ``o`` when

* ``C[n, o] > C[o, o]`` (strict): new queries against the old gallery beat the old model on
  its own gallery, so upgrading the queries alone already helps; and
* ``C[n, n] >= C[n, o]`` (non-strict): re-indexing with the new model never hurts.

A tie on the first inequality fails (no gain is no upgrade); a tie on the second passes.

Metrics (:data:`METRICS`): ``top1`` = 1-NN top-1 (CMC rank 1) with class labels, ``map`` =
mAP@k (k = 100 by default, the corrected AP of :mod:`nestemb.eval.metrics`) with class labels,
``ndcg`` = nDCG@10 (:func:`nestemb.eval.retrieval.ndcg_at_k`) with graded judgments.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from nestemb.checks import positive_int
from nestemb.errors import NestembError
from nestemb.eval.metrics import retrieval_metrics
from nestemb.eval.retrieval import ndcg_at_k
from nestemb.exact import exact_search
from nestemb.nesting import check_vectors, default_nesting, prefix_view, validate_nesting

METRICS = ("top1", "map", "ndcg")
"""The metrics of a compatibility matrix: 1-NN top-1, mAP@k, nDCG@10."""

_DEFAULT_K = {"map": 100, "ndcg": 10}
_DEFAULT_FRACTIONS = tuple(i / 10 for i in range(11))  # partial_backfill: 0, 0.1, ..., 1

Qrels = Sequence[Mapping[int, float] | None]


# --------------------------------------------------------------------------------------------
# one entry


def _check_metric_args(
    metric: str,
    n_queries: int,
    n_gallery: int,
    query_labels: Any,
    gallery_labels: Any,
    qrels: Qrels | None,
    k: int | None,
) -> tuple[np.ndarray | None, np.ndarray | None, list | None, int]:
    """Validate what ``metric`` needs (and refuse what it does not use); returns the labels as
    arrays, the qrels as a list and the cut-off ``k``."""
    if metric not in METRICS:
        raise NestembError(f"{{param}} must be one of {', '.join(METRICS)}; got {metric!r}",
                           param="metric")
    if k is not None:
        if metric == "top1":
            raise NestembError("{param} does not apply to metric 'top1' (it is the first neighbour)",
                               param="k")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise NestembError(f"{{param}} must be a positive integer, got {k!r}", param="k")
    k = 1 if metric == "top1" else int(k or _DEFAULT_K[metric])
    if metric == "ndcg":
        if qrels is None:
            raise NestembError("metric 'ndcg' needs qrels (one {gallery_row: relevance} per query)")
        if query_labels is not None or gallery_labels is not None:
            raise NestembError("metric 'ndcg' uses qrels, not query_labels/gallery_labels")
        qrels = list(qrels)
        if len(qrels) != n_queries:
            raise NestembError(f"qrels has {len(qrels)} entries for {n_queries} queries")
        for i, q in enumerate(qrels):
            if q is None:
                continue
            if not isinstance(q, Mapping):
                raise NestembError(f"qrels[{i}] must be a dict {{gallery_row: relevance}}")
            for row, rel in q.items():
                if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or not (
                    0 <= row < n_gallery
                ):
                    raise NestembError(
                        f"qrels[{i}] names gallery row {row!r}, outside 0..{n_gallery - 1}"
                    )
                if not isinstance(rel, (int, float, np.number)) or not math.isfinite(rel):
                    raise NestembError(f"qrels[{i}][{row}] must be a finite number, got {rel!r}")
        if not any(q for q in qrels):
            raise NestembError("qrels judge no query: every entry is empty")
        return None, None, qrels, k
    if qrels is not None:
        raise NestembError(f"metric {metric!r} uses query_labels/gallery_labels, not qrels")
    labels = []
    for name, lab, n in (("query_labels", query_labels, n_queries),
                         ("gallery_labels", gallery_labels, n_gallery)):
        if lab is None:
            raise NestembError(f"metric {metric!r} needs {name}")
        lab = np.asarray(lab)
        if lab.ndim != 1 or len(lab) != n:
            raise NestembError(
                f"{name} must be one label per row: got shape {lab.shape} for {n} rows"
            )
        labels.append(lab)
    if (labels[0].dtype.kind in "US") != (labels[1].dtype.kind in "US"):
        raise NestembError(
            f"query_labels ({labels[0].dtype}) and gallery_labels ({labels[1].dtype}) are not of "
            "the same type (text vs numbers): no label could ever match"
        )
    return labels[0], labels[1], None, k


def _score(
    q_view: np.ndarray,
    g_view: np.ndarray,
    metric: str,
    query_labels: np.ndarray | None,
    gallery_labels: np.ndarray | None,
    qrels: list | None,
    k: int,
) -> float:
    """The metric of already-cut, already-normalized query and gallery views of one width."""
    if metric == "ndcg":
        assert qrels is not None, "_check_metric_args gives ndcg its qrels"
        judged = [i for i, q in enumerate(qrels) if q]
        rows = exact_search(g_view, q_view[judged], k)[1]
        return float(np.mean([ndcg_at_k(list(r), qrels[i], k) for r, i in zip(rows, judged)]))
    # the shared evaluator: 1-NN top-1 and mAP@k through the one exact search
    assert query_labels is not None and gallery_labels is not None, \
        "_check_metric_args gives the label metrics their labels"
    res = retrieval_metrics(q_view, query_labels, g_view, gallery_labels,
                            dims=(q_view.shape[1],), k=k)
    return res["knn_top1"][0] if metric == "top1" else res[f"map{k}"][0]


def _check_dim(dim: Any, widths: Sequence[tuple[str, int]]) -> int:
    dim = positive_int(dim, "dim")
    for what, width in widths:
        if dim > width:
            raise NestembError(f"{{param}} {dim} is wider than the {what} ({width} dims)",
                               param="dim")
    return int(dim)


def cross_metric(
    queries: Any,
    gallery: Any,
    *,
    dim: int,
    metric: str,
    query_labels: Any = None,
    gallery_labels: Any = None,
    qrels: Qrels | None = None,
    k: int | None = None,
) -> float:
    """One entry of a compatibility matrix: ``metric`` of ``queries`` (``(n_q, d_q)``) searching
    ``gallery`` (``(n_g, d_g)``) on both ``dim``-prefix views (``dim <= d_q, d_g``).

    ``top1`` and ``map`` need ``query_labels`` and ``gallery_labels`` (same label = relevant);
    ``ndcg`` needs ``qrels``: a list with one ``{gallery_row: relevance}`` dict per query
    (``None`` or empty for an unjudged query, which is skipped, as BEIR does). ``k`` is the
    cut-off of ``map`` (default 100) and ``ndcg`` (default 10).

    Example:
        >>> q = np.array([[1.0, 0.2], [0.1, 1.0]]); g = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> cross_metric(q, g, dim=2, metric="top1", query_labels=[0, 1], gallery_labels=[0, 1])
        1.0
        >>> cross_metric(q, g, dim=1, metric="ndcg", qrels=[{0: 1}, {1: 1}])   # 1-d: all tie
        0.8154648767857288
    """
    queries = check_vectors(queries, what="queries")
    gallery = check_vectors(gallery, what="gallery")
    dim = _check_dim(dim, [("queries", queries.shape[1]), ("gallery", gallery.shape[1])])
    ql, gl, qr, k = _check_metric_args(metric, len(queries), len(gallery), query_labels,
                                       gallery_labels, qrels, k)
    return _score(prefix_view(queries, dim), prefix_view(gallery, dim), metric, ql, gl, qr, k)


# --------------------------------------------------------------------------------------------
# the matrix


@dataclasses.dataclass
class CompatibilityMatrix:
    """A cross-model metric at several prefixes: ``values[i, j, p]`` is ``metric`` of queries
    encoded by ``models[i]`` against the gallery encoded by ``models[j]`` at prefix ``dims[p]``;
    NaN where either model is narrower than ``dims[p]``. Models are ordered old -> new.

    Example:
        >>> v = np.array([[[0.5], [0.1]], [[0.6], [0.7]]])      # 2 models, 1 prefix
        >>> cm = CompatibilityMatrix(("old", "new"), (8,), "top1", v)
        >>> float(cm.at(8)[1, 0]), is_compatible(cm.at(8), new=1, old=0)
        (0.6, True)
        >>> CompatibilityMatrix.from_dict(cm.to_dict()).at(8).tolist()
        [[0.5, 0.1], [0.6, 0.7]]
    """

    models: tuple[str, ...]
    dims: tuple[int, ...]
    metric: str
    values: np.ndarray

    def __post_init__(self) -> None:
        self.models = tuple(str(m) for m in self.models)
        self.dims = validate_nesting(self.dims)
        if self.metric not in METRICS:
            raise NestembError(f"metric must be one of {', '.join(METRICS)}; got {self.metric!r}")
        _check_distinct(self.models)
        self.values = np.asarray(self.values, dtype=np.float64)
        t, p = len(self.models), len(self.dims)
        if self.values.shape != (t, t, p):
            raise NestembError(
                f"values must have shape (models, models, dims) = {(t, t, p)}, got "
                f"{self.values.shape}"
            )

    def at(self, dim: int) -> np.ndarray:
        """The ``(T, T)`` matrix at prefix ``dim`` (one of :attr:`dims`)."""
        if dim not in self.dims:
            raise NestembError(f"dim {dim} is not one of the matrix's dims {self.dims}")
        return self.values[:, :, self.dims.index(dim)]

    def summary(self) -> dict[int, dict[str, Any]]:
        """Per prefix: the criterion matrix, AC (``None`` with one model) and AM.

        Example:
            >>> v = np.array([[[.5], [.2]], [[.6], [.7]]])
            >>> cm = CompatibilityMatrix(("a", "b"), (4,), "map", v)
            >>> cm.summary()[4]["ac"], round(cm.summary()[4]["am"], 4)
            (1.0, 0.6)
        """
        out = {}
        for d in self.dims:
            c = self.at(d)
            out[d] = {
                "criterion": criterion_matrix(c).tolist(),
                "ac": ac(c) if len(self.models) > 1 else None,
                "am": am(c),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``values`` as nested lists ``[i][j][p]`` (NaN as ``None``), plus a
        ``summary`` per prefix (criterion, AC, AM; ignored by :meth:`from_dict`)."""
        vals = [[[None if math.isnan(x) else float(x) for x in cell] for cell in row]
                for row in self.values]
        summary = {str(d): s for d, s in self.summary().items()}
        for s in summary.values():
            for key in ("ac", "am"):
                s[key] = None if s[key] is None or math.isnan(s[key]) else s[key]
        return {"models": list(self.models), "dims": list(self.dims), "metric": self.metric,
                "values": vals, "summary": summary}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CompatibilityMatrix":
        """Inverse of :meth:`to_dict`."""
        missing = {"models", "dims", "metric", "values"} - set(d)
        if missing:
            raise NestembError(f"compatibility matrix is missing fields: {sorted(missing)}")
        vals = np.array(
            [[[np.nan if x is None else x for x in cell] for cell in row] for row in d["values"]],
            dtype=np.float64,
        )
        return cls(tuple(d["models"]), tuple(d["dims"]), d["metric"], vals)


def _check_distinct(models: tuple[str, ...]) -> None:
    if len(set(models)) != len(models):
        raise NestembError(f"{{param}} must have distinct names, got {models}", param="models")


def _default_dims(widths: Sequence[int]) -> tuple[int, ...]:
    """Every doubling prefix of every model's width, and the widths themselves."""
    dims: set[int] = set()
    for w in widths:
        dims.update(default_nesting(w))
    return tuple(sorted(dims))


def compatibility_matrix(
    queries: Sequence[Any],
    galleries: Sequence[Any],
    *,
    models: Sequence[str] | None = None,
    dims: Sequence[int] | None = None,
    metric: str = "top1",
    query_labels: Any = None,
    gallery_labels: Any = None,
    qrels: Qrels | None = None,
    k: int | None = None,
    progress: bool = True,
) -> CompatibilityMatrix:
    """The ``T x T`` matrix of :func:`cross_metric` at every prefix in ``dims``.

    ``queries[i]`` and ``galleries[i]`` are the same query and gallery items encoded by model
    ``i`` (rows in the same order for every model; models ordered old -> new; widths may
    differ). ``dims`` defaults to every doubling prefix of every model's width plus the widths;
    entries where a model is narrower than the prefix are NaN (a prefix wider than every model
    is refused). ``models`` names the models
    (default ``m0``, ``m1``, ...). Labels, qrels and ``k`` as in :func:`cross_metric`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> g = rng.normal(size=(20, 8)); q = g[:5] + 0.05 * rng.normal(size=(5, 8))
        >>> R = np.linalg.qr(rng.normal(size=(8, 8)))[0]       # model 1: a rotated space
        >>> cm = compatibility_matrix([q, q @ R], [g, g @ R], models=("old", "new"), dims=(8,),
        ...                           query_labels=np.arange(5), gallery_labels=np.arange(20),
        ...                           progress=False)
        >>> cm.at(8)                               # each model finds its own; across: chance
        array([[1., 0.],
               [0., 1.]])
    """
    from nestemb.progress import progress_bar

    queries, galleries = list(queries), list(galleries)
    t = len(queries)
    if t == 0 or len(galleries) != t:
        raise NestembError(
            f"give one query array and one gallery array per model: got {t} and {len(galleries)}"
        )
    models = tuple(f"m{i}" for i in range(t)) if models is None else tuple(str(m) for m in models)
    if len(models) != t:
        raise NestembError(f"{{param}} names {len(models)} models, but {t} were given",
                           param="models")
    _check_distinct(models)  # before the work, not after it
    qs = [check_vectors(x, what=f"queries of model {m!r}") for x, m in zip(queries, models)]
    gs = [check_vectors(x, what=f"gallery of model {m!r}") for x, m in zip(galleries, models)]
    for i in range(t):
        if len(qs[i]) != len(qs[0]):
            raise NestembError(
                f"queries of model {models[i]!r} have {len(qs[i])} rows, model {models[0]!r} "
                f"{len(qs[0])}: every model must encode the same queries"
            )
        if len(gs[i]) != len(gs[0]):
            raise NestembError(
                f"gallery of model {models[i]!r} has {len(gs[i])} rows, model {models[0]!r} "
                f"{len(gs[0])}: every model must encode the same gallery"
            )
        if qs[i].shape[1] != gs[i].shape[1]:
            raise NestembError(
                f"model {models[i]!r}: queries have {qs[i].shape[1]} dims, gallery "
                f"{gs[i].shape[1]}: both must come from the same model"
            )
    widths = [q.shape[1] for q in qs]
    dims = _default_dims(widths) if dims is None else validate_nesting(dims)
    if dims[-1] > max(widths):  # a prefix no model has: a row of NaN, never an answer
        have = ", ".join(f"{m} {w}" for m, w in zip(models, widths))
        raise NestembError(
            f"{{param}} asks for prefix {dims[-1]}, wider than every model compared ({have} "
            "dims): a prefix must fit at least one model", param="dims")
    ql, gl, qr, k = _check_metric_args(metric, len(qs[0]), len(gs[0]), query_labels,
                                       gallery_labels, qrels, k)
    values = np.full((t, t, len(dims)), np.nan)
    todo = [(p, d) for p, d in enumerate(dims)]
    with progress_bar(progress) as bar:
        task = bar.add_task("compatibility matrix", total=t * t * len(dims))
        for p, d in todo:
            q_views = [prefix_view(x, d) if d <= x.shape[1] else None for x in qs]
            g_views = [prefix_view(x, d) if d <= x.shape[1] else None for x in gs]
            for i in range(t):
                for j in range(t):
                    q_view, g_view = q_views[i], g_views[j]
                    if q_view is not None and g_view is not None:
                        values[i, j, p] = _score(q_view, g_view, metric, ql, gl, qr, k)
                    bar.advance(task, 1)
    return CompatibilityMatrix(models, dims, metric, values)


# --------------------------------------------------------------------------------------------
# criterion, AC, AM, update gain


def _square(c: Any, what: str = "C") -> np.ndarray:
    arr = np.asarray(c, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise NestembError(f"{what} must be a square (T, T) matrix, got shape {arr.shape}")
    return arr


def is_compatible(C: Any, new: int, old: int) -> bool:
    """The backward-compatibility criterion between models ``new`` and ``old`` of a ``(T, T)``
    matrix (rows: query model, columns: gallery model): ``C[new, old] > C[old, old]`` (strict)
    **and** ``C[new, new] >= C[new, old]`` (non-strict). A NaN entry fails.

    Example:
        >>> C = np.array([[0.5, 0.0], [0.6, 0.7]])
        >>> is_compatible(C, new=1, old=0)
        True
        >>> is_compatible(np.array([[0.5, 0.0], [0.5, 0.7]]), new=1, old=0)   # tie: no gain
        False
        >>> is_compatible(np.array([[0.5, 0.0], [0.6, 0.6]]), new=1, old=0)   # tie: allowed
        True
    """
    C = _square(C)
    t = len(C)
    for name, v in (("new", new), ("old", old)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < t:
            raise NestembError(f"{name} must be a model index in 0..{t - 1}, got {v!r}")
    if new == old:
        raise NestembError(f"new and old must be different models, got {new} for both")
    # comparisons with NaN are False: a missing entry never passes
    return bool(C[new, old] > C[old, old] and C[new, new] >= C[new, old])


def criterion_matrix(C: Any) -> np.ndarray:
    """``(T, T)`` booleans: entry ``[i, j]`` for ``i > j`` is :func:`is_compatible` (model ``i``
    new, ``j`` old); the diagonal and upper triangle are False.

    Example:
        >>> C = np.array([[.5, .1, .1], [.6, .7, .1], [.5, .8, .9]])
        >>> criterion_matrix(C).astype(int)
        array([[0, 0, 0],
               [1, 0, 0],
               [0, 1, 0]])
    """
    C = _square(C)
    t = len(C)
    out = np.zeros((t, t), dtype=bool)
    for i in range(t):
        for j in range(i):
            out[i, j] = is_compatible(C, i, j)
    return out


def ac(C: Any) -> float:
    """Empirical compatibility (CoReS' AC): the fraction of pairs ``i > j`` (new ``i``, old
    ``j``) of a ``(T, T)`` chain matrix that pass :func:`is_compatible`. Needs ``T >= 2``.

    Pairs that cannot be evaluated (a NaN among ``C[i, j]``, ``C[j, j]``, ``C[i, i]``: a model
    narrower than the prefix) are left out; NaN when no pair can be evaluated.

    Example:
        >>> ac(np.array([[.5, .1, .1], [.6, .7, .1], [.5, .8, .9]]))   # 2 of 3 pairs pass
        0.6666666666666666
    """
    C = _square(C)
    t = len(C)
    if t < 2:
        raise NestembError("ac needs a matrix of at least 2 models")
    crit = criterion_matrix(C)
    passed = [crit[i, j] for i in range(t) for j in range(i)
              if np.isfinite([C[i, j], C[j, j], C[i, i]]).all()]
    return float(np.mean(passed)) if passed else float("nan")


def am(C: Any) -> float:
    """Average multi-model accuracy (CoReS' AM): the mean of the lower triangle of a ``(T, T)``
    chain matrix, diagonal included (every new query model against every gallery up to it).
    NaN entries (models narrower than the prefix) are left out; all NaN gives NaN.

    Example:
        >>> am(np.array([[.5, .1, .1], [.6, .7, .1], [.5, .8, .9]]))   # (.5+.6+.7+.5+.8+.9)/6
        0.6666666666666666
    """
    C = _square(C)
    tri = C[np.tril_indices(len(C))]
    tri = tri[~np.isnan(tri)]
    return float(tri.mean()) if len(tri) else float("nan")


def update_gain(new_old: float, old_old: float, new_star: float) -> float:
    """BCT's update gain ``G = (M(new, old) - M(old, old)) / (M(new*, new*) - M(old, old))``:
    the share of a full re-index's gain (``new*``: the new model trained without constraint,
    on a re-encoded gallery) obtained without touching the stored gallery. Negative when
    cross-model search is worse than the old model.

    Example:
        >>> round(update_gain(0.555, 0.524, 0.620), 4)        # BCT's ImageNet figures
        0.3229
    """
    vals = []
    for name, v in (("new_old", new_old), ("old_old", old_old), ("new_star", new_star)):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise NestembError(f"{name} must be a number, got {v!r}") from None
        if not math.isfinite(f):
            raise NestembError(f"{name} must be finite, got {v!r}")
        vals.append(f)
    new_old, old_old, new_star = vals
    if new_star == old_old:
        raise NestembError(
            f"update gain is undefined: new_star equals old_old ({old_old}), there is no gain "
            "to share"
        )
    return (new_old - old_old) / (new_star - old_old)


# --------------------------------------------------------------------------------------------
# partial backfill


@dataclasses.dataclass(frozen=True)
class BackfillCurve:
    """The metric as the re-encoded share of the gallery grows: ``values[i]`` at
    ``fractions[i]``, and the area under the curve over ``[0, 1]`` (trapezoid rule).

    Example:
        >>> BackfillCurve((0.0, 1.0), (0.4, 0.6), 0.5).to_dict()["auc"]
        0.5
    """

    fractions: tuple[float, ...]
    values: tuple[float, ...]
    auc: float

    def to_dict(self) -> dict[str, Any]:
        return {"fractions": list(self.fractions), "values": list(self.values), "auc": self.auc}


def partial_backfill(
    new_queries: Any,
    old_gallery: Any,
    new_gallery: Any,
    *,
    fractions: Sequence[float] = _DEFAULT_FRACTIONS,
    dim: int,
    metric: str = "top1",
    order: str | Sequence[int] = "random",
    seed: int = 0,
    query_labels: Any = None,
    gallery_labels: Any = None,
    qrels: Qrels | None = None,
    k: int | None = None,
) -> BackfillCurve:
    """The metric of ``new_queries`` against a gallery whose first ``f`` share of rows (in
    ``order``) has been re-encoded, for every ``f`` in ``fractions``, and the AUC.

    Row ``r`` of ``old_gallery`` and ``new_gallery`` is the same item: the stored vector and its
    re-encoding. At share ``f`` the gallery holds ``round(f * n)`` rows from ``new_gallery`` and
    the others from ``old_gallery``, every row cut to its ``dim``-prefix view (so ``dim`` must
    fit every input; a compatible new model's prefix is compared with the old vectors).
    ``old_gallery`` is whatever is stored for a not-yet-backfilled item: the old model's vectors,
    or (to measure an adapter plus backfill) the old vectors already mapped into the new space,
    ``adapter.transform(old_vectors)``; ``new_gallery`` is normally the new model's encoding.
    ``order`` is ``"random"`` (a permutation seeded by ``seed``), ``"sequential"`` (row order) or
    an explicit permutation of the rows. ``fractions`` must be ascending in ``[0, 1]`` and
    include 0 and 1, so that AUCs are comparable.

    Example:
        >>> old = np.eye(4); new = -np.eye(4); q = -np.eye(4)     # new queries match new rows
        >>> c = partial_backfill(q, old, new, fractions=(0, .5, 1), dim=4, metric="top1",
        ...                      order="sequential", query_labels=np.arange(4),
        ...                      gallery_labels=np.arange(4))
        >>> c.values, c.auc
        ((0.0, 0.5, 1.0), 0.5)
    """
    q = check_vectors(new_queries, what="new_queries")
    old = check_vectors(old_gallery, what="old_gallery")
    new = check_vectors(new_gallery, what="new_gallery")
    if len(old) != len(new):
        raise NestembError(
            f"old_gallery has {len(old)} rows and new_gallery {len(new)}: they must hold the "
            "same items, row for row"
        )
    dim = _check_dim(dim, [("new_queries", q.shape[1]), ("old_gallery", old.shape[1]),
                           ("new_gallery", new.shape[1])])
    ql, gl, qr, k = _check_metric_args(metric, len(q), len(old), query_labels, gallery_labels,
                                       qrels, k)
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise NestembError(f"fractions must be numbers, got {fractions!r}") from None
    if (len(fr) < 2 or fr[0] != 0.0 or fr[-1] != 1.0
            or any(a >= b for a, b in zip(fr, fr[1:]))):
        raise NestembError(
            f"fractions must be strictly ascending from 0 to 1 (both included), got {fr}"
        )
    n = len(old)
    if isinstance(order, str):
        if order == "random":
            perm = np.random.default_rng(seed).permutation(n)
        elif order == "sequential":
            perm = np.arange(n)
        else:
            raise NestembError(
                f"order must be 'random', 'sequential' or a permutation, got {order!r}"
            )
    else:
        perm = np.asarray(order)
        if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
            raise NestembError(f"order must be a permutation of the {n} gallery rows")
    qv, ov, nv = prefix_view(q, dim), prefix_view(old, dim), prefix_view(new, dim)
    values = []
    for f in fr:
        g = ov.copy()
        done = perm[: int(round(f * n))]
        g[done] = nv[done]
        values.append(_score(qv, g, metric, ql, gl, qr, k))
    x = np.asarray(fr)
    y = np.asarray(values)
    auc = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    return BackfillCurve(fr, tuple(values), auc)


# --------------------------------------------------------------------------------------------
# heat map


def plot_compatibility(
    matrix: CompatibilityMatrix,
    path: str | os.PathLike,
    *,
    dims: Sequence[int] | None = None,
    title: str = "",
) -> None:
    """Heat map of ``matrix``: one panel per prefix in ``dims`` (default all), rows = query
    model, columns = gallery model, every value written in its cell; below the diagonal a green
    frame marks a pair that passes :func:`is_compatible`, a red frame (and ``x``) one that
    fails. Each panel's title gives the prefix, AC and AM. Written atomically as a PNG.

    Example:
        >>> import tempfile, pathlib
        >>> cm = CompatibilityMatrix(("a", "b"), (4, 8), "top1", np.full((2, 2, 2), 0.5))
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "heat.png"
        >>> plot_compatibility(cm, p)
        >>> p.stat().st_size > 0
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from nestemb.io import atomic_file

    dims = matrix.dims if dims is None else tuple(dims)
    for d in dims:
        matrix.at(d)  # refuses a prefix the matrix does not hold
    t = len(matrix.models)
    finite = matrix.values[np.isfinite(matrix.values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    side = 0.9 * t + 1.6
    fig, axes = plt.subplots(1, len(dims), figsize=(side * len(dims) + 1.5, side + 0.6),
                             squeeze=False, gridspec_kw={"wspace": 0.45})
    for ax, d in zip(axes[0], dims):
        c = matrix.at(d)
        im = ax.imshow(c, cmap="viridis", vmin=vmin, vmax=vmax)
        crit = criterion_matrix(c)
        for i in range(t):
            for j in range(t):
                if np.isnan(c[i, j]):  # a model narrower than the prefix
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="gray")
                    continue
                text = f"{c[i, j]:.3f}"
                if i > j and not crit[i, j]:
                    text += "\nx"
                shade = (c[i, j] - vmin) / (vmax - vmin) if vmax > vmin else 0.5
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="black" if shade > 0.6 else "white")
                if i > j and np.isfinite([c[j, j], c[i, i]]).all():
                    ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False,
                                           linewidth=2.2,
                                           edgecolor="limegreen" if crit[i, j] else "red"))
        ac_text = f"AC {ac(c):.2f}, " if t > 1 else ""
        ax.set_title(f"{d} dims: {ac_text}AM {am(c):.3f}", fontsize=9)
        ax.set_xticks(range(t), matrix.models, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(t), matrix.models, fontsize=8)
        ax.set_xlabel("gallery encoded by", fontsize=8)
    axes[0][0].set_ylabel("queries encoded by", fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label=matrix.metric)
    if title:
        fig.suptitle(title)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
