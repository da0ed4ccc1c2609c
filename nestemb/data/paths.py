"""Where Fashion-MNIST lives: one search order shared by the CLI, the benchmark and
``scripts/find-data.sh``.

Order: an explicit argument, then ``$NESTEMB_DATA``, then ``../shared/data/fashion-mnist``
(relative to the current directory), then ``/usr/share/datasets/fashion-mnist`` (the Debian
package ``dataset-fashion-mnist``).
"""

from __future__ import annotations

import os
from pathlib import Path

from nestemb.errors import NestembError

SEARCH_PATHS = ("../shared/data/fashion-mnist", "/usr/share/datasets/fashion-mnist")
"""The fixed places tried after an explicit argument and ``$NESTEMB_DATA``."""


def has_idx_pair(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds at least one ``*-images-idx3-ubyte[.gz]`` file and a matching
    ``*-labels-idx1-ubyte[.gz]`` file.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> has_idx_pair(d)
        False
        >>> for n in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        ...     _ = (d / n).write_bytes(b"")
        >>> has_idx_pair(d)
        True
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    for img in folder.glob("*-images-idx3-ubyte*"):
        prefix = img.name.split("-images-idx3-ubyte")[0]
        if any(folder.glob(f"{prefix}-labels-idx1-ubyte*")):
            return True
    return False


def resolve_fashion_mnist(data: str | os.PathLike | None = None) -> Path:
    """The Fashion-MNIST folder to use, following the search order of this module.

    An explicit ``data`` is used as given (and must hold an IDX pair); otherwise the first
    candidate holding one wins. Raises :class:`NestembError` listing what was tried.

    Example:
        >>> import tempfile, pathlib
        >>> resolve_fashion_mnist(pathlib.Path(tempfile.mkdtemp()) / "nope")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: data folder not found: ...nope
    """
    if data is not None:
        folder = Path(data)
        if not folder.is_dir():
            raise NestembError(f"{{param}} folder not found: {folder}", param="data")
        if not has_idx_pair(folder):
            raise NestembError(
                f"data folder {folder} holds no IDX pair "
                "(*-images-idx3-ubyte[.gz] with *-labels-idx1-ubyte[.gz])"
            )
        return folder
    tried = []
    env = os.environ.get("NESTEMB_DATA")
    candidates = ([env] if env else []) + list(SEARCH_PATHS)
    for cand in candidates:
        tried.append(cand)
        if has_idx_pair(cand):
            return Path(cand)
    raise NestembError(
        "Fashion-MNIST not found; tried " + ", ".join(tried) + " (give {param} or set NESTEMB_DATA)",
        param="data",
    )
