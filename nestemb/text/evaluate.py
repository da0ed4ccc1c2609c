"""Evaluate text encoders per prefix (and exit layer) on BEIR and STS data: the bodies of
``nestemb eval-retrieval`` and ``nestemb eval-sts``, usable without the CLI."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from nestemb.nesting import parse_ints
from nestemb.progress import progress_bar


def _device(device: Optional[str]) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def _progress(enabled: bool = True) -> Iterator:
    """A rich progress display; yields ``update(stage, done, total)`` (``total=-1``: add ``done``
    items to an open-ended count)."""
    if not enabled:
        yield lambda *a: None
        return
    with progress_bar() as prog:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int = -1) -> None:
            if stage not in tasks:
                tasks[stage] = prog.add_task(stage, total=None if total < 0 else total)
            if total < 0:
                prog.advance(tasks[stage], done)
            else:
                prog.update(tasks[stage], completed=done, total=total)

        yield update


def run_eval_retrieval(beir: str, split: str, model: str, dims: str, layers: Optional[str],
                       batch_size: int = 64, device: Optional[str] = None,
                       show_progress: bool = False, encoder=None) -> dict:
    """Evaluate a text model on a BEIR split at every prefix (and exit layer): the body of
    ``nestemb eval-retrieval``. Returns the result dict.

    Example:
        >>> run_eval_retrieval("/no/such/beir", "test", "minilm", "32", None)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: BEIR folder not found: /no/such/beir
    """
    from nestemb.data.beir import load_beir
    from nestemb.nesting import parse_dims

    dims_t = parse_dims(dims)
    layer_t = parse_ints(layers, "layers")
    data = load_beir(beir, split)
    from nestemb.eval.retrieval import evaluate_retrieval
    from nestemb.text.encoder import check_dims, check_layers, load_text_model

    enc = encoder or load_text_model(model, device=_device(device))
    check_dims(dims_t, enc.dim)
    check_layers(layer_t, enc.n_layers)
    qids, dids = list(data.queries), list(data.corpus)
    with _progress(show_progress) as upd:
        cb = lambda n: upd("encoding", n)  # noqa: E731
        q = enc.encode_layers([data.queries[i] for i in qids], layer_t, batch_size, cb)
        d = enc.encode_layers([data.corpus[i] for i in dids], layer_t, batch_size, cb)
    if layer_t is None:
        res = evaluate_retrieval(q[enc.n_layers], d[enc.n_layers], qids, dids, data.qrels, dims_t)
    else:
        per = [evaluate_retrieval(q[la], d[la], qids, dids, data.qrels, dims_t) for la in layer_t]
        res = {"dims": list(dims_t), "layers": list(layer_t),
               "ndcg10": [r["ndcg10"] for r in per], "recall100": [r["recall100"] for r in per]}
    res.update(model=enc.manifest.model_id, split=split, n_queries=len(qids), n_docs=len(dids))
    return res


def run_eval_sts(data: str, model: str, dims: str, layers: Optional[str] = None,
                 batch_size: int = 64, device: Optional[str] = None,
                 show_progress: bool = False, encoder=None) -> dict:
    """Spearman on an STS-B TSV at every prefix (and exit layer): the body of
    ``nestemb eval-sts``.

    Example:
        >>> run_eval_sts("/no/such.tsv", "minilm", "32")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: STS file not found: /no/such.tsv
    """
    from nestemb.data.pairs import read_sts
    from nestemb.nesting import parse_dims

    dims_t = parse_dims(dims)
    layer_t = parse_ints(layers, "layers")
    rows = read_sts(data)
    from nestemb.eval.sts import evaluate_sts
    from nestemb.text.encoder import check_dims, check_layers, load_text_model

    enc = encoder or load_text_model(model, device=_device(device))
    check_dims(dims_t, enc.dim)
    check_layers(layer_t, enc.n_layers)
    sents = sorted({s for r in rows for s in r[:2]})
    pos = {s: i for i, s in enumerate(sents)}
    with _progress(show_progress) as upd:
        e = enc.encode_layers(sents, layer_t, batch_size, lambda n: upd("encoding", n))
    i1 = [pos[r[0]] for r in rows]
    i2 = [pos[r[1]] for r in rows]
    scores = [r[2] for r in rows]
    if layer_t is None:
        x = e[enc.n_layers]
        res = evaluate_sts(x[i1], x[i2], scores, dims_t)
    else:
        per = [evaluate_sts(e[la][i1], e[la][i2], scores, dims_t)["spearman"] for la in layer_t]
        res = {"dims": list(dims_t), "layers": list(layer_t), "spearman": per}
    res.update(model=enc.manifest.model_id, n_pairs=len(rows))
    return res


