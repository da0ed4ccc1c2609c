"""A compact CNN (or MLP, or small ViT) image encoder with nested (Matryoshka) classification heads,
and its on-disk format.

A saved image model is a directory with ``weights`` (a torch state dict) and ``manifest.json``
(``kind="image-model"``, a readable ``model_id``, ``model_version`` = the content hash of the
weights from :func:`nestemb.nesting.weights_version`, the nesting, the embedding dimension, the
model config in ``extra`` and the sha256 of ``weights``). :func:`load_image_model` checks the
checksum and the version and returns an :class:`ImageModel` whose :meth:`ImageModel.encode`
turns uint8 images into raw (un-normalized) full embeddings; take an ``m``-dimensional view with
:func:`nestemb.nesting.prefix_view`. Loading never changes torch's global thread count.

Nested widths (MatFormer / slimmable style, ``ImageModelConfig.widths``): an elastic model holds
one set of weights from which every granularity ``g`` in ``widths`` runs the first
``ceil(g * c)`` units of each layer of ``c`` units (conv channels of the CNN, hidden units of
the MLP, feed-forward hidden units of each ViT block), with batch norm switched per granularity
(:class:`SwitchableBatchNorm`; the ViT has layer norms only), the shared projection's matching
columns and the same nested heads, so every width writes the same ``dim``-d space.
``ImageModel.forward(x, width=g)`` (or a per-layer list, Mix'n'Match) runs one;
:func:`nestemb.models.elastic.extract` cuts one out as an ordinary :class:`ImageModel`. A model
without ``widths`` is built, trained and saved exactly as before.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import os
from pathlib import Path
from typing import Any, Callable, Sequence, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nestemb.checks import non_empty_str
from nestemb.errors import NestembError
from nestemb.heads import NestedHead
from nestemb.nesting import Manifest, default_nesting, validate_nesting, weights_version

KIND = "image-model"
WEIGHTS_NAME = "weights"
HEADS = ("mrl", "mrl-e", "ff")
ARCHS = ("cnn", "mlp", "vit")
"""Encoder architectures: :class:`CNNEncoder`, :class:`MLPEncoder` and :class:`ViTEncoder`."""
DEFAULT_MODEL_ID = "nestemb-cnn"
DEFAULT_WIDTHS = (0.125, 0.25, 0.5, 1.0)
"""The granularities of an elastic model when asked for without a list (MatFormer's four)."""
VIT_PATCH, VIT_DEPTH, VIT_HEADS = 4, 4, 4
"""The ViT's patch size (28x28 images: 7x7 = 49 tokens), transformer blocks and attention heads."""
LAYERS = {"cnn": 5, "mlp": 2, "vit": VIT_DEPTH}
"""Sliceable layers of each architecture (conv layers of the CNN, hidden layers of the MLP,
feed-forward hidden layers of the ViT's blocks)."""
_OPTIONAL = ("widths", "channels")
"""Config fields left out of the repr and the manifest when ``None``: configs of ordinary
models read, print and save exactly as before these fields existed."""
STEM_MIN_FAN_IN = 64
"""Least fan-in (multiply-adds per unit) of a CNN's or MLP's first layer at which the widths
of one training batch share it (``shares_stem``): sharing saves every smaller width its own
first layer but back-propagates each through a slice of the full-width output. Measured
(2 threads, batch 256, widths 1, 1/8, 1/4): the MLP's first layer (784 per unit) 14% faster
shared, the CNN's first conv (9 per unit: 3x3 on one channel) 4% slower."""
CNN_LAST_WIDTH = 16
"""Channels of the recipe CNN's last layer per unit of ``width`` (:func:`make_model_config`)."""


def check_widths(widths: Any) -> tuple[float, ...]:
    """The granularities of an elastic model: ascending fractions in ``(0, 1]`` ending at 1 (the
    full model is always one of them, as the full dimension ends a nesting).

    Example:
        >>> check_widths([0.25, 0.5, 1])
        (0.25, 0.5, 1.0)
        >>> check_widths((0.5, 0.25, 1))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: widths must be strictly ascending, got (0.5, 0.25, 1.0)
    """
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise NestembError(f"{{param}} must be a list of fractions such as 0.25,0.5,1, got {widths!r}",
                           param="widths")
    values = tuple(widths)
    if not values or not all(isinstance(g, numbers.Real) and not isinstance(g, bool)
                             and math.isfinite(g) for g in values):  # fmt: skip
        raise NestembError(f"{{param}} must be a non-empty list of numbers, got {values!r}",
                           param="widths")
    out = tuple(float(g) for g in values)
    if not all(0 < g <= 1 for g in out):
        raise NestembError(f"{{param}} must lie in (0, 1] (fractions of the full width), got {out}",
                           param="widths")
    if any(a >= b for a, b in zip(out, out[1:])):
        raise NestembError(f"{{param}} must be strictly ascending, got {out}", param="widths")
    if out[-1] != 1.0:
        raise NestembError(f"{{param}} must end with 1 (the full model), got {out}", param="widths")
    return out


def units(g: float, c: int) -> int:
    """Units of a layer of ``c`` at granularity ``g``: ``ceil(g * c)``, at least 1 (robust to
    float rounding: ``0.1 * 30`` is 3).

    Example:
        >>> units(0.125, 16), units(0.1, 30), units(0.125, 4)
        (2, 3, 1)
    """
    return max(1, math.ceil(g * c - 1e-9))


MIX_GROWS = {"cnn": False, "mlp": False, "vit": True}
"""Whether an architecture's Mix'n'Match lists widen with depth (the ViT: MatFormer's rule; its
blocks add to a full-width residual stream) or narrow (the CNN and MLP: a layer's units are the
next layer's inputs, so a narrower layer after wider ones computes exactly what the wider
model's first units compute, while a wider one after narrower ones reads inputs it never saw
together in training; measured on Fashion-MNIST, an untrained narrowing list lay above the line
between its neighbours and every widening one below)."""


def width_lists(n_widths: int, layers: int, grow: bool = True) -> list[tuple[int, ...]]:
    """The Mix'n'Match family: every list of per-layer granularity indices (one per layer, out
    of ``n_widths``) that mixes at most two neighbouring granularities and never shrinks with
    depth (``grow``) or never widens (``grow=False``), uniform lists included. A list of
    granularities ``k`` and ``k + 1`` costs between those two uniform widths: the sizes in
    between (MatFormer: lists that change granularity slowly do best).
    :func:`mix_lists` gives a model's; :func:`nestemb.models.elastic.mix_n_match` picks from it
    and ``mixed_widths`` training (:func:`sample_widths`) samples from it, so what is served is
    what was trained.

    Example:
        >>> width_lists(2, 3)
        [(0, 0, 0), (0, 0, 1), (0, 1, 1), (1, 1, 1)]
        >>> width_lists(2, 3, grow=False)
        [(0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1)]
        >>> len(width_lists(4, 5)), (0, 1, 2, 2, 2) in width_lists(4, 5)   # 4 uniform + 3 x 4 mixed
        (16, False)
    """
    lists = [ks for ks in itertools.combinations_with_replacement(range(n_widths), layers)
             if ks[-1] - ks[0] <= 1]
    return lists if grow else [ks[::-1] for ks in lists]


def mix_lists(config: ImageModelConfig) -> list[tuple[int, ...]]:
    """The Mix'n'Match family (:func:`width_lists`) of an elastic model's config: one index into
    ``config.widths`` per sliceable layer, widening with depth for the ViT and narrowing for
    the CNN and MLP (:data:`MIX_GROWS`).

    Example:
        >>> mix_lists(ImageModelConfig(dim=4, nesting=(4,), arch="mlp", widths=(0.5, 1)))
        [(0, 0), (1, 0), (1, 1)]
    """
    if config.widths is None:
        raise NestembError("Mix'n'Match needs an elastic model (config.widths)", param="widths")
    return width_lists(len(config.widths), LAYERS[config.arch], MIX_GROWS[config.arch])


def sample_widths(widths: Sequence[float], gen: torch.Generator, per_step: int = 3,
                  always: Sequence[float] | None = None, mixed: float = 0.0,
                  lists: Sequence[Sequence[int]] = ()) -> tuple[Any, ...]:
    """The granularities one training step of an elastic model trains: the full width, the
    ``always`` ones (default: the smallest), and ``per_step - 1 - len(always)`` of the others
    drawn from ``gen`` without replacement. At the defaults this is the sandwich rule (the full
    width, the smallest, one other); every granularity once ``per_step`` reaches their number, as
    MatFormer's joint loss does. ``always`` may name other widths than the smallest, e.g. the
    widest ones, which a sampled step would otherwise train least for their size. The full width
    comes first: the smaller ones distill to it. Random numbers are drawn only when there is a
    choice, so two granularities, or all of them, use none. Shared by the image trainer
    (:mod:`nestemb.train.image`) and the text trainer (:mod:`nestemb.text.train`).

    ``mixed`` > 0 (with ``lists``, the model's :func:`mix_lists`): each *drawn* width is, with
    that probability, replaced by a Mix'n'Match list instead, drawn uniformly from the
    non-uniform ``lists`` (granularity indices per layer). In a CNN or MLP a layer's
    width is the next one's input, so a mixed list computes from slices that uniform widths
    never train together; training on such lists is what lets Mix'n'Match sizes work
    (Once-for-All's elastic width). ``mixed=0`` draws nothing extra: seeded runs are unchanged.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_widths((0.25, 1.0), g), len(sample_widths((0.125, 0.25, 0.5, 1.0), g))
        ((1.0, 0.25), 3)
        >>> sample_widths((0.125, 0.25, 0.5, 1.0), g, per_step=4)
        (1.0, 0.125, 0.5, 0.25)
        >>> sample_widths((0.125, 0.25, 0.5, 1.0), g, always=(0.5,))[:2]
        (1.0, 0.5)
        >>> sample_widths((1.0,), g)
        (1.0,)
        >>> sample_widths((0.125, 0.25, 0.5, 1.0), g, mixed=1.0, lists=width_lists(4, 2))[2] in (
        ...     (0.125, 0.25), (0.25, 0.5), (0.5, 1.0))
        True
    """
    widths = tuple(widths)
    if len(widths) == 1:
        return widths
    keep = (widths[0],) if always is None else tuple(g for g in widths[:-1] if g in always)
    picked = (widths[-1], *keep)
    rest = tuple(g for g in widths[:-1] if g not in keep)  # narrowest first
    take = min(max(per_step - len(picked), 0), len(rest))
    if take == len(rest):
        picked += rest[::-1]
    elif take == 1:  # the sandwich's one draw (kept as it was: a seeded run trains as before)
        picked += (rest[int(torch.randint(len(rest), (1,), generator=gen))],)
    elif take:
        others = rest[::-1]  # widest first
        chosen = sorted(torch.randperm(len(others), generator=gen)[:take].tolist())
        picked += tuple(others[i] for i in chosen)
    if mixed > 0 and take < len(rest):  # only drawn widths are mixed
        mixes = [ks for ks in lists if len(set(ks)) > 1]
        drawn: list[Any] = []
        for g in picked[len(picked) - take:]:
            if mixes and float(torch.rand((), generator=gen)) < mixed:
                drawn.append(tuple(widths[k] for k in mixes[int(torch.randint(len(mixes), (1,), generator=gen))]))
            else:
                drawn.append(g)
        picked = picked[: len(picked) - take] + tuple(drawn)
    return picked


def sampled_width_weights(widths: Sequence[float], picked: Sequence[float],
                          always: Sequence[float] | None = None) -> tuple[float, ...]:
    """Loss weights for the granularities ``picked`` by :func:`sample_widths` out of ``widths``
    (with the same ``always``) that make one step's *expected* loss the sum over every
    granularity (MatFormer's joint loss) at the sampled step's cost: 1 for the widths trained
    every step (the full one and ``always``, default the smallest), and (number of the other
    widths) / (number of them sampled) for each sampled one.

    Example:
        >>> sampled_width_weights((0.125, 0.25, 0.5, 1.0), (1.0, 0.125, 0.5))
        (1.0, 1.0, 2.0)
        >>> sampled_width_weights((0.125, 0.25, 0.5, 1.0), (1.0, 0.125, 0.5, 0.25))
        (1.0, 1.0, 1.0, 1.0)
        >>> sampled_width_weights((0.125, 0.25, 0.5, 1.0), (1.0, 0.25, 0.5), always=(0.25, 0.5))
        (1.0, 1.0, 1.0)
    """
    fixed = min(len(widths), 1 + (1 if always is None else sum(g in always for g in widths[:-1])))
    others, sampled = len(widths) - fixed, len(picked) - fixed
    scale = others / sampled if others > 0 and sampled > 0 else 1.0
    return tuple(1.0 if k < fixed else scale for k in range(len(picked)))


@dataclasses.dataclass
class ImageModelConfig:
    """Architecture of an :class:`ImageModel` (everything needed to rebuild it).

    ``head`` is ``"mrl"``, ``"mrl-e"`` or ``"ff"`` (fixed feature: a single-prefix nesting
    ``(dim,)``); ``cosine`` selects cosine classifiers on prefix views; ``mean``/``std`` are the
    pixel statistics (0-1 scale) used to standardize inputs. ``arch`` is the encoder:
    ``"cnn"`` (:class:`CNNEncoder`), ``"mlp"`` (:class:`MLPEncoder`, for cross-architecture
    comparisons) or ``"vit"`` (:class:`ViTEncoder`); ``width`` sizes each (the CNN's last
    layers and the ViT's tokens have ``4 * width`` units; :func:`make_model_config`, the
    library's recipe, gives the CNN's last layer ``16 * width``), or ``channels`` gives the units of
    every sliceable layer (5 conv layers for the CNN, 2 hidden layers for the MLP, the
    feed-forward hidden layer of each of the ViT's 4 blocks; what an extracted submodel
    records). ``widths`` (default
    ``None``: an ordinary model) makes the model elastic: the granularities trained together,
    e.g. :data:`DEFAULT_WIDTHS`.

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
    arch: str = "cnn"
    widths: tuple[float, ...] | None = None
    channels: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        # the dataclass repr, without the optional fields left at None: the repr is part of the
        # training signature of checkpoints, which stays that of ordinary models
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                 if not (f.name in _OPTIONAL and getattr(self, f.name) is None)]
        return f"{type(self).__name__}({', '.join(parts)})"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise NestembError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.widths is not None:
            self.widths = check_widths(self.widths)
        if self.channels is not None:
            ch = self.channels
            if (isinstance(ch, (str, bytes)) or not hasattr(ch, "__iter__")
                    or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c > 0
                               for c in ch)):  # fmt: skip
                raise NestembError(f"{{param}} must be a list of positive integers, got {ch!r}",
                                   param="channels")
            self.channels = tuple(int(c) for c in ch)
            if len(self.channels) != LAYERS[self.arch]:
                raise NestembError(f"{{param}} gives {len(self.channels)} layers; the {self.arch} "
                                   f"has {LAYERS[self.arch]}", param="channels")
        self.nesting = validate_nesting(self.nesting, full_dim=self.dim)
        height, width = (int(v) for v in self.in_hw)
        self.in_hw = (height, width)
        if self.head not in HEADS:
            raise NestembError(f"head must be 'mrl', 'mrl-e' or 'ff', got {self.head!r}")
        if int(self.width) < 1:
            raise NestembError(f"width must be at least 1, got {self.width}")
        if self.head == "ff" and len(self.nesting) != 1:
            raise NestembError(
                f"a fixed-feature (ff) model has one size; got the nesting {self.nesting}"
            )
        if self.num_classes < 2:
            raise NestembError(f"need at least 2 classes, got {self.num_classes}")

    @property
    def layer_channels(self) -> tuple[int, ...]:
        """Units of every sliceable layer of the full model.

        Example:
            >>> ImageModelConfig(dim=8, nesting=(8,), width=4).layer_channels
            (4, 8, 8, 16, 16)
            >>> ImageModelConfig(dim=8, nesting=(8,), width=2, arch="mlp").layer_channels
            (64, 64)
            >>> ImageModelConfig(dim=8, nesting=(8,), width=2, arch="vit").layer_channels
            (32, 32, 32, 32)
        """
        if self.channels is not None:
            return self.channels
        w = int(self.width)
        if self.arch == "vit":
            return (16 * w,) * VIT_DEPTH  # feed-forward hidden: 4x the token width 4 * w
        return (w, 2 * w, 2 * w, 4 * w, 4 * w) if self.arch == "cnn" else (32 * w, 32 * w)


def make_model_config(
    head: str = "mrl",
    dim: int = 256,
    dims: Sequence[int] | None = None,
    num_classes: int = 10,
    images: np.ndarray | None = None,
    **kw: Any,
) -> ImageModelConfig:
    """An :class:`ImageModelConfig` from the usual choices (the library's recipe: the CLI and
    the quickstart build their models here): ``head="ff"`` with ``dims=(m,)`` means FF-m; MRL
    heads default to the doubling nesting ``2, 4, ... dim``. Pixel statistics and the image size
    come from ``images`` when given.

    The CNN's last layer gets :data:`CNN_LAST_WIDTH` x ``width`` channels (256 at the default
    width, as many features as the default 256-d embedding) unless ``channels`` is given. With
    the plain ``4 * width`` (64), every prefix above 64 dims was a linear map of the same 64
    pooled features that the 2-d head shapes, and MRL's full prefix trailed a fixed-size model
    by 0.3-0.4 pt on Fashion-MNIST; 256 channels close that (docs/benchmarks.md) for about 1.4x
    the training time. The channels are recorded in the config, so models saved before keep
    their shape.

    Example:
        >>> make_model_config("mrl", dim=16).nesting
        (2, 4, 8, 16)
        >>> make_model_config("mrl", dim=16, width=2).layer_channels
        (2, 4, 4, 8, 32)
        >>> make_model_config("ff", dims=(4,)).dim
        4
        >>> make_model_config("mrl", dim=16, dims=(2, 4, 32))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: nesting dimension 32 is larger than the embedding dimension 16
    """
    if dim < 1:
        raise NestembError(f"{{param}} must be positive, got {dim}", param="dim")
    if head == "ff":
        if dims is not None:
            dims = validate_nesting(dims)
            if len(dims) != 1:
                raise NestembError("a fixed-size head (ff) trains one size: give one dimension in "
                                   f"{{param}}, got {tuple(dims)}", param="dims")
            if dims[0] > dim:
                raise NestembError(
                    f"nesting dimension {dims[0]} is larger than the embedding dimension {dim}"
                )
            dim = dims[0]
        nesting: tuple[int, ...] = (dim,)
    else:
        nesting = validate_nesting(dims, full_dim=dim) if dims is not None else default_nesting(dim)
    if kw.get("arch", "cnn") == "cnn" and kw.get("channels") is None:
        w = int(kw.get("width", ImageModelConfig.width))
        kw["channels"] = (w, 2 * w, 2 * w, 4 * w, CNN_LAST_WIDTH * w)
    if images is not None:
        sample = images[:: max(1, len(images) // 10000)].astype(np.float64) / 255.0
        kw.setdefault("mean", round(float(sample.mean()), 4))
        kw.setdefault("std", round(float(sample.std()) or 1.0, 4))
        kw.setdefault("in_hw", tuple(images.shape[1:]))
    return ImageModelConfig(dim=dim, nesting=nesting, head=head, num_classes=num_classes, **kw)


class SwitchableBatchNorm(nn.Module):
    """One batch norm per granularity of an elastic layer (switchable BN, Yu et al. 2019,
    "Slimmable neural networks"): ``forward(x, k)`` normalizes with the ``k``-th, sized for the
    units that granularity keeps.

    Why not one shared batch norm sliced like the weights: a unit's pre-activation sums over
    the active units of the layer below, so at a smaller width it has a different mean and
    variance; one set of running statistics would be an average fitting no width, and eval
    mode (running statistics) would shift every width's features. Per-width statistics and
    affine parameters cost ``4 * units`` numbers per width, nothing next to the conv weights.

    Example:
        >>> import torch
        >>> bn = SwitchableBatchNorm(nn.BatchNorm1d, (2, 4))
        >>> bn(torch.randn(3, 2), 0).shape, len(bn.bns)
        (torch.Size([3, 2]), 2)
    """

    def __init__(self, norm: Callable[[int], nn.Module], sizes: Sequence[int]):
        super().__init__()
        self.bns = nn.ModuleList(norm(int(s)) for s in sizes)

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.bns[k](x)


def _norm(norm: Callable[[int], nn.Module], widths: tuple[float, ...] | None) -> Callable[[int], nn.Module]:
    """The batch norm of a layer of ``c`` units: plain, or one per granularity when elastic."""
    if widths is None:
        return norm
    return lambda c: SwitchableBatchNorm(norm, [units(g, c) for g in widths])


def _conv_bn(i: int, o: int, norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> list[nn.Module]:
    return [nn.Conv2d(i, o, 3, padding=1, bias=False), norm(o), nn.ReLU(inplace=True)]


class _SliceableEncoder(nn.Module):
    """``features`` (a stack of conv or linear layers, each followed by its batch norm) and a
    linear ``proj``; with ``widths`` every layer runs the first units of its granularity."""

    features: nn.Sequential
    proj: nn.Linear
    widths: tuple[float, ...] | None
    channels: tuple[int, ...]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """What every width computes alike: the first layer's outputs at full width, before its
        batch norm (that layer reads the image at every width, and a width keeps its first
        units). ``forward(x, ks, stem=...)`` slices them, so a training step that runs several
        widths of one batch runs the first layer once.

        Example:
            >>> import torch
            >>> enc = MLPEncoder(dim=8, width=2, widths=(0.5, 1)).train(False)
            >>> x = torch.randn(3, 1, 28, 28)
            >>> torch.allclose(enc(x, [0, 0], stem=enc.stem(x)), enc(x, [0, 0]), atol=1e-6)
            True
        """
        for mod in list(self.features)[: self._first_layer() + 1]:
            x = mod(x)
        return x

    def forward(self, x: torch.Tensor, ks: Sequence[int] | None = None,
                stem: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Embeddings of ``x``; ``ks`` (elastic models only): the granularity index of each
        layer (default: the full width); ``stem``: :meth:`stem` of ``x``, computed once for
        several widths (``x`` is then not read)."""
        if self.widths is None and stem is None:
            return self.proj(self.features(x))
        if ks is None:
            ks = [len(self.widths) - 1 if self.widths else 0] * len(self.channels)
        mods = list(self.features)
        if stem is not None:  # resume after the first layer, from its first units
            first = self._first_layer()
            x, mods = stem[:, : self._units(cast("nn.Conv2d | nn.Linear", mods[first]), ks[0])], mods[first + 1 :]
        layer = 0
        for mod in mods:
            if isinstance(mod, nn.Conv2d):
                n = self._units(mod, ks[layer])
                x = F.conv2d(x, mod.weight[:n, : x.shape[1]], None, mod.stride, mod.padding)
            elif isinstance(mod, nn.Linear):
                x = F.linear(x, mod.weight[: self._units(mod, ks[layer]), : x.shape[1]])
            elif isinstance(mod, SwitchableBatchNorm):
                x = mod(x, ks[layer])
                layer += 1
            else:
                x = mod(x)
        return F.linear(x, self.proj.weight[:, : x.shape[1]], self.proj.bias)

    @property
    def shares_stem(self) -> bool:
        """Whether a training step's widths share :meth:`stem` (see :data:`STEM_MIN_FAN_IN`).

        Example:
            >>> CNNEncoder(dim=8, width=4).shares_stem, MLPEncoder(dim=8, width=2).shares_stem
            (False, True)
        """
        first = cast("nn.Conv2d | nn.Linear", self.features[self._first_layer()])
        return first.weight[0].numel() >= STEM_MIN_FAN_IN

    def _first_layer(self) -> int:
        """Index in ``features`` of the first conv or linear layer, the end of :meth:`stem`
        (what comes before it, e.g. the MLP's flatten, has no weights)."""
        return next(i for i, m in enumerate(self.features) if isinstance(m, (nn.Conv2d, nn.Linear)))

    def _units(self, mod: nn.Conv2d | nn.Linear, k: int) -> int:
        """Units of the conv or linear ``mod`` at granularity index ``k`` (all of an ordinary model's)."""
        c = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
        return c if self.widths is None else units(self.widths[k], c)


class CNNEncoder(_SliceableEncoder):
    """Five 3x3 conv-BN-ReLU layers (widths w, 2w, 2w, 4w, 4w, or ``channels``; max-pool after
    the 1st and 3rd), global average pooling and a linear projection to ``dim``. About 30 s per
    Fashion-MNIST epoch on 2 CPU threads at ``width=16``. With ``widths`` the model is elastic
    (see :class:`SwitchableBatchNorm`).

    Example:
        >>> import torch
        >>> CNNEncoder(dim=8, width=4)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 8])
    """

    def __init__(self, dim: int, width: int = 16, channels: Sequence[int] | None = None,
                 widths: tuple[float, ...] | None = None):  # fmt: skip
        super().__init__()
        w = width
        c = tuple(channels) if channels is not None else (w, 2 * w, 2 * w, 4 * w, 4 * w)
        bn = _norm(nn.BatchNorm2d, widths)
        self.widths, self.channels = widths, c
        self.features = nn.Sequential(
            *_conv_bn(1, c[0], bn), nn.MaxPool2d(2),
            *_conv_bn(c[0], c[1], bn), *_conv_bn(c[1], c[2], bn), nn.MaxPool2d(2),
            *_conv_bn(c[2], c[3], bn), *_conv_bn(c[3], c[4], bn),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.proj = nn.Linear(c[4], dim)


class MLPEncoder(_SliceableEncoder):
    """A fully connected encoder: flattened pixels, two Linear-BN-ReLU layers of ``32 * width``
    units (or ``channels``) and a linear projection to ``dim`` (``proj``, as in
    :class:`CNNEncoder`). No convolutions: a different architecture for stitching and comparison
    experiments, and several times faster to train than the CNN.

    Example:
        >>> import torch
        >>> MLPEncoder(dim=8, width=2, in_hw=(28, 28))(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 8])
    """

    def __init__(self, dim: int, width: int = 16, in_hw: tuple[int, int] = (28, 28),
                 channels: Sequence[int] | None = None,
                 widths: tuple[float, ...] | None = None):  # fmt: skip
        super().__init__()
        h1, h2 = tuple(channels) if channels is not None else (32 * width, 32 * width)
        bn = _norm(nn.BatchNorm1d, widths)
        self.widths, self.channels = widths, (h1, h2)
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_hw[0] * in_hw[1], h1, bias=False), bn(h1), nn.ReLU(inplace=True),
            nn.Linear(h1, h2, bias=False), bn(h2), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.proj = nn.Linear(h2, dim)


def vit_tokens(in_hw: Sequence[int]) -> int:
    """Tokens of the ViT for images of ``in_hw``: one per :data:`VIT_PATCH`-square patch (the
    image is zero-padded at the bottom and right up to a multiple of the patch).

    Example:
        >>> vit_tokens((28, 28)), vit_tokens((30, 28))
        (49, 56)
    """
    h, w = (int(v) for v in in_hw)
    return -(-h // VIT_PATCH) * -(-w // VIT_PATCH)


class ViTBlock(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))`` with
    ``ffn = fc2(gelu(fc1(.)))``. ``forward(x, n)`` runs the first ``n`` hidden units of the
    feed-forward layer (rows of ``fc1``, columns of ``fc2``; MatFormer), attention at full size.

    Example:
        >>> import torch
        >>> ViTBlock(8, 32, heads=2)(torch.zeros(2, 5, 8), 16).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, d: int, hidden: int, heads: int = VIT_HEADS):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
        return self.feed_forward(self.attend(x), n)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention half, ``x + attn(norm1(x))``: the same at every width."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return x + self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))

    def feed_forward(self, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """The feed-forward half, ``x + ffn(norm2(x))``, on the first ``n`` hidden units."""
        n = self.fc1.out_features if n is None else n
        # one code path for every width: the full model's slice is the whole weight
        h = F.gelu(F.linear(self.norm2(x), self.fc1.weight[:n], self.fc1.bias[:n]))
        return x + F.linear(h, self.fc2.weight[:, :n], self.fc2.bias)


class ViTEncoder(nn.Module):
    """A small vision transformer: :data:`VIT_PATCH`-square patches embedded to tokens of
    ``4 * width`` (a strided conv) plus learned positions, :data:`VIT_DEPTH` pre-norm blocks
    (:class:`ViTBlock`, :data:`VIT_HEADS` heads, feed-forward hidden ``16 * width`` = 4x the
    token width, or ``channels``), a final layer norm, mean pooling over the tokens and a
    linear projection to ``dim`` (``proj``, as in :class:`CNNEncoder`). With ``widths`` the
    model is elastic as in MatFormer: granularity ``g`` runs the first ``ceil(g * c)`` hidden
    units of each block's feed-forward layer; the patch embedding, attention, layer norms and
    ``proj`` are shared at full size (no batch norm, so nothing is switched per width).
    ``width=16`` (the default): 64-d tokens, 49 of them for 28x28 images.

    Example:
        >>> import torch
        >>> ViTEncoder(dim=8, width=2)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 8])
    """

    def __init__(self, dim: int, width: int = 16, in_hw: tuple[int, int] = (28, 28),
                 channels: Sequence[int] | None = None,
                 widths: tuple[float, ...] | None = None):  # fmt: skip
        super().__init__()
        d = 4 * width
        hidden = tuple(channels) if channels is not None else (16 * width,) * VIT_DEPTH
        self.widths, self.channels = widths, hidden
        self.patch = nn.Conv2d(1, d, VIT_PATCH, stride=VIT_PATCH)
        self.pos = nn.Parameter(torch.zeros(1, vit_tokens(in_hw), d))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(ViTBlock(d, c) for c in hidden)
        self.norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, dim)

    shares_stem = True
    """The widths of a training step share :meth:`stem`: attention costs far more than the
    slice (measured: the sandwich's step 2.36x the full model's unshared, 2.10x shared)."""

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """What every width computes alike: the patch tokens through the first block's
        attention (only the feed-forward layers nest). ``forward(x, ks, stem=...)`` resumes
        from it, so a training step that runs several widths of one batch computes it once.

        Example:
            >>> import torch
            >>> enc = ViTEncoder(dim=8, width=2, widths=(0.5, 1))
            >>> x = torch.randn(3, 1, 28, 28)
            >>> torch.allclose(enc(x, [0] * 4, stem=enc.stem(x)), enc(x, [0] * 4), atol=1e-6)
            True
        """
        pad_h, pad_w = -x.shape[-2] % VIT_PATCH, -x.shape[-1] % VIT_PATCH
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        first = cast(ViTBlock, self.blocks[0])
        return first.attend(self.patch(x).flatten(2).transpose(1, 2) + self.pos)

    def forward(self, x: torch.Tensor, ks: Sequence[int] | None = None,
                stem: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Embeddings of ``x``; ``ks`` (elastic models only): the granularity index of each
        block's feed-forward layer (default: the full width); ``stem``: :meth:`stem` of ``x``,
        computed once for several widths (``x`` is then not read)."""
        x = self.stem(x) if stem is None else stem
        for i, (block, c) in enumerate(zip(cast(Sequence[ViTBlock], self.blocks), self.channels)):
            n = c if ks is None or self.widths is None else units(self.widths[ks[i]], c)
            x = block.feed_forward(x if i == 0 else block.attend(x), n)
        return self.proj(self.norm(x).mean(dim=1))


class ImageModel(nn.Module):
    """Encoder + per-prefix heads. ``forward(x_float)`` returns ``(embedding, logits)`` with
    logits ``(B, K, classes)``; :meth:`encode` and :meth:`predict_proba` take uint8 images.
    An elastic model (``config.widths``) takes ``width=``: one trained granularity, or one per
    layer (Mix'n'Match; for the ViT, one per block); every width goes through the same
    projection and heads.

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
        self.encoder: CNNEncoder | MLPEncoder | ViTEncoder
        if config.arch == "vit":
            self.encoder = ViTEncoder(config.dim, config.width, config.in_hw, config.channels, config.widths)
        elif config.arch == "mlp":
            self.encoder = MLPEncoder(config.dim, config.width, config.in_hw, config.channels, config.widths)
        else:
            self.encoder = CNNEncoder(config.dim, config.width, config.channels, config.widths)
        kind = "mrl" if config.head == "ff" else config.head
        self.head = NestedHead(config.nesting, config.num_classes, kind=kind, cosine=config.cosine)

    @property
    def nesting(self) -> tuple[int, ...]:
        return self.config.nesting

    @property
    def widths(self) -> tuple[float, ...] | None:
        """The trained granularities (``config.widths``), or ``None`` for an ordinary model:
        the one attribute elastic image models and text encoders share."""
        return self.config.widths

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W)`` (or ``(B, 1, H, W)``) to standardized float ``(B, 1, H, W)``."""
        x = images.float() if images.dim() == 4 else images.float().unsqueeze(1)
        return (x / 255.0 - self.config.mean) / self.config.std

    def layer_widths(self, width: Any = None) -> tuple[int, ...] | None:
        """The granularity index of every layer for ``width``: ``None`` (the full model), a
        trained granularity of ``config.widths``, or a list of them, one per layer
        (Mix'n'Match). Returns ``None`` for the full model of an ordinary one; anything else
        raises naming ``width``.

        Example:
            >>> m = ImageModel(ImageModelConfig(dim=4, nesting=(4,), width=2, widths=(0.5, 1)))
            >>> m.layer_widths(0.5), m.layer_widths([0.5, 0.5, 1, 1, 1])
            ((0, 0, 0, 0, 0), (0, 0, 1, 1, 1))
            >>> m.layer_widths(0.25)
            Traceback (most recent call last):
            ...
            nestemb.errors.NestembError: width 0.25 is not a trained granularity of this model (widths (0.5, 1.0))
        """
        widths, n = self.config.widths, LAYERS[self.config.arch]
        if width is None:
            return None if widths is None else (len(widths) - 1,) * n
        if widths is None:
            if isinstance(width, numbers.Real) and not isinstance(width, bool) and width == 1:
                return None
            raise NestembError(f"this model has no nested widths (train it with widths=...): "
                               f"{{param}} must be None or 1, got {width!r}", param="width")
        per_layer = not isinstance(width, (numbers.Real, str, bytes)) and hasattr(width, "__iter__")
        values = list(width) if per_layer else [width] * n
        if per_layer and len(values) != n:
            raise NestembError(f"{{param}} lists {len(values)} per-layer widths; the "
                               f"{self.config.arch} has {n} layers", param="width")
        ks = []
        for g in values:
            k = next((i for i, w in enumerate(widths)
                      if isinstance(g, numbers.Real) and not isinstance(g, bool)
                      and math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-12)), None)  # fmt: skip
            if k is None:
                raise NestembError(f"{{param}} {g!r} is not a trained granularity of this model "
                                   f"(widths {widths})", param="width")
            ks.append(k)
        return tuple(ks)

    def forward(self, x: torch.Tensor, width: Any = None,
                stem: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``(embedding, logits)`` of ``x`` at ``width`` (see :meth:`layer_widths`). ``stem``:
        ``self.encoder.stem(x)``, the part every width computes alike, when several widths
        of one batch share it (training); ``x`` is then not read."""
        z = self.encoder(x, self.layer_widths(width), stem=stem)
        return z, self.head(z)

    def _check_images(self, images: Any) -> np.ndarray:
        arr = np.asarray(images)
        given = arr.shape  # reported as the caller passed it
        if arr.ndim == 2 and tuple(given) == self.config.in_hw:
            arr = arr[None]  # one image
        if arr.ndim != 3 or tuple(arr.shape[1:]) != self.config.in_hw:
            h, w = self.config.in_hw
            hint = (f" (flat rows of {h * w} pixels: reshape to (N, {h}, {w}))"
                    if arr.ndim == 2 and given[-1] == h * w else "")  # fmt: skip
            raise NestembError(f"images must have shape (N, {h}, {w}), got {given}{hint}")
        if arr.dtype != np.uint8:
            raise NestembError(f"images must be uint8 (0-255 pixels), got {arr.dtype}")
        return arr

    def _batches(self, images: Any, batch_size: int, fn, progress=None) -> np.ndarray:
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
                    if progress is not None:
                        progress(len(x))
        finally:
            self.train(was_training)
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)

    def encode(self, images: np.ndarray, batch_size: int = 1024,
               progress: Callable[[int], None] | None = None, width: Any = None) -> np.ndarray:
        """Raw full embeddings, float32 ``(N, dim)``, of uint8 images ``(N, H, W)``;
        ``progress(n)`` is called after each batch of ``n`` images; ``width``: see
        :meth:`layer_widths`."""
        ks = self.layer_widths(width)
        out = self._batches(images, batch_size, lambda x: self.encoder(x, ks), progress)
        return out.reshape(-1, self.config.dim).astype(np.float32, copy=False)

    def predict_proba(self, images: np.ndarray, batch_size: int = 1024,
                      progress: Callable[[int], None] | None = None, width: Any = None) -> np.ndarray:
        """Softmax class probabilities of every prefix head, ``(N, K, classes)``."""
        self.layer_widths(width)  # a bad width fails before any batch
        out = self._batches(images, batch_size, lambda x: self(x, width)[1].softmax(dim=-1), progress)
        return out.reshape(-1, len(self.nesting), self.config.num_classes)


def check_model_id(model_id: Any) -> str:
    """A readable model name: a non-empty string (checked before any training starts).

    Example:
        >>> check_model_id(" ")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: model_id must be a non-empty string, got ' '
    """
    return non_empty_str(model_id, "model_id")


def build_manifest(
    model: ImageModel, model_id: str = DEFAULT_MODEL_ID, extra: dict[str, Any] | None = None
) -> Manifest:
    """The manifest of ``model`` as it is now: a readable ``model_id`` and ``model_version`` =
    :func:`~nestemb.nesting.weights_version` of its state dict (file checksums are filled in by
    :func:`write_model_files`). Build it at save time: the version follows the weights.

    Example:
        >>> m = ImageModel(ImageModelConfig(dim=8, nesting=(2, 8), width=4))
        >>> man = build_manifest(m, "demo")
        >>> man.kind, man.model_version == weights_version(m.state_dict())
        ('image-model', True)
    """
    check_model_id(model_id)
    cfg = dataclasses.asdict(model.config)
    cfg["nesting"], cfg["in_hw"] = list(model.config.nesting), list(model.config.in_hw)
    for name in _OPTIONAL:  # absent when None: an ordinary model's manifest is as it was
        if cfg[name] is None:
            del cfg[name]
        else:
            cfg[name] = list(cfg[name])
    return Manifest(
        model_id=model_id,
        model_version=weights_version(model.state_dict()),
        nesting=model.config.nesting,
        dim=model.config.dim,
        kind=KIND,
        extra={"config": cfg, **(extra or {})},
    )


def write_model_files(
    model: ImageModel,
    directory: Path,
    model_id: str = DEFAULT_MODEL_ID,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Write ``weights`` and ``manifest.json`` (version from the weights, sha256 of the file)
    into an existing directory; returns the manifest written. Use :func:`save_image_model` for a
    new directory.

    Example:
        >>> import tempfile, pathlib
        >>> m = ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=4))
        >>> man = write_model_files(m, pathlib.Path(tempfile.mkdtemp()), "x")
        >>> sorted(man.sha256), len(man.model_version)
        (['weights'], 16)
    """
    from nestemb.io import atomic_file, sha256_file

    manifest = build_manifest(model, model_id, extra)
    with atomic_file(Path(directory) / WEIGHTS_NAME) as f:
        torch.save(model.state_dict(), f)
    manifest = dataclasses.replace(
        manifest, sha256={WEIGHTS_NAME: sha256_file(Path(directory) / WEIGHTS_NAME)}
    )
    manifest.save(directory)
    return manifest


def save_image_model(
    model: ImageModel,
    directory: str | os.PathLike,
    model_id: str = DEFAULT_MODEL_ID,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a model directory atomically (``weights`` + ``manifest.json``); the manifest's
    ``model_version`` is the hash of the weights saved.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> d = pathlib.Path(tempfile.mkdtemp()) / "model"
        >>> m = ImageModel(ImageModelConfig(dim=8, nesting=(2, 8), width=4))
        >>> _ = save_image_model(m, d, model_id="demo")
        >>> m2 = load_image_model(d)
        >>> m2.manifest.model_id, m2.manifest.nesting, m2.encode(np.zeros((1, 28, 28), np.uint8)).dtype
        ('demo', (2, 8), dtype('float32'))
    """
    from nestemb.io import atomic_dir

    with atomic_dir(directory, kind="image-model", overwrite=overwrite) as tmp:
        model.manifest = write_model_files(model, tmp, model_id, extra)
    return Path(directory)


_CONFIG_TYPES = {"dim": int, "width": int, "num_classes": int, "head": str, "cosine": bool,
                 "mean": float, "std": float, "arch": str}


def config_from_manifest(cfg: Any, where: str) -> ImageModelConfig:
    """An :class:`ImageModelConfig` from a manifest's ``extra.config``; any bad field is one
    line naming it (``where`` names the file).

    Example:
        >>> config_from_manifest({"dim": 8, "nesting": [2, 8], "width": "x"}, "m/manifest.json")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: m/manifest.json: extra.config.width must be an integer, got 'x'
    """
    if not isinstance(cfg, dict):
        raise NestembError(f"{where} has no model config (extra.config)")
    names = {f.name for f in dataclasses.fields(ImageModelConfig)}
    unknown = sorted(set(cfg) - names)
    if unknown:
        raise NestembError(f"{where}: extra.config has unknown field {unknown[0]!r} "
                           f"(known: {', '.join(sorted(names))})")  # fmt: skip
    for name, typ in _CONFIG_TYPES.items():
        v = cfg.get(name)
        if name not in cfg:
            continue
        ok = (isinstance(v, bool) if typ is bool else isinstance(v, str) if typ is str
              else isinstance(v, (int, float)) and not isinstance(v, bool)
              and (typ is float or float(v).is_integer()) and np.isfinite(v))  # fmt: skip
        if not ok:
            kind = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}[typ]
            raise NestembError(f"{where}: extra.config.{name} must be {kind}, got {v!r}")
    if "std" in cfg and not cfg["std"] > 0:
        raise NestembError(f"{where}: extra.config.std must be positive, got {cfg['std']!r}")
    for name, n in (("nesting", None), ("in_hw", 2), ("channels", None)):
        v = cfg.get(name)
        if name in cfg and not (isinstance(v, (list, tuple)) and (n is None or len(v) == n)
                                and all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                        for x in v)):  # fmt: skip
            size = "two" if n else "a list of"
            raise NestembError(f"{where}: extra.config.{name} must be {size} positive integers, got {v!r}")
    if "widths" in cfg and not isinstance(cfg["widths"], list):
        raise NestembError(f"{where}: extra.config.widths must be a list of fractions, got {cfg['widths']!r}")
    try:
        return ImageModelConfig(**cfg)
    except NestembError as e:
        raise NestembError(f"{where}: bad extra.config: {e}") from None


def _check_state_fits(model: ImageModel, state: Any, where: str) -> None:
    """Weights that do not fit the model built from the manifest's config: one line naming the
    config field that most likely differs."""
    if not isinstance(state, dict):
        raise NestembError(f"{where}: the weights file holds no state dict")
    own = model.state_dict()
    parts = [{k.split(".")[1] for k in d if k.startswith("encoder.")} for d in (state, own)]
    if parts[0] != parts[1]:  # e.g. a ViT's blocks where the config builds a CNN's features
        raise NestembError(f"{where}: extra.config does not fit the weights (check 'arch'): the "
                           f"weights hold the encoder parts {sorted(parts[0])}, the config's "
                           f"{model.config.arch} has {sorted(parts[1])}")
    elastic_weights, elastic_config = (any(".bns." in k for k in d) for d in (state, own))
    if elastic_weights != elastic_config:
        has = "hold" if elastic_weights else "lack"
        says = "has none" if elastic_weights else "names some"
        raise NestembError(f"{where}: extra.config does not fit the weights (check 'widths'): the "
                           f"weights {has} per-width batch norms (nested widths), the config {says}")

    def field(key: str) -> str:
        if ".bns." in key:
            return "widths"
        if key.startswith("encoder.proj."):
            return "dim"
        if key.startswith("encoder."):
            return "width"
        return "num_classes" if key in own and key in state else "cosine"

    for key in own:
        if key not in state:
            raise NestembError(f"{where}: extra.config does not fit the weights (check "
                               f"{field(key)!r}): the config expects {key!r}, the weights lack it")  # fmt: skip
        got, want = tuple(getattr(state[key], "shape", ())), tuple(own[key].shape)
        if got != want:
            raise NestembError(
                f"{where}: extra.config does not fit the weights (check {field(key)!r}): "
                f"{key} has shape {got} in the weights, {want} from the config"
            )
    extra = [k for k in state if k not in own]
    if extra:
        raise NestembError(f"{where}: extra.config does not fit the weights (check "
                           f"{field(extra[0])!r}): the weights hold {extra[0]!r}, the config has no such part")  # fmt: skip


def load_image_model(directory: str | os.PathLike) -> ImageModel:
    """Load a model saved by :func:`save_image_model` in eval mode, on the CPU; the file
    checksum and the weights version are both verified. Torch's thread count is left alone
    (scope it with :func:`nestemb.device.torch_threads` if needed).

    Example: see :func:`save_image_model`.
    """
    directory = Path(directory)
    manifest = Manifest.open(directory, KIND, "model directory", verify=False)
    if WEIGHTS_NAME not in manifest.sha256:
        raise NestembError(f"{directory}/manifest.json lists no checksum for {WEIGHTS_NAME!r}")
    manifest.verify(directory)
    config = config_from_manifest(manifest.extra.get("config"), f"{directory}/manifest.json")
    if config.nesting != manifest.nesting or config.dim != manifest.dim:
        raise NestembError(f"{directory}/manifest.json: config and nesting disagree")
    model = ImageModel(config, manifest)
    try:
        state = torch.load(directory / WEIGHTS_NAME, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt file whose checksum was rewritten
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NestembError(f"cannot load weights from {directory / WEIGHTS_NAME}: {first}") from None
    _check_state_fits(model, state, f"{directory}/manifest.json")
    try:
        model.load_state_dict(state)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NestembError(f"cannot load weights from {directory / WEIGHTS_NAME}: {first}") from None
    version = weights_version(model.state_dict())
    if version != manifest.model_version:
        raise NestembError(
            f"{directory}: the weights hash to version {version!r} but the manifest says "
            f"{manifest.model_version!r}: the manifest does not belong to these weights"
        )
    return model.eval()
