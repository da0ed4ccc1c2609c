"""Shared text inputs of the upgrade and adaptor benchmarks, in one fixed order, so every script
hits the same :func:`nestemb.text.cache.encode_cached` entries (``runs/cache/text``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from nestemb.data.beir import BeirData, load_beir
from nestemb.data.pairs import read_sts
from nestemb.text.cache import encode_cached

CACHE = Path("runs/cache/text")


@dataclasses.dataclass
class Scifact:
    """SciFact test split: corpus ids/texts, query ids/texts and qrels (ids as strings)."""

    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]
    data: BeirData


def scifact(folder: str | Path, split: str = "test") -> Scifact:
    data = load_beir(folder, split)
    return Scifact(list(data.corpus), list(data.corpus.values()), list(data.queries),
                   list(data.queries.values()), data.qrels, data)


def sts(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """STS rows as (sorted unique sentences, index of sentence 1, index of sentence 2, gold)."""
    rows = read_sts(path)
    sents = sorted({s for r in rows for s in r[:2]})
    pos = {s: i for i, s in enumerate(sents)}
    a = np.array([pos[r[0]] for r in rows])
    b = np.array([pos[r[1]] for r in rows])
    return sents, a, b, np.array([r[2] for r in rows], dtype=np.float64)


def embed(encoder, texts: list[str], cache: Path = CACHE) -> np.ndarray:
    return encode_cached(encoder, texts, cache)


def load_encoder(name: str, max_seq_length: int | None = None):
    """A text encoder by name; ``max_seq_length`` (if given) caps its truncation length."""
    from nestemb.text.encoder import load_text_model

    enc = load_text_model(name)
    if max_seq_length is not None:
        enc.model.max_seq_length = min(int(max_seq_length), enc.model.max_seq_length)
    return enc
