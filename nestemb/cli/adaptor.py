"""CLI commands ``nestemb adaptor fit|apply``: Matryoshka adaptors for frozen embeddings."""

from __future__ import annotations

import typer

from nestemb.cli.app import app

adaptor_app = typer.Typer(help="Nesting adaptors: make every prefix of a frozen embedding good.",
                          no_args_is_help=True)
app.add_typer(adaptor_app, name="adaptor")
