"""Model upgrades without re-indexing.

- :mod:`~nestemb.compat.matrix`: compatibility matrices (queries by model i against a gallery by
  model j, at every prefix), the backward-compatibility criterion, AC, AM, update gain and
  partial backfill.
- :mod:`~nestemb.compat.adapter`: post-hoc adapters between two models' spaces (orthogonal,
  affine, MLP), artefacts that name their source and target model.
- :mod:`~nestemb.compat.procrustes`: the one orthogonal Procrustes solver.
"""

from nestemb.compat.adapter import (KINDS, Adapter, ModelRef, adapt_embeddings, fit_adapter,
                                    load_adapter)
from nestemb.compat.matrix import (METRICS, BackfillCurve, CompatibilityMatrix, ac, am,
                                   compatibility_matrix, criterion_matrix, cross_metric,
                                   is_compatible, partial_backfill, plot_compatibility,
                                   update_gain)
from nestemb.compat.procrustes import orthogonal_procrustes

__all__ = [
    "KINDS", "METRICS", "Adapter", "BackfillCurve", "CompatibilityMatrix", "ModelRef", "ac",
    "adapt_embeddings", "am", "compatibility_matrix", "criterion_matrix", "cross_metric",
    "fit_adapter", "is_compatible", "load_adapter", "orthogonal_procrustes", "partial_backfill",
    "plot_compatibility", "update_gain",
]
