"""A quality gate for maps between two models' spaces: a held-out estimate of what a map keeps,
and the check that refuses a map below a threshold.

:func:`estimate_quality` splits the paired rows (seeded) into a *fit* part and a *held-out*
part, fits a copy of an unfitted map on the fit part and measures on the held-out rows:

* **neighbour agreement@k** (always): for each held-out row, the share of the top-``k``
  neighbours of its *mapped* source vector among the held-out target rows that are also among
  the top-``k`` neighbours of its *true* target row (cosine over L2-normalized rows, the row
  itself excluded from both lists). 1 means the map reproduces the target's neighbourhoods;
  a map between unrelated spaces scores about ``k / n_holdout`` (chance).
* **label retention** (with ``labels``, one per row): the 1-NN label accuracy of the mapped
  held-out rows searched among the held-out target rows, divided by the same accuracy of the
  true target rows (what re-embedding with the target model would give; leave-one-out, so the
  row itself never answers). It can exceed 1 when the map happens to do better.

Each is reported as ``{"mean", "low", "high"}``: the figure on all held-out rows and a 95%
percentile bootstrap interval over the held-out rows (the held-out gallery fixed), widened, if
need be, to contain the figure. Retention of a qrels metric (nDCG@10 of BEIR) is what the
benchmarks measure (``benchmarks/``, ``nestemb compat``): it needs queries, a corpus and
judgments, which a set of pairs does not have, so the library gate uses agreement and labels.

:func:`check_quality` is the gate: ``adapt_embeddings(..., min_quality=...)``, ``nestemb
adapter apply --min-quality`` and ``nestemb index search --adapter ... --min-quality`` refuse a
map whose recorded estimate (``fit_info_["quality"]``, written by ``fit_adapter(...,
holdout=...)``) is below the threshold, or that has none, unless forced.

This module sits below :mod:`nestemb.maps.adapter` (which calls it): it takes the map to
estimate as an unfitted instance (``Adapter("affine")``) rather than importing the class.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from nestemb.checks import positive_int
from nestemb.errors import NestembError
from nestemb.exact import exact_search
from nestemb.maps.base import FittedMap
from nestemb.nesting import check_vectors

MEASURES = ("agreement", "labels")
"""What :func:`check_quality` can gate on: neighbour agreement, or label retention."""

CONFIDENCE = 0.95
"""The coverage of the bootstrap intervals."""

_DESCRIBE = {"agreement": "neighbour agreement", "labels": "1-NN label accuracy retained"}
_BOOT_CELLS = 1 << 22  # bootstrap indices drawn at once: 32 MB of int64


def holdout_size(n: int, holdout: Any, k: int = 10) -> int:
    """The number of held-out rows of ``n`` pairs (more than ``k``, or an error naming
    ``holdout``).

    Example:
        >>> holdout_size(100, 0.2)
        20
    """
    is_number = isinstance(holdout, (int, float, np.integer, np.floating)) and not isinstance(
        holdout, (bool, np.bool_))
    if not is_number or not math.isfinite(float(holdout)) or not 0 < float(holdout) < 1:
        raise NestembError(f"{{param}} must be a number strictly between 0 and 1 (the share of "
                           f"the pairs held out), got {holdout!r}", param="holdout")
    n_h = int(round(n * float(holdout)))
    if n_h <= k:
        raise NestembError(
            f"{{param}} {holdout} holds out {n_h} of the {n} pairs, and neighbour agreement@{k} "
            f"needs more than {k} held-out rows: raise {{param}} or give more pairs",
            param="holdout")
    return n_h


def _neighbours(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Per query row ``i``, the top-``k`` rows of ``gallery`` by cosine, row ``i`` excluded
    (query ``i`` and gallery row ``i`` are the same item)."""
    _, rows = exact_search(gallery, queries, k + 1)
    own = rows == np.arange(len(rows))[:, None]
    # a stable sort moves the row's own position (when found) to the end, then it is cut
    order = np.argsort(own, axis=1, kind="stable")
    return np.take_along_axis(rows, order, axis=1)[:, :k]


def _interval(values: np.ndarray, stat: Any, n_boot: int, rng: np.random.Generator
              ) -> dict[str, float]:
    """``stat`` of the per-row ``values`` (an array with rows first) and its percentile
    bootstrap interval over resampled rows."""
    n = len(values)
    point = float(stat(values[None])[0])
    reps = []
    step = max(1, _BOOT_CELLS // n)
    for a in range(0, n_boot, step):
        idx = rng.integers(0, n, size=(min(step, n_boot - a), n))
        reps.append(stat(values[idx]))
    boot = np.concatenate(reps)
    alpha = 100 * (1 - CONFIDENCE) / 2
    with np.errstate(all="ignore"):
        low, high = np.nanpercentile(boot, [alpha, 100 - alpha])
    # a skewed or degenerate resampling can leave the figure a hair outside: keep it inside
    return {"mean": round(point, 6), "low": round(float(min(low, point)), 6),
            "high": round(float(max(high, point)), 6)}


def _ratio_of_means(v: np.ndarray) -> np.ndarray:
    """Per replicate (first axis), mean of column 0 over mean of column 1 (nan for 0 / 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return v[..., 0].mean(axis=-1) / v[..., 1].mean(axis=-1)


def estimate_quality(
    source: Any,
    target: Any,
    model: FittedMap,
    *,
    holdout: float = 0.2,
    k: int = 10,
    labels: Any = None,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """The held-out quality of ``model`` (an unfitted map of paired rows, e.g.
    ``Adapter("affine")``; it is copied, not changed) on ``source`` -> ``target`` pairs (see
    the module docstring).

    ``holdout`` (strictly between 0 and 1) of the rows are held out (seeded by ``seed``, as is
    the bootstrap of ``n_boot`` resamplings); the copy is fitted on the rest. The held-out part
    must have more than ``k`` rows, and the rest enough for the map. ``labels``: one per row
    (any comparable values), for the label retention. The cost is one exact search of the
    held-out rows against themselves (quadratic in their number).

    Returns ``{"agreement": {"mean", "low", "high"}, "labels": {...} (with labels, plus
    "mapped_top1" and "target_top1"), "n_fit", "n_holdout", "k", "holdout", "seed",
    "confidence"}``, which ``fit_adapter(..., holdout=...)`` stores as
    ``fit_info_["quality"]``.

    Example:
        >>> from nestemb.maps import Adapter
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 8)); R = np.linalg.qr(rng.normal(size=(8, 8)))[0]
        >>> q = estimate_quality(X, X @ R, Adapter("orthogonal"), holdout=0.25)
        >>> q["agreement"]["mean"], q["n_fit"], q["n_holdout"]
        (1.0, 150, 50)
        >>> bad = estimate_quality(X, rng.normal(size=(200, 8)), Adapter("orthogonal"))
        >>> bad["agreement"]["mean"] < 0.5
        True
    """
    if not isinstance(model, FittedMap):
        raise NestembError(f"{{param}} must be an unfitted map (e.g. Adapter('affine')), got "
                           f"{type(model).__name__}", param="model")
    source = check_vectors(source, what="source")
    target = check_vectors(target, what="target")
    n = len(source)
    if len(target) != n:
        raise NestembError(f"source and target must be paired rows of the same items: got {n} "
                           f"and {len(target)} rows")
    k = positive_int(k, "k")
    n_boot = positive_int(n_boot, "n_boot")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise NestembError(f"{{param}} must be an integer, got {seed!r}", param="seed")
    n_h = holdout_size(n, holdout, k)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n:
            raise NestembError(f"{{param}} must hold one label per paired row ({n}), got shape "
                               f"{labels.shape}", param="labels")
    fitted: Any = copy.deepcopy(model)  # FittedMap declares no fit: each subclass has its own
    min_rows = getattr(fitted, "_min_rows", None)
    need = min_rows(source.shape[1], target.shape[1]) if callable(min_rows) else 1
    if n - n_h < need:
        raise NestembError(
            f"{{param}} {holdout} leaves {n - n_h} of the {n} pairs to fit, and this "
            f"{fitted.NOUN} needs at least {need}: lower {{param}} or give more pairs",
            param="holdout")
    perm = np.random.default_rng(int(seed)).permutation(n)
    held, fit = np.sort(perm[:n_h]), np.sort(perm[n_h:])
    fitted.fit(source[fit], target[fit])
    mapped = fitted.transform(source[held])
    truth = target[held]
    got_nn, true_nn = _neighbours(truth, mapped, k), _neighbours(truth, truth, k)
    overlap = (got_nn[:, :, None] == true_nn[:, None, :]).any(axis=2).sum(axis=1) / k
    # its own stream, so that the interval does not depend on how the split drew
    rng = np.random.default_rng([int(seed), 1])
    out: dict[str, Any] = {
        "agreement": _interval(overlap, lambda v: v.mean(axis=-1), n_boot, rng)}
    if labels is not None:
        lab = labels[held]
        hits = np.stack([lab[got_nn[:, 0]] == lab, lab[true_nn[:, 0]] == lab], axis=1)
        if not hits[:, 1].any():
            raise NestembError(
                "{param} give no signal on the held-out rows: the nearest neighbour of no true "
                "target row has its label", param="labels")
        out["labels"] = {**_interval(hits.astype(np.float64), _ratio_of_means, n_boot, rng),
                         "mapped_top1": round(float(hits[:, 0].mean()), 6),
                         "target_top1": round(float(hits[:, 1].mean()), 6)}
    out.update(n_fit=int(n - n_h), n_holdout=int(n_h), k=int(k), holdout=float(holdout),
               seed=int(seed), confidence=CONFIDENCE)
    return out


def _estimate(quality: Any, measure: str) -> dict[str, float] | None:
    """The recorded ``measure`` of a ``fit_info_["quality"]`` record (``None`` when absent);
    a damaged record is an error."""
    if quality is None:
        return None
    est = quality.get(measure) if isinstance(quality, dict) else None
    if est is None and isinstance(quality, dict):
        return None
    if not (isinstance(est, dict) and all(
            isinstance(est.get(key), (int, float)) and not isinstance(est.get(key), bool)
            and math.isfinite(est[key]) for key in ("mean", "low", "high"))):
        raise NestembError(f"the recorded quality estimate is damaged: {measure} is {est!r}")
    return est


def format_estimate(quality: dict[str, Any], measure: str = "agreement") -> str:
    """One line for a recorded ``measure`` of an :func:`estimate_quality` result.

    Example:
        >>> format_estimate({"agreement": {"mean": 0.91, "low": 0.88, "high": 0.94},
        ...                  "n_holdout": 40, "k": 10})
        'neighbour agreement@10 0.910 (95% interval 0.880-0.940, 40 held-out pairs)'
    """
    est = _estimate(quality, measure)
    if est is None:
        return f"no {_DESCRIBE.get(measure, measure)} recorded"
    name = _DESCRIBE[measure] + (f"@{quality.get('k')}" if measure == "agreement" else "")
    text = (f"{name} {est['mean']:.3f} ({round(100 * CONFIDENCE)}% interval {est['low']:.3f}-"
            f"{est['high']:.3f}, {quality.get('n_holdout')} held-out pairs)")
    if measure == "labels":
        text += (f"; 1-NN accuracy {est.get('mapped_top1', float('nan')):.3f} mapped vs "
                 f"{est.get('target_top1', float('nan')):.3f} re-embedded")
    return text


def check_quality(
    model: FittedMap,
    min_quality: Any,
    *,
    force: bool = False,
    measure: str = "agreement",
) -> dict[str, Any] | None:
    """The gate: refuse a fitted ``model`` whose recorded held-out ``measure`` (one of
    :data:`MEASURES`) is below ``min_quality`` (a number in [0, 1]), or that has no recorded
    estimate, unless ``force``. The figure compared is the estimate's *mean* (the interval is
    printed with it, so that a borderline refusal shows how sure it is).

    Returns ``None`` without a threshold, else ``{"measure", "min_quality", "mean", "low",
    "high", "passed", "forced"}`` (``mean``/``low``/``high`` ``None`` without an estimate),
    which :func:`~nestemb.maps.adapter.adapt_embeddings` records with its output.

    Example:
        >>> from nestemb.maps import fit_adapter
        >>> rng = np.random.default_rng(0)
        >>> X, Y = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))   # unrelated spaces
        >>> a = fit_adapter(X, Y, holdout=0.25)
        >>> check_quality(a, 0.9)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: the adapter's held-out neighbour agreement@10 0.186 (95% interval ...
        >>> check_quality(a, 0.9, force=True)["passed"]
        False
        >>> check_quality(a, 1.5)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: min_quality must be a number in [0, 1], got 1.5
    """
    if not isinstance(force, (bool, np.bool_)):
        raise NestembError(f"{{param}} must be True or False, got {force!r}", param="force")
    if min_quality is None:
        return None
    is_number = isinstance(min_quality, (int, float, np.integer, np.floating)) and not isinstance(
        min_quality, (bool, np.bool_))
    if not is_number or not 0.0 <= float(min_quality) <= 1.0:  # nan fails both comparisons
        raise NestembError(f"{{param}} must be a number in [0, 1], got {min_quality!r}",
                           param="min_quality")
    if measure not in MEASURES:
        raise NestembError(f"{{param}} must be one of {', '.join(MEASURES)}, got {measure!r}",
                           param="measure")
    quality: Any = getattr(model, "fit_info_", {}).get("quality")
    est = _estimate(quality, measure)
    gate: dict[str, Any] = {"measure": measure, "min_quality": float(min_quality),
                            "mean": None, "low": None, "high": None, "forced": bool(force)}
    noun = getattr(model, "NOUN", "map")
    if est is None:
        if force:
            return {**gate, "passed": False}
        why = ("was fitted without a held-out estimate: refit it with a holdout share"
               if quality is None else
               f"has no held-out {_DESCRIBE[measure]} (fitted without labels): refit it with "
               "labels")
        raise NestembError(f"the {noun} {why}, or set {{param}} to use it anyway",
                           param="force")
    gate.update(mean=est["mean"], low=est["low"], high=est["high"])
    passed = est["mean"] >= float(min_quality)
    if not passed and not force:
        raise NestembError(
            f"the {noun}'s held-out {format_estimate(quality, measure)} is below {{param}} "
            f"{float(min_quality):g} (the mean is compared): refit it (more pairs, another "
            "kind) or force its use", param="min_quality")
    return {**gate, "passed": bool(passed)}
