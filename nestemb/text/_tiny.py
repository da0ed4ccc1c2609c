"""A tiny random BERT wrapped as a sentence-transformers folder, for fast tests."""

from __future__ import annotations

import os
from pathlib import Path

WORDS = (
    "the a cat dog sits runs on mat park is red blue big small what where who query doc "
    "protein cell gene cancer study shows results patients risk increase decrease "
    "man woman plays guitar eats food car drives fast slow"
).split()


def make_tiny_model(path: str | os.PathLike, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write a random BERT (``hidden`` wide, ``layers`` deep, word-level vocab) with mean pooling
    as a sentence-transformers folder at ``path``; returns the path.

    Example:
        >>> import tempfile, pathlib
        >>> p = make_tiny_model(pathlib.Path(tempfile.mkdtemp()) / "tiny")
        >>> (p / "modules.json").is_file()
        True
    """
    import torch
    from sentence_transformers import SentenceTransformer
    try:  # sentence-transformers >= 6 moved the modules
        from sentence_transformers.sentence_transformer import modules as st_models
    except ImportError:  # pragma: no cover - older releases
        from sentence_transformers import models as st_models  # type: ignore[no-redef]  # pre-6 path
    # transformers >= 5 aliases BertTokenizerFast lazily; its __init__ no longer declares it
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

    path = Path(path)
    raw = path.parent / f".{path.name}-hf"
    raw.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", "?", ","]
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = BertTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(str(raw))
    tok.save_pretrained(str(raw))
    tr = st_models.Transformer(str(raw), max_seq_length=32)
    pool = st_models.Pooling(hidden, pooling_mode="mean")
    SentenceTransformer(modules=[tr, pool], device="cpu").save(str(path))
    import shutil

    shutil.rmtree(raw, ignore_errors=True)
    return path


def make_tiny_beir(path: str | os.PathLike, n_docs: int = 40, seed: int = 0) -> Path:
    """A small BEIR folder built from :data:`WORDS` with ``train`` and ``test`` qrels.

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.data.beir import load_beir
        >>> d = make_tiny_beir(pathlib.Path(tempfile.mkdtemp()) / "beir")
        >>> len(load_beir(d, "train").pairs()), len(load_beir(d, "test").pairs())
        (30, 10)
    """
    import json
    import random

    rng = random.Random(seed)
    path = Path(path)
    (path / "qrels").mkdir(parents=True, exist_ok=True)
    docs = {f"d{i}": " ".join(rng.choices(WORDS, k=12)) for i in range(n_docs)}
    queries = {f"q{i}": " ".join(docs[f"d{i}"].split()[:4]) for i in range(n_docs)}
    with open(path / "corpus.jsonl", "w") as f:
        for k, v in docs.items():
            f.write(json.dumps({"_id": k, "title": "", "text": v}) + "\n")
    with open(path / "queries.jsonl", "w") as f:
        for k, v in queries.items():
            f.write(json.dumps({"_id": k, "text": v}) + "\n")
    n_train = n_docs * 3 // 4
    for split, ids in (("train", range(n_train)), ("test", range(n_train, n_docs))):
        with open(path / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for i in ids:
                f.write(f"q{i}\td{i}\t1\n")
    return path


def make_tiny_sts(path: str | os.PathLike, n: int = 30, seed: int = 0) -> Path:
    """An STS-B format TSV of ``n`` random pairs (scores: word overlap x 5).

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.data.pairs import read_sts
        >>> len(read_sts(make_tiny_sts(pathlib.Path(tempfile.mkdtemp()) / "sts.csv")))
        30
    """
    import random

    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        a = rng.choices(WORDS, k=6)
        b = a[: rng.randint(0, 6)] + rng.choices(WORDS, k=3)
        score = 5.0 * len(set(a) & set(b)) / len(set(a) | set(b))
        lines.append(f"g\tf\ty\t{i:04d}\t{score:.3f}\t{' '.join(a)}\t{' '.join(b)}")
    path.write_text("\n".join(lines) + "\n")
    return path
