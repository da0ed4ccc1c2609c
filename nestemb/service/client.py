"""A small typed client of the service (httpx), used by ``nestemb upload`` and the benchmarks.

Example (an in-process app here; give a running ``nestemb serve``'s URL instead, e.g.
``ServiceClient("http://127.0.0.1:8000")``):

    >>> import tempfile
    >>> from fastapi.testclient import TestClient
    >>> from nestemb.service import create_app
    >>> with TestClient(create_app(tempfile.mkdtemp())) as http, ServiceClient(http=http) as c:
    ...     c.create("docs", nesting=[2, 4])["dim"]
    ...     c.upsert("docs", [{"id": "d1", "vector": [1, 0, 0, 0], "payload": {"n": 1}},
    ...                       {"id": "d2", "vector": [0, 1, 0, 0]}])
    ...     [h["id"] for h in c.search("docs", vector=[1, 0.1, 0, 0], k=2, dims=[2, 4])["hits"]]
    ...     try:
    ...         c.search("docs", vector=[1, 0, 0, 0], dims=[3])
    ...     except ServiceError as e:
    ...         print(e.status, e.field)
    4
    {'upserted': 2}
    ['d1', 'd2']
    422 dims

(A text collection names one of the server's encoders: ``c.create("sci", encoder="minilm")``,
then ``c.search("sci", text="nested embeddings", k=5, dims=[64, 384])``: MiniLM's nesting is
32, 64, 128, 256, 384; an encoder trained with nested widths also takes ``width=0.25``.)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from nestemb.errors import NestembError


class ServiceError(NestembError):
    """An error answer of the service: ``status`` and the JSON error's message and field."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(f"server answered {status}: {message}")
        self.status, self.field, self.message = status, field, message


class Unreachable(NestembError):
    """No answer from the service (connection refused or lost, timeout): a write in flight
    may or may not have been applied."""


class UploadFailed(NestembError):
    """:meth:`ServiceClient.upload` stopped at a failed batch: ``stored`` points (the first
    ones, in order) were acknowledged; the batch ``failed`` (``(start, stop)`` indices) was
    refused (``cause`` a :class:`ServiceError`: nothing of it stored, batches are
    all-or-nothing) or got no answer (an :class:`Unreachable`: it may be stored or not);
    nothing after it was sent."""

    def __init__(self, cause: NestembError, stored: int, failed: tuple[int, int], total: int):
        super().__init__(f"{cause}; stored {stored} of {total} points")
        self.cause, self.stored, self.failed, self.total = cause, stored, failed, total


class ServiceClient:
    """Thin wrapper of the HTTP API; every error answer raises :class:`ServiceError`, no
    answer at all :class:`Unreachable`. ``http``: an ``httpx.Client`` to send through instead
    of one made for ``url`` (e.g. FastAPI's ``TestClient`` over an in-process app)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout: float = 60.0, *, http: Any = None):
        import httpx

        headers = {"X-API-Key": api_key} if api_key else {}
        if http is not None:
            http.headers.update(headers)
            self._http = http
        else:
            self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers,
                                      timeout=timeout)

    def __enter__(self) -> "ServiceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> dict:
        import httpx

        try:
            r = self._http.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise Unreachable(f"cannot reach the service at {self._http.base_url}: "
                              f"{e or type(e).__name__}") from None
        if r.status_code >= 400:
            try:  # (ServiceError is a ValueError: raised after the parsing)
                err = r.json()["error"]
                message, field = str(err["message"]), err.get("field")
            except (ValueError, KeyError, TypeError):
                message, field = r.text[:200], None
            raise ServiceError(r.status_code, message, field)
        return r.json()

    def collections(self) -> list[dict]:
        return self._call("GET", "/collections")["collections"]

    def describe(self, name: str) -> dict:
        return self._call("GET", f"/collections/{name}")

    def create(self, name: str, *, nesting: Sequence[int] | None = None,
               encoder: str | None = None) -> dict:
        return self._call("PUT", f"/collections/{name}",
                          {"nesting": list(nesting) if nesting else None, "encoder": encoder})

    def drop(self, name: str) -> dict:
        return self._call("DELETE", f"/collections/{name}")

    def upsert(self, name: str, points: list[dict]) -> dict:
        return self._call("PUT", f"/collections/{name}/points", {"points": points})

    def delete(self, name: str, ids: list) -> dict:
        return self._call("POST", f"/collections/{name}/points/delete", {"ids": ids})

    def get(self, name: str, point_id: int | str) -> dict:
        return self._call("GET", f"/collections/{name}/points/{point_id}")

    def search(self, name: str, *, width: float | None = None, **request: Any) -> dict:
        """One search (the fields of ``SearchRequest``: ``vector`` or ``text``, ``k``, ``dims``,
        ``recall``, ``latency_ms``, ...); ``width``: encode ``text`` at that trained
        feed-forward width of the collection's encoder (the answer's ``plan.width`` echoes it).
        With ``latency_ms`` (or ``recall``) on a collection with a width table
        (:meth:`tune_widths`), the server picks the width, dims and shortlist."""
        if width is not None:
            request["width"] = width
        return self._call("POST", f"/collections/{name}/search", request)

    def tune_widths(self, name: str, queries: Sequence[str], **options: Any) -> dict:
        """Measure collection ``name``'s width table on held-out query texts (``options``:
        ``k``, ``timing_queries``, ``repeat``, ``max_seconds``); returns the table, whose
        ``rows`` the server plans ``latency_ms`` searches from."""
        return self._call("POST", f"/collections/{name}/widths",
                          {"queries": list(queries), **options})

    def upload(self, name: str, points: Sequence[dict], batch: int = 64,
               progress: Callable[[int], None] | None = None) -> int:
        """Upsert ``points`` in order, in batches of ``batch``; returns how many were stored.
        A batch that fails stops the upload with :class:`UploadFailed` (how many are stored,
        which batch failed); upserts are by id, so sending everything again is safe."""
        stored = 0
        for a in range(0, len(points), batch):
            chunk = list(points[a: a + batch])
            try:
                self.upsert(name, chunk)
            except NestembError as e:
                raise UploadFailed(e, stored, (a, a + len(chunk)), len(points)) from None
            stored += len(chunk)
            if progress:
                progress(len(chunk))
        return stored

    # ------------------------------------------------------------------ migrations
    @staticmethod
    def _migration_path(name: str, rest: str = "") -> str:
        """``/collections/{name}/migration{rest}``, the name quoted (a ``?`` or ``/`` in it
        reaches the server as part of the name, which refuses it)."""
        from urllib.parse import quote

        return f"/collections/{quote(str(name), safe='')}/migration{rest}"

    def migrate(self, name: str, **body: Any) -> dict:
        """Start moving collection ``name`` to a new model (``PUT .../migration``, an admin
        key): ``encoder=`` one of the server's encoders (it re-encodes the stored texts), or
        ``nesting=`` (and ``model_id=``): the client posts the new vectors
        (:meth:`post_vectors`); the other keys of the API's ``MigrationStart`` (``text_field``,
        ``sample_size``, ``min_quality``, ``force``, ``kind``, ``max_p99_ms``, ``batch``) as
        keywords, None ones left to the server's defaults. Returns the migration's status.

        Example (client vectors: the new model's vectors here are a fixed linear image of the
        old ones; a few seconds):

            >>> import tempfile
            >>> import numpy as np
            >>> from fastapi.testclient import TestClient
            >>> from nestemb.service import create_app
            >>> from nestemb.service.migration import wait_for
            >>> rng = np.random.default_rng(0)
            >>> X = rng.normal(size=(300, 8)); R = rng.normal(size=(8, 12))
            >>> with TestClient(create_app(tempfile.mkdtemp())) as http, ServiceClient(http=http) as c:
            ...     _ = c.create("docs", nesting=[4, 8])
            ...     _ = c.upsert("docs", [{"id": i, "vector": x.tolist()} for i, x in enumerate(X)])
            ...     c.migrate("docs", nesting=[6, 12], model_id="v2", sample_size=100)["state"]
            ...     c.post_vectors("docs", [{"id": i, "vector": (X[i] @ R).tolist()}
            ...                             for i in range(100)])
            ...     wait_for(lambda: c.migration("docs")["state"] == "backfilling")
            ...     hit = c.search("docs", vector=(X[7] @ R).tolist(), model="v2", k=1)
            ...     hit["hits"][0]["id"], hit["migration"]["space"]
            ...     todo = c.migration_queue("docs", limit=1000)
            ...     c.post_vectors("docs", [{"id": i, "vector": (X[i] @ R).tolist()} for i in todo])
            ...     c.migration("docs")["complete"]
            ...     c.finish_migration("docs")["collection"]["nesting"]
            'collecting'
            {'posted': 100}
            (7, 'new')
            {'posted': 200}
            True
            [6, 12]
        """
        return self._call("PUT", self._migration_path(name),
                          {k: v for k, v in body.items() if v is not None})

    def migration(self, name: str) -> dict:
        """The status of the migration of ``name``: ``state`` (``sampling`` or ``collecting``,
        ``mapping``, ``backfilling``, ``failed``), ``paused``, ``complete``, ``backfilled``
        (share of true new-model vectors), counts, ``rate_per_s``, ``eta_s``, ``map``
        (its kind and held-out quality), ``probe`` (measured agreement), search p99. A
        :class:`ServiceError` 404 (field ``name``) when it is not migrating."""
        return self._call("GET", self._migration_path(name))

    def pause_migration(self, name: str) -> dict:
        """Pause the migration's worker (searches and writes go on); returns its status.

        Example (see :meth:`migrate` for a whole migration):

            >>> import tempfile
            >>> from fastapi.testclient import TestClient
            >>> from nestemb.service import create_app
            >>> with TestClient(create_app(tempfile.mkdtemp())) as http, ServiceClient(http=http) as c:
            ...     _ = c.create("docs", nesting=[2, 4])
            ...     _ = c.upsert("docs", [{"id": i, "vector": [1, i, 0, 1]} for i in range(60)])
            ...     _ = c.migrate("docs", nesting=[4, 8], sample_size=60)
            ...     c.pause_migration("docs")["paused"], c.resume_migration("docs")["paused"]
            ...     c.cancel_migration("docs")["collection"]["nesting"]
            ...     try:
            ...         c.migration("docs")
            ...     except ServiceError as e:
            ...         print(e.status, e.field)
            (True, False)
            [2, 4]
            404 name
        """
        return self._call("POST", self._migration_path(name, "/pause"))

    def resume_migration(self, name: str) -> dict:
        """Resume a paused migration; returns its status."""
        return self._call("POST", self._migration_path(name, "/resume"))

    def finish_migration(self, name: str, force: bool = False) -> dict:
        """Make the new model the collection's model and drop the old vectors (one
        transaction); before the backfill is complete only with ``force`` (mapped vectors
        become the collection's). Returns ``{"name", "ended": "finish", "collection"}``."""
        return self._call("POST", self._migration_path(name, "/finish"), {"force": force})

    def cancel_migration(self, name: str) -> dict:
        """Drop the new vectors and the migration (one transaction); the collection keeps
        its model. Returns ``{"name", "ended": "cancel", "collection"}``."""
        return self._call("POST", self._migration_path(name, "/cancel"))

    def migration_queue(self, name: str, limit: int = 1000) -> list:
        """Ids whose new-model vector is still a mapped one, most retrieved first (at most
        ``limit``): what a client posting vectors sends next."""
        return self._call("GET", self._migration_path(name, f"/queue?limit={int(limit)}"))["ids"]

    def post_vectors(self, name: str, points: list[dict]) -> dict:
        """New-model vectors (``{"id", "vector"}``) of stored points: true ones, they replace
        mapped vectors (``PUT .../migration/vectors``, a write key). Returns ``{"posted": n}``."""
        return self._call("PUT", self._migration_path(name, "/vectors"), {"points": points})
