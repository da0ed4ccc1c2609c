"""``RelativeLayer``: a torch module that turns encoder outputs into relative representations, so
a head trained on top of it reads any encoder whose space differs by what the projection ignores.
"""

from __future__ import annotations

from typing import Any

import torch

from nestemb.errors import NestembError
from nestemb.relative.projection import check_anchors, check_kind, output_width, project


class RelativeLayer(torch.nn.Module):
    """Relative projection (see :mod:`nestemb.relative.projection`) as a differentiable layer.

    Two ways to give the anchors: fixed at construction (``anchors``, stored as a buffer and saved
    with the ``state_dict``: for a frozen encoder), or per call (``forward(x, anchors)``: the
    anchor items encoded by the current encoder in the same step, as in Moschella et al. when the
    encoder trains with the relative layer in the loop). Anchors given at construction are
    validated as in :func:`~nestemb.relative.relative_projection` (at least 2, distinct, finite).

    Args:
        kind: one of :data:`~nestemb.relative.KINDS`.
        anchors: optional ``(n_anchors, dim)`` array or tensor.
        center: subtract the anchors' mean first (translation invariance for cosine).

    Attributes:
        anchors: the fixed anchors buffer, or ``None``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> A = rng.normal(size=(8, 4)).astype("float32")
        >>> layer = RelativeLayer("cosine", anchors=A)
        >>> x = torch.randn(3, 4, requires_grad=True)
        >>> out = layer(x); out.shape, layer.out_features
        (torch.Size([3, 8]), 8)
        >>> out.sum().backward(); bool(torch.isfinite(x.grad).all())
        True
        >>> RelativeLayer("cosine")(x)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: anchors: give them to RelativeLayer(anchors=...) or to forward(x, anchors)
    """

    anchors: torch.Tensor | None

    def __init__(self, kind: str = "cosine", *, anchors: Any = None, center: bool = False):
        super().__init__()
        self.kind = check_kind(kind)
        self.center = bool(center)
        fixed = None
        if anchors is not None:
            a = anchors.detach().cpu().numpy() if isinstance(anchors, torch.Tensor) else anchors
            fixed = torch.as_tensor(check_anchors(a), dtype=torch.float32)
        self.register_buffer("anchors", fixed)

    @property
    def out_features(self) -> int:
        """Output width with the fixed anchors (``4 * n_anchors`` for ``product``)."""
        if self.anchors is None:
            raise NestembError(
                "anchors: no fixed anchors; the width depends on those given to forward"
            )
        return output_width(self.kind, len(self.anchors))

    def forward(self, x: torch.Tensor, anchors: torch.Tensor | None = None) -> torch.Tensor:
        a = self.anchors if anchors is None else anchors
        if a is None:
            raise NestembError(
                "anchors: give them to RelativeLayer(anchors=...) or to forward(x, anchors)"
            )
        if a.ndim != 2 or len(a) < 2:
            raise NestembError(
                f"anchors must be (n_anchors >= 2, dim), got shape {tuple(a.shape)}"
            )
        if x.shape[-1] != a.shape[-1]:
            raise NestembError(
                f"x has width {x.shape[-1]} but anchors have width {a.shape[-1]}: they must come "
                "from the same space"
            )
        return project(x, a.to(x.dtype), self.kind, self.center)

    def extra_repr(self) -> str:
        n = "per call" if self.anchors is None else str(len(self.anchors))
        return f"kind={self.kind!r}, anchors={n}, center={self.center}"
