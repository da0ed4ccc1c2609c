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
from typing import Any, Callable, Iterable, Iterator

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


def sha256_texts(texts: Iterable[str]) -> str:
    """Hex sha256 of a list of texts, each UTF-8 and length-prefixed (so ``["a b"]`` and
    ``["a", "b"]`` differ): the texts' identity in the text-embedding cache's keys and in a
    text corpus's manifest.

    Example:
        >>> sha256_texts(["a", "b"])[:16], sha256_texts(["a b"]) != sha256_texts(["a", "b"])
        ('cf6ab613e3942391', True)
    """
    h = hashlib.sha256()
    for t in texts:
        data = str(t).encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
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
    removed: list[Path] = []
    try:
        entries = list(os.scandir(os.fspath(folder)))
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


CHUNK_BYTES = 16 << 20
"""About how much float32 a block holds when a gallery is read, checked or stored block by block."""


def chunk_rows(dim: int) -> int:
    """Rows per block of a ``dim``-wide gallery (:data:`CHUNK_BYTES` of float32, at least
    1,024 rows), so the working memory of a build grows neither with the gallery nor with its
    width.

    Example:
        >>> chunk_rows(1024), chunk_rows(64), chunk_rows(100_000)
        (4096, 65536, 1024)
    """
    return max(1024, CHUNK_BYTES // (4 * max(1, int(dim))))


def save_npy_blocks(path: str | os.PathLike, shape: tuple[int, ...], blocks: Iterable[Any],
                    dtype: Any = "float32") -> Path:
    """Write a ``.npy`` file of ``shape`` from ``blocks`` of rows, in order, atomically: the
    array is never held whole (a memory map or a long encoding is streamed). The rows given
    must add up to ``shape[0]``.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.npy"
        >>> _ = save_npy_blocks(p, (3, 2), [np.ones((2, 2)), np.zeros((1, 2))])
        >>> np.load(p).tolist()
        [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    """
    import numpy as np

    dt = np.dtype(dtype)
    rows = 0
    with atomic_file(path) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dt),
                                                 "fortran_order": False, "shape": tuple(shape)})
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=dt)
            f.write(block.tobytes())
            rows += len(block)
        if rows != shape[0]:
            raise NestembError(f"{path}: {rows} rows were written for a shape of {shape}")
    return Path(path)


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


def read_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Every array of an ``.npz`` file (no pickles), a missing, truncated or foreign file being
    a :class:`NestembError` that names it.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.npz"; np.savez(p, W=np.eye(2))
        >>> read_npz(p)["W"].shape
        (2, 2)
        >>> _ = p.write_bytes(b"not a zip"); read_npz(p)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: cannot read .../w.npz: ...
    """
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, TypeError, AttributeError) as e:
        # TypeError/AttributeError: np.load returned a plain array (an .npy under an .npz name)
        raise NestembError(f"cannot read {path}: {e}") from None


OUTPUT_MARKER = ".nestemb-output"
"""Written into every folder nestemb writes (:func:`atomic_dir`, the embedding jobs): JSON
naming the artefact's kind and every file and folder it wrote. It is what ``overwrite`` may
replace: a folder without it, of another kind, or holding anything it does not list is
refused, whatever its file names."""


def _listing(root: Path) -> list[str]:
    """Every file and folder below ``root`` as sorted relative POSIX paths (not the marker)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        out += [(rel / n).as_posix() for n in dirnames + filenames]
    return sorted(p for p in out if p != OUTPUT_MARKER)


def write_marker(folder: str | os.PathLike, kind: str) -> None:
    """Record ``folder`` as nestemb's output of ``kind``, listing everything now in it. Writers
    that add to a folder over time (resumable jobs) call it again after each addition.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.npy").write_bytes(b"")
        >>> write_marker(d, "embeddings"); read_marker(d)["files"]
        ['a.npy']
    """
    folder = Path(folder)
    write_json(folder / OUTPUT_MARKER, {"written_by": "nestemb", "kind": kind,
                                        "files": _listing(folder)})


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of ``folder`` as ``{"kind", "files"}``, or ``None`` where there is none or it
    is not one this version wrote (an older plain-text marker, a damaged file)."""
    try:
        data = json.loads((Path(folder) / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(data, dict) or not isinstance(data.get("kind"), str)
            or not isinstance(data.get("files"), list)
            or not all(isinstance(f, str) for f in data["files"])):
        return None
    return data


def check_replaceable(
    path: str | os.PathLike,
    kind: str,
    overwrite: bool,
    generated: Callable[[str], bool] | None = None,
) -> None:
    """The one rule for writing an output folder: ``path`` may be written when it is absent or
    empty; when it holds anything, only with ``overwrite`` and only if nestemb wrote it (its
    :data:`OUTPUT_MARKER`), as an artefact of the same ``kind``, and every file in it is one
    the marker lists (or that ``generated`` recognises as the writer's own, for folders that
    grow). Anything else is refused and named; nothing is deleted. Call it before long work;
    :func:`atomic_dir` calls it again before it replaces anything.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()) / "idx"
        >>> with atomic_dir(d, kind="index") as tmp:
        ...     _ = (tmp / "ids.npy").write_bytes(b"")
        >>> check_replaceable(d, "index", overwrite=True)        # nestemb's own index: fine
        >>> check_replaceable(d, "embeddings", overwrite=True)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: refusing to replace .../idx: it holds an index, not embeddings
        >>> _ = (d / "notes.txt").write_text("mine")
        >>> check_replaceable(d, "index", overwrite=True)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: refusing to replace .../idx: nestemb did not write notes.txt (move it, or choose another output)
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NestembError(f"output path exists and is not a directory: {path}")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not overwrite:
        raise NestembError(f"output directory already exists and is not empty: {path} "
                           "(set {param} to replace it)", param="overwrite")
    marker = read_marker(path)
    if marker is None:
        why = ("its marker is from an older nestemb, which did not record its files; delete "
               "it yourself" if (path / OUTPUT_MARKER).is_file() else
               f"nestemb did not write it (no {OUTPUT_MARKER}); move its files")
        raise NestembError(f"refusing to replace {path}: {why}, or choose another output")
    if marker["kind"] != kind:
        raise NestembError(f"refusing to replace {path}: it holds {article(marker['kind'])}, "
                           f"not {article(kind)}")
    listed = set(marker["files"])
    for rel in _listing(path):
        if rel not in listed and not _TMP_RE.match(Path(rel).name) and not (
                generated and generated(rel)):
            raise NestembError(f"refusing to replace {path}: nestemb did not write {rel} "
                               "(move it, or choose another output)")


def article(kind: str) -> str:
    """``kind`` with its indefinite article (``an index``, ``a text-model``); plural kinds
    (``embeddings``) stand alone.

    Example:
        >>> article("index"), article("image-model"), article("embeddings")
        ('an index', 'an image-model', 'embeddings')
    """
    if kind.endswith("s"):
        return kind
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling; rename it to ``path`` only when the block succeeds.

    On any error the temporary directory is removed and ``path`` is untouched. An existing,
    non-empty ``path`` is replaced only under :func:`check_replaceable`'s rule (``overwrite``,
    nestemb's marker, the same ``kind``, no file it did not write), and only after the new
    folder is complete. The new folder gets its :data:`OUTPUT_MARKER`.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> with atomic_dir(out, kind="comparison") as tmp:
        ...     _ = (tmp / "results.json").write_text("{}")
        >>> sorted(p.name for p in out.iterdir())
        ['.nestemb-output', 'results.json']
        >>> notes = out.parent / "notes"; notes.mkdir(); _ = (notes / "todo.txt").write_text("x")
        >>> with atomic_dir(notes, kind="comparison", overwrite=True) as tmp:
        ...     pass
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: refusing to replace .../notes: nestemb did not write it (no .nestemb-output); move its files, or choose another output
    """
    path = Path(path)
    check_replaceable(path, kind, overwrite)
    _prepare_parent(path)
    tmp = path.parent / _tmp_name()
    try:
        tmp.mkdir(mode=0o777)
    except OSError as e:
        raise NestembError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        yield tmp
        write_marker(tmp, kind)
        try:
            if path.exists():
                check_replaceable(path, kind, overwrite)  # a file may have arrived meanwhile
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
