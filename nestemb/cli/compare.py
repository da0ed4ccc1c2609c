"""``nestemb compare --embeddings-a A --embeddings-b B``: how alike two embedding files of the same items are, per prefix.

Both files must hold the same items in the same order (their ``ids.json``); the table covers the
prefixes the two nestings share; ``--out`` writes ``compare.json`` (every measure as a prefix of
A x prefix of B matrix, the per-prefix values and the mutual k-NN permutation tests) and one heat
map per measure.

The work is a few hundred tall-and-thin matrix products (items x prefix of A by items x prefix
of B). ``--threads 1`` is the default because OpenBLAS threads that spin-wait for a core another
process holds make these products many times slower (measured on a shared 2-core machine: 47 s
with 2 threads, 10 s with 1, for two 60,000 x 256 files); on an idle machine ``--threads 0``
lets BLAS use every core.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Optional

import typer

from nestemb.cli.app import app, check_out_dir, moved_argument, renamed
from nestemb.cli.parse import parse_ints
from nestemb.errors import NestembError

_DEFAULT_MEASURES = "cka,cka-debiased,procrustes,mutual-knn,neuron-one-to-one,neuron-semi"
_TITLES = {
    "cka": "linear CKA",
    "cka_debiased": "linear CKA (debiased)",
    "procrustes": "Procrustes distance (lower = more alike)",
    "mutual_knn": "mutual k-NN",
    "neuron_one_to_one": "units matched one-to-one",
    "neuron_semi": "units semi-matched",
}


def _check_same_items(ids_a: list | None, ids_b: list | None, a: Path, b: Path) -> None:
    """Refuse two files that do not hold the same items in the same order, and a file whose
    ids repeat (its rows cannot be told apart), naming a duplicate."""
    from nestemb.folders import check_unique_ids

    for ids, path in ((ids_a, a), (ids_b, b)):
        if ids is None:
            raise NestembError(
                f"{path} has no ids.json: cannot check that both files hold the same items"
            )
        try:
            check_unique_ids(ids)
        except NestembError as e:
            raise NestembError(f"{path}: {e}") from None
    if ids_a == ids_b:
        return
    if len(ids_a) != len(ids_b):
        raise NestembError(f"{a} holds {len(ids_a)} items but {b} holds {len(ids_b)}")
    only_a = set(map(str, ids_a)) - set(map(str, ids_b))
    if only_a:
        raise NestembError(
            f"{a} and {b} hold different items: id {sorted(only_a)[0]!r} is in A but not in B "
            f"({len(only_a)} such ids)"
        )
    row = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y)
    raise NestembError(
        f"{a} and {b} hold the same items in another order (row {row}: {ids_a[row]!r} vs "
        f"{ids_b[row]!r}): write them in the same order"
    )


def _blas_threads(threads: int) -> contextlib.AbstractContextManager:
    """Limit numpy's BLAS to ``threads`` threads inside the block (0: leave it alone)."""
    if threads == 0:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a transitive dependency (scikit-learn); without it, the default
        return contextlib.nullcontext()
    return threadpool_limits(threads, user_api="blas")


def _dims(text: Optional[str], flag: str, nesting: tuple[int, ...], width: int) -> tuple[int, ...]:
    from nestemb.nesting import validate_nesting

    if text is None:
        return nesting
    try:
        dims = validate_nesting(parse_ints(text, flag))
    except NestembError as e:
        msg = str(e)
        raise NestembError(msg if msg.startswith(flag) else f"{flag}: {msg}") from None
    if dims[-1] > width:
        raise NestembError(f"{flag} asks for prefix {dims[-1]} but the file is {width} wide")
    return dims


@app.command(cls=renamed({"--k": "--neighbours", "-k": "--neighbours"}))
def compare(
    embeddings_a: Optional[Path] = typer.Option(None, "--embeddings-a", help="embedding directory A"),
    embeddings_b: Optional[Path] = typer.Option(
        None, "--embeddings-b", help="embedding directory B (the same items in the same order)"),
    old_a: Optional[Path] = typer.Argument(None, hidden=True, metavar="A"),
    old_b: Optional[Path] = typer.Argument(None, hidden=True, metavar="B"),
    dims_a: Optional[str] = typer.Option(
        None, help="prefixes of A, e.g. 8,16,32 (default: A's nesting)"
    ),
    dims_b: Optional[str] = typer.Option(None, help="prefixes of B (default: B's nesting)"),
    measures: str = typer.Option(_DEFAULT_MEASURES, help="comma-separated measures"),
    # named k as in compare_prefixes, so that the library's errors about k name --neighbours
    k: int = typer.Option(10, "--neighbours", help="neighbours for mutual k-NN"),
    knn_sample: int = typer.Option(
        5000, help="items mutual k-NN compares, drawn with --seed (0: all; costs O(n^2))"
    ),
    permutations: int = typer.Option(100, help="permutations of the mutual k-NN null (0: none)"),
    threshold: float = typer.Option(0.5, help="|correlation| a neuron match must reach"),
    seed: int = typer.Option(0, help="seed of the k-NN sample and the permutations"),
    threads: int = typer.Option(
        1, help="BLAS threads (0: the library default, all cores); see the module docstring"
    ),
    out: Optional[Path] = typer.Option(None, help="output directory: compare.json and heat maps"),
    overwrite: bool = typer.Option(False, help="replace an existing --out directory"),
) -> None:
    """Compare two embedding files of the same items, per prefix: CKA (biased, debiased),
    Procrustes distance, mutual k-NN and neuron matching."""
    from nestemb.compare import MEASURES, compare_prefixes
    from nestemb.folders import load_embeddings

    a = moved_argument(embeddings_a, old_a, "--embeddings-a", "A")
    b = moved_argument(embeddings_b, old_b, "--embeddings-b", "B")
    names = tuple(m.strip().replace("-", "_") for m in measures.split(",") if m.strip())
    bad = [m for m in names if m not in MEASURES]
    if bad or not names:
        raise NestembError(
            f"--measures must be a comma-separated list of "
            f"{', '.join(m.replace('_', '-') for m in MEASURES)}, got {measures!r}"
        )
    if knn_sample < 0 or knn_sample == 1:
        raise NestembError(f"--knn-sample must be 0 (all items) or at least 2, got {knn_sample}")
    if permutations < 0:
        raise NestembError(f"--permutations must be 0 or positive, got {permutations}")
    if threads < 0:
        raise NestembError(f"--threads must be 0 (all cores) or positive, got {threads}")
    if out is not None:
        check_out_dir(out, overwrite, "comparison")
    start = time.perf_counter()
    X, man_a, ids_a = load_embeddings(a, mmap=True, with_ids=True)
    Y, man_b, ids_b = load_embeddings(b, mmap=True, with_ids=True)
    _check_same_items(ids_a, ids_b, a, b)
    dx = _dims(dims_a, "--dims-a", man_a.nesting, man_a.dim)
    dy = _dims(dims_b, "--dims-b", man_b.nesting, man_b.dim)
    with _blas_threads(threads):
        pc = compare_prefixes(
            X, Y, dx, dy, measure=names, k=k, threshold=threshold,
            knn_sample=knn_sample or None, permutations=permutations, seed=seed,
            progress=True,
        )
    elapsed = time.perf_counter() - start

    typer.echo(f"A: {a} ({man_a.model_id}, version {man_a.model_version}, nesting {man_a.nesting})")
    typer.echo(f"B: {b} ({man_b.model_id}, version {man_b.model_version}, nesting {man_b.nesting})")
    sample = f" (mutual k-NN on {pc.knn_sample} sampled items)" if pc.knn_sample else ""
    typer.echo(f"{pc.n} items{sample}")
    common = pc.common_dims
    if common:
        cols = [m.replace("_", "-") for m in names]
        show_p = bool(pc.knn_tests)
        header = ["dim", *cols] + (["knn-null", "knn-p"] if show_p else [])
        rows = []
        for d in common:
            row = [str(d)] + [f"{pc.diagonal(m)[d]:.4f}" for m in names]
            if show_p:
                t = pc.knn_tests[d]
                row += [f"{t.null_mean:.4f}", f"{t.p_value:.3g}"]
            rows.append(row)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        typer.echo("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        for r in rows:
            typer.echo("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    else:
        typer.echo("the two nestings share no prefix: see the prefix x prefix matrices (--out)")
    typer.echo(f"computed in {elapsed:.1f} s")
    if out is not None:
        from nestemb.compare.plots import prefix_heatmap
        from nestemb.io import atomic_dir, write_json

        result = {
            "a": {"path": str(a), "model_id": man_a.model_id,
                  "model_version": man_a.model_version, "nesting": list(man_a.nesting)},
            "b": {"path": str(b), "model_id": man_b.model_id,
                  "model_version": man_b.model_version, "nesting": list(man_b.nesting)},
            "seed": seed,
            "permutations": permutations,
            "seconds": round(elapsed, 3),
            **pc.to_dict(),
        }
        with atomic_dir(out, kind="comparison", overwrite=overwrite) as tmp:
            write_json(tmp / "compare.json", result)
            for m in names:
                distance = m == "procrustes"  # in [0, sqrt 2], lower = more alike
                prefix_heatmap(
                    tmp / f"{m.replace('_', '-')}.png", pc[m], pc.dims_x, pc.dims_y,
                    title=_TITLES[m], xlabel=f"prefix of B ({man_b.model_id})",
                    ylabel=f"prefix of A ({man_a.model_id})",
                    vmin=0.0, vmax=2**0.5 if distance else 1.0, reverse=distance,
                )
        typer.echo(f"wrote {out}")
