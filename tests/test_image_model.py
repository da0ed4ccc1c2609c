import numpy as np
import pytest
import torch

from nestemb.data.idx import load_idx, write_synthetic_idx
from nestemb.errors import NestembError
from nestemb.heads import NestedHead
from nestemb.losses import check_weights, matryoshka_cross_entropy
from nestemb.models.image import ImageModel, ImageModelConfig, load_image_model, save_image_model
from nestemb.nesting import prefix_view
from nestemb.train.image import TrainConfig, make_model_config, train_image_model


def test_mrl_head_equals_independent_linear_heads():
    torch.manual_seed(0)
    head = NestedHead((2, 4, 8), num_classes=3, kind="mrl")
    z = torch.randn(5, 8)
    out = head(z)
    for k, m in enumerate((2, 4, 8)):
        w = head.weight[3 * k : 3 * (k + 1), :m]
        ref = z[:, :m] @ w.T + head.bias[k]
        torch.testing.assert_close(out[:, k], ref)


def test_mrl_e_head_is_weight_tied():
    head = NestedHead((2, 8), num_classes=3, kind="mrl-e")
    z = torch.randn(4, 8)
    out = head(z)
    torch.testing.assert_close(out[:, 0], z[:, :2] @ head.weight[:, :2].T + head.bias[0])
    torch.testing.assert_close(out[:, 1], z @ head.weight.T + head.bias[1])


def test_cosine_head_uses_prefix_view():
    head = NestedHead((2, 8), num_classes=3, kind="mrl", cosine=True)
    z = torch.randn(4, 8)
    out = head(z)
    for k, m in enumerate((2, 8)):
        w = prefix_view(head.weight[3 * k : 3 * (k + 1)], m)
        ref = head.log_scale[k].exp() * prefix_view(z, m) @ w.T
        torch.testing.assert_close(out[:, k], ref)


def test_loss_weights():
    logits = torch.randn(6, 3, 4)
    y = torch.randint(0, 4, (6,))
    loss, per = matryoshka_cross_entropy(logits, y, [2.0, 1.0, 0.0])
    ref = [torch.nn.functional.cross_entropy(logits[:, k], y) for k in range(3)]
    torch.testing.assert_close(per, torch.stack(ref))
    torch.testing.assert_close(loss, 2 * ref[0] + ref[1])
    with pytest.raises(NestembError, match="got 2 prefix weights for a nesting of 3"):
        check_weights([1, 2], (2, 4, 8))
    with pytest.raises(NestembError, match="not all zero"):
        check_weights([0, 0], (2, 4))


def test_config_errors():
    with pytest.raises(NestembError, match="larger than the embedding dimension 256"):
        make_model_config("mrl", dims=(2, 4, 512))
    with pytest.raises(NestembError, match="one fixed size"):
        make_model_config("ff", dims=(2, 4))
    with pytest.raises(NestembError, match="--head must be"):
        make_model_config("big")
    with pytest.raises(NestembError, match="--epochs must be at least 1"):
        TrainConfig(epochs=0)


def test_training_is_deterministic_and_model_roundtrips(tmp_path):
    x, y = load_idx(write_synthetic_idx(tmp_path / "d", n_train=120, n_test=10))
    cfg = make_model_config("mrl", dim=8, width=4, images=x)
    tcfg = TrainConfig(epochs=1, holdout=20, batch_size=32, seed=3)
    m1, info = train_image_model(cfg, tcfg, x, y, progress=False)
    m2, _ = train_image_model(cfg, tcfg, x, y, progress=False)
    e1, e2 = m1.encode(x), m2.encode(x)
    np.testing.assert_array_equal(e1, e2)
    assert info["n_train"] == 100 and info["weights"] == [2.0, 1.0, 1.0]
    d = save_image_model(m1, tmp_path / "model")
    loaded = load_image_model(d)
    assert loaded.manifest.kind == "image-model" and loaded.manifest.nesting == (2, 4, 8)
    np.testing.assert_allclose(loaded.encode(x, batch_size=7), e1, rtol=1e-5, atol=1e-5)
    # a damaged weights file is caught by the checksum
    (d / "weights").write_bytes(b"garbage")
    with pytest.raises(NestembError, match="checksum mismatch"):
        load_image_model(d)


def test_encode_checks_input():
    m = ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=4))
    with pytest.raises(NestembError, match="must have shape"):
        m.encode(np.zeros((2, 10, 10), np.uint8))
    with pytest.raises(NestembError, match="must be uint8"):
        m.encode(np.zeros((2, 28, 28), np.float32))
