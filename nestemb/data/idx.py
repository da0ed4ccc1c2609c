"""Readers (and a small writer, for tests and tools) for the IDX format of MNIST-style data.

A folder holds ``{split}-images-idx3-ubyte[.gz]`` (magic 2051, big-endian counts N, H, W, then
N*H*W uint8 pixels) and ``{split}-labels-idx1-ubyte[.gz]`` (magic 2049, count N, then N uint8
labels). Every problem (missing file, wrong magic, truncated or corrupt gzip, count mismatch)
raises :class:`NestembError` naming the file.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from nestemb.errors import NestembError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def _find(folder: Path, split: str, kind: str) -> Path:
    stem = f"{split}-{kind}"
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise NestembError(f"{folder} has no {stem}[.gz] file for split {split!r}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as e:
        raise NestembError(f"cannot read {path}: truncated or corrupt file ({e})") from None


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read one IDX file (gzip or raw) holding uint8 data and check its magic number and size.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x-labels-idx1-ubyte.gz"
        >>> write_idx(p, np.array([3, 1, 4], dtype=np.uint8))
        >>> read_idx(p, LABELS_MAGIC)
        array([3, 1, 4], dtype=uint8)
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise NestembError(f"{path} is too short to be an IDX file ({len(raw)} bytes)")
    (found,) = struct.unpack(">i", raw[:4])
    if found != magic:
        raise NestembError(f"{path} has IDX magic number {found}, expected {magic}")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - offset != expected:
        raise NestembError(
            f"{path} holds {len(raw) - offset} data bytes, its header says {expected} "
            f"(shape {tuple(shape)}): the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array (1-D labels or 3-D images) as an IDX file; gzip when the name ends in
    ``.gz``. Used by tests and to export subsets.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x-images-idx3-ubyte"
        >>> write_idx(p, np.zeros((2, 3, 3), dtype=np.uint8))
        >>> read_idx(p, IMAGES_MAGIC).shape
        (2, 3, 3)
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    header = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)


def load_idx(folder: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, ``(N, H, W)``) and labels (int64, ``(N,)``) of one split of an MNIST-style
    folder (``split`` is the file prefix: ``"train"`` or ``"t10k"``).

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((4, 28, 28), np.uint8))
        >>> write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(4, dtype=np.uint8))
        >>> x, y = load_idx(d); x.shape, y.dtype
        ((4, 28, 28), dtype('int64'))
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NestembError(f"data folder not found: {folder}")
    img_path = _find(folder, split, "images-idx3-ubyte")
    lab_path = _find(folder, split, "labels-idx1-ubyte")
    images = read_idx(img_path, IMAGES_MAGIC)
    labels = read_idx(lab_path, LABELS_MAGIC)
    if images.ndim != 3:
        raise NestembError(f"{img_path} holds a {images.ndim}-D array, expected (N, H, W)")
    if labels.ndim != 1:
        raise NestembError(f"{lab_path} holds a {labels.ndim}-D array, expected (N,)")
    if len(images) != len(labels):
        raise NestembError(
            f"{img_path} holds {len(images)} images but {lab_path} holds {len(labels)} labels"
        )
    if len(images) == 0:
        raise NestembError(f"{img_path} holds no images")
    return images, labels.astype(np.int64)


def write_synthetic_idx(
    folder: str | os.PathLike,
    n_train: int = 200,
    n_test: int = 50,
    num_classes: int = 10,
    hw: tuple[int, int] = (28, 28),
    seed: int = 0,
) -> Path:
    """Write a small, learnable MNIST-style data set (train and t10k IDX pairs, gzip) for tests
    and demos: each class is a bright 6x6 square at its own position, plus noise.

    Example:
        >>> import tempfile
        >>> d = write_synthetic_idx(tempfile.mkdtemp(), n_train=20, n_test=10)
        >>> x, y = load_idx(d, "t10k"); x.shape, int(y.max()) < 10
        ((10, 28, 28), True)
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = hw
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % num_classes).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, h, w), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 4)
            y0, x0 = 2 + (r * 8) % (h - 8), 2 + (q * 6) % (w - 8)
            images[i, y0 : y0 + 6, x0 : x0 + 6] = 255
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder
