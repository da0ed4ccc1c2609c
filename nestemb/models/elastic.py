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
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Sequence

import torch
from torch import nn

from nestemb.errors import NestembError
from nestemb.models.image import (LAYERS, ImageModel, ImageModelConfig, SwitchableBatchNorm,
                                  build_manifest, check_model_id, units)
from nestemb.nesting import weights_version


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

    Example:
        >>> cfg = ImageModelConfig(dim=8, nesting=(8,), width=1, arch="mlp", in_hw=(4, 4))
        >>> multiply_adds(cfg)        # 16*32 + 32*32 + 32*8
        1792
    """
    c = tuple(channels) if channels is not None else config.layer_channels
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

    The rule (MatFormer's Mix'n'Match heuristic): only granularities that never shrink with
    depth (monotone non-decreasing lists, since training only saw uniform widths and the later
    layers carry the embedding), the most expensive such list within the budget (more compute,
    more accuracy), ties broken by the smallest spread between its smallest and largest
    granularity (the list closest to a trained uniform width). A budget below the smallest
    uniform width's cost is refused.

    Example:
        >>> cfg = ImageModelConfig(dim=8, nesting=(8,), width=8, widths=(0.25, 0.5, 1))
        >>> mix_n_match(cfg, 1.0), mix_n_match(cfg, 0.3)
        ((1.0, 1.0, 1.0, 1.0, 1.0), (0.25, 0.25, 0.5, 0.5, 1.0))
        >>> mix_n_match(cfg, 0.01)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: budget 0.01 is below the smallest width's cost (0.0700 of the full model's multiply-adds)
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
    for ks in itertools.combinations_with_replacement(range(len(widths)), LAYERS[config.arch]):
        cost = multiply_adds(config, layer_units(config, ks))
        if cost > budget * full:
            continue
        key = (cost, -(ks[-1] - ks[0]), ks)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        smallest = multiply_adds(config, layer_units(config, (0,) * LAYERS[config.arch])) / full
        raise NestembError(f"{{param}} {budget!r} is below the smallest width's cost ({smallest:.4f} "
                           "of the full model's multiply-adds)", param="budget")
    return tuple(widths[k] for k in best[2])


def extract(model: ImageModel, width: Any, *, model_id: str | None = None) -> ImageModel:
    """The submodel of the elastic ``model`` at ``width`` (a trained granularity, or one per
    layer): an ordinary :class:`ImageModel` in eval mode, on the CPU, whose forward equals
    ``model.forward(x, width=width)`` in eval mode, with its own weights. Its ``manifest``
    (model id ``model_id``, default the parent's with the width appended) records the parent
    (``extra.parent``), the slice (``extra.slice``) and the parent's hold-out split; save it
    with ``save_image_model(sub, out, sub.manifest.model_id, sub.manifest.extra)``.

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
    _copy_slice(model, sub, ks)
    sub.eval()
    extra: dict[str, Any] = {
        "parent": {"model_id": man.model_id, "model_version": man.model_version},
        "slice": {"width": layer_widths[0] if uniform else None, "layer_widths": layer_widths,
                  "channels": list(channels), "parent_widths": list(cfg.widths),
                  "multiply_adds": multiply_adds(sub_cfg),
                  "cost": round(multiply_adds(sub_cfg) / multiply_adds(cfg), 6)},
    }
    for key in ("split", "data"):  # image eval calibrates on the parent's hold-out
        if key in man.extra:
            extra[key] = man.extra[key]
    sub.manifest = build_manifest(sub, model_id, extra)
    return sub


@torch.no_grad()
def _copy_slice(parent: ImageModel, sub: ImageModel, ks: Sequence[int]) -> None:
    """Copy the parent's weights at granularities ``ks`` into ``sub`` (same layer layout)."""
    layer = 0
    for pm, sm in zip(parent.encoder.features, sub.encoder.features):
        if isinstance(pm, (nn.Conv2d, nn.Linear)) and isinstance(sm, (nn.Conv2d, nn.Linear)):
            out, inp = sm.weight.shape[:2]
            sm.weight.copy_(pm.weight[:out, :inp])
        elif isinstance(pm, SwitchableBatchNorm):
            sm.load_state_dict(pm.bns[ks[layer]].state_dict())
            layer += 1
    p_proj, s_proj = parent.encoder.proj, sub.encoder.proj
    s_proj.weight.copy_(p_proj.weight[:, : s_proj.weight.shape[1]])
    s_proj.bias.copy_(p_proj.bias)
    sub.head.load_state_dict(parent.head.state_dict())
