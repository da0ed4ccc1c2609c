"""``nestemb serve``: the HTTP service over a data folder (see :mod:`nestemb.service`)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Optional

import typer

from nestemb.cli.app import app, choices
from nestemb.errors import NestembError

Durability = choices("Durability", "full", "relaxed")
BackendKind = choices("BackendKind", "sqlite", "qdrant-edge", "qdrant", "milvus")


@app.command()
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
    backend: BackendKind = typer.Option(  # type: ignore[valid-type]
        "sqlite", help="where points live: sqlite (the embedded store in --data-dir), "
                       "qdrant-edge (Qdrant's engine in-process, a shard folder per "
                       "collection), qdrant (a server/cluster URL, or a local-mode folder) or "
                       "milvus (a server/cluster URI, or a milvus-lite .db file)"),
    backend_url: Optional[str] = typer.Option(
        None, "--backend-url", help="the backend's URL or path (default: inside --data-dir: "
                                    "qdrant-edge/, qdrant/ or milvus.db)"),
    backend_key_env: str = typer.Option(
        "NESTEMB_BACKEND_KEY", help="environment variable holding the backend's API key / "
                                    "token (if any)"),
) -> None:
    """Serve collections over HTTP (OpenAPI at /openapi.json, search page at /).

    With --backend qdrant-edge|qdrant|milvus the points live in that engine (searched with its
    funnel: dims + shortlist plans; no recall targets or payload filters); the collection
    registry stays in --data-dir."""
    import uvicorn

    from nestemb.service import Limits, create_app, load_api_keys

    if not 0 < port < 65536:
        raise NestembError(f"--port must be in 1 ... 65535, got {port}")
    if max_batch < 1 or max_body_mb < 1:
        raise NestembError("--max-batch and --max-body-mb must be positive")
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise NestembError(f"--log-level must be critical, error, warning, info or debug, "
                           f"got {log_level!r}")
    keys = load_api_keys(api_keys) if api_keys is not None else None
    engine = None
    if backend.value != "sqlite":
        import os

        from nestemb.service.points import default_backend_url, open_backend

        url = backend_url or default_backend_url(backend.value, data_dir)
        if backend_url is None:
            data_dir.mkdir(parents=True, exist_ok=True)
        engine = open_backend(backend.value, url, api_key=os.environ.get(backend_key_env))
    elif backend_url is not None:
        raise NestembError("--backend-url needs --backend qdrant-edge, qdrant or milvus")
    limits = Limits(max_batch=max_batch, max_queries=min(256, max_batch),
                    max_body_bytes=max_body_mb << 20)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        application = create_app(data_dir, api_keys=keys, durability=durability.value,
                                 limits=limits, backend=engine)
    except BaseException:
        if engine is not None:
            engine.close()
        raise
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal it caught:
    # with no-op handlers underneath, a graceful stop exits 0 (not the CLI's "interrupted").
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT,
                                                                      signal.SIGTERM)}
    try:
        uvicorn.run(application, host=host, port=port, log_level=log_level,
                    timeout_graceful_shutdown=10)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command()
def upload(
    url: str = typer.Option("http://127.0.0.1:8000", help="the service's base URL"),
    collection: str = typer.Option(..., help="collection to fill (created with --encoder if "
                                             "missing)"),
    beir: Path = typer.Option(..., "--beir", help="BEIR folder: its corpus.jsonl is uploaded "
                                                 "as text points (id = doc id, payload = title)"),
    encoder: str = typer.Option("minilm", help="encoder of a new collection: 'minilm' or a "
                                               "saved text model's path on the server"),
    batch: int = typer.Option(64, help="points per request"),
    api_key_env: str = typer.Option("NESTEMB_API_KEY", help="environment variable holding the "
                                                            "API key (if any)"),
) -> None:
    """Upload a BEIR corpus into a collection of a running `nestemb serve`."""
    import json
    import os

    from nestemb.progress import progress_stages
    from nestemb.service.client import ServiceClient, ServiceError

    corpus = beir / "corpus.jsonl"
    if not corpus.is_file():
        raise NestembError(f"--beir: no corpus.jsonl in {beir}")
    if batch < 1:
        raise NestembError(f"--batch must be at least 1, got {batch}")
    docs = []
    with corpus.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    d = json.loads(line)
                    docs.append({"id": str(d["_id"]), "payload": {"title": d.get("title", "")},
                                 "text": (d.get("title", "") + " " + d.get("text", "")).strip()})
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise NestembError(f"{corpus}, line {n}: not a BEIR corpus record") from None
    with ServiceClient(url, os.environ.get(api_key_env)) as client:
        try:
            client.describe(collection)
        except ServiceError as e:
            if e.status != 404:
                raise
            client.create(collection, encoder=encoder)
        with progress_stages() as update:
            done = 0

            def tick(n: int) -> None:
                nonlocal done
                done += n
                update("uploading", done, len(docs))

            client.upload(collection, docs, batch=batch, progress=tick)
        typer.echo(f"{collection}: {client.describe(collection)['count']} points")
