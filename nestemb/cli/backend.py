"""``nestemb backend export|search``: a funnel in Qdrant or Milvus (see :mod:`nestemb.engines`;
every engine is reached through its registry, :func:`nestemb.engines.open_engine`).

``--engine-url`` is where the engine lives: for ``qdrant`` a server / cluster URL
(``http(s)://...``, checked at once) or a local-mode folder; for ``qdrant-edge`` a folder
holding one shard folder per collection (``URL/NAME``, the layout ``nestemb serve --engine
qdrant-edge --engine-url URL`` serves); for ``milvus`` a server / cluster URI or a milvus-lite
``.db`` file. The engine's API key / token is read from ``--engine-key-env``: the same three
flags as ``nestemb serve``. ``--stages``/``--shortlist`` are the funnel's stage prefixes, as in
``nestemb index build``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from nestemb.cli.app import app, check_out_file, choices, renamed, search_result, write_result
from nestemb.checks import positive_int
from nestemb.cli.parse import parse_ints
from nestemb.engines import ENGINES, REGISTRY, check_name, open_engine
from nestemb.errors import NestembError

backend_app = typer.Typer(help="Export a collection or index to Qdrant / Milvus and search it "
                               "there with the same funnel.", no_args_is_help=True)
app.add_typer(backend_app, name="backend")

Engine = choices("Engine", *ENGINES)
ENGINE_HELP = ", ".join(ENGINES)
URL_HELP = "URL or path of the engine: " + "; ".join(f"{e.name}: {e.address}"
                                                     for e in REGISTRY.values())
KEY_ENV = "NESTEMB_BACKEND_KEY"
"""Default ``--engine-key-env`` of ``backend`` and ``serve``."""
RENAMED = renamed({"--target": "--engine-url", "--key-env": "--engine-key-env",
                   "--dims": "--stages"})


def _load_source(source: Path):
    """An index directory (its own stage configuration) or an embedding directory:
    ``(FunnelIndex | vectors, ids or None, manifest or None)``."""
    from nestemb.nesting import MANIFEST_NAME, Manifest
    from nestemb.folders import load_embeddings

    if not source.is_dir() or not (source / MANIFEST_NAME).is_file():
        raise NestembError(f"SOURCE must be an embedding or index directory (with "
                           f"{MANIFEST_NAME}), got {source}")
    kind = Manifest.load(source).kind
    if kind == "embeddings":
        X, man, ids = load_embeddings(source, mmap=False, with_ids=True)
        return X, ids, man
    from nestemb.index import load_index

    return load_index(source, mmap=False), None, None


def _stages(dims: Optional[str], shortlist: Optional[str]):
    """``--stages`` / ``--shortlist`` as tuples (a single stage needs no shortlist)."""
    dims_t = parse_ints(dims, "--stages")
    if shortlist is not None and dims is None:
        raise NestembError("--shortlist needs --stages")
    sl_t = (parse_ints(shortlist, "--shortlist") or ()) if shortlist is not None else None
    if sl_t is None and dims_t is not None and len(dims_t) == 1:
        sl_t = ()
    return dims_t, sl_t


def _has(kind: str, option: str) -> bool:
    """Whether engine ``kind`` of the registry takes the export or search option ``option``."""
    cls = REGISTRY[kind].engine
    return option in cls.export_options + cls.search_options


def _key(engine_key_env: str) -> Optional[str]:
    return os.environ.get(engine_key_env) or None


@backend_app.command("export", cls=RENAMED)
def export(
    source: Path = typer.Argument(..., help="embedding directory (`nestemb embed`) or index "
                                            "directory (`nestemb index build`)"),
    engine: Engine = typer.Option(..., help=ENGINE_HELP),  # type: ignore[valid-type]
    # named url as in open_engine, so that the library's errors about url name --engine-url
    url: str = typer.Option(..., "--engine-url", help=URL_HELP),
    collection: str = typer.Option(..., help="collection name"),
    dims: Optional[str] = typer.Option(None, "--stages", help="stage prefixes, e.g. 64,384 "
                                       "(required for an embedding directory; default: the "
                                       "index's)"),
    shortlist: Optional[str] = typer.Option(None, help="candidates kept per stage but the "
                                                       "last, e.g. 100"),
    quantize: str = typer.Option("int8", help="Qdrant: int8 codes for the first prefix, or "
                                              "none"),
    overwrite: bool = typer.Option(False, help="replace an existing collection (only one "
                                               "exported by nestemb)"),
    engine_key_env: str = typer.Option(KEY_ENV, help="environment variable holding the "
                                                     "engine's API key / token"),
) -> None:
    """Export an embedding or index directory into a Qdrant / Milvus collection laid out for
    the funnel (a vector per stage prefix), with its manifest."""
    import time

    check_name(collection)
    dims_t, sl_t = _stages(dims, shortlist)
    if quantize not in ("int8", "none"):
        raise NestembError(f"--quantize must be int8 or none, got {quantize!r}")
    src, ids, man = _load_source(source)
    if man is not None and (dims_t is None or sl_t is None):
        raise NestembError("--stages and --shortlist are required to export an embedding "
                           "directory (e.g. --stages 64,384 --shortlist 100)")
    kw = dict(dims=dims_t, shortlist=sl_t, overwrite=overwrite)
    if man is not None:
        kw.update(manifest=man, ids=ids)
    options = {"quantize": quantize} if _has(engine.value, "quantize") else {}
    t = time.perf_counter()
    eng = open_engine(engine.value, url, api_key=_key(engine_key_env))
    try:
        funnel = eng.export(src, collection, **kw, **options)
        info = funnel.logical_bytes_per_point()
        n, stages = len(funnel), (funnel.dims, funnel.shortlist)
        funnel.close()
    finally:
        eng.close()
    typer.echo(f"exported {n} points to {engine.value} collection {collection!r} at {url} "
               f"in {time.perf_counter() - t:.1f} s (dims {list(stages[0])}, shortlist "
               f"{list(stages[1])}; {info['vectors']:.0f} B of vectors per point, "
               f"{info['ratio']:.2f}x one full vector + the short prefix)")


@backend_app.command("search", cls=RENAMED)
def search(
    engine: Engine = typer.Option(..., help=ENGINE_HELP),  # type: ignore[valid-type]
    url: str = typer.Option(..., "--engine-url", help=URL_HELP),
    collection: str = typer.Option(..., help="collection name"),
    queries: Path = typer.Option(..., help="query embedding directory (same model and version "
                                           "as the collection)"),
    k: int = typer.Option(10, "-k", "--k", help="results per query"),
    dims: Optional[str] = typer.Option(None, "--stages", help="stage prefixes (default: the "
                                       "exported ones)"),
    shortlist: Optional[str] = typer.Option(None, help="candidates kept per stage but the "
                                                       "last"),
    limit: Optional[int] = typer.Option(None, help="search only the first N queries"),
    out: Optional[Path] = typer.Option(None, help="write all results here: .json (as `nestemb "
                                                  "index search`) or .npz (arrays ids, scores)"),
    overwrite: bool = typer.Option(False, help="replace an existing --out file"),
    show: int = typer.Option(5, help="print the results of the first N queries"),
    exact: bool = typer.Option(False, help="Qdrant: scan the first prefix exhaustively (no "
                                           "HNSW, no quantization shortcuts)"),
    engine_key_env: str = typer.Option(KEY_ENV, help="environment variable holding the "
                                                     "engine's API key / token"),
) -> None:
    """Search a collection exported by `nestemb backend export` with the funnel run inside the
    engine."""
    import numpy as np

    from nestemb.folders import load_embeddings

    check_name(collection)
    positive_int(k, "k")
    positive_int(limit, "limit", allow_none=True)
    if show < 0:
        raise NestembError(f"--show must be >= 0, got {show}")
    if out is not None:
        if out.suffix not in (".json", ".npz"):
            raise NestembError(f"--out must end in .json or .npz, got {out}")
        check_out_file(out, overwrite)
    dims_t, sl_t = _stages(dims, shortlist)
    if not queries.is_dir():
        raise NestembError(f"query embedding directory not found: {queries}")
    Q, man, qids = load_embeddings(queries, mmap=False, with_ids=True)
    Q = np.asarray(Q if limit is None else Q[:limit])
    options = {}
    if exact:
        if not _has(engine.value, "exact"):
            which = ", ".join(e for e in ENGINES if _has(e, "exact"))
            raise NestembError(f"--exact applies to {which} ({engine.value} searches as the "
                               "collection's index says)")
        options["exact"] = True
    eng = open_engine(engine.value, url, api_key=_key(engine_key_env))
    try:
        funnel = eng.funnel(collection, dims_t, sl_t, man, **options)
        try:
            scores, ids = funnel.search(Q, k=k, manifest=man)
        finally:
            funnel.close()
    finally:
        eng.close()
    qids = list(qids[: len(Q)]) if qids is not None else list(range(len(Q)))
    for i in range(min(show, len(Q))):
        hits = ", ".join(f"{h} ({s:.3f})" for h, s in zip(ids[i].tolist(), scores[i].tolist()))
        typer.echo(f"{qids[i]}: {hits}")
    if out is not None:
        what = f"results for {len(Q)} queries"
        if out.suffix == ".json":
            write_result(out, search_result(qids, ids, scores), what)
        else:
            from nestemb.io import atomic_file

            with atomic_file(out, "wb") as f:
                np.savez(f, ids=ids, scores=scores, query_ids=np.asarray([str(q) for q in qids]))
            typer.echo(f"wrote {what} to {out}")
