"""Evaluate text encoders per prefix (and exit layer) on BEIR and STS data: the bodies of
``nestemb text eval-retrieval`` and ``nestemb text eval-sts``, usable without the CLI (typed
arguments: paths, sequences of ints)."""

from __future__ import annotations

import os
from typing import Sequence

from nestemb.progress import counter, progress_stages


def _check_batch_size(batch_size: int) -> None:
    from nestemb.errors import NestembError

    if int(batch_size) < 1:
        raise NestembError(f"{{param}} must be at least 1, got {batch_size}", param="batch_size")


def _check_model(model, encoder, dims, layers) -> None:
    """Check dims and layers against the model's shape before loading it (every input error
    comes before the slow load)."""
    from nestemb.text.encoder import check_model_inputs

    if encoder is None:
        check_model_inputs(model, dims, layers)


def _encoder(model, encoder, device, dims, layers):
    """The encoder to evaluate (given, or loaded), with dims (default: its nesting) and layers
    checked against it."""
    from nestemb.text.encoder import check_dims, check_layers, load_text_model

    enc = encoder or load_text_model(model, device=device)
    dims_t = check_dims(enc.manifest.nesting if dims is None else dims, enc.dim)
    return enc, dims_t, check_layers(layers, enc.n_layers)


def run_eval_retrieval(
    beir: str | os.PathLike,
    model: str | os.PathLike = "minilm",
    dims: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    *,
    split: str = "test",
    batch_size: int = 64,
    device: str | None = "auto",
    show_progress: bool = False,
    encoder=None,
) -> dict:
    """nDCG@10 and recall@100 of a text model on a BEIR split at every prefix in ``dims``
    (default: the model's nesting) and, with ``layers``, at each exit layer. ``encoder`` (a
    loaded :class:`~nestemb.text.encoder.TextEncoder`) replaces ``model``. Returns the result
    dict (``dims``, ``ndcg10``, ``recall100``, model identity, counts).

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text._tiny import make_tiny_beir, make_tiny_model
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> r = run_eval_retrieval(make_tiny_beir(root / "b"), make_tiny_model(root / "m"), [8, 32])
        >>> r["dims"], len(r["ndcg10"]), r["n_queries"]
        ([8, 32], 2, 10)
        >>> run_eval_retrieval("/no/such/beir", "minilm", [32])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: BEIR folder not found: /no/such/beir
    """
    from nestemb.data.beir import load_beir
    from nestemb.eval.retrieval import evaluate_retrieval

    _check_batch_size(batch_size)
    data = load_beir(beir, split)
    _check_model(model, encoder, dims, layers)
    enc, dims_t, layer_t = _encoder(model, encoder, device, dims, layers)
    qids, dids = list(data.queries), list(data.corpus)
    with progress_stages(show_progress) as upd:
        # every text once, all exit layers from the same forward pass; the total is known up front
        cb = counter(upd, "encoding", len(qids) + len(dids))
        q = enc.encode_layers([data.queries[i] for i in qids], layer_t, batch_size, cb)
        d = enc.encode_layers([data.corpus[i] for i in dids], layer_t, batch_size, cb)
    if layer_t is None:
        res = evaluate_retrieval(q[enc.n_layers], d[enc.n_layers], qids, dids, data.qrels, dims_t)
    else:
        per = [evaluate_retrieval(q[la], d[la], qids, dids, data.qrels, dims_t) for la in layer_t]
        res = {"dims": list(dims_t), "layers": list(layer_t),
               "ndcg10": [r["ndcg10"] for r in per], "recall100": [r["recall100"] for r in per]}
    return {**res, "model": enc.manifest.model_id, "model_version": enc.manifest.model_version,
            "split": split, "n_queries": len(qids), "n_docs": len(dids)}


def run_eval_sts(
    sts: str | os.PathLike,
    model: str | os.PathLike = "minilm",
    dims: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 64,
    device: str | None = "auto",
    show_progress: bool = False,
    encoder=None,
) -> dict:
    """Spearman correlation on an STS-B TSV at every prefix in ``dims`` (default: the model's
    nesting) and, with ``layers``, at each exit layer. Returns the result dict.

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text._tiny import make_tiny_model, make_tiny_sts
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> r = run_eval_sts(make_tiny_sts(root / "s.csv"), make_tiny_model(root / "m"), [8, 32])
        >>> r["dims"], len(r["spearman"]), r["n_pairs"]
        ([8, 32], 2, 30)
        >>> run_eval_sts("/no/such.tsv", "minilm", [32])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: STS file not found: /no/such.tsv
    """
    from nestemb.data.pairs import read_sts
    from nestemb.eval.sts import check_scores, evaluate_sts

    _check_batch_size(batch_size)
    rows = read_sts(sts)
    check_scores([r[2] for r in rows], f"the scores in {sts}")
    _check_model(model, encoder, dims, layers)
    enc, dims_t, layer_t = _encoder(model, encoder, device, dims, layers)
    sents = sorted({s for r in rows for s in r[:2]})
    pos = {s: i for i, s in enumerate(sents)}
    with progress_stages(show_progress) as upd:
        e = enc.encode_layers(sents, layer_t, batch_size, counter(upd, "encoding", len(sents)))
    i1 = [pos[r[0]] for r in rows]
    i2 = [pos[r[1]] for r in rows]
    scores = [r[2] for r in rows]
    if layer_t is None:
        x = e[enc.n_layers]
        res = evaluate_sts(x[i1], x[i2], scores, dims_t)
    else:
        per = [evaluate_sts(e[la][i1], e[la][i2], scores, dims_t)["spearman"] for la in layer_t]
        res = {"dims": list(dims_t), "layers": list(layer_t), "spearman": per}
    return {**res, "model": enc.manifest.model_id, "model_version": enc.manifest.model_version,
            "n_pairs": len(rows)}
