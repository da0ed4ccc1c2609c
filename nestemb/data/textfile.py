"""The one way nestemb reads a user's text file: UTF-8 (a BOM is dropped), and bytes that are
not UTF-8 raise :class:`~nestemb.errors.NestembError` naming the file and the line. Used by every
reader (BEIR, STS/NLI/MRPC/pairs, text inputs)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from nestemb.errors import NestembError

_NEWLINE = re.compile(r"\r\n|\r|\n")


def read_text(path: str | os.PathLike, what: str = "text") -> str:
    """The whole file decoded as UTF-8 (``utf-8-sig``: a leading BOM is dropped).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = p.write_bytes("ok\\ncaf\\u00e9\\n".encode("latin-1"))
        >>> read_text(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: .../a.txt:2: not UTF-8 text (byte 0xe9 at column 4); save the file as UTF-8
    """
    path = Path(path)
    if not path.is_file():
        raise NestembError(f"{what} file not found: {path}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line_start = max(raw.rfind(b"\n", 0, start), raw.rfind(b"\r", 0, start)) + 1
        lineno = len(_NEWLINE.findall(raw[:line_start].decode("latin-1"))) + 1
        raise NestembError(
            f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[start]:02x} at column "
            f"{start - line_start + 1}); save the file as UTF-8"
        ) from None


def read_lines(path: str | os.PathLike, what: str = "text") -> list[str]:
    """The file's lines (split at CRLF, LF or CR only, so a JSON line may hold U+2028), without
    line ends; a final newline adds no empty line. Decoded as :func:`read_text`.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = p.write_bytes(b"a\\r\\nb\\rc\\n")
        >>> read_lines(p)
        ['a', 'b', 'c']
    """
    text = read_text(path, what)
    lines = _NEWLINE.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines
