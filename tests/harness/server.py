"""Helpers for tests and harnesses of the service: a real ``nestemb serve`` on a free loopback
port, a raw HTTP exchange over a socket, a direct ASGI call, and a snapshot of what is stored.

Every server started here runs in its own process group and is killed when its ``with`` block
ends, whatever happened inside it, so a failing test never leaves a server behind.

Example::

    from harness.server import running_server, stop_server
    with running_server(tmp_path / "data") as (url, proc):
        httpx.put(f"{url}/collections/docs", json={"nesting": [2, 4]})
        assert stop_server(proc) == 0          # SIGTERM: a graceful shutdown
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from nestemb.errors import NestembError
from nestemb.service.store import DB_NAME

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ServerProcess(subprocess.Popen):
    """A ``nestemb serve`` child; ``log_path`` holds its stdout and stderr."""

    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def kill_server(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGKILL the server's whole process group; returns its exit code (None if it lingers)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """SIGTERM the server (uvicorn's graceful shutdown) and wait for it; SIGKILL after
    ``timeout`` seconds. Returns the exit code of the graceful stop, or None if it had to be
    killed."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_server(proc)
        return None


def write_api_keys(keys: Sequence[dict], folder: str | Path) -> Path:
    """Write ``{"keys": keys}`` as a keys file in ``folder``; returns its path."""
    fd, name = tempfile.mkstemp(prefix="nestemb-keys-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"keys": list(keys)}, f)
    return Path(name)


@contextmanager
def running_server(data_dir: str | Path, *, api_keys: str | Path | Sequence[dict] | None = None,
                   durability: str = "full", env: dict[str, str] | None = None,
                   extra_args: Sequence[str] = (), timeout: float = 90.0,
                   encoders: Mapping[str, str | Path] | None = None,
                   ) -> Iterator[tuple[str, ServerProcess]]:
    """Start ``python -m nestemb serve --data-dir DATA_DIR`` on a free loopback port, wait for
    ``/healthz``, yield ``(base_url, process)``, and kill its process group on exit.

    ``api_keys``: a keys file, or a list of key objects written to a temporary keys file
    (outside ``data_dir``). ``encoders``: name -> saved text model folder, the server's
    ``--models``. ``env`` is added to the current environment (offline Hugging Face
    settings are always set). The server's output goes to ``process.log_path`` (outside
    ``data_dir``, removed on exit), and its tail is in the error when it fails to start. A port
    taken between choosing and binding it is retried with another one.
    """
    data_dir = Path(data_dir)
    tmp = Path(tempfile.mkdtemp(prefix="nestemb-server-"))
    keys_path: Path | None = None
    if api_keys is not None and not isinstance(api_keys, (str, Path)):
        keys_path = write_api_keys(api_keys, tmp)
    elif api_keys is not None:
        keys_path = Path(api_keys)
    child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                 "PYTHONUNBUFFERED": "1", **(env or {})}
    proc: ServerProcess | None = None
    try:
        for attempt in range(3):
            port = free_port()
            cmd = [sys.executable, "-m", "nestemb", "serve", "--data-dir", str(data_dir),
                   "--host", HOST, "--port", str(port), "--durability", durability,
                   *(["--api-keys", str(keys_path)] if keys_path else []),
                   *(["--models", ",".join(f"{n}={p}" for n, p in encoders.items())]
                     if encoders else []), *extra_args]
            log_path = tmp / f"server-{attempt}.log"
            with open(log_path, "wb") as log:
                proc = ServerProcess(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                     start_new_session=True)
            proc.log_path = log_path
            url = f"http://{HOST}:{port}"
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline and not _healthy(url):
                time.sleep(0.1)
            if proc.poll() is None and _healthy(url):
                break
            log_text = proc.log_tail()
            kill_server(proc)
            if "already in use" in log_text.lower() and attempt < 2:
                continue
            raise NestembError(f"nestemb serve did not become healthy within {timeout} s "
                               f"(exit code {proc.returncode}); its log ends:\n{log_text}")
        assert proc is not None
        yield url, proc
    finally:
        if proc is not None:
            kill_server(proc)
        for p in sorted(tmp.glob("*")):
            p.unlink(missing_ok=True)
        tmp.rmdir()


# --------------------------------------------------------------------------- raw HTTP
@dataclass
class RawResponse:
    """A response read off a socket: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_exchange(url: str, head: bytes, body: bytes = b"", timeout: float = 10.0,
                 answer_wait: float = 2.0) -> tuple[RawResponse, bool]:
    """Send a request's ``head`` (request line and headers, ending in a blank line) and then
    ``body`` over a fresh socket, but read the answer first: the body is only sent if the
    server has not answered within ``answer_wait`` seconds. Returns the response and whether
    the body was sent, so a test shows that a refused request was answered before its body
    was read."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head)
        s.settimeout(answer_wait)
        first = b""
        try:
            first = s.recv(65536)
        except socket.timeout:
            pass
        sent_body = False
        if not first and body:
            s.sendall(body)
            sent_body = True
        s.settimeout(timeout)
        data = first
        while True:
            resp = _parse_response(data)
            if resp is not None:
                return resp, sent_body
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    resp = _parse_response(data, final=True)
    if resp is None:
        raise NestembError(f"no complete HTTP response from {url}: {data[:200]!r}")
    return resp, sent_body


def _parse_response(data: bytes, final: bool = False) -> RawResponse | None:
    """The response in ``data`` once it is complete (``Content-Length`` bytes of body)."""
    if b"\r\n\r\n" not in data:
        return None
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in lines[1:] if ":" in line)}
    n = headers.get("content-length")
    if n is not None and len(body) >= int(n):
        return RawResponse(status, headers, body[: int(n)])
    return RawResponse(status, headers, body) if final else None


# --------------------------------------------------------------------------- ASGI
@dataclass
class AsgiResult:
    """What a direct ASGI call answered, and how much of the request body the app read."""

    status: int
    body: bytes
    body_reads: int = 0
    bytes_read: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


def call_asgi(app: Any, method: str, path: str, *, headers: dict[str, str] | None = None,
              chunks: Sequence[bytes] = (), content_length: int | None = None,
              chunked: bool = False) -> AsgiResult:
    """Call an ASGI app once with the literal ``path`` (no client normalization: ``..`` and
    ``%2F`` reach the app as sent) and the body split into ``chunks``; counts how many body
    chunks the app pulled with ``receive()``. The ``Content-Length`` header is the body's
    size, or ``content_length`` (a declared size larger than what is sent), or absent with
    ``chunked`` (a streamed body)."""
    from urllib.parse import unquote

    raw_path = path.encode("latin-1")
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    if chunked:
        hdrs.pop("content-length", None)
        hdrs["transfer-encoding"] = "chunked"
    elif content_length is not None:
        hdrs["content-length"] = str(content_length)
    elif chunks:
        hdrs.setdefault("content-length", str(sum(len(c) for c in chunks)))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": unquote(path.split("?")[0]),
             "raw_path": raw_path.split(b"?")[0], "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                         for k, v in hdrs.items()],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    result = AsgiResult(0, b"")
    pending = list(chunks) or [b""]

    async def receive() -> dict:
        if pending:
            c = pending.pop(0)
            result.body_reads += 1
            result.bytes_read += len(c)
            return {"type": "http.request", "body": c, "more_body": bool(pending)}
        await asyncio.sleep(3600)  # a client that sends nothing more
        return {"type": "http.disconnect"}

    async def send(msg: dict) -> None:
        if msg["type"] == "http.response.start":
            result.status = msg["status"]
            result.headers = {k.decode("latin-1"): v.decode("latin-1")
                              for k, v in msg.get("headers", [])}
        elif msg["type"] == "http.response.body":
            result.body += msg.get("body", b"")

    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=60))
    if not chunks:
        result.body_reads = result.bytes_read = 0  # the empty message is not a body
    return result


# --------------------------------------------------------------------------- stored state
def db_rows(data_dir: str | Path) -> dict[str, list[tuple]]:
    """Every row of the service's SQLite database, read through a separate read-only
    connection (committed data only): ``{"collections": [...], "points": [...]}``, sorted."""
    path = Path(data_dir) / DB_NAME
    if not path.exists():
        return {"collections": [], "points": []}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {"collections": sorted(con.execute("SELECT name, config FROM collections")),
                "points": sorted(con.execute(
                    "SELECT collection, id, vector, payload FROM points"))}
    finally:
        con.close()


def dir_listing(folder: str | Path) -> list[tuple[str, int, str]]:
    """Every file under ``folder`` as ``(relative path, size, sha256)``, sorted. The hash of
    SQLite's ``-shm`` index is left out (``""``): readers write their marks there; every
    commit changes the ``-wal`` file (or, after a checkpoint, the database file)."""
    import hashlib

    root = Path(folder)
    out = []
    for p in root.rglob("*"):
        if p.is_file():
            digest = "" if p.name.endswith("-shm") else hashlib.sha256(p.read_bytes()).hexdigest()
            out.append((str(p.relative_to(root)), p.stat().st_size, digest))
    return sorted(out)


# --------------------------------------------------------------------------- fuzzing
FUZZ_COLLECTION, FUZZ_TEXT_COLLECTION, FUZZ_SCRATCH = "docs", "txt", "scratch"
"""Seeded collections (re-created when dropped), and a name left for generated creates."""
FUZZ_NESTING = (2, 4)
FUZZ_ENCODER = "tiny"
"""The encoder name under which a fuzzed server offers the text model (``create_app(...,
encoders={FUZZ_ENCODER: model})``, ``nestemb serve --models tiny=MODEL``)."""
FUZZ_REJECTION_STATUSES = ["400", "401", "403", "404", "405", "409", "413", "415", "422"]
"""Statuses that count as rejecting schema-invalid data (schemathesis' list, plus 413)."""


@dataclass
class FuzzReport:
    """Generated requests sent, answers per (operation, status), and every failed check."""

    requests: int = 0
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, label: str, status: int) -> None:
        per_op = self.statuses.setdefault(label, {})
        per_op[str(status)] = per_op.get(str(status), 0) + 1
        self.requests += 1

    def histogram(self) -> dict[str, int]:
        """Answers per status over all operations."""
        out: dict[str, int] = {}
        for per_op in self.statuses.values():
            for status, n in per_op.items():
                out[status] = out.get(status, 0) + n
        return dict(sorted(out.items()))

    def server_errors(self) -> int:
        return sum(n for s, n in self.histogram().items() if s.startswith("5"))


def seed_fuzz_collections(request: Any, text_model: str | Path | None = None) -> None:
    """Create (if missing) the collections the fuzzer aims at: ``docs`` (vectors, nesting
    2/4, 20 points with payloads) and, given a text model (which the server offers as the
    encoder ``FUZZ_ENCODER``), ``txt`` (2 text points). ``request(method, path, json)``
    returns the status code."""
    if request("GET", f"/collections/{FUZZ_COLLECTION}", None) == 404:
        request("PUT", f"/collections/{FUZZ_COLLECTION}", {"nesting": list(FUZZ_NESTING)})
        request("PUT", f"/collections/{FUZZ_COLLECTION}/points", {"points": [
            {"id": i if i % 3 else f"p{i}", "vector": [1.0, i / 7, (i % 5) - 2.0, -i / 3],
             "payload": {"c": i % 3, "even": i % 2 == 0, "tag": ["a", "b"][i % 2]}}
            for i in range(1, 21)]})
    if text_model is not None and request("GET", f"/collections/{FUZZ_TEXT_COLLECTION}",
                                          None) == 404:
        request("PUT", f"/collections/{FUZZ_TEXT_COLLECTION}", {"encoder": FUZZ_ENCODER})
        request("PUT", f"/collections/{FUZZ_TEXT_COLLECTION}/points", {"points": [
            {"id": "t1", "text": "what is the cell"}, {"id": "t2", "text": "a protein"}]})


def _steer(case: Any, nesting: Sequence[int], text: bool) -> None:
    """Bend a schema-valid request on a seeded collection towards the success path, where the
    search and storage code runs (random requests are almost always refused before it): each
    point or search gets exactly one of vector and text (``text`` if the collection embeds
    text), vectors the collection's length, stage dims from its nesting with shortlists that
    fit them, and no recall beside dims."""
    dim = nesting[-1]

    def one_input(obj: dict) -> None:
        if not text or obj.get("text") is None:
            obj.pop("text", None)
            if obj.get("vector") is None:
                obj["vector"] = [1.0] * dim
        else:
            obj.pop("vector", None)
        v = obj.get("vector")
        if isinstance(v, list):
            obj["vector"] = (v * dim)[:dim] if v else [1.0] * dim

    def search(obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        one_input(obj)
        dims = obj.get("dims")
        if dims == []:
            obj.pop("dims")
        elif isinstance(dims, list) and all(isinstance(d, (int, float)) for d in dims):
            dims = sorted({nesting[int(d) % len(nesting)] for d in dims})
            obj["dims"] = dims
            obj.pop("recall", None)
            k = obj.get("k") if type(obj.get("k")) is int else 10
            sl = obj.get("shortlist")
            if isinstance(sl, list) and all(type(x) is int for x in sl):
                sl = sorted((max(x, k) for x in sl), reverse=True)[: len(dims) - 1]
                obj["shortlist"] = sl + [max(k, 1)] * (len(dims) - 1 - len(sl))
        elif obj.get("shortlist") is not None:
            obj.pop("shortlist")

    body = case.body
    if not isinstance(body, dict):
        return
    label = case.operation.label
    if label == "PUT /collections/{name}":  # a valid nesting, no encoder
        nest = body.get("nesting")
        if isinstance(nest, list) and all(isinstance(d, (int, float)) for d in nest):
            body["nesting"] = sorted({min(max(int(d), 1), 512) for d in nest}) or [4]
        else:
            body["nesting"] = [2, 4]
        body["encoder"] = None
    elif label.endswith("/search"):
        search(body)
    elif label.endswith("/search/batch") and isinstance(body.get("searches"), list):
        for item in body["searches"]:
            search(item)
    elif label.endswith("/points") and isinstance(body.get("points"), list):
        for item in body["points"]:
            if isinstance(item, dict):
                one_input(item)


def fuzz_service(target: Any, requests: int, *, seed: int = 0, text_model: str | Path | None = None,
                 headers: dict[str, str] | None = None, chunk: int = 500) -> FuzzReport:
    """Send ``requests`` schemathesis-generated requests (positive and negative, every
    operation of the OpenAPI spec; half of those with a collection name aim at the seeded
    collections) to ``target``, an ASGI app or a base URL, and check each answer: no 5xx, a
    documented status, content type, headers and body matching the spec, and schema-invalid
    data rejected with a 4xx. Failures are collected, not raised.

    The seeded collections (:func:`seed_fuzz_collections`) are re-created when a generated
    request drops them; with ``text_model``, ``target`` must offer it as the encoder
    ``FUZZ_ENCODER``. Hypothesis runs ``chunk`` examples per seed (``seed``, ``seed + 1``,
    ...) with shrinking off, so the count is exact.
    """
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance,
                                                   negative_data_rejection,
                                                   response_headers_conformance,
                                                   response_schema_conformance,
                                                   status_code_conformance)

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance,
              negative_data_rejection]
    config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
        "expected-statuses": FUZZ_REJECTION_STATUSES}}})
    is_url = isinstance(target, str)
    if is_url:
        import httpx

        schema = schemathesis.openapi.from_url(f"{target}/openapi.json", config=config,
                                               headers=headers or {})
        client = httpx.Client(base_url=target, headers=headers or {}, timeout=60)

        def request(method: str, path: str, body: Any) -> int:
            return client.request(method, path, json=body).status_code
    else:
        from fastapi.testclient import TestClient

        schema = schemathesis.openapi.from_asgi("/openapi.json", target, config=config)
        client = TestClient(target)  # no lifespan: schemathesis' transport runs the app's

        def request(method: str, path: str, body: Any) -> int:
            return client.request(method, path, json=body, headers=headers).status_code

    seeded = [FUZZ_COLLECTION] + ([FUZZ_TEXT_COLLECTION] if text_model is not None else [])
    names = seeded + [FUZZ_SCRATCH]
    strategies = []
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies.append(op.as_strategy(mode))
            if "{name}" in op.path:
                for name in names:
                    strategies.append(op.as_strategy(mode, path_parameters={"name": name}))
                    if "{point_id}" in op.path:
                        for pid in ("1", "p3", "t1"):
                            strategies.append(op.as_strategy(
                                mode, path_parameters={"name": name, "point_id": pid}))
    report = FuzzReport()
    seed_fuzz_collections(request, text_model)
    text_nesting: tuple[int, ...] = ()
    if text_model is not None:
        info_client = client.get(f"/collections/{FUZZ_TEXT_COLLECTION}", headers=headers)
        text_nesting = tuple(info_client.json()["nesting"])

    def one(case: Any) -> None:
        positive = case.meta is not None and case.meta.generation.mode.is_positive
        name = (case.path_parameters or {}).get("name")
        if positive and name in names:
            _steer(case, text_nesting if name == FUZZ_TEXT_COLLECTION else FUZZ_NESTING,
                   text=name == FUZZ_TEXT_COLLECTION)
        label = case.operation.label
        try:
            resp = case.call(headers=headers)
        except Exception as e:  # noqa: BLE001 - an app exception (ASGI) or a dropped socket
            report.count(label, 599)
            report.failures.append({"operation": label, "status": None,
                                    "error": f"{type(e).__name__}: {e}"[:2000]})
            return
        report.count(label, resp.status_code)
        try:
            case.validate_response(resp, checks=checks, headers=headers)
        except Exception as e:  # noqa: BLE001 - schemathesis' FailureGroup, collected
            report.failures.append({"operation": label, "status": resp.status_code,
                                    "mode": "positive" if positive else "negative",
                                    "error": str(e)[:4000]})
        if label.startswith("DELETE /collections/{name}") and resp.status_code == 200:
            seed_fuzz_collections(request, text_model)

    # Hypothesis mines string and number constants from every loaded local module and mixes
    # them into what it generates: the requests would change with any edit anywhere in the
    # package. Without that the requests depend on the spec and the seed only.
    from hypothesis.internal.conjecture import providers

    mined = providers._get_local_constants
    providers._get_local_constants = providers.Constants
    t0 = time.perf_counter()
    try:
        done, i = 0, 0
        while done < requests:
            n = min(chunk, requests - done)

            @hseed(seed + i)
            @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=st.one_of(strategies))
            def run(case: Any) -> None:
                one(case)

            before = report.requests
            run()
            done += report.requests - before
            i += 1
            if report.requests == before:
                break  # nothing generated: do not loop forever
    finally:
        providers._get_local_constants = mined
        report.seconds = round(time.perf_counter() - t0, 3)
        client.close()
    return report


def assert_error(r: Any, status: int, field: str, message: str = "") -> None:
    """An HTTP answer is the service's JSON error: ``status``, the ``field`` it names, and a
    message containing ``message`` (case aside)."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"status", "message", "field"}, body
    assert body["error"]["status"] == status
    assert body["error"]["field"] == field, body
    assert message.lower() in body["error"]["message"].lower(), body
