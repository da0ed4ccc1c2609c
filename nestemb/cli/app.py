"""The shared Typer application; each area adds its commands in its own module.

Heavy libraries (torch, sentence-transformers, faiss) are imported inside the command
functions so that ``nestemb --help`` and input errors answer instantly.
"""

from __future__ import annotations

import typer

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
