"""``nestemb backend export|search``: a funnel in Qdrant or Milvus (see :mod:`nestemb.backends`).

``--target`` is where the engine lives: for ``qdrant`` a server / cluster URL
(``http(s)://...``, checked at once) or a local-mode folder; for ``qdrant-edge`` a folder
holding one shard folder per collection (``TARGET/NAME``, the layout ``nestemb serve --backend
qdrant-edge --backend-url TARGET`` serves); for ``milvus`` a server / cluster URI or a
milvus-lite ``.db`` file. The engine's API key / token is read from ``--key-env``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from nestemb.cli.app import app, check_out_file, choices
from nestemb.cli.parse import parse_ints
from nestemb.errors import NestembError

backend_app = typer.Typer(help="Export a collection or index to Qdrant / Milvus and search it "
                               "there with the same funnel.", no_args_is_help=True)
app.add_typer(backend_app, name="backend")

Engine = choices("Engine", "qdrant-edge", "qdrant", "milvus")


def _load_source(source: Path):
    """An index directory (its own stage configuration) or an embedding directory:
    ``(FunnelIndex | vectors, ids or None, manifest or None)``."""
    from nestemb.nesting import MANIFEST_NAME, Manifest, load_embeddings

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
    """``--dims`` / ``--shortlist`` as tuples (a single stage needs no shortlist)."""
    dims_t = parse_ints(dims, "--dims")
    if shortlist is not None and dims is None:
        raise NestembError("--shortlist needs --dims")
    sl_t = (parse_ints(shortlist, "--shortlist") or ()) if shortlist is not None else None
    if sl_t is None and dims_t is not None and len(dims_t) == 1:
        sl_t = ()
    return dims_t, sl_t


def _check_collection(name: str) -> None:
    """Collection names as the service takes them (also a folder name for Qdrant Edge)."""
    from nestemb.service.app import NAME_RE

    if not NAME_RE.fullmatch(name):
        raise NestembError(f"--collection: invalid name {name!r}: use 1-64 letters, digits, "
                           "'_' or '-', starting with a letter or digit")


def _key(key_env: str) -> Optional[str]:
    return os.environ.get(key_env) or None


@backend_app.command("export")
def export(
    source: Path = typer.Argument(..., help="embedding directory (`nestemb embed`) or index "
                                            "directory (`nestemb index build`)"),
    engine: Engine = typer.Option(..., help="qdrant-edge, qdrant or milvus"),  # type: ignore[valid-type]
    target: str = typer.Option(..., help="URL or path of the engine (see `nestemb backend "
                                         "--help`)"),
    collection: str = typer.Option(..., help="collection name"),
    dims: Optional[str] = typer.Option(None, help="stage dims, e.g. 64,384 (required for an "
                                                  "embedding directory; default: the index's)"),
    shortlist: Optional[str] = typer.Option(None, help="candidates kept per stage but the "
                                                       "last, e.g. 100"),
    quantize: str = typer.Option("int8", help="Qdrant: int8 codes for the first prefix, or "
                                              "none"),
    overwrite: bool = typer.Option(False, help="replace an existing collection (only one "
                                               "exported by nestemb)"),
    key_env: str = typer.Option("NESTEMB_BACKEND_KEY", help="environment variable holding "
                                                            "the engine's API key / token"),
) -> None:
    """Export an embedding or index directory into a Qdrant / Milvus collection laid out for
    the funnel (a vector per stage prefix), with its manifest."""
    import time

    _check_collection(collection)
    dims_t, sl_t = _stages(dims, shortlist)
    if quantize not in ("int8", "none"):
        raise NestembError(f"--quantize must be int8 or none, got {quantize!r}")
    src, ids, man = _load_source(source)
    if man is not None and (dims_t is None or sl_t is None):
        raise NestembError("--dims and --shortlist are required to export an embedding "
                           "directory (e.g. --dims 64,384 --shortlist 100)")
    kw = dict(dims=dims_t, shortlist=sl_t, overwrite=overwrite)
    if man is not None:
        kw.update(manifest=man, ids=ids)
    t = time.perf_counter()
    if engine.value == "qdrant-edge":
        from nestemb.backends.qdrant import export_qdrant_edge

        funnel = export_qdrant_edge(src, Path(target) / collection, quantize=quantize, **kw)
    else:
        from nestemb.service.points import open_backend

        be = open_backend(engine.value, target, api_key=_key(key_env))
        try:
            if engine.value == "qdrant":
                from nestemb.backends.qdrant import export_qdrant

                funnel = export_qdrant(src, be.client, collection, quantize=quantize, **kw)
            else:
                from nestemb.backends.milvus import export_milvus

                funnel = export_milvus(src, be.client, collection, **kw)
        finally:
            be.close()
    info = funnel.logical_bytes_per_point()
    n, stages = len(funnel), (funnel.dims, funnel.shortlist)
    close = getattr(funnel, "close", None)
    if engine.value == "qdrant-edge" and close is not None:
        close()
    typer.echo(f"exported {n} points to {engine.value} collection {collection!r} at {target} "
               f"in {time.perf_counter() - t:.1f} s (dims {list(stages[0])}, shortlist "
               f"{list(stages[1])}; {info['vectors']:.0f} B of vectors per point, "
               f"{info['ratio']:.2f}x one full vector + the short prefix)")


@backend_app.command("search")
def search(
    engine: Engine = typer.Option(..., help="qdrant-edge, qdrant or milvus"),  # type: ignore[valid-type]
    target: str = typer.Option(..., help="URL or path of the engine"),
    collection: str = typer.Option(..., help="collection name"),
    queries: Path = typer.Option(..., help="query embedding directory (same model and version "
                                           "as the collection)"),
    k: int = typer.Option(10, "-k", "--k", help="results per query"),
    dims: Optional[str] = typer.Option(None, help="stage dims (default: the exported ones)"),
    shortlist: Optional[str] = typer.Option(None, help="candidates kept per stage but the "
                                                       "last"),
    limit: Optional[int] = typer.Option(None, help="search only the first N queries"),
    out: Optional[Path] = typer.Option(None, help="write all results here: .json (as `nestemb "
                                                  "index search`) or .npz (arrays ids, scores)"),
    overwrite: bool = typer.Option(False, help="replace an existing --out file"),
    show: int = typer.Option(5, help="print the results of the first N queries"),
    exact: bool = typer.Option(False, help="Qdrant: scan the first prefix exhaustively (no "
                                           "HNSW, no quantization shortcuts)"),
    key_env: str = typer.Option("NESTEMB_BACKEND_KEY", help="environment variable holding "
                                                            "the engine's API key / token"),
) -> None:
    """Search a collection exported by `nestemb backend export` with the funnel run inside the
    engine."""
    import numpy as np

    from nestemb.nesting import load_embeddings

    _check_collection(collection)
    if k < 1:
        raise NestembError(f"-k must be at least 1, got {k}")
    if limit is not None and limit < 1:
        raise NestembError(f"--limit must be at least 1, got {limit}")
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
    be = None
    if engine.value == "qdrant-edge":
        from nestemb.backends.qdrant import QdrantFunnel

        funnel = QdrantFunnel.open_edge(Path(target) / collection, dims=dims_t, shortlist=sl_t,
                                        manifest=man, exact=exact)
    else:
        from nestemb.service.points import open_backend

        be = open_backend(engine.value, target, api_key=_key(key_env))
    try:
        if engine.value == "qdrant":
            from nestemb.backends.qdrant import QdrantFunnel

            funnel = QdrantFunnel(be.client, collection, dims=dims_t, shortlist=sl_t,
                                  manifest=man, exact=exact)
        elif engine.value == "milvus":
            from nestemb.backends.milvus import MilvusFunnel

            if exact:
                raise NestembError("--exact applies to qdrant and qdrant-edge (Milvus searches "
                                   "as the collection's index says)")
            funnel = MilvusFunnel(be.client, collection, dims=dims_t, shortlist=sl_t,
                                  manifest=man)
        scores, ids = funnel.search(Q, k=k, manifest=man)
        close = getattr(funnel, "close", None)
        if close is not None:
            close()
    finally:
        if be is not None:
            be.close()
    qids = list(qids[: len(Q)]) if qids is not None else list(range(len(Q)))
    for i in range(min(show, len(Q))):
        hits = ", ".join(f"{h} ({s:.3f})" for h, s in zip(ids[i].tolist(), scores[i].tolist()))
        typer.echo(f"{qids[i]}: {hits}")
    if out is not None:
        if out.suffix == ".json":
            from nestemb.io import write_json

            write_json(out, {str(q): {"ids": r.tolist(), "scores": s.tolist()}
                             for q, r, s in zip(qids, ids, scores)})
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez(out, ids=ids, scores=scores, query_ids=np.asarray([str(q) for q in qids]))
        typer.echo(f"wrote results for {len(Q)} queries to {out}")
