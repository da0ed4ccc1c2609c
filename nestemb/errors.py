"""The one exception type for bad user input.

Everything a user can get wrong (a path, a shape, a nesting, a corrupt file) raises
:class:`NestembError` with a message that names the problem; library messages name the Python
parameter, and the CLI (whose options carry the same names) turns the error into one line on
stderr and exit status 2. Programming errors stay ordinary exceptions so that they keep their
tracebacks.
"""

from __future__ import annotations


class NestembError(ValueError):
    """Bad input from a user: the message says what is wrong and, where it helps, where.

    Example:
        >>> try:
        ...     raise NestembError("nesting must be ascending, got (8, 4)")
        ... except NestembError as e:
        ...     print(e)
        nesting must be ascending, got (8, 4)
    """
