"""Model upgrades without re-indexing.

- :mod:`~nestemb.compat.matrix`: compatibility matrices (queries by model i against a gallery by
  model j, at every prefix), the backward-compatibility criterion, AC, AM, update gain and
  partial backfill.
- :mod:`~nestemb.compat.adapter`: post-hoc adapters between two models' spaces (orthogonal,
  affine, MLP), artefacts that name their source and target model.
- :mod:`~nestemb.compat.adaptor`: nesting adaptors that make every prefix of a frozen
  embedding (from any encoder) a good embedding.
- :mod:`~nestemb.compat.training`: compatible training for the image trainer (BCT influence,
  fixed d-simplex classifier, prefix-compatible Matryoshka training).
- :mod:`~nestemb.compat.procrustes`: the one orthogonal Procrustes solver.
"""

from nestemb.compat.adapter import (KINDS, Adapter, ModelRef, adapt_embeddings, fit_adapter,
                                    load_adapter)
from nestemb.compat.adaptor import (NestingAdaptor, adapted_embeddings, check_source,
                                    fit_nesting_adaptor, load_nesting_adaptor,
                                    save_adapted_embeddings)
from nestemb.compat.matrix import (METRICS, BackfillCurve, CompatibilityMatrix, ac, am,
                                   compatibility_matrix, criterion_matrix, cross_metric,
                                   is_compatible, partial_backfill, plot_compatibility,
                                   update_gain)
from nestemb.compat.procrustes import orthogonal_procrustes
from nestemb.compat.training import (CompatConfig, CompatTrainer, OrthogonalLayer,
                                     fold_orthogonal, simplex_vertices)

__all__ = [
    "KINDS", "METRICS", "Adapter", "BackfillCurve", "CompatConfig", "CompatTrainer",
    "CompatibilityMatrix", "ModelRef", "NestingAdaptor", "OrthogonalLayer", "ac",
    "adapt_embeddings", "adapted_embeddings", "am", "check_source", "compatibility_matrix",
    "criterion_matrix", "cross_metric", "fit_adapter", "fit_nesting_adaptor", "fold_orthogonal",
    "is_compatible", "load_adapter", "load_nesting_adaptor", "orthogonal_procrustes",
    "partial_backfill", "plot_compatibility", "save_adapted_embeddings", "simplex_vertices",
    "update_gain",
]
