"""The shared Typer application; each area adds its commands in its own module.

Heavy libraries (torch, sentence-transformers, faiss) are imported inside the command
functions so that ``nestemb --help`` and input errors answer instantly.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperCommand

from nestemb.device import DEVICES
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


Device = choices("Device", *DEVICES)  # --device on every command that runs a model


DEVICE_HELP = "cpu, cuda, or auto (cuda when available)"
THREADS_HELP = "torch CPU threads while the model runs (default: torch's)"


def device_option(help: str = DEVICE_HELP):
    """The ``--device`` option of every command that runs a model (one flag, one default)."""
    return typer.Option(Device.auto, "--device", help=help)


def threads_option(help: str = THREADS_HELP):
    """The ``--threads`` option of every command that runs a model (``None``: torch's own)."""
    return typer.Option(None, "--threads", help=help)


SERVICE_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "NESTEMB_API_KEY"


def url_option():
    """The ``--url`` option of every command talking to a running ``nestemb serve``."""
    return typer.Option(SERVICE_URL, "--url", help="the service's base URL")


def api_key_env_option(help: str = "environment variable holding the API key (if any)"):
    """The ``--api-key-env`` option of every command talking to a running ``nestemb serve``:
    the name of a variable, so that the key stays off the command line."""
    return typer.Option(API_KEY_ENV, "--api-key-env", help=help)


def check_cpu_device(device: "Device", command: str) -> None:
    """Refuse ``--device cuda`` for a command whose image models run on the cpu only.

    Example:
        >>> check_cpu_device(Device.cuda, "embed")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: embed runs image models on the cpu: use --device cpu or auto
    """
    if device is Device.cuda:
        raise NestembError(f"{command} runs image models on the cpu: use --device cpu or auto")


def given_options(ctx: typer.Context, names: dict[str, str]) -> list[str]:
    """The options among ``names`` (parameter name -> flag) given on the command line."""
    # compared by name: typer may use its own vendored copy of click's ParameterSource
    sources = {name: ctx.get_parameter_source(name) for name in names}
    return [flag for name, flag in names.items()
            if sources[name] is not None and sources[name].name not in ("DEFAULT", "DEFAULT_MAP")]


# --------------------------------------------------------------------------- renamed spellings
RENAMED_NOTE = "note: {old} is now {new} (the old spelling goes in the next release)"


def rename_flags(args: list[str], renamed: dict[str, str]) -> list[str]:
    """``args`` with every old flag of ``renamed`` (old -> new) spelled the new way, ``--old=v``
    included; a note on stderr says what replaced each old flag used. Nothing after ``--``
    is touched.

    Example:
        >>> rename_flags(["--dims", "8,16", "--out=x", "--", "--dims"], {"--dims": "--nesting"})
        ['--nesting', '8,16', '--out=x', '--', '--dims']
    """
    out: list[str] = []
    noted: set[str] = set()
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i:])
        old, sep, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        new = renamed.get(old)
        if new is not None:
            if old not in noted:
                noted.add(old)
                typer.echo(RENAMED_NOTE.format(old=old, new=new), err=True)
            arg = new + sep + value
        out.append(arg)
    return out


def renamed(flags: dict[str, str] | None = None, verb: str | None = None) -> type[TyperCommand]:
    """A command class (``@app.command(cls=renamed({...}))``) that still accepts, for one
    release, the old spellings of its flags (``{"--dims": "--nesting"}``), hidden from its
    help, and, with ``verb``, the old ``GROUP VERB`` form of a command that left its group
    (``nestemb compat matrix`` -> ``nestemb compat``); each use prints a note on stderr.
    """
    table = dict(flags or {})

    class Renamed(TyperCommand):
        renamed_flags = table
        renamed_verb = verb

        def parse_args(self, ctx, args):
            args = list(args)
            if verb is not None and args[:1] == [verb]:
                args = args[1:]
                typer.echo(RENAMED_NOTE.format(old=f"`nestemb {self.name} {verb}`",
                                               new=f"`nestemb {self.name}`"), err=True)
            return super().parse_args(ctx, rename_flags(args, table))

        def collect_usage_pieces(self, ctx):  # a hidden old positional stays out of the usage
            pieces = [self.options_metavar] if self.options_metavar else []
            for param in self.get_params(ctx):
                if not getattr(param, "hidden", False):
                    pieces.extend(param.get_usage_pieces(ctx))
            return pieces

    return Renamed


def moved_argument(new_value, old_value, new: str, old: str):
    """The value of a folder given as option ``new`` or, for one release, as the positional
    argument ``old`` it replaced (with a note on stderr); exactly one of them is required.

    Example:
        >>> moved_argument(None, "g", "--embeddings", "EMBEDDINGS")
        'g'
        >>> moved_argument(None, None, "--embeddings", "EMBEDDINGS")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: missing option --embeddings
    """
    if old_value is None:
        if new_value is None:
            raise NestembError(f"missing option {new}")
        return new_value
    if new_value is not None:
        raise NestembError(f"give {new} once (the positional {old} is its old spelling)")
    typer.echo(RENAMED_NOTE.format(old=f"the positional {old}", new=new), err=True)
    return old_value


# --------------------------------------------------------------------------- results files
def write_result(out: Path, result: Any, what: str = "results") -> None:
    """Write a command's ``--out`` JSON result file atomically (:func:`nestemb.io.write_json`:
    a killed run leaves the old file or none, never half a file) and say so: the one writer of
    every ``--out`` JSON file (checked beforehand with :func:`check_out_file`).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "r.json"
        >>> write_result(p, {"a": 1}); p.read_text().startswith("{")
        wrote results to ...r.json
        True
    """
    from nestemb.io import write_json

    write_json(out, result)
    typer.echo(f"wrote {what} to {out}")


def search_result(query_ids, ids, scores) -> dict:
    """Search results as stored in ``--out`` files: per query id, its result ids and scores.

    Example:
        >>> import numpy as np
        >>> search_result(["q"], np.array([[3, 1]]), np.array([[0.5, 0.25]]))
        {'q': {'ids': [3, 1], 'scores': [0.5, 0.25]}}
    """
    return {str(q): {"ids": r.tolist(), "scores": s.tolist()}
            for q, r, s in zip(query_ids, ids, scores)}


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
