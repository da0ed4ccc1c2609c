"""The MLP image encoder (issue 11: cross-architecture stitching): built from the config, trained
by the unchanged trainer, saved and loaded like the CNN."""

import json

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.models.image import MLPEncoder, load_image_model, make_model_config, save_image_model
from nestemb.train.image import ImageTrainConfig, train_image


def test_mlp_model_trains_saves_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(120, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 3, size=120)
    cfg = make_model_config("mrl", dim=8, width=2, num_classes=3, arch="mlp")
    model, info = train_image(cfg, x, y, ImageTrainConfig(steps=3, batch_size=40, device="cpu"),
                              progress=False)
    assert isinstance(model.encoder, MLPEncoder) and info["steps"] == 3
    save_image_model(model, tmp_path / "m", model_id="mlp")
    back = load_image_model(tmp_path / "m")
    assert back.config.arch == "mlp"
    np.testing.assert_allclose(back.encode(x[:5]), model.encode(x[:5]), atol=1e-6)


def test_arch_is_validated():
    with pytest.raises(NestembError, match="arch must be one of cnn, mlp, vit, got 'resnet'"):
        make_model_config("mrl", dim=8, arch="resnet")


def test_manifest_arch_checked(tmp_path):
    from nestemb.models.image import ImageModel, ImageModelConfig

    save_image_model(ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=2)), tmp_path / "m")
    man = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert man["extra"]["config"]["arch"] == "cnn"
    man["extra"]["config"]["arch"] = 3
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(NestembError, match="extra.config.arch must be a string, got 3"):
        load_image_model(tmp_path / "m")
