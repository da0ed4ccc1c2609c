"""Search over Matryoshka embeddings that exploits the nesting.

- :class:`FunnelIndex`: shortlist on a short prefix (float32 / float16 / int8 / binary, flat or
  HNSW), re-rank with longer prefixes of the vectors stored once.
- :class:`AdaptiveIVFIndex` (AdANNS-IVF) and :class:`AdaptiveOPQIndex` (AdANNS-OPQ).
- :func:`tune`: pick the cheapest configuration meeting a recall target.
- :func:`load_index`: read any index directory (checksums verified).

Example:
    >>> from nestemb.index import FunnelIndex, exact_search, recall_at_k, synthetic_matryoshka
    >>> X = synthetic_matryoshka(500, 32, seed=0); Q = synthetic_matryoshka(5, 32, seed=1)
    >>> found = FunnelIndex(dims=(8, 32), shortlist=(500,)).add(X).search(Q, k=10)[1]
    >>> recall_at_k(found, exact_search(X, Q, 10)[1])
    1.0
"""

from nestemb.index.funnel import FunnelIndex
from nestemb.index.ivf import AdaptiveIVFIndex, AdaptiveOPQIndex
from nestemb.index.store import (
    PrefixIndex,
    exact_search,
    load_index,
    recall_at_k,
    synthetic_matryoshka,
)
from nestemb.index.tune import tune

__all__ = [
    "FunnelIndex",
    "AdaptiveIVFIndex",
    "AdaptiveOPQIndex",
    "PrefixIndex",
    "exact_search",
    "load_index",
    "recall_at_k",
    "synthetic_matryoshka",
    "tune",
]
