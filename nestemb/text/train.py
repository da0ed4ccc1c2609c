"""Training loop for Matryoshka text encoders, readable top to bottom.

:func:`load_train_specs` turns ``beir:DIR[:split]``, ``sts:FILE``, ``nli:DIR``, ``pairs:FILE``
into a :class:`TrainData`; :func:`train_text` fine-tunes a :class:`~nestemb.text.encoder.TextEncoder`
with :class:`~nestemb.text.losses.MatryoshkaTextLoss`. Each step: one contrastive batch
(anchor, positive[, hard negative]) from the pair sources, one CoSENT batch from graded sources
(when any), and one batch of unlabeled text whose similarity matrix under the frozen base model
(full dimension) every exit learns to keep. Each text group is encoded once per step and feeds
every prefix and exit.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nestemb.errors import NestembError


@dataclasses.dataclass
class TextTrainConfig:
    """Hyper-parameters of :func:`train_text` (the defaults are the CLI's recipe).

    ``dims``: nesting trained (last = full width). ``layers``: exit layers for the layer x
    dimension mode (Starbucks pairs, see :func:`~nestemb.text.losses.starbucks_exits`); ``None``
    = 1-D Matryoshka at the last layer. ``nested=False`` trains the full dimension only (plain
    fine-tuning). ``distill_weight``: weight of keeping the base model's full-dim similarity
    matrix: ``distill_source="batch"`` on the texts of each contrastive batch (teacher vectors
    come from the base model's encoding done for mining; no extra forward), ``"pool"`` on an extra
    batch of unlabeled text per step, ``"both"``. ``hard_negatives``: mine one per BEIR pair with the base model.

    Example:
        >>> TextTrainConfig(steps=10).batch_size
        32
    """

    dims: tuple[int, ...] = (32, 64, 128, 256, 384)
    dim_weights: tuple[float, ...] | None = None
    layers: tuple[int, ...] | None = None
    nested: bool = True
    steps: int = 300
    batch_size: int = 32
    lr: float = 5e-5
    warmup: float = 0.1
    seed: int = 0
    temperature: float = 0.05
    hard_negatives: bool = True
    hard_negative_ranks: tuple[int, int] = (3, 30)
    distill_weight: float = 20.0
    distill_source: str = "batch"
    distill_batch_size: int = 32
    self_distill_weight: float = 0.0
    cosent_weight: float = 1.0
    max_seq_length: int | None = None


@dataclasses.dataclass
class TrainData:
    """Training examples: contrastive ``pairs`` (anchor, positive[, negative]) grouped by source,
    graded pairs (s1, s2, score), unlabeled texts, and BEIR corpora for hard-negative mining.

    Example:
        >>> d = TrainData(); d.pair_sources.append([("q", "d")]); d.n_pairs()
        1
    """

    pair_sources: list[list[tuple[str, ...]]] = dataclasses.field(default_factory=list)
    graded: list[tuple[str, str, float]] = dataclasses.field(default_factory=list)
    unlabeled: list[str] = dataclasses.field(default_factory=list)
    beir: list[tuple[int, dict, dict, dict]] = dataclasses.field(default_factory=list)

    def n_pairs(self) -> int:
        return sum(len(s) for s in self.pair_sources)


def load_train_specs(specs: Sequence[str]) -> TrainData:
    """Read ``beir:DIR[:split]`` (split ``train`` by default), ``sts:FILE``, ``nli:DIR``,
    ``pairs:FILE``.

    Example:
        >>> load_train_specs(["csv:foo"])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: unknown training spec 'csv:foo': use beir:DIR[:split], sts:FILE, nli:DIR or pairs:FILE
    """
    from nestemb.data.beir import load_beir
    from nestemb.data.pairs import read_nli_triplets, read_pairs, read_sts

    if not specs:
        raise NestembError("give at least one --train SPEC")
    data = TrainData()
    for spec in specs:
        kind, _, rest = spec.partition(":")
        if kind == "beir" and rest:
            path, split = rest, "train"
            if ":" in rest and not Path(rest).exists():
                path, split = rest.rsplit(":", 1)
            ds = load_beir(path, split)
            pairs = ds.pairs()
            data.beir.append((len(data.pair_sources), ds.corpus, ds.queries, ds.qrels))
            data.pair_sources.append(pairs)
            data.unlabeled.extend(ds.corpus.values())
        elif kind == "sts" and rest:
            rows = read_sts(rest)
            data.graded.extend(rows)
            data.unlabeled.extend(sorted({s for r in rows for s in r[:2]}))
        elif kind == "nli" and rest:
            data.pair_sources.append(read_nli_triplets(rest))
        elif kind == "pairs" and rest:
            data.pair_sources.append(read_pairs(rest))
        else:
            raise NestembError(
                f"unknown training spec {spec!r}: use beir:DIR[:split], sts:FILE, nli:DIR or "
                f"pairs:FILE"
            )
    if not data.pair_sources and not data.graded:
        raise NestembError("training specs hold no pairs")
    return data


def mine_hard_negatives(encoder, data: TrainData, ranks: tuple[int, int], seed: int,
                        progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Add one hard negative to every BEIR pair: a document the base model ranks within
    ``ranks`` for the query that is not judged relevant (in place). Returns the base model's
    embeddings of every text it encoded, ``{text: vector}``."""
    from nestemb.eval.retrieval import top_k
    from nestemb.nesting import prefix_view

    rng = random.Random(seed)
    cache: dict[str, np.ndarray] = {}
    for src, corpus, queries, qrels in data.beir:
        doc_ids = list(corpus)
        dtexts = [corpus[d] for d in doc_ids]
        dvec = prefix_view(encoder.encode(dtexts, progress=progress), encoder.dim)
        qids = [q for q in qrels if any(r > 0 for r in qrels[q].values())]
        qtexts = [queries[q] for q in qids]
        qvec = prefix_view(encoder.encode(qtexts, progress=progress), encoder.dim)
        cache.update(zip(dtexts, dvec))
        cache.update(zip(qtexts, qvec))
        top = top_k(qvec, dvec, ranks[1])
        out = []
        for row, q in zip(top, qids):
            cands = [doc_ids[j] for j in row[ranks[0]:] if doc_ids[j] not in qrels[q]]
            for d, r in qrels[q].items():
                if r > 0:
                    neg = corpus[rng.choice(cands)] if cands else corpus[rng.choice(doc_ids)]
                    out.append((queries[q], corpus[d], neg))
        data.pair_sources[src] = out
    return cache


def _batches(rows: list, batch_size: int, rng: random.Random):
    """Endless shuffled batches (epochs), dropping an incomplete last batch when possible."""
    while True:
        idx = list(range(len(rows)))
        rng.shuffle(idx)
        stop = max(len(idx) - batch_size + 1, 1)
        for s in range(0, stop, batch_size):
            yield [rows[i] for i in idx[s : s + batch_size]]


def train_text(
    encoder,
    data: TrainData,
    config: TextTrainConfig,
    progress: Callable[[str, int, int], None] | None = None,
    loss_override: Callable | None = None,
    teacher_cache: dict | None = None,
) -> dict:
    """Fine-tune ``encoder.model`` in place; returns stats (wall time, steps, final loss).

    ``progress(stage, done, total)`` reports stages "mining", "teacher" and "train".
    ``loss_override(model, features_list) -> loss`` swaps the contrastive loss (used by the
    benchmark to run sentence-transformers losses in the very same loop).
    ``teacher_cache`` (``{text: base embedding}`` returned by an earlier
    :func:`mine_hard_negatives` on the same ``data``) skips mining: ``data`` must already hold
    the mined triplets.
    """
    import torch

    from nestemb.text.encoder import check_dims, check_layers, forward_exits, tokenize
    from nestemb.text.losses import MatryoshkaTextLoss, matryoshka_exits, starbucks_exits

    cfg = config
    t0 = time.perf_counter()
    dims = check_dims(cfg.dims, encoder.dim)
    if dims[-1] != encoder.dim:
        raise NestembError(f"the last dimension must be the model width {encoder.dim}, got {dims[-1]}")
    layers = check_layers(cfg.layers, encoder.n_layers)
    if layers is not None and layers[-1] != encoder.n_layers:
        layers = layers + (encoder.n_layers,)
    if cfg.steps < 1 or cfg.batch_size < 2:
        raise NestembError("steps must be >= 1 and batch size >= 2")
    if not cfg.nested:
        exits = matryoshka_exits([encoder.dim], encoder.n_layers)
    elif layers is None:
        exits = matryoshka_exits(dims, encoder.n_layers, cfg.dim_weights)
    else:
        exits = starbucks_exits(dims, layers, cfg.dim_weights)
    loss_fn = MatryoshkaTextLoss(exits, cfg.temperature, cfg.self_distill_weight)
    exit_layers = loss_fn.layers
    model = encoder.model
    if cfg.max_seq_length:
        model.max_seq_length = cfg.max_seq_length
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    def report(stage):
        return (lambda n: progress(stage, n, -1)) if progress else None

    if cfg.distill_source not in ("batch", "pool", "both"):
        raise NestembError(f"distill_source must be batch, pool or both, got {cfg.distill_source!r}")
    cache: dict[str, np.ndarray] = dict(teacher_cache or {})
    if cfg.hard_negatives and data.beir and teacher_cache is None:
        cache = mine_hard_negatives(encoder, data, cfg.hard_negative_ranks, cfg.seed,
                                    report("mining"))
    batch_distill = cfg.distill_weight > 0 and cfg.distill_source in ("batch", "both")
    if batch_distill and loss_override is None:
        missing = sorted({t for s in data.pair_sources for r in s for t in r} - set(cache))
        if missing:
            cache.update(zip(missing, encoder.encode(missing, progress=report("teacher"))))
    # teacher: the frozen base at full dimension on a pool of unlabeled text, encoded once
    teacher = None
    if (cfg.distill_weight > 0 and cfg.distill_source in ("pool", "both") and data.unlabeled
            and loss_override is None):
        need = min(len(data.unlabeled), cfg.steps * cfg.distill_batch_size)
        pool = rng.sample(sorted(set(data.unlabeled)), min(need, len(set(data.unlabeled))))
        teacher = (pool, torch.from_numpy(encoder.encode(pool, progress=report("teacher"))))
    t_train = time.perf_counter()

    sizes = [len(s) for s in data.pair_sources]
    pair_iters = [_batches(s, cfg.batch_size, rng) for s in data.pair_sources]
    graded_iter = _batches(data.graded, cfg.batch_size, rng) if data.graded else None
    distill_iter = (_batches(list(range(len(teacher[0]))), cfg.distill_batch_size, rng)
                    if teacher else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    warm = max(1, int(cfg.warmup * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (cfg.steps - s) / max(1, cfg.steps - warm))))
    model.train()
    losses = []
    for step in range(cfg.steps):
        total = 0.0
        if pair_iters:
            src = rng.choices(range(len(sizes)), weights=sizes)[0]
            batch = next(pair_iters[src])
            cols = list(zip(*batch))
            if loss_override is not None:
                total = total + loss_override(model, [tokenize(model, c) for c in cols])
            else:
                embs = [forward_exits(model, list(c), exit_layers) for c in cols]
                total = total + loss_fn.contrastive(*embs[:3])
                if batch_distill:
                    texts = [t for c in cols for t in c]
                    student = {la: torch.cat([e[la] for e in embs], 0) for la in exit_layers}
                    tvec = torch.from_numpy(np.stack([cache[t] for t in texts])).to(model.device)
                    total = total + cfg.distill_weight * loss_fn.distill(student, tvec)
        if graded_iter is not None and cfg.cosent_weight > 0:
            gb = next(graded_iter)
            e1 = forward_exits(model, [g[0] for g in gb], exit_layers)
            e2 = forward_exits(model, [g[1] for g in gb], exit_layers)
            sc = torch.tensor([g[2] for g in gb], device=model.device)
            total = total + cfg.cosent_weight * loss_fn.cosent(e1, e2, sc)
        if distill_iter is not None:
            idx = next(distill_iter)
            student = forward_exits(model, [teacher[0][i] for i in idx], exit_layers)
            tvec = teacher[1][idx].to(model.device)
            total = total + cfg.distill_weight * loss_fn.distill(student, tvec)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(total.detach()))
        if progress:
            progress("train", step + 1, cfg.steps)
    model.eval()
    end = time.perf_counter()
    return {
        "wall_s": end - t0,
        "train_loop_s": end - t_train,
        "prep_s": t_train - t0,
        "steps": cfg.steps,
        "exits": [[e.layer, e.dim, e.weight] for e in exits],
        "final_loss": float(np.mean(losses[-10:])) if losses else math.nan,
    }
