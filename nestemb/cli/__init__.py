"""``nestemb <verb>``: the one command-line entry point.

Bad input raises :class:`nestemb.errors.NestembError` anywhere below; :func:`main` prints its
message on one line and exits with status 2, without a traceback. SIGINT (Ctrl-C) and SIGTERM
both raise :class:`Interrupted` wherever the program is: every atomic writer removes its
temporary on the way out, and :func:`main` prints ``interrupted`` and exits with 128 + the
signal number (130, 143).
"""

from __future__ import annotations

import signal
import sys

from rich.console import Console

from nestemb.cli.app import app
from nestemb.errors import NestembError

# Importing these modules registers their commands on ``app``.
from nestemb.cli import backend as _backend  # noqa: E402,F401
from nestemb.cli import compare as _compare  # noqa: E402,F401
from nestemb.cli import compat as _compat  # noqa: E402,F401
from nestemb.cli import embed as _embed  # noqa: E402,F401
from nestemb.cli import image as _image  # noqa: E402,F401
from nestemb.cli import serve as _serve  # noqa: E402,F401
from nestemb.cli import index as _index  # noqa: E402,F401
from nestemb.cli import migrate as _migrate  # noqa: E402,F401
from nestemb.cli import quickstart as _quickstart  # noqa: E402,F401
from nestemb.cli import retrofit as _retrofit  # noqa: E402,F401
from nestemb.cli import text as _text  # noqa: E402,F401

__all__ = ["Interrupted", "app", "main"]


class Interrupted(BaseException):
    """Raised by :func:`main`'s signal handler. A ``BaseException`` that is not a
    ``KeyboardInterrupt``, so click does not turn it into a silent "Aborted!" and ``except
    Exception`` blocks do not swallow it; cleanup code (``except BaseException``) still runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: object) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the cleanup short
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def option_name(param: str | None, argv: list[str]) -> str | None:
    """The CLI spelling of the library parameter ``param`` on the command ``argv`` invokes:
    the option's longest flag (``--code-bytes``), or an argument's metavar; ``None`` when the
    command has no such parameter (the error then names the Python parameter). A command's
    Python parameter names match the library's, which is how an error finds its flag.

    Example:
        >>> option_name("code_bytes", ["index", "build", "--embeddings", "g", "--out", "i"])
        '--code-bytes'
        >>> option_name("index_dir", ["index", "search", "i"])
        'INDEX_DIR'
        >>> option_name("nothing_like_it", ["index", "build"]) is None
        True
    """
    import typer.main

    if param is None:
        return None
    # typer ships its own click: duck-typed, so any click-like command tree works
    cmd = typer.main.get_command(app)
    words = [a for a in argv if not a.startswith("-")]
    while cmd is not None and hasattr(cmd, "get_command"):
        if not words:
            return None
        cmd = cmd.get_command(cmd.context_class(cmd), words.pop(0))
    for p in getattr(cmd, "params", ()):
        if p.name == param:
            if p.param_type_name == "option":
                return max(p.opts, key=len)
            return (p.metavar or p.name).upper()
    return None


def main() -> None:
    """Run the CLI; user errors exit with status 2 and a one-line message, SIGINT/SIGTERM
    with ``interrupted`` and status 130/143."""
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, _raise_interrupted)
        except ValueError:  # not the main thread: keep the default handlers
            pass
    try:
        app()
    except NestembError as e:
        message = e.render(option_name(e.param, sys.argv[1:])) if e.param else str(e)
        Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False,
                                   soft_wrap=True)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(128 + int(signum))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
