"""Matryoshka losses, one of each: the per-prefix wrapper over any loss, InfoNCE, and the
per-prefix cross-entropy of classification heads.

- :class:`PrefixLoss`: the weighted mean over prefix sizes of any inner loss on the
  :func:`~nestemb.nesting.prefix_view` views of its inputs (the shape of sentence-transformers'
  ``MatryoshkaLoss``: one truncation function, any inner loss). Text exits, nesting retrofits and
  MLP adapters all train through it.
- :func:`info_nce`: InfoNCE with in-batch negatives (+ optional hard negatives).
- :func:`matryoshka_cross_entropy`: per-prefix logits of the image heads.
- :func:`cosine_distance`: ``1 - cos`` of unit rows, the inner loss of every prefix-cosine
  term (adapters, compatible-training distillation, elastic widths' self-distillation);
  :class:`PrefixLoss` computes it at all prefixes at once (:func:`prefix_cosine_distances`).

(Text-only losses, CoSENT and the distillation terms, live in :mod:`nestemb.text.losses`.)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from nestemb.errors import NestembError
from nestemb.nesting import prefix_norms, prefix_view


def check_weights(weights: Sequence[float] | None, nesting: Sequence[int]) -> tuple[float, ...]:
    """Per-prefix loss weights: one finite, non-negative number per nesting entry (default 1),
    not all zero.

    Example:
        >>> check_weights(None, (2, 4, 8))
        (1.0, 1.0, 1.0)
        >>> check_weights([1, 2], (2, 4, 8))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: got 2 prefix weights for a nesting of 3 dimensions (2, 4, 8)
    """
    if weights is None:
        return tuple(1.0 for _ in nesting)
    w = tuple(float(x) for x in weights)
    if len(w) != len(nesting):
        raise NestembError(
            f"got {len(w)} prefix weights for a nesting of {len(nesting)} dimensions "
            f"{tuple(nesting)}"
        )
    if any(not (x >= 0 and x < float("inf")) for x in w) or not any(w):
        raise NestembError(f"prefix weights must be finite, >= 0 and not all zero, got {w}")
    return w


def cosine_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between matching rows of two batches of unit vectors (the
    :func:`~nestemb.nesting.prefix_view` views :class:`PrefixLoss` hands its inner loss).

    Example:
        >>> cosine_distance(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
        tensor(0.5000)
    """
    return (1 - (pred * target).sum(-1)).mean()


def matryoshka_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: Sequence[float] | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum over prefixes of the cross-entropy of per-prefix logits ``(B, K, C)``.

    Returns ``(loss, per_prefix)`` where ``per_prefix`` holds the ``K`` unweighted losses
    (detached). With a single prefix this is plain cross-entropy (the FF baseline).

    Example:
        >>> import torch
        >>> logits = torch.zeros(2, 3, 4)            # uniform over 4 classes at 3 prefixes
        >>> loss, per = matryoshka_cross_entropy(logits, torch.tensor([0, 1]), [1, 1, 2])
        >>> round(loss.item(), 4), round(per[0].item(), 4)   # 4 * log(4), log(4)
        (5.5452, 1.3863)
    """
    b, k, c = logits.shape
    if not torch.is_tensor(weights):
        weights = check_weights(weights, range(1, k + 1))
    w = torch.as_tensor(weights, dtype=logits.dtype, device=logits.device)
    per = F.cross_entropy(
        logits.reshape(b * k, c),
        targets.repeat_interleave(k),
        reduction="none",
        label_smoothing=label_smoothing,
    ).view(b, k).mean(dim=0)
    return (per * w).sum(), per.detach()


def info_nce(anchor, positive, negative=None, temperature: float = 0.05):
    """InfoNCE over L2-normalized rows: anchor ``i`` must pick ``positive[i]`` among all
    positives of the batch plus all hard negatives (``negative``: ``(B, d)`` or ``(B*k, d)``).

    Example:
        >>> a = torch.eye(2); round(float(info_nce(a, a, temperature=1.0)), 4)
        0.3133
    """
    cands = positive if negative is None else torch.cat([positive, negative], 0)
    logits = anchor @ cands.T / temperature
    target = torch.arange(len(anchor), device=anchor.device)
    return F.cross_entropy(logits, target)


class PrefixLoss:
    """Matryoshka as a wrapper: ``inner`` applied to the ``m``-dim views of its inputs, for
    every prefix ``m`` of ``dims``, weighted by ``weights`` (default equal) and averaged.

    ``layers`` (one per entry of ``dims``) makes each term read ``inputs[layer]`` from
    ``{layer: embeddings}`` mappings (the layer x dimension exits of text encoders). Extra
    keyword arguments of a call go to ``inner``.

    Example:
        >>> cos = PrefixLoss(cosine_distance, dims=(1, 2))
        >>> p, t = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, -1.0]])
        >>> float(cos(p, t))  # prefix 1: cosine 1, loss 0; prefix 2: cosine 0, loss 1
        0.5
        >>> PrefixLoss(info_nce, dims=(2,))(torch.eye(2), torch.eye(2), temperature=1.0)
        tensor(0.3133)
    """

    def __init__(self, inner: Callable[..., Any], dims: Sequence[int],
                 weights: Sequence[float] | None = None, layers: Sequence[int] | None = None):
        if not dims:
            raise NestembError("no prefix sizes to train", param="dims")
        self.inner = inner
        self.dims = tuple(int(m) for m in dims)
        self.weights = check_weights(weights, self.dims)
        if layers is not None and len(layers) != len(self.dims):
            raise NestembError(f"got {len(layers)} layers for {len(self.dims)} dims",
                               param="layers")
        self.layers = None if layers is None else tuple(layers)

    def terms(self, *inputs: Any, **kw: Any) -> list:
        """The unweighted inner loss at every prefix, in the order of ``dims``."""
        return list(self._terms(*inputs, **kw))

    def _terms(self, *inputs: Any, **kw: Any) -> list | torch.Tensor:
        if self.inner is cosine_distance and self.layers is None and not kw and len(inputs) == 2:
            return prefix_cosine_distances(inputs[0], inputs[1], self.dims)
        out = []
        for i, m in enumerate(self.dims):
            xs = inputs if self.layers is None else [x[self.layers[i]] for x in inputs]
            out.append(self.inner(*(prefix_view(x, m) for x in xs), **kw))
        return out

    def __call__(self, *inputs: Any, **kw: Any):
        terms = self._terms(*inputs, **kw)
        if isinstance(terms, torch.Tensor):
            w = terms.new_tensor(self.weights)
            return (w * terms).sum() / w.sum()
        return sum(w * t for w, t in zip(self.weights, terms)) / sum(self.weights)


def prefix_cosine_distances(pred: torch.Tensor, target: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """:func:`cosine_distance` of the :func:`~nestemb.nesting.prefix_view` views at every
    prefix of ``dims``, as a ``(len(dims),)`` tensor: what :class:`PrefixLoss` computes for that
    inner loss, from cumulative sums in a dozen tensor operations instead of six per prefix
    (the loop took about 3 ms of the MLP's 20 ms elastic training step with distillation).

    Example:
        >>> p, t = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, -1.0]])
        >>> prefix_cosine_distances(p, t, (1, 2))
        tensor([0., 1.])
    """
    if pred.shape[:-1] != target.shape[:-1]:
        raise NestembError(f"pred and target must hold the same rows, got shapes "
                           f"{tuple(pred.shape)} and {tuple(target.shape)}", param="target")
    d = min(pred.shape[-1], target.shape[-1])  # wider embeddings: only the prefixes are read
    if any(not 1 <= m <= d for m in dims):
        raise NestembError(f"prefix sizes {tuple(dims)} must lie within 1..{d}, the embedding "
                           "dimension", param="dims")
    pred, target = pred[..., :d], target[..., :d]
    ends = torch.tensor([int(m) - 1 for m in dims], device=pred.device)
    dots = (pred * target).cumsum(-1).index_select(-1, ends)
    cos = dots / (prefix_norms(pred, ends) * prefix_norms(target, ends))
    return (1 - cos).reshape(-1, len(ends)).mean(0)
