"""The image training loop, top to bottom in one file.

:class:`ImageTrainConfig` holds the recipe and validates itself; :func:`train_image` runs it and
returns ``(model, info)``.

- Data: uint8 images in memory. A seeded hold-out of the training images, sized by
  :func:`nestemb.data.split.holdout_size` (10 % of the set, at least 200 and at most 5,000, never
  more than a fifth), is kept aside for calibrating the adaptive cascade; ``info["split"]``
  records it so the evaluator can rebuild it.
- Schedule, sized by optimizer steps so that small and large sets both train enough: by default
  ``max(DEFAULT_EPOCHS, ceil(min_steps / steps_per_epoch))`` epochs (15 epochs of the 55k
  Fashion-MNIST images, about 70 of a 5.4k set); ``epochs`` or ``steps`` override it.
- Augmentation (``augment``): random shifts of up to ``shift`` pixels (zero padding) by default;
  horizontal flips only when asked (a flip changes what a digit means).
- Optimizer: AdamW with a one-cycle learning-rate schedule. Loss:
  :func:`nestemb.losses.matryoshka_cross_entropy` over the per-prefix heads, weighted by
  ``weights`` (default :func:`default_weights`).
- Compatibility with an older model (``compat``, a :class:`nestemb.train.compatible.CompatConfig`):
  BCT influence, a fixed d-simplex head, or prefix-compatible training with distillation and an
  orthogonal layer; without it nothing changes. ``info["compat"]`` records the setup.
- Device: ``"cpu"``, ``"cuda"`` or ``"auto"``; ``threads`` (if given) applies inside the call
  only. Seeded: on the CPU two runs with the same seed give the same weights.
- Under ``torchrun`` (see :mod:`nestemb.distributed`) the same call trains data-parallel:
  ``batch_size`` stays the *global* batch; every process draws and augments it from the same
  seeded generator and forwards its shard, inside ``DistributedDataParallel`` with batch norm
  over the global batch; the logits are gathered with gradients and the Matryoshka loss is
  computed per prefix on the gathered batch, so each step equals the one-process step (to
  float rounding). Only rank 0 writes checkpoints and reports progress.
- Nested widths (``model_config.widths``, MatFormer / slimmable style): every step trains the
  *sandwich* of :func:`sample_widths` (the full width, the smallest, and one of the others at
  random) on the same augmented batch, summing their Matryoshka losses (one shared head per
  prefix, so every width learns the same space). The full and smallest widths bound all the
  others (Yu & Huang 2019, universally slimmable networks), so training them every step keeps
  both ends accurate, and the cost stays three forwards of decreasing size whatever the number
  of granularities: with the default widths a step of the sandwich costs 1.41x the full
  model's (the library's CNN, batch 256, 2 CPU threads; small widths cost more than their
  multiply-adds on a CPU), where training every granularity (``widths_per_step=4``,
  MatFormer's joint loss) costs 1.73x and MatFormer's one random granularity per step would
  leave the full model trained only a quarter of the time. ``always_widths`` moves which
  widths train every step besides the full one (e.g. the widest of the others, whose gap to an
  independently trained model of their size is the largest when they train half the steps).
  ``info["width_losses"]`` holds each width's per-epoch mean loss. Elastic training runs in one
  process and without ``compat``.
- Checkpoints (``checkpoint_dir``) also hold ``trainer-state.pt`` (optimizer, schedule,
  generator, epoch); ``resume_from=checkpoint_dir/epoch-E`` continues after epoch ``E`` and
  gives the weights of the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from nestemb.data.split import holdout_size, split_holdout
from nestemb.checks import positive_float, positive_int
from nestemb.errors import NestembError
from nestemb.losses import PrefixLoss, check_weights, cosine_distance, matryoshka_cross_entropy
from nestemb.models.elastic import batch_stats_only
from nestemb.models.image import (ImageModel, ImageModelConfig, check_model_id, mix_lists, sample_widths,
                                  sampled_width_weights, write_model_files)
from nestemb.progress import progress_bar
from nestemb.device import resolve_device, torch_threads
from nestemb import distributed as dist

if TYPE_CHECKING:
    from nestemb.train.compatible import CompatConfig

AUGMENTS = ("shift", "flip")
STATE_NAME = "trainer-state.pt"
DEFAULT_EPOCHS = 15
DEFAULT_MIN_STEPS = 1500
MIXED = "mixed"
"""The key of the Mix'n'Match lists' loss in an elastic run's ``width_losses`` (``mixed_widths``)."""


@dataclasses.dataclass
class ImageTrainConfig:
    """Hyper-parameters of :func:`train_image`; invalid values raise at construction, naming
    the parameter.

    ``epochs`` / ``steps``: give at most one; neither = :data:`DEFAULT_EPOCHS` epochs but at
    least ``min_steps`` optimizer steps (see :meth:`schedule`). ``weights``: per-prefix loss
    weights (default :func:`default_weights`). ``holdout``: training images kept aside for
    cascade calibration (``None``: :func:`~nestemb.data.split.holdout_size` of the set).
    ``augment``: any of ``"shift"`` (random shifts of up to ``shift`` pixels) and ``"flip"``
    (random horizontal flips). ``width_distill``: with nested widths, the weight of the smaller
    widths' in-place distillation to the full width (:func:`width_losses`; ignored otherwise).
    ``widths_per_step``: with nested widths, how many granularities each step trains
    (:func:`sample_widths`: 3 is the sandwich; their number, every one). ``unbiased_widths``:
    weight each sampled middle width's loss by :func:`sampled_width_weights` (with the sandwich
    and 4 widths, 2), so a step's expected loss is the loss at every width. ``always_widths``:
    the granularities besides the full one that every step trains (``None``: the smallest, the
    sandwich rule); the others are sampled. Each must be one of the model's widths.
    ``mixed_widths``: the probability that a sampled width is replaced by a random Mix'n'Match
    list (one granularity per layer, :func:`sample_widths`), which Mix'n'Match sizes need on
    a CNN or MLP; it needs a sampled width (not every width every step). An ordinary model
    ignores every width setting.
    ``threads``: torch CPU threads during the call (``None``: as is).

    Example:
        >>> ImageTrainConfig().schedule(55000)      # (epochs, steps per epoch, total steps)
        (15, 215, 3225)
        >>> ImageTrainConfig().schedule(5400)       # a small set gets at least min_steps
        (69, 22, 1518)
        >>> ImageTrainConfig(epochs=0)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: epochs must be a positive integer, got 0
        >>> ImageTrainConfig(augment=("rotate",))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: augment values must be among ('shift', 'flip'), got 'rotate'
    """

    epochs: int | None = None
    steps: int | None = None
    min_steps: int = DEFAULT_MIN_STEPS
    batch_size: int = 256
    lr: float = 4e-3
    weight_decay: float = 5e-4
    seed: int = 0
    weights: tuple[float, ...] | None = None
    holdout: int | None = None
    augment: tuple[str, ...] = ("shift",)
    shift: int = 2
    label_smoothing: float = 0.0
    width_distill: float = 0.0
    widths_per_step: int = 3
    unbiased_widths: bool = False
    always_widths: tuple[float, ...] | None = None
    mixed_widths: float = 0.0
    threads: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs is not None and self.steps is not None:
            raise NestembError("give epochs or steps, not both")
        for name in ("epochs", "steps", "min_steps", "batch_size", "threads"):
            positive_int(getattr(self, name), name, allow_none=True)
        if positive_int(self.widths_per_step, "widths_per_step") < 2:
            raise NestembError(f"{{param}} must be an integer >= 2 (the full and the smallest width), "
                               f"got {self.widths_per_step!r}", param="widths_per_step")
        if self.always_widths is not None:
            values = self.always_widths
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or not all(
                    isinstance(g, (int, float)) and not isinstance(g, bool) for g in values):
                raise NestembError(f"{{param}} must be a list of widths such as 0.5, got {values!r}",
                                   param="always_widths")
            self.always_widths = tuple(sorted({float(g) for g in values}))
            if len(self.always_widths) + 1 > self.widths_per_step:
                raise NestembError(f"{{param}} names {len(self.always_widths)} widths, more than "
                                   f"widths_per_step ({self.widths_per_step}) less the full one",
                                   param="always_widths")
        if not (isinstance(self.mixed_widths, (int, float)) and not isinstance(self.mixed_widths, bool)
                and 0 <= self.mixed_widths <= 1):
            raise NestembError(f"{{param}} must be a probability in [0, 1], got {self.mixed_widths!r}",
                               param="mixed_widths")
        positive_float(self.lr, "lr")
        if not self.weight_decay >= 0:
            raise NestembError(f"{{param}} must be >= 0, got {self.weight_decay}", param="weight_decay")
        if self.holdout is not None and self.holdout < 0:
            raise NestembError(f"{{param}} must be >= 0, got {self.holdout}", param="holdout")
        if not (isinstance(self.width_distill, (int, float)) and self.width_distill >= 0):
            raise NestembError(f"{{param}} must be >= 0, got {self.width_distill!r}", param="width_distill")
        if not 0 <= self.label_smoothing < 1:
            raise NestembError(f"{{param}} must lie in [0, 1), got {self.label_smoothing}",
                               param="label_smoothing")
        if isinstance(self.augment, str):  # a single name, not a sequence of characters
            self.augment = (self.augment,)
        self.augment = tuple(self.augment)
        for a in self.augment:
            if a not in AUGMENTS:
                raise NestembError(f"{{param}} values must be among {AUGMENTS}, got {a!r}",
                                   param="augment")
        if self.shift < 0:
            raise NestembError(f"{{param}} must be >= 0, got {self.shift}", param="shift")
        if self.weights is not None:
            self.weights = tuple(float(w) for w in self.weights)
        resolve_device(self.device, check_available=False)  # availability: checked by train_*

    def schedule(self, n_train: int) -> tuple[int, int, int]:
        """``(epochs, steps_per_epoch, total_steps)`` for ``n_train`` training images. With
        ``steps`` the last epoch may be partial."""
        per_epoch = max(1, math.ceil(n_train / self.batch_size))
        if self.steps is not None:
            return math.ceil(self.steps / per_epoch), per_epoch, int(self.steps)
        epochs = self.epochs or max(DEFAULT_EPOCHS, math.ceil(self.min_steps / per_epoch))
        return int(epochs), per_epoch, int(epochs) * per_epoch


def check_width_settings(config: ImageTrainConfig, widths: Sequence[float] | None) -> None:
    """Refuse width settings of ``config`` that do not fit the model's granularities
    (``widths``): ``always_widths`` that are not widths other than the full one, and
    ``mixed_widths`` when no width is sampled (every width trains every step); the error's
    ``param`` names the setting. An ordinary model (``widths`` None) ignores them all.

    Example:
        >>> check_width_settings(ImageTrainConfig(always_widths=(0.5,)), (0.25, 0.5, 1.0))
        >>> check_width_settings(ImageTrainConfig(always_widths=(1.0,)), (0.25, 0.5, 1.0))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: always_widths must name widths of the model other than the full one (0.25, 0.5), got (1.0,)
        >>> check_width_settings(ImageTrainConfig(mixed_widths=0.5), (0.5, 1.0))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: mixed_widths replaces sampled widths, but every step trains all 2 widths (widths_per_step 3)
    """
    if widths is None:
        return
    if config.always_widths is not None and any(g not in widths[:-1] for g in config.always_widths):
        raise NestembError(f"{{param}} must name widths of the model other than the full one "
                           f"{tuple(widths)[:-1]}, got {config.always_widths}", param="always_widths")
    fixed = 1 + (1 if config.always_widths is None else len(config.always_widths))
    drawn, others = config.widths_per_step - fixed, len(widths) - fixed
    if config.mixed_widths and not 0 < drawn < others:
        trained = f"all {len(widths)} widths" if drawn >= others else "only the fixed ones"
        raise NestembError(f"{{param}} replaces sampled widths, but every step trains {trained} "
                           f"(widths_per_step {config.widths_per_step})", param="mixed_widths")


def default_weights(nesting: Sequence[int]) -> tuple[float, ...]:
    """The training recipe's per-prefix loss weights: 2 for the smallest prefix, 1 for the rest
    (the loss itself defaults to equal weights). On Fashion-MNIST the extra weight on the 2-d
    prefix lifts it by about 2 points at a small cost at the full size. Pass
    ``weights=(1, ...)`` for plain MRL.

    Example:
        >>> default_weights((2, 4, 8, 16))
        (2.0, 1.0, 1.0, 1.0)
        >>> default_weights((256,))
        (1.0,)
    """
    if len(nesting) == 1:
        return (1.0,)
    return (2.0,) + tuple(1.0 for _ in nesting[1:])


def augment_batch(
    x: torch.Tensor, gen: torch.Generator, augment: Sequence[str], shift: int
) -> torch.Tensor:
    """Apply ``augment`` to a batch ``(B, 1, H, W)``: ``"flip"`` flips a random half
    horizontally, ``"shift"`` moves each image by up to ``shift`` pixels (zero padding).

    Example:
        >>> import torch
        >>> x = torch.arange(9.0).view(1, 1, 3, 3)
        >>> augment_batch(x, torch.Generator().manual_seed(0), (), 2).equal(x)
        True
        >>> y = augment_batch(x, torch.Generator().manual_seed(0), ("shift",), 1)
        >>> y.shape, set(y.flatten().tolist()) <= set(x.flatten().tolist()) | {0.0}
        (torch.Size([1, 1, 3, 3]), True)
    """
    b, _, h, w = x.shape
    if "flip" in augment:
        do = torch.rand(b, generator=gen) < 0.5
        x = torch.where(do[:, None, None, None], x.flip(3), x)
    if "shift" in augment and shift:
        # one gather over the flattened padded images: cheaper than 3-D advanced indexing
        wp = w + 2 * shift
        p = torch.nn.functional.pad(x, (shift, shift, shift, shift)).reshape(b, -1)
        oy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
        base = (torch.arange(h)[:, None] * wp + torch.arange(w)[None, :]).reshape(1, -1)
        x = p.gather(1, base + (oy * wp + ox)[:, None]).view(b, 1, h, w)
    return x


def width_losses(
    model: ImageModel,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    widths: Sequence[float],
    label_smoothing: float = 0.0,
    distill: float = 0.0,
) -> torch.Tensor:
    """The Matryoshka loss of an elastic ``model`` at each of ``widths`` on one batch (same
    heads for every width): a tensor ``(len(widths),)``; :func:`batch_loss` sums it.

    With ``distill`` > 0 every width after the first (the full one, as :func:`sample_widths`
    lists it) also pays ``distill`` times the prefix-cosine distance of its embedding to the
    first width's, detached (in-place distillation, at every prefix of the nesting): the
    smaller widths then place each image where the full width does, which is what searching
    the full model's gallery with a submodel's queries needs; class labels alone only pull them
    into the same class regions.

    Example:
        >>> from nestemb.models.image import ImageModel, ImageModelConfig
        >>> m = ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=2, num_classes=3,
        ...                                 widths=(0.5, 1)))
        >>> width_losses(m, torch.zeros(6, 1, 28, 28), torch.arange(6) % 3, torch.ones(2), (1, 0.5)).shape
        torch.Size([2])
    """
    device = weights.device
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    out, teacher = [], None
    # the first layer (the ViT: up to the first feed-forward layer) is the same at every width:
    # run it once for all of them where that pays (no batch norm in it: no statistics to mix)
    stem = model.encoder.stem(x) if len(widths) > 1 and model.encoder.shares_stem else None
    for g in widths:
        # a Mix'n'Match list (mixed_widths) borrows the uniform widths' batch norms: it must
        # not move their running statistics
        with batch_stats_only(model) if isinstance(g, tuple) else contextlib.nullcontext():
            z, logits = model(x, width=g, stem=stem)
        loss, _per = matryoshka_cross_entropy(logits, y, weights, label_smoothing)
        if teacher is None:
            teacher = z.detach()
        elif distill:
            loss = loss + distill * PrefixLoss(cosine_distance, model.nesting)(z, teacher)
        out.append(loss)
    return torch.stack(out)


def batch_loss(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    label_smoothing: float = 0.0,
    env: dist.DistEnv | None = None,
    widths: Sequence[float] | None = None,
    distill: float = 0.0,
) -> torch.Tensor:
    """The training loss of one *global* batch ``x`` (preprocessed, augmented) with labels
    ``y``: :func:`~nestemb.losses.matryoshka_cross_entropy` over the per-prefix heads. With
    ``widths`` (an elastic model, one process; see :func:`sample_widths`), the sum of the
    losses at those widths (:func:`width_losses`, with in-place distillation weight
    ``distill``).

    Across processes (``env`` from :func:`nestemb.distributed.init_distributed`, ``net``
    wrapped by :func:`nestemb.distributed.wrap_ddp`) each process forwards only its shard of
    ``x``; the logits are gathered with gradients, so every process computes the loss of the
    whole batch and, after DDP averages them, the gradients of the one-process run.

    Example:
        >>> from nestemb.models.image import ImageModel, ImageModelConfig
        >>> m = ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=2, num_classes=3))
        >>> loss = batch_loss(m, torch.zeros(6, 1, 28, 28), torch.arange(6) % 3, torch.ones(2))
        >>> loss.ndim, loss.requires_grad
        (0, True)
    """
    env = env or dist.DistEnv()
    if widths is not None:
        if env.is_distributed:
            raise NestembError("nested widths train in one process", param="widths")
        assert isinstance(net, ImageModel), "one process: the model itself, not a DDP wrapper"
        return width_losses(net, x, y, weights, widths, label_smoothing, distill).sum()
    device = weights.device
    sizes = dist.shard_sizes(len(x), env.world_size)
    part = x[dist.shard_slice(len(x), env)] if env.is_distributed else x
    _z, logits = net(part.to(device, non_blocking=True))
    logits = dist.gather_rows(logits, env, sizes)
    loss, _per = matryoshka_cross_entropy(logits, y.to(device, non_blocking=True), weights,
                                          label_smoothing)  # fmt: skip
    return loss


def train_image(
    model_config: ImageModelConfig,
    images: np.ndarray,
    labels: np.ndarray,
    config: ImageTrainConfig | None = None,
    *,
    progress: bool = True,
    checkpoint_dir: Path | None = None,
    model_id: str = "nestemb-cnn",
    log: Callable[[str], None] | None = None,
    compat: CompatConfig | None = None,
    resume_from: Path | None = None,
) -> tuple[ImageModel, dict]:
    """Train a model on uint8 ``images`` ``(N, H, W)`` with int ``labels``; returns the model (on
    the CPU, in eval mode) and a dict of training info (``train_seconds``, ``steps``, per-epoch
    losses, the hold-out ``split`` and the config; for an elastic model (``model_config.widths``)
    also ``widths`` and ``width_losses``, see the module notes).

    With ``checkpoint_dir``, loadable model directories (weights + manifest, ``model_id``) are
    written to ``checkpoint_dir/epoch-E`` at about ten evenly spaced epochs and the last one.

    With ``compat`` (a :class:`~nestemb.train.compatible.CompatConfig`) the run is trained to be
    compatible with an older model (see :mod:`nestemb.train.compatible`); the returned model is
    still a plain :class:`ImageModel` and ``info["compat"]`` describes the setup (save it in the
    manifest's ``extra``).

    ``resume_from`` (a ``checkpoint_dir/epoch-E`` folder of an earlier run with the same data
    and config) restores the weights, optimizer, schedule and random state saved there and
    trains epochs ``E+1..``: the result equals the uninterrupted run's.

    Under ``torchrun`` the call trains data-parallel (see the module notes); the returned
    model is the same on every process, ``info["world_size"]`` says how many took part, and
    only rank 0 writes checkpoints, calls ``log`` and shows progress.

    Example:
        >>> import numpy as np
        >>> from nestemb.models.image import make_model_config
        >>> x = np.random.default_rng(0).integers(0, 255, (64, 28, 28), dtype=np.uint8)
        >>> y = np.arange(64) % 10
        >>> cfg = make_model_config("mrl", dim=8, width=4)
        >>> m, info = train_image(cfg, x, y, ImageTrainConfig(steps=2, batch_size=32, device="cpu"),
        ...                       progress=False)
        >>> info["split"], info["n_train"], info["steps"]
        ({'n': 64, 'holdout': 12, 'seed': 0}, 52, 2)
    """
    config = config or ImageTrainConfig()
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise NestembError(f"images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise NestembError(f"{len(images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= model_config.num_classes:
        raise NestembError(
            f"labels must lie in 0..{model_config.num_classes - 1}, got {labels.min()}..{labels.max()}"
        )
    weights = check_weights(config.weights or default_weights(model_config.nesting),
                            model_config.nesting)  # fmt: skip
    env, device = dist.init_distributed(config.device)
    if compat is not None and env.is_distributed:
        raise NestembError("compatible training (compat) runs in one process: start it without "
                           f"torchrun (WORLD_SIZE={env.world_size})")
    widths = model_config.widths
    if widths is not None and env.is_distributed:
        raise NestembError("nested {param} train in one process: start it without torchrun "
                           f"(WORLD_SIZE={env.world_size})", param="widths")
    if widths is not None and compat is not None:
        raise NestembError("nested {param} and compatible training (compat) do not combine: "
                           "train the elastic model without compat", param="widths")
    check_width_settings(config, widths)
    check_model_id(model_id)  # before training, not after it
    holdout = holdout_size(len(images)) if config.holdout is None else config.holdout
    train_idx, hold_idx = split_holdout(len(images), holdout, config.seed)
    n = len(train_idx)
    epochs, per_epoch, total_steps = config.schedule(n)
    signature = run_signature(model_config, images, labels, config, compat)
    state = _load_state(resume_from, signature) if resume_from is not None else None
    progress = progress and env.is_main
    with torch_threads(config.threads):
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        x_all = torch.from_numpy(np.ascontiguousarray(images[train_idx])).unsqueeze(1)
        y_all = torch.from_numpy(labels[train_idx])
        model = ImageModel(model_config).to(device)
        model.train()
        params = list(model.parameters())
        hooks = None
        if compat is not None:
            from nestemb.train.compatible import CompatTrainer

            hooks = CompatTrainer(compat, model, x_all, y_all).to(device)
            params = [p for p in params + list(hooks.parameters()) if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        sched: torch.optim.lr_scheduler.LRScheduler
        if total_steps >= 8:
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=config.lr, total_steps=total_steps, pct_start=0.25
            )
        else:  # too few steps for a schedule: constant learning rate
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        w = torch.tensor(weights, dtype=torch.float32, device=device)
        every = max(1, epochs // 10)
        history, step, first = [], 0, 1
        width_history: dict[str, list] = {f"{g:g}": [] for g in widths or ()}
        if widths is not None and config.mixed_widths:
            width_history[MIXED] = []
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            if hooks is not None:
                hooks.load_state_dict(state["hooks"])
            history, step, first = list(state["history"]), int(state["step"]), int(state["epoch"]) + 1
            if widths is not None:
                width_history = {k: list(v) for k, v in state["width_history"].items()}
        net = dist.wrap_ddp(model, env, device)
        start = time.perf_counter()
        try:
            with progress_bar(progress, info=True) as bar:
                for epoch in range(first, epochs + 1):
                    n_steps = min(per_epoch, total_steps - step)
                    task = bar.add_task(f"epoch {epoch}/{epochs}", total=n_steps, info="")
                    perm = torch.randperm(n, generator=gen)
                    total, count = 0.0, 0
                    w_sum: dict[str, float] = {}
                    w_count: dict[str, int] = {}
                    for s in range(n_steps):
                        idx = perm[s * config.batch_size : (s + 1) * config.batch_size]
                        # the whole global batch is augmented on every process (one generator,
                        # as in a one-process run); each process forwards its shard of it
                        x = augment_batch(model.preprocess(x_all[idx]), gen, config.augment, config.shift)
                        if widths is not None:  # the sandwich of widths, one process
                            picked = sample_widths(widths, gen, config.widths_per_step, config.always_widths,
                                                   config.mixed_widths, mix_lists(model_config))
                            per_width = width_losses(model, x, y_all[idx], w, picked, config.label_smoothing,
                                                     config.width_distill)
                            loss = (per_width @ torch.tensor(
                                sampled_width_weights(widths, picked, config.always_widths),
                                device=per_width.device)
                                    if config.unbiased_widths else per_width.sum())
                            for g, v in zip(picked, per_width.tolist()):
                                key = MIXED if isinstance(g, tuple) else f"{g:g}"
                                w_sum[key] = w_sum.get(key, 0.0) + v * len(idx)
                                w_count[key] = w_count.get(key, 0) + len(idx)
                        elif hooks is None:
                            loss = batch_loss(net, x, y_all[idx], w, config.label_smoothing, env)
                        else:
                            x = x.to(device, non_blocking=True)
                            z, logits = hooks(model, x)
                            y = y_all[idx].to(device, non_blocking=True)
                            loss, _per = matryoshka_cross_entropy(logits, y, w, config.label_smoothing)
                            loss = loss + hooks.loss(model, x, z, y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        sched.step()
                        step += 1
                        total += loss.item() * len(idx)
                        count += len(idx)
                        if s % 10 == 0 or s == n_steps - 1:
                            bar.update(task, completed=s + 1, info=f"loss {total / count:.4f}")
                    history.append(total / count)
                    for key, losses in width_history.items():
                        losses.append(round(w_sum[key] / w_count[key], 5) if key in w_count else None)
                    if log and env.is_main:
                        log(f"epoch {epoch}: loss {total / count:.4f}")
                    if (checkpoint_dir is not None and env.is_main
                            and (epoch % every == 0 or epoch == epochs)):  # fmt: skip
                        ckpt = Path(checkpoint_dir) / f"epoch-{epoch}"
                        ckpt.mkdir(parents=True, exist_ok=True)
                        extra: dict[str, Any] = {"epoch": epoch, "step": step}
                        if compat is not None:
                            extra["compat"] = compat.describe()
                        write_model_files(model if hooks is None else hooks.export(model), ckpt,
                                          model_id, extra)  # fmt: skip
                        _save_state(ckpt, signature, epoch, step, history, model, opt, sched, gen,
                                    hooks, width_history if widths is not None else None)  # fmt: skip
        finally:
            dist.revert_batchnorm(model)
        seconds = time.perf_counter() - start
        if hooks is not None:
            hooks.finish(model)  # the orthogonal layer goes into the model's last linear layer
    model.cpu().eval()
    cfg = dataclasses.asdict(config)
    cfg["augment"], cfg["device"] = list(config.augment), device
    info = {
        "train_seconds": round(seconds, 2),
        "world_size": env.world_size,
        "epochs": epochs,
        "steps": step,
        "epoch_losses": [round(v, 5) for v in history],
        "n_train": int(n),
        "n_holdout": int(len(hold_idx)),
        "split": {"n": int(len(images)), "holdout": int(holdout), "seed": int(config.seed)},
        "weights": list(weights),
        "train": cfg,
    }
    if compat is not None:
        info["compat"] = compat.describe()
    if widths is not None:
        info["widths"] = list(widths)
        fixed = ("the smallest" if config.always_widths is None
                 else " and ".join(f"{g:g}" for g in config.always_widths))
        mixed = (f"; each width drawn is a random Mix'n'Match list with probability {config.mixed_widths:g}"
                 if config.mixed_widths else "")
        info["width_sampling"] = ("sandwich: the full width, the smallest and one other at random per step"
                                  if config.widths_per_step == 3 and config.always_widths is None else
                                  f"the full width, {fixed}, and up to "
                                  f"{config.widths_per_step - 1 - len(config.always_widths or (0,))} others "
                                  "at random per step (all of them when there are no more)") + mixed
        info["width_losses"] = width_history
        info["width_distill"] = config.width_distill
        info["widths_per_step"], info["unbiased_widths"] = config.widths_per_step, config.unbiased_widths
        info["always_widths"] = list(config.always_widths) if config.always_widths is not None else None
        info["mixed_widths"] = config.mixed_widths
    if state is not None:
        info["resumed_from"] = str(resume_from)
    return model, info


def run_signature(model_config: ImageModelConfig, images: np.ndarray, labels: np.ndarray,
                  config: ImageTrainConfig, compat: CompatConfig | None = None) -> dict:
    """What a checkpoint must share with a run to be resumed by it: the data (sizes and a
    sha256 of the images and labels), the split, the schedule, the model and every setting that
    changes the arithmetic of a step (learning rate, weight decay, loss weights, augmentation,
    label smoothing). Threads and device are left out: a run may resume elsewhere.

    Example:
        >>> from nestemb.models.image import make_model_config
        >>> x, y = np.zeros((40, 28, 28), np.uint8), np.arange(40) % 10
        >>> cfg = make_model_config("mrl", dim=8, width=4)
        >>> a = run_signature(cfg, x, y, ImageTrainConfig(steps=3))
        >>> a == run_signature(cfg, x, y, ImageTrainConfig(steps=3, threads=2))
        True
        >>> b = run_signature(cfg, x, y, ImageTrainConfig(steps=3, lr=1e-3))
        >>> sorted(k for k in a if a[k] != b[k])
        ['lr']
    """
    import hashlib

    images = np.ascontiguousarray(images)
    labels = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    h = hashlib.sha256(f"{images.shape}|{labels.shape}|".encode())
    h.update(images.tobytes())
    h.update(labels.tobytes())
    holdout = holdout_size(len(images)) if config.holdout is None else config.holdout
    epochs, _per_epoch, total_steps = config.schedule(len(images) - holdout)
    weights = config.weights or default_weights(model_config.nesting)
    # the model's repr names its widths too; an elastic run also records them on their own,
    # so that resuming with other widths says so, and how it trains them (ordinary runs keep
    # their signature)
    elastic = {} if model_config.widths is None else {
        "widths": list(model_config.widths), "width_distill": float(config.width_distill),
        "widths_per_step": int(config.widths_per_step), "unbiased_widths": bool(config.unbiased_widths),
        # only when set: runs of the default sandwich keep the signature they had before it existed
        **({} if config.always_widths is None else {"always_widths": list(config.always_widths)}),
        **({} if not config.mixed_widths else {"mixed_widths": float(config.mixed_widths)})}
    return {**elastic, "n_train": int(len(images) - holdout), "holdout": int(holdout),
            "seed": int(config.seed), "batch_size": int(config.batch_size),
            "total_steps": int(total_steps), "epochs": int(epochs), "model": repr(model_config),
            "compat": compat.describe() if compat is not None else None,
            "data_sha256": h.hexdigest(), "lr": float(config.lr),
            "weight_decay": float(config.weight_decay),
            "weights": [float(w) for w in weights], "augment": list(config.augment),
            "shift": int(config.shift),
            "label_smoothing": float(config.label_smoothing)}  # fmt: skip


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The checkpoint folder ``checkpoint_dir/epoch-E`` with the highest ``E`` that holds a
    trainer state (what ``resume_from`` takes), or ``None`` when there is none (or no folder).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> latest_checkpoint(d) is None
        True
        >>> for e in (2, 10, 11):
        ...     (d / f"epoch-{e}").mkdir()
        >>> for e in (2, 10):
        ...     _ = (d / f"epoch-{e}" / STATE_NAME).write_bytes(b"")
        >>> latest_checkpoint(d).name           # epoch-11 has no trainer state
        'epoch-10'
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return None
    found = []
    for p in folder.iterdir():
        head, _, num = p.name.partition("-")
        if head == "epoch" and num.isdigit() and (p / STATE_NAME).is_file():
            found.append((int(num), p))
    return max(found)[1] if found else None


def _save_state(ckpt: Path, signature: dict, epoch: int, step: int, history: list, model, opt,
                sched, gen: torch.Generator, hooks, width_history: dict | None = None) -> None:  # fmt: skip
    """Everything :func:`train_image` needs to continue after ``epoch`` (atomically)."""
    from nestemb.io import atomic_file

    state = {"signature": signature, "epoch": epoch, "step": step, "history": list(history),
             "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "generator": gen.get_state(),
             "hooks": hooks.state_dict() if hooks is not None else None}  # fmt: skip
    if width_history is not None:  # elastic runs only: other checkpoints keep their format
        state["width_history"] = width_history
    with atomic_file(ckpt / STATE_NAME) as f:
        torch.save(state, f)


def _load_state(ckpt: Path, signature: dict) -> dict:
    """The trainer state of a checkpoint folder, refused when it belongs to another run."""
    path = Path(ckpt) / STATE_NAME
    if not path.is_file():
        raise NestembError(f"{ckpt} holds no {STATE_NAME} (give a checkpoint folder "
                           "checkpoints/epoch-E of a run)", param="resume_from")  # fmt: skip
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or not a torch file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NestembError(f"cannot read {path}: {first}") from None
    saved = state.get("signature", {}) if isinstance(state, dict) else {}
    # both ways: a key only one side records (e.g. always_widths, recorded when set) differs too
    for key in [*signature, *(k for k in saved if k not in signature)]:
        value = signature.get(key)
        if saved.get(key) != value:
            raise NestembError(f"{ckpt} was written by a different run: {key} "
                               f"{saved.get(key)!r} there, {value!r} now",
                               param="resume_from")  # fmt: skip
    return state
