"""Crash-safe file output: every write goes to a temporary sibling, then an atomic rename.

A crash or an error half-way leaves the previous file (or no file) in place, never a partial one.
An exception of any kind (``KeyboardInterrupt``, ``SystemExit``, the CLI's SIGTERM) removes the
temporary. Temporaries have nestemb's own short name, ``.nestemb-tmp-<pid>-<hex>`` (so any legal
output name works); one whose process died without cleaning up (``kill -9``, power loss) is
swept by the next write to the same folder. Outputs honour the user's umask.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

from nestemb.errors import NestembError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
        >>> sha256_file(p)[:12]
        'ba7816bf8f01'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


TMP_PREFIX = ".nestemb-tmp-"
_TMP_RE = re.compile(r"^\.nestemb-tmp-(\d+)-[0-9a-f]{12}$")


def _tmp_name() -> str:
    """A fresh temporary name: fixed length whatever the output name, owner pid encoded."""
    return f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def sweep_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove nestemb temporaries in ``folder`` whose writing process is gone; return them.

    Only names of nestemb's own pattern are touched; a temporary of a live process is kept.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> (d / ".nestemb-tmp-999999999-0123456789ab").mkdir(); (d / "keep").mkdir()
        >>> [p.name for p in sweep_stale(d)], sorted(p.name for p in d.iterdir())
        (['.nestemb-tmp-999999999-0123456789ab'], ['keep'])
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _prepare_parent(path: Path) -> None:
    """Create ``path``'s parent folders; an unwritable location is a :class:`NestembError`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NestembError(f"cannot create the folder for {path}: {e.strerror or e}") from None
    if not path.parent.is_dir():
        raise NestembError(f"cannot write {path}: {path.parent} is not a directory")
    sweep_stale(path.parent)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file next to ``path``; on success fsync and rename it over ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_file(p, "w") as f:
        ...     _ = f.write("hello")
        >>> p.read_text()
        'hello'
    """
    path = Path(path)
    _prepare_parent(path)
    tmp = path.parent / _tmp_name()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies umask
    except OSError as e:
        raise NestembError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise NestembError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.json"
        >>> write_json(p, {"a": 1}); p.read_text().startswith("{")
        True
    """
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read a JSON file, turning a missing or malformed file into a :class:`NestembError`.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.json"; _ = p.write_text('{"a": 1}')
        >>> read_json(p)
        {'a': 1}
    """
    path = Path(path)
    if not path.is_file():
        raise NestembError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NestembError(f"{what} {path} is not valid JSON: {e}") from None


OUTPUT_MARKER = ".nestemb-output"
"""Written into every directory :func:`atomic_dir` creates: what ``overwrite`` may replace."""


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling; rename it to ``path`` only when the block succeeds.

    On any error the temporary directory is removed and ``path`` is untouched. With
    ``overwrite=False`` an existing, non-empty ``path`` is an error (nothing stored is lost);
    with ``overwrite=True`` the old directory is replaced only after the new one is complete,
    and only if nestemb wrote it (it holds the :data:`OUTPUT_MARKER` every ``atomic_dir`` output
    gets, or a ``manifest.json``): a folder of the user's own files is never deleted.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> with atomic_dir(out) as tmp:
        ...     _ = (tmp / "results.json").write_text("{}")
        >>> sorted(p.name for p in out.iterdir())
        ['.nestemb-output', 'results.json']
        >>> notes = out.parent / "notes"; notes.mkdir(); _ = (notes / "todo.txt").write_text("x")
        >>> with atomic_dir(notes, overwrite=True) as tmp:
        ...     pass
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: refusing to replace .../notes: nestemb did not write it (no manifest.json or .nestemb-output); move its files or choose another output
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NestembError(f"output path exists and is not a directory: {path}")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise NestembError(f"output directory already exists and is not empty: {path}")
        if not ((path / OUTPUT_MARKER).is_file() or (path / "manifest.json").is_file()):
            raise NestembError(
                f"refusing to replace {path}: nestemb did not write it (no manifest.json or "
                f"{OUTPUT_MARKER}); move its files or choose another output"
            )
    _prepare_parent(path)
    tmp = path.parent / _tmp_name()
    try:
        tmp.mkdir(mode=0o777)
    except OSError as e:
        raise NestembError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text("written by nestemb; --overwrite may replace this folder\n")
        try:
            if path.exists():
                old = path.parent / _tmp_name()
                os.replace(path, old)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old, path)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except OSError as e:
            raise NestembError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
