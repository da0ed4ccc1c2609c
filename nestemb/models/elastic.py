"""Submodels of an elastic image model (MatFormer-style nested widths, see
:mod:`nestemb.models.image`): cut one out, count its cost, pick one for a budget.

- :func:`extract` returns an ordinary :class:`~nestemb.models.image.ImageModel` (no ``widths``,
  per-layer ``channels``) holding copies of the parent's weights at one width or one width per
  layer. Its forward equals the parent's at that width exactly (eval mode); it has its own
  weights and so its own ``model_version``, and its manifest names the parent (``extra.parent``:
  model id and version) and the slice (``extra.slice``). Embeddings it writes carry the
  parent in their manifest (:func:`nestemb.nesting.lineage`), so
  :func:`nestemb.nesting.check_compatible` lets them search the parent's gallery.
- :func:`multiply_adds` counts an encoder's multiply-adds per image (the heads are left out:
  they are not part of encoding).
- :func:`mix_n_match` picks per-layer widths for a budget (a fraction of the full model's
  multiply-adds).
- :func:`recalibrate` re-estimates the batch-norm statistics of a (sub)model on training images
  (``extract(..., calibration=images)`` does it for a submodel). A per-layer (Mix'n'Match) list
  of widths was never trained as such: each layer's batch norm holds the statistics of its
  width inside a *uniform* model, but its input now comes from layers of other widths, so its
  running mean and variance are off and the submodel falls below the line joining the uniform
  widths. Uniform widths need none: their batch norms were trained at that width. The ViT
  has layer norms only (per-token statistics, nothing running): nothing to recalibrate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from nestemb.checks import positive_int
from nestemb.errors import NestembError
from nestemb.models.image import (LAYERS, VIT_PATCH, ImageModel, ImageModelConfig,
                                  SwitchableBatchNorm, build_manifest, check_model_id, units,
                                  mix_lists, vit_tokens)
from nestemb.nesting import weights_version

CALIBRATION_BATCH = 256
"""Most images per forward pass of :func:`recalibrate` (the running statistics average the
batch statistics of batches this size or a little smaller)."""


def layer_units(config: ImageModelConfig, ks: Sequence[int] | None = None) -> tuple[int, ...]:
    """Units of every layer of ``config``'s model at the granularity indices ``ks`` (``None``:
    the full model).

    Example:
        >>> cfg = ImageModelConfig(dim=8, nesting=(8,), width=4, widths=(0.25, 0.5, 1))
        >>> layer_units(cfg, (0, 0, 1, 2, 2)), layer_units(cfg)
        ((1, 2, 4, 16, 16), (4, 8, 8, 16, 16))
    """
    full = config.layer_channels
    if ks is None:
        return full
    if config.widths is None:
        raise NestembError("an ordinary model has one set of units: give no granularities")
    return tuple(units(config.widths[k], c) for k, c in zip(ks, full))


def multiply_adds(config: ImageModelConfig, channels: Sequence[int] | None = None) -> int:
    """Multiply-adds of encoding one image with ``config``'s encoder whose layers have
    ``channels`` units (default: the full model's): convolutions (3x3, at their resolution),
    linear layers and the projection; batch norm, pooling and the heads are left out.

    For the ViT (``T`` tokens of width ``d = 4 * width``, feed-forward hidden ``h`` per block):
    the patch embedding ``T * 16 * d``, per block the q/k/v and output projections
    ``4 * T * d * d``, the attention scores ``Q K^T`` and their weighted sum ``A V``
    (``T * T * d`` each) and the feed-forward layer ``2 * T * d * h``, then ``proj``. Left
    out, as biases, batch norm and pooling are for the others: layer norms, softmax, GELU, the
    residual and position additions, the mean over tokens (each linear in ``T * d``).

    Example:
        >>> cfg = ImageModelConfig(dim=8, nesting=(8,), width=1, arch="mlp", in_hw=(4, 4))
        >>> multiply_adds(cfg)        # 16*32 + 32*32 + 32*8
        1792
        >>> vit = ImageModelConfig(dim=8, nesting=(8,), width=1, arch="vit", in_hw=(8, 8))
        >>> multiply_adds(vit)        # T=4, d=4, h=16: 4*16*4 + 4 * (4*4*4*4 + 2*4*4*4 + 2*4*4*16) + 4*8
        3872
    """
    c = tuple(channels) if channels is not None else config.layer_channels
    if config.arch == "vit":
        t, d = vit_tokens(config.in_hw), 4 * int(config.width)
        blocks = sum(4 * t * d * d + 2 * t * t * d + 2 * t * d * h for h in c)
        return t * VIT_PATCH * VIT_PATCH * d + blocks + d * config.dim
    if config.arch == "mlp":
        h, w = config.in_hw
        return h * w * c[0] + c[0] * c[1] + c[1] * config.dim
    h, w = config.in_hw
    total, c_in = 0, 1
    for i, c_out in enumerate(c):
        total += 9 * c_in * c_out * h * w
        if i in (0, 2):  # max-pool after the 1st and 3rd conv
            h, w = h // 2, w // 2
        c_in = c_out
    return total + c[-1] * config.dim


def mix_n_match(config: ImageModelConfig, budget: float) -> tuple[float, ...]:
    """Per-layer widths for a compute ``budget`` (a fraction of the full model's
    :func:`multiply_adds`), for :func:`extract` or ``ImageModel.forward(width=...)``.

    The rule (MatFormer's Mix'n'Match heuristic): only lists of the model's family,
    :func:`~nestemb.models.image.mix_lists` (two neighbouring granularities at most, which
    widen with depth in the ViT and narrow in the CNN and MLP, see
    :data:`~nestemb.models.image.MIX_GROWS`; ``mixed_widths`` training samples the same
    lists), the most expensive one within the budget (more compute, more accuracy), ties broken
    by the smaller spread (a uniform width). A budget below the smallest uniform width's cost
    is refused.

    For the ViT the lists are per block (the feed-forward layer's granularity; attention is
    always full, so the smallest width costs more of the full model than the CNN's does:
    0.56 for 1/4 at ``width=16``).
    Every block costs the same, so a list's cost depends only on how many blocks take each
    granularity: among lists of one cost the rule keeps the one closest to uniform, with the
    larger feed-forward layers in the last blocks, as MatFormer's Mix'n'Match for its ViTs
    and LMs (granularities that change slowly and grow with depth).

    Example:
        >>> cfg = ImageModelConfig(dim=8, nesting=(8,), width=8, widths=(0.25, 0.5, 1))
        >>> mix_n_match(cfg, 1.0), mix_n_match(cfg, 0.2)
        ((1.0, 1.0, 1.0, 1.0, 1.0), (0.5, 0.5, 0.5, 0.25, 0.25))
        >>> mix_n_match(cfg, 0.01)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: budget 0.01 is below the smallest width's cost (0.0700 of the full model's multiply-adds)
        >>> vit = ImageModelConfig(dim=8, nesting=(8,), arch="vit", widths=(0.25, 0.5, 1))
        >>> mix_n_match(vit, 0.6), mix_n_match(vit, 0.8)     # 1/4 width: 0.56 of the full cost
        ((0.25, 0.25, 0.25, 0.5), (0.5, 0.5, 0.5, 1.0))
    """
    widths = config.widths
    if widths is None:
        raise NestembError("mix_n_match needs an elastic model (config.widths)", param="widths")
    if not (isinstance(budget, (int, float)) and not isinstance(budget, bool) and math.isfinite(budget)
            and budget > 0):  # fmt: skip
        raise NestembError(f"{{param}} must be a positive fraction of the full model's cost, got {budget!r}",
                           param="budget")
    full = multiply_adds(config)
    best: tuple[int, int, tuple[int, ...]] | None = None
    for ks in mix_lists(config):
        cost = multiply_adds(config, layer_units(config, ks))
        if cost > budget * full:
            continue
        key = (cost, -(max(ks) - min(ks)), ks)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        smallest = multiply_adds(config, layer_units(config, (0,) * LAYERS[config.arch])) / full
        raise NestembError(f"{{param}} {budget!r} is below the smallest width's cost ({smallest:.4f} "
                           "of the full model's multiply-adds)", param="budget")
    return tuple(widths[k] for k in best[2])


def extract(model: ImageModel, width: Any, *, model_id: str | None = None,
            calibration: Any = None, batch_size: int = CALIBRATION_BATCH) -> ImageModel:
    """The submodel of the elastic ``model`` at ``width`` (a trained granularity, or one per
    layer): an ordinary :class:`ImageModel` in eval mode, on the CPU, whose forward equals
    ``model.forward(x, width=width)`` in eval mode, with its own weights. Its ``manifest``
    (model id ``model_id``, default the parent's with the width appended) records the parent
    (``extra.parent``), the slice (``extra.slice``) and the parent's hold-out split; save it
    with ``save_image_model(sub, out, sub.manifest.model_id, sub.manifest.extra)``.

    ``calibration`` (uint8 training images ``(N, H, W)``, default none): re-estimate the
    submodel's batch-norm statistics on them (:func:`recalibrate`, ``batch_size`` images per
    pass), which is what a per-layer list of widths needs. Its forward then differs from the
    parent's at that width, and so do its weights and version; ``extra.slice.calibration``
    records the images' count, the batch size and the version of the plain slice. A model
    without batch norm (the ViT) is left as sliced and records none.

    ``model`` needs a manifest that matches its weights (a saved or loaded model, or one given
    :func:`~nestemb.models.image.build_manifest`): the parent's identity is what its submodels'
    embeddings carry. Global random state is left as it was.

    Example:
        >>> import torch
        >>> cfg = ImageModelConfig(dim=4, nesting=(2, 4), width=2, widths=(0.5, 1))
        >>> parent = ImageModel(cfg).eval()
        >>> parent.manifest = build_manifest(parent, "demo")
        >>> sub = extract(parent, 0.5)
        >>> sub.config.widths, sub.config.channels, sub.manifest.model_id
        (None, (1, 2, 2, 4, 4), 'demo-w0.5')
        >>> x = torch.randn(3, 1, 28, 28)
        >>> torch.equal(sub(x)[0], parent(x, width=0.5)[0])
        True
        >>> extract(parent, 0.3)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: width 0.3 is not a trained granularity of this model (widths (0.5, 1.0))
    """
    if not isinstance(model, ImageModel):
        raise NestembError(f"{{param}} must be an ImageModel, got {type(model).__name__}", param="model")
    cfg = model.config
    if cfg.widths is None:
        raise NestembError("this model has no nested widths (train it with widths=...); "
                           "there is nothing to extract", param="width")
    ks = model.layer_widths(width)
    assert ks is not None  # an elastic model always resolves a width
    man = model.manifest
    if man is None:
        raise NestembError("the model has no manifest (model id and weights version), which its "
                           "submodels name as their parent: load it with load_image_model or set "
                           "one with build_manifest", param="model")
    if weights_version(model.state_dict()) != man.model_version:
        raise NestembError(f"the model's manifest (version {man.model_version!r}) no longer matches "
                           "its weights: save it again or rebuild its manifest with build_manifest",
                           param="model")
    layer_widths = [cfg.widths[k] for k in ks]
    uniform = len(set(ks)) == 1
    if model_id is None:
        tag = f"{layer_widths[0]:g}" if uniform else "-".join(f"{g:g}" for g in layer_widths)
        model_id = f"{man.model_id}-w{tag}"
    check_model_id(model_id)
    channels = layer_units(cfg, ks)
    sub_cfg = dataclasses.replace(cfg, widths=None, channels=channels)
    with torch.random.fork_rng(devices=[]):  # the fresh weights are overwritten: leave the RNG alone
        sub = ImageModel(sub_cfg)
    images = None
    if calibration is not None:  # checked before any copying
        images = _calibration_images(sub, calibration, batch_size)
    _copy_slice(model, sub, ks)
    sub.eval()
    slice_: dict[str, Any] = {
        "width": layer_widths[0] if uniform else None, "layer_widths": layer_widths,
        "channels": list(channels), "parent_widths": list(cfg.widths),
        "multiply_adds": multiply_adds(sub_cfg),
        "cost": round(multiply_adds(sub_cfg) / multiply_adds(cfg), 6),
    }  # fmt: skip
    if images is not None and batch_norms(sub):
        sliced = weights_version(sub.state_dict())
        recalibrate(sub, images, batch_size=batch_size)
        slice_["calibration"] = {"images": len(images), "batch_size": int(batch_size),
                                 "uncalibrated_version": sliced}  # fmt: skip
    extra: dict[str, Any] = {
        "parent": {"model_id": man.model_id, "model_version": man.model_version},
        "slice": slice_,
    }
    for key in ("split", "data"):  # image eval calibrates on the parent's hold-out
        if key in man.extra:
            extra[key] = man.extra[key]
    sub.manifest = build_manifest(sub, model_id, extra)
    return sub


@torch.no_grad()
def _copy_slice(parent: ImageModel, sub: ImageModel, ks: Sequence[int]) -> None:
    """Copy the parent's weights at granularities ``ks`` into ``sub`` (the same architecture
    with fewer units). Every tensor of a submodel is the leading block of the parent's tensor
    of the same name (conv and linear weights: the first output and input units; ViT
    feed-forward biases: the first units; everything else whole), except batch norms: the
    submodel's ``...features.i.*`` is the parent's ``...features.i.bns.k.*`` of that layer's
    granularity ``k``."""
    switched = [name for name, m in parent.named_modules() if isinstance(m, SwitchableBatchNorm)]
    renamed = {f"{name}.": f"{name}.bns.{k}." for name, k in zip(switched, ks)}  # layer order
    own = parent.state_dict()
    state = {}
    for key, t in sub.state_dict().items():
        src = next((new + key[len(old):] for old, new in renamed.items() if key.startswith(old)), key)
        state[key] = own[src][tuple(slice(0, n) for n in t.shape)].clone()
    sub.load_state_dict(state)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every batch norm of ``model`` (those :func:`recalibrate` re-estimates; none in a ViT).

    Example:
        >>> [len(batch_norms(ImageModel(ImageModelConfig(dim=4, nesting=(4,), width=1, arch=a))))
        ...  for a in ("cnn", "mlp", "vit")]
        [5, 2, 0]
    """
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def batch_stats_only(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every batch norm of ``model`` in train mode normalizes with its batch's
    statistics and leaves its running ones (and their count) alone; eval mode is unchanged.
    Mix'n'Match lists train this way (``mixed_widths``): a list runs each layer's batch norm of
    one uniform width on the inputs of another, so its statistics would otherwise pull those
    of the uniform width away from what that width sees. An extracted Mix'n'Match submodel gets
    its own (:func:`extract` with ``calibration``).

    Example:
        >>> m = ImageModel(ImageModelConfig(dim=4, nesting=(4,), width=1, arch="mlp", in_hw=(4, 4))).train()
        >>> with batch_stats_only(m):
        ...     _ = m(torch.randn(8, 1, 4, 4))
        >>> float(batch_norms(m)[0].running_mean.abs().max()), int(batch_norms(m)[0].num_batches_tracked)
        (0.0, 0)
    """
    norms = batch_norms(model)
    tracked = [bn.track_running_stats for bn in norms]
    try:
        for bn in norms:
            bn.track_running_stats = False
        yield model
    finally:
        for bn, t in zip(norms, tracked):
            bn.track_running_stats = t


def _calibration_images(model: ImageModel, images: Any, batch_size: int) -> np.ndarray:
    """``images`` checked for :func:`recalibrate`: uint8 ``(N, H, W)`` of the model's size,
    at least 2 (batch statistics need two values per channel)."""
    positive_int(batch_size, "batch_size")
    try:
        arr = model._check_images(images)
    except NestembError as e:
        raise NestembError(f"calibration {e.template}", param="calibration") from None
    if len(arr) < 2:
        raise NestembError(f"{{param}} needs at least 2 images (batch statistics), got {len(arr)}",
                           param="calibration")
    return arr


def recalibrate(model: ImageModel, images: Any, *, batch_size: int = CALIBRATION_BATCH,
                width: Any = None) -> ImageModel:
    """Re-estimate the running mean and variance of every batch norm that ``model`` runs at
    ``width`` (default: the full model; see :meth:`ImageModel.layer_widths`) from uint8
    ``images`` ``(N, H, W)``, in place; returns ``model`` in eval mode.

    The statistics are reset, then the images go forward in batches of at most ``batch_size``
    (``N`` split evenly, so every batch weighs the same; never a batch of one, which a batch
    norm cannot normalize) with the batch norms in train mode
    and cumulative averaging (``momentum=None``): each running statistic becomes the mean of
    its batch statistics, which for one batch are exactly the batch's mean and unbiased
    variance (as ``torch.optim.swa_utils.update_bn``). No gradients, the rest of the model in
    eval mode, the global random state untouched, the momenta restored; an error or interrupt
    midway leaves the old statistics. Batch norms the forward at ``width`` does not run (other
    granularities of an elastic model) are left alone; on an elastic model a per-layer list
    would overwrite the statistics its uniform widths use: recalibrate an extracted submodel
    (:func:`extract` with ``calibration``) instead. A model without batch norm (the ViT) is
    returned unchanged.

    Example:
        >>> import numpy as np
        >>> m = ImageModel(ImageModelConfig(dim=4, nesting=(4,), width=1, arch="mlp", in_hw=(4, 4)))
        >>> x = np.random.default_rng(0).integers(0, 256, (50, 4, 4), dtype=np.uint8)
        >>> bn = m.encoder.features[2]              # the first batch norm: its input is x @ W1.T
        >>> _ = recalibrate(m, x, batch_size=50)
        >>> h = m.preprocess(torch.from_numpy(x)).flatten(1) @ m.encoder.features[1].weight.T
        >>> torch.allclose(bn.running_mean, h.mean(0), atol=1e-5), torch.allclose(bn.running_var, h.var(0), atol=1e-4)
        (True, True)
        >>> m.training, bn.momentum
        (False, 0.1)
    """
    if not isinstance(model, ImageModel):
        raise NestembError(f"{{param}} must be an ImageModel, got {type(model).__name__}", param="model")
    ks = model.layer_widths(width)
    arr = _calibration_images(model, images, batch_size)
    norms = batch_norms(model)
    if not norms:
        return model.eval()
    device = next(model.parameters()).device
    fresh: set[nn.Module] = set()

    def reset(module: Any, _inputs: Any) -> None:
        if module not in fresh:  # on its first batch: only the batch norms this width runs
            module.reset_running_stats()
            fresh.add(module)

    momenta = [m.momentum for m in norms]
    backup = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = [m.register_forward_pre_hook(reset) for m in norms]
    model.eval()
    done = False
    try:
        for m in norms:
            m.momentum = None
            m.train()
        n_batches = max(1, min(math.ceil(len(arr) / batch_size), len(arr) // 2))
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for idx in np.array_split(np.arange(len(arr)), n_batches):
                model.encoder(model.preprocess(torch.from_numpy(arr[idx]).to(device)), ks)
        done = True
    finally:
        for h in hooks:
            h.remove()
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        if not done:
            model.load_state_dict(backup)
        model.eval()
    return model
