"""The shared Typer application; each area adds its commands in its own module.

Heavy libraries (torch, sentence-transformers, faiss) are imported inside the command
functions so that ``nestemb --help`` and input errors answer instantly.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Optional

import typer

from nestemb.errors import NestembError

app = typer.Typer(
    name="nestemb",
    help="Elastic (Matryoshka) embeddings: train, evaluate, index, search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help (inherited by every sub-group): it wraps long option names at any
    # terminal width, where rich's option table truncates them ("--no-hard-negati…").
    rich_markup_mode=None,
)


@app.command()
def version() -> None:
    """Print the nestemb version."""
    from nestemb import __version__

    typer.echo(__version__)


def _print_version(value: bool) -> None:
    if value:
        from nestemb import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    _version: Optional[bool] = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Elastic (Matryoshka) embeddings: train, evaluate, index, search."""


def choices(name: str, *values: str) -> type[enum.Enum]:
    """A str Enum of CLI choices (typer lists them in ``--help`` and rejects others); member
    names are the values with ``-`` as ``_``.

    Example:
        >>> Head = choices("Head", "mrl", "mrl-e")
        >>> Head("mrl-e") is Head.mrl_e, Head.mrl.value
        (True, 'mrl')
    """
    return enum.Enum(name, {v.replace("-", "_"): v for v in values}, type=str)


Device = choices("Device", "cpu", "cuda", "auto")  # --device on every command that runs a model


DEVICE_HELP = "cpu, cuda, or auto (cuda when available)"


def check_writable_parent(out: Path) -> None:
    """Refuse, before any work, an output whose folder cannot be created or written: the
    nearest existing ancestor of ``out`` must be a writable directory.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "a-file"; _ = f.write_text("x")
        >>> check_writable_parent(f / "sub" / "out.json")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: cannot write --out .../a-file/sub/out.json: .../a-file is not a directory
    """
    out = Path(os.path.abspath(out))
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NestembError(f"cannot write --out {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NestembError(f"cannot write --out {out}: folder {parent} is not writable")


def check_out_file(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` result file before any work: a directory, an existing file
    without ``--overwrite``, or a folder that cannot be written.

    Example:
        >>> import tempfile
        >>> check_out_file(Path(tempfile.mkdtemp()), overwrite=True)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: --out must be a file path, ... is a directory
    """
    if out.is_dir():
        raise NestembError(f"--out must be a file path, {out} is a directory")
    if out.exists() and not overwrite:
        raise NestembError(f"--out file already exists: {out} (add --overwrite to replace it)")
    check_writable_parent(out)


def check_out_dir(out: Path, overwrite: bool, kind: str) -> None:
    """Refuse an ``--out`` artefact directory before any long work: anything
    :func:`nestemb.io.check_replaceable` refuses (a file, a non-empty folder without
    ``--overwrite``, a folder nestemb did not write, of another kind, or holding a file nestemb
    did not write), or a folder that cannot be written.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); (d / "notes.txt").write_text("x")
        1
        >>> check_out_dir(d, overwrite=False, kind="index")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: output directory already exists and is not empty: ... (set overwrite to replace it)
    """
    from nestemb.io import check_replaceable

    check_replaceable(out, kind, overwrite)
    check_writable_parent(out)
