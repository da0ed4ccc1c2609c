"""The shared Typer application; each area adds its commands in its own module.

Heavy libraries (torch, sentence-transformers, faiss) are imported inside the command
functions so that ``nestemb --help`` and input errors answer instantly.
"""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from nestemb.errors import NestembError

app = typer.Typer(
    name="nestemb",
    help="Elastic (Matryoshka) embeddings: train, evaluate, index, search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the nestemb version."""
    from nestemb import __version__

    typer.echo(__version__)


@app.callback()
def _root() -> None:
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


def check_out_file(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` result file before any work: a directory, or an existing file
    without ``--overwrite``.

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


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` artefact directory before any long work: a file, or a non-empty
    directory without ``--overwrite`` (the writer itself decides what it may replace).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); (d / "notes.txt").write_text("x")
        1
        >>> check_out_dir(d, overwrite=False)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: --out directory already exists and is not empty: ... (add --overwrite to replace it)
    """
    if out.exists() and not out.is_dir():
        raise NestembError(f"--out path exists and is not a directory: {out}")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise NestembError(
            f"--out directory already exists and is not empty: {out} (add --overwrite to replace it)"
        )
