"""Training of Matryoshka text encoders, readable top to bottom.

:func:`load_train_data` reads BEIR folders, STS files, SNLI folders and pair files into a
:class:`TrainData`; :func:`train_text` turns a base encoder into a nested one with
:class:`~nestemb.text.losses.MatryoshkaTextLoss`, by one of two recipes
(:class:`TextRecipe`; ``"auto"`` picks by device):

- ``"projection"`` (the CPU recipe): the encoder stays frozen. Every training text is encoded
  once by the base (:class:`BaseEmbeddings`); a square projection (the one map module of
  :mod:`nestemb.maps`), initialized orthogonal from the principal axes of the unlabeled texts
  (so prefixes start as PCA prefixes and the full view as the base), is trained on the cached
  vectors, and appended to the model as a
  sentence-transformers ``Dense`` module (identity activation, no bias), so the saved folder
  loads anywhere.
- ``"finetune"`` (the GPU recipe): every weight of the encoder is trained. With ``widths``
  (MatFormer-style nested feed-forward widths, :mod:`nestemb.text.ffn`) every step computes the
  step's whole loss at the sandwich of :func:`~nestemb.models.image.sample_widths` (the full
  width, the smallest and one other at random, on the same batch, the same prefixes and exits)
  and sums them; the saved manifest lists the widths (``extra.widths``), so the model encodes at
  any of them (``encode(texts, width=g)``) and :func:`nestemb.text.elastic.extract` cuts one
  out as an ordinary smaller model.

Each step of both: one contrastive batch (anchor, positive[, hard negative]) from the pair
sources, per prefix, with in-batch negatives; one CoSENT batch from graded sources (when any);
and, with ``distill_weight > 0``, a similarity-distillation term that keeps the frozen base's
full-dimension similarity matrix at every prefix: on the texts of the contrastive batch
(``distill_source="batch"``, the default, no extra forward), on an extra batch of unlabeled text
(``"pool"``) or both. The projection recipe ignores ``distill_source``: it distills on a batch of
``4 * distill_batch_size`` unlabeled vectors per step (cached, so the batch is free) and also
keeps the projection near orthogonal (``orthogonal_weight``), which keeps full-view similarities
on any text, not only the training domain. Hard negatives (one per BEIR pair) are mined with the base model at full size.

Under ``torchrun`` (see :mod:`nestemb.distributed`) the same call runs data-parallel: the base
model's encoding of the training texts is split over the processes and gathered; the finetune
recipe draws the same global batch everywhere, each process forwards its shard of every text
group, the embeddings are gathered with gradients (:func:`gathered_exits`) so the contrastive
losses see the whole global batch as in-batch negatives and every per-prefix loss is computed on
the gathered batch, and gradients are averaged over processes. The projection fit itself (a
``d x d`` matrix on cached vectors, milliseconds per step) runs identically on every process.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nestemb.errors import NestembError


class TextRecipe(str, enum.Enum):
    """How :func:`train_text` trains: ``projection`` (frozen encoder + learned projection on
    cached vectors; minutes on a CPU), ``finetune`` (every weight; meant for a GPU), ``auto``
    (projection on a CPU, finetune on a GPU)."""

    auto = "auto"
    projection = "projection"
    finetune = "finetune"


class DistillSource(str, enum.Enum):
    """Texts the base-similarity distillation runs on (finetune recipe): ``batch`` = the texts
    of the contrastive batch, ``pool`` = an extra batch of unlabeled text per step, ``both``."""

    batch = "batch"
    pool = "pool"
    both = "both"


# Per-recipe defaults for the fields left at None (see TextTrainConfig.resolve).
RECIPE_DEFAULTS: dict[str, dict] = {
    "finetune": {"steps": 300, "batch_size": 32, "lr": 5e-5, "distill_weight": 20.0},
    "projection": {"steps": 600, "batch_size": 64, "lr": 1e-3, "distill_weight": 20.0},
}


@dataclasses.dataclass
class TextTrainConfig:
    """Settings of :func:`train_text`; validated on creation, errors name the field.

    ``recipe``: see :class:`TextRecipe`. ``steps``, ``batch_size``, ``lr``, ``distill_weight``
    left at ``None`` take the recipe's default (:data:`RECIPE_DEFAULTS`; :meth:`resolve`).
    ``dims``: nesting trained (last = full width; ``None``: 32, 64, ... up to the width).
    ``weights``: loss weight per prefix (``None``: equal). ``layers``: exit layers for the
    layer x dimension mode (finetune only; ``None`` = 1-D Matryoshka at the last layer).
    ``nested=False`` trains the full dimension only. ``distill_weight``: weight of keeping the
    base model's full-dim similarities at every prefix (0: off), on ``distill_source`` texts
    (finetune) or on ``4 * distill_batch_size`` cached unlabeled vectors per step (projection).
    ``hard_negatives``: mine one per BEIR pair with the base, among its ranks
    ``hard_negative_ranks``. ``orthogonal_weight``: projection only, keeps ``W W^T`` near ``I``.
    ``max_seq_length``: truncate texts to this many tokens (``None``: the model's own limit).
    ``device``: ``"cpu"``, ``"cuda"`` or ``"auto"``. ``widths``: nested feed-forward widths
    trained together (ascending fractions ending at 1, e.g.
    :data:`~nestemb.models.image.DEFAULT_WIDTHS`; finetune only, and ``"auto"`` then means
    finetune; ``None``: the encoder at its full width only, as before).

    Example:
        >>> TextTrainConfig(recipe="projection").resolve("cpu").steps
        600
        >>> TextTrainConfig(steps=0)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: steps must be at least 1, got 0
        >>> TextTrainConfig(widths=(0.25, 0.5, 1)).resolve("cpu").recipe   # widths train weights
        'finetune'
    """

    recipe: str = "auto"
    dims: tuple[int, ...] | None = None
    weights: tuple[float, ...] | None = None
    layers: tuple[int, ...] | None = None
    nested: bool = True
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup: float = 0.1
    seed: int = 0
    temperature: float = 0.05
    hard_negatives: bool = True
    hard_negative_ranks: tuple[int, int] = (3, 30)
    distill_weight: float | None = None
    distill_source: str = "batch"
    distill_batch_size: int = 32
    self_distill_weight: float = 0.0
    cosent_weight: float = 1.0
    orthogonal_weight: float = 1.0
    max_seq_length: int | None = None
    device: str = "auto"
    widths: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        from nestemb.nesting import validate_nesting
        from nestemb.device import resolve_device

        def need(ok: bool, param: str, msg: str) -> None:
            """Refuse the field ``param`` unless ``ok``; ``msg`` names it as ``{param}``."""
            if not ok:
                raise NestembError(msg, param=param)

        self.recipe = _choice(self.recipe, TextRecipe, "recipe")
        self.distill_source = _choice(self.distill_source, DistillSource, "distill_source")
        resolve_device(self.device, check_available=False)  # availability: checked by train_*
        if self.dims is not None:
            self.dims = validate_nesting(self.dims)
        if self.weights is not None:
            self.weights = tuple(float(w) for w in self.weights)
            need(all(math.isfinite(w) and w >= 0 for w in self.weights) and sum(self.weights) > 0,
                 "weights", "{param} must be non-negative finite numbers, not all 0; got "
                 f"{self.weights}")
            n = len(self.dims) if self.dims is not None else None
            need(n is None or len(self.weights) == n, "weights",
                 f"{{param}} has {len(self.weights)} entries for {n} dims")
        if self.layers is not None:
            self.layers = tuple(int(x) for x in self.layers)
            need(bool(self.layers), "layers", "{param} is empty (use None for the last layer only)")
            need(self.recipe != "projection", "layers",
                 "{param} (exit layers) need recipe='finetune': the projection recipe keeps the "
                 "encoder frozen")
        need(self.steps is None or self.steps >= 1, "steps",
             f"{{param}} must be at least 1, got {self.steps}")
        need(self.batch_size is None or self.batch_size >= 2, "batch_size",
             f"{{param}} must be at least 2, got {self.batch_size}")
        need(self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "lr",
             f"{{param}} must be positive, got {self.lr}")
        need(0 <= self.warmup < 1, "warmup", f"{{param}} must be in [0, 1), got {self.warmup}")
        need(self.temperature > 0, "temperature",
             f"{{param}} must be positive, got {self.temperature}")
        lo, hi = self.hard_negative_ranks
        need(0 <= lo < hi, "hard_negative_ranks", "{param} must be (low, high) with 0 <= low < "
                                                  f"high, got {self.hard_negative_ranks}")
        for name in ("distill_weight", "self_distill_weight", "cosent_weight", "orthogonal_weight"):
            v = getattr(self, name)
            need(v is None or (math.isfinite(v) and v >= 0), name,
                 f"{{param}} must be >= 0, got {v}")
        need(self.distill_batch_size >= 2, "distill_batch_size",
             f"{{param}} must be at least 2, got {self.distill_batch_size}")
        need(self.max_seq_length is None or self.max_seq_length >= 1, "max_seq_length",
             f"{{param}} must be at least 1, got {self.max_seq_length}")
        if self.widths is not None:
            from nestemb.models.image import check_widths

            self.widths = check_widths(self.widths)
            need(self.recipe != "projection", "widths",
                 "{param} (nested feed-forward widths) need recipe='finetune': the projection "
                 "recipe keeps the encoder frozen")

    def resolve(self, device: str) -> "TextTrainConfig":
        """A copy with the recipe chosen for ``device`` (the resolved torch device) and every
        ``None`` default filled from :data:`RECIPE_DEFAULTS`."""
        recipe = self.recipe
        if recipe == "auto":
            cuda = str(device).startswith("cuda")
            recipe = "finetune" if cuda or self.widths is not None else "projection"
        fill = {k: v for k, v in RECIPE_DEFAULTS[recipe].items() if getattr(self, k) is None}
        return dataclasses.replace(self, recipe=recipe, device=device, **fill)


def _choice(value, enum_cls, name: str) -> str:
    try:
        return enum_cls(getattr(value, "value", value)).value
    except ValueError:
        allowed = ", ".join(e.value for e in enum_cls)
        raise NestembError(f"{{param}} must be one of {allowed}; got {value!r}",
                           param=name) from None


@dataclasses.dataclass
class TrainData:
    """Training examples: contrastive ``pair_sources`` (anchor, positive[, negative]) grouped by
    source, ``graded`` pairs (s1, s2, score), ``unlabeled`` texts, and BEIR splits
    ``beir`` = (index of its pair source, corpus, queries, qrels) for hard-negative mining.

    Example:
        >>> d = TrainData(); d.pair_sources.append([("q", "d")]); d.n_pairs()
        1
    """

    pair_sources: list[Sequence[tuple[str, ...]]] = dataclasses.field(default_factory=list)
    graded: list[tuple[str, str, float]] = dataclasses.field(default_factory=list)
    unlabeled: list[str] = dataclasses.field(default_factory=list)
    beir: list[tuple[int, dict, dict, dict]] = dataclasses.field(default_factory=list)

    def n_pairs(self) -> int:
        return sum(len(s) for s in self.pair_sources)

    def texts(self) -> list[str]:
        """Every distinct text of the data (pairs, graded pairs, unlabeled, BEIR corpora),
        sorted."""
        out = {t for s in self.pair_sources for r in s for t in r}
        out.update(t for r in self.graded for t in r[:2])
        out.update(self.unlabeled)
        for _, corpus, _, _ in self.beir:
            out.update(corpus.values())
        return sorted(out)


def load_train_data(
    beir: Sequence[str | Path] = (),
    beir_split: str = "train",
    sts: Sequence[str | Path] = (),
    nli: Sequence[str | Path] = (),
    pairs: Sequence[str | Path] = (),
) -> TrainData:
    """Read training data: BEIR folders (pairs from the ``beir_split`` qrels, the corpus as
    unlabeled text and for hard-negative mining), STS files (graded pairs), SNLI folders
    (triplets) and pair files.

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text._tiny import make_tiny_beir
        >>> d = load_train_data(beir=[make_tiny_beir(pathlib.Path(tempfile.mkdtemp()) / "b")])
        >>> d.n_pairs(), len(d.unlabeled)
        (30, 40)
        >>> load_train_data()
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: no training data: give at least one of beir, sts, nli, pairs
    """
    from nestemb.data.beir import load_beir
    from nestemb.data.pairs import read_nli_triplets, read_pairs, read_sts

    if not (beir or sts or nli or pairs):
        raise NestembError("no training data: give at least one of beir, sts, nli, pairs")
    data = TrainData()
    for path in beir:
        ds = load_beir(path, beir_split)
        data.beir.append((len(data.pair_sources), ds.corpus, ds.queries, ds.qrels))
        data.pair_sources.append(ds.pairs())
        data.unlabeled.extend(ds.corpus.values())
    for path in sts:
        rows = read_sts(path)
        data.graded.extend(rows)
        data.unlabeled.extend(sorted({s for r in rows for s in r[:2]}))
    for path in nli:
        data.pair_sources.append(read_nli_triplets(path))
    for path in pairs:
        data.pair_sources.append(read_pairs(path))
    return data


class BaseEmbeddings:
    """The frozen base model's full embeddings of texts, each text encoded once and kept.

    ``embeddings(texts)`` returns ``(len(texts), dim)`` float32 rows, encoding only texts not
    seen before. A public extension point: pass one instance (built on an untouched base) to
    several :func:`train_text` runs on the same data to encode the corpus once for all of them.

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text.encoder import load_text_model
        >>> from nestemb.text._tiny import make_tiny_model
        >>> base = BaseEmbeddings(load_text_model(make_tiny_model(pathlib.Path(tempfile.mkdtemp()) / "m")))
        >>> base(["the cat", "a dog", "the cat"]).shape, len(base.vectors)
        ((3, 32), 2)
    """

    def __init__(self, encoder, batch_size: int = 64):
        self.encoder = encoder
        self.batch_size = batch_size
        self.vectors: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str],
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
        missing = sorted(set(texts) - set(self.vectors))
        if missing:
            vec = self.encoder.encode(missing, batch_size=self.batch_size, progress=progress)
            self.vectors.update(zip(missing, vec))
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return np.stack([self.vectors[t] for t in texts])


def mine_hard_negatives(data: TrainData, base: BaseEmbeddings, ranks: tuple[int, int] = (3, 30),
                        seed: int = 0) -> TrainData:
    """A copy of ``data`` whose BEIR pairs carry one hard negative each: a document the base
    model ranks within ``ranks`` (0-based, ``[low, high)``) for the query, not judged for it
    (any judgment, even 0, rules a document out). Uses the full-size base embeddings.

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text.encoder import load_text_model
        >>> from nestemb.text._tiny import make_tiny_beir, make_tiny_model
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> data = load_train_data(beir=[make_tiny_beir(root / "b")])
        >>> mined = mine_hard_negatives(data, BaseEmbeddings(load_text_model(make_tiny_model(root / "m"))))
        >>> {len(r) for r in mined.pair_sources[0]}, {len(r) for r in data.pair_sources[0]}
        ({3}, {2})
    """
    from nestemb.exact import exact_search
    from nestemb.nesting import prefix_view

    rng = random.Random(seed)
    out = dataclasses.replace(data, pair_sources=list(data.pair_sources))
    for src, corpus, queries, qrels in data.beir:
        doc_ids = list(corpus)
        dvec = prefix_view(base([corpus[d] for d in doc_ids]), base.encoder.dim)
        qids = [q for q in qrels if any(r > 0 for r in qrels[q].values())]
        qvec = prefix_view(base([queries[q] for q in qids]), base.encoder.dim)
        top = exact_search(dvec, qvec, min(ranks[1], len(doc_ids)))[1]
        rows = []
        for row, q in zip(top, qids):
            cands = [doc_ids[j] for j in row[ranks[0]:] if doc_ids[j] not in qrels[q]]
            for d, r in qrels[q].items():
                if r > 0:
                    neg = corpus[rng.choice(cands)] if cands else corpus[rng.choice(doc_ids)]
                    rows.append((queries[q], corpus[d], neg))
        out.pair_sources[src] = rows
    return out


def _batches(rows: Sequence, batch_size: int, rng: random.Random):
    """Endless shuffled batches (epochs), dropping an incomplete last batch when possible."""
    while True:
        idx = list(range(len(rows)))
        rng.shuffle(idx)
        stop = max(len(idx) - batch_size + 1, 1)
        for s in range(0, stop, batch_size):
            yield [rows[i] for i in idx[s : s + batch_size]]


def train_text(
    data: TrainData,
    config: TextTrainConfig,
    *,
    base: str | Path = "minilm",
    encoder=None,
    model_id: str | None = None,
    base_embeddings: BaseEmbeddings | None = None,
    contrastive_loss: Callable | None = None,
    progress: Callable[[str, int, int], None] | None = None,
):
    """Train a nested text encoder; returns ``(encoder, info)``.

    ``base`` ("minilm" or a sentence-transformers folder) is loaded on ``config.device``,
    unless ``encoder`` (a loaded :class:`~nestemb.text.encoder.TextEncoder`) is given: it is then
    trained in place. The trained encoder's manifest gets ``model_id`` (default: the base's id
    + ``"-nested"``), the trained nesting, the trained ``widths`` (``extra.widths``, when
    ``config.widths`` is set) and a ``model_version`` from its weights. ``info`` holds the resolved config, the recipe and the times (``prep_s``:
    base encoding and mining; ``train_loop_s``; ``wall_s``). Save with
    :func:`~nestemb.text.encoder.save_text_model`.

    Public extension points: ``base_embeddings`` reuses a :class:`BaseEmbeddings` cache of the
    untouched base across runs; ``contrastive_loss(model, features) -> loss`` (finetune recipe
    only) replaces the per-prefix contrastive loss on each pair batch, ``features`` being the
    tokenized columns (anchor, positive[, negative]) -- e.g. a sentence-transformers loss module,
    as ``benchmarks/text_mrl.py`` does. ``progress(stage, done, total)`` reports "encoding"
    (``total=-1``: ``done`` more texts) and "train".

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text._tiny import make_tiny_beir, make_tiny_model
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> data = load_train_data(beir=[make_tiny_beir(root / "b")])
        >>> cfg = TextTrainConfig(recipe="projection", dims=(8, 32), steps=5, device="cpu")
        >>> enc, info = train_text(data, cfg, base=make_tiny_model(root / "m"))
        >>> info["recipe"], enc.manifest.nesting, type(enc.model[-1]).__name__
        ('projection', (8, 32), 'Dense')
    """
    import torch

    from nestemb import distributed as dist
    from nestemb.nesting import default_nesting
    from nestemb.text.encoder import check_dims, check_layers, check_model_inputs, load_text_model

    t0 = time.perf_counter()
    env, device = dist.init_distributed(config.device)
    progress = progress if env.is_main else None
    cfg = config.resolve(device)
    if env.is_distributed:
        if contrastive_loss is not None:
            raise NestembError("contrastive_loss (a loss on one process's tokenized batch) cannot "
                               "see the other processes' texts: run it without torchrun")
        small = [f"{k} {getattr(cfg, k)}" for k in ("batch_size", "distill_batch_size")
                 if cfg.recipe == "finetune" and getattr(cfg, k) < env.world_size]
        if small:
            raise NestembError(f"{', '.join(small)} is smaller than the {env.world_size} "
                               "processes: every process needs rows of each batch")
    if encoder is None:
        check_model_inputs(base, cfg.dims, cfg.layers, full_width=True)  # before the slow load
        encoder = load_text_model(base, device=device)
    else:
        encoder.model.to(device)
    dims = check_dims(cfg.dims or default_nesting(encoder.dim, start=min(32, encoder.dim)),
                      encoder.dim)
    if dims[-1] != encoder.dim:
        raise NestembError(f"the last of {{param}} must be the model width {encoder.dim}, got "
                           f"{dims[-1]}", param="dims")
    if cfg.weights is not None and len(cfg.weights) != len(dims):
        raise NestembError(f"weights has {len(cfg.weights)} entries for {len(dims)} dims")
    cfg = dataclasses.replace(cfg, dims=dims)
    layers = check_layers(cfg.layers, encoder.n_layers)
    if layers is not None and layers[-1] != encoder.n_layers:
        layers = layers + (encoder.n_layers,)
    if not data.pair_sources and not data.graded:
        raise NestembError("the training data hold no pairs (give BEIR, NLI, pair or STS data)")
    if cfg.widths is not None:
        from nestemb.text.ffn import ffn_blocks

        if not ffn_blocks(encoder.model):
            raise NestembError("{param} need a BERT-style encoder (intermediate.dense and "
                               "output.dense in every layer); this model has no such blocks",
                               param="widths")
    if contrastive_loss is not None and cfg.recipe != "finetune":
        raise NestembError("contrastive_loss replaces a loss of the finetune recipe only")
    if cfg.max_seq_length:
        encoder.model.max_seq_length = cfg.max_seq_length
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    base_embeddings = base_embeddings or BaseEmbeddings(encoder)
    # every text the run needs from the base, encoded before any weight changes (each once)
    texts = data.texts()
    if progress:
        from nestemb.progress import counter

        todo = len(set(texts) - set(base_embeddings.vectors))
        enc_progress = counter(progress, "encoding", todo) if todo else None
    else:
        enc_progress = None
    encode_base(base_embeddings, texts, env, enc_progress)
    if cfg.hard_negatives and data.beir:
        data = mine_hard_negatives(data, base_embeddings, cfg.hard_negative_ranks, cfg.seed)
    exits = _exits(cfg, dims, layers, encoder)
    t_train = time.perf_counter()
    width_history: dict[float, list[float]] = {}  # per-width step losses (with widths)
    if cfg.recipe == "projection":
        losses = _train_projection(encoder, data, cfg, exits, base_embeddings, rng,
                                   contrastive_loss, progress, env=env)
    else:
        losses = _train_finetune(encoder, data, cfg, exits, base_embeddings, rng,
                                 contrastive_loss, progress, env=env, width_history=width_history)
    from nestemb.nesting import Manifest, weights_version
    from nestemb.text.encoder import TEXT_MODEL_KIND

    # identity from content: in memory from the tensors; save_text_model re-derives it from the
    # weight files it writes
    extra: dict[str, Any] = {
        "base": {"model_id": encoder.manifest.model_id,
                 "model_version": encoder.manifest.model_version},
        "recipe": cfg.recipe, "layers": list(layers) if layers else None}
    if cfg.widths is not None:
        extra["widths"] = list(cfg.widths)
    encoder.manifest = Manifest(
        model_id=model_id or f"{encoder.manifest.model_id}-nested",
        model_version=weights_version(encoder.model.state_dict()),
        nesting=dims, dim=encoder.dim, kind=TEXT_MODEL_KIND, extra=extra)
    end = time.perf_counter()
    cfg_json = _jsonable(dataclasses.asdict(cfg))
    if cfg.widths is None:
        del cfg_json["widths"]  # the config of a run without widths reads as before they existed
    info = {
        "recipe": cfg.recipe,
        "device": device,
        "config": cfg_json,
        "wall_s": end - t0,
        "train_loop_s": end - t_train,
        "prep_s": t_train - t0,
        "steps": cfg.steps,
        "exits": [[e.layer, e.dim, e.weight] for e in exits],
        "final_loss": float(np.mean(losses[-10:])) if losses else math.nan,
        "world_size": env.world_size,
    }
    if cfg.widths is not None:
        info["widths"] = list(cfg.widths)
        info["width_sampling"] = "sandwich: the full width, the smallest and one other at random per step"
        info["width_final_loss"] = {f"{g:g}": float(np.mean(v[-10:]))
                                    for g, v in sorted(width_history.items())}
    return encoder, info


def encode_base(base: BaseEmbeddings, texts: Sequence[str], env=None,
                progress: Callable[[int], None] | None = None) -> None:
    """Fill ``base``'s cache with every text of ``texts`` it lacks. Under ``torchrun`` (``env``
    from :func:`nestemb.distributed.init_distributed`) each process encodes its share of the
    missing texts and the vectors are gathered, so every process ends with the same cache.

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text.encoder import load_text_model
        >>> from nestemb.text._tiny import make_tiny_model
        >>> base = BaseEmbeddings(load_text_model(make_tiny_model(pathlib.Path(tempfile.mkdtemp()) / "m")))
        >>> encode_base(base, ["a cat", "a dog"]); sorted(base.vectors)
        ['a cat', 'a dog']
    """
    from nestemb import distributed as dist

    env = env or dist.DistEnv()
    if not env.is_distributed:
        base(texts, progress)
        return
    import torch

    missing = sorted(set(texts) - set(base.vectors))
    # the batches of a one-process encode, split over the processes: every text is encoded in
    # the same batch as in one process, so every vector is the one-process vector
    batches = list(base.encoder._batches(missing, base.batch_size))
    groups = [batches[dist.shard_slice(len(batches), dataclasses.replace(env, rank=r))]
              for r in range(env.world_size)]  # fmt: skip
    vecs = [base.encoder.encode(b, batch_size=len(b), progress=progress) for _, b in groups[env.rank]]
    vec = np.concatenate(vecs) if vecs else np.zeros((0, base.encoder.dim), np.float32)
    t = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float32)).to(base.encoder.device)
    every = dist.gather_rows(t, env, [sum(len(idx) for idx, _ in g) for g in groups])
    order = [i for g in groups for idx, _ in g for i in idx]
    base.vectors.update(zip((missing[i] for i in order), every.cpu().numpy()))


def gathered_exits(model, texts: Sequence[str], layers: Sequence[int] | None = None, env=None) -> dict:
    """:func:`~nestemb.text.encoder.forward_exits` of a *global* batch of ``texts``: under
    ``torchrun`` each process forwards only its shard and the embeddings are gathered with
    gradients (:func:`nestemb.distributed.gather_rows`), so every loss computed on the result
    sees the whole batch -- in-batch negatives included -- as in one process.

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text.encoder import load_text_model
        >>> from nestemb.text._tiny import make_tiny_model
        >>> enc = load_text_model(make_tiny_model(pathlib.Path(tempfile.mkdtemp()) / "m"))
        >>> {la: tuple(e.shape) for la, e in gathered_exits(enc.model, ["a cat", "a dog"]).items()}
        {2: (2, 32)}
    """
    from nestemb import distributed as dist
    from nestemb.text.encoder import forward_exits

    env = env or dist.DistEnv()
    texts = list(texts)
    if not env.is_distributed:
        return forward_exits(model, texts, layers)
    sizes = dist.shard_sizes(len(texts), env.world_size)
    if min(sizes) == 0:
        raise NestembError(f"a batch of {len(texts)} texts cannot be split over "
                           f"{env.world_size} processes")  # fmt: skip
    own = forward_exits(model, texts[dist.shard_slice(len(texts), env)], layers)
    return {la: dist.gather_rows(e, env, sizes) for la, e in own.items()}


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _exits(cfg: TextTrainConfig, dims, layers, encoder):
    from nestemb.text.losses import matryoshka_exits, starbucks_exits

    if not cfg.nested:
        return matryoshka_exits([encoder.dim], encoder.n_layers)
    if layers is None:
        return matryoshka_exits(dims, encoder.n_layers, cfg.weights)
    return starbucks_exits(dims, layers, cfg.weights)


def _train_finetune(encoder, data, cfg, exits, base, rng, contrastive_loss, progress,
                    env=None, width_history: dict[float, list[float]] | None = None) -> list:  # fmt: skip
    """Every weight of the encoder; one forward per text group feeds every prefix and exit
    (under ``torchrun``: per process, its shard of the group, gathered; see
    :func:`gathered_exits`). With ``cfg.widths`` each step's batches are drawn once and its
    loss is computed (and back-propagated) at every width of the sandwich
    (:func:`~nestemb.models.image.sample_widths`, drawn from a generator of its own, the same on
    every process), whose losses are appended to ``width_history``; the step's loss is their
    sum."""
    import torch

    from nestemb import distributed as dist
    from nestemb.models.image import sample_widths
    from nestemb.text.encoder import tokenize
    from nestemb.text.ffn import ffn_width
    from nestemb.text.losses import MatryoshkaTextLoss

    loss_fn = MatryoshkaTextLoss(exits, cfg.temperature, cfg.self_distill_weight)
    exit_layers = loss_fn.layers
    model = encoder.model
    batch_distill = cfg.distill_weight > 0 and cfg.distill_source in ("batch", "both")
    pool = sorted(set(data.unlabeled))
    pool_distill = cfg.distill_weight > 0 and cfg.distill_source in ("pool", "both") and pool
    pool = rng.sample(pool, min(len(pool), cfg.steps * cfg.distill_batch_size)) if pool_distill else []
    sizes = [len(s) for s in data.pair_sources]
    pair_iters = [_batches(s, cfg.batch_size, rng) for s in data.pair_sources]
    graded_iter = _batches(data.graded, cfg.batch_size, rng) if data.graded else None
    pool_iter = _batches(pool, cfg.distill_batch_size, rng) if pool else None
    from nestemb.maps.nn import warmup_schedule

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_schedule(cfg.steps, cfg.warmup))

    def teacher(texts):
        return torch.from_numpy(base(texts)).to(model.device)

    def step_loss(cols, gb, texts):
        """The loss of one step's batches (pairs ``cols``, graded ``gb``, pool ``texts``)."""
        total = torch.zeros((), device=model.device)
        if cols is not None:
            if contrastive_loss is not None:
                total = total + contrastive_loss(model, [tokenize(model, c) for c in cols])
            else:
                embs = [gathered_exits(model, c, exit_layers, env) for c in cols]
                total = total + loss_fn.contrastive(*embs[:3])
                if batch_distill:
                    student = {la: torch.cat([e[la] for e in embs], 0) for la in exit_layers}
                    total = total + cfg.distill_weight * loss_fn.distill(
                        student, teacher([t for c in cols for t in c]))
        if gb is not None:
            e1 = gathered_exits(model, [g[0] for g in gb], exit_layers, env)
            e2 = gathered_exits(model, [g[1] for g in gb], exit_layers, env)
            sc = torch.tensor([g[2] for g in gb], device=model.device)
            total = total + cfg.cosent_weight * loss_fn.cosent(e1, e2, sc)
        if texts is not None:
            student = gathered_exits(model, texts, exit_layers, env)
            total = total + cfg.distill_weight * loss_fn.distill(student, teacher(texts))
        return total

    gen = torch.Generator().manual_seed(cfg.seed) if cfg.widths is not None else None
    model.train()
    losses = []
    for step in range(cfg.steps):
        # the step's batches, drawn before any forward: every width of the sandwich sees them
        cols = gb = texts = None
        if pair_iters:
            cols = list(zip(*next(pair_iters[rng.choices(range(len(sizes)), weights=sizes)[0]])))
        if graded_iter is not None and cfg.cosent_weight > 0:
            gb = next(graded_iter)
        if pool_iter is not None:
            texts = next(pool_iter)
        opt.zero_grad(set_to_none=True)
        if gen is None:
            total = step_loss(cols, gb, texts)
            total.backward()
        else:
            total = torch.zeros((), device=model.device)
            for g in sample_widths(cfg.widths, gen):
                with ffn_width(model, g):
                    part = step_loss(cols, gb, texts)
                part.backward()  # one width's graph at a time
                total = total + part.detach()
                if width_history is not None:
                    width_history.setdefault(g, []).append(float(part.detach()))
        dist.average_gradients(model.parameters(), env or dist.DistEnv())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(total.detach()))
        if progress:
            progress("train", step + 1, cfg.steps)
    model.eval()
    return losses


def fit_projection(
    pairs: Sequence[tuple[np.ndarray, ...]],
    pool: np.ndarray,
    cfg: TextTrainConfig,
    exits,
    graded: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    rng: random.Random | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[np.ndarray, list]:
    """Learn a square projection ``W`` on cached base vectors (the projection recipe): the one
    map module of :mod:`nestemb.maps.nn` without bias, started at the centered principal axes
    of the unlabeled vectors (:func:`~nestemb.maps.nn.pca_init`: prefixes start as PCA
    prefixes, the full view as the base), trained by :func:`~nestemb.maps.nn.train_module`.

    ``pairs``: per pair source, ``(anchors, positives[, negatives])`` arrays ``(n, d)``;
    ``pool``: unlabeled vectors (the PCA initialization and the distillation batches);
    ``graded``: ``(emb1, emb2, scores)``. Embeddings are ``x @ W``; every exit is a prefix.
    Returns ``(W, per-step losses)``.

    Example:
        >>> from nestemb.text.losses import matryoshka_exits
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
        >>> cfg = TextTrainConfig(recipe="projection", steps=5, hard_negatives=False).resolve("cpu")
        >>> W, losses = fit_projection([(x[:32], x[32:])], x, cfg, matryoshka_exits([4, 8], 1))
        >>> W.shape, len(losses)
        ((8, 8), 5)
    """
    import torch

    from nestemb.maps.nn import make_module, pca_init, train_module
    from nestemb.text.losses import MatryoshkaTextLoss

    steps, batch_size, lr, distill_weight = cfg.steps, cfg.batch_size, cfg.lr, cfg.distill_weight
    if steps is None or batch_size is None or lr is None or distill_weight is None:
        raise NestembError("fit_projection needs a resolved config: cfg.resolve(device)")
    rng = rng or random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_fn = MatryoshkaTextLoss(list(exits), cfg.temperature)
    layer = exits[0].layer
    pool_t = torch.from_numpy(np.ascontiguousarray(pool, dtype=np.float32))
    proj = make_module(pca_init(pool, center=True)[0])
    eye = torch.eye(proj.W.shape[0])
    srcs = [[torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32)) for c in s] for s in pairs]
    sizes = [len(s[0]) for s in srcs]

    def step_loss(step: int):
        total = torch.zeros(())
        if srcs:
            s = rng.choices(range(len(srcs)), weights=sizes)[0]
            idx = torch.randint(len(srcs[s][0]), (min(batch_size, sizes[s]),), generator=gen)
            cols = [{layer: proj(c[idx])} for c in srcs[s]]
            total = total + loss_fn.contrastive(*cols[:3])
        if graded is not None and cfg.cosent_weight > 0:
            gi = torch.randint(len(graded[2]), (min(batch_size, len(graded[2])),),
                               generator=gen).numpy()
            e1 = {layer: proj(torch.from_numpy(graded[0][gi]))}
            e2 = {layer: proj(torch.from_numpy(graded[1][gi]))}
            total = total + cfg.cosent_weight * loss_fn.cosent(e1, e2, torch.from_numpy(graded[2][gi]))
        if distill_weight > 0:
            pi = torch.randint(len(pool_t), (min(cfg.distill_batch_size * 4, len(pool_t)),),
                               generator=gen)
            x = pool_t[pi]
            total = total + distill_weight * loss_fn.distill({layer: proj(x)}, x)
        if cfg.orthogonal_weight > 0:
            total = total + cfg.orthogonal_weight * ((proj.W.T @ proj.W - eye) ** 2).sum() / len(eye)
        return total, {}

    losses, _ = train_module(proj.parameters(), step_loss, steps=steps, lr=lr,
                             warmup=cfg.warmup, shape="linear", progress=progress)
    return proj.export()["W"], losses


def _train_projection(encoder, data, cfg, exits, base, rng, contrastive_loss, progress,
                      env=None) -> list:  # fmt: skip
    """Frozen encoder: fit a projection on cached base vectors, append it as a Dense module.
    Under ``torchrun`` every process fits the same projection on the same (gathered) vectors."""
    import torch

    pairs = [tuple(base([r[i] for r in src]) for i in range(len(src[0])))
             for src in data.pair_sources if src]
    pool_texts = sorted(set(data.unlabeled)) or data.texts()
    graded = None
    if data.graded:
        graded = (base([g[0] for g in data.graded]), base([g[1] for g in data.graded]),
                  np.array([g[2] for g in data.graded], dtype=np.float32))
    W, losses = fit_projection(pairs, base(pool_texts), cfg, exits, graded, rng, progress)
    try:  # sentence-transformers >= 6 moved the modules
        from sentence_transformers.sentence_transformer.modules import Dense
    except ImportError:  # pragma: no cover - older releases
        from sentence_transformers.models import Dense  # type: ignore[no-redef]  # same class, pre-6 path
    dense = Dense(encoder.dim, encoder.dim, bias=False, activation_function=torch.nn.Identity(),
                  init_weight=torch.from_numpy(np.ascontiguousarray(W.T)))
    encoder.model.append(dense.to(encoder.model.device))
    encoder.model.eval()
    return losses
