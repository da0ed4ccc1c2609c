"""``nestemb migrate``: move a collection of a running ``nestemb serve`` to a new model while
it serves (see :mod:`nestemb.service.migration`): start, status, watch, pause, resume, finish,
cancel.

Each verb is one request (``watch``: one every ``--interval`` seconds) through
:class:`~nestemb.service.client.ServiceClient`. An error answer of the server exits with
status 2 and one line; when its JSON ``field`` is a parameter of the command (``sample_size``,
``encoder``, the collection's ``name``, the key's ``authorization``...), the line names that
option (``--sample-size``, ``--model``, ``--collection``, ``--api-key-env``): the field is read
as data, never the message.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Iterator, Optional

import typer

from nestemb.cli.app import api_key_env_option, app, choices, url_option
from nestemb.cli.parse import parse_ints
from nestemb.errors import NestembError
from nestemb.maps.adapter import FIT_KINDS

migrate_app = typer.Typer(
    help="Move a collection of a running `nestemb serve` to a new model while it serves: "
         "start, watch, then finish (or cancel).", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")

MigrationKind = choices("MigrationKind", *FIT_KINDS)

FIELD_PARAMS = {"name": "collection", "authorization": "api_key_env"}
"""Error fields of the server whose CLI parameter has another name (any other field is its
parameter's name: ``sample_size``, ``encoder``, ``force``...)."""

KEY_HELP = ("environment variable holding the API key (if any; start, pause, resume, finish "
            "and cancel need an admin key)")


# --------------------------------------------------------------------------- shared options
def collection_option():
    return typer.Option(..., "--collection", help="the migrating collection")


def server_error(e: Any, params: set[str] | frozenset[str]) -> NestembError:
    """A :class:`~nestemb.service.client.ServiceError` as a CLI error: about the command's
    parameter that the server's ``field`` is (:data:`FIELD_PARAMS`, else the same name), so
    that the CLI names its option; otherwise the field is said in words.

    Example:
        >>> from nestemb.service.client import ServiceError
        >>> e = server_error(ServiceError(422, "sample_size: Input should be greater than or "
        ...                               "equal to 10", "sample_size"), {"sample_size"})
        >>> e.param, e.render("--sample-size")
        ('sample_size', '--sample-size: server answered 422: sample_size: Input should be greater than or equal to 10')
        >>> server_error(ServiceError(404, "collection 'c' does not exist", "name"),
        ...              {"collection"}).param
        'collection'
        >>> str(server_error(ServiceError(409, "live migrations need ...", "engine"), set()))
        'server answered 409: live migrations need ... (field engine)'
    """
    text = f"server answered {e.status}: {e.message}"
    param = FIELD_PARAMS.get(e.field, e.field) if e.field else None
    if param is not None and param in params:
        return NestembError(text, param=param)
    return NestembError(text + (f" (field {e.field})" if e.field else ""))


@contextlib.contextmanager
def _service(ctx: typer.Context, url: str, api_key_env: str) -> Iterator[Any]:
    """A :class:`ServiceClient` of ``url`` (the key from ``$api_key_env``); its errors leave
    as one-line :class:`NestembError` about the command's options."""
    import httpx

    from nestemb.service.client import ServiceClient, ServiceError, Unreachable

    params = {p.name for p in ctx.command.params if p.name}
    try:
        service = ServiceClient(url, os.environ.get(api_key_env) or None)
    except httpx.InvalidURL as e:
        raise NestembError(f"{{param}} {url!r} is not a URL ({e})", param="url") from None
    with service as client:
        try:
            yield client
        except ServiceError as e:
            raise server_error(e, params) from None
        except Unreachable as e:
            raise NestembError(f"{e} (is `nestemb serve` running there?)",
                               param="url") from None


# --------------------------------------------------------------------------- formatting
def _model(ref: dict) -> str:
    return ref.get("encoder") or ref.get("model_id") or f"{ref['nesting'][-1]}-dim vectors"


def _duration(s: float | None) -> str:
    """Seconds for a person.

    Example:
        >>> _duration(None), _duration(0.2), _duration(4.2), _duration(125), _duration(7380)
        ('–', '< 1 s', '4 s', '2 min 5 s', '2 h 3 min')
    """
    if s is None:
        return "–"
    s = int(round(s))
    if s < 1:
        return "< 1 s"
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _rate(r: float | None) -> str:
    """Points per second for a person.

    Example:
        >>> _rate(None), _rate(0.25), _rate(3.14159), _rate(1597.79)
        ('–', '0.25/s', '3.1/s', '1,598/s')
    """
    if not r:
        return "–"
    return f"{r:,.0f}/s" if r >= 100 else f"{r:.2g}/s"


def _share(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _state(st: dict) -> str:
    return st["state"] + (" (paused)" if st["paused"] else "") + (
        ", complete" if st["complete"] else "")


def _quality(st: dict) -> str:
    """One line on the measured map quality: the held-out gate and the probe."""
    m, p = st.get("map"), st.get("probe")
    parts = []
    if m:
        parts.append(f"map {m['forward_quality']:.3f}")
    if p:
        parts.append(f"probe {p['agreement']:.3f}")
    return " · ".join(parts)


def status_rows(st: dict, collection: str) -> list[tuple[str, str]]:
    """The rows of ``nestemb migrate status``: (what, value).

    Example:
        >>> st = {"state": "backfilling", "paused": False, "complete": False, "error": None,
        ...       "source": {"encoder": "a", "model_id": "a", "nesting": [32]},
        ...       "target": {"encoder": "b", "model_id": "b", "nesting": [32, 48]},
        ...       "mode": "encoder", "count": 400, "new_vectors": 400, "true": 300,
        ...       "mapped": 100, "backfilled": 0.75, "without_text": 0, "rate_per_s": 50.0,
        ...       "eta_s": 2.0, "sample_size": 100, "probe": None, "search_p99_ms": None,
        ...       "max_p99_ms": None, "throttled_s": 0.0,
        ...       "map": {"kind": "orthogonal", "pairs": 100, "forward_quality": 0.755,
        ...               "forward_interval": [0.69, 0.815], "gate": {"passed": True}}}
        >>> for what, value in status_rows(st, "c")[:6]:
        ...     print(f"{what}: {value}")
        state: backfilling
        model: a -> b (re-encoded by the server)
        progress: 300 of 400 true new-model vectors (75.0 %), 100 mapped
        rate: 50 points/s
        ETA: 2 s
        map: orthogonal, agreement@10 0.755 [0.690, 0.815] held out, 100 pairs; gate passed
    """
    rows = [("state", _state(st))]
    mode = "the client posts vectors" if st["mode"] == "client" else "re-encoded by the server"
    rows.append(("model", f"{_model(st['source'])} -> {_model(st['target'])} ({mode})"))
    if st["state"] in ("sampling", "collecting"):
        rows.append(("sample", f"{st['new_vectors']:,} of {min(st['sample_size'], st['count']):,}"
                               " new-model vectors to fit the maps on"))
    rows.append(("progress", f"{st['true']:,} of {st['count']:,} true new-model vectors "
                             f"({_share(st['backfilled'])}), {st['mapped']:,} mapped"))
    rows.append(("rate", _rate(st.get("rate_per_s")).replace("/s", " points/s")))
    rows.append(("ETA", _duration(st.get("eta_s"))))
    m = st.get("map")
    if m:
        lo, hi = m["forward_interval"]
        gate = m.get("gate") or {}
        verdict = "forced" if gate.get("forced") else ("passed" if gate.get("passed") else "–")
        rows.append(("map", f"{m['kind']}, agreement@10 {m['forward_quality']:.3f} "
                            f"[{lo:.3f}, {hi:.3f}] held out, {m['pairs']:,} pairs; gate "
                            f"{verdict}"))
    else:
        rows.append(("map", "not fitted yet"))
    p = st.get("probe")
    rows.append(("probe", f"agreement@10 {p['agreement']:.3f} of mapped vs true vectors, "
                          f"{p['gallery']:,} backfilled points, {p['queries']} queries"
                 if p else "–"))
    if st.get("search_p99_ms") is not None or st.get("max_p99_ms") is not None:
        p99 = "–" if st.get("search_p99_ms") is None else f"{st['search_p99_ms']:g} ms"
        bound = "none" if st.get("max_p99_ms") is None else f"{st['max_p99_ms']:g} ms"
        rows.append(("search p99", f"{p99} (backfill bound {bound}, waited "
                                   f"{st.get('throttled_s') or 0:g} s)"))
    if st.get("without_text"):
        rows.append(("no text", f"{st['without_text']:,} mapped points have no text to "
                                "re-encode (they stay mapped; finish with --force)"))
    if st.get("error"):
        rows.append(("error", str(st["error"])))
    nxt = {"failed": f"nestemb migrate cancel --collection {collection}"}.get(st["state"])
    if st["complete"]:
        nxt = f"nestemb migrate finish --collection {collection}"
    if nxt:
        rows.append(("next", nxt))
    return rows


def _print_status(st: dict, collection: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"migration of {collection}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for what, value in status_rows(st, collection):
        table.add_row(what, Text(value))  # Text: "[0.69, 0.81]" is no markup
    Console(highlight=False).print(table)


# --------------------------------------------------------------------------- verbs
@migrate_app.command()
def start(
    ctx: typer.Context,
    collection: str = collection_option(),
    # the service's field is ``encoder``: its errors name --model
    encoder: Optional[str] = typer.Option(
        None, "--model", help="the new model: one of the server's encoders ('minilm' or a NAME "
                              "of its --models); the server re-encodes the stored texts"),
    nesting: Optional[str] = typer.Option(
        None, "--nesting", help="instead of --model: the new model's prefix dims (e.g. "
                                "64,128,256); the client posts the new vectors"),
    model_id: Optional[str] = typer.Option(
        None, "--model-id", help="with --nesting: the new model's id, as requests name it "
                                 "(server default: 'new')"),
    text_field: Optional[str] = typer.Option(
        None, "--text-field", help="payload field holding each point's text, re-encoded by "
                                   "--model (server default: text)"),
    sample_size: Optional[int] = typer.Option(
        None, "--sample-size", help="points the maps are fitted on (server default: 2000)"),
    min_quality: Optional[float] = typer.Option(
        None, "--min-quality", help="quality gate in [0, 1]: the map's held-out neighbour "
                                    "agreement@10 must reach it (server default: 0.5)"),
    force: bool = typer.Option(False, "--force", help="map even if the quality gate refuses"),
    kind: MigrationKind = typer.Option(  # type: ignore[valid-type]
        MigrationKind.auto, "--kind", help="map kind: auto (orthogonal, affine and cluster "
                                           "Procrustes; the best held-out agreement wins) or one "
                                           "of them, mlp or lowrank"),
    max_p99_ms: Optional[float] = typer.Option(
        None, "--max-p99-ms", help="search p99 (ms) the backfill keeps under (server default: "
                                   "3x the p99 when it starts)"),
    batch: Optional[int] = typer.Option(
        None, "--batch-size", help="texts re-encoded per step (server default: 64)"),
    url: str = url_option(),
    api_key_env: str = api_key_env_option(KEY_HELP),
) -> None:
    """Start moving a collection to a new model: the server's --model (it re-encodes the stored
    texts), or vectors posted by the client (--nesting, --model-id).

    Searches and writes go on meanwhile; `nestemb migrate watch` follows it, `finish` makes
    the new model the collection's once the backfill is complete."""
    if (encoder is None) == (nesting is None):
        raise NestembError("give --model (the server re-encodes the stored texts) or --nesting "
                           "(the client posts the new vectors), one of them")
    if model_id is not None and nesting is None:
        raise NestembError("--model-id goes with --nesting (a server encoder has its own id)",
                           param="model_id")
    dims = parse_ints(nesting, "--nesting")
    body = {"encoder": encoder, "nesting": list(dims) if dims is not None else None,
            "model_id": model_id, "text_field": text_field, "sample_size": sample_size,
            "min_quality": min_quality, "force": force or None, "kind": kind.value,
            "max_p99_ms": max_p99_ms, "batch": batch}
    with _service(ctx, url, api_key_env) as client:
        st = client.migrate(collection, **body)
    typer.echo(f"{collection}: migrating to {_model(st['target'])} ({st['state']})")
    _print_status(st, collection)


@migrate_app.command()
def status(
    ctx: typer.Context,
    collection: str = collection_option(),
    as_json: bool = typer.Option(False, "--json", help="print the server's JSON status"),
    url: str = url_option(),
    api_key_env: str = api_key_env_option(KEY_HELP),
) -> None:
    """The migration's state, progress, rate, ETA and measured map quality."""
    with _service(ctx, url, api_key_env) as client:
        st = client.migration(collection)
    if as_json:
        typer.echo(json.dumps(st, indent=1))
    else:
        _print_status(st, collection)


@migrate_app.command()
def watch(
    ctx: typer.Context,
    collection: str = collection_option(),
    interval: float = typer.Option(2.0, "--interval", help="seconds between two polls"),
    url: str = url_option(),
    api_key_env: str = api_key_env_option(KEY_HELP),
) -> None:
    """Follow the migration with a progress bar until its backfill is complete (exit 0) or it
    failed (exit 1)."""
    from nestemb.progress import progress_bar

    if not interval > 0:
        raise NestembError(f"{{param}} must be positive, got {interval:g}", param="interval")
    with _service(ctx, url, api_key_env) as client, progress_bar(info=True) as bar:
        task = None
        while True:
            st = client.migration(collection)
            desc = f"{collection}: {_state(st)}"
            info = " · ".join(filter(None, (
                _rate(st['rate_per_s']) if st.get("rate_per_s") else "",
                f"ETA {_duration(st['eta_s'])}" if st.get("eta_s") else "", _quality(st))))
            if task is None:
                task = bar.add_task(desc, total=st["count"], info=info)
            bar.update(task, completed=st["true"], total=st["count"], description=desc,
                       info=info)
            if st["state"] == "failed" or st["complete"]:
                break
            time.sleep(interval)
    if st["state"] == "failed":
        from rich.console import Console

        Console(stderr=True).print(
            f"[bold red]error:[/] the migration of {collection!r} failed: {st.get('error')} "
            f"(cancel it: nestemb migrate cancel --collection {collection})", highlight=False,
            soft_wrap=True, markup=True)
        raise typer.Exit(1)
    typer.echo(f"{collection}: backfill complete: {st['true']:,} of {st['count']:,} points "
               f"re-encoded by {_model(st['target'])}; make it the collection's model with "
               f"`nestemb migrate finish --collection {collection}`")


def _said(st: dict, collection: str, what: str) -> None:
    typer.echo(f"{collection}: migration {what} ({st['state']}, "
               f"{_share(st['backfilled'])} backfilled)")


@migrate_app.command()
def pause(
    ctx: typer.Context,
    collection: str = collection_option(),
    url: str = url_option(),
    api_key_env: str = api_key_env_option(KEY_HELP),
) -> None:
    """Pause the migration's background work (searches and writes go on)."""
    with _service(ctx, url, api_key_env) as client:
        _said(client.pause_migration(collection), collection, "paused")


@migrate_app.command()
def resume(
    ctx: typer.Context,
    collection: str = collection_option(),
    url: str = url_option(),
    api_key_env: str = api_key_env_option(KEY_HELP),
) -> None:
    """Resume a paused migration."""
    with _service(ctx, url, api_key_env) as client:
        _said(client.resume_migration(collection), collection, "resumed")


@migrate_app.command()
def finish(
    ctx: typer.Context,
    collection: str = collection_option(),
    force: bool = typer.Option(False, "--force", help="finish before the backfill is complete "
                                                      "(the mapped vectors become the "
                                                      "collection's)"),
    url: str = url_option(),
    api_key_env: str = api_key_env_option(KEY_HELP),
) -> None:
    """Make the new model the collection's model and drop the old vectors (one transaction)."""
    with _service(ctx, url, api_key_env) as client:
        info = client.finish_migration(collection, force=force)["collection"]
    typer.echo(f"{collection}: finished: its model is now {_model(info)}, {info['count']:,} "
               f"points, nesting {info['nesting']}")


@migrate_app.command()
def cancel(
    ctx: typer.Context,
    collection: str = collection_option(),
    url: str = url_option(),
    api_key_env: str = api_key_env_option(KEY_HELP),
) -> None:
    """Drop the new vectors and the migration (one transaction): the collection keeps its
    model."""
    with _service(ctx, url, api_key_env) as client:
        info = client.cancel_migration(collection)["collection"]
    typer.echo(f"{collection}: migration cancelled: its model stays {_model(info)}, "
               f"{info['count']:,} points")
