"""The nestemb service: an HTTP API over durable Matryoshka collections (``nestemb serve``).

* :mod:`nestemb.service.store`: SQLite (WAL) storage of collections and points;
* :mod:`nestemb.service.collection`: one collection's search: a ``FunnelIndex``, snapshotted
  and restored (snapshot + the newer writes from SQLite) on restart;
* :mod:`nestemb.service.points`: where a collection's points live (the ``PointStore``
  protocol: SQLite + memory, or a Qdrant / Milvus collection, ``nestemb serve --engine``);
* :mod:`nestemb.service.auth`: API keys scoped to collections and read / write / admin;
* :mod:`nestemb.service.app`: the FastAPI application and its limits.
"""

from nestemb.service.app import Limits, create_app
from nestemb.service.auth import ApiKey, load_api_keys
from nestemb.service.collection import LiveCollection, Plan
from nestemb.service.store import Store

__all__ = ["ApiKey", "Limits", "LiveCollection", "Plan", "Store", "create_app", "load_api_keys"]
