"""Maps fitted on frozen vectors: one base, one module, one loss wrapper, one identity record.

- :mod:`~nestemb.maps.base`: :class:`FittedMap` (fit / transform / save / load / identity in
  the manifest, the scikit-learn ``_BasePCA`` shape), :class:`ModelRef`, the numpy forward pass.
- :mod:`~nestemb.maps.nn`: the torch side: the PCA start, the module (linear + residual MLP),
  the schedule and the training loop (losses: :class:`nestemb.losses.PrefixLoss`).
- :mod:`~nestemb.maps.procrustes`: the one orthogonal Procrustes solver.
- :mod:`~nestemb.maps.adapter`: :class:`Adapter`, a map from one model's space into another's
  (orthogonal, affine, MLP; also translation between latent spaces from anchors).
- :mod:`~nestemb.maps.unpaired`: :func:`fit_unpaired`, an orthogonal adapter learned from
  *unpaired* samples of the two spaces (cluster matching, then Procrustes refinement).
- :mod:`~nestemb.maps.chain`: :class:`AdapterChain` and :func:`chain_embeddings`, adapters
  applied in turn (v1 -> v2 -> v3), their links checked.
- :mod:`~nestemb.maps.retrofit`: :class:`Retrofit`, a nesting retrofit that makes every prefix
  of a frozen embedding a good embedding (formerly the "nesting adaptor").

The text projection recipe (:func:`nestemb.text.train.fit_projection`) is the same module,
start and loop with text losses.
"""

from nestemb.maps.adapter import FIT_KINDS, KINDS, Adapter, adapt_embeddings, fit_adapter, load_adapter
from nestemb.maps.base import UNKNOWN_VERSION, FittedMap, ModelRef
from nestemb.maps.chain import AdapterChain, chain_embeddings
from nestemb.maps.procrustes import orthogonal_procrustes
from nestemb.maps.retrofit import (RETROFIT_KINDS, Retrofit, check_source, fit_retrofit,
                                   load_retrofit, retrofit_embeddings, retrofit_losses,
                                   save_retrofit_embeddings)
from nestemb.maps.unpaired import fit_unpaired

__all__ = [
    "FIT_KINDS", "KINDS", "RETROFIT_KINDS", "UNKNOWN_VERSION", "Adapter", "AdapterChain", "FittedMap",
    "ModelRef", "Retrofit", "adapt_embeddings", "chain_embeddings", "check_source",
    "fit_adapter", "fit_retrofit", "fit_unpaired", "load_adapter", "load_retrofit",
    "orthogonal_procrustes", "retrofit_embeddings", "retrofit_losses", "save_retrofit_embeddings",
]
