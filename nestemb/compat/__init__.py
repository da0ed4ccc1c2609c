"""Model upgrades without re-indexing.

- :mod:`~nestemb.compat.matrix`: compatibility matrices (queries by model i against a gallery by
  model j, at every prefix), the backward-compatibility criterion, AC, AM, update gain and
  partial backfill.

Compatible training of a new image model (BCT influence, a fixed d-simplex classifier,
prefix-compatible training) is part of the trainer: :mod:`nestemb.train.compatible`.

The maps an upgrade uses (adapters between two models' spaces, nesting retrofits, the one
Procrustes) live in :mod:`nestemb.maps`.
"""

from nestemb.compat.matrix import (METRICS, BackfillCurve, CompatibilityMatrix, ac, am,
                                   compatibility_matrix, criterion_matrix, cross_metric,
                                   is_compatible, partial_backfill, plot_compatibility,
                                   update_gain)

__all__ = [
    "METRICS", "BackfillCurve", "CompatibilityMatrix", "ac", "am", "compatibility_matrix",
    "criterion_matrix", "cross_metric", "is_compatible", "partial_backfill",
    "plot_compatibility", "update_gain",
]
