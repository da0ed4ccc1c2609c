"""Nested widths in the image encoders (MatFormer-style): the extracted submodel equals the
sliced parent, save/load, training, identity against the parent's gallery, every bad input,
and ordinary models exactly as before."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from nestemb.data.idx import load_idx, write_synthetic_idx
from nestemb.errors import NestembError
from nestemb.models.elastic import (batch_norms, extract, layer_units, mix_n_match, multiply_adds,
                                    recalibrate)
from nestemb.models.image import (ARCHS, LAYERS, ImageModel, ImageModelConfig, build_manifest,
                                  config_from_manifest, load_image_model, make_model_config,
                                  mix_lists, sampled_width_weights, save_image_model, width_lists)
from nestemb.nesting import Manifest, check_compatible, lineage, parent_of, prefix_view, weights_version
from nestemb.train.image import (ImageTrainConfig, batch_loss, run_signature, sample_widths,
                                 train_image, width_losses)

WIDTHS = (0.125, 0.25, 0.5, 1.0)
TINY_WIDTH = {"cnn": 4, "mlp": 1, "vit": 2}  # vit: 8-d tokens (4 heads of 2), feed-forward 32
MIX = {"cnn": (0.25, 0.25, 0.5, 1.0, 1.0), "mlp": (0.25, 1.0), "vit": (0.125, 0.5, 0.5, 1.0)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_idx(tmp_path_factory.mktemp("idx"), n_train=160, n_test=20)


def _elastic(arch: str, seed: int = 0, widths=WIDTHS, model_id: str = "parent") -> ImageModel:
    """A random elastic model with non-trivial batch-norm statistics and affine parameters at
    every width (layer norms and biases for the ViT), so a wrong switch or slice shows, in eval
    mode, with a manifest."""
    torch.manual_seed(seed)
    cfg = ImageModelConfig(dim=8, nesting=(2, 4, 8), width=TINY_WIDTH[arch], arch=arch, widths=widths)
    m = ImageModel(cfg)
    with torch.no_grad():
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.normal_()
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
        for name, p in m.named_parameters():
            if ".bns." in name or ".norm" in name or (arch == "vit" and name.endswith("bias")):
                p.normal_()
    m.eval()
    m.manifest = build_manifest(m, model_id)
    return m


def _x(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the submodel equals the slice
@pytest.mark.parametrize("arch", ["cnn", "mlp", "vit"])
def test_extracted_submodel_equals_the_sliced_parent(arch):
    parent = _elastic(arch)
    x = _x()
    images = np.random.default_rng(0).integers(0, 255, (5, 28, 28), dtype=np.uint8)
    mix = MIX[arch]
    with torch.no_grad():
        for width in (*WIDTHS, mix):
            sub = extract(parent, width)
            assert sub.config.widths is None and not sub.training
            assert sub.config.channels == layer_units(parent.config, parent.layer_widths(width))
            z, logits = sub(x)
            pz, plogits = parent(x, width=width)
            assert torch.equal(z, pz) and torch.equal(logits, plogits), width
            np.testing.assert_array_equal(sub.encode(images), parent.encode(images, width=width))
            # the submodel holds only its own slice, and its own copy of it
            n_sub = sum(p.numel() for p in sub.encoder.parameters())
            if arch == "vit":  # only the feed-forward layers shrink: d + 1 (fc1) and d (fc2) a unit
                d, cut = 4 * TINY_WIDTH[arch], sum(parent.config.layer_channels) - sum(sub.config.channels)
                assert n_sub == sum(p.numel() for p in parent.encoder.parameters()) - (2 * d + 1) * cut
            else:
                n_full = sum(p.numel() for p in parent.encoder.parameters() if p.ndim > 1)
                assert n_sub <= n_full + parent.config.dim + 2 * sum(parent.config.layer_channels)
            assert all(not p.is_set_to(q) and p.data_ptr() != q.data_ptr()
                       for p in sub.parameters() for q in parent.parameters())
    # widths really differ (a forward that ignored the width would pass the above)
    with torch.no_grad():
        assert not torch.equal(parent(x, width=0.25)[0], parent(x)[0])
    assert extract(parent, 1.0).config.channels == parent.config.layer_channels


@pytest.mark.parametrize("arch", ["cnn", "mlp", "vit"])
def test_widths_of_one_batch_share_the_stem_with_each_widths_own_loss_and_gradients(arch, monkeypatch):
    """A step over several widths runs the width-independent front (the first layer; the ViT's
    first attention) once and slices it: losses, gradients and batch-norm statistics stay those
    of each width run on its own."""
    x, y, w = _x(8), torch.arange(8) % 10, torch.tensor([1.0, 0.5, 2.0])
    widths = [1.0, 0.25, MIX[arch]]
    shared, alone = _elastic(arch).train(), _elastic(arch).train()
    # the CNN's first conv is cheaper to recompute than to share (STEM_MIN_FAN_IN): force it
    assert shared.encoder.shares_stem == (arch != "cnn")
    monkeypatch.setattr(type(shared.encoder), "shares_stem", True)
    first = shared.encoder.blocks[0].qkv if arch == "vit" else shared.encoder.features[1 if arch == "mlp" else 0]
    calls = []
    first.register_forward_hook(lambda *a: calls.append(1))
    loss = width_losses(shared, x, y, w, widths)
    assert len(calls) == 1  # the front ran once for the three widths
    loss.sum().backward()
    ref = torch.stack([width_losses(alone, x, y, w, [g])[0] for g in widths])  # one width: no stem
    ref.sum().backward()
    torch.testing.assert_close(loss, ref)
    for (name, p), q in zip(shared.named_parameters(), alone.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, b), c in zip(shared.named_buffers(), alone.buffers()):
        torch.testing.assert_close(b, c, msg=name)
    with torch.no_grad():  # eval mode too, and the stem is not a no-op: another batch's differs
        shared.eval()
        stem = shared.encoder.stem(x)
        torch.testing.assert_close(shared(x, width=0.25, stem=stem)[0], shared(x, width=0.25)[0])
        assert not torch.allclose(shared(x, stem=shared.encoder.stem(_x(8, 1)))[0], shared(x)[0])


def test_mlp_width_matches_a_hand_written_reference():
    """An independent reference for one width: the slices and the width's batch norms by hand."""
    parent = _elastic("mlp")
    g, k = 0.25, 1
    f = parent.encoder.features
    lin1, bn1, lin2, bn2 = f[1], f[2].bns[k], f[4], f[5].bns[k]
    u = 8  # ceil(0.25 * 32)
    x = _x(4)
    with torch.no_grad():
        h = torch.nn.functional.batch_norm(x.flatten(1) @ lin1.weight[:u].T, bn1.running_mean,
                                           bn1.running_var, bn1.weight, bn1.bias, eps=bn1.eps).relu()  # fmt: skip
        h = torch.nn.functional.batch_norm(h @ lin2.weight[:u, :u].T, bn2.running_mean,
                                           bn2.running_var, bn2.weight, bn2.bias, eps=bn2.eps).relu()  # fmt: skip
        ref = h @ parent.encoder.proj.weight[:, :u].T + parent.encoder.proj.bias
        torch.testing.assert_close(parent(x, width=g)[0], ref)
        # the same heads read every width
        torch.testing.assert_close(parent(x, width=g)[1], parent.head(ref))


def test_multiply_adds_and_mix_n_match():
    cfg = _elastic("cnn").config
    full = multiply_adds(cfg)
    costs = [multiply_adds(cfg, layer_units(cfg, (k,) * 5)) / full for k in range(4)]
    assert costs == sorted(costs) and costs[-1] == 1.0 and costs[1] < 0.1
    for budget in (0.05, 0.2, 0.3, 0.5, 0.8, 1.0):
        widths = mix_n_match(cfg, budget)
        ks = [WIDTHS.index(g) for g in widths]
        # granularities never widen with depth (a CNN), and mix two neighbouring ones at most
        assert ks == sorted(ks, reverse=True) and ks[0] - ks[-1] <= 1
        cost = multiply_adds(cfg, layer_units(cfg, ks)) / full
        assert cost <= budget
        # nothing of that family (enumerated here by hand) and dearer fits the budget
        import itertools

        family = [c for c in itertools.product(range(4), repeat=5)
                  if list(c) == sorted(c, reverse=True) and c[0] - c[-1] <= 1]
        assert sorted(family) == sorted(mix_lists(cfg))
        assert all(multiply_adds(cfg, layer_units(cfg, c)) / full <= cost
                   or multiply_adds(cfg, layer_units(cfg, c)) / full > budget for c in family)
        sub = extract(_elastic("cnn"), widths)
        assert sub.manifest.extra["slice"]["cost"] == pytest.approx(cost, abs=1e-6)
    assert mix_n_match(cfg, 1.0) == (1.0,) * 5


# ------------------------------------------------------------------ save and load
def test_save_load_roundtrip_of_elastic_and_extracted_models(tmp_path):
    parent = _elastic("cnn")
    save_image_model(parent, tmp_path / "p", model_id="parent")
    man = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert man["extra"]["config"]["widths"] == list(WIDTHS)
    assert "channels" not in man["extra"]["config"]
    loaded = load_image_model(tmp_path / "p")
    assert loaded.config == parent.config
    x = _x()
    with torch.no_grad():
        for g in WIDTHS:
            assert torch.equal(loaded(x, width=g)[0], parent(x, width=g)[0])
    sub = extract(loaded, 0.25)
    assert sub.manifest.model_id == "parent-w0.25"
    save_image_model(sub, tmp_path / "s", sub.manifest.model_id, sub.manifest.extra)
    back = load_image_model(tmp_path / "s")
    assert back.config.widths is None and back.config.channels == (1, 2, 2, 4, 4)
    assert back.manifest.model_version == weights_version(sub.state_dict())
    assert back.manifest.model_version != loaded.manifest.model_version
    assert parent_of(back.manifest) == ("parent", loaded.manifest.model_version)
    assert back.manifest.extra["slice"]["layer_widths"] == [0.25] * 5
    with torch.no_grad():
        assert torch.equal(back(x)[0], loaded(x, width=0.25)[0])
    # two widths, two versions; the same width twice, one version
    assert extract(loaded, 0.5).manifest.model_version not in (back.manifest.model_version,
                                                                loaded.manifest.model_version)
    assert extract(loaded, 0.25).manifest.model_version == back.manifest.model_version


def test_a_manifest_whose_config_lies_about_widths_is_refused(tmp_path):
    save_image_model(_elastic("mlp"), tmp_path / "p", model_id="parent")
    path = tmp_path / "p" / "manifest.json"
    man = json.loads(path.read_text())
    del man["extra"]["config"]["widths"]
    path.write_text(json.dumps(man))
    with pytest.raises(NestembError, match="check 'widths'"):
        load_image_model(tmp_path / "p")
    man["extra"]["config"]["widths"] = "0.5,1"
    path.write_text(json.dumps(man))
    with pytest.raises(NestembError, match="extra.config.widths must be a list"):
        load_image_model(tmp_path / "p")
    man["extra"]["config"]["widths"] = [0.5, 0.25, 1]
    path.write_text(json.dumps(man))
    with pytest.raises(NestembError, match="bad extra.config: widths must be strictly ascending"):
        load_image_model(tmp_path / "p")


# ------------------------------------------------------------------ training
def test_sandwich_sampling():
    gen = torch.Generator().manual_seed(0)
    seen = {sample_widths(WIDTHS, gen) for _ in range(50)}
    assert seen == {(1.0, 0.125, 0.25), (1.0, 0.125, 0.5)}
    assert sample_widths((0.5, 1.0), gen) == (1.0, 0.5) and sample_widths((1.0,), gen) == (1.0,)


def test_widths_per_step_sampling():
    """``per_step``: the full width first (the distillation teacher), the smallest, then that many
    distinct others; every granularity, with no random draw, once it reaches their number."""
    five = (0.125, 0.25, 0.5, 0.75, 1.0)
    gen = torch.Generator().manual_seed(0)
    seen = {sample_widths(five, gen, per_step=4) for _ in range(200)}
    assert all(p[:2] == (1.0, 0.125) and len(set(p)) == 4 for p in seen)
    assert {frozenset(p[2:]) for p in seen} == {frozenset(c) for c in ((0.25, 0.5), (0.25, 0.75), (0.5, 0.75))}
    state = gen.get_state()
    assert sample_widths(WIDTHS, gen, per_step=4) == (1.0, 0.125, 0.5, 0.25)
    assert sample_widths(WIDTHS, gen, per_step=9) == (1.0, 0.125, 0.5, 0.25)
    assert sample_widths(WIDTHS, gen, per_step=2) == (1.0, 0.125)
    assert torch.equal(gen.get_state(), state)  # no choice, no draw
    # the default is the sandwich: a seeded run draws what it drew before per_step existed
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [sample_widths(WIDTHS, a) for _ in range(20)] == [sample_widths(WIDTHS, b, 3) for _ in range(20)]


def test_always_widths_are_trained_every_step_and_the_rest_sampled():
    """``always``: the full width, then the named ones, then draws from the rest only; with
    nothing left to choose there is no draw."""
    gen = torch.Generator().manual_seed(0)
    seen = {sample_widths(WIDTHS, gen, always=(0.5,)) for _ in range(200)}
    assert seen == {(1.0, 0.5, 0.125), (1.0, 0.5, 0.25)}
    seen = {sample_widths(WIDTHS, gen, per_step=3, always=()) for _ in range(200)}
    assert all(p[0] == 1.0 and len(set(p)) == 3 for p in seen)
    assert {frozenset(p[1:]) for p in seen} == {frozenset(c) for c in ((0.125, 0.25), (0.125, 0.5), (0.25, 0.5))}
    state = gen.get_state()
    assert sample_widths(WIDTHS, gen, per_step=4, always=(0.5,)) == (1.0, 0.5, 0.25, 0.125)
    assert sample_widths(WIDTHS, gen, per_step=3, always=(0.25, 0.5)) == (1.0, 0.25, 0.5)
    assert torch.equal(gen.get_state(), state)


def test_mixed_widths_replace_drawn_widths_with_monotone_lists():
    """``mixed``: only the drawn width is replaced, by a per-layer list of two neighbouring
    granularities that never shrinks with depth; every such list turns up (the family that
    mix_n_match serves); with ``mixed=0`` the draws are exactly the sandwich's."""
    lists = width_lists(len(WIDTHS), 5, grow=False)
    family = {tuple(WIDTHS[k] for k in ks) for ks in lists if ks[0] != ks[-1]}
    assert len(family) == 12  # 3 pairs of neighbouring widths, 4 places to step down in 5 layers
    gen = torch.Generator().manual_seed(0)
    seen = [sample_widths(WIDTHS, gen, mixed=0.5, lists=lists) for _ in range(2000)]
    assert all(p[:2] == (1.0, 0.125) and len(p) == 3 for p in seen)
    mixed = [p[2] for p in seen if isinstance(p[2], tuple)]
    assert set(mixed) == family and 900 < len(mixed) < 1100  # about half the steps
    assert {p[2] for p in seen if not isinstance(p[2], tuple)} == {0.25, 0.5}
    assert all(isinstance(p[2], tuple) for p in (sample_widths(WIDTHS, gen, mixed=1.0, lists=lists) for _ in range(20)))
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [sample_widths(WIDTHS, a) for _ in range(20)] == [sample_widths(WIDTHS, b, mixed=0.0, lists=lists)
                                                            for _ in range(20)]
    state = gen.get_state()  # nothing drawn, nothing mixed
    assert sample_widths(WIDTHS, gen, per_step=4, mixed=1.0, lists=lists) == (1.0, 0.125, 0.5, 0.25)
    assert torch.equal(gen.get_state(), state)


def test_mixed_widths_training_records_the_lists_loss_and_fits_mix_n_match(data):
    """A run with ``mixed_widths`` trains Mix'n'Match lists (their loss is recorded and falls),
    is a different run for resuming, and the lists mix_n_match serves are the family trained."""
    x, y = load_idx(data)
    cfg = make_model_config("mrl", dim=8, dims=(2, 4, 8), images=x, arch="mlp", width=1, widths=WIDTHS)
    tcfg = ImageTrainConfig(steps=24, holdout=20, batch_size=32, lr=1e-2, seed=1, device="cpu", mixed_widths=1.0)
    _model, info = train_image(cfg, x, y, tcfg, progress=False)
    assert info["mixed_widths"] == 1.0 and "Mix'n'Match list with probability 1" in info["width_sampling"]
    hist = [v for v in info["width_losses"]["mixed"] if v is not None]
    assert len(hist) >= 2 and hist[-1] < hist[0], info["width_losses"]
    assert info["width_losses"]["0.25"] == [None] * len(hist)  # never drawn: always replaced
    # a list borrows the uniform widths' batch norms in training: it must leave their statistics
    torch.manual_seed(0)
    model = ImageModel(cfg).train()
    xb, yb = model.preprocess(torch.from_numpy(x[:32].copy())), torch.from_numpy(y[:32].astype(np.int64))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}
    width_losses(model, xb, yb, torch.ones(3), [(0.5, 0.25), (1.0, 0.5)]).sum().backward()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    width_losses(model, xb, yb, torch.ones(3), [0.5])  # a uniform width does move its own
    moved = {k for k, v in before.items() if not torch.equal(v, model.state_dict()[k])}
    assert moved and all(".bns.2." in k for k in moved), moved
    sig = run_signature(cfg, x, y, tcfg)
    assert sig["mixed_widths"] == 1.0 and "mixed_widths" not in run_signature(cfg, x, y, ImageTrainConfig())
    family = [tuple(WIDTHS[k] for k in ks) for ks in width_lists(len(WIDTHS), LAYERS["mlp"], grow=False)]
    assert mix_lists(cfg) == width_lists(len(WIDTHS), LAYERS["mlp"], grow=False)  # an MLP narrows
    assert all(mix_n_match(cfg, b) in family for b in (0.15, 0.2, 0.3, 0.5, 0.7, 1.0))
    assert mix_n_match(cfg, 0.485) == (0.5, 0.25)  # layer 1 carries the cost: just below 1/2
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(NestembError) as e:
            ImageTrainConfig(mixed_widths=bad)
        assert e.value.param == "mixed_widths", bad
    # nothing is sampled when every width trains every step: refused, naming the setting
    for change in ({"widths_per_step": 4}, {"always_widths": (0.25, 0.5)}):
        with pytest.raises(NestembError, match="mixed_widths replaces sampled widths") as e:
            train_image(cfg, x, y, dataclasses.replace(tcfg, **change), progress=False)
        assert e.value.param == "mixed_widths"


@pytest.mark.parametrize("always", [None, (0.5,)])
def test_unbiased_width_weights_make_the_expected_loss_every_widths(data, always):
    """Averaged over the sandwich's equally likely draws, the weighted loss of the sampled widths
    equals the loss summed over every width (the joint loss), for the same model and batch; the
    trainer records that it weighted them."""
    x, y = load_idx(data)
    cfg = make_model_config("mrl", dim=8, dims=(2, 4, 8), images=x, arch="mlp", width=1, widths=WIDTHS)
    torch.manual_seed(0)
    model = ImageModel(cfg).eval()
    xb, yb, w = model.preprocess(torch.from_numpy(x[:64].copy())), torch.from_numpy(y[:64].astype(np.int64)), torch.ones(3)
    with torch.no_grad():
        joint = float(width_losses(model, xb, yb, w, WIDTHS[::-1]).sum())
        # what sample_widths draws, 1/2 each
        draws = ([(1.0, 0.125, 0.25), (1.0, 0.125, 0.5)] if always is None
                 else [(1.0, 0.5, 0.125), (1.0, 0.5, 0.25)])
        expected = np.mean([float(width_losses(model, xb, yb, w, p)
                                  @ torch.tensor(sampled_width_weights(WIDTHS, p, always))) for p in draws])
    assert expected == pytest.approx(joint, rel=1e-5)
    assert sampled_width_weights(WIDTHS, (1.0, 0.125)) == (1.0, 1.0)
    tcfg = ImageTrainConfig(steps=2, holdout=20, batch_size=32, seed=1, device="cpu", unbiased_widths=True,
                            always_widths=always)
    info = train_image(cfg, x, y, tcfg, progress=False)[1]
    assert info["unbiased_widths"] is True and info["always_widths"] == (None if always is None else [0.5])
    if always is not None:  # trained at both steps: a loss in the first epoch's record
        assert info["width_losses"]["0.5"][0] is not None


def test_widths_per_step_trains_every_width_each_step(data):
    """With ``widths_per_step`` = the number of widths every epoch's mean loss exists for every
    width after one step (the sandwich leaves one of the two middle widths out), and a bad
    value is refused naming its parameter."""
    x, y = load_idx(data)
    cfg = make_model_config("mrl", dim=8, dims=(2, 4, 8), images=x, arch="mlp", width=1, widths=WIDTHS)
    tcfg = ImageTrainConfig(steps=1, holdout=20, batch_size=32, seed=1, device="cpu",
                            widths_per_step=4)
    _model, info = train_image(cfg, x, y, tcfg, progress=False)
    assert all(h[0] is not None for h in info["width_losses"].values()), info["width_losses"]
    for bad in (1, 2.5, "4"):
        with pytest.raises(NestembError) as e:
            ImageTrainConfig(widths_per_step=bad)
        assert e.value.param == "widths_per_step"
    for bad in ({"always_widths": "0.5"}, {"always_widths": (0.125, 0.25, 0.5)},
                {"always_widths": (0.25, 0.5), "widths_per_step": 2}, {"always_widths": (True,)}):
        with pytest.raises(NestembError) as e:
            ImageTrainConfig(**bad)
        assert e.value.param == "always_widths", bad
    for bad in ((0.3,), (1.0,)):  # not a width of the model below the full one
        with pytest.raises(NestembError, match=r"other than the full one \(0.125, 0.25, 0.5\)") as e:
            train_image(cfg, x, y, dataclasses.replace(tcfg, always_widths=bad), progress=False)
        assert e.value.param == "always_widths"


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_training_lowers_the_loss_at_every_width(data, arch):
    x, y = load_idx(data)
    cfg = make_model_config("mrl", dim=8, dims=(2, 4, 8), images=x, arch=arch,
                            width=4 if arch == "cnn" else 1, widths=WIDTHS)  # fmt: skip
    tcfg = ImageTrainConfig(steps=16, holdout=20, batch_size=32, lr=1e-2, seed=1, device="cpu")
    model, info = train_image(cfg, x, y, tcfg, progress=False)
    assert info["widths"] == list(WIDTHS) and set(info["width_losses"]) == {"0.125", "0.25", "0.5", "1"}
    for g, hist in info["width_losses"].items():
        seen = [v for v in hist if v is not None]
        assert seen[-1] < seen[0], (g, hist)
    torch.manual_seed(tcfg.seed)
    init = ImageModel(cfg).eval()  # the trainer's initial weights (same seed)
    xt, yt = model.preprocess(torch.from_numpy(x[:80].copy())), torch.from_numpy(y[:80].astype(np.int64))
    w = torch.tensor([2.0, 1.0, 1.0])
    with torch.no_grad():
        before = width_losses(init, xt, yt, w, WIDTHS)
        after = width_losses(model, xt, yt, w, WIDTHS)
        assert torch.equal(batch_loss(model, xt, yt, w, widths=WIDTHS), after.sum())
    # in eval mode (running statistics) too; the CNN's smallest widths (1 or 2 channels a layer
    # here) learn too slowly in these few steps to be held to it, its full width is
    assert (after < before).all() if arch == "mlp" else after[-1] < before[-1], (before, after)
    # the elastic run is recorded: checkpoint signature, manifest
    sig = run_signature(cfg, x, y, tcfg)
    assert sig["widths"] == list(WIDTHS) and "widths=(0.125" in sig["model"]
    assert build_manifest(model).extra["config"]["widths"] == list(WIDTHS)


def test_elastic_training_resumes_exactly_and_refuses_other_widths(data, tmp_path):
    x, y = load_idx(data)
    cfg = make_model_config("mrl", dim=8, dims=(4, 8), images=x, arch="mlp", width=1, widths=WIDTHS)
    tcfg = ImageTrainConfig(epochs=3, holdout=20, batch_size=70, seed=2, device="cpu")
    full, info = train_image(cfg, x, y, tcfg, progress=False, checkpoint_dir=tmp_path / "ck")
    resumed, info2 = train_image(cfg, x, y, tcfg, progress=False, resume_from=tmp_path / "ck" / "epoch-1")
    assert weights_version(full.state_dict()) == weights_version(resumed.state_dict())
    assert info2["width_losses"] == info["width_losses"]
    other = make_model_config("mrl", dim=8, dims=(4, 8), images=x, arch="mlp", width=1,
                              widths=(0.5, 1.0))  # fmt: skip
    with pytest.raises(NestembError, match="different run: widths"):
        train_image(other, x, y, tcfg, progress=False, resume_from=tmp_path / "ck" / "epoch-1")
    # how the widths train is part of the run too: resuming with another sampling is refused
    for change, name in (({"widths_per_step": 4}, "widths_per_step"), ({"unbiased_widths": True}, "unbiased_widths"),
                         ({"width_distill": 1.0}, "width_distill"), ({"always_widths": (0.5,)}, "always_widths"),
                         ({"mixed_widths": 0.5}, "mixed_widths")):  # fmt: skip
        with pytest.raises(NestembError, match=f"different run: {name}"):
            train_image(cfg, x, y, dataclasses.replace(tcfg, **change), progress=False,
                        resume_from=tmp_path / "ck" / "epoch-1")
    # and the other way: a run of the default sampling does not continue one that named widths
    train_image(cfg, x, y, dataclasses.replace(tcfg, epochs=1, always_widths=(0.5,)), progress=False,
                checkpoint_dir=tmp_path / "ck2")
    with pytest.raises(NestembError, match="different run: always_widths"):
        train_image(cfg, x, y, dataclasses.replace(tcfg, epochs=1), progress=False,
                    resume_from=tmp_path / "ck2" / "epoch-1")
    loaded = load_image_model(tmp_path / "ck" / "epoch-3")
    assert loaded.config.widths == WIDTHS


# ------------------------------------------------------------------ identity
def _man(model_id, version, parent=None):
    extra = {"parent": {"model_id": parent[0], "model_version": parent[1]}} if parent else {}
    return Manifest(model_id=model_id, model_version=version, nesting=(4, 8), dim=8, extra=extra)


def test_check_compatible_accepts_the_parents_space_only():
    full = _man("cnn", "aa")
    sub = _man("cnn-w0.25", "s1", parent=("cnn", "aa"))
    sibling = _man("cnn-w0.5", "s2", parent=("cnn", "aa"))
    for a, b in ((sub, full), (full, sub), (sub, sibling), (sub, sub)):
        check_compatible(a, b)
    stranger = _man("cnn-w0.25", "s3", parent=("cnn", "bb"))
    with pytest.raises(NestembError, match=r"different parents: 'cnn-w0.25' \(version 's3'\) is a "
                       r"submodel of 'cnn' \(version 'bb'\); 'cnn' \(version 'aa'\) is a full model"):
        check_compatible(stranger, full)
    with pytest.raises(NestembError, match=r"submodel of 'cnn' \(version 'bb'\); .* submodel of "
                       r"'cnn' \(version 'aa'\)"):
        check_compatible(stranger, sub)
    with pytest.raises(NestembError, match="different nestings"):
        check_compatible(sub, Manifest(model_id="cnn", model_version="aa", nesting=(8,), dim=8))
    # ordinary manifests: exactly the old answers
    with pytest.raises(NestembError, match="come from different models: 'cnn'"):
        check_compatible(full, _man("other", "aa"))
    with pytest.raises(NestembError, match="different weights of model 'cnn'"):
        check_compatible(full, _man("cnn", "bb"))
    assert lineage(full) == {} and lineage(sub) == {"parent": {"model_id": "cnn", "model_version": "aa"}}
    bad = {**sub.to_dict(), "extra": {"parent": {"model_id": "cnn"}}}
    with pytest.raises(NestembError, match="field 'extra.parent' must name the parent model"):
        Manifest.from_dict(bad, "q/manifest.json")


def test_submodel_queries_search_the_parents_index_from_the_cli(cli, tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (60, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    for name, seed in (("p", 0), ("other", 1)):
        save_image_model(_elastic("mlp", seed=seed), tmp_path / name, model_id="parent")
        sub = extract(load_image_model(tmp_path / name), 0.25)
        save_image_model(sub, tmp_path / f"{name}-sub", sub.manifest.model_id, sub.manifest.extra)
        r = cli("embed", "--model", tmp_path / f"{name}-sub", "--images", tmp_path / "x.npy",
                "--out", tmp_path / f"q-{name}")  # fmt: skip
        assert r.code == 0, r
    r = cli("embed", "--model", tmp_path / "p", "--images", tmp_path / "x.npy", "--out", tmp_path / "g")
    assert r.code == 0, r
    q = Manifest.load(tmp_path / "q-p")  # the parent travels with the embeddings
    assert q.model_id == "parent-w0.25" and parent_of(q) == parent_of(load_image_model(tmp_path / "p-sub").manifest)
    r = cli("index", "build", "--embeddings", tmp_path / "g", "--out", tmp_path / "idx", "--stages", "4,8")
    assert r.code == 0, r
    r = cli("index", "search", tmp_path / "idx", "--queries", tmp_path / "q-p", "--k", "3",
            "--out", tmp_path / "res.json")  # fmt: skip
    assert r.code == 0, r
    r = cli("index", "search", tmp_path / "idx", "--queries", tmp_path / "q-other", "--k", "3")
    assert r.code == 2 and "different parents" in r.err and "submodel of 'parent'" in r.err, r
    # the library search takes the same decision
    from nestemb.folders import load_embeddings
    from nestemb.index import load_index

    index = load_index(tmp_path / "idx")
    Q, man = load_embeddings(tmp_path / "q-p")[:2]
    assert index.search(Q, k=3, manifest=man)[1].shape == (60, 3)
    Q, man = load_embeddings(tmp_path / "q-other")[:2]
    with pytest.raises(NestembError, match="different parents"):
        index.search(Q, k=3, manifest=man)


# ------------------------------------------------------------------ bad input (library)
@pytest.mark.parametrize("widths, match", [
    ((0.5, 0.25, 1.0), "widths must be strictly ascending"),
    ((0.25, 0.5), "widths must end with 1"),
    ((0.0, 1.0), r"widths must lie in \(0, 1\]"),
    ((0.5, 1.5), r"widths must lie in \(0, 1\]"),
    ((), "widths must be a non-empty list"),
    ((float("nan"), 1.0), "widths must be a non-empty list of numbers"),
    ((True, 1.0), "widths must be a non-empty list of numbers"),
    ("0.5,1", "widths must be a list of fractions"),
    (0.5, "widths must be a list of fractions"),
])
def test_bad_widths_name_the_parameter(widths, match):
    with pytest.raises(NestembError, match=match) as e:
        ImageModelConfig(dim=8, nesting=(8,), widths=widths)
    assert e.value.param == "widths"


def test_bad_channels_name_the_parameter():
    for channels, match in (((4, 4), "channels gives 2 layers; the cnn has 5"),
                            ((4, 0, 4, 4, 4), "channels must be a list of positive integers")):
        with pytest.raises(NestembError, match=match) as e:
            ImageModelConfig(dim=8, nesting=(8,), channels=channels)
        assert e.value.param == "channels"


def test_bad_extraction_and_widths_name_the_parameter():
    parent = _elastic("cnn")
    cases = [
        (lambda: extract(parent, 0.3), "width", "width 0.3 is not a trained granularity of this "
                                                r"model \(widths \(0.125, 0.25, 0.5, 1.0\)\)"),
        (lambda: extract(parent, [0.25, 0.5]), "width", "width lists 2 per-layer widths; the cnn has 5 layers"),
        (lambda: extract(parent, [0.25] * 4 + [0.3]), "width", "width 0.3 is not a trained"),
        (lambda: extract(parent, "0.25"), "width", "is not a trained granularity"),
        (lambda: extract(parent, True), "width", "is not a trained granularity"),
        (lambda: parent(_x(2), width=0.75), "width", "not a trained granularity"),
        (lambda: parent.encode(np.zeros((1, 28, 28), np.uint8), width=2), "width", "not a trained"),
        (lambda: mix_n_match(parent.config, 0.0), "budget", "budget must be a positive fraction"),
        (lambda: mix_n_match(parent.config, float("inf")), "budget", "budget must be a positive"),
        (lambda: mix_n_match(parent.config, 0.001), "budget", "below the smallest width's cost"),
        (lambda: extract(parent, 0.25, model_id=" "), "model_id", "model_id must be a non-empty string"),
    ]
    plain = ImageModel(ImageModelConfig(dim=8, nesting=(8,), width=2)).eval()
    plain.manifest = build_manifest(plain)
    cases += [
        (lambda: extract(plain, 0.5), "width", "this model has no nested widths"),
        (lambda: plain(_x(2), width=0.5), "width", "this model has no nested widths"),
        (lambda: mix_n_match(plain.config, 0.5), "widths", "needs an elastic model"),
    ]
    bare = _elastic("mlp")
    bare.manifest = None
    cases.append((lambda: extract(bare, 0.5), "model", "the model has no manifest"))
    stale = _elastic("mlp")
    with torch.no_grad():
        stale.encoder.proj.bias.add_(1.0)
    cases.append((lambda: extract(stale, 0.5), "model", "no longer matches its weights"))
    for fn, param, match in cases:
        with pytest.raises(NestembError, match=match) as e:
            fn()
        assert e.value.param == param, (match, e.value.param)
    # the plain model's full width, spelled 1, is the model itself
    with torch.no_grad():
        assert torch.equal(plain(_x(2), width=1.0)[0], plain(_x(2))[0])


def test_elastic_training_refuses_compat_and_torchrun(monkeypatch):
    from nestemb.train.compatible import CompatConfig

    x, y = np.zeros((40, 28, 28), np.uint8), np.arange(40) % 10
    cfg = make_model_config("mrl", dim=8, width=2, widths=(0.5, 1.0))
    with pytest.raises(NestembError, match="widths and compatible training") as e:
        train_image(cfg, x, y, ImageTrainConfig(steps=1, device="cpu"), progress=False,
                    compat=CompatConfig.simplex_classifier())
    assert e.value.param == "widths"


# ------------------------------------------------------------------ ordinary models as before
# weights versions written by the code before nested widths existed (torch 2.13.0, CPU), for
# ImageModel(ImageModelConfig(dim=8, nesting=(2, 8), width=2, arch=...)) after manual_seed(0),
# and after train_image(make_model_config("mrl", dim=8, width=2, arch=...), 64 random images,
# ImageTrainConfig(steps=3, batch_size=32, device="cpu"))
BEFORE = {"cnn": "3b73981012231a9c", "mlp": "f9f689ca71c3cc7b"}
"""Weights versions of the initial models before widths existed (torch 2.13.0); trained weights
are not pinned: CPU kernels may sum in another order on another machine."""


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_a_model_without_widths_is_exactly_as_before(arch):
    torch.manual_seed(0)
    cfg = ImageModelConfig(dim=8, nesting=(2, 8), width=2, arch=arch)
    plain = ImageModel(cfg)
    assert repr(cfg) == ("ImageModelConfig(dim=8, nesting=(2, 8), head='mrl', cosine=False, width=2, "
                         f"num_classes=10, in_hw=(28, 28), mean=0.286, std=0.353, arch='{arch}')")
    assert not any(".bns." in k for k in plain.state_dict())
    assert set(build_manifest(plain).extra["config"]) == {"dim", "nesting", "head", "cosine", "width",
                                                          "num_classes", "in_hw", "mean", "std", "arch"}
    x = np.random.default_rng(0).integers(0, 255, (64, 28, 28), dtype=np.uint8)
    y = np.arange(64) % 10
    tcfg = ImageTrainConfig(steps=3, batch_size=32, device="cpu")
    assert "widths" not in run_signature(make_model_config("mrl", dim=8, width=2, arch=arch), x, y, tcfg)
    if torch.__version__.split("+")[0] == "2.13.0":
        assert weights_version(plain.state_dict()) == BEFORE[arch]
    # an elastic model starts from the same weights (batch norms aside) for the same seed
    torch.manual_seed(0)
    elastic = ImageModel(ImageModelConfig(dim=8, nesting=(2, 8), width=2, arch=arch, widths=(0.5, 1.0)))
    ref = plain.state_dict()
    for k, v in elastic.state_dict().items():
        if ".bns." not in k:
            assert torch.equal(v, ref[k]), k


# ------------------------------------------------------------------ CLI
def _one_line_error(r, match):
    assert r.code == 2, r
    assert "Traceback" not in r.err and r.err.strip().count("\n") == 0, r.err
    assert match in r.err, r.err


def test_cli_train_and_extract(cli, data, tmp_path):
    out = tmp_path / "m"
    r = cli("image", "train", "--data", data, "--out", out, "--steps", "2", "--dim", "8",
            "--nesting", "4,8", "--widths", "0.25,0.5,1", "--batch-size", "16", "--device", "cpu",
            "--no-checkpoints", "--model-id", "shop")  # fmt: skip
    assert r.code == 0, r
    man = json.loads((out / "manifest.json").read_text())
    assert man["extra"]["config"]["widths"] == [0.25, 0.5, 1.0]
    assert man["extra"]["training"]["widths"] == [0.25, 0.5, 1.0]
    r = cli("image", "extract", "--model", out, "--width", "0.25", "--out", tmp_path / "s")
    assert r.code == 0, r
    sub = load_image_model(tmp_path / "s")
    assert sub.manifest.model_id == "shop-w0.25" and parent_of(sub.manifest) == ("shop", man["model_version"])
    assert sub.manifest.extra["split"] == man["extra"]["split"]  # image eval calibrates as the parent
    parent = load_image_model(out)
    images = np.random.default_rng(0).integers(0, 255, (4, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(sub.encode(images), parent.encode(images, width=0.25))
    r = cli("image", "extract", "--model", out, "--widths-per-layer", "0.25,0.25,0.5,1,1",
            "--out", tmp_path / "mix", "--model-id", "shop-mix", "--calibrate", "0")  # fmt: skip
    assert r.code == 0, r
    mix = load_image_model(tmp_path / "mix")
    np.testing.assert_array_equal(mix.encode(images), parent.encode(images, width=(0.25, 0.25, 0.5, 1, 1)))
    assert mix.manifest.model_id == "shop-mix"
    r = cli("image", "extract", "--model", out, "--budget", "0.5", "--out", tmp_path / "b")
    assert r.code == 0 and "of the full model's multiply-adds" in r.out, r
    b = load_image_model(tmp_path / "b").manifest.extra["slice"]
    assert b["cost"] <= 0.5 and ("calibration" in b) == (len(set(b["layer_widths"])) > 1)

    # every bad input: exit 2, one line naming the option, nothing written
    bad = tmp_path / "bad"
    for argv, match in [
        ([], "give exactly one of --width, --widths-per-layer or --budget (got none)"),
        (["--width", "0.25", "--budget", "0.5"], "give exactly one of --width, --widths-per-layer or --budget (got --width, --budget)"),
        (["--width", "0.3"], "--width 0.3 is not a trained granularity of this model (widths (0.25, 0.5, 1.0))"),
        (["--widths-per-layer", "0.25,0.5"], "--widths-per-layer lists 2 per-layer widths; the cnn has 5 layers"),
        (["--widths-per-layer", "0.25,0.25,0.25,0.25,0.3"], "--widths-per-layer 0.3 is not a trained granularity"),
        (["--widths-per-layer", "0.25,x"], "--widths-per-layer must be comma-separated numbers"),
        (["--budget", "0"], "--budget must be a positive fraction"),
        (["--budget", "0.0001"], "--budget 0.0001 is below the smallest width's cost"),
        (["--width", "0.25", "--model-id", " "], "--model-id must be a non-empty string"),
    ]:
        _one_line_error(cli("image", "extract", "--model", out, "--out", bad, *argv), match)
        assert not bad.exists()
    r = cli("image", "extract", "--model", out, "--width", "x", "--out", bad)
    assert r.code == 2 and "--width" in r.err
    _one_line_error(cli("image", "extract", "--model", tmp_path / "s", "--width", "0.5", "--out", bad),
                    "has no nested widths: train it with `nestemb image train --widths ...`")
    _one_line_error(cli("image", "extract", "--model", tmp_path / "nothing", "--width", "0.5", "--out", bad),
                    "--model: model directory not found")
    _one_line_error(cli("image", "extract", "--model", out, "--width", "0.5", "--out", tmp_path / "s"),
                    "already exists")
    assert not bad.exists()
    for widths, match in [("0.5,0.25,1", "--widths must be strictly ascending"),
                          ("0.25,0.5", "--widths must end with 1"),
                          ("0.5,x", "--widths must be comma-separated numbers"),
                          ("0,1", "--widths must lie in (0, 1]")]:
        r = cli("image", "train", "--data", data, "--out", bad, "--steps", "1", "--widths", widths)
        _one_line_error(r, match)
        assert not bad.exists()
    r = cli("image", "train", "--data", data, "--out", bad, "--steps", "1", "--widths", "0.5,1",
            "--compat", "simplex")  # fmt: skip
    _one_line_error(r, "--widths and --compatible-with/--compat do not combine")
    assert not bad.exists()
    # (extra flags, the message): width settings without --widths, and bad values with them
    for flags, match in [(("--width-distill", "10"), "--width-distill applies only with --widths"),
                         (("--widths", "0.5,1", "--width-distill", "-1"), "--width-distill must be >= 0, got -1.0"),
                         (("--widths-per-step", "4"), "--widths-per-step applies only with --widths"),
                         (("--unbiased-widths",), "--unbiased-widths applies only with --widths"),
                         (("--widths", "0.5,1", "--widths-per-step", "1"), "--widths-per-step must be an integer >= 2"),
                         (("--always-widths", "0.5"), "--always-widths applies only with --widths"),
                         (("--widths", "0.25,0.5,1", "--always-widths", "0.3"),
                          "--always-widths must name widths of the model other than the full one (0.25, 0.5)"),
                         (("--mixed-widths", "0.5"), "--mixed-widths applies only with --widths"),
                         (("--widths", "0.5,1", "--mixed-widths", "2"), "--mixed-widths must be a probability in [0, 1]"),
                         (("--widths", "0.5,1", "--mixed-widths", "0.5"), "--mixed-widths replaces sampled widths")]:
        r = cli("image", "train", "--data", data, "--out", bad, "--steps", "1", *flags)
        _one_line_error(r, match)
    assert not bad.exists()


# ------------------------------------------------------------------ the ViT (MatFormer FFNs)
def test_vit_forward_shapes_and_tokens():
    for hw in ((28, 28), (30, 26)):  # 30x26 is padded to 32x28: 8 x 7 tokens
        m = ImageModel(ImageModelConfig(dim=8, nesting=(4, 8), width=2, arch="vit", in_hw=hw)).eval()
        assert m.encoder.pos.shape == (1, 49 if hw == (28, 28) else 56, 8)
        z, logits = m(torch.zeros(3, 1, *hw))
        assert z.shape == (3, 8) and logits.shape == (3, 2, 10)
        assert m.encode(np.zeros((2, *hw), np.uint8)).shape == (2, 8)
    cfg = ImageModelConfig(dim=8, nesting=(8,), arch="vit")  # the defaults: width 16
    enc = ImageModel(cfg).encoder
    assert enc.patch.out_channels == 64 and len(enc.blocks) == 4 == len(cfg.layer_channels)
    assert cfg.layer_channels == (256,) * 4 and enc.blocks[0].heads == 4
    assert not batch_norms(ImageModel(cfg))


def test_vit_width_matches_a_hand_written_reference():
    """An independent reference for a per-block list of widths: attention written out as
    softmax(Q K^T / sqrt(d_head)) V, each block's feed-forward sliced by hand."""
    parent = _elastic("vit")
    enc, x = parent.encoder, _x(3)
    mix = (0.25, 0.5, 1.0, 0.125)
    d, heads = 8, 4
    ln = torch.nn.functional.layer_norm
    with torch.no_grad():
        t = enc.patch(x).flatten(2).transpose(1, 2) + enc.pos
        for g, blk in zip(mix, enc.blocks):
            n = int(np.ceil(g * 32))
            h = ln(t, (d,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
            q, k, v = (h @ blk.qkv.weight.T + blk.qkv.bias).split(d, dim=-1)
            split = lambda a: a.reshape(3, -1, heads, d // heads).transpose(1, 2)  # noqa: E731
            a = torch.softmax(split(q) @ split(k).transpose(-1, -2) / np.sqrt(d // heads), -1) @ split(v)
            t = t + a.transpose(1, 2).reshape(3, -1, d) @ blk.out.weight.T + blk.out.bias
            h = ln(t, (d,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
            h = torch.nn.functional.gelu(h @ blk.fc1.weight[:n].T + blk.fc1.bias[:n])
            t = t + h @ blk.fc2.weight[:, :n].T + blk.fc2.bias
        ref = ln(t, (d,), enc.norm.weight, enc.norm.bias, enc.norm.eps).mean(1) @ enc.proj.weight.T + enc.proj.bias
        torch.testing.assert_close(parent(x, width=mix)[0], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(parent(x, width=mix)[1], parent.head(ref), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(parent(x, width=0.125)[0], parent(x)[0])


def test_vit_multiply_adds_by_hand_and_mix_n_match():
    # 8x8 images: T = 4 tokens of d = 8 (width 2), feed-forward 32 a block, dim 8
    cfg = ImageModelConfig(dim=8, nesting=(8,), width=2, arch="vit", in_hw=(8, 8), widths=(0.25, 0.5, 1))
    patch = 4 * 16 * 8                         # T patches of 4x4 pixels to d
    attention = 4 * 8 * 3 * 8 + 4 * 8 * 8 + 2 * 4 * 4 * 8   # qkv, out, Q K^T and A V
    ffn = lambda h: 2 * 4 * 8 * h  # noqa: E731
    assert multiply_adds(cfg) == patch + 4 * (attention + ffn(32)) + 8 * 8
    assert multiply_adds(cfg, (8, 16, 32, 32)) == patch + 4 * attention + ffn(8 + 16 + 64) + 64
    assert layer_units(cfg, (0, 1, 2, 2)) == (8, 16, 32, 32)
    full = multiply_adds(cfg)
    import itertools

    for budget in (0.7, 0.8, 0.9, 1.0):
        widths = mix_n_match(cfg, budget)
        ks = [cfg.widths.index(g) for g in widths]
        cost = multiply_adds(cfg, layer_units(cfg, ks)) / full
        assert ks == sorted(ks) and cost <= budget
        monotone = [c for c in itertools.combinations_with_replacement(range(3), 4) if c[-1] - c[0] <= 1]
        costs = {c: multiply_adds(cfg, layer_units(cfg, c)) / full for c in monotone}
        assert all(v <= cost or v > budget for v in costs.values())
        # of the lists costing the same, the one closest to uniform
        assert all(c[-1] - c[0] >= ks[-1] - ks[0] for c, v in costs.items() if v == cost)
    # 0.5 0.5 0.5 1 and 0.25 0.25 1 1 cost the same (10 eighths); only the first mixes neighbours
    assert multiply_adds(cfg, layer_units(cfg, (1, 1, 1, 2))) == multiply_adds(cfg, layer_units(cfg, (0, 0, 2, 2)))
    b = multiply_adds(cfg, layer_units(cfg, (1, 1, 1, 2))) / full
    assert mix_n_match(cfg, b) == (0.5, 0.5, 0.5, 1.0)
    smallest = multiply_adds(cfg, layer_units(cfg, (0,) * 4)) / full
    with pytest.raises(NestembError, match="below the smallest width's cost") as e:
        mix_n_match(cfg, smallest * 0.99)
    assert e.value.param == "budget"
    sub = extract(_elastic("vit"), mix_n_match(_elastic("vit").config, 0.9))
    assert sub.manifest.extra["slice"]["cost"] <= 0.9


@pytest.mark.parametrize("widths", [None, WIDTHS])
def test_vit_save_load_roundtrip(tmp_path, widths):
    torch.manual_seed(3)
    m = ImageModel(ImageModelConfig(dim=8, nesting=(4, 8), width=2, arch="vit", widths=widths)).eval()
    save_image_model(m, tmp_path / "v", model_id="vit")
    man = json.loads((tmp_path / "v" / "manifest.json").read_text())
    assert man["extra"]["config"]["arch"] == "vit" and ("widths" in man["extra"]["config"]) == bool(widths)
    assert config_from_manifest(man["extra"]["config"], "m") == m.config
    back = load_image_model(tmp_path / "v")
    assert back.config == m.config and back.manifest.model_version == weights_version(m.state_dict())
    x = _x(3)
    with torch.no_grad():
        for g in widths or (None,):
            assert torch.equal(back(x, width=g)[0], m(x, width=g)[0])
    if widths:
        sub = extract(back, [0.125, 0.25, 0.5, 1.0])
        save_image_model(sub, tmp_path / "s", sub.manifest.model_id, sub.manifest.extra)
        small = load_image_model(tmp_path / "s")
        assert small.config.channels == (4, 8, 16, 32) and small.config.arch == "vit"
        assert parent_of(small.manifest) == ("vit", back.manifest.model_version)
        with torch.no_grad():
            assert torch.equal(small(x)[0], back(x, width=[0.125, 0.25, 0.5, 1.0])[0])
    # a manifest naming another architecture than its weights: one line naming arch
    man["extra"]["config"]["arch"] = "cnn"
    (tmp_path / "v" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(NestembError, match=r"\(check 'arch'\): the weights hold the encoder parts "
                       r"\['blocks', 'norm', 'patch', 'pos', 'proj'\], the config's cnn has \['features', 'proj'\]"):
        load_image_model(tmp_path / "v")


def test_vit_bad_widths_name_the_parameter():
    parent = _elastic("vit")
    for fn, match in [
        (lambda: extract(parent, 0.3), "width 0.3 is not a trained granularity"),
        (lambda: extract(parent, [0.25, 0.5, 1.0]), "width lists 3 per-layer widths; the vit has 4 layers"),
        (lambda: extract(parent, [0.25] * 5), "width lists 5 per-layer widths; the vit has 4 layers"),
        (lambda: parent(_x(2), width=[0.25, 0.5, 1.0, 0.75]), "width 0.75 is not a trained"),
    ]:
        with pytest.raises(NestembError, match=match) as e:
            fn()
        assert e.value.param == "width"
    with pytest.raises(NestembError, match="channels gives 5 layers; the vit has 4") as e:
        ImageModelConfig(dim=8, nesting=(8,), arch="vit", channels=(4,) * 5)
    assert e.value.param == "channels"


def test_vit_trains_at_every_width(data):
    x, y = load_idx(data)
    cfg = make_model_config("mrl", dim=8, dims=(4, 8), images=x, arch="vit", width=2, widths=(0.25, 1.0))
    # the training loop unchanged (model(x, width=g)); a ViT needs more steps than the CNN here
    tcfg = ImageTrainConfig(steps=60, holdout=20, batch_size=32, lr=1e-2, seed=1, device="cpu", augment=())
    model, info = train_image(cfg, x, y, tcfg, progress=False)
    assert set(info["width_losses"]) == {"0.25", "1"}
    torch.manual_seed(tcfg.seed)
    init = ImageModel(cfg).eval()
    xt, yt = model.preprocess(torch.from_numpy(x[:80].copy())), torch.from_numpy(y[:80].astype(np.int64))
    with torch.no_grad():
        before, after = (width_losses(m, xt, yt, torch.tensor([2.0, 1.0]), (1.0, 0.25)) for m in (init, model))
    assert (after < before).all(), (before, after)
    assert build_manifest(model).extra["config"]["arch"] == "vit"


# ------------------------------------------------------------------ batch-norm recalibration
def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_recalibrate_sets_the_first_batch_norm_to_the_images_statistics(arch):
    m = _elastic(arch, widths=None)
    images = _images(40)
    first, lin = (m.encoder.features[1], m.encoder.features[0]) if arch == "cnn" else \
        (m.encoder.features[2], m.encoder.features[1])
    x = m.preprocess(torch.from_numpy(images))
    with torch.no_grad():  # the first batch norm's input, by hand, in numpy
        h = (lin(x) if arch == "cnn" else x.flatten(1) @ lin.weight.T).numpy().astype(np.float64)
    axes = (0, 2, 3) if arch == "cnn" else (0,)
    state = torch.random.get_rng_state()
    assert recalibrate(m, images, batch_size=64) is m
    assert torch.equal(torch.random.get_rng_state(), state) and not m.training
    assert all(bn.momentum == 0.1 for bn in batch_norms(m))
    np.testing.assert_allclose(first.running_mean.numpy(), h.mean(axis=axes), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first.running_var.numpy(), h.var(axis=axes, ddof=1), rtol=1e-4, atol=1e-5)
    # two equal batches: the mean of their statistics (for the mean: the overall mean)
    recalibrate(m, images, batch_size=20)
    halves = [h[:20], h[20:]]
    np.testing.assert_allclose(first.running_mean.numpy(), h.mean(axis=axes), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first.running_var.numpy(), np.mean([a.var(axis=axes, ddof=1) for a in halves], 0),
                               rtol=1e-4, atol=1e-5)
    # 41 images in batches of at most 20: 14 + 14 + 13 (each weighs the same), never a batch of
    # one (which a batch norm cannot take in train mode): 3 images in batches of 2 are one batch
    recalibrate(m, _images(41), batch_size=20)
    assert int(first.num_batches_tracked) == 3
    recalibrate(m, _images(3), batch_size=2)
    assert int(first.num_batches_tracked) == 1


def test_recalibrate_touches_only_the_batch_norms_of_its_width():
    m = _elastic("mlp")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    recalibrate(m, _images(30), width=0.25)
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".bns.1." in k for k in changed)  # 0.25 is the second granularity
    assert not any(".weight" in k or ".bias" in k for k in changed)  # statistics only


def test_recalibrated_submodel_and_its_manifest():
    parent = _elastic("cnn")
    images = _images(50)
    plain = extract(parent, MIX["cnn"])
    sub = extract(parent, MIX["cnn"], calibration=images, batch_size=25)
    cal = sub.manifest.extra["slice"]["calibration"]
    assert cal == {"images": 50, "batch_size": 25, "uncalibrated_version": plain.manifest.model_version}
    assert sub.manifest.model_version != plain.manifest.model_version
    assert parent_of(sub.manifest) == parent_of(plain.manifest)
    again = recalibrate(extract(parent, MIX["cnn"]), images, batch_size=25)
    assert weights_version(again.state_dict()) == sub.manifest.model_version
    with torch.no_grad():
        x = _x(4)
        assert not torch.equal(sub(x)[0], parent(x, width=MIX["cnn"])[0])
        # only running statistics differ from the plain slice
        for k, v in sub.state_dict().items():
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert torch.equal(v, plain.state_dict()[k]), k
    # the ViT has no batch norm: recalibration leaves it as sliced, and records nothing
    vit = _elastic("vit")
    vsub = extract(vit, MIX["vit"], calibration=images)
    assert "calibration" not in vsub.manifest.extra["slice"]
    assert vsub.manifest.model_version == extract(vit, MIX["vit"]).manifest.model_version
    before = weights_version(vsub.state_dict())
    assert weights_version(recalibrate(vsub, images).state_dict()) == before


def test_recalibrate_bad_input_names_the_parameter():
    m = _elastic("mlp")
    before = weights_version(m.state_dict())
    for fn, param, match in [
        (lambda: recalibrate(m, _images(1)), "calibration", "needs at least 2 images"),
        (lambda: recalibrate(m, np.zeros((4, 10, 10), np.uint8)), "calibration", "must have shape"),
        (lambda: recalibrate(m, np.zeros((4, 28, 28), np.float32)), "calibration", "must be uint8"),
        (lambda: recalibrate(m, _images(4), width=0.3), "width", "not a trained granularity"),
        (lambda: recalibrate(m, _images(4), batch_size=0), "batch_size", "batch_size must be"),
        (lambda: recalibrate("model", _images(4)), "model", "must be an ImageModel"),
        (lambda: extract(m, MIX["mlp"], calibration=_images(1)), "calibration", "at least 2 images"),
    ]:
        with pytest.raises(NestembError, match=match) as e:
            fn()
        assert e.value.param == param, (match, e.value.param)
    assert weights_version(m.state_dict()) == before  # nothing changed


def test_cli_arch_choices_are_the_library_archs():
    from nestemb.cli import image

    assert [a.value for a in image.Arch] == list(ARCHS)


def test_cli_vit_and_calibration(cli, data, tmp_path):
    images = _images(4)
    for arch in ("vit", "mlp"):
        out = tmp_path / arch
        r = cli("image", "train", "--data", data, "--out", out, "--steps", "2", "--dim", "8",
                "--nesting", "4,8", "--widths", "0.25,0.5,1", "--batch-size", "16", "--device", "cpu",
                "--no-checkpoints", "--arch", arch, "--model-id", arch)  # fmt: skip
        assert r.code == 0, r
        assert load_image_model(out).config.arch == arch
    parent = load_image_model(tmp_path / "vit")
    # a vit's mixed widths need no recalibration: the submodel is the slice
    r = cli("image", "extract", "--model", tmp_path / "vit", "--widths-per-layer", "0.25,0.5,0.5,1",
            "--out", tmp_path / "vs")  # fmt: skip
    assert r.code == 0 and "recalibrated" not in r.out, r
    vs = load_image_model(tmp_path / "vs")
    np.testing.assert_array_equal(vs.encode(images), parent.encode(images, width=(0.25, 0.5, 0.5, 1)))
    _one_line_error(cli("image", "extract", "--model", tmp_path / "vit", "--width", "0.5", "--calibrate", "10",
                        "--out", tmp_path / "bad"), "--calibrate: the vit has no batch norm")
    _one_line_error(cli("image", "extract", "--model", tmp_path / "vit", "--widths-per-layer", "0.25,0.5,1",
                        "--out", tmp_path / "bad"), "--widths-per-layer lists 3 per-layer widths; the vit has 4 layers")
    # an mlp's mixed widths are recalibrated by default on its training split
    r = cli("image", "extract", "--model", tmp_path / "mlp", "--widths-per-layer", "0.25,1", "--out", tmp_path / "ms")
    assert r.code == 0 and "batch norms recalibrated on" in r.out, r
    ms = load_image_model(tmp_path / "ms")
    cal = ms.manifest.extra["slice"]["calibration"]
    split = load_image_model(tmp_path / "mlp").manifest.extra["split"]
    assert cal["images"] == split["n"] - split["holdout"] and cal["data"] == str(data) and cal["seed"] == split["seed"]
    r = cli("image", "extract", "--model", tmp_path / "mlp", "--widths-per-layer", "0.25,1", "--calibrate", "0",
            "--out", tmp_path / "m0")  # fmt: skip
    assert r.code == 0, r
    m0 = load_image_model(tmp_path / "m0")
    assert "calibration" not in m0.manifest.extra["slice"]
    assert cal["uncalibrated_version"] == m0.manifest.model_version != ms.manifest.model_version
    # a uniform width is not recalibrated unless asked
    r = cli("image", "extract", "--model", tmp_path / "mlp", "--width", "0.5", "--out", tmp_path / "u")
    assert r.code == 0 and "calibration" not in load_image_model(tmp_path / "u").manifest.extra["slice"]
    r = cli("image", "extract", "--model", tmp_path / "mlp", "--width", "0.5", "--calibrate", "30",
            "--out", tmp_path / "u30")  # fmt: skip
    assert r.code == 0 and load_image_model(tmp_path / "u30").manifest.extra["slice"]["calibration"]["images"] == 30
    bad = tmp_path / "bad"
    for argv, match in [
        (["--calibrate", "-1"], "--calibrate must be a number of images (0: none), got -1"),
        (["--calibrate", "30", "--data", tmp_path / "nothing"], "--data folder not found"),
    ]:
        _one_line_error(cli("image", "extract", "--model", tmp_path / "mlp", "--width", "0.5", "--out", bad, *argv),
                        match)
        assert not bad.exists()
    other = write_synthetic_idx(tmp_path / "other", n_train=50, n_test=10)
    _one_line_error(cli("image", "extract", "--model", tmp_path / "mlp", "--width", "0.5", "--calibrate", "30",
                        "--data", other, "--out", bad), "training images; the model's split was drawn from 160")
    assert not bad.exists()


def test_width_distillation_pulls_the_small_widths_onto_the_full_width(data):
    """In-place distillation (``width_distill``) places a small width's embedding where the full
    width puts the same image: at every prefix their cosine agreement is higher than without
    it, from the same seed and data."""
    x, y = load_idx(data)
    cfg = make_model_config("mrl", dim=8, dims=(2, 4, 8), images=x, arch="mlp", width=1, widths=WIDTHS)
    agree = {}
    for w in (0.0, 10.0):
        tcfg = ImageTrainConfig(steps=40, holdout=20, batch_size=32, lr=1e-2, seed=1, device="cpu",
                                width_distill=w)
        model, info = train_image(cfg, x, y, tcfg, progress=False)
        assert info["width_distill"] == w
        small, full = model.encode(x, width=0.125), model.encode(x)
        agree[w] = [float(np.mean(np.sum(prefix_view(small, m) * prefix_view(full, m), axis=1)))
                    for m in (2, 4, 8)]
    assert all(a > b + 0.01 for a, b in zip(agree[10.0], agree[0.0])), agree
    with pytest.raises(NestembError) as e:
        ImageTrainConfig(width_distill=-1)
    assert e.value.param == "width_distill"
