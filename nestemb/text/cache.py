"""A disk cache of text embeddings, keyed by model identity and the exact texts.

Benchmarks and experiments encode the same corpus with the same frozen model many times; on a
CPU a 5k-document corpus costs minutes per model. :func:`encode_cached` encodes once and keeps
the full float32 vectors in ``cache_dir`` under a name built from the model id, its weights
version (:func:`nestemb.nesting.weights_version`) and a sha256 of the texts, so a changed model
(weights or truncation length) or a changed text list can never return stale vectors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.io import atomic_file, sha256_texts


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
                  batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Full embeddings of ``texts`` by ``encoder`` (a :class:`nestemb.text.encoder.TextEncoder`),
    read from ``cache_dir`` when present, else encoded (with a progress bar) and stored.

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
    """
    from nestemb.progress import progress_bar

    texts = [str(t) for t in texts]
    man = encoder.manifest
    # the truncation length changes the vectors as much as the weights do
    version = f"{man.model_version}-L{encoder.model.max_seq_length}"
    path = Path(cache_dir) / f"{cache_key(man.model_id, version, texts)}.npy"
    if path.is_file():
        x = np.load(path)
        if x.shape == (len(texts), encoder.dim):
            return x
        raise NestembError(f"cached embeddings {path} have shape {x.shape}, expected "
                           f"{(len(texts), encoder.dim)}: delete the file")
    with progress_bar(progress) as bar:
        task = bar.add_task(f"encoding {len(texts)} texts with {man.model_id}", total=len(texts))
        x = encoder.encode(texts, batch_size=batch_size,
                           progress=lambda n: bar.advance(task, n))
    with atomic_file(path) as f:
        np.save(f, x)
    return x
