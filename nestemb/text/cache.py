"""A disk cache of text embeddings, keyed by model identity and the exact texts.

Benchmarks and experiments encode the same corpus with the same frozen model many times; on a
CPU a 5k-document corpus costs minutes per model. :func:`encode_cached` encodes once and keeps
the full float32 vectors in ``cache_dir`` under a name built from the model id, its weights
version (:func:`nestemb.nesting.weights_version`) and a sha256 of the texts, so a changed model
(weights or truncation length) or a changed text list can never return stale vectors.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.io import atomic_file, save_npy_blocks, sha256_texts


def cache_key(model_id: str, model_version: str, texts: Sequence[str]) -> str:
    """The cache file stem for these texts under this model.

    Example:
        >>> cache_key("all-MiniLM-L6-v2", "f797d31f3f020867", ["a", "b"])
        'all-MiniLM-L6-v2-f797d31f3f020867-2-cf6ab613e3942391'
        >>> cache_key("m", "v", ["a", "b"]) != cache_key("m", "v", ["a b"])
        True
    """
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
    return f"{safe_id}-{model_version}-{len(texts)}-{sha256_texts(texts)[:16]}"


def encode_cached(encoder, texts: Sequence[str], cache_dir: str | os.PathLike,
                  batch_size: int = 64, progress: bool = True, *,
                  shard_size: int | None = None, mmap: bool = False) -> np.ndarray:
    """Full embeddings of ``texts`` by ``encoder`` (a :class:`nestemb.text.encoder.TextEncoder`),
    read from ``cache_dir`` when present, else encoded (with a progress bar) and stored.

    ``shard_size`` makes a long encoding resumable: the texts are encoded ``shard_size`` at a
    time, each shard kept in ``<entry>.parts/`` as soon as it is done, so an interrupted run (a
    crash, the end of a session) picks up at the first missing shard. When all are there they
    are streamed into the one cache entry (never all in memory at once) and the shards removed.
    ``mmap=True`` returns the entry memory-mapped read-only, for corpora larger than memory.

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text.encoder import load_text_model
        >>> from nestemb.text._tiny import make_tiny_model
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> enc = load_text_model(make_tiny_model(d / "m"))
        >>> a = encode_cached(enc, ["the cat", "a dog"], d / "cache", progress=False)
        >>> b = encode_cached(enc, ["the cat", "a dog"], d / "cache", progress=False)  # read back
        >>> a.shape, bool((a == b).all()), len(list((d / "cache").glob("*.npy")))
        ((2, 32), True, 1)
        >>> c = encode_cached(enc, ["a", "b", "c"], d / "cache", progress=False, shard_size=2)
        >>> c.shape, any(p.suffix == ".parts" for p in (d / "cache").iterdir())
        ((3, 32), False)
    """
    from nestemb.progress import progress_bar

    if shard_size is not None and shard_size < 1:
        raise NestembError(f"shard_size must be at least 1, got {shard_size}")
    texts = [str(t) for t in texts]
    man = encoder.manifest
    # the truncation length changes the vectors as much as the weights do
    version = f"{man.model_version}-L{encoder.model.max_seq_length}"
    path = Path(cache_dir) / f"{cache_key(man.model_id, version, texts)}.npy"
    if not path.is_file():
        step = shard_size or max(len(texts), 1)
        starts = range(0, len(texts), step)
        parts = path.with_suffix(".parts")
        part = {s: parts / f"{s // step:06d}.npy" for s in starts}
        done = {s for s in starts if _readable(part[s], (len(texts[s:s + step]), encoder.dim))}
        with progress_bar(progress) as bar:
            task = bar.add_task(f"encoding {len(texts)} texts with {man.model_id}",
                                total=len(texts),
                                completed=sum(len(texts[s:s + step]) for s in done))
            shards = {}
            for s in starts:
                if s in done:
                    continue
                x = encoder.encode(texts[s:s + step], batch_size=batch_size,
                                   progress=lambda n: bar.advance(task, n))
                if shard_size is None:  # one piece: straight to the entry
                    shards[s] = x
                    break
                with atomic_file(part[s]) as f:
                    np.save(f, x)
        save_npy_blocks(path, (len(texts), encoder.dim),
                        (shards[s] if s in shards else np.load(part[s]) for s in starts))
        if shard_size is not None:
            shutil.rmtree(parts, ignore_errors=True)
    x = np.load(path, mmap_mode="r" if mmap else None)
    if x.shape == (len(texts), encoder.dim):
        return x
    raise NestembError(f"cached embeddings {path} have shape {x.shape}, expected "
                       f"{(len(texts), encoder.dim)}: delete the file")


def _readable(path: Path, shape: tuple[int, int]) -> bool:
    """Whether a finished shard of this shape is at ``path`` (shards are written atomically, so
    a wrong shape means another run's leftovers: encode it again)."""
    try:
        return np.load(path, mmap_mode="r").shape == shape
    except (OSError, ValueError):
        return False
