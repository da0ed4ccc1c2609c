"""nestemb: elastic (Matryoshka) embeddings.

Train an encoder once so that every prefix of its embedding is itself a good embedding, measure
it, search with it, and upgrade it without re-encoding the stored gallery.

Example:
    >>> import numpy as np
    >>> from nestemb import prefix_view, validate_nesting
    >>> validate_nesting([2, 4, 8], full_dim=8)
    (2, 4, 8)
    >>> prefix_view(np.ones((1, 8)), 2).round(3)
    array([[0.707, 0.707]])
"""

from nestemb.errors import NestembError
from nestemb.nesting import Manifest, default_nesting, prefix_view, validate_nesting
from nestemb.folders import load_embeddings, save_embeddings

__version__ = "0.1.0"

__all__ = [
    "Manifest",
    "NestembError",
    "default_nesting",
    "load_embeddings",
    "prefix_view",
    "save_embeddings",
    "validate_nesting",
    "__version__",
]
