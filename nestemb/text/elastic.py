"""Submodels of an elastic text encoder (nested feed-forward widths, :mod:`nestemb.text.ffn`):
the text side of :mod:`nestemb.models.elastic`.

:func:`extract` returns an ordinary, smaller sentence-transformers model: every feed-forward
block keeps the first ``units(g, I)`` hidden units of the parent's (``intermediate_size`` in its
Hugging Face config says so), every other weight is the parent's. Its encode equals the parent's
``encode(texts, width=g)`` to float tolerance; it has its own weights and so its own
``model_version``, and its manifest names the parent (``extra.parent``: model id and version)
and the slice (``extra.slice``), the fields the image submodels use. Embeddings it writes carry
the parent (:func:`nestemb.nesting.lineage`), so :func:`nestemb.nesting.check_compatible` lets
them search the parent's gallery without an adapter, and refuses them on another model's.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from nestemb.checks import non_empty_str
from nestemb.errors import NestembError
from nestemb.models.image import units
from nestemb.nesting import Manifest, weights_version
from nestemb.text.encoder import TEXT_MODEL_KIND, TextEncoder, weight_files
from nestemb.text.ffn import check_width, ffn_blocks, multiply_adds


def extract(encoder: TextEncoder, width: Any, *, model_id: str | None = None) -> TextEncoder:
    """The submodel of the elastic ``encoder`` at ``width`` (one of its trained widths): an
    ordinary :class:`~nestemb.text.encoder.TextEncoder` in eval mode on the parent's device,
    whose ``encode`` equals ``encoder.encode(texts, width=width)`` to float tolerance. Its
    ``manifest`` (model id ``model_id``, default the parent's with the width appended; the
    parent's nesting) records the parent (``extra.parent``) and the slice (``extra.slice``);
    save it with ``save_text_model(sub, out, sub.manifest)``.

    The parent's identity is what its submodels' embeddings carry, so ``encoder`` must be a
    saved or loaded model whose manifest matches its weight files (an encoder trained in
    memory: save it first).

    Example:
        >>> import tempfile, pathlib, dataclasses, numpy as np
        >>> from nestemb.text._tiny import make_tiny_model
        >>> from nestemb.text.encoder import load_text_model, save_text_model
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> enc = load_text_model(make_tiny_model(root / "m"))   # say it was trained with widths
        >>> _ = save_text_model(enc, root / "elastic", dataclasses.replace(
        ...     enc.manifest, model_id="elastic", extra={"widths": [0.25, 0.5, 1.0]}))
        >>> parent = load_text_model(root / "elastic")
        >>> sub = extract(parent, 0.25)
        >>> sub.manifest.model_id, sub.manifest.extra["slice"]["intermediate_size"], sub.widths
        ('elastic-w0.25', 16, None)
        >>> texts = ["the cat sits", "a dog runs"]
        >>> bool(np.allclose(sub.encode(texts), parent.encode(texts, width=0.25), atol=1e-5))
        True
        >>> extract(parent, 0.3)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: width 0.3 is not a trained granularity of this model (widths (0.25, 0.5, 1.0))
    """
    if not isinstance(encoder, TextEncoder):
        raise NestembError(f"{{param}} must be a TextEncoder, got {type(encoder).__name__}",
                           param="encoder")
    if encoder.widths is None:
        raise NestembError("this model has no nested widths (train it with widths=...); there "
                           "is nothing to extract", param="width")
    g = check_width(width, encoder.widths)
    assert g is not None
    man = encoder.manifest
    path = encoder.path
    files = weight_files(path) if path is not None and path.is_dir() else []
    if not files or weights_version(files) != man.model_version:
        raise NestembError("the model's manifest does not match saved weights (an encoder "
                           "trained or changed in memory): its submodels name it as their "
                           "parent, so save it with save_text_model first", param="encoder")
    if model_id is None:
        model_id = f"{man.model_id}-w{g:g}"
    model_id = non_empty_str(model_id, "model_id")
    blocks = ffn_blocks(encoder.model)
    full = blocks[0][0].out_features
    if any(up.out_features != full for up, _ in blocks):
        raise NestembError("the model's feed-forward blocks differ in width: one "
                           "intermediate_size cannot describe the submodel", param="encoder")
    n = units(g, full)
    sub_model = copy.deepcopy(encoder.model)
    with torch.no_grad():
        for up, down in ffn_blocks(sub_model):
            up.weight = nn.Parameter(up.weight[:n].clone())
            if up.bias is not None:
                up.bias = nn.Parameter(up.bias[:n].clone())
            up.out_features = n
            down.weight = nn.Parameter(down.weight[:, :n].clone())
            down.in_features = n
    for m in sub_model.modules():  # the Hugging Face config(s) the folder is saved with
        cfg = getattr(m, "config", None)
        if cfg is not None and getattr(cfg, "intermediate_size", None) == full:
            cfg.intermediate_size = n
    sub_model.eval()
    extra: dict[str, Any] = {
        "parent": {"model_id": man.model_id, "model_version": man.model_version},
        "slice": {"width": g, "intermediate_size": n, "parent_intermediate_size": full,
                  "parent_widths": list(encoder.widths),
                  "multiply_adds": multiply_adds(sub_model),
                  "cost": round(multiply_adds(sub_model) / multiply_adds(encoder.model), 6)},
    }
    manifest = Manifest(model_id=model_id, model_version=weights_version(sub_model.state_dict()),
                        nesting=man.nesting, dim=man.dim, kind=TEXT_MODEL_KIND, extra=extra)
    return TextEncoder(sub_model, manifest)
