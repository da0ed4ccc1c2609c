"""Adaptive classification cascade over a nesting (MRL-AC).

Each sample starts at the smallest prefix; it stops at prefix ``k`` when the maximum softmax
probability of that prefix's head is at least ``thresholds[k]``, else escalates (the last prefix
always answers). Because prefixes are nested, a sample that stops at prefix ``m`` has used ``m``
dimensions; the *expected dimension* is the mean of that over samples.

Thresholds are calibrated on held-out data to a target accuracy by greedy coordinate descent:
start from "always escalate" (the full-dimension accuracy) and repeatedly take the one threshold
change that lowers the expected dimension most while calibration accuracy stays >= the target.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nestemb.errors import NestembError

DEFAULT_GRID = np.concatenate(
    [[0.0], np.linspace(0.3, 0.9, 13), [0.92, 0.94, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999]]
)
"""Candidate confidence thresholds tried by :func:`calibrate_thresholds` (plus "never stop")."""


DROPS = (-0.0025, 0.0, 0.0025, 0.005, 0.01, 0.02)
"""Default calibration targets of :func:`cascade_report`, as drops from the calibration-set
full-dimension accuracy (a negative drop asks for more than the full dimension gives, which
keeps a margin for the difference between calibration and test data)."""


def _check(probs: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[1] != len(dims):
        raise NestembError(f"probs must be (N, {len(dims)}, classes), got {probs.shape}")
    return probs


def cascade_predict(
    probs: np.ndarray, thresholds: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and stopping stage (prefix index) per sample for ``probs`` ``(N, K, C)`` and
    ``K - 1`` thresholds.

    Example:
        >>> p = np.array([[[0.9, 0.1], [0.2, 0.8]],     # confident at stage 0: stops there
        ...               [[0.6, 0.4], [0.1, 0.9]]])    # not confident: escalates
        >>> cascade_predict(p, [0.8])
        (array([0, 1]), array([0, 1]))
    """
    k = probs.shape[1]
    thr = np.append(np.asarray(thresholds, dtype=np.float64), -np.inf)
    if len(thr) != k:
        raise NestembError(f"need {k - 1} thresholds for {k} prefixes, got {len(thr) - 1}")
    stops = probs.max(axis=2) >= thr[None, :]
    stage = stops.argmax(axis=1)
    return probs[np.arange(len(probs)), stage].argmax(axis=1), stage


def expected_dim(stage: np.ndarray, dims: Sequence[int]) -> float:
    """Mean number of dimensions used, for stopping stages ``stage``.

    Example:
        >>> expected_dim(np.array([0, 0, 1, 2]), (2, 4, 8))     # (2 + 2 + 4 + 8) / 4
        4.0
    """
    return float(np.asarray(dims, dtype=np.float64)[np.asarray(stage)].mean())


def _evaluate(maxp: np.ndarray, correct: np.ndarray, thr: np.ndarray, dims: np.ndarray):
    stops = maxp >= np.append(thr, -np.inf)[None, :]
    stage = stops.argmax(axis=1)
    return correct[np.arange(len(stage)), stage].mean(), dims[stage].mean()


def calibrate_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    dims: Sequence[int],
    target: float,
    grid: Sequence[float] | None = None,
) -> np.ndarray:
    """``K - 1`` thresholds with calibration accuracy >= ``target`` (when the full dimension
    reaches it) and a small expected dimension (greedy coordinate descent over ``grid``).

    Example:
        >>> p = np.array([[[0.9, 0.1], [0.9, 0.1]], [[0.6, 0.4], [0.1, 0.9]]])
        >>> y = np.array([0, 1])
        >>> calibrate_thresholds(p, y, (2, 4), target=1.0)    # stop early only when confident
        array([0.9])
    """
    probs = _check(probs, dims)
    labels = np.asarray(labels)
    maxp = probs.max(axis=2)
    correct = probs.argmax(axis=2) == labels[:, None]
    d = np.asarray(dims, dtype=np.float64)
    levels = np.sort(np.asarray(DEFAULT_GRID if grid is None else grid, dtype=np.float64))[::-1]
    thr = np.full(len(dims) - 1, np.inf)
    acc, ed = _evaluate(maxp, correct, thr, d)
    while True:
        best = None
        for i in range(len(thr)):
            for v in levels:
                if v >= thr[i]:
                    continue
                trial = thr.copy()
                trial[i] = v
                a, e = _evaluate(maxp, correct, trial, d)
                if a >= target - 1e-12 and e < ed - 1e-12 and (best is None or (e, -a) < best[:2]):
                    best = (e, -a, trial)
        if best is None:
            return thr
        ed, thr = best[0], best[2]


def cascade_report(
    calib_probs: np.ndarray,
    calib_labels: np.ndarray,
    test_probs: np.ndarray,
    test_labels: np.ndarray,
    dims: Sequence[int],
    drops: Sequence[float] = DROPS,
) -> list[dict]:
    """For each accuracy drop ``d`` (default :data:`DROPS`): calibrate to (calibration full-dim accuracy - ``d``), then
    report test accuracy and expected dimension. ``target`` is the calibration target; the test
    full-dimension accuracy is in ``full_accuracy``.

    Example:
        >>> p = np.array([[[0.9, 0.1], [0.9, 0.1]], [[0.6, 0.4], [0.1, 0.9]]])
        >>> r = cascade_report(p, [0, 1], p, [0, 1], (2, 4), drops=(0.0,))
        >>> r[0]["accuracy"], r[0]["expected_dim"]
        (1.0, 3.0)
    """
    calib_probs, test_probs = _check(calib_probs, dims), _check(test_probs, dims)
    calib_labels, test_labels = np.asarray(calib_labels), np.asarray(test_labels)
    calib_full = float((calib_probs[:, -1].argmax(1) == calib_labels).mean())
    test_full = float((test_probs[:, -1].argmax(1) == test_labels).mean())
    rows = []
    for drop in drops:
        thr = calibrate_thresholds(calib_probs, calib_labels, dims, calib_full - drop)
        pred, stage = cascade_predict(test_probs, thr)
        rows.append(
            {
                "target": round(calib_full - drop, 6),
                "drop": drop,
                "accuracy": float((pred == test_labels).mean()),
                "expected_dim": round(expected_dim(stage, dims), 4),
                "full_accuracy": test_full,
                "thresholds": [None if not np.isfinite(t) else float(t) for t in thr],
            }
        )
    return rows
