"""``nestemb <verb>``: the one command-line entry point.

Bad input raises :class:`nestemb.errors.NestembError` anywhere below; :func:`main` prints its
message on one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import sys

from rich.console import Console

from nestemb.cli.app import app
from nestemb.errors import NestembError

# Importing these modules registers their commands on ``app``.
from nestemb.cli import image as _image  # noqa: E402,F401
from nestemb.cli import index as _index  # noqa: E402,F401
from nestemb.cli import text as _text  # noqa: E402,F401

__all__ = ["app", "main"]


def main() -> None:
    """Run the CLI; user errors exit with status 2 and a one-line message."""
    try:
        app()
    except NestembError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        sys.exit(130)
