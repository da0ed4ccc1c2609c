"""Matryoshka losses for text: every prefix (and every exit layer) from one forward pass.

An *exit* is a ``(layer, dim, weight)`` triple: the embedding pooled from ``layer``, viewed at
``dim`` through :func:`~nestemb.nesting.prefix_view`. 1-D Matryoshka uses the last layer at every
prefix; the layer x dimension mode (Starbucks) uses a fixed list of pairs from small to full, all
trained every step.

- :func:`~nestemb.losses.info_nce` (the one InfoNCE, with in-batch and optional hard
  negatives) through :class:`~nestemb.losses.PrefixLoss` (the one per-prefix wrapper).
- :func:`cosent_loss`: CoSENT for graded pairs.
- :func:`similarity_distill_loss`: keep a frozen teacher's cosine-similarity matrix (e.g. the
  base model at full dimension) on unlabeled text, per prefix.
- :func:`kl_distill_loss`: self-distillation of an exit's similarity distribution toward a
  (detached) teacher exit.
- :class:`MatryoshkaTextLoss`: the weighted sum over exits (a :class:`~nestemb.losses.PrefixLoss`
  with one layer per exit).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from nestemb.errors import NestembError
from nestemb.losses import PrefixLoss, info_nce
from nestemb.nesting import prefix_view


def cosent_loss(emb1, emb2, scores, scale: float = 20.0):
    """CoSENT: for every two pairs with gold ``s_i > s_j``, penalize ``cos_j > cos_i``:
    ``log(1 + sum exp(scale * (cos_j - cos_i))``. Rows must be L2-normalized.

    Example:
        >>> import torch
        >>> e1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]]); e2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> float(cosent_loss(e1, e2, torch.tensor([5.0, 0.0]))) < 1e-6
        True
    """
    import torch

    cos = (emb1 * emb2).sum(-1) * scale
    diff = cos[None, :] - cos[:, None]  # diff[i, j] = cos_j - cos_i
    mask = scores[:, None] > scores[None, :]
    diff = diff[mask]
    zero = torch.zeros(1, device=diff.device, dtype=diff.dtype)
    return torch.logsumexp(torch.cat([zero, diff]), 0)


def similarity_distill_loss(student, teacher_sim):
    """Mean squared error between the student's cosine-similarity matrix (rows L2-normalized)
    and a teacher's (off-diagonal entries).

    Example:
        >>> import torch
        >>> s = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
        >>> float(similarity_distill_loss(s, s @ s.T))
        0.0
    """
    import torch

    sim = student @ student.T
    off = ~torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    return ((sim - teacher_sim)[off] ** 2).mean()


def kl_distill_loss(student_logits, teacher_logits, temperature: float = 0.3):
    """KL(teacher || student) over each row's softmax at ``temperature``; the teacher is
    detached.

    Example:
        >>> import torch
        >>> x = torch.randn(3, 5); float(kl_distill_loss(x, x)) == 0.0
        True
    """
    import torch

    t = torch.log_softmax(teacher_logits.detach() / temperature, -1)
    s = torch.log_softmax(student_logits / temperature, -1)
    return torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean")


@dataclasses.dataclass(frozen=True)
class Exit:
    """One trained view: ``layer`` (1-based; the last layer for 1-D Matryoshka), ``dim``,
    ``weight``.

    Example:
        >>> Exit(6, 32)
        Exit(layer=6, dim=32, weight=1.0)
    """

    layer: int
    dim: int
    weight: float = 1.0


def matryoshka_exits(
    dims: Sequence[int], n_layers: int, weights: Sequence[float] | None = None
) -> list[Exit]:
    """1-D Matryoshka: every prefix at the last layer.

    Example:
        >>> [(e.layer, e.dim) for e in matryoshka_exits([32, 64], 6)]
        [(6, 32), (6, 64)]
    """
    weights = list(weights) if weights is not None else [1.0] * len(dims)
    if len(weights) != len(dims):
        raise NestembError(f"got {len(weights)} prefix weights for {len(dims)} dims")
    return [Exit(n_layers, int(d), float(w)) for d, w in zip(dims, weights)]


def starbucks_exits(
    dims: Sequence[int], layers: Sequence[int], weights: Sequence[float] | None = None
) -> list[Exit]:
    """Layer x dimension (Starbucks): a fixed list of (layer, dim) pairs from small to full,
    pairing the i-th smallest dim with a layer spread evenly over ``layers`` (the last pair is
    always the last layer at full dim).

    Example:
        >>> [(e.layer, e.dim) for e in starbucks_exits([32, 64, 128, 256, 384], [2, 4, 6])]
        [(2, 32), (2, 64), (4, 128), (6, 256), (6, 384)]
    """
    dims, layers = list(dims), list(layers)
    n = len(dims)
    weights = list(weights) if weights is not None else [1.0] * n
    if len(weights) != n:
        raise NestembError(f"got {len(weights)} weights for {n} (layer, dim) pairs")
    if n == 1:
        return [Exit(layers[-1], dims[0], weights[0])]
    out = []
    for i, (d, w) in enumerate(zip(dims, weights)):
        li = round(i * (len(layers) - 1) / (n - 1))
        out.append(Exit(layers[li], int(d), float(w)))
    return out


@dataclasses.dataclass
class MatryoshkaTextLoss:
    """Weighted sum over exits of the contrastive / CoSENT losses, plus optional distillation.

    ``embs`` arguments are ``{layer: raw embeddings (B, dim)}`` from one forward pass
    (:func:`nestemb.text.encoder.forward_exits`); each exit takes its view with ``prefix_view``.

    Example:
        >>> import torch
        >>> loss = MatryoshkaTextLoss([Exit(1, 2), Exit(1, 4)])
        >>> a = {1: torch.randn(3, 4)}; p = {1: torch.randn(3, 4)}
        >>> loss.contrastive(a, p).shape
        torch.Size([])
    """

    exits: list[Exit]
    temperature: float = 0.05
    self_distill_weight: float = 0.0
    kl_temperature: float = 0.3
    cosent_scale: float = 20.0

    def __post_init__(self) -> None:
        if not self.exits:
            raise NestembError("no exits to train")
        if self.temperature <= 0:
            raise NestembError(f"temperature must be positive, got {self.temperature}")
        self.final = max(self.exits, key=lambda e: (e.layer, e.dim))

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({e.layer for e in self.exits}))

    def _prefix(self, inner) -> PrefixLoss:
        """``inner`` at every exit: its layer's embeddings, viewed at its dim, weighted."""
        return PrefixLoss(inner, [e.dim for e in self.exits], [e.weight for e in self.exits],
                          layers=[e.layer for e in self.exits])

    def contrastive(self, anchor: Mapping, positive: Mapping, negative: Mapping | None = None):
        """Per-exit InfoNCE (+ self-distillation toward the final exit when enabled)."""
        import torch

        # positives and hard negatives are candidates alike: join them once per layer, then
        # take every prefix view of the joined matrix (fewer kernels per prefix)
        cands = {
            la: positive[la] if negative is None else torch.cat([positive[la], negative[la]], 0)
            for la in self.layers
        }
        total = self._prefix(info_nce)(anchor, cands, temperature=self.temperature)
        if self.self_distill_weight > 0:
            logits = dict(zip(self.exits, self._prefix(lambda a, c: a @ c.T).terms(anchor, cands)))
            teacher = logits[self.final]
            others = [kl_distill_loss(v, teacher, self.kl_temperature)
                      for e, v in logits.items() if e != self.final]
            if others:
                total = total + self.self_distill_weight * sum(others) / len(others)
        return total

    def cosent(self, emb1: Mapping, emb2: Mapping, scores):
        """Per-exit CoSENT on graded pairs."""
        return self._prefix(cosent_loss)(emb1, emb2, scores=scores, scale=self.cosent_scale)

    def distill(self, student: Mapping, teacher_full):
        """Per-exit similarity-matrix distillation toward a frozen teacher's full embeddings."""
        t = prefix_view(teacher_full, teacher_full.shape[-1])
        tsim = (t @ t.T).detach()
        return self._prefix(similarity_distill_loss)(student, teacher_sim=tsim)
