import numpy as np
import pytest
import torch

from nestemb.data.idx import load_idx, write_synthetic_idx
from nestemb.errors import NestembError
from nestemb.heads import NestedHead
from nestemb.losses import check_weights, matryoshka_cross_entropy
from nestemb.models.image import (
    ImageModel,
    ImageModelConfig,
    load_image_model,
    make_model_config,
    save_image_model,
)
from nestemb.nesting import Manifest, prefix_view, weights_version
from nestemb.train.image import ImageTrainConfig, train_image


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
    with pytest.raises(NestembError, match=r"a fixed-size head \(ff\) trains one size"):
        make_model_config("ff", dims=(2, 4))
    with pytest.raises(NestembError, match="head must be 'mrl', 'mrl-e' or 'ff', got 'big'"):
        make_model_config("big")
    with pytest.raises(NestembError, match="^dim must be positive"):
        make_model_config("mrl", dim=0)


def test_training_is_deterministic_and_model_roundtrips(tmp_path):
    x, y = load_idx(write_synthetic_idx(tmp_path / "d", n_train=120, n_test=10))
    cfg = make_model_config("mrl", dim=8, width=4, images=x)
    tcfg = ImageTrainConfig(steps=2, holdout=20, batch_size=32, seed=3, device="cpu")
    m1, info = train_image(cfg, x, y, tcfg, progress=False)
    m2, _ = train_image(cfg, x, y, tcfg, progress=False)
    e1, e2 = m1.encode(x), m2.encode(x)
    np.testing.assert_array_equal(e1, e2)
    assert info["n_train"] == 100 and info["weights"] == [2.0, 1.0, 1.0] and info["steps"] == 2
    d = save_image_model(m1, tmp_path / "model", model_id="my-cnn")
    loaded = load_image_model(d)
    assert loaded.manifest.kind == "image-model" and loaded.manifest.nesting == (2, 4, 8)
    assert loaded.manifest.model_id == "my-cnn"
    assert loaded.manifest.model_version == weights_version(m1.state_dict())
    np.testing.assert_allclose(loaded.encode(x, batch_size=7), e1, rtol=1e-5, atol=1e-5)
    # a damaged weights file is caught by the checksum
    (d / "weights").write_bytes(b"garbage")
    with pytest.raises(NestembError, match="checksum mismatch"):
        load_image_model(d)


def test_version_comes_from_the_weights(tmp_path):
    cfg = ImageModelConfig(dim=8, nesting=(2, 8), width=4)
    torch.manual_seed(0)
    a, b = ImageModel(cfg), ImageModel(cfg)  # same architecture, different weights
    da = save_image_model(a, tmp_path / "a")
    db = save_image_model(b, tmp_path / "b")
    va, vb = Manifest.load(da).model_version, Manifest.load(db).model_version
    assert va != vb and len(va) == 16
    assert save_image_model(a, tmp_path / "a2") and Manifest.load(tmp_path / "a2").model_version == va
    # a manifest whose version is hand-edited no longer matches its weights
    man = Manifest.load(da).to_dict()
    man["model_version"] = vb
    (da / "manifest.json").write_text(__import__("json").dumps(man))
    with pytest.raises(NestembError, match="the manifest does not belong to these weights"):
        load_image_model(da)
    # another model's weights under this manifest (checksum rewritten to match): caught too
    man["model_version"] = va
    man["sha256"] = Manifest.load(db).sha256
    (da / "manifest.json").write_text(__import__("json").dumps(man))
    (da / "weights").write_bytes((db / "weights").read_bytes())
    with pytest.raises(NestembError, match=f"hash to version '{vb}' but the manifest says '{va}'"):
        load_image_model(da)


def test_loading_leaves_torch_threads_alone(tmp_path):
    d = save_image_model(ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=4)), tmp_path / "m")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load_image_model(d)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_encode_checks_input():
    m = ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=4))
    with pytest.raises(NestembError, match="must have shape"):
        m.encode(np.zeros((2, 10, 10), np.uint8))
    with pytest.raises(NestembError, match="must be uint8"):
        m.encode(np.zeros((2, 28, 28), np.float32))


def test_flat_image_rows_report_the_callers_shape():
    # issue 9: an (N, 784) array was reported as "got (1, 10, 784)"
    m = ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=4))
    with pytest.raises(NestembError, match=r"got \(10, 784\) \(flat rows of 784 pixels: reshape to \(N, 28, 28\)\)$"):
        m.encode(np.zeros((10, 784), np.uint8))
    assert m.encode(np.zeros((28, 28), np.uint8)).shape == (1, 4)  # one image is fine


@pytest.mark.parametrize("field, value, match", [
    ("width", 8, r"extra.config does not fit the weights \(check 'width'\): encoder.features.0.weight has shape"),
    ("num_classes", 5, r"\(check 'num_classes'\): head.weight has shape"),
    ("cosine", True, r"\(check 'cosine'\): the config expects 'head.log_scale'"),
    ("width", "x", r"extra.config.width must be an integer, got 'x'"),
    ("in_hw", "ab", r"extra.config.in_hw must be two positive integers, got 'ab'"),
    ("mean", None, r"extra.config.mean must be a finite number, got None"),
    ("colour", 1, r"extra.config has unknown field 'colour'"),
    ("head", "xx", r"bad extra.config: head must be 'mrl', 'mrl-e' or 'ff', got 'xx'"),
])
def test_wrong_manifest_config_is_one_line_naming_the_field(tmp_path, field, value, match):
    # issue 9: a wrong image config gave a 27-line state-dict message (or a ValueError)
    import json

    d = save_image_model(ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=4)), tmp_path / "m")
    man = json.loads((d / "manifest.json").read_text())
    man["extra"]["config"][field] = value
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(NestembError, match=match) as e:
        load_image_model(d)
    assert "\n" not in str(e.value) and "manifest.json" in str(e.value)
