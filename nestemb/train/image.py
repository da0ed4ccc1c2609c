"""The image training loop, top to bottom in one file.

Data: uint8 images in memory; a seeded hold-out of the training split is kept aside for
calibrating the adaptive cascade. Augmentation: random horizontal flips and (optionally) random
crops from a zero-padded image. Optimizer: AdamW with a one-cycle learning-rate schedule. Loss:
:func:`nestemb.losses.matryoshka_cross_entropy` over the per-prefix heads. Everything is seeded
and runs on a fixed number of CPU threads, so two runs with the same seed give the same weights.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from nestemb.errors import NestembError
from nestemb.losses import check_weights, matryoshka_cross_entropy
from nestemb.models.image import ImageModel, ImageModelConfig, build_manifest, write_model_files
from nestemb.nesting import default_nesting, validate_nesting
from nestemb.progress import progress_bar


@dataclasses.dataclass
class TrainConfig:
    """Training hyper-parameters. ``weights`` are the per-prefix loss weights (default: the
    recipe below, see :func:`default_weights`); ``holdout`` training images are set aside for
    cascade calibration.

    Example:
        >>> TrainConfig(epochs=0)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: --epochs must be at least 1, got 0
    """

    epochs: int = 4
    batch_size: int = 256
    lr: float = 4e-3
    weight_decay: float = 5e-4
    seed: int = 0
    weights: tuple[float, ...] | None = None
    holdout: int = 5000
    flip: bool = True
    crop: int = 0
    label_smoothing: float = 0.0
    threads: int = 2
    max_train: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if int(self.epochs) < 1:
            raise NestembError(f"--epochs must be at least 1, got {self.epochs}")
        if int(self.batch_size) < 1:
            raise NestembError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise NestembError(f"--lr must be positive, got {self.lr}")
        if self.holdout < 0 or self.crop < 0:
            raise NestembError("--holdout and --crop must be >= 0")


def default_weights(nesting: Sequence[int]) -> tuple[float, ...]:
    """The training recipe's per-prefix loss weights: 2 for the smallest prefix, 1 for the rest
    (the loss itself defaults to equal weights). On Fashion-MNIST the extra weight on the 2-d
    prefix brings it level with the FF-2 model; more (4, 2, 1, ...) lifts 2 dims further but
    costs about 0.5 points at the full dimension. Pass ``weights=(1, ...)`` for plain MRL.

    Example:
        >>> default_weights((2, 4, 8, 16))
        (2.0, 1.0, 1.0, 1.0)
        >>> default_weights((256,))
        (1.0,)
    """
    if len(nesting) == 1:
        return (1.0,)
    return (2.0,) + tuple(1.0 for _ in nesting[1:])


def split_holdout(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train indices, hold-out indices), both sorted.

    Example:
        >>> tr, ho = split_holdout(10, 3, seed=0)
        >>> len(tr), len(ho), sorted(set(tr) | set(ho)) == list(range(10))
        (7, 3, True)
    """
    if holdout >= n:
        raise NestembError(f"hold-out of {holdout} images leaves none of {n} for training")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[holdout:]), np.sort(perm[:holdout])


def make_model_config(
    head: str = "mrl",
    dim: int = 256,
    dims: Sequence[int] | None = None,
    num_classes: int = 10,
    images: np.ndarray | None = None,
    **kw,
) -> ImageModelConfig:
    """Model config from CLI-style choices: ``ff`` with ``dims=(m,)`` means FF-m; MRL heads
    default to the doubling nesting ``2, 4, ... dim``. Pixel statistics come from ``images``.

    Example:
        >>> make_model_config("mrl", dim=16).nesting
        (2, 4, 8, 16)
        >>> make_model_config("ff", dims=(4,)).dim
        4
        >>> make_model_config("mrl", dim=16, dims=(2, 4, 32))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: nesting dimension 32 is larger than the embedding dimension 16
    """
    if dim < 1:
        raise NestembError(f"--dim must be positive, got {dim}")
    if head == "ff":
        if dims is not None:
            dims = validate_nesting(dims)
            if len(dims) != 1:
                raise NestembError(
                    f"--head ff trains one fixed size: give one dimension, got {tuple(dims)}"
                )
            if dims[0] > dim:
                raise NestembError(
                    f"nesting dimension {dims[0]} is larger than the embedding dimension {dim}"
                )
            dim = dims[0]
        nesting: tuple[int, ...] = (dim,)
    else:
        nesting = validate_nesting(dims, full_dim=dim) if dims is not None else default_nesting(dim)
    if images is not None:
        sample = images[:: max(1, len(images) // 10000)].astype(np.float64) / 255.0
        kw.setdefault("mean", round(float(sample.mean()), 4))
        kw.setdefault("std", round(float(sample.std()) or 1.0, 4))
        kw.setdefault("in_hw", tuple(images.shape[1:]))
    return ImageModelConfig(dim=dim, nesting=nesting, head=head, num_classes=num_classes, **kw)


def augment(x: torch.Tensor, gen: torch.Generator, flip: bool, crop: int) -> torch.Tensor:
    """Random horizontal flips and random ``crop``-pixel shifts (zero padding) of ``(B, 1, H, W)``.

    Example:
        >>> import torch
        >>> x = torch.arange(4.0).view(1, 1, 2, 2)
        >>> augment(x, torch.Generator().manual_seed(0), flip=False, crop=0).equal(x)
        True
    """
    b, _, h, w = x.shape
    if flip:
        do = torch.rand(b, generator=gen) < 0.5
        x = torch.where(do[:, None, None, None], x.flip(3), x)
    if crop:
        p = torch.nn.functional.pad(x, (crop, crop, crop, crop))
        oy = torch.randint(0, 2 * crop + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * crop + 1, (b,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, :]
        x = p[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)
    return x


def train_image_model(
    model_config: ImageModelConfig,
    config: TrainConfig,
    images: np.ndarray,
    labels: np.ndarray,
    progress: bool = True,
    checkpoint_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[ImageModel, dict]:
    """Train a model on uint8 ``images`` ``(N, H, W)`` with int ``labels``; returns the model (in
    eval mode) and a dict of training info (``train_seconds``, per-epoch losses, split sizes).

    With ``checkpoint_dir``, a loadable model directory (weights + manifest) is written to
    ``checkpoint_dir/epoch-E`` after every epoch.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).integers(0, 255, (64, 28, 28), dtype=np.uint8)
        >>> y = np.arange(64) % 10
        >>> cfg = make_model_config("mrl", dim=8, width=4)
        >>> m, info = train_image_model(cfg, TrainConfig(epochs=1, holdout=16, batch_size=32),
        ...                             x, y, progress=False)
        >>> info["n_train"], info["n_holdout"]
        (48, 16)
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels):
        raise NestembError(f"{len(images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= model_config.num_classes:
        raise NestembError(
            f"labels must lie in 0..{model_config.num_classes - 1}, got {labels.min()}..{labels.max()}"
        )
    weights = check_weights(config.weights or default_weights(model_config.nesting),
                            model_config.nesting)  # fmt: skip
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    train_idx, hold_idx = split_holdout(len(images), config.holdout, config.seed)
    if config.max_train:
        train_idx = train_idx[: config.max_train]
    x_all = torch.from_numpy(np.ascontiguousarray(images[train_idx])).unsqueeze(1)
    y_all = torch.from_numpy(labels[train_idx])
    model = ImageModel(model_config).to(config.device)
    model.train()
    n = len(train_idx)
    steps = (n + config.batch_size - 1) // config.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = steps * config.epochs
    if total_steps >= 8:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=config.lr, total_steps=total_steps, pct_start=0.25
        )
    else:  # too few steps for a schedule (tiny data sets): constant learning rate
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    w = torch.tensor(weights, dtype=torch.float32, device=config.device)
    history = []
    start = time.perf_counter()
    with progress_bar(progress, info=True) as bar:
        for epoch in range(1, config.epochs + 1):
            task = bar.add_task(f"epoch {epoch}/{config.epochs}", total=steps, info="")
            perm = torch.randperm(n, generator=gen)
            total, count = 0.0, 0
            for s in range(steps):
                idx = perm[s * config.batch_size : (s + 1) * config.batch_size]
                x = augment(model.preprocess(x_all[idx]), gen, config.flip, config.crop)
                _, logits = model(x.to(config.device, non_blocking=True))
                y = y_all[idx].to(config.device, non_blocking=True)
                loss, _per = matryoshka_cross_entropy(logits, y, w, config.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                count += len(idx)
                if s % 10 == 0 or s == steps - 1:
                    bar.update(task, completed=s + 1, info=f"loss {total / count:.4f}")
            history.append(total / count)
            if log:
                log(f"epoch {epoch}: loss {total / count:.4f}")
            if checkpoint_dir is not None:
                ckpt = Path(checkpoint_dir) / f"epoch-{epoch}"
                ckpt.mkdir(parents=True, exist_ok=True)
                write_model_files(model, ckpt, build_manifest(model, "nestemb-cnn", {"epoch": epoch}))
    seconds = time.perf_counter() - start
    model.cpu().eval()
    info = {
        "train_seconds": round(seconds, 2),
        "epoch_losses": [round(v, 5) for v in history],
        "n_train": int(n),
        "n_holdout": int(len(hold_idx)),
        "weights": list(weights),
        "train": dataclasses.asdict(config),
    }
    return model, info
