"""Search over Matryoshka embeddings that exploits the nesting.

- :class:`FunnelIndex`: shortlist on a short prefix (float32 / float16 / int8 / binary, flat or
  HNSW), re-rank with longer prefixes of the vectors stored once.
- :class:`AdaptiveIVFIndex` (AdANNS-IVF) and :class:`AdaptiveOPQIndex` (AdANNS-OPQ).
- :class:`PrefixIndex`: what they share (``train`` / ``add`` / ``delete`` / ``compact``,
  ``search`` / ``search_exact``, ``set_params``, ``candidate_grid``, ``set_tuning``,
  ``bytes_per_vector``, ``save`` / ``load``), in :mod:`nestemb.index.base`.
- :class:`Plan`: the one search plan (stage dims + shortlists), checked by one function
  (:mod:`nestemb.index.plan`); :meth:`FunnelIndex.search_plan` runs one, stage by stage.
- :func:`tune`: pick the cheapest configuration meeting a recall target.
- :func:`load_index`: read any index directory (checksums verified), :mod:`nestemb.index.persist`.
- :func:`set_search_threads`: FAISS search threads (clamped to the cores, with a warning).
- :mod:`nestemb.index.diagnostics`: distance gaps against quantization error
  (:func:`~nestemb.index.diagnostics.gap_statistics`).
- :func:`synthetic_matryoshka`: MRL-like test vectors; :func:`exact_search` and
  :func:`knn_intersection` re-exported from :mod:`nestemb.exact`.

Example:
    >>> from nestemb.index import FunnelIndex, exact_search, knn_intersection, synthetic_matryoshka
    >>> X = synthetic_matryoshka(500, 32, seed=0); Q = synthetic_matryoshka(5, 32, seed=1)
    >>> found = FunnelIndex(dims=(8, 32), shortlist=(500,)).add(X).search(Q, k=10)[1]
    >>> knn_intersection(found, exact_search(X, Q, 10)[1])
    1.0
"""

from nestemb.exact import exact_search, knn_intersection
from nestemb.index.base import PrefixIndex
from nestemb.index.funnel import FunnelIndex
from nestemb.index.ivf import AdaptiveIVFIndex, AdaptiveOPQIndex
from nestemb.index.persist import build_on_disk, load_index
from nestemb.index.plan import Plan
from nestemb.index.synthetic import synthetic_matryoshka
from nestemb.index.threads import set_search_threads
from nestemb.index.tune import tune

__all__ = [
    "FunnelIndex",
    "AdaptiveIVFIndex",
    "AdaptiveOPQIndex",
    "PrefixIndex",
    "Plan",
    "exact_search",
    "knn_intersection",
    "load_index",
    "build_on_disk",
    "synthetic_matryoshka",
    "set_search_threads",
    "tune",
]
