"""The real text corpus of issue 24: build it, and measure what encoding it costs on this machine.

    bash scripts/install-text-corpus.sh          # the Debian packages (root; apt-get)
    python benchmarks/text_corpus.py build       # -> runs/text_corpus (BEIR folder + manifest)
    python benchmarks/text_corpus.py rate --model minilm
    python benchmarks/text_corpus.py rate --model mpnet
    python benchmarks/text_corpus.py encode --model minilm   # resumable; then --model mpnet

``build`` is :func:`nestemb.data.text_corpus.build_text_corpus` (sources, filters, queries and
their relevance are documented there) and prints the counts. ``rate`` encodes a seeded sample of
the corpus's passages (``--n``, 1,000; the encoder sorts them by length and batches them,
``--batch`` 64) with ``--threads`` torch threads (2), after one warm-up batch, and reports
passages per second and the hours the whole corpus would take at that rate; it writes
``runs/text_corpus_rate/<model>-L<tokens>.json``.

``encode`` embeds every passage and query once, through the text cache (``runs/cache/text``) in
shards of ``--shard`` passages, so a run cut short resumes where it stopped (MiniLM takes about an
hour on 2 cores, mpnet several sessions). It then writes ``runs/text_corpus/embeddings/<model>.json``:
the model id and weights version, the truncation length, the sha256 of the passage and query
texts, and the sha256, shape and cache path of both vector files. :func:`corpus_embeddings` reads
them back (memory-mapped) after checking the corpus they were made from is the one on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nestemb.data.beir import read_corpus  # noqa: E402
from nestemb.data.text_corpus import N_QUERIES, SOURCES, build_text_corpus  # noqa: E402
from nestemb.io import read_json, sha256_file, sha256_texts, write_json  # noqa: E402

OUT = Path("runs/text_corpus")
RATE_OUT = Path("runs/text_corpus_rate")


def build(a: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    man = build_text_corpus(a.out, a.sources.split(","), a.queries, a.seed, overwrite=a.overwrite,
                            log=lambda m: print(m, file=sys.stderr, flush=True))
    counts = man["counts"]
    print(json.dumps({"corpus": counts["corpus"], "queries": counts["queries"],
                      "by_source": counts["by_source"], "dropped": counts["dropped"],
                      "corpus.jsonl sha256": man["sha256"]["corpus.jsonl"],
                      "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    return 0


def rate(a: argparse.Namespace) -> int:
    from nestemb.device import torch_threads
    from nestemb.text.encoder import load_text_model

    records = read_corpus(Path(a.corpus) / "corpus.jsonl")
    rng = np.random.default_rng(a.seed)
    pick = np.sort(rng.choice(len(records), size=min(a.n, len(records)), replace=False))
    texts = [records[i].body for i in pick]
    enc = load_text_model(a.model)
    if a.max_seq_length:
        enc.model.max_seq_length = min(a.max_seq_length, enc.model.max_seq_length)
    tokens = enc.model.max_seq_length
    lengths = [len(enc.model.tokenizer(t, truncation=True, max_length=tokens)["input_ids"])
               for t in texts]
    with torch_threads(a.threads):
        enc.encode(sorted(texts, key=len)[-a.batch:], batch_size=a.batch)  # warm-up
        t0 = time.perf_counter()
        enc.encode(texts, batch_size=a.batch)
        seconds = time.perf_counter() - t0
    per_s = len(texts) / seconds
    result = {
        "model": enc.manifest.model_id, "model_version": enc.manifest.model_version,
        "max_seq_length": tokens, "passages": len(texts), "batch_size": a.batch,
        "threads": a.threads, "seconds": round(seconds, 2),
        "passages_per_s": round(per_s, 1),
        "tokens_mean": round(float(np.mean(lengths)), 1),
        "tokens_p90": int(np.percentile(lengths, 90)),
        "truncated": int(sum(n >= tokens for n in lengths)),
        "corpus_passages": len(records),
        "corpus_hours": round(len(records) / per_s / 3600, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus visible",
    }
    print(json.dumps(result, indent=2))
    write_json(RATE_OUT / f"{enc.manifest.model_id}-L{tokens}.json", result)
    return 0


EMBEDDINGS = "embeddings"
CACHE = Path("runs/cache/text")


def corpus_texts(corpus: Path) -> tuple[list[str], list[str]]:
    """The corpus's passages and queries, in file order (the row order of the embeddings)."""
    docs = [r.body for r in read_corpus(corpus / "corpus.jsonl", "corpus")]
    queries = [r.body for r in read_corpus(corpus / "queries.jsonl", "queries")]
    return docs, queries


def encode(a: argparse.Namespace) -> int:
    from nestemb.device import torch_threads
    from nestemb.text.cache import encode_cached
    from nestemb.text.encoder import load_text_model

    docs, queries = corpus_texts(a.corpus)
    enc = load_text_model(a.model, device=a.device)
    if a.max_seq_length:
        enc.model.max_seq_length = min(a.max_seq_length, enc.model.max_seq_length)
    t0 = time.perf_counter()
    with torch_threads(a.threads):
        q = encode_cached(enc, queries, a.cache, batch_size=a.batch, mmap=True)
        x = encode_cached(enc, docs, a.cache, batch_size=a.batch, shard_size=a.shard, mmap=True)
    man = enc.manifest
    record = {
        "model_id": man.model_id, "model_version": man.model_version,
        "max_seq_length": enc.model.max_seq_length, "dim": enc.dim,
        "corpus": {"n": len(docs), "texts_sha256": sha256_texts(docs), "path": str(x.filename),
                   "vectors_sha256": sha256_file(x.filename)},
        "queries": {"n": len(queries), "texts_sha256": sha256_texts(queries),
                    "path": str(q.filename), "vectors_sha256": sha256_file(q.filename)},
        "seconds_this_run": round(time.perf_counter() - t0, 1), "threads": a.threads, "device": a.device,
    }
    write_json(a.corpus / EMBEDDINGS / f"{man.model_id}.json", record)
    print(json.dumps(record, indent=2))
    return 0


def corpus_embeddings(model_id: str, corpus: Path = OUT) -> tuple[np.ndarray, np.ndarray, dict]:
    """(passage vectors, query vectors, record) of ``model_id`` (e.g. ``all-MiniLM-L6-v2``),
    memory-mapped, after checking the texts on disk are the ones that were encoded."""
    record = read_json(corpus / EMBEDDINGS / f"{model_id}.json", "corpus embeddings record")
    docs, queries = corpus_texts(corpus)
    for part, texts in (("corpus", docs), ("queries", queries)):
        if sha256_texts(texts) != record[part]["texts_sha256"]:
            raise SystemExit(f"{corpus}: the {part} changed since {model_id} encoded it; "
                             f"run `benchmarks/text_corpus.py encode` again")
    x = np.load(record["corpus"]["path"], mmap_mode="r")
    q = np.load(record["queries"]["path"], mmap_mode="r")
    return x, q, record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the corpus folder")
    b.add_argument("--out", type=Path, default=OUT)
    b.add_argument("--sources", default=",".join(SOURCES),
                   help=f"comma-separated, from {','.join(SOURCES)}")
    b.add_argument("--queries", type=int, default=N_QUERIES)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--overwrite", action="store_true")
    r = sub.add_parser("rate", help="encoding throughput on a sample of the corpus")
    r.add_argument("--model", default="minilm", help="minilm, mpnet, or a model folder")
    r.add_argument("--corpus", type=Path, default=OUT)
    r.add_argument("--n", type=int, default=1000)
    r.add_argument("--batch", type=int, default=64)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--max-seq-length", type=int, default=None,
                   help="cap the model's truncation length (tokens)")
    r.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("encode", help="embed the whole corpus and its queries (resumable)")
    e.add_argument("--model", default="minilm", help="minilm, mpnet, or a model folder")
    e.add_argument("--corpus", type=Path, default=OUT)
    e.add_argument("--cache", type=Path, default=CACHE)
    e.add_argument("--shard", type=int, default=16384, help="passages per resumable shard")
    e.add_argument("--batch", type=int, default=64)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--max-seq-length", type=int, default=None,
                   help="cap the model's truncation length (tokens)")
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="where the model encodes (mpnet: about 8.5 h on 2 CPU threads, minutes on a GPU)")
    a = ap.parse_args(argv)
    return {"build": build, "rate": rate, "encode": encode}[a.command](a)


if __name__ == "__main__":
    raise SystemExit(main())
