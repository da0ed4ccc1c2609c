"""``nestemb serve``: the HTTP service over a data folder (see :mod:`nestemb.service`)."""

from __future__ import annotations

import errno
import logging
import signal
import socket
from pathlib import Path
from typing import Optional

import typer

from nestemb.cli.app import api_key_env_option, app, choices, renamed, url_option
from nestemb.cli.backend import KEY_ENV
from nestemb.engines import ENGINES, REGISTRY, default_url
from nestemb.checks import positive_int
from nestemb.errors import NestembError

Durability = choices("Durability", "full", "relaxed")
EngineKind = choices("EngineKind", "sqlite", *ENGINES)


def parse_encoders(specs: list[str] | None) -> dict[str, str]:
    """``--models NAME=PATH[,NAME=PATH...]`` (repeatable) as a name -> path mapping.

    Example:
        >>> parse_encoders(["sci=/models/sci,tiny=/m/tiny", "x=minilm"])
        {'sci': '/models/sci', 'tiny': '/m/tiny', 'x': 'minilm'}
        >>> parse_encoders(["/models/sci"])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: encoders: give NAME=PATH pairs (comma-separated), got '/models/sci'
    """
    out: dict[str, str] = {}
    for spec in specs or []:
        for pair in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, path = pair.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise NestembError(f"give NAME=PATH pairs (comma-separated), got {pair!r}",
                                   param="encoders")
            if name.strip() in out:
                raise NestembError(f"encoder {name.strip()!r} is given twice", param="encoders")
            out[name.strip()] = path.strip()
    return out


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening), for uvicorn to serve on; an
    address that cannot be used is a :class:`NestembError` about ``host`` or ``port``.

    Example:
        >>> s = bind_socket("127.0.0.1", 0); s.listen(); s.getsockname()[0]
        '127.0.0.1'
        >>> try:
        ...     bind_socket("127.0.0.1", s.getsockname()[1])
        ... except NestembError as e:
        ...     print(e.param, "|", e.render("--port"))
        port | --port ... is already in use on 127.0.0.1 (another server?)
        >>> s.close()
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise NestembError(f"{{param}} {host!r} is not an address or a known host name "
                           f"({getattr(e, 'strerror', None) or e})", param="host") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise NestembError(f"{{param}} {port} is already in use on {host} (another server?)",
                               param="port") from None
        if e.errno == errno.EACCES:
            raise NestembError(f"{{param}} {port}: permission denied (ports below 1024 need "
                               "privileges)", param="port") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise NestembError(f"{{param}} {host} is not an address of this machine",
                               param="host") from None
        raise NestembError(f"cannot listen on {host}:{port}: {e.strerror}",
                           param="host") from None
    sock.set_inheritable(True)
    return sock


@app.command(cls=renamed({"--backend": "--engine", "--backend-url": "--engine-url",
                          "--backend-key-env": "--engine-key-env", "--encoders": "--models"}))
def serve(
    data_dir: Path = typer.Option(..., "--data-dir", help="folder of the collections (created "
                                                          "if missing)"),
    host: str = typer.Option("127.0.0.1", help="interface to bind (default: loopback only)"),
    port: int = typer.Option(8000, help="TCP port"),
    api_keys: Optional[Path] = typer.Option(None, "--api-keys", help="JSON file of API keys "
                                            "scoped to collections and read/write; without it "
                                            "every request is allowed"),
    durability: Durability = typer.Option(  # type: ignore[valid-type]
        "full", help="full: acknowledge a write once it is fsynced; relaxed: once it is in the "
                     "OS cache (survives a killed server, not a power loss)"),
    max_batch: int = typer.Option(1000, help="most points (or ids, searches) per request"),
    max_body_mb: int = typer.Option(32, help="largest request body in MiB"),
    log_level: str = typer.Option("info", help="uvicorn and nestemb log level"),
    engine: EngineKind = typer.Option(  # type: ignore[valid-type]
        "sqlite", help="where points live: sqlite (the embedded store in --data-dir), or "
                       "an engine at --engine-url: " + "; ".join(
                           f"{e.name} ({e.address})" for e in REGISTRY.values())),
    url: Optional[str] = typer.Option(
        None, "--engine-url", help="the engine's URL or path (default: inside --data-dir: "
                                   + ", ".join(e.default for e in REGISTRY.values()) + ")"),
    engine_key_env: str = typer.Option(
        KEY_ENV, help="environment variable holding the engine's API key / token (if any)"),
    # named encoders as the service calls them, so that errors about encoders name --models
    encoders: Optional[list[str]] = typer.Option(
        None, "--models", help="NAME=PATH[,NAME=PATH...]: saved text models collections may "
                               "name as their encoder (besides the bundled 'minilm'); "
                               "requests name encoders, never paths"),
) -> None:
    """Serve collections over HTTP (OpenAPI at /openapi.json, search page at /).

    With --engine set to an engine the points live in that engine (searched with its
    funnel: dims + shortlist plans; no recall targets or payload filters); the collection
    registry stays in --data-dir."""
    from nestemb.service import load_api_keys
    from nestemb.service.app import check_encoders

    if not 0 < port < 65536:
        raise NestembError(f"--port must be in 1 ... 65535, got {port}")
    if max_batch < 1 or max_body_mb < 1:
        raise NestembError("--max-batch and --max-body-mb must be positive")
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise NestembError(f"--log-level must be critical, error, warning, info or debug, "
                           f"got {log_level!r}")
    keys = load_api_keys(api_keys) if api_keys is not None else None
    allowed = check_encoders(parse_encoders(encoders))
    sock = bind_socket(host, port)  # before anything is opened: a taken port changes nothing
    try:
        _serve(sock, data_dir, keys, allowed, durability.value, max_batch, max_body_mb,
               log_level, engine.value, url, engine_key_env)
    finally:
        sock.close()


def _serve(sock: socket.socket, data_dir: Path, keys, allowed: dict, durability: str,
           max_batch: int, max_body_mb: int, log_level: str, engine_kind: str,
           url: Optional[str], engine_key_env: str) -> None:
    import uvicorn

    from nestemb.service import Limits, create_app
    from nestemb.service.app import json_error_protocol

    engine = None
    if engine_kind != "sqlite":
        import os

        from nestemb.service.points import open_backend

        address = url or default_url(engine_kind, data_dir)
        if url is None:
            data_dir.mkdir(parents=True, exist_ok=True)
        engine = open_backend(engine_kind, address, api_key=os.environ.get(engine_key_env))
    elif url is not None:
        raise NestembError(f"--engine-url needs --engine {' or '.join(ENGINES)}")
    limits = Limits(max_batch=max_batch, max_queries=min(256, max_batch),
                    max_body_bytes=max_body_mb << 20)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        application = create_app(data_dir, api_keys=keys, durability=durability,
                                 limits=limits, backend=engine, encoders=allowed)
    except BaseException:
        if engine is not None:
            engine.close()
        raise
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal it caught:
    # with no-op handlers underneath, a graceful stop exits 0 (not the CLI's "interrupted").
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT,
                                                                      signal.SIGTERM)}
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(application, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=10, http=json_error_protocol())
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])  # the socket bound above: no second bind to fail
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise NestembError("the server did not start (its log above says why)")


def read_beir_corpus(corpus: Path) -> tuple[list[dict], list[int]]:
    r"""Every record of a BEIR ``corpus.jsonl`` as a text point (id = ``_id``, text = title +
    text, payload = title) and the line number of each, checking every record first: the
    first bad one (a line that is not UTF-8 or not a JSON object, a missing, empty, too long
    or repeated ``_id``, an empty text) is a :class:`NestembError` naming the file, the line
    and the ``_id`` (and how many more are bad). Blank lines are skipped.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "corpus.jsonl"
        >>> _ = p.write_text('{"_id": "a", "title": "T", "text": "x"}\n\n{"_id": 7, "text": "y"}\n')
        >>> read_beir_corpus(p)
        ([{'id': 'a', 'payload': {'title': 'T'}, 'text': 'T x'}, {'id': '7', 'payload': {'title': ''}, 'text': 'y'}], [1, 3])
        >>> _ = p.write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": ""}\n'
        ...                  '{"_id": "a", "text": "z"}\n')
        >>> read_beir_corpus(p)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: ...corpus.jsonl, line 2 (_id 'b'): title and text are empty (and 1 more bad record)
    """
    import json

    docs: list[dict] = []
    lines: list[int] = []
    first: dict[str, int] = {}
    problems: list[str] = []
    try:
        raw = corpus.read_bytes()
    except OSError as e:
        raise NestembError(f"{corpus}: cannot be read ({e.strerror})") from None
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{corpus}, line {n}"
        try:
            d = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            problems.append(f"{where}: not valid UTF-8 (byte {e.start + 1} of the line)")
            continue
        except ValueError as e:
            problems.append(f"{where}: not valid JSON ({e.msg}, column {e.colno})")
            continue
        if not isinstance(d, dict):
            problems.append(f"{where}: not a BEIR corpus record (a JSON object with _id, title "
                            "and text)")
            continue
        pid = d.get("_id")
        if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
            problems.append(f"{where}: _id must be a non-empty string, got {pid!r}")
            continue
        pid = str(pid)
        where = f"{where} (_id {pid!r})"
        if len(pid) > 256:
            problems.append(f"{where}: _id is longer than 256 characters")
            continue
        if pid in first:
            problems.append(f"{where}: duplicate _id (first at line {first[pid]})")
            continue
        first[pid] = n
        title, text = d.get("title", ""), d.get("text", "")
        if not isinstance(title, (str, type(None))) or not isinstance(text, (str, type(None))):
            problems.append(f"{where}: title and text must be strings")
            continue
        body = ((title or "") + " " + (text or "")).strip()
        if not body:
            problems.append(f"{where}: title and text are empty")
            continue
        docs.append({"id": pid, "payload": {"title": title or ""}, "text": body})
        lines.append(n)
    if problems:
        more = len(problems) - 1
        raise NestembError(problems[0] + (f" (and {more} more bad record{'s' * (more > 1)})"
                                          if more else ""))
    if not docs:
        raise NestembError(f"{corpus}: no records")
    return docs, lines


@app.command(cls=renamed({"--encoder": "--model", "--batch": "--batch-size"}))
def upload(
    url: str = url_option(),
    collection: str = typer.Option(..., help="collection to fill (created with --model if "
                                             "missing)"),
    beir: Path = typer.Option(..., "--beir", help="BEIR folder: its corpus.jsonl is uploaded "
                                                 "as text points (id = doc id, payload = title)"),
    # named encoder as the service calls it
    encoder: str = typer.Option("minilm", "--model", help="model of a new collection: the name "
                                "of one of the server's encoders ('minilm' or one of its "
                                "--models)"),
    batch_size: int = typer.Option(64, help="points per request"),
    api_key_env: str = api_key_env_option(),
) -> None:
    """Upload a BEIR corpus into a collection of a running `nestemb serve`.

    Every record is checked before the first request. If a request fails, nothing after it
    is sent and the error says which lines are stored; a rerun upserts everything again
    (points are upserted by id)."""
    import os

    from nestemb.progress import progress_stages
    from nestemb.service.client import ServiceClient, ServiceError, UploadFailed

    corpus = beir / "corpus.jsonl"
    if not corpus.is_file():
        raise NestembError(f"--beir: no corpus.jsonl in {beir}")
    positive_int(batch_size, "batch_size")
    docs, lines = read_beir_corpus(corpus)
    total = len(docs)
    rerun = (f"rerun the same command to upsert all {total} again (points are upserted by "
             "id: the stored ones are replaced, not duplicated)")
    with ServiceClient(url, os.environ.get(api_key_env)) as client:
        try:
            try:
                client.describe(collection)
            except ServiceError as e:
                if e.status != 404:
                    raise
                client.create(collection, encoder=encoder)
        except NestembError as e:
            raise NestembError(f"{collection}: {e}; stored 0 of {total} points") from None
        with progress_stages() as update:
            done = 0

            def tick(n: int) -> None:
                nonlocal done
                done += n
                update("uploading", done, total)

            try:
                client.upload(collection, docs, batch=batch_size, progress=tick)
            except UploadFailed as e:
                raise NestembError(_upload_account(collection, e, docs, lines, rerun)) from None
        try:
            count = client.describe(collection)["count"]
        except NestembError as e:
            raise NestembError(f"{collection}: all {total} points stored, but {e}") from None
        typer.echo(f"{collection}: {count} points")


def _upload_account(collection: str, e, docs: list[dict], lines: list[int], rerun: str) -> str:
    """One line on a failed upload: why, which lines are stored, what to do."""
    import re

    from nestemb.service.client import ServiceError

    a, b = e.failed
    cause = e.cause
    why = str(cause)
    if isinstance(cause, ServiceError):
        m = re.fullmatch(r"points\.([0-9]+)(\..*)?", cause.field or "")
        if m and a + int(m.group(1)) < b:  # the server's field, read as data: a point
            i = a + int(m.group(1))
            why = (f"line {lines[i]} (_id {docs[i]['id']!r}): server answered {cause.status}: "
                   f"{cause.message} (field {m.group(2)[1:] if m.group(2) else 'point'})")
        batch = f"the batch of lines {lines[a]}-{lines[b - 1]} was refused"
    else:
        batch = (f"the batch of lines {lines[a]}-{lines[b - 1]} got no answer (it may be "
                 "stored or not)")
    stored = (f"stored {e.stored} of {e.total} points"
              + (f" (lines {lines[0]}-{lines[e.stored - 1]})" if e.stored else ""))
    return (f"{collection}: {why}; {stored}; {batch} and the rest were not sent: {rerun}")
