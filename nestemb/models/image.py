"""A compact CNN image encoder with nested (Matryoshka) classification heads, and its on-disk
format.

A saved image model is a directory with ``weights`` (a torch state dict) and ``manifest.json``
(``kind="image-model"``, the nesting, the embedding dimension, the model config in ``extra``
and the sha256 of ``weights``). :func:`load_image_model` checks the checksum and returns an
:class:`ImageModel` whose :meth:`ImageModel.encode` turns uint8 images into raw (un-normalized)
full embeddings; take an ``m``-dimensional view with :func:`nestemb.nesting.prefix_view`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nestemb.errors import NestembError
from nestemb.heads import NestedHead
from nestemb.nesting import Manifest, validate_nesting

KIND = "image-model"
WEIGHTS_NAME = "weights"


@dataclasses.dataclass
class ImageModelConfig:
    """Architecture of an :class:`ImageModel` (everything needed to rebuild it).

    ``head`` is ``"mrl"``, ``"mrl-e"`` or ``"ff"`` (fixed feature: a single-prefix nesting
    ``(dim,)``); ``cosine`` selects cosine classifiers on prefix views; ``mean``/``std`` are the
    pixel statistics (0-1 scale) used to standardize inputs.

    Example:
        >>> ImageModelConfig(dim=8, nesting=(2, 4, 8)).nesting
        (2, 4, 8)
        >>> ImageModelConfig(dim=8, nesting=(2, 4, 16))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: nesting dimension 16 is larger than the embedding dimension 8
    """

    dim: int = 256
    nesting: tuple[int, ...] = (256,)
    head: str = "mrl"
    cosine: bool = False
    width: int = 16
    num_classes: int = 10
    in_hw: tuple[int, int] = (28, 28)
    mean: float = 0.2860
    std: float = 0.3530

    def __post_init__(self) -> None:
        self.nesting = validate_nesting(self.nesting, full_dim=self.dim)
        self.in_hw = tuple(int(v) for v in self.in_hw)
        if self.head not in ("mrl", "mrl-e", "ff"):
            raise NestembError(f"--head must be mrl, mrl-e or ff, got {self.head!r}")
        if self.head == "ff" and len(self.nesting) != 1:
            raise NestembError(
                f"a fixed-feature (ff) model has one size; got the nesting {self.nesting}"
            )
        if self.num_classes < 2:
            raise NestembError(f"need at least 2 classes, got {self.num_classes}")


def _conv_bn(i: int, o: int) -> list[nn.Module]:
    return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]


class CNNEncoder(nn.Module):
    """Five 3x3 conv-BN-ReLU layers (widths w, 2w, 2w, 4w, 4w; max-pool after the 1st and 3rd),
    global average pooling and a linear projection to ``dim``. About 30 s per Fashion-MNIST
    epoch on 2 CPU threads at ``width=16``.

    Example:
        >>> import torch
        >>> CNNEncoder(dim=8, width=4)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 8])
    """

    def __init__(self, dim: int, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn(1, w), nn.MaxPool2d(2),
            *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w), *_conv_bn(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.proj = nn.Linear(4 * w, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x))


class ImageModel(nn.Module):
    """Encoder + per-prefix heads. ``forward(x_float)`` returns ``(embedding, logits)`` with
    logits ``(B, K, classes)``; :meth:`encode` and :meth:`predict_proba` take uint8 images.

    Example:
        >>> import numpy as np
        >>> m = ImageModel(ImageModelConfig(dim=8, nesting=(2, 8), width=4))
        >>> m.encode(np.zeros((3, 28, 28), np.uint8)).shape
        (3, 8)
        >>> m.predict_proba(np.zeros((3, 28, 28), np.uint8)).shape   # (N, K, classes)
        (3, 2, 10)
    """

    def __init__(self, config: ImageModelConfig, manifest: Manifest | None = None):
        super().__init__()
        self.config = config
        self.manifest = manifest
        self.encoder = CNNEncoder(config.dim, config.width)
        kind = "mrl" if config.head == "ff" else config.head
        self.head = NestedHead(config.nesting, config.num_classes, kind=kind, cosine=config.cosine)

    @property
    def nesting(self) -> tuple[int, ...]:
        return self.config.nesting

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W)`` (or ``(B, 1, H, W)``) to standardized float ``(B, 1, H, W)``."""
        x = images.float() if images.dim() == 4 else images.float().unsqueeze(1)
        return (x / 255.0 - self.config.mean) / self.config.std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.head(z)

    def _check_images(self, images: Any) -> np.ndarray:
        arr = np.asarray(images)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or tuple(arr.shape[1:]) != self.config.in_hw:
            raise NestembError(
                f"images must have shape (N, {self.config.in_hw[0]}, {self.config.in_hw[1]}), "
                f"got {arr.shape}"
            )
        if arr.dtype != np.uint8:
            raise NestembError(f"images must be uint8 (0-255 pixels), got {arr.dtype}")
        return arr

    def _batches(self, images: Any, batch_size: int, fn) -> np.ndarray:
        arr = self._check_images(images)
        if batch_size < 1:
            raise NestembError(f"batch_size must be positive, got {batch_size}")
        was_training = self.training
        self.eval()
        outs = []
        try:
            with torch.inference_mode():
                for i in range(0, len(arr), batch_size):
                    x = self.preprocess(torch.tensor(arr[i : i + batch_size]))
                    outs.append(fn(x).float().numpy())
        finally:
            self.train(was_training)
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)

    def encode(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Raw full embeddings, float32 ``(N, dim)``, of uint8 images ``(N, H, W)``."""
        out = self._batches(images, batch_size, self.encoder)
        return out.reshape(-1, self.config.dim).astype(np.float32, copy=False)

    def predict_proba(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Softmax class probabilities of every prefix head, ``(N, K, classes)``."""
        out = self._batches(images, batch_size, lambda x: self(x)[1].softmax(dim=-1))
        return out.reshape(-1, len(self.nesting), self.config.num_classes)


def build_manifest(model: ImageModel, model_id: str, extra: dict[str, Any] | None = None) -> Manifest:
    """The manifest of a saved image model (checksums are filled in by :func:`save_image_model`).

    Example:
        >>> m = ImageModel(ImageModelConfig(dim=8, nesting=(2, 8), width=4))
        >>> build_manifest(m, "demo").kind
        'image-model'
    """
    cfg = dataclasses.asdict(model.config)
    cfg["nesting"], cfg["in_hw"] = list(model.config.nesting), list(model.config.in_hw)
    return Manifest(
        model_id=model_id,
        nesting=model.config.nesting,
        dim=model.config.dim,
        kind=KIND,
        extra={"config": cfg, **(extra or {})},
    )


def write_model_files(model: ImageModel, directory: Path, manifest: Manifest) -> Manifest:
    """Write ``weights`` and ``manifest.json`` (with the weights' sha256) into an existing
    directory; returns the manifest written. Use :func:`save_image_model` for a new directory.

    Example:
        >>> import tempfile, pathlib
        >>> m = ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=4))
        >>> man = write_model_files(m, pathlib.Path(tempfile.mkdtemp()), build_manifest(m, "x"))
        >>> sorted(man.sha256)
        ['weights']
    """
    from nestemb.io import atomic_file, sha256_file

    with atomic_file(directory / WEIGHTS_NAME) as f:
        torch.save(model.state_dict(), f)
    manifest = dataclasses.replace(manifest, sha256={WEIGHTS_NAME: sha256_file(directory / WEIGHTS_NAME)})
    manifest.save(directory)
    return manifest


def save_image_model(
    model: ImageModel,
    directory: str | os.PathLike,
    model_id: str = "nestemb-cnn",
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a model directory atomically (``weights`` + ``manifest.json``).

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> d = pathlib.Path(tempfile.mkdtemp()) / "model"
        >>> m = ImageModel(ImageModelConfig(dim=8, nesting=(2, 8), width=4))
        >>> _ = save_image_model(m, d)
        >>> m2 = load_image_model(d)
        >>> m2.manifest.nesting, m2.encode(np.zeros((1, 28, 28), np.uint8)).dtype
        ((2, 8), dtype('float32'))
    """
    from nestemb.io import atomic_dir

    with atomic_dir(directory, overwrite=overwrite) as tmp:
        model.manifest = write_model_files(model, tmp, build_manifest(model, model_id, extra))
    return Path(directory)


def load_image_model(directory: str | os.PathLike, threads: int | None = None) -> ImageModel:
    """Load a model saved by :func:`save_image_model` (checksum verified), in eval mode.

    Example: see :func:`save_image_model`.
    """
    directory = Path(directory)
    manifest = Manifest.open(directory, KIND, "model directory", verify=False)
    if WEIGHTS_NAME not in manifest.sha256:
        raise NestembError(f"{directory}/manifest.json lists no checksum for {WEIGHTS_NAME!r}")
    manifest.verify(directory)
    try:
        config = ImageModelConfig(**manifest.extra["config"])
    except (KeyError, TypeError) as e:
        raise NestembError(f"{directory}/manifest.json has no valid model config: {e}") from None
    if config.nesting != manifest.nesting or config.dim != manifest.dim:
        raise NestembError(f"{directory}/manifest.json: config and nesting disagree")
    if threads:
        torch.set_num_threads(threads)
    model = ImageModel(config, manifest)
    try:
        state = torch.load(directory / WEIGHTS_NAME, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # a corrupt file whose checksum was rewritten, or a wrong architecture
        raise NestembError(f"cannot load weights from {directory / WEIGHTS_NAME}: {e}") from None
    return model.eval()
