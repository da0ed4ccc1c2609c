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
from nestemb.cli import adaptor as _adaptor  # noqa: E402,F401
from nestemb.cli import backend as _backend  # noqa: E402,F401
from nestemb.cli import compare as _compare  # noqa: E402,F401
from nestemb.cli import compat as _compat  # noqa: E402,F401
from nestemb.cli import image as _image  # noqa: E402,F401
from nestemb.cli import serve as _serve  # noqa: E402,F401
from nestemb.cli import index as _index  # noqa: E402,F401
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
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(128 + int(signum))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
