"""Bulk embedding with Ray Data: an actor pool (one model per actor) writing a sharded, resumable
embedding directory.

:func:`embed_corpus` splits a corpus into fixed row ranges (*shards*: rows ``[i * shard_size,
(i + 1) * shard_size)``), runs the pending ones through ``Dataset.map_batches`` with a fixed
pool of actors (:class:`ray.data.ActorPoolStrategy`; each actor loads the model once and
embeds whole shards) and writes every shard atomically. The output directory::

    OUT/job.json                  what is being embedded: corpus fingerprint, model identity,
                                  shard size, batch size (a resume must match it)
    OUT/shards/shard-00000.npy    float32 rows of shard 0, in corpus order
    OUT/shards/shard-00000.ids.json
    OUT/shards/shard-00000.json   written last: rows, range and sha256 of the two files above
    OUT/manifest.json             written when every shard is done (kind ``embedding-shards``;
                                  sha256 of every shard file, the model's id, version, nesting)

A shard counts as done only when its ``.json`` exists and both files match the checksums in it,
so a run interrupted anywhere -- the driver stopped, a worker killed mid-shard, a truncated file
-- is resumed by running the same call again: finished shards are kept, the others are embedded
again and replace whatever partial files they left. Rows are never duplicated or lost, and
because a shard's rows are always embedded together in the same batches, a resumed run gives
byte-identical files (same checksums) as an uninterrupted one. Each actor runs torch with
``threads_per_worker`` threads (default 1, which also keeps the floats reproducible).

Corpora: :class:`ArrayCorpus` (texts or uint8 images already in memory, as ``nestemb embed``
reads BEIR corpora, text files, IDX folders and ``.npy`` images) and :class:`ParquetCorpus`
(read lazily, shard by shard, by each actor: the choice for very large corpora). On a
multi-node cluster ``OUT`` (and a Parquet input) must be on storage every node sees.

Example:
    >>> import numpy as np
    >>> c = ArrayCorpus(["a cat", "a dog", "the mat"])
    >>> len(c), c.read(1, 3)
    (3, (['a dog', 'the mat'], ['1', '2']))
    >>> shard_ranges(5, 2)
    [(0, 2), (2, 4), (4, 5)]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nestemb.data.beir import doc_text
from nestemb.errors import NestembError
from nestemb.folders import (JOB_NAME, SHARDS_DIR, SHARDS_KIND, check_unique_ids, read_done,
                             shard_name, write_shard)

FORMAT = 1
DEFAULT_SHARD_SIZE = 10_000


# --------------------------------------------------------------------------- corpora
class ArrayCorpus:
    """Items in memory: a sequence of texts, or uint8 images ``(N, H, W)``; ``ids`` default to
    row numbers (as strings). ``source`` is recorded in the job (e.g. the input path); it,
    ``split`` (the IDX split the rows come from, e.g. ``"t10k"``) and ``limit`` (when the rows
    are the first ``limit`` of the input) are recorded in the finished manifest's ``extra``.

    Example:
        >>> ArrayCorpus(np.zeros((2, 4, 4), np.uint8)).kind
        'image'
        >>> ArrayCorpus(["a", "b"], ids=["x", "x"])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: ids must be unique: 'x' appears at rows 0 and 1
    """

    def __init__(self, items: Sequence[str] | np.ndarray, ids: Sequence[Any] | None = None,
                 source: str = "memory", split: str | None = None,
                 limit: int | None = None) -> None:  # fmt: skip
        if isinstance(items, np.ndarray):
            if items.ndim != 3 or items.dtype != np.uint8:
                raise NestembError(f"images must be uint8 (N, H, W), got {items.dtype} {items.shape}")
            self.kind = "image"
            self.items: Any = items
        else:
            items = list(items)
            bad = next((i for i, t in enumerate(items) if not isinstance(t, str)), None)
            if bad is not None:
                raise NestembError(f"items must be texts: item {bad} is a {type(items[bad]).__name__}")
            self.kind = "text"
            self.items = items
        if len(self.items) == 0:
            raise NestembError("the corpus is empty")
        self.ids = [str(i) for i in (ids if ids is not None else range(len(self.items)))]
        if len(self.ids) != len(self.items):
            raise NestembError(f"got {len(self.ids)} ids for {len(self.items)} items")
        check_unique_ids(self.ids)
        self.source = str(source)
        self.split = None if split is None else str(split)
        self.limit = limit

    def __len__(self) -> int:
        return len(self.items)

    def read(self, start: int, stop: int) -> tuple[Any, list[str]]:
        """Items and ids of rows ``[start, stop)``."""
        return self.items[start:stop], self.ids[start:stop]

    def describe(self) -> dict:
        """Kind, source, rows and a sha256 of the content (what a resume must match)."""
        h = hashlib.sha256()
        if self.kind == "image":
            h.update(f"{self.items.shape}|".encode())
            h.update(np.ascontiguousarray(self.items).tobytes())
        else:
            for t in self.items:
                h.update(t.encode("utf-8", "surrogatepass") + b"\x00")
        for i in self.ids:
            h.update(i.encode("utf-8", "surrogatepass") + b"\x01")
        out = {"kind": self.kind, "source": self.source, "rows": len(self),
               "sha256": h.hexdigest()}  # fmt: skip
        if self.kind == "image":
            out["image_hw"] = list(self.items.shape[1:])
        return out


class ParquetCorpus:
    """Texts of a Parquet file, read lazily (only the row groups a shard needs): column
    ``text_column``, prefixed by ``title_column`` when present (as in BEIR corpora), ids from
    ``id_column`` when present, else row numbers. ``limit``: the first rows only.

    Example:
        >>> import tempfile, pathlib, pyarrow as pa, pyarrow.parquet as pq
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.parquet"
        >>> pq.write_table(pa.table({"_id": ["d1", "d2"], "title": ["T", None], "text": ["x", "y"]}), p)
        >>> c = ParquetCorpus(p); len(c), c.read(0, 2)
        (2, (['T x', 'y'], ['d1', 'd2']))
        >>> ParquetCorpus(p, text_column="body")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: .../c.parquet has no column 'body' (columns: _id, title, text)
    """

    def __init__(self, path: str | os.PathLike, text_column: str = "text",
                 title_column: str | None = "title", id_column: str | None = "_id",
                 limit: int | None = None) -> None:  # fmt: skip
        import pyarrow.parquet as pq

        self.path = Path(path)
        if not self.path.is_file():
            raise NestembError(f"Parquet file not found: {self.path}")
        try:
            meta = pq.ParquetFile(self.path).metadata
            schema = pq.read_schema(self.path)
        except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError
            raise NestembError(f"cannot read {self.path} as Parquet: {str(e).splitlines()[0]}") from None
        names = list(schema.names)
        if text_column not in names:
            raise NestembError(f"{self.path} has no column {text_column!r} (columns: {', '.join(names)})")
        self.text_column = text_column
        self.title_column = title_column if title_column in names else None
        self.id_column = id_column if id_column in names else None
        self.groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        total = int(meta.num_rows)
        if limit is not None:
            total = min(total, int(limit))
        if total == 0:
            raise NestembError(f"{self.path} holds no rows")
        self.rows = total
        self.kind = "text"
        self.source, self.split, self.limit = str(self.path), None, limit
        if self.id_column:  # before any work: the id column only, counted by Arrow
            self._check_ids()
        stat = self.path.stat()
        self._stamp = f"{stat.st_size}|{stat.st_mtime_ns}|{meta.num_rows}|{schema}"

    def __len__(self) -> int:
        return self.rows

    def _check_ids(self) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        col = pq.read_table(self.path, columns=[self.id_column]).column(0).slice(0, self.rows)
        try:
            col = pc.cast(col, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # compared as they are
        if pc.count_distinct(col, mode="all").as_py() == len(col):
            return
        counts = pc.value_counts(col)
        first = next(v for v, n in zip(counts.field("values").to_pylist(),
                                       counts.field("counts").to_pylist()) if n > 1)
        raise NestembError(f"{self.path}: ids must be unique: {str(first)!r} appears more "
                           "than once")

    def read(self, start: int, stop: int) -> tuple[list[str], list[str]]:
        """Texts and ids of rows ``[start, stop)``, reading only the row groups they lie in."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        stop = min(stop, self.rows)
        cols = [c for c in (self.id_column, self.title_column, self.text_column) if c]
        f = pq.ParquetFile(self.path)
        tables, first, offset = [], None, 0
        for g, n in enumerate(self.groups):
            if offset + n > start and offset < stop:
                if first is None:
                    first = offset
                tables.append(f.read_row_group(g, columns=cols))
            offset += n
        table = pa.concat_tables(tables).slice(start - (first or 0), stop - start)
        text = table.column(self.text_column).to_pylist()
        title = table.column(self.title_column).to_pylist() if self.title_column else [None] * len(text)
        bad = next((i for i, t in enumerate(text) if not isinstance(t, str)), None)
        if bad is not None:
            raise NestembError(f"{self.path}: row {start + bad} has no text (column "
                               f"{self.text_column!r} is {text[bad]!r})")  # fmt: skip
        texts = [doc_text(h, t) for h, t in zip(title, text)]
        if self.id_column:
            ids = [str(i) for i in table.column(self.id_column).to_pylist()]
        else:
            ids = [str(i) for i in range(start, stop)]
        return texts, ids

    def describe(self) -> dict:
        return {"kind": "text", "source": str(self.path), "rows": self.rows,
                "sha256": hashlib.sha256(self._stamp.encode()).hexdigest(),
                "columns": [self.id_column, self.title_column, self.text_column]}  # fmt: skip


def shard_ranges(rows: int, shard_size: int) -> list[tuple[int, int]]:
    """The row range ``[start, stop)`` of every shard.

    Example:
        >>> shard_ranges(3, 10)
        [(0, 3)]
    """
    if shard_size < 1:
        raise NestembError(f"shard_size must be at least 1, got {shard_size}")
    return [(s, min(s + shard_size, rows)) for s in range(0, rows, shard_size)]


# --------------------------------------------------------------------------- models
BUNDLED_TEXT_MODELS = ("minilm", "mpnet")
"""Text models named rather than given as a folder (the bundled MiniLM; mpnet with its extra)."""


def model_kind(model: str | os.PathLike) -> str:
    """The one model-kind dispatch: ``"image"`` or ``"text"`` for a bundled name, a saved
    nestemb model folder or a plain sentence-transformers folder, read from the manifest
    without loading any weights. Another artefact (an index, embeddings) is refused by name.

    Example:
        >>> model_kind("minilm")
        'text'
        >>> model_kind("/no/such/model")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: model not found: /no/such/model (give a saved model folder, or minilm or mpnet)
    """
    from nestemb.io import article
    from nestemb.nesting import MANIFEST_NAME, Manifest

    name = str(model)
    if name.lower() in BUNDLED_TEXT_MODELS:
        return "text"
    path = Path(name)
    if not path.is_dir():
        raise NestembError(f"model not found: {name} (give a saved model folder, or "
                           f"{' or '.join(BUNDLED_TEXT_MODELS)})")
    if not (path / MANIFEST_NAME).is_file():
        return "text"  # a plain sentence-transformers folder
    kind = Manifest.load(path).kind
    if kind not in ("image-model", "text-model"):
        raise NestembError(f"{name} holds {article(kind)}; a model is an image-model or a "
                           "text-model")
    return kind.split("-")[0]


def load_encoder(model: str | os.PathLike, device: str = "cpu") -> Any:
    """The encoder of :func:`model_kind`'s model: an object with ``encode(items, batch_size)``
    and ``manifest``; its ``kind`` is ``"image"`` or ``"text"``.

    Example:
        >>> load_encoder("/no/such/model")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: model not found: /no/such/model (give a saved model folder, or minilm or mpnet)
    """
    kind = model_kind(model)
    enc: Any
    if kind == "image":
        from nestemb.models.image import load_image_model

        enc = load_image_model(model)
    else:
        from nestemb.text.encoder import load_text_model

        enc = load_text_model(str(model), device=device)
    enc.kind = kind
    return enc


class _ShardWriter:
    """The Ray Data UDF: one per actor. Loads the model once, then embeds and writes whole
    shards (``batch["shard"]``) atomically; returns one summary row per shard."""

    def __init__(self, model: str, corpus: list, out: str, shard_size: int, batch_size: int,
                 version: str, threads: int, device: str) -> None:  # fmt: skip
        import torch

        torch.set_num_threads(int(threads))
        self.encoder = load_encoder(model, device=device)
        if self.encoder.manifest.model_version != version:
            raise NestembError(
                f"the model {model} changed while the job ran: version "
                f"{self.encoder.manifest.model_version!r} on this worker, {version!r} in the job"
            )
        source = corpus[0]
        if not hasattr(source, "read"):  # an object reference (Ray passes nested ones as is)
            import ray

            source = ray.get(source)
        self.corpus = source
        self.out = Path(out) / SHARDS_DIR
        self.shard_size, self.batch_size = int(shard_size), int(batch_size)

    def __call__(self, batch: dict) -> dict:
        done: dict[str, list] = {"shard": [], "rows": [], "pid": [], "seconds": []}
        for i in (int(v) for v in batch["shard"]):
            t0 = time.perf_counter()
            start = i * self.shard_size
            items, ids = self.corpus.read(start, min(start + self.shard_size, len(self.corpus)))
            X = self.encoder.encode(items, batch_size=self.batch_size)
            write_shard(self.out, i, X, ids, start)
            for key, v in (("shard", i), ("rows", len(ids)), ("pid", os.getpid()),
                           ("seconds", time.perf_counter() - t0)):  # fmt: skip
                done[key].append(v)
        return {k: np.asarray(v) for k, v in done.items()}


# --------------------------------------------------------------------------- the job
def _job_spec(corpus, encoder, model: str, shard_size: int, batch_size: int) -> dict:
    man = encoder.manifest
    return {"format": FORMAT, "corpus": corpus.describe(), "shard_size": int(shard_size),
            "shards": len(shard_ranges(len(corpus), shard_size)), "batch_size": int(batch_size),
            "model": {"model_id": man.model_id, "model_version": man.model_version,
                      "nesting": list(man.nesting), "dim": int(man.dim), "path": str(model)}}  # fmt: skip


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b and key != "source" and key != "path":
            out.append(f"{prefix}{key} {a!r} there, {b!r} now")
    return out


def _prepare_out(out: Path, spec: dict, overwrite: bool) -> None:
    """Create ``out`` or check that it holds the same, unfinished job."""
    from nestemb.io import check_replaceable, write_json, write_marker
    from nestemb.nesting import MANIFEST_NAME

    if out.exists() and not out.is_dir():
        raise NestembError(f"output path exists and is not a directory: {out}")
    if out.is_dir() and any(out.iterdir()):
        ours = (out / JOB_NAME).is_file()
        if overwrite:
            check_replaceable(out, SHARDS_KIND, overwrite, generated=_job_file)
            shutil.rmtree(out)
        elif not ours:
            raise NestembError(f"output directory already exists and is not empty: {out} (it is "
                               "not a nestemb embedding job; use another --out)")
        elif (out / MANIFEST_NAME).is_file():
            raise NestembError(f"{out} already holds a finished job (use --overwrite to redo it)")
        else:
            try:
                old = json.loads((out / JOB_NAME).read_text())
            except (OSError, ValueError):
                raise NestembError(f"{out / JOB_NAME} is unreadable: use --overwrite") from None
            diff = _differences(old, spec)
            if diff:
                raise NestembError(f"{out} holds an unfinished job for other input: "
                                   f"{'; '.join(diff[:3])} (use --overwrite to start over)")
            return
    (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    write_json(out / JOB_NAME, spec)
    write_marker(out, SHARDS_KIND)


def _job_file(rel: str) -> bool:
    """Whether ``rel`` (a path inside a job folder) is one an embedding job writes: its shards
    land one by one, after the folder's marker was written."""
    return rel in (JOB_NAME, "manifest.json", "run.json", SHARDS_DIR) or bool(
        re.fullmatch(rf"{SHARDS_DIR}/shard-\d{{5}}(\.npy|\.ids\.json|\.json)", rel))


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast, with the address in the message, when a ``HOST:PORT`` or ``ray://HOST:PORT``
    Ray address accepts no connection (Ray itself retries for minutes). ``None`` and ``"auto"``
    are not checked.

    Example:
        >>> check_reachable("127.0.0.1:1")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: cannot reach the Ray cluster at 127.0.0.1:1: ...
        >>> check_reachable("nowhere")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: Ray address must be auto, HOST:PORT or ray://HOST:PORT, got 'nowhere'
    """
    import socket

    if address is None or address in ("auto", "local"):
        return
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise NestembError(f"Ray address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise NestembError(f"cannot reach the Ray cluster at {address}: "
                           f"{e.strerror or e.__class__.__name__}") from None


def _connect(address: str | None) -> bool:
    """Connect to Ray (``address``) or start a local instance; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = address or "a local Ray instance"
        raise NestembError(f"cannot reach the Ray cluster at {where}: {first}") from None
    return True


def _user_error(e: BaseException) -> NestembError | None:
    """The NestembError a Ray task raised (its parameter kept), if ``e`` wraps one."""
    seen = set()
    err: BaseException | None = e
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, NestembError):
            return err
        cause = getattr(err, "cause", None)
        if isinstance(cause, BaseException):
            err = cause
            continue
        err = err.__cause__ or err.__context__
    return None


def embed_corpus(
    corpus: ArrayCorpus | ParquetCorpus,
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    workers: int = 2,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 256,
    address: str | None = None,
    overwrite: bool = False,
    threads_per_worker: int = 1,
    device: str = "cpu",
    on_shard: Callable[[dict], None] | None = None,
) -> dict:
    """Embed ``corpus`` with ``model`` into the sharded directory ``out`` with a Ray Data actor
    pool of ``workers`` actors (each ``threads_per_worker`` CPUs; with ``device="cuda"`` one GPU
    each). Resumes an unfinished job in ``out`` (same corpus, model, shard and batch size);
    ``overwrite`` starts over. ``address``: a Ray cluster (``"auto"``, ``"ray://host:10001"``);
    default: the running Ray, else a local one. ``on_shard(row)`` is called in the driver as
    each shard lands (``row``: shard, rows, pid, seconds).

    Returns a summary: ``rows``, ``shards``, ``skipped`` (done before this call), ``embedded``,
    ``seconds`` (Ray phase), ``items_per_s`` (rows embedded by this call / seconds).

    Example:
        >>> embed_corpus(ArrayCorpus(["a"]), "minilm", "/tmp/x", workers=0)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: workers must be at least 1, got 0
    """
    from nestemb.io import write_json, write_marker
    from nestemb.nesting import Manifest, lineage

    for name, v in (("workers", workers), ("shard_size", shard_size), ("batch_size", batch_size),
                    ("threads_per_worker", threads_per_worker)):  # fmt: skip
        if int(v) < 1:
            raise NestembError(f"{name} must be at least 1, got {v}")
    check_reachable(address)  # before anything is written
    out = Path(out)
    encoder = load_encoder(model, device="cpu")
    if encoder.kind != corpus.kind:
        what = "images" if encoder.kind == "image" else "texts"
        raise NestembError(f"{model} is {'an image' if encoder.kind == 'image' else 'a text'} "
                           f"model: it embeds {what}, the corpus holds {corpus.kind}s")  # fmt: skip
    if encoder.kind == "image":
        hw = tuple(corpus.describe()["image_hw"])
        if hw != tuple(encoder.config.in_hw):
            raise NestembError(f"the corpus holds {hw} images, the model takes {tuple(encoder.config.in_hw)}")
    spec = _job_spec(corpus, encoder, str(model), shard_size, batch_size)
    man = encoder.manifest
    del encoder
    _prepare_out(out, spec, overwrite)
    folder = out / SHARDS_DIR
    ranges = shard_ranges(len(corpus), shard_size)
    pending = [i for i in range(len(ranges)) if read_done(folder, i) is None]
    skipped = len(ranges) - len(pending)
    t0 = time.perf_counter()
    embedded = 0
    if pending:
        embedded = _run_ray(corpus, str(model), out, pending, spec, workers, shard_size,
                            batch_size, address, threads_per_worker, device, on_shard)  # fmt: skip
    seconds = time.perf_counter() - t0
    records = [read_done(folder, i) for i in range(len(ranges))]
    missing = [i for i, r in enumerate(records) if r is None]
    if missing:
        raise NestembError(f"shards {missing[:5]} are missing after the run: run again to resume")
    done = [r for r in records if r is not None]  # every one, after the check above
    for i, (r, (a, b)) in enumerate(zip(done, ranges)):
        if (r["start"], r["stop"]) != (a, b):
            raise NestembError(f"shard {i} holds rows {r['start']}..{r['stop']}, expected {a}..{b}")
    check_unique_ids([i for k in range(len(ranges))
                   for i in json.loads((folder / f"{shard_name(k)}.ids.json").read_text())])
    sha = {f"{SHARDS_DIR}/{name}": d for r in done for name, d in r["sha256"].items()}
    manifest = Manifest(model_id=man.model_id, model_version=man.model_version,
                        nesting=man.nesting, dim=man.dim, kind=SHARDS_KIND, sha256=sha,
                        extra={"job": spec, "shards": [
                            {k: r[k] for k in ("shard", "start", "stop", "rows")}
                            for r in done], **origin(corpus), **lineage(man)})  # fmt: skip
    manifest.save(out)
    write_json(out / "run.json", {"seconds": seconds, "embedded_rows": embedded, "workers": workers})
    write_marker(out, SHARDS_KIND)
    rows = len(corpus)
    todo = set(pending)
    done_rows = sum(b - a for i, (a, b) in enumerate(ranges) if i in todo)
    return {"rows": rows, "shards": len(ranges), "skipped": skipped,
            "embedded": len(pending), "seconds": seconds,
            "items_per_s": done_rows / seconds if pending and seconds > 0 else 0.0}  # fmt: skip


def origin(corpus: ArrayCorpus | ParquetCorpus) -> dict:
    """Where a corpus's rows come from, as embedding manifests record it in ``extra``:
    ``source`` (the input path), ``rows``, and ``split`` (an IDX split) and ``limit`` when
    they apply.

    Example:
        >>> origin(ArrayCorpus(np.zeros((2, 4, 4), np.uint8), source="fmnist", split="t10k"))
        {'source': 'fmnist', 'rows': 2, 'split': 't10k'}
    """
    out: dict = {"source": corpus.source, "rows": len(corpus)}
    if corpus.split is not None:
        out["split"] = corpus.split
    if corpus.limit is not None:
        out["limit"] = int(corpus.limit)
    return out


def _run_ray(corpus, model, out, pending, spec, workers, shard_size, batch_size, address,
             threads, device, on_shard) -> int:  # fmt: skip
    """Embed the ``pending`` shards on Ray; returns how many landed."""
    import ray
    import ray.data

    started = _connect(address)
    try:
        need = workers * threads
        have = ray.cluster_resources().get("CPU", 0)
        if have < need:
            raise NestembError(f"the Ray cluster has {have:g} CPUs; {workers} workers x "
                               f"{threads} threads need {need}")  # fmt: skip
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ref = ray.put(corpus)
        args = dict(model=model, corpus=[ref], out=str(out), shard_size=shard_size,
                    batch_size=batch_size, version=spec["model"]["model_version"],
                    threads=threads, device=device)  # fmt: skip
        remote: dict[str, Any] = {"num_gpus": 1} if device.startswith("cuda") else {}
        ds: Any = ray.data.from_items([{"shard": i} for i in pending], override_num_blocks=len(pending))
        ds = ds.map_batches(_ShardWriter, fn_constructor_kwargs=args, batch_size=1,
                            batch_format="numpy", num_cpus=threads,
                            compute=ray.data.ActorPoolStrategy(size=workers), **remote)  # fmt: skip
        landed = 0
        rows = iter(ds.iter_rows())
        try:
            for row in rows:
                landed += 1
                if on_shard is not None:
                    on_shard({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
        except NestembError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # a Ray task failed
            user = _user_error(e)
            if user is not None:
                raise user from None
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise NestembError(f"the Ray job stopped ({first}); finished shards are kept: run the "
                               "same command again to resume") from None
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()
        return landed
    finally:
        if started:
            ray.shutdown()


