"""Funnels served by existing vector databases: export a collection or a
:class:`~nestemb.index.FunnelIndex` and search it there with the same stage configuration.

- :mod:`nestemb.backends.qdrant`: a named vector per stage prefix (the shortest one int8
  quantized), the funnel compiled to the Query API's nested ``prefetch``
  (:func:`~nestemb.backends.qdrant.export_qdrant`,
  :func:`~nestemb.backends.qdrant.export_qdrant_edge`,
  :class:`~nestemb.backends.qdrant.QdrantFunnel`,
  :func:`~nestemb.backends.qdrant.connect_qdrant`).
- :mod:`nestemb.backends.milvus`: a ``FLOAT_VECTOR`` field per stage prefix, the funnel
  compiled to a search on the short field and filtered re-rank searches on the longer ones
  (:func:`~nestemb.backends.milvus.export_milvus`,
  :class:`~nestemb.backends.milvus.MilvusFunnel`,
  :func:`~nestemb.backends.milvus.connect_milvus`).
- :mod:`nestemb.backends.base`: what both share (collection manifest, stage checks).

The engines are optional: ``pip install 'nestemb[backends]'`` (qdrant-client, qdrant-edge-py,
pymilvus, milvus-lite). Importing this package imports none of them.

Example:
    >>> from nestemb.backends import field_name
    >>> field_name(64)
    'd64'
"""

from nestemb.backends.base import COLLECTION_KIND, disk_bytes, export_source, field_name

__all__ = ["COLLECTION_KIND", "disk_bytes", "export_source", "field_name"]
