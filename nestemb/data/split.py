"""Seeded hold-out splits of a training set (for calibrating the adaptive cascade).

:func:`holdout_size` scales the hold-out with the data set (a fraction with a floor and a
ceiling, never more than a fifth of the set); :func:`split_holdout` draws it. Training and
evaluation both call these, so an evaluator can rebuild exactly the split a model trained with
from the numbers its manifest records (``n``, ``holdout``, ``seed``).
"""

from __future__ import annotations

import numpy as np

from nestemb.errors import NestembError

HOLDOUT_FRACTION = 0.1
HOLDOUT_FLOOR = 200
HOLDOUT_CEILING = 5000


def holdout_size(
    n: int,
    fraction: float = HOLDOUT_FRACTION,
    floor: int = HOLDOUT_FLOOR,
    ceiling: int = HOLDOUT_CEILING,
) -> int:
    """Hold-out size for a training set of ``n`` images: ``fraction * n`` clipped to
    ``[floor, ceiling]``, and never more than ``n // 5`` (small sets keep 80 % for training).

    Example:
        >>> holdout_size(60000), holdout_size(6000), holdout_size(1000), holdout_size(500)
        (5000, 600, 200, 100)
    """
    if n < 1:
        raise NestembError(f"n must be at least 1, got {n}")
    if not 0 <= fraction < 1:
        raise NestembError(f"fraction must lie in [0, 1), got {fraction}")
    size = min(max(int(round(fraction * n)), floor), ceiling)
    return int(min(size, n // 5))


def split_holdout(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train indices, hold-out indices), both sorted.

    Example:
        >>> tr, ho = split_holdout(10, 3, seed=0)
        >>> len(tr), len(ho), sorted(set(tr) | set(ho)) == list(range(10))
        (7, 3, True)
        >>> split_holdout(10, 10, seed=0)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: holdout of 10 images leaves none of 10 for training
    """
    if holdout < 0:
        raise NestembError(f"holdout must be >= 0, got {holdout}")
    if holdout >= n:
        raise NestembError(f"holdout of {holdout} images leaves none of {n} for training")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[holdout:]), np.sort(perm[:holdout])
