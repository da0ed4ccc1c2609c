"""Text Matryoshka losses against direct reference computations, and exits from one forward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nestemb.errors import NestembError
from nestemb.losses import info_nce
from nestemb.text.losses import (
    Exit,
    MatryoshkaTextLoss,
    cosent_loss,
    kl_distill_loss,
    matryoshka_exits,
    similarity_distill_loss,
    starbucks_exits,
)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference_infonce(a, p, n, t):
    """Row by row, in float64 numpy."""
    cands = p if n is None else np.concatenate([p, n])
    total = 0.0
    for i in range(len(a)):
        logits = [a[i] @ c / t for c in cands]
        mx = max(logits)
        total += -(logits[i] - mx - math.log(sum(math.exp(x - mx) for x in logits)))
    return total / len(a)


@pytest.mark.parametrize("with_neg", [False, True])
def test_contrastive_matches_reference(with_neg):
    rng = np.random.default_rng(0)
    a, p, n = (_unit(rng.normal(size=(6, 8))) for _ in range(3))
    got = info_nce(torch.tensor(a), torch.tensor(p), torch.tensor(n) if with_neg else None, 0.1)
    assert float(got) == pytest.approx(_reference_infonce(a, p, n if with_neg else None, 0.1), rel=1e-6)


def test_matryoshka_contrastive_is_weighted_sum_of_prefix_losses():
    rng = np.random.default_rng(1)
    a, p, n = (rng.normal(size=(5, 12)) for _ in range(3))
    exits = [Exit(3, 4, 2.0), Exit(3, 12, 1.0)]
    got = MatryoshkaTextLoss(exits, temperature=0.05).contrastive(
        {3: torch.tensor(a)}, {3: torch.tensor(p)}, {3: torch.tensor(n)})
    ref = sum(e.weight * _reference_infonce(_unit(a[:, :e.dim]), _unit(p[:, :e.dim]),
                                            _unit(n[:, :e.dim]), 0.05) for e in exits) / 3.0
    assert float(got) == pytest.approx(ref, rel=1e-6)


def test_cosent_matches_brute_force():
    rng = np.random.default_rng(2)
    e1, e2 = _unit(rng.normal(size=(5, 4))), _unit(rng.normal(size=(5, 4)))
    s = np.array([1.0, 3.0, 2.0, 2.0, 0.5])
    cos = (e1 * e2).sum(1)
    terms = [20 * (cos[j] - cos[i]) for i in range(5) for j in range(5) if s[i] > s[j]]
    ref = math.log(1 + sum(math.exp(x) for x in terms))
    got = cosent_loss(torch.tensor(e1), torch.tensor(e2), torch.tensor(s))
    assert float(got) == pytest.approx(ref, rel=1e-6)


def test_similarity_and_kl_distill():
    rng = np.random.default_rng(3)
    s = torch.tensor(_unit(rng.normal(size=(4, 6))))
    t = torch.tensor(_unit(rng.normal(size=(4, 6))))
    tsim = t @ t.T
    off = ~np.eye(4, dtype=bool)
    ref = (((s @ s.T - tsim).numpy()[off]) ** 2).mean()
    assert float(similarity_distill_loss(s, tsim)) == pytest.approx(ref)
    x, y = torch.randn(3, 5), torch.randn(3, 5, requires_grad=True)
    loss = kl_distill_loss(y, x, 0.5)
    p, q = torch.softmax(x / 0.5, -1), torch.softmax(y.detach() / 0.5, -1)
    assert float(loss.detach()) == pytest.approx(float((p * (p.log() - q.log())).sum(-1).mean()), rel=1e-5)
    loss.backward()
    assert y.grad is not None


def test_self_distillation_teacher_detached():
    a = {1: torch.randn(4, 8, requires_grad=True), 2: torch.randn(4, 8, requires_grad=True)}
    p = {k: torch.randn(4, 8) for k in (1, 2)}
    loss_fn = MatryoshkaTextLoss([Exit(1, 4), Exit(2, 8)], self_distill_weight=1.0)
    plain = MatryoshkaTextLoss([Exit(1, 4), Exit(2, 8)])
    assert float(loss_fn.contrastive(a, p).detach()) > float(plain.contrastive(a, p).detach())
    # gradient of the KL term reaches only the student exit (layer 1)
    kl_only = loss_fn.contrastive(a, p) - plain.contrastive(a, p)
    ga = torch.autograd.grad(kl_only, [a[1], a[2]], allow_unused=True)
    assert ga[0] is not None and float(ga[0].abs().sum()) > 0
    assert ga[1] is None or float(ga[1].abs().sum()) == 0


def test_exit_lists():
    assert [(e.layer, e.dim) for e in matryoshka_exits([8, 16], 2)] == [(2, 8), (2, 16)]
    assert [(e.layer, e.dim) for e in starbucks_exits([8, 16, 32], [1, 2])] == [(1, 8), (1, 16), (2, 32)]
    with pytest.raises(NestembError, match="got 1 prefix weights for 2 dims"):
        matryoshka_exits([8, 16], 2, [1.0])
    with pytest.raises(NestembError, match="temperature must be positive"):
        MatryoshkaTextLoss([Exit(1, 8)], temperature=0)
