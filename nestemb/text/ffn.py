"""Nested feed-forward widths of BERT-style text encoders (MatFormer-style, the text side of
:mod:`nestemb.models.image`'s ``widths``).

Every transformer layer of a BERT-style encoder (BERT, MiniLM, RoBERTa, MPNet: a layer with
``intermediate.dense`` and ``output.dense``) has a feed-forward block ``hidden -> I -> hidden``.
At granularity ``g`` the block runs its first ``units(g, I)`` hidden units
(:func:`nestemb.models.image.units`): ``intermediate.dense`` uses the first rows of its weight
and bias, ``output.dense`` the matching columns of its weight (its bias whole). MiniLM-L6's
``I = 1536`` gives 192 / 384 / 768 / 1536 at the default widths 1/8, 1/4, 1/2, 1
(:data:`~nestemb.models.image.DEFAULT_WIDTHS`). Attention, embeddings, pooling and any
projection after pooling are shared by every width, so every width writes the same space.

- :func:`ffn_width` runs a model at a width for the duration of a ``with`` block (weights are
  sliced on the fly, nothing is copied; differentiable, so training at a width trains the slice).
- :func:`check_width` resolves a requested width against a model's trained widths.
- :func:`ffn_blocks`, :func:`multiply_adds`: the blocks and the per-token cost.

Cutting a width out as an ordinary smaller model is :func:`nestemb.text.elastic.extract`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import threading
import types
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nestemb.errors import NestembError
from nestemb.models.image import units

_WIDTH: contextvars.ContextVar[float | None] = contextvars.ContextVar("nestemb_ffn_width",
                                                                       default=None)
"""The width the current thread (or task) runs the patched blocks at; ``None``: the full one.
A context variable, so a model shared by threads (the service's encoders) runs one width in
one thread and the full model in another at the same time."""
_LOCK = threading.Lock()
_USERS = "_nestemb_ffn_users"
"""Attribute counting the open :func:`ffn_width` blocks on a linear layer; the patch is removed
when the last one closes."""


def _layers(model: nn.Module) -> list[tuple[nn.Module, nn.Linear, nn.Linear]]:
    """Every transformer layer of ``model`` with its feed-forward ``(up, down)`` linear layers."""
    out = []
    for m in model.modules():
        up = getattr(getattr(m, "intermediate", None), "dense", None)
        down = getattr(getattr(m, "output", None), "dense", None)
        if (type(up) is nn.Linear and type(down) is nn.Linear  # noqa: E721 - exactly nn.Linear
                and up.out_features == down.in_features):  # fmt: skip
            out.append((m, up, down))
    return out


def ffn_blocks(model: nn.Module) -> list[tuple[nn.Linear, nn.Linear]]:
    """The feed-forward blocks of ``model`` in order, as ``(up, down)`` linear layers: every
    module with ``intermediate.dense`` (``hidden -> I``) and ``output.dense`` (``I -> hidden``).

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text._tiny import make_tiny_model
        >>> from nestemb.text.encoder import load_text_model
        >>> enc = load_text_model(make_tiny_model(pathlib.Path(tempfile.mkdtemp()) / "m"))
        >>> [(up.out_features, down.in_features) for up, down in ffn_blocks(enc.model)]
        [(64, 64), (64, 64)]
    """
    return [(up, down) for _layer, up, down in _layers(model)]


def check_width(width: Any, widths: Sequence[float] | None = None) -> float | None:
    """The width to run for a request of ``width``: ``None`` (the full model) stays ``None``;
    for an elastic model (trained ``widths``) one of them (matched to float tolerance);
    for any other model a fraction in ``(0, 1]`` (an untrained slice: it runs, but only training
    with widths makes it a good encoder). Anything else raises naming ``width``.

    Example:
        >>> check_width(0.25, (0.125, 0.25, 0.5, 1.0)), check_width(None), check_width(0.3)
        (0.25, None, 0.3)
        >>> check_width(0.3, (0.25, 1.0))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: width 0.3 is not a trained granularity of this model (widths (0.25, 1.0))
        >>> check_width(1.5)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: width must be a fraction in (0, 1] of the feed-forward width, got 1.5
    """
    if width is None:
        return None
    if not (isinstance(width, numbers.Real) and not isinstance(width, bool)
            and math.isfinite(width) and 0 < float(width) <= 1):  # fmt: skip
        raise NestembError(f"{{param}} must be a fraction in (0, 1] of the feed-forward width, got "
                           f"{width!r}", param="width")
    g = float(width)
    if widths is None:
        return g
    trained = tuple(float(w) for w in widths)
    for w in trained:
        if math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-12):
            return w
    raise NestembError(f"{{param}} {width!r} is not a trained granularity of this model (widths "
                       f"{trained})", param="width")


def _up_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    g = _WIDTH.get()
    if g is None:
        return F.linear(x, self.weight, self.bias)
    n = units(g, self.out_features)
    return F.linear(x, self.weight[:n], None if self.bias is None else self.bias[:n])


def _down_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    g = _WIDTH.get()
    if g is None:
        return F.linear(x, self.weight, self.bias)
    return F.linear(x, self.weight[:, : x.shape[-1]], self.bias)


@contextlib.contextmanager
def ffn_width(model: nn.Module, width: float | None) -> Iterator[None]:
    """Run every feed-forward block of ``model`` at ``width`` (a fraction, see
    :func:`check_width`; ``None`` or a width that keeps every unit: the model as it is, nothing
    patched) inside the ``with`` block.

    The blocks' linear layers get a forward that slices their weights (views, so gradients
    reach the full weights' slices) while any block is open, removed in ``finally`` when the
    last one closes; the width is a context variable, so other threads using the same model
    meanwhile run it at full width, and blocks nest (the inner width wins). The forward of a
    graph built inside the block is differentiable after it closes (backward needs no forward).

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from nestemb.text._tiny import make_tiny_model
        >>> from nestemb.text.encoder import load_text_model
        >>> enc = load_text_model(make_tiny_model(pathlib.Path(tempfile.mkdtemp()) / "m"))
        >>> full = enc.encode(["the cat sits"])
        >>> with ffn_width(enc.model, 0.25):
        ...     quarter = enc.encode(["the cat sits"])
        >>> bool(np.abs(quarter - full).max() > 1e-3), bool(np.array_equal(enc.encode(["the cat sits"]), full))
        (True, True)
    """
    if width is None:
        yield
        return
    blocks = ffn_blocks(model)
    if not blocks:
        raise NestembError("the model has no BERT-style feed-forward blocks (intermediate.dense "
                           "and output.dense in every layer): it cannot run at a {param}",
                           param="width")
    g = check_width(width)
    assert g is not None
    if all(units(g, up.out_features) == up.out_features for up, _ in blocks):
        yield  # every unit kept: the model as it is, bit for bit
        return
    layers = [layer for block in blocks for layer in block]
    with _LOCK:
        for (up, down) in blocks:
            for layer, fwd in ((up, _up_forward), (down, _down_forward)):
                n = getattr(layer, _USERS, 0)
                if n == 0:
                    layer.forward = types.MethodType(fwd, layer)  # type: ignore[method-assign]
                setattr(layer, _USERS, n + 1)
    token = _WIDTH.set(g)
    try:
        yield
    finally:
        _WIDTH.reset(token)
        with _LOCK:
            for layer in layers:
                n = getattr(layer, _USERS) - 1
                if n == 0:
                    del layer.forward
                    delattr(layer, _USERS)
                else:
                    setattr(layer, _USERS, n)


def multiply_adds(model: nn.Module, width: float | None = None) -> int:
    """Multiply-adds of the linear layers one token passes through in the transformer layers
    of ``model`` at ``width`` (``None``: full): attention projections and the feed-forward
    blocks at their units; attention scores (which grow with the text's length), embeddings,
    pooling and modules after pooling are left out.

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text._tiny import make_tiny_model
        >>> from nestemb.text.encoder import load_text_model
        >>> enc = load_text_model(make_tiny_model(pathlib.Path(tempfile.mkdtemp()) / "m"))
        >>> multiply_adds(enc.model), multiply_adds(enc.model, 0.25)   # 2 x (4*32*32 + 2*32*64)
        (16384, 10240)
    """
    g = check_width(width)
    total = 0
    for layer, up, down in _layers(model):
        for sub in layer.modules():
            if isinstance(sub, nn.Linear) and sub is not up and sub is not down:
                total += sub.in_features * sub.out_features
        n = up.out_features if g is None else units(g, up.out_features)
        total += n * (up.in_features + down.out_features)
    return total
