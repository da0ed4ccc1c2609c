"""A small typed client of the service (httpx), used by ``nestemb upload`` and the benchmarks.

Example (against a running ``nestemb serve``)::

    from nestemb.service.client import ServiceClient
    with ServiceClient("http://127.0.0.1:8000") as c:
        c.create("docs", encoder="minilm")
        c.upsert("docs", [{"id": "d1", "text": "Matryoshka embeddings", "payload": {}}])
        c.search("docs", text="nested embeddings", k=5, dims=[48, 384])["hits"]
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from nestemb.errors import NestembError


class ServiceError(NestembError):
    """An error answer of the service: ``status`` and the JSON error's message and field."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(f"server answered {status}: {message}")
        self.status, self.field = status, field


class ServiceClient:
    """Thin wrapper of the HTTP API; every error answer raises :class:`ServiceError`."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0):
        import httpx

        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

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
            raise NestembError(f"cannot reach the service at {self._http.base_url}: {e}") from None
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                raise ServiceError(r.status_code, err["message"], err.get("field"))
            except (ValueError, KeyError, TypeError):
                raise ServiceError(r.status_code, r.text[:200]) from None
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

    def search(self, name: str, **request: Any) -> dict:
        return self._call("POST", f"/collections/{name}/search", request)

    def upload(self, name: str, points: Iterable[dict], batch: int = 64,
               progress: Callable[[int], None] | None = None) -> int:
        """Upsert ``points`` in batches of ``batch``; returns how many were sent."""
        sent, buf = 0, []
        for p in points:
            buf.append(p)
            if len(buf) == batch:
                self.upsert(name, buf)
                sent += len(buf)
                if progress:
                    progress(len(buf))
                buf = []
        if buf:
            self.upsert(name, buf)
            sent += len(buf)
            if progress:
                progress(len(buf))
        return sent
