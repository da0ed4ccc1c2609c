"""The number of threads FAISS searches with (batch search scales with it)."""

from __future__ import annotations

import logging
import os

from nestemb.checks import positive_int

logger = logging.getLogger("nestemb.index")


def set_search_threads(n: int) -> int:
    """Make FAISS (and so every nestemb index search and build) use ``n`` OpenMP threads;
    returns the count applied. A count above ``os.cpu_count()`` is clamped to it with a warning
    on the ``nestemb.index`` logger (oversubscribed cores make every query slower); a
    non-positive or non-integer count is a :class:`~nestemb.errors.NestembError`.

    Example:
        >>> set_search_threads(1)
        1
        >>> set_search_threads(10_000) == (os.cpu_count() or 1)
        True
        >>> set_search_threads(0)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: threads must be a positive integer, got 0
    """
    import faiss

    n = positive_int(n, "threads")
    cores = os.cpu_count() or 1
    if n > cores:
        logger.warning("set_search_threads: %d threads requested, the machine has %d cores: "
                       "using %d", n, cores, cores)
        n = cores
    faiss.omp_set_num_threads(n)
    return n
