"""Classification heads over a nested embedding: one classifier per prefix of the nesting.

All per-prefix heads are computed with **one matmul over the full embedding**: the head for
prefix ``m`` is a weight block whose columns beyond ``m`` are masked to zero, and the blocks of
all prefixes are stacked, so the cost is that of a single ``(dim, K * classes)`` linear layer and
MRL trains as fast as a fixed-size model.

- ``kind="mrl"``: an independent weight block per prefix (Kusupati et al. 2022, MRL).
- ``kind="mrl-e"``: one weight matrix shared by every prefix; prefix ``m`` uses its first ``m``
  columns (MRL-E, weight-tied).
- A single-prefix nesting ``(m,)`` gives the fixed-feature baseline FF-m (a plain linear head).

``cosine=True`` turns each head into a cosine classifier: logits are a learned per-prefix scale
times the cosine between the *prefix view* of the embedding (first ``m`` coordinates, then L2
normalized, exactly :func:`nestemb.nesting.prefix_view`) and the class weights. That trains the
prefixes for the same geometry that nearest-neighbour search uses.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from nestemb.errors import NestembError
from nestemb.nesting import prefix_norms, validate_nesting

HEAD_KINDS = ("mrl", "mrl-e")


def prefix_mask(nesting: Sequence[int], dim: int) -> torch.Tensor:
    """``(K, dim)`` 0/1 mask whose row ``k`` keeps the first ``nesting[k]`` coordinates.

    Example:
        >>> prefix_mask((1, 3), 3)
        tensor([[1., 0., 0.],
                [1., 1., 1.]])
    """
    nesting = validate_nesting(nesting, full_dim=dim)
    return (torch.arange(dim)[None, :] < torch.tensor(nesting)[:, None]).float()


class NestedHead(nn.Module):
    """Per-prefix classifiers; ``forward(z)`` maps ``(B, dim)`` to logits ``(B, K, classes)``.

    Example:
        >>> import torch
        >>> head = NestedHead((2, 4, 8), num_classes=3, kind="mrl")
        >>> head(torch.randn(5, 8)).shape
        torch.Size([5, 3, 3])
        >>> NestedHead((2, 8), 3, kind="mrl-e").weight.shape   # one shared matrix
        torch.Size([3, 8])
    """

    def __init__(
        self,
        nesting: Sequence[int],
        num_classes: int,
        kind: str = "mrl",
        cosine: bool = False,
        init_scale: float = 10.0,
    ):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise NestembError(f"head kind must be one of {HEAD_KINDS}, got {kind!r}")
        self.nesting = validate_nesting(nesting)
        self.dim, self.num_classes = self.nesting[-1], int(num_classes)
        self.kind, self.cosine = kind, bool(cosine)
        k = len(self.nesting)
        rows = self.num_classes * (k if kind == "mrl" else 1)
        self.weight = nn.Parameter(torch.empty(rows, self.dim))
        # per-prefix fan-in initialisation, as an independent nn.Linear(m, classes) would get
        bound = 1.0 / math.sqrt(self.nesting[0] if kind == "mrl-e" else self.dim)
        nn.init.uniform_(self.weight, -bound, bound)
        if kind == "mrl":
            with torch.no_grad():
                for i, m in enumerate(self.nesting):
                    self.weight[i * self.num_classes : (i + 1) * self.num_classes] *= math.sqrt(
                        self.dim / m
                    )
        if self.cosine:
            self.log_scale = nn.Parameter(torch.full((k,), math.log(init_scale)))
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.zeros(k, self.num_classes))
        mask = prefix_mask(self.nesting, self.dim).repeat_interleave(self.num_classes, dim=0)
        self.register_buffer("mask", mask, persistent=False)  # (K * classes, dim)
        self.register_buffer("ends", torch.tensor(self.nesting) - 1, persistent=False)

    mask: torch.Tensor  # buffers, typed for the checker
    ends: torch.Tensor

    def block_weight(self) -> torch.Tensor:
        """The stacked, masked ``(K * classes, dim)`` weight of all prefix heads."""
        w = self.weight if self.kind == "mrl" else self.weight.repeat(len(self.nesting), 1)
        return w * self.mask

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.block_weight()
        logits = (z @ w.t()).view(z.shape[0], len(self.nesting), self.num_classes)
        if not self.cosine:
            return logits + self.bias
        # cosine(prefix_view(z, m), prefix_view(w, m)) without slicing: prefix norms via cumsum
        znorm = prefix_norms(z, self.ends)
        wnorm = w.pow(2).sum(dim=1).clamp_min(1e-24).sqrt().view(len(self.nesting), -1)
        return logits / znorm[:, :, None] / wnorm[None] * self.log_scale.exp()[None, :, None]
