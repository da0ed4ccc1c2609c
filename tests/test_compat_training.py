"""Compatible training (nestemb.train.compatible): losses, the simplex, the orthogonal layer,
refusals, and models that still save and load."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nestemb.train.compatible import (
    CompatConfig,
    CompatTrainer,
    OrthogonalLayer,
    simplex_vertices,
)
from nestemb.errors import NestembError
from nestemb.models.image import (
    ImageModel,
    ImageModelConfig,
    build_manifest,
    load_image_model,
    save_image_model,
)
from nestemb.nesting import prefix_view
from nestemb.train.image import ImageTrainConfig, train_image


def _model(dim=8, nesting=(4, 8), classes=4, **kw) -> ImageModel:
    torch.manual_seed(0)
    m = ImageModel(ImageModelConfig(dim=dim, nesting=nesting, width=2, num_classes=classes, **kw))
    m.manifest = build_manifest(m, f"m{dim}-{classes}")
    return m.eval()


def _data(n=40, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
    return x, np.arange(n) % classes


TINY = dict(steps=3, batch_size=16, holdout=0, device="cpu")


def test_distill_zero_when_new_equals_old():
    old = _model(classes=4)
    new = copy.deepcopy(old).train()
    x, y = _data(classes=4)
    t = CompatTrainer(CompatConfig(old_model=old, distill=1.0), new, torch.tensor(x), torch.tensor(y))
    xb = new.preprocess(torch.tensor(x[:16]))
    new.eval()
    z, _ = t(new, xb)
    assert abs(t.loss(new, xb, z, torch.tensor(y[:16])).item()) < 1e-5


def test_influence_finite_and_drop_of_unseen_is_zero():
    old = _model(classes=4)
    new = _model(dim=16, nesting=(4, 8, 16), classes=10)
    x, y = _data()
    xt, yt = torch.tensor(x), torch.tensor(y)
    t = CompatTrainer(CompatConfig.bct(old), new, xt, yt)
    xb = new.preprocess(xt[:20])
    z, logits = t(new, xb)
    loss = t.loss(new, xb, z, yt[:20])
    assert torch.isfinite(loss) and loss.item() > 0
    drop = CompatTrainer(CompatConfig.bct(old, unseen="drop"), new, xt, yt)
    only_new = yt >= 4
    xb2 = new.preprocess(xt[only_new][:8])
    z2, _ = drop(new, xb2)
    assert drop.loss(new, xb2, z2, yt[only_new][:8]).item() == 0.0


def test_synthesised_weights_are_old_class_means():
    old = _model(classes=4)
    new = _model(dim=16, nesting=(4, 8, 16), classes=10)
    x, y = _data()
    t = CompatTrainer(CompatConfig.bct(old), new, torch.tensor(x), torch.tensor(y))
    w = t.influence_head.weight.detach().view(2, 10, 8)  # old nesting (4, 8), 10 classes
    with torch.no_grad():
        z = old.encoder(old.preprocess(torch.tensor(x[y == 7])))
    mean = torch.nn.functional.normalize(prefix_view(z, 4).mean(0), dim=0)
    # a linear old head: the direction of the class mean, at the scale of the learned weights
    got = torch.nn.functional.normalize(w[0, 7, :4], dim=0)
    assert torch.allclose(got, mean, atol=1e-5) and w[0, 7, 4:].abs().max() == 0
    # known classes keep the old classifier's weights
    assert torch.allclose(w[1, :4], old.head.block_weight().detach().view(2, 4, 8)[1])


def test_simplex_vertices_and_fixed_head_after_training():
    v = simplex_vertices(10, 16)
    cos = v @ v.T
    assert np.allclose(np.diag(cos), 1) and np.allclose(cos[~np.eye(10, dtype=bool)], -1 / 9, atol=1e-6)
    assert np.abs(v[:, 9:]).max() == 0
    short = simplex_vertices(10, 8)  # fewer dims than a simplex needs: still distinct directions
    assert (short @ short.T)[~np.eye(10, dtype=bool)].max() < 0.99
    x, y = _data(classes=4)  # the first model of a chain sees 4 of the 10 classes
    cfg = ImageModelConfig(dim=16, nesting=(8, 16), width=2, num_classes=10, cosine=True)
    m, info = train_image(cfg, x, y, ImageTrainConfig(**TINY), progress=False,
                          compat=CompatConfig.simplex_classifier())
    w = m.head.weight.detach().view(2, 10, 16)
    assert torch.allclose(w[1], torch.from_numpy(simplex_vertices(10, 16)))
    assert info["compat"] == {"method": "simplex", "orthogonal": False, "simplex": {"seed": 0}}


def test_orthogonal_layer_stays_orthogonal():
    layer = OrthogonalLayer(6)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.05)
    target = torch.randn(32, 6)
    for _ in range(20):
        h = torch.randn(32, 6)
        loss = (layer(h) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    q = layer.matrix().detach()
    assert torch.allclose(q.T @ q, torch.eye(6), atol=1e-5)
    assert not torch.allclose(q, torch.eye(6), atol=1e-3)  # it did move


def test_prefix_training_saves_loads_and_records_old_model(tmp_path):
    old = _model(classes=4, cosine=True)
    x, y = _data(classes=7)
    cfg = ImageModelConfig(dim=16, nesting=(4, 8, 16), width=2, num_classes=7, cosine=True)
    m, info = train_image(cfg, x, y, ImageTrainConfig(**TINY), progress=False,
                          compat=CompatConfig.prefix(old), model_id="m1")
    assert info["compat"]["method"] == "prefix" and info["compat"]["orthogonal"]
    assert info["compat"]["old_model"]["model_version"] == old.manifest.model_version
    assert info["compat"]["old_classes"] == 4
    save_image_model(m, tmp_path / "m1", "m1", {"compat": info["compat"]})
    loaded = load_image_model(tmp_path / "m1")
    assert loaded.manifest.extra["compat"]["old_model"]["model_id"] == old.manifest.model_id
    np.testing.assert_allclose(loaded.encode(x[:5]), m.encode(x[:5]), atol=1e-5)


def test_defaults_unchanged():
    x, y = _data()
    cfg = ImageModelConfig(dim=8, nesting=(4, 8), width=2)
    a, info = train_image(cfg, x, y, ImageTrainConfig(**TINY), progress=False)
    b, _ = train_image(cfg, x, y, ImageTrainConfig(**TINY), progress=False, compat=None)
    assert "compat" not in info
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])


@pytest.mark.parametrize(
    "new_kw, match",
    [
        (dict(dim=4, nesting=(4,)), "narrower than the old 8-d"),
        (dict(dim=16, nesting=(8, 16)), r"nesting \(4, 8\) has 4, which the new nesting"),
        (dict(dim=16, nesting=(4, 8, 16), num_classes=3), "knows 4 classes, the new model only 3"),
        (dict(dim=16, nesting=(4, 8, 16), in_hw=(14, 14)), r"takes \(28, 28\) images"),
    ],
)
def test_incompatible_old_model_refused(new_kw, match):
    old = _model(classes=4)
    cfg = ImageModelConfig(width=2, **new_kw)
    x, y = _data(classes=3)
    if cfg.in_hw != (28, 28):
        x = x[:, :14, :14].copy()
    with pytest.raises(NestembError, match=match):
        train_image(cfg, x, y, ImageTrainConfig(**TINY), progress=False,
                    compat=CompatConfig.prefix(old))


def test_bad_configs_refused():
    old = _model()
    with pytest.raises(NestembError, match="influence, distill and contrast need an old_model"):
        CompatConfig(distill=1.0)
    with pytest.raises(NestembError, match="distill must be a finite number >= 0"):
        CompatConfig(old_model=old, distill=-1.0)
    with pytest.raises(NestembError, match="must ask for something"):
        CompatConfig()
    bare = copy.deepcopy(old)
    bare.manifest = None
    with pytest.raises(NestembError, match="old_model has no manifest"):
        CompatConfig.bct(bare)
    with pytest.raises(NestembError, match="old_model must be an ImageModel"):
        CompatConfig(old_model=object(), influence=1.0)


def test_cross_contrast_rewards_new_vectors_that_find_their_class_among_old_ones():
    """The contrastive term is the cross-model search itself: new vectors that sit on the old
    vectors of their own class score lower than the same vectors with the classes shuffled."""
    old = _model(classes=4)
    new = _model(dim=16, nesting=(4, 8, 16), classes=4)
    x, y = _data(classes=4)
    t = CompatTrainer(CompatConfig(old_model=old, contrast=1.0), new, torch.tensor(x),
                      torch.tensor(y))
    rng = np.random.default_rng(0)
    centres = torch.tensor(rng.normal(size=(4, 8)), dtype=torch.float32)
    yb = torch.tensor(y[:16])
    z_old = centres[yb] + 0.05 * torch.randn(16, 8)
    aligned = torch.cat([z_old + 0.05 * torch.randn(16, 8), torch.randn(16, 8)], dim=1)
    shuffled = torch.cat([z_old[torch.randperm(16)], torch.randn(16, 8)], dim=1)
    good, bad = t._cross_contrast(aligned, z_old, yb), t._cross_contrast(shuffled, z_old, yb)
    assert good.item() < 0.5 * bad.item()
    # only the old prefixes take part: the new model's extra dimensions are free
    freed = aligned.clone()
    freed[:, 8:] = torch.randn(16, 8)
    assert torch.isclose(t._cross_contrast(freed, z_old, yb), good)


def test_contrast_and_temperature_are_checked():
    old = _model(classes=4)
    with pytest.raises(NestembError, match="contrast must be a finite number >= 0"):
        CompatConfig(old_model=old, contrast=-1.0)
    with pytest.raises(NestembError, match="temperature must be a finite number > 0"):
        CompatConfig(old_model=old, contrast=1.0, temperature=0.0)
    with pytest.raises(NestembError, match="need an old_model"):
        CompatConfig(contrast=1.0)
    assert CompatConfig(old_model=old, contrast=1.0).describe()["contrast"] == 1.0
