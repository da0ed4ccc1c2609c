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


def public_sentences(shared: str | Path = "../shared/data", limit: int | None = None) -> list[str]:
    """Public text a user has besides their corpus, for fitting maps between two models: the
    unique sentences of SNLI (dev, test), STS-B (train, dev: its test split is kept for
    evaluation) and MRPC (train, test), sorted, so that every script hits the same cache entry;
    ``limit``: a seeded sample of that many (sorted too; encoding 47k sentences with mpnet on
    two CPU cores takes hours)."""
    from nestemb.data.pairs import read_mrpc

    root = Path(shared)
    out: set[str] = set()
    for split in ("dev", "test"):
        for side in ("s1", "s2"):
            out.update(s.strip() for s in (root / "snli" / f"{side}.{split}").read_text(
                encoding="utf-8").splitlines() if s.strip())
    for split in ("train", "dev"):
        for a, b, _ in read_sts(root / "stsb" / f"sts-{split}.csv"):
            out.update((a, b))
    for split in ("train", "test"):
        for a, b, _ in read_mrpc(root / "mrpc" / f"msr_paraphrase_{split}.txt"):
            out.update((a, b))
    sents = sorted(out)
    if limit is not None and limit < len(sents):
        keep = np.random.default_rng(0).choice(len(sents), limit, replace=False)
        sents = [sents[i] for i in sorted(keep)]
    return sents
