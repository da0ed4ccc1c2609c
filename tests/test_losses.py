import numpy as np
import pytest
import torch

from nestemb.errors import NestembError
from nestemb.losses import PrefixLoss, cosine_distance, prefix_cosine_distances
from nestemb.nesting import prefix_norms


def _numpy_prefix_cosine(pred, target, dims):
    """Independent reference: 1 - cos of the first m coordinates, row by row, in float64."""
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    out = []
    for m in dims:
        a, b = p[..., :m].reshape(-1, m), t[..., :m].reshape(-1, m)
        na = np.maximum(np.linalg.norm(a, axis=1), 1e-12)
        nb = np.maximum(np.linalg.norm(b, axis=1), 1e-12)
        out.append(np.mean(1 - (a * b).sum(1) / (na * nb)))
    return np.array(out)


def test_prefix_cosine_distances_match_a_per_prefix_reference_with_zero_rows_and_3d_inputs():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 5, 16, generator=g), torch.randn(4, 5, 16, generator=g)
    pred[0, 0] = 0  # a zero row keeps cosine 0, as prefix_view leaves it zero
    target[1, 2, :4] = 0  # zero in its short prefixes only
    dims = (1, 2, 4, 16)
    got = prefix_cosine_distances(pred, target, dims)
    np.testing.assert_allclose(got.numpy(), _numpy_prefix_cosine(pred, target, dims), atol=1e-6)


def test_prefix_loss_of_cosine_distance_equals_the_per_prefix_loop_in_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    base, target = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
    base[3] = 0
    dims, weights = (2, 8, 32, 64), (1.0, 0.5, 2.0, 1.0)
    fast_in, loop_in = base.clone().requires_grad_(), base.clone().requires_grad_()
    fast = PrefixLoss(cosine_distance, dims, weights)(fast_in, target)
    # the generic path: the same inner loss, but not the function object the fast path knows
    loop = PrefixLoss(lambda p, t: cosine_distance(p, t), dims, weights)(loop_in, target)
    expected = np.dot(weights, _numpy_prefix_cosine(base, target, dims)) / sum(weights)
    assert fast.item() == pytest.approx(expected, abs=1e-6)
    assert loop.item() == pytest.approx(expected, abs=1e-6)
    fast.backward()
    loop.backward()
    assert torch.isfinite(fast_in.grad).all()
    torch.testing.assert_close(fast_in.grad, loop_in.grad, atol=1e-7, rtol=1e-4)
    assert len(PrefixLoss(cosine_distance, dims).terms(base, target)) == len(dims)


def test_prefix_norms_and_bad_inputs():
    x = torch.tensor([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(prefix_norms(x, torch.tensor([0, 1, 2])),
                               torch.tensor([[3.0, 5.0, 13.0], [1e-12, 1e-12, 1e-12]]))
    # embeddings of different widths (a new model distilled to an old one): only prefixes count
    wide, narrow = torch.randn(3, 6), torch.randn(3, 4)
    np.testing.assert_allclose(prefix_cosine_distances(wide, narrow, (2, 4)).numpy(),
                               _numpy_prefix_cosine(wide[:, :4], narrow, (2, 4)), atol=1e-6)
    with pytest.raises(NestembError, match="same rows") as e:
        prefix_cosine_distances(torch.zeros(2, 4), torch.zeros(3, 4), (2,))
    assert e.value.param == "target"
    with pytest.raises(NestembError, match=r"within 1\.\.4") as e:
        PrefixLoss(cosine_distance, (2, 8))(torch.zeros(2, 4), torch.zeros(2, 4))
    assert e.value.param == "dims"
