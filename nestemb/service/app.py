"""The HTTP API: durable Matryoshka collections, budgeted search, a search page.

:func:`create_app` builds the FastAPI application over a data folder; ``nestemb serve`` runs it
under uvicorn. Layers, outermost first:

1. :class:`GuardMiddleware` (pure ASGI): authorization from the method and path alone and the
   request-size limit (``Content-Length`` checked up front, streamed bodies counted), so a
   request without the right key never has its body read and never changes anything;
2. FastAPI validation of the JSON body (pydantic models below; every error is a JSON
   ``{"error": {"status", "message", "field"}}``);
3. the handlers: checks against the collection (vector length, nesting, ids), then the write
   to the collection's :class:`nestemb.service.points.PointStore` (the SQLite commit of
   :class:`nestemb.service.store.Store`, then the in-memory update of
   :class:`nestemb.service.collection.LiveCollection`; or, with ``backend``, the write to a
   Qdrant / Milvus collection), then the answer: an acknowledged write is durable.
"""

from __future__ import annotations

import codecs
import collections
import json
import logging
import re
import shutil
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool,
                      StrictInt)
from starlette.exceptions import HTTPException as StarletteHTTPException

from nestemb import __version__
from nestemb.errors import NestembError
from nestemb.nesting import default_nesting, validate_nesting
from nestemb.service.auth import ApiKey, find_key
from nestemb.index.plan import Plan, choose_plan
from nestemb.maps.adapter import FIT_KINDS
from nestemb.service.collection import LiveCollection
from nestemb.engines import NAME_RE, Mismatch, Unsupported
from nestemb.service.migration import MIGRATIONS, Conflict, Migration
from nestemb.service.points import Backend, PointStore, SqlitePoints
from nestemb.service.store import MissingCollection, Store, shadow_name

log = logging.getLogger("nestemb.service")

INT_ID_MIN, INT_ID_MAX = -(2**53 - 1), 2**53 - 1
"""Integer point ids are JSON-safe: JavaScript's ``JSON.parse`` (the search page) and every
float-based JSON reader keep them exact."""
MAX_PAYLOAD_DEPTH = 64
"""Deepest nesting of arrays and objects in a payload (the response encoder stops near 255)."""
MAX_ABS_STORED = 1e30
MIN_PREFIX_NORM = 1e-30
"""Stored vectors: values within +-1e30 and a first prefix of norm >= 1e-30, so every float32
product and norm of the search stays finite and normal (queries are normalized in float64)."""
BUNDLED_ENCODERS = {"minilm": "minilm"}
"""Encoders every server offers (name -> what :func:`nestemb.text.encoder.load_text_model`
loads); ``nestemb serve --encoders NAME=PATH`` adds saved text models."""
JSON_FIELDS = {"collection": "name"}
"""Library parameter names (``NestembError.param``) whose JSON field is spelled otherwise."""


@dataclass(frozen=True)
class Limits:
    """Request limits; each is answered with 413 (sizes) or 422 (values) naming the field."""

    max_body_bytes: int = 32 << 20
    max_batch: int = 1000
    max_k: int = 1000
    max_payload_bytes: int = 65536
    max_text_chars: int = 20000
    max_dim: int = 8192
    max_queries: int = 256


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def error_body(status: int, message: str, field: str | None = None) -> dict:
    return {"error": {"status": status, "message": message, "field": field}}


def json_field(e: NestembError, prefix: str = "") -> str | None:
    """The JSON field a library error is about: its ``param`` (read as data, never from the
    message), spelled as the request spells it, under ``prefix`` (``searches.2.``).

    Example:
        >>> json_field(NestembError("{param}: 12 is not in the nesting", param="dims"),
        ...            "searches.1.")
        'searches.1.dims'
        >>> json_field(NestembError("dims: no param given")) is None
        True
    """
    if e.param is None:
        return None
    return prefix + JSON_FIELDS.get(e.param, e.param)


def _field_error(e: NestembError, prefix: str = "", status: int = 422) -> "ApiError":
    """A library error as the API's error, its message naming the JSON field."""
    field = json_field(e, prefix)
    return ApiError(status, e.render(field) if field else str(e), field)


# ----------------------------------------------------------------------------- API models
def _utf8(s: str) -> str:
    """JSON allows lone surrogates (``"\\ud800"``); they cannot be written back as UTF-8."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("string holds a lone UTF-16 surrogate (not valid Unicode)") from None
    return s


def _integral(v: Any) -> Any:
    """JSON Schema's integers include ``10.0``: take it as 10 (but not ``true`` or ``"10"``)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def json_int(lo: int, hi: int) -> Any:
    """An integer in ``[lo, hi]`` (bounds first: after the validator they would not reach the
    OpenAPI schema as minimum and maximum)."""
    return Annotated[StrictInt, Field(ge=lo, le=hi), BeforeValidator(_integral)]


Utf8Str = Annotated[str, AfterValidator(_utf8)]
PointId = Union[json_int(INT_ID_MIN, INT_ID_MAX),
                Annotated[str, Field(min_length=1, max_length=256)]]
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Scalar = Union[StrictInt, FiniteFloat, Utf8Str, bool, None]


ModelName = Optional[Annotated[str, Field(min_length=1, max_length=4096)]]
MODEL_DOC = ("the model of the vector or text: during a migration 'old' (the default) or 'new', "
             "or an encoder name or model id of either; otherwise the collection's own")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(Strict):
    status: int
    message: str
    field: Optional[str] = None


class ErrorResponse(Strict):
    error: ErrorDetail


class CollectionCreate(Strict):
    nesting: Optional[list[json_int(1, 65536)]] = Field(
        None, max_length=64,
        description="prefix dims, ascending; the last is the vector length (default for a "
                    "text encoder: its own nesting)")
    encoder: Optional[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        None, description='null (vectors only) or the name of one of the server\'s encoders: '
                          '"minilm" (the bundled all-MiniLM-L6-v2) and those it was started '
                          'with (nestemb serve --encoders NAME=PATH); never a path')


class Point(Strict):
    id: PointId
    vector: Optional[list[FiniteFloat]] = None
    text: Optional[Utf8Str] = None
    payload: Optional[dict[str, Any]] = Field(None, description="any JSON object (finite "
                                                                "numbers), at most the server's "
                                                                "max_payload_bytes")
    model: ModelName = Field(None, description=MODEL_DOC)


class UpsertRequest(Strict):
    points: list[Point]


class DeleteRequest(Strict):
    ids: list[PointId]


class SearchRequest(Strict):
    vector: Optional[list[FiniteFloat]] = None
    text: Optional[Utf8Str] = None
    k: json_int(1, 2**31 - 1) = Field(10, description="hits to return (1 ... the server's "
                                                     "max_k)")
    dims: Optional[list[json_int(1, 65536)]] = Field(
        None, max_length=64, description="stage prefix dims, ascending, each in the nesting")
    shortlist: Optional[list[json_int(1, 2**31 - 1)]] = Field(
        None, max_length=63, description="candidates kept per stage but the last (with dims), "
                                         "non-increasing, each >= k")
    recall: Optional[FiniteFloat] = Field(None, gt=0, le=1,
                                          description="recall@10 target in (0, 1]")
    filter: Optional[dict[Utf8Str, Scalar]] = Field(None, description="payload fields that "
                                                                      "must equal these values")
    model: ModelName = Field(None, description=MODEL_DOC)
    width: Optional[FiniteFloat] = Field(
        None, gt=0, le=1, description="with text: the feed-forward width to encode it at, one of "
                                      "the encoder's trained widths (e.g. 0.25); its vectors "
                                      "share the full model's space")
    latency_ms: Optional[FiniteFloat] = Field(
        None, gt=0, description="with text, on a collection whose width table was measured "
                                "(POST /collections/{name}/widths): the latency budget of "
                                "encoding plus search; the planner picks width, dims and "
                                "shortlist (with recall: the fastest plan meeting it)")


class WidthTuneRequest(Strict):
    queries: list[Utf8Str] = Field(..., min_length=1, max_length=1000,
                                   description="held-out query texts, as users send them")
    k: json_int(1, 1000) = Field(10, description="recall@k is measured")
    timing_queries: json_int(1, 1000) = Field(50, description="queries timed one at a time")
    repeat: json_int(1, 10) = Field(3, description="timing passes (the best counts)")
    max_seconds: Optional[Annotated[float, Field(gt=0, le=3600, strict=True,
                                                 allow_inf_nan=False)]] = Field(
        30.0, description="stop timing further plans after this long (seconds)")


class BatchSearchRequest(Strict):
    searches: list[SearchRequest]


class Hit(BaseModel):
    id: PointId
    score: float
    payload: dict[str, Any]


class PlanOut(BaseModel):
    dims: list[int]
    shortlist: list[int]
    source: str
    expected_recall: Optional[float]
    width: Optional[float] = Field(None, exclude_if=lambda v: v is None,
                                   description="the encoder width the query text ran at "
                                               "(when the request or the planner named one)")
    expected_ms: Optional[float] = Field(None, exclude_if=lambda v: v is None,
                                         description="the width table's latency of the plan "
                                                     "(encoding + search)")


class SearchResponse(BaseModel):
    hits: list[Hit]
    plan: PlanOut
    timing: dict[str, Any]
    migration: Optional[dict[str, Any]] = Field(
        None, description="during a migration: its state, the space that answered ('old' or "
                          "'new'), the backfilled share and the measured map quality")


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse]


class CollectionInfo(BaseModel):
    name: str
    count: int
    dim: int
    nesting: list[int]
    encoder: Optional[str]
    model_id: Optional[str]
    model_version: Optional[str]
    index: dict[str, Any]
    migration: Optional[dict[str, Any]] = None


class PointOut(BaseModel):
    id: PointId
    vector: list[float]
    payload: dict[str, Any]


class CollectionSummary(BaseModel):
    name: str
    count: int


class CollectionList(BaseModel):
    collections: list[CollectionSummary]


class Dropped(BaseModel):
    dropped: str


class Upserted(BaseModel):
    upserted: int


class Deleted(BaseModel):
    deleted: int


class Health(BaseModel):
    status: str
    version: Optional[str] = Field(None, description="with a valid key (or without --api-keys)")
    collections: Optional[int] = Field(None, description="collections the key may read (with a "
                                                         "valid key, or without --api-keys)")


class MigrationStart(Strict):
    encoder: Optional[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        None, description="the new model: one of the server's encoders (it re-encodes the "
                          "stored texts); or null, and give nesting: the client posts vectors")
    nesting: Optional[list[json_int(1, 65536)]] = Field(
        None, min_length=1, max_length=64, description="with client vectors: the new model's prefix dims")
    model_id: Optional[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        None, description="with client vectors: the new model's id (how requests name it)")
    text_field: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        "text", description="payload field holding each point's text (re-encoded by encoder)")
    sample_size: json_int(10, 1_000_000) = Field(2000, description="points the maps are "
                                                                   "fitted on")
    min_quality: Annotated[float, Field(ge=0, le=1, strict=True, allow_inf_nan=False)] = Field(
        0.5, description="the quality gate: held-out neighbour agreement@10 of the map")
    force: StrictBool = Field(False, description="map even if the gate refuses")
    kind: Literal[FIT_KINDS] = Field("auto", description="the maps' kind (nestemb.maps."  # type: ignore[valid-type]
                                                         "fit_adapter); auto: the best "
                                                         "held-out of orthogonal, affine, "
                                                         "cluster")
    max_p99_ms: Optional[Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)]] = (
        Field(None, description="search p99 bound of the backfill (default 3x the p99 when it "
                                "starts)"))
    batch: json_int(1, 1024) = Field(64, description="texts re-encoded per step")


class MigrationFinish(Strict):
    force: StrictBool = Field(False, description="finish before the backfill is complete "
                                                 "(mapped vectors become the collection's)")


class NewVector(Strict):
    id: PointId
    vector: list[FiniteFloat]


class VectorsRequest(Strict):
    points: list[NewVector]


class MigrationStatus(BaseModel):
    model_config = ConfigDict(extra="allow")
    state: str
    paused: bool
    complete: bool
    backfilled: float


class MigrationEnded(BaseModel):
    name: str
    ended: str
    collection: CollectionInfo


class Posted(BaseModel):
    posted: int


class Queue(BaseModel):
    ids: list[PointId]


ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 413, 415, 422)}


# ----------------------------------------------------------------------------- middleware
def _route_scope(method: str, path: str) -> tuple[bool, str | None, str]:
    """(needs a key, collection or None, "read"/"write"/"admin") for a request line: creating
    and dropping a collection (``PUT``/``DELETE /collections/{name}``) is ``admin``, writing
    its points ``write``."""
    if path in ("/", "/healthz", "/openapi.json") or path.startswith("/static/"):
        return False, None, "read"
    m = re.match(r"^/collections/([^/]*)(/.*)?$", path)
    if not m:
        return True, None, "read"
    name, rest = m.group(1), m.group(2) or ""
    if not rest and method in ("PUT", "DELETE", "PATCH"):
        return True, name, "admin"
    if rest.startswith("/migration") and method != "GET" and rest != "/migration/vectors":
        return True, name, "admin"  # start, pause, resume, finish, cancel
    write = method in ("PUT", "DELETE", "PATCH") or (method == "POST" and not
                                                     rest.startswith("/search"))
    return True, name, "write" if write else "read"


_DENIED = {"read": "read", "write": "write the points of",
           "admin": "create, drop or migrate"}


class GuardMiddleware:
    """Authorization and the body-size limit, before the application reads anything."""

    def __init__(self, app, keys: list[ApiKey] | None, limits: Limits):
        self.app, self.keys, self.limits = app, keys, limits

    async def _reply(self, send, status: int, message: str, field: str | None = None) -> None:
        body = json.dumps(error_body(status, message, field)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        needs_key, collection, access = _route_scope(scope["method"], scope["path"])
        if self.keys is not None:
            given = headers.get("x-api-key")
            auth = headers.get("authorization", "")
            if not given and auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            key = find_key(self.keys, given)
            if needs_key and key is None:
                return await self._reply(send, 401, "missing or unknown API key (send "
                                         "'Authorization: Bearer KEY' or 'X-API-Key: KEY')",
                                         "authorization")
            if needs_key and not key.allows(collection, access):
                return await self._reply(send, 403, f"this API key may not {_DENIED[access]} "
                                         f"collection {collection!r}", "authorization")
            if key is not None:  # public routes too: /healthz tells more to a known key
                scope.setdefault("state", {})["api_key"] = key
        limit = self.limits.max_body_bytes
        length = headers.get("content-length")
        if length is not None:
            if not re.fullmatch(r"[0-9]{1,19}", length.strip()):
                return await self._reply(send, 400, "invalid Content-Length", "content-length")
            if int(length) > limit:
                return await self._reply(send, 413, f"request body of {length} bytes exceeds "
                                         f"the limit of {limit} bytes", "body")
        seen = 0
        utf8 = codecs.getincrementaldecoder("utf-8")()

        async def counted_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                chunk = msg.get("body", b"")
                start = seen - len(utf8.getstate()[0])  # offset of what the decoder holds
                seen += len(chunk)
                if seen > limit:
                    raise BodyTooLarge(limit)
                try:  # JSON bodies are UTF-8 (RFC 8259)
                    utf8.decode(chunk, final=not msg.get("more_body", False))
                except UnicodeDecodeError as e:
                    raise BodyNotUtf8(start + e.start) from None
            return msg

        try:
            await self.app(scope, counted_receive, send)
        except BodyRefused as e:  # raised where no handler turned it into the JSON answer
            await self._reply(send, e.status_code, e.detail, "body")


class AccessLogMiddleware:
    """One JSON log line per request (method, path, status, ms), refused ones included. Pure
    ASGI: Starlette's ``BaseHTTPMiddleware`` would wrap every request in a task and a stream."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            return await self.app(scope, receive, send)
        t, status = time.perf_counter(), 500  # 500 unless the app answered

        async def logged_send(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            log.info(json.dumps({"event": "request", "method": scope["method"],
                                 "path": scope["path"], "status": status,
                                 "ms": round((time.perf_counter() - t) * 1000, 2)}))


class BodyRefused(StarletteHTTPException):
    """A body refused while it is read. An HTTPException, so that FastAPI's body reader
    passes it through (it turns other exceptions into a 400) to the JSON error handler."""

    field = "body"


class BodyTooLarge(BodyRefused):
    """A streamed (chunked) body grew past the limit (413)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class BodyNotUtf8(BodyRefused):
    """A body that is not UTF-8 (400): JSON is exchanged as UTF-8."""

    def __init__(self, offset: int):
        super().__init__(400, f"request body is not valid UTF-8 (first bad byte at offset "
                              f"{offset}); send JSON encoded as UTF-8")


def _parser_refusal(recent: bytes) -> tuple[str, str | None]:
    r"""The message and header field of a 400 for a request uvicorn's HTTP parser refused,
    from the last bytes received on the connection: a ``Content-Length`` that is not a byte
    count is named; anything else is a malformed request.

    Example:
        >>> _parser_refusal(b"PUT /x HTTP/1.1\r\nContent-Length: abc\r\n\r\n")
        ("invalid Content-Length header 'abc': give the body's size in bytes", 'content-length')
        >>> _parser_refusal(b"GET / HTTP/9\r\n\r\n")[1] is None
        True
    """
    values = [v.strip().decode("latin-1") for v in
              re.findall(rb"(?im)^content-length[ \t]*:(.*?)\r?$", recent)]
    bad = [v for v in values if not re.fullmatch(r"[0-9]{1,19}", v)]
    if bad:
        return (f"invalid Content-Length header {bad[-1]!r}: give the body's size in bytes",
                "content-length")
    if len(set(values)) > 1:
        return f"conflicting Content-Length headers {values}", "content-length"
    return "malformed HTTP request (refused by the server's HTTP parser)", None


def json_error_protocol() -> type:
    """uvicorn's HTTP protocol class, answering the requests its parser refuses (e.g.
    ``Content-Length: abc``, never passed to the application) with the service's JSON error
    (400) instead of uvicorn's plain text; ``nestemb serve`` runs uvicorn with it.

    Example:
        >>> json_error_protocol().__name__
        'JsonErrorProtocol'
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class JsonErrorProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _recent = b""

        def data_received(self, data: bytes) -> None:
            self._recent = (self._recent + data)[-65536:]
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            message, field = _parser_refusal(self._recent)
            body = json.dumps(error_body(400, message, field)).encode()
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                                 b"content-length: " + str(len(body)).encode() +
                                 b"\r\nconnection: close\r\n\r\n" + body)
            self.transport.close()

    return JsonErrorProtocol


# ----------------------------------------------------------------------------- service
SNAPSHOT_WRITES = 10_000
"""Writes to a collection after which its index is snapshotted (see :meth:`Service.snapshot`)."""
SNAPSHOT_SECONDS = 60.0
"""Seconds after which a collection with any new write is snapshotted."""


def _memory(live: Any) -> LiveCollection | None:
    """The in-memory collection of an embedded (SQLite) collection; None for a backend's."""
    mem = getattr(live, "live", None)
    return mem if isinstance(mem, LiveCollection) else None


class Service:
    """State behind the routes: the store, live collections, encoders, background tuning."""

    def __init__(self, store: Store, limits: Limits, tune_interval: float = 2.0,
                 backend: Backend | None = None, encoders: Mapping[str, str] | None = None):
        self.store, self.limits, self.backend = store, limits, backend
        self.encoders: dict[str, str] = dict(encoders or BUNDLED_ENCODERS)
        """The allow-list: encoder name -> what is loaded (fixed at start)."""
        self.collections: dict[str, PointStore] = {}
        self.configs: dict[str, dict] = {}
        self._encoders: dict[str, Any] = {}
        self._encoder_lock = threading.Lock()
        self._admin = threading.Lock()  # create / drop
        self._stop = threading.Event()
        self._tune_interval = tune_interval
        self._snapshot_at: dict[str, float] = {}
        self.migrations: dict[str, Migration] = {}
        self._latency: collections.deque = collections.deque(maxlen=4096)
        """(monotonic time, ms) of recent searches: the backfill's throttle reads their p99."""
        configs = store.collections()
        if backend is not None:
            self._adopt(configs)
        try:
            for name, cfg in configs.items():
                t = time.perf_counter()
                how = "backend"
                if backend is None:
                    live: PointStore = SqlitePoints(store, name, cfg["nesting"])
                    how = _memory(live).attach(store).restore()  # snapshot + newer writes
                else:
                    live = backend.open(name, cfg)
                self.collections[name], self.configs[name] = live, cfg
                log.info(json.dumps({"event": "collection_loaded", "name": name,
                                     "count": len(live), "from": how,
                                     "seconds": round(time.perf_counter() - t, 3)}))
                if how == "rebuild":  # the next start reads the snapshot instead
                    self.snapshot(name, live, force=True)
                if cfg.get("migration") and backend is None:
                    self._open_migration(name, cfg)
            self._drop_orphans()
        except BaseException:
            self.close_collections()
            raise
        self._tuner = threading.Thread(target=self._tune_loop, name="nestemb-tuner", daemon=True)

    # ----------------------------------------------------------------- migrations
    def _open_migration(self, name: str, cfg: dict) -> Migration:
        """The :class:`Migration` of collection ``name`` (its new space read back from the
        store: snapshot plus newer writes); its worker starts with the service."""
        shadow_cfg = self.store.shadow_config(name)
        assert shadow_cfg is not None, "a migration's new space is created with its record"
        shadow = SqlitePoints(self.store, shadow_name(name), shadow_cfg["nesting"])
        _memory(shadow).attach(self.store).restore()
        main = self.collections[name]
        assert isinstance(main, SqlitePoints)
        target = cfg["migration"]["target"]["encoder"]
        mig = Migration(name, self.store, main, shadow, cfg,
                        save_config=lambda c: self._save_config(name, c),
                        encode_new=None if target is None else
                        (lambda texts: self._encode_with(target, texts)),
                        search_p99=self.search_p99)
        self.migrations[name] = mig
        return mig

    def _save_config(self, name: str, cfg: dict) -> None:
        self.store.update_config(name, cfg)
        self.configs[name] = cfg

    def _encode_with(self, encoder: str, texts: list[str], width: float | None = None,
                     field: str = "width") -> np.ndarray:
        return encode_at(self.encoder(encoder), texts, width, field)

    def _drop_orphans(self) -> None:
        """Remove the maps and snapshots of migrations that ended (a crash after the commit
        of a finish or cancel can leave them)."""
        folder = self.store.data_dir / MIGRATIONS
        for old in folder.glob("*") if folder.is_dir() else ():
            if old.name not in self.migrations:
                shutil.rmtree(old, ignore_errors=True)
        snaps = self.store.data_dir / "snapshots"
        for old in snaps.glob("*#new") if snaps.is_dir() else ():
            if old.name[: -len("#new")] not in self.migrations:
                shutil.rmtree(old, ignore_errors=True)

    def record_search(self, ms: float) -> None:
        self._latency.append((time.monotonic(), ms))

    def search_p99(self, window: float = 10.0) -> float | None:
        """The p99 of the searches of the last ``window`` seconds (None under 20 of them)."""
        since = time.monotonic() - window
        recent = [ms for t, ms in list(self._latency) if t >= since]
        return float(np.percentile(recent, 99)) if len(recent) >= 20 else None

    def _adopt(self, configs: dict[str, dict]) -> None:
        """Register the nestemb collections the backend holds that the service does not know
        yet (e.g. written by ``nestemb backend export``); other collections are left alone."""
        assert self.backend is not None
        for name in self.backend.names():
            if name in configs or not NAME_RE.fullmatch(name):
                continue
            try:
                man = self.backend.manifest(name)
            except NestembError as e:
                log.info(json.dumps({"event": "backend_collection_skipped", "name": name,
                                     "reason": str(e)}))
                continue
            cfg = {"encoder": man.extra.get("encoder"),
                   "model_id": None if man.model_id == "unknown" else man.model_id,
                   "model_version": None if man.model_version == "unknown"
                   else man.model_version,
                   "created": time.time(), "nesting": list(man.nesting)}
            self.store.create_collection(name, cfg)
            configs[name] = cfg

    def _spaces(self) -> list[tuple[str, PointStore]]:
        """Every collection, and the new space of every migration."""
        return [*self.collections.items(),
                *((m.shadow.name, m.shadow) for m in list(self.migrations.values()))]

    def close_collections(self) -> None:
        for mig in self.migrations.values():
            mig.stop()
        self.migrations.clear()
        for live in self.collections.values():
            live.close()
        self.collections.clear()
        if self.backend is not None:
            self.backend.close()

    def start(self) -> None:
        """Start the background tuner (once: a second lifespan of the app does not fail)."""
        if self._tuner.ident is None:
            self._tuner.start()
            for mig in self.migrations.values():
                mig.start()

    def stop(self) -> None:
        self._stop.set()
        for mig in self.migrations.values():
            mig.stop()
        if self._tuner.is_alive():
            self._tuner.join(timeout=10)
        for name, live in self._spaces():
            self.snapshot(name, live, force=True)
        self.close_collections()
        self.store.close()

    def snapshot(self, name: str, live: PointStore, force: bool = False) -> None:
        """Snapshot an embedded collection's index after ``SNAPSHOT_WRITES`` writes, or after
        ``SNAPSHOT_SECONDS`` with any write (``force``: any write), so a restart replays only
        the newer writes from SQLite."""
        mem = _memory(live)
        if mem is None or mem.store is None or not mem.writes:
            return
        last = self._snapshot_at.get(name, 0.0)
        if force or mem.writes >= SNAPSHOT_WRITES or time.time() - last >= SNAPSHOT_SECONDS:
            try:
                t = time.perf_counter()
                path = mem.snapshot()
                self._snapshot_at[name] = time.time()
                log.info(json.dumps({"event": "snapshot", "name": name, "count": len(mem),
                                     "path": str(path),
                                     "seconds": round(time.perf_counter() - t, 3)}))
            except Exception:  # noqa: BLE001 - SQLite still holds every write
                log.exception("snapshot of %s failed", name)

    def _tune_loop(self) -> None:
        """Re-tune a collection whose size changed by > 20 % since its last tuning; snapshot
        collections with new writes (:meth:`snapshot`)."""
        while not self._stop.wait(self._tune_interval):
            for name, live in self._spaces():
                if self._stop.is_set():
                    break
                self.snapshot(name, live)
                if not getattr(live, "tunable", False):
                    continue  # a backend collection: dims + shortlist plans only
                n, t = len(live), live.tuning
                if n >= 100 and (t is None or abs(n - t.count) > 0.2 * t.count):
                    try:
                        res = live.tune()
                        log.info(json.dumps({"event": "tuned", "name": name, "count": res.count,
                                             "seconds": res.seconds}))
                    except Exception:  # noqa: BLE001 - a dropped collection mid-tuning
                        log.exception("tuning %s failed", name)

    def get(self, name: str) -> PointStore:
        check_name(name)
        live = self.collections.get(name)
        if live is None:
            raise ApiError(404, f"collection {name!r} does not exist", "name")
        return live

    def encoder_name(self, spec: str) -> str | None:
        """The allow-listed name of an encoder a collection's config records: the name itself,
        or (a collection created by an older version, which recorded the path) the name of
        that path; None if this server does not offer it."""
        if spec in self.encoders:
            return spec
        return next((n for n, where in self.encoders.items() if where == spec), None)

    def encoder(self, name: str):
        """The loaded encoder of an allow-listed name (loaded once)."""
        with self._encoder_lock:
            if name not in self._encoders:
                from nestemb.text.encoder import load_text_model

                self._encoders[name] = load_text_model(self.encoders[name], device="cpu")
            return self._encoders[name]

    def config(self, name: str) -> dict:
        """The configuration of a live collection (404 once it is dropped)."""
        cfg = self.configs.get(name)
        if cfg is None:
            raise ApiError(404, f"collection {name!r} does not exist", "name")
        return cfg

    def embed(self, name: str, texts: list[str], fields: list[str], width: float | None = None,
              width_field: str = "width") -> np.ndarray:
        """Embed ``texts`` (``fields[i]`` names text ``i`` in errors) with the collection's
        encoder, after checking every text; at feed-forward ``width`` (one of the encoder's
        trained widths, :func:`encode_at`; ``width_field`` names it in errors)."""
        enc = self.collection_encoder(name, fields[0])
        self.check_texts(texts, fields)
        return encode_at(enc, texts, width, width_field)

    def check_texts(self, texts: list[str], fields: list[str]) -> None:
        """Refuse an empty or over-long text, naming its field."""
        for t, field in zip(texts, fields):
            if not t.strip():
                raise ApiError(422, "text must not be empty", field)
            if len(t) > self.limits.max_text_chars:
                raise ApiError(413, f"text of {len(t)} characters exceeds the limit of "
                               f"{self.limits.max_text_chars}", field)

    def collection_encoder(self, name: str, field: str) -> Any:
        """The loaded encoder of collection ``name``, with the weights its vectors were made
        with; 422 naming ``field`` for a collection without one, 409 naming ``encoder`` for an
        encoder this server no longer has or has with other weights."""
        cfg = self.config(name)
        spec = cfg.get("encoder")
        if spec is None:
            raise ApiError(422, f"collection {name!r} has no encoder: send vectors", field)
        known = self.encoder_name(spec)
        if known is None:
            as_name = spec if NAME_RE.fullmatch(spec) else "NAME"
            raise ApiError(409, f"the encoder {spec!r} of collection {name!r} is not one of this "
                           f"server's encoders ({', '.join(sorted(self.encoders))}): start "
                           f"nestemb serve with --encoders {as_name}=PATH", "encoder")
        try:
            enc = self.encoder(known)
        except (NestembError, OSError, ValueError) as e:  # the model folder went away
            raise ApiError(409, f"the encoder {spec!r} of collection {name!r} cannot be "
                           f"loaded: {e}", "encoder") from None
        have, want = enc.manifest.model_version, cfg.get("model_version")
        if want is not None and have != want:
            raise ApiError(409, f"the encoder {spec!r} now has weights version {have}, "
                           f"collection {name!r} was built with {want}: new texts would not "
                           "be comparable with its stored vectors", "encoder")
        return enc


def encode_at(enc: Any, texts: list[str], width: float | None, field: str = "width") -> np.ndarray:
    """``enc.encode(texts, width=width)`` as float32, for a request: a ``width`` must be one of
    the encoder's trained widths (an untrained slice of a plain model would not answer from the
    collection's space), else 422 naming ``field``."""
    if width is not None:
        if enc.widths is None:
            raise ApiError(422, f"{field}: the encoder was trained without nested widths; "
                           "leave width out", field)
        try:
            from nestemb.text.ffn import check_width

            check_width(width, enc.widths)
        except NestembError as e:
            raise ApiError(422, e.render(field), field) from None
    return np.asarray(enc.encode(texts, width=width), dtype=np.float32)


def check_encoders(encoders: Mapping[str, str | Path] | None) -> dict[str, str]:
    """The encoder allow-list of a server: the bundled ones plus ``encoders`` (name -> saved
    text model folder, each checked now); requests name encoders, never paths.

    Example:
        >>> check_encoders(None)
        {'minilm': 'minilm'}
        >>> check_encoders({"../x": "/tmp"})
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: encoders: encoder name '../x' must be 1-64 letters, digits, '_' or '-'
    """
    out = dict(BUNDLED_ENCODERS)
    for name, where in (encoders or {}).items():
        if not NAME_RE.fullmatch(str(name)):
            raise NestembError(f"encoder name {name!r} must be 1-64 letters, digits, '_' or '-'",
                               param="encoders")
        if str(where) in BUNDLED_ENCODERS:
            out[name] = str(where)
            continue
        path = Path(where).expanduser()
        if not path.is_dir():
            raise NestembError(f"encoder {name!r}: no saved text model folder at {path}",
                               param="encoders")
        out[name] = str(path.resolve())
    return out


def check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise ApiError(422, f"invalid collection name {name!r}: use 1-64 letters, digits, '_' "
                       "or '-', starting with a letter or digit", "name")


def _vectors(rows: list[list[float]], dim: int, fields: list[str],
             max_abs: float = 3e38) -> np.ndarray:
    """Rows as a float32 matrix, each of length ``dim`` with values within ``max_abs``
    (``fields[i]`` names row ``i`` in errors)."""
    for v, field in zip(rows, fields):
        if len(v) != dim:
            raise ApiError(422, f"vector has length {len(v)}, the collection's dimension is "
                           f"{dim}", field)
    X = np.asarray(rows, dtype=np.float64).reshape(len(rows), dim)
    bad = ~(np.abs(X) <= max_abs).all(axis=1)
    if bad.any():
        raise ApiError(422, f"vector values must be finite and within +-{max_abs:g}",
                       fields[int(np.flatnonzero(bad)[0])])
    return X.astype(np.float32)


def _check_batch(items: list, field: str, limit: int) -> None:
    """A request's list: not empty (422) and at most ``limit`` long (413), naming ``field``."""
    if not items:
        raise ApiError(422, f"{field} must not be empty", field)
    if len(items) > limit:
        raise ApiError(413, f"batch of {len(items)} {field} exceeds the limit of {limit}", field)


def _check_unique_ids(ids: list, field: str) -> None:
    """Refuse a batch naming one id twice (``5`` and ``"5"`` differ), at its second place."""
    keys = [(type(i), i) for i in ids]
    if len(set(keys)) != len(keys):
        j = next(j for j, key in enumerate(keys) if key in keys[:j])
        raise ApiError(422, f"duplicate id {ids[j]!r} in the batch", field.format(j))


def _check_direction(v: np.ndarray, first: int, field: str) -> None:
    """A stored vector needs a first prefix of norm >= ``MIN_PREFIX_NORM``."""
    if np.linalg.norm(v[:first].astype(np.float64)) < MIN_PREFIX_NORM:
        raise ApiError(422, f"vector's first {first} dims are all zero or nearly (norm < "
                       f"{MIN_PREFIX_NORM:g}): no direction to compare", field)


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d + 1)
            if deepest > MAX_PAYLOAD_DEPTH:
                break
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _payload_json(payload: dict, field: str, limit: int) -> None:
    """Check that a payload is storable JSON that can be answered back: finite numbers (the
    parser reads ``NaN`` and ``1e999``), valid Unicode, at most ``MAX_PAYLOAD_DEPTH`` levels
    deep, and at most ``limit`` bytes."""
    if _depth(payload) > MAX_PAYLOAD_DEPTH:
        raise ApiError(422, f"payload is nested deeper than {MAX_PAYLOAD_DEPTH} levels", field)
    try:
        text = json.dumps(payload, allow_nan=False, ensure_ascii=False)
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # (a ValueError: first)
        raise ApiError(422, "payload holds a lone UTF-16 surrogate (not valid Unicode)",
                       field) from None
    except ValueError:  # NaN / Infinity, or an integer too long to write back
        raise ApiError(422, "payload numbers must be finite (no NaN or Infinity)", field) from None
    if size > limit:
        raise ApiError(413, f"payload of {size} bytes exceeds the limit of {limit}", field)


def _error_field(loc: tuple, body: Any, missing: bool) -> str:
    """The request field a validation error is about, as ``a.0.b``: ``loc`` followed through
    the body as sent, leaving out pydantic's union tags (``points.0.id.int`` -> ``points.0.id``)."""
    if loc[:1] in (("query",), ("path",)) and len(loc) > 1:  # e.g. ?limit=ten
        return str(loc[1])
    parts: list[str] = []
    cur = body
    items = list(loc[1:] if loc[:1] == ("body",) else loc)
    for i, x in enumerate(items):
        if isinstance(cur, dict) and isinstance(x, str) and (
                x in cur or (missing and i == len(items) - 1)):
            parts.append(x)
            cur = cur.get(x)
        elif isinstance(cur, list) and isinstance(x, int) and 0 <= x < len(cur):
            parts.append(str(x))
            cur = cur[x]
        else:
            break
    return ".".join(parts) or "body"


def create_app(data_dir: str | Path, *, api_keys: list[ApiKey] | None = None,
               durability: str = "full", limits: Limits | None = None,
               tune_interval: float = 2.0, backend: Backend | None = None,
               encoders: Mapping[str, str | Path] | None = None) -> FastAPI:
    """The service's ASGI application over ``data_dir`` (created if missing). ``encoders``
    (name -> saved text model folder) adds to the bundled ``minilm`` the encoders a
    collection may name; nothing else is ever loaded.

    Example:
        >>> import tempfile
        >>> from fastapi.testclient import TestClient
        >>> with TestClient(create_app(tempfile.mkdtemp())) as client:
        ...     client.put("/collections/docs", json={"nesting": [2, 4]}).status_code
        ...     _ = client.put("/collections/docs/points",
        ...                    json={"points": [{"id": 1, "vector": [1, 0, 0, 0]}]})
        ...     client.post("/collections/docs/search",
        ...                 json={"vector": [1, 0, 0, 0], "k": 1}).json()["hits"][0]["id"]
        200
        1
    """
    limits = limits or Limits()
    allowed = check_encoders(encoders)
    store = Store(data_dir, durability)
    try:
        svc = Service(store, limits, tune_interval, backend, allowed)
    except BaseException:
        store.close()
        raise

    @asynccontextmanager
    async def lifespan(app):
        svc.start()
        log.info(json.dumps({"event": "started", "data_dir": str(data_dir),
                             "durability": durability, "collections": len(svc.collections)}))
        yield
        svc.stop()
        log.info(json.dumps({"event": "stopped"}))

    # no /docs or /redoc: FastAPI's pages load their scripts from a CDN (blank offline)
    app = FastAPI(title="nestemb", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description="Matryoshka collections: one stored vector per point, searched "
                              "as a funnel over its prefixes.")
    app.state.service = svc

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.status, exc.message, exc.field), exc.status)

    @app.exception_handler(NestembError)
    async def _nestemb_error(request: Request, exc: NestembError):
        if isinstance(exc, Mismatch):
            return JSONResponse(error_body(409, str(exc), "name"), 409)
        if isinstance(exc, Conflict):  # a migration's state refuses the request
            field = json_field(exc)
            return JSONResponse(error_body(409, exc.render(field), field), 409)
        if isinstance(exc, MissingCollection):  # dropped meanwhile
            return JSONResponse(error_body(404, str(exc), "name"), 404)
        field = json_field(exc)
        return JSONResponse(error_body(422, exc.render(field), field), 422)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors() or [{"loc": (), "msg": "invalid request", "type": ""}]
        if errors[0].get("type") == "json_invalid":
            return JSONResponse(error_body(400, "malformed JSON body", "body"), 400)
        if isinstance(exc.body, (bytes, bytearray)):  # a body FastAPI did not read as JSON
            return JSONResponse(error_body(415, "send the body as JSON, with the header "
                                           "'Content-Type: application/json'", "content-type"),
                                415)

        def field_of(err: dict) -> str:
            return _error_field(tuple(err.get("loc", ())), exc.body, err.get("type") == "missing")

        field = field_of(errors[0])
        # a union (an id: integer or string) fails once per member: give every reason
        msgs = list(dict.fromkeys(str(e.get("msg")) for e in errors if field_of(e) == field))
        return JSONResponse(error_body(422, f"{field}: {'; or '.join(msgs)}", field), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        field = getattr(exc, "field", None) or {400: "body", 404: "path", 405: "method",
                                                 413: "body"}.get(exc.status_code)
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = "malformed JSON body (nested too deeply, or a number too long?)"
        return JSONResponse(error_body(exc.status_code, message, field),
                            exc.status_code, headers=getattr(exc, "headers", None))

    app.add_middleware(GuardMiddleware, keys=api_keys, limits=limits)
    app.add_middleware(AccessLogMiddleware)  # added last: outermost, logs refused requests too

    # -------------------------------------------------------------------- routes
    @app.get("/healthz", response_model_exclude_none=True)
    def healthz(request: Request) -> Health:
        """``{"status": "ok"}``; with a valid key (or a server without keys) also the version
        and how many collections the key may read."""
        key: ApiKey | None = request.scope.get("state", {}).get("api_key")
        if api_keys is not None and key is None:
            return Health(status="ok")
        names = list(svc.collections)
        return Health(status="ok", version=__version__,
                      collections=sum(1 for n in names if key is None or key.allows(n, "read")))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("nestemb.service").joinpath("page.html").read_text("utf-8")

    @app.get("/collections", responses=ERRORS)
    def list_collections(request: Request) -> CollectionList:
        key: ApiKey | None = request.scope.get("state", {}).get("api_key")
        cols = list(svc.collections.items())
        return CollectionList(collections=[
            CollectionSummary(name=n, count=len(live)) for n, live in sorted(cols)
            if key is None or key.allows(n, "read")])

    def info(name: str) -> CollectionInfo:
        live = svc.get(name)
        cfg = svc.config(name)
        return CollectionInfo(
            name=name, count=len(live), dim=live.dim, nesting=list(live.nesting),
            encoder=cfg.get("encoder"), model_id=cfg.get("model_id"),
            model_version=cfg.get("model_version"), index=live.index_info(),
            migration=mig.answer("old", []) if (mig := svc.migrations.get(name)) else None)

    @app.put("/collections/{name}", responses=ERRORS)
    def create_collection(name: str, body: CollectionCreate) -> CollectionInfo:
        check_name(name)
        with svc._admin:
            if name in svc.collections:
                raise ApiError(409, f"collection {name!r} already exists", "name")
            cfg: dict[str, Any] = {"encoder": body.encoder, "model_id": None,
                                   "model_version": None, "created": time.time()}
            if body.encoder is not None:
                if body.encoder not in svc.encoders:  # the same answer, path or name
                    raise ApiError(422, "encoder must be one of this server's encoders: "
                                   f"{', '.join(sorted(svc.encoders))} (a name, not a path; "
                                   "nestemb serve --encoders NAME=PATH adds one)", "encoder")
                try:
                    enc = svc.encoder(body.encoder)
                except (NestembError, OSError, ValueError) as e:  # the folder went away
                    raise ApiError(422, f"encoder {body.encoder!r} cannot be loaded: {e}",
                                   "encoder") from None
                man = enc.manifest
                dim = enc.dim
                nesting = body.nesting or list(man.nesting or default_nesting(dim, 8))
                cfg.update(model_id=man.model_id, model_version=man.model_version)
            else:
                if not body.nesting:
                    raise ApiError(422, "nesting is required for a collection without an "
                                   "encoder", "nesting")
                nesting = body.nesting
                dim = nesting[-1]
            if dim > limits.max_dim:
                raise ApiError(422, f"dimension {dim} exceeds the limit of {limits.max_dim}",
                               "nesting")
            try:
                nesting = list(validate_nesting(nesting, full_dim=dim))
            except NestembError as e:
                raise ApiError(422, e.render("nesting") if e.param else f"nesting: {e}",
                               "nesting") from None
            cfg["nesting"] = nesting
            live: PointStore
            if svc.backend is None:
                svc.store.create_collection(name, cfg)
                live = SqlitePoints(svc.store, name, nesting)
                _memory(live).attach(svc.store)
            else:  # the engine first: a mismatch with what it holds leaves no registration
                live = svc.backend.create(name, cfg)
                svc.store.create_collection(name, cfg)
            svc.configs[name] = cfg
            svc.collections[name] = live
        return info(name)

    @app.get("/collections/{name}", responses=ERRORS)
    def describe_collection(name: str) -> CollectionInfo:
        return info(name)

    @app.delete("/collections/{name}", responses=ERRORS)
    def drop_collection(name: str) -> Dropped:
        with svc._admin:
            live = svc.get(name)
            mig = svc.migrations.pop(name, None)
            if mig is not None:
                mig.stop()
            with live.write_lock:  # no write of this collection is between commit and memory
                if mig is not None:
                    mig.drop_maps()
                if svc.backend is not None:
                    live.close()
                    svc.backend.drop(name)
                svc.store.drop_collection(name)
                svc.collections.pop(name, None)
                svc.configs.pop(name, None)
        return Dropped(dropped=name)

    @app.put("/collections/{name}/points", responses=ERRORS)
    def upsert_points(name: str, body: UpsertRequest) -> Upserted:
        live = svc.get(name)
        pts = body.points
        _check_batch(pts, "points", limits.max_batch)
        seen: set = set()
        for i, p in enumerate(pts):
            if (p.vector is None) == (p.text is None):
                raise ApiError(422, "give exactly one of vector and text", f"points.{i}")
            if (type(p.id), p.id) in seen:
                raise ApiError(422, f"duplicate id {p.id!r} in the batch", f"points.{i}.id")
            seen.add((type(p.id), p.id))
            _payload_json(p.payload or {}, f"points.{i}.payload", limits.max_payload_bytes)
        mig = svc.migrations.get(name)
        spaces = [_space(name, mig, p.model, f"points.{i}.model") for i, p in enumerate(pts)]
        dims = {"old": live.dim, "new": mig.shadow.dim if mig else live.dim}
        firsts = {"old": live.nesting[0], "new": mig.shadow.nesting[0] if mig else 0}
        vecs: list[np.ndarray] = [np.zeros(dims[s], np.float32) for s in spaces]
        for space in ("old", "new"):
            rows = [i for i, p in enumerate(pts) if p.vector is not None and spaces[i] == space]
            if rows:
                X = _vectors([pts[i].vector for i in rows], dims[space],
                             [f"points.{i}.vector" for i in rows], MAX_ABS_STORED)
                for i, x in zip(rows, X):
                    vecs[i] = x
        text_rows = [i for i, p in enumerate(pts) if p.text is not None]
        new_from_text = None
        if text_rows:
            bad = next((i for i in text_rows if spaces[i] == "new"), None)
            if bad is not None:
                raise ApiError(422, "a text is embedded by both models during a migration: "
                               "leave model out (or 'old')", f"points.{bad}.model")
            texts = [pts[i].text for i in text_rows]
            fields = [f"points.{i}.text" for i in text_rows]
            for i, x in zip(text_rows, svc.embed(name, texts, fields)):
                vecs[i] = x
            if mig is not None and mig.encode_new is not None:
                new_from_text = mig.encode_new(texts)
        for i, (v, space) in enumerate(zip(vecs, spaces)):
            _check_direction(v, firsts[space], f"points.{i}.vector")
        ids = [p.id for p in pts]
        payloads = [p.payload or {} for p in pts]
        with live.write_lock:
            try:
                if name not in svc.collections:  # dropped while embedding
                    raise MissingCollection(name)
                if svc.migrations.get(name) is not mig or svc.collections[name] is not live:
                    raise ApiError(409, f"collection {name!r} changed meanwhile (a migration "
                                   "started or ended, or it was re-created): send the points "
                                   "again", "name")
                if mig is None:
                    live.upsert(ids, np.stack(vecs), payloads)  # durable, then visible
                else:
                    mig.upsert(ids, vecs, spaces, payloads, new_from_text, text_rows)
            except MissingCollection:
                raise ApiError(404, f"collection {name!r} does not exist", "name") from None
        return Upserted(upserted=len(ids))

    def _space(name: str, mig: Migration | None, model: str | None, field: str) -> str:
        """The space (``"old"``/``"new"``) of a request naming ``model``. Without a migration
        the collection's own model is accepted (its encoder or model id; ``"old"`` too, unless
        a migration finished: then ``"new"`` is, so that the new model's clients go on through
        the finish, and the previous model is refused with 409: its vectors are gone)."""
        if mig is not None:
            try:
                return mig.space_of(model, field)
            except NestembError as e:
                raise _field_error(e) from None
        cfg = svc.config(name)
        was = cfg.get("migrated_from")
        own = (cfg.get("encoder"), cfg.get("model_id"), "new" if was else "old")
        if model is None or model in own:
            return "old"
        mine = cfg.get("encoder") or cfg.get("model_id") or "vectors only"
        if was and model in ("old", was.get("encoder"), was.get("model_id")):
            raise ApiError(409, f"{field} {model!r}: collection {name!r} finished its migration "
                           f"to {mine!r}; the previous model's vectors are gone: embed with "
                           f"{mine!r} (or name 'new')", field)
        raise ApiError(422, f"{field} {model!r} is not the model of collection {name!r} "
                       f"({mine}), and it is not migrating", field)

    def _parse_id(live: PointStore, raw: str) -> int | str:
        """A path id: the integer if it looks like one and exists; else the string if it
        exists; else, for a JSON string literal (``"5"``, how to reach the string id ``"5"``
        beside an integer 5), the string it spells; else the raw string."""
        if re.fullmatch(r"-?[0-9]{1,16}", raw) and INT_ID_MIN <= int(raw) <= INT_ID_MAX \
                and live.get(int(raw)) is not None:
            return int(raw)
        if live.get(raw) is None and len(raw) >= 2 and raw[0] == raw[-1] == '"':
            try:
                quoted = json.loads(raw)
            except ValueError:
                return raw
            if isinstance(quoted, str):
                return quoted
        return raw

    @app.get("/collections/{name}/points/{point_id}", responses=ERRORS)
    def get_point(name: str, point_id: str) -> PointOut:
        live = svc.get(name)
        pid = _parse_id(live, point_id)
        got = live.get(pid)
        if got is None:
            raise ApiError(404, f"point {point_id!r} not found in {name!r}", "id")
        return PointOut(id=pid, vector=got[0].tolist(), payload=got[1])

    @app.post("/collections/{name}/points/delete", responses=ERRORS)
    def delete_points(name: str, body: DeleteRequest) -> Deleted:
        live = svc.get(name)
        _check_batch(body.ids, "ids", limits.max_batch)
        _check_unique_ids(body.ids, "ids.{}")
        with live.write_lock:
            if svc.collections.get(name) is not live:
                if name in svc.collections:  # a finish (its new model) replaced it meanwhile
                    raise ApiError(409, f"collection {name!r} changed meanwhile (a migration "
                                   "ended, or it was re-created): send the ids again", "name")
                raise ApiError(404, f"collection {name!r} does not exist", "name")
            mig = svc.migrations.get(name)
            return Deleted(deleted=live.delete(body.ids) if mig is None
                           else mig.delete(body.ids))

    def _search(name: str, req: SearchRequest, field: str = "") -> SearchResponse:
        live = svc.get(name)
        t0 = time.perf_counter()
        if not 1 <= req.k <= limits.max_k:
            raise ApiError(422, f"k must be in 1 ... {limits.max_k}, got {req.k}", field + "k")
        if (req.vector is None) == (req.text is None):
            raise ApiError(422, "give exactly one of vector and text", field + "vector")
        if req.width is not None and req.text is None:
            raise ApiError(422, f"{field}width: a vector query has nothing to encode; width "
                           "needs text", field + "width")
        if req.recall is not None and req.dims is not None:
            raise ApiError(422, "give dims or recall, not both", field + "recall")
        if req.shortlist is not None and req.dims is None:
            raise ApiError(422, "shortlist needs dims", field + "shortlist")
        mig = svc.migrations.get(name)
        space = _space(name, mig, req.model, field + "model")
        if mig is not None:
            try:
                mig.searchable(space)
            except Conflict as e:
                raise _field_error(e, field, 409) from None
            live = mig.points_of(space)
        width_plan = _width_plan(name, live, req, field)
        width = req.width if width_plan is None else width_plan.width
        timing: dict[str, Any] = {}
        if req.text is not None:
            t = time.perf_counter()
            if space == "new":
                if mig is None or mig.encode_new is None:
                    raise ApiError(422, "the new model is not one of this server's encoders: "
                                   "send its vector", field + "text")
                if width is None:
                    q = mig.encode_new([req.text])
                else:
                    q = svc._encode_with(svc.config(name)["migration"]["target"]["encoder"],
                                         [req.text], width, field + "width")
            else:
                q = svc.embed(name, [req.text], [field + "text"], width, field + "width")
            timing["embed_ms"] = round((time.perf_counter() - t) * 1000, 3)
        else:
            q = _vectors([req.vector], live.dim, [field + "vector"])
        if not q[0, : live.nesting[0]].any():
            raise ApiError(422, f"query's first {live.nesting[0]} dims are all zero",
                           field + "vector")
        if width_plan is not None:
            plan = width_plan
        elif req.recall is not None:
            if not 0 < req.recall <= 1:
                raise ApiError(422, f"recall must be in (0, 1], got {req.recall}",
                               field + "recall")
            try:
                plan = live.plan_for_recall(req.recall)
            except Unsupported as e:  # a backend: no tuning
                raise _field_error(e, field) from None
        elif req.dims is not None:
            try:
                plan = Plan.check(req.dims, req.shortlist, live.nesting, req.k)
            except NestembError as e:
                raise _field_error(e, field) from None
        else:
            plan = live.default_plan()
        try:
            hits, stages = live.search(q, req.k, plan, req.filter)
        except Unsupported as e:  # a backend: no filters, or a prefix it does not store
            raise _field_error(e, field) from None
        timing["stages"] = stages
        timing["total_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        svc.record_search(timing["total_ms"])
        plan_out = PlanOut(**{**plan.as_dict(), "width": width})
        return SearchResponse(hits=[Hit(**h) for h in hits[0]], plan=plan_out,
                              timing=timing,
                              migration=None if mig is None else mig.answer(space, hits))

    def _width_plan(name: str, live: Any, req: SearchRequest, field: str) -> Plan | None:
        """The planner's (width, dims, shortlist) from the collection's width table
        (:func:`~nestemb.index.plan.choose_plan`): for a text query with ``latency_ms``, or with
        ``recall`` once a table is measured (``width`` narrows the choice). ``None``: the
        request is planned as before (dims, the tuned recall plans, the default)."""
        if req.latency_ms is None and (req.recall is None or req.text is None):
            return None
        if req.latency_ms is not None:
            if req.text is None:
                raise ApiError(422, "latency_ms: the budget covers encoding the query, so it "
                               "needs text (a vector query names dims or recall)",
                               field + "latency_ms")
            if req.dims is not None:
                raise ApiError(422, "give dims or latency_ms, not both", field + "latency_ms")
        table = live.width_table()
        if table is None:
            if req.latency_ms is None:
                return None  # a recall target alone: the tuned plans of a fixed encoder
            raise ApiError(409, f"latency_ms: collection {name!r} has no width table: measure "
                           f"it with POST /collections/{name}/widths (held-out query texts; "
                           "its encoder must be trained with nested widths)", field + "latency_ms")
        rows = [r for r in table["rows"] if all(s >= req.k for s in r["shortlist"])]
        try:
            return choose_plan(rows, recall=req.recall, latency_ms=req.latency_ms,
                               width=req.width, k=table["k"])
        except NestembError as e:
            raise _field_error(e, field) from None

    @app.post("/collections/{name}/widths", responses=ERRORS)
    def tune_widths(name: str, body: WidthTuneRequest) -> dict[str, Any]:
        """Measure the collection's width table: ``queries`` (held-out texts) encoded at each
        trained width of its encoder, every plan's recall@k against what the full model finds,
        latency = encoding + search (:func:`nestemb.index.tune.tune_widths`). Searches naming
        ``latency_ms`` (or ``recall``, with text) are then planned from it."""
        live = svc.get(name)
        fields = [f"queries.{i}" for i in range(len(body.queries))]
        enc = svc.collection_encoder(name, "queries")
        svc.check_texts(body.queries, fields)
        if 0 < len(live) < body.k:
            raise ApiError(422, f"k={body.k} is more than the collection's {len(live)} points",
                           "k")
        if enc.widths is None:
            raise ApiError(409, f"collection {name!r}'s encoder was trained without nested "
                           "widths: there is no encoder width to plan (train one with "
                           "`nestemb text train --widths`)", "encoder")
        try:
            return live.tune_widths(enc, body.queries, k=body.k,
                                    timing_queries=body.timing_queries, repeat=body.repeat,
                                    max_seconds=body.max_seconds)
        except Unsupported as e:  # a backend: no plans of its own
            raise _field_error(e) from None
        except NestembError as e:
            if e.param == "index":  # emptied, or replaced while measured
                raise ApiError(409, e.render("name"), "name") from None
            raise _field_error(e) from None

    @app.post("/collections/{name}/search", responses=ERRORS)
    def search(name: str, body: SearchRequest) -> SearchResponse:
        return _search(name, body)

    @app.post("/collections/{name}/search/batch", responses=ERRORS)
    def search_batch(name: str, body: BatchSearchRequest) -> BatchSearchResponse:
        svc.get(name)
        _check_batch(body.searches, "searches", limits.max_queries)
        return BatchSearchResponse(results=[_search(name, r, f"searches.{i}.")
                                            for i, r in enumerate(body.searches)])

    # -------------------------------------------------------------------- migrations
    def _migration(name: str) -> Migration:
        svc.get(name)
        mig = svc.migrations.get(name)
        if mig is None:
            raise ApiError(404, f"collection {name!r} is not migrating (start one with PUT "
                           f"/collections/{name}/migration)", "name")
        return mig

    @app.put("/collections/{name}/migration", responses=ERRORS)
    def start_migration(name: str, body: MigrationStart) -> MigrationStatus:
        """Start moving collection ``name`` to a new model (see :mod:`nestemb.service.migration`):
        ``encoder`` (one of the server's) re-encodes the stored texts; or ``nesting`` (and
        ``model_id``): the client posts the new vectors."""
        with svc._admin:
            live = svc.get(name)
            if svc.backend is not None:
                raise ApiError(409, f"live migrations need the embedded engine (nestemb serve "
                               f"--engine sqlite); on {svc.backend.kind} a collection would "
                               "need a second vector per point beside the first (a named "
                               "vector or a second field), which this backend does not write "
                               "yet: export the new vectors into a new collection instead",
                               "engine")
            if name in svc.migrations:
                raise ApiError(409, f"collection {name!r} is already migrating (to "
                               f"{svc.migrations[name].record['target']['model_id']}): "
                               "finish or cancel that migration first", "name")
            cfg = svc.config(name)
            if (body.encoder is None) == (body.nesting is None):
                raise ApiError(422, "give encoder (the server re-encodes the stored texts) or "
                               "nesting (the client posts the new vectors), not both",
                               "encoder")
            if body.encoder is not None:
                if body.encoder not in svc.encoders:
                    raise ApiError(422, "encoder must be one of this server's encoders: "
                                   f"{', '.join(sorted(svc.encoders))}", "encoder")
                try:
                    enc = svc.encoder(body.encoder)
                except (NestembError, OSError, ValueError) as e:
                    raise ApiError(422, f"encoder {body.encoder!r} cannot be loaded: {e}",
                                   "encoder") from None
                man = enc.manifest
                if man.model_version is not None and man.model_version == cfg.get(
                        "model_version"):
                    raise ApiError(422, f"collection {name!r} already uses {body.encoder!r} "
                                   f"(weights version {man.model_version})", "encoder")
                nesting = list(man.nesting or default_nesting(enc.dim, 8))
                target = {"encoder": body.encoder, "model_id": man.model_id,
                          "model_version": man.model_version, "nesting": nesting}
            else:
                assert body.nesting is not None
                if body.nesting[-1] > limits.max_dim:
                    raise ApiError(422, f"dimension {body.nesting[-1]} exceeds the limit of "
                                   f"{limits.max_dim}", "nesting")
                try:
                    nesting = list(validate_nesting(body.nesting, full_dim=body.nesting[-1]))
                except NestembError as e:
                    raise ApiError(422, e.render("nesting"), "nesting") from None
                if body.model_id is not None and body.model_id in (
                        cfg.get("model_id"), cfg.get("encoder"), "old"):
                    raise ApiError(422, f"collection {name!r} already uses {body.model_id!r}",
                                   "model_id")
                target = {"encoder": None, "model_id": body.model_id or "new",
                          "model_version": None, "nesting": nesting}
            if len(live) == 0:
                raise ApiError(409, f"collection {name!r} has no points: nothing to migrate "
                               "(create a collection for the new model)", "name")
            if body.encoder is not None:
                mem = _memory(live)
                assert mem is not None
                field = body.text_field
                texts = sum(1 for p in mem.ids() if isinstance(
                    t := (mem.payload_of(p) or {}).get(field), str) and t.strip())
                if texts == 0:
                    raise ApiError(422, f"no stored point has a text in payload field {field!r} "
                                   f"to re-encode: name the field that holds it, or post the "
                                   "new vectors (give nesting instead of encoder)", "text_field")
            from nestemb.maps.gate import holdout_size
            from nestemb.service.migration import HOLDOUT

            can = min(body.sample_size, texts if body.encoder is not None else len(live))
            try:  # else the gate could only refuse the map once the sample is collected
                holdout_size(can, HOLDOUT)
            except NestembError as e:
                raise ApiError(422, f"sample_size: a sample of {can} points is too small for "
                               f"the quality gate ({e})", "sample_size") from None
            p99 = svc.search_p99(60.0)
            record = {"state": "sampling" if body.encoder else "collecting", "paused": False,
                      "id": svc.store.sequence() + 1, "started": time.time(), "error": None,
                      "source": {"encoder": cfg.get("encoder"), "model_id": cfg.get("model_id"),
                                 "model_version": cfg.get("model_version"),
                                 "nesting": list(live.nesting)},
                      "target": target, "text_field": body.text_field,
                      "sample_size": body.sample_size, "min_quality": body.min_quality,
                      "force": body.force, "kind": body.kind, "batch": body.batch,
                      "max_p99_ms": body.max_p99_ms, "baseline_p99_ms": p99, "map": None}
            new_cfg = {**cfg, "migration": record}
            with live.write_lock:
                svc.store.start_migration(name, new_cfg, {"nesting": target["nesting"],
                                                          "shadow_of": name})
                svc.configs[name] = new_cfg
                mig = svc._open_migration(name, new_cfg)
            mig.start()
            return MigrationStatus(**mig.status())

    @app.get("/collections/{name}/migration", responses=ERRORS)
    def migration_status(name: str) -> MigrationStatus:
        return MigrationStatus(**_migration(name).status())

    @app.post("/collections/{name}/migration/pause", responses=ERRORS)
    def pause_migration(name: str) -> MigrationStatus:
        mig = _migration(name)
        mig.pause(True)
        return MigrationStatus(**mig.status())

    @app.post("/collections/{name}/migration/resume", responses=ERRORS)
    def resume_migration(name: str) -> MigrationStatus:
        mig = _migration(name)
        mig.pause(False)
        return MigrationStatus(**mig.status())

    @app.get("/collections/{name}/migration/queue", responses=ERRORS)
    def migration_queue(name: str, limit: int = 1000) -> Queue:
        """Ids whose new-model vector is still a mapped one, most retrieved first: what a
        client posting vectors should send next."""
        if not 1 <= limit <= 100_000:
            raise ApiError(422, f"limit must be in 1 ... 100000, got {limit}", "limit")
        return Queue(ids=_migration(name).queue(limit))

    @app.put("/collections/{name}/migration/vectors", responses=ERRORS)
    def post_vectors(name: str, body: VectorsRequest) -> Posted:
        """New-model vectors of stored points (true ones: they replace mapped vectors)."""
        mig = _migration(name)
        pts = body.points
        _check_batch(pts, "points", limits.max_batch)
        _check_unique_ids([p.id for p in pts], "points.{}.id")
        Y = _vectors([p.vector for p in pts], mig.shadow.dim,
                     [f"points.{i}.vector" for i in range(len(pts))], MAX_ABS_STORED)
        for i, y in enumerate(Y):
            _check_direction(y, mig.shadow.nesting[0], f"points.{i}.vector")
        with mig.main.write_lock:
            if svc.migrations.get(name) is not mig:
                raise ApiError(409, f"the migration of {name!r} ended meanwhile", "name")
            return Posted(posted=mig.post_vectors([p.id for p in pts], Y))

    def _end(name: str, how: str, force: bool) -> MigrationEnded:
        with svc._admin:
            mig = _migration(name)
            if how == "finish" and mig.state != "backfilling":
                raise ApiError(409, f"the migration of {name!r} is {mig.state}: not every "
                               "point has a new-model vector yet (even forced, a finish "
                               "waits for the mapping)", "force" if force else "name")
            if how == "finish" and not force:
                if mig.mapped:
                    raise ApiError(409, f"{len(mig.mapped)} points of {name!r} still have a "
                                   "mapped (not re-encoded) vector: wait for the backfill "
                                   "(or post their vectors), or force the finish", "force")
            mig.stop()
            main, shadow = mig.main, mig.shadow
            with main.write_lock, shadow.write_lock:
                if how == "finish":
                    cfg = mig.finished_config()
                    svc.store.finish_migration(name, cfg)
                    mem = _memory(shadow)
                    assert mem is not None
                    mem.name = name
                    svc.collections[name] = SqlitePoints(svc.store, name, mem.nesting, live=mem)
                    mem.writes = max(mem.writes, 1)  # snapshotted under its new epoch
                    # the old vectors' memory is never snapshotted again (a tuner pass that
                    # still holds it would save it as the new epoch's index)
                    _memory(main).store = None
                else:
                    cfg = {k: v for k, v in mig.config.items() if k != "migration"}
                    svc.store.cancel_migration(name, cfg)
                svc.configs[name] = cfg
                del svc.migrations[name]
                mig.drop_maps()
            log.info(json.dumps({"event": f"migration_{how}", "name": name}))
        return MigrationEnded(name=name, ended=how, collection=info(name))

    @app.post("/collections/{name}/migration/finish", responses=ERRORS)
    def finish_migration(name: str, body: Optional[MigrationFinish] = None) -> MigrationEnded:
        """Make the new model the collection's model and drop the old vectors (one
        transaction); before the backfill is complete only with ``force``."""
        return _end(name, "finish", bool(body and body.force))

    @app.post("/collections/{name}/migration/cancel", responses=ERRORS)
    def cancel_migration(name: str) -> MigrationEnded:
        """Drop the new vectors and the migration (one transaction)."""
        return _end(name, "cancel", False)

    return app
