"""CLI commands ``nestemb retrofit fit|apply``: nesting retrofits for frozen embeddings.

``fit`` learns a nesting retrofit on an embedding directory (of any encoder, including vectors
computed elsewhere), unsupervised or with paired query/document embedding directories;
``apply`` writes the retrofit's output for an embedding directory of the same model as an
ordinary embedding directory (the indexes accept it). Library errors become one-line messages
with exit status 2.

``nestemb adaptor fit|apply`` (the name before the rename, one letter from ``adapter``) still
runs the same commands for one release, hidden from the help, and says on stderr what replaced
it; ``apply`` there still takes ``--adaptor``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nestemb.cli.app import app, check_out_dir, choices, renamed, threads_option
from nestemb.cli.parse import parse_dims
from nestemb.errors import NestembError
from nestemb.maps.retrofit import RETROFIT_KINDS
from nestemb.progress import plural

retrofit_app = typer.Typer(help="Nesting retrofits: make every prefix of a frozen embedding good.",
                           no_args_is_help=True)
app.add_typer(retrofit_app, name="retrofit")
adaptor_app = typer.Typer(help="Renamed: use nestemb retrofit.", no_args_is_help=True)
app.add_typer(adaptor_app, name="adaptor", hidden=True)


@adaptor_app.callback()
def _renamed() -> None:
    typer.echo("note: `nestemb adaptor` is now `nestemb retrofit` (same options; --adaptor is "
               "--retrofit); this alias goes in the next release", err=True)

Kind = choices("Kind", *RETROFIT_KINDS)

def _load(path: Path, flag: str):
    from nestemb.folders import load_embeddings

    if not path.is_dir():
        raise NestembError(f"{flag} embedding directory not found: {path}")
    X, man, ids = load_embeddings(path, with_ids=True)
    return X, man, ids


_FIT_RENAMED = renamed({"--k": "--neighbours"})


@retrofit_app.command("fit", cls=_FIT_RENAMED)
@adaptor_app.command("fit", cls=_FIT_RENAMED)
def fit(
    # named X as in fit_retrofit, so that the library's errors about X name this flag
    X: Path = typer.Option(..., "--embeddings", help="embedding directory to fit on (corpus texts of the frozen model)"),
    out: Path = typer.Option(..., help="retrofit directory to write"),
    kind: Kind = typer.Option(Kind.linear, help="linear map, or linear map plus a small residual MLP"),
    pair_queries: Optional[Path] = typer.Option(
        None, help="supervised: query embedding directory; row i pairs with row i of --pair-docs"),
    pair_docs: Optional[Path] = typer.Option(
        None, help="supervised: positive-document embedding directory, paired by row with --pair-queries"),
    nesting: Optional[str] = typer.Option(None, help="prefix sizes, e.g. 8,16,32,64,128,256,384 "
                                          "(default: doubling from 8 to the width)"),
    steps: Optional[int] = typer.Option(None, help="optimisation steps (default: scales with the rows)"),
    batch_size: Optional[int] = typer.Option(None, help="rows per step (default: up to 512)"),
    # named k as in fit_retrofit, so that the library's errors about k name --neighbours
    k: int = typer.Option(10, "--neighbours", help="neighbours per row for the top-k loss"),
    center: bool = typer.Option(False, help="start from centered PCA instead of the uncentered rotation"),
    seed: int = typer.Option(0, help="random seed"),
    threads: Optional[int] = threads_option("torch CPU threads during the fit (default: 1 for "
                                            "small batches, else torch's)"),
    overwrite: bool = typer.Option(False, help="replace an existing --out directory"),
) -> None:
    """Fit a nesting retrofit on frozen embeddings (unsupervised, or supervised with pairs)."""
    import numpy as np

    from nestemb.maps import fit_retrofit
    from nestemb.maps.retrofit import ARTEFACT_KIND

    if (pair_queries is None) != (pair_docs is None):
        raise NestembError("give both --pair-queries and --pair-docs (paired rows), or neither")
    dims = parse_dims(nesting, "--nesting")
    vectors, man, _ = _load(X, "--embeddings")
    pairs = None
    if pair_queries is not None:
        Q, qman, _ = _load(pair_queries, "--pair-queries")
        P, pman, _ = _load(pair_docs, "--pair-docs")
        for flag, other in (("--pair-queries", qman), ("--pair-docs", pman)):
            if (other.model_id, other.model_version) != (man.model_id, man.model_version):
                raise NestembError(
                    f"{flag} come from model {other.model_id!r} version {other.model_version!r}, "
                    f"--embeddings from {man.model_id!r} version {man.model_version!r}: all "
                    "three must be embeddings of the same model"
                )
        if len(Q) != len(P):
            raise NestembError(
                f"--pair-queries has {len(Q)} rows but --pair-docs has {len(P)}: rows must be "
                "paired one to one"
            )
        pairs = (np.asarray(Q), np.asarray(P))
    check_out_dir(out, overwrite, ARTEFACT_KIND)  # before the fit
    ad = fit_retrofit(np.asarray(vectors), pairs, kind=kind.value, nesting=dims, source_ref=man,
                      steps=steps, batch_size=batch_size, k=k, center=center, seed=seed,
                      threads=threads)
    ad.save(out, overwrite=overwrite)
    info = ad.fit_info_
    mode = f"supervised on {plural(info['pairs'], 'pair')}" if pairs is not None else "unsupervised"
    typer.echo(f"fitted {'an' if kind is Kind.mlp else 'a'} {kind.value} nesting retrofit "
               f"({mode}) on {plural(info['rows'], 'row')} of {man.model_id} in "
               f"{info['seconds']:.1f} s ({plural(info['steps'], 'step')}); nesting "
               f"{list(ad.nesting_)}; output model {ad.output_model_id} {ad.version_} -> {out}")


_APPLY_RENAMED = renamed({"--adaptor": "--retrofit"})


@retrofit_app.command("apply", cls=_APPLY_RENAMED)
@adaptor_app.command("apply", cls=_APPLY_RENAMED)
def apply(
    retrofit: Path = typer.Option(..., "--retrofit", help="retrofit directory (nestemb retrofit fit)"),
    embeddings: Path = typer.Option(..., help="embedding directory of the model the retrofit was fitted on"),
    out: Path = typer.Option(..., help="output embedding directory"),
    overwrite: bool = typer.Option(False, help="replace an existing --out directory"),
) -> None:
    """Write the retrofit's output for an embedding directory as a new embedding directory
    (manifest: source model + retrofit, version = retrofit weights hash)."""
    import numpy as np

    from nestemb.maps import check_source, load_retrofit, save_retrofit_embeddings

    if not retrofit.is_dir():
        raise NestembError(f"--retrofit directory not found: {retrofit}")
    ad = load_retrofit(retrofit)
    X, man, ids = _load(embeddings, "--embeddings")
    check_source(man, ad)  # before writing anything
    check_out_dir(out, overwrite, "embeddings")
    save_retrofit_embeddings(out, np.asarray(X), man, ad, ids=ids, overwrite=overwrite)
    typer.echo(f"wrote {len(X)} embeddings of {ad.output_model_id} {ad.version_} (nesting "
               f"{list(ad.nesting_)}) to {out}")
