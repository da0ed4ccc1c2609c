"""Matryoshka losses for classification: a weighted sum of per-prefix cross-entropies.

(The contrastive losses for text live in :mod:`nestemb.text`.)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from nestemb.errors import NestembError


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
