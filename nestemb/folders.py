"""Embedding folders, dense and sharded: the one place that writes and reads them.

A *dense* folder (:func:`save_embeddings`) holds ``embeddings.npy``, optional ``ids.json`` and
``manifest.json`` with their checksums, written atomically. A *sharded* folder is what
``nestemb embed --ray`` (:mod:`nestemb.bulk`) writes shard by shard: ``job.json`` first, then
``shards/shard-NNNNN.{npy,ids.json,json}`` (each shard's record holds its checksums), then the
manifest of kind ``embedding-shards`` when every shard is there. :func:`load_embeddings` reads
both kinds; every reader verifies checksums, shapes and ids.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.io import atomic_dir, atomic_file, read_json, sha256_file, write_json
from nestemb.nesting import MANIFEST_NAME, Manifest, check_vectors

EMBEDDINGS_NAME = "embeddings.npy"
IDS_NAME = "ids.json"
SHARDS_KIND = "embedding-shards"
"""The manifest kind of a finished sharded folder."""
JOB_NAME = "job.json"
SHARDS_DIR = "shards"


def check_unique_ids(ids: Sequence[Any], param: str = "ids", what: str | None = None) -> None:
    """Refuse a list of ids in which one appears twice (naming it and both rows): rows are
    paired, looked up and deleted by id, so a duplicate silently loses one of them. The message
    names the parameter ``param``, or describes the ids as ``what`` (``"query ids in DIR"``).

    Example:
        >>> check_unique_ids(["a", "b", "a"])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: ids must be unique: 'a' appears at rows 0 and 2
        >>> check_unique_ids([1, 1], what="query ids in q/")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: query ids in q/ must be unique: 1 appears at rows 0 and 1
    """
    first: dict[Any, int] = {}
    for row, i in enumerate(ids):
        key = json.dumps(i) if isinstance(i, (list, dict)) else i
        if key in first:
            raise NestembError(f"{what or '{param}'} must be unique: {i!r} appears at rows "
                               f"{first[key]} and {row}", param=None if what else param)
        first[key] = row


def save_embeddings(
    directory: str | os.PathLike,
    vectors: np.ndarray,
    manifest: Manifest,
    ids: Sequence[Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an embedding file: a directory with ``embeddings.npy``, optional ``ids.json`` and
    ``manifest.json`` (with their checksums). Built in a temporary directory, then renamed.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "emb"
        >>> X = np.random.default_rng(0).normal(size=(5, 16)).astype("float32")
        >>> _ = save_embeddings(out, X, Manifest(model_id="demo", nesting=(8, 16), dim=16))
        >>> Y, man = load_embeddings(out); Y.shape, man.nesting
        ((5, 16), (8, 16))
    """

    vectors = check_vectors(vectors, dim=manifest.dim, what="embeddings")
    if ids is not None:
        if len(ids) != len(vectors):
            raise NestembError(f"got {len(ids)} ids for {len(vectors)} embeddings", param="ids")
        check_unique_ids(ids)
    with atomic_dir(directory, kind="embeddings", overwrite=overwrite) as tmp:
        np.save(tmp / EMBEDDINGS_NAME, vectors)
        names = [EMBEDDINGS_NAME]
        if ids is not None:
            (tmp / IDS_NAME).write_text(json.dumps(list(ids)))
            names.append(IDS_NAME)
        manifest = dataclasses.replace(
            manifest,
            dtype=str(vectors.dtype),
            kind="embeddings",
            sha256={n: sha256_file(tmp / n) for n in names},
        )
        manifest.save(tmp)
    return Path(directory)


def load_embeddings(
    directory: str | os.PathLike, mmap: bool = False, with_ids: bool = False
) -> tuple[np.ndarray, Manifest] | tuple[np.ndarray, Manifest, list | None]:
    """Read an embedding file written by :func:`save_embeddings`, verifying its checksums.
    The sharded directory of ``nestemb embed --ray`` is read too (:func:`load_shards`).

    Example: see :func:`save_embeddings`.
    """
    directory = Path(directory)
    if is_shard_dir(directory):
        X, man, ids = load_shards(directory, mmap=mmap)
        return (X, man, ids) if with_ids else (X, man)
    manifest = Manifest.open(directory, "embeddings", "embedding directory")
    try:
        vectors = np.load(directory / EMBEDDINGS_NAME, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
        raise NestembError(f"cannot read {directory / EMBEDDINGS_NAME}: {e}") from None
    if vectors.dtype.kind != "f":
        raise NestembError(f"{directory / EMBEDDINGS_NAME} holds {vectors.dtype} values, not "
                           "floats")
    if vectors.ndim != 2 or vectors.shape[1] != manifest.dim:
        raise NestembError(
            f"{directory / EMBEDDINGS_NAME} has shape {vectors.shape}, manifest says dim "
            f"{manifest.dim}"
        )
    if not with_ids:
        return vectors, manifest
    ids_path = directory / IDS_NAME
    if not ids_path.is_file():
        return vectors, manifest, None
    ids = read_json(ids_path, "ids file")
    if not isinstance(ids, list) or len(ids) != len(vectors):
        raise NestembError(f"{ids_path} must be a JSON list of {len(vectors)} ids, one per row")
    try:
        check_unique_ids(ids)
    except NestembError as e:
        raise NestembError(f"{ids_path}: {e}") from None
    return vectors, manifest, ids


# --------------------------------------------------------------------------- shards
def shard_name(i: int) -> str:
    """File stem of shard ``i``.

    Example:
        >>> shard_name(7)
        'shard-00007'
    """
    return f"shard-{i:05d}"


def write_shard(folder: Path, i: int, X: np.ndarray, ids: Sequence[str], start: int) -> dict:
    """Write shard ``i`` (vectors, ids, then the record with their checksums, each atomically);
    returns the record.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> rec = write_shard(d, 0, np.ones((2, 4), np.float32), ["a", "b"], 0)
        >>> rec["rows"], read_done(d, 0) == rec
        (2, True)
    """
    X = check_vectors(X, what=f"embeddings of shard {i}")
    if len(ids) != len(X):
        raise NestembError(f"shard {i}: {len(ids)} ids for {len(X)} embeddings")
    stem = Path(folder) / shard_name(i)
    with atomic_file(f"{stem}.npy") as f:
        np.save(f, X)
    with atomic_file(f"{stem}.ids.json", "w") as f:
        json.dump(list(ids), f)
    record = {"shard": i, "start": int(start), "stop": int(start) + len(X), "rows": len(X),
              "dim": int(X.shape[1]),
              "sha256": {p.name: sha256_file(p) for p in (Path(f"{stem}.npy"),
                                                          Path(f"{stem}.ids.json"))}}  # fmt: skip
    write_json(f"{stem}.json", record)
    return record


def read_done(folder: Path, i: int, verify: bool = True) -> dict | None:
    """The record of shard ``i`` when the shard is complete (its files match their checksums),
    else ``None``."""
    path = Path(folder) / f"{shard_name(i)}.json"
    try:
        record = json.loads(path.read_text())
        files = record["sha256"]
        if verify:
            for name, digest in files.items():
                if sha256_file(Path(folder) / name) != digest:
                    return None
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_shard_dir(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is (or is becoming) a sharded embedding directory: it holds the
    ``job.json`` that :func:`embed_corpus` writes first.

    Example:
        >>> is_shard_dir("/no/such/dir")
        False
    """
    return (Path(directory) / JOB_NAME).is_file()


def load_shards(directory: str | os.PathLike, mmap: bool = False) -> tuple[np.ndarray, Any, list]:
    """Read a finished sharded directory (checksums verified): ``(vectors, manifest, ids)``
    with the rows of all shards in corpus order. An unfinished job (no manifest yet: a shard
    missing or partially written) and a shard file changed after the job are refused, naming
    the shard. (:func:`load_embeddings` reads these directories too.)

    Example:
        >>> load_shards("/no/such/dir")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: sharded embedding directory not found: /no/such/dir
    """
    directory = Path(directory)
    if is_shard_dir(directory) and not (directory / MANIFEST_NAME).is_file():
        _refuse_unfinished(directory)
    manifest = Manifest.open(directory, SHARDS_KIND, "sharded embedding directory")
    parts, ids = [], []
    for rec in manifest.extra["shards"]:
        stem = directory / SHARDS_DIR / shard_name(int(rec["shard"]))
        try:
            part = np.load(f"{stem}.npy", mmap_mode="r" if mmap else None)
        except (OSError, ValueError) as e:
            raise NestembError(f"cannot read {stem}.npy: {str(e).splitlines()[0]}") from None
        part_ids = json.loads(Path(f"{stem}.ids.json").read_text())
        want = (int(rec["rows"]), int(manifest.dim))
        if part.ndim != 2 or part.shape != want or len(part_ids) != want[0]:
            raise NestembError(f"{stem}.npy holds {part.shape} vectors and {len(part_ids)} ids, "
                               f"the manifest says {want}")  # fmt: skip
        parts.append(part)
        ids += part_ids
    X = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return X, manifest, ids


def _refuse_unfinished(directory: Path) -> None:
    """The error for a job directory without its manifest: which shards are done, which not."""
    try:
        job = json.loads((directory / JOB_NAME).read_text())
        total = int(job["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        raise NestembError(f"{directory / JOB_NAME} is unreadable: this sharded embedding job "
                           "cannot be read; run `nestemb embed --ray ... --overwrite` again") from None
    todo = [i for i in range(total) if read_done(directory / SHARDS_DIR, i) is None]
    if not todo:
        raise NestembError(f"{directory} is an unfinished sharded embedding job: all {total} "
                           "shards are complete but the manifest was not written; run the same "
                           "`nestemb embed --ray` command again to finish it")  # fmt: skip
    names = ", ".join(shard_name(i) for i in todo[:3]) + (" ..." if len(todo) > 3 else "")
    raise NestembError(
        f"{directory} is an unfinished sharded embedding job: {total - len(todo)} of {total} "
        f"shards complete ({names} missing or partially written); run the same `nestemb embed "
        "--ray` command again to resume it"
    )
