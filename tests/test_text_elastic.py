"""Nested feed-forward widths in the text encoders (MatFormer-style): a width against an
independent computation with sliced weights, training with the sandwich of widths, reload,
the extracted submodel against the parent at its width, identity on the parent's gallery, the
CLI, every bad input, and a smoke test on the bundled MiniLM."""

from __future__ import annotations

import dataclasses
import json
import re
import threading

import numpy as np
import pytest
import torch

from nestemb.errors import NestembError
from nestemb.nesting import Manifest, check_compatible, weights_version
from nestemb.text._tiny import make_tiny_beir, make_tiny_model
from nestemb.text.elastic import extract
from nestemb.text.encoder import load_text_model, save_text_model, weight_files
from nestemb.text.ffn import check_width, ffn_blocks, ffn_width, multiply_adds
from nestemb.text.train import TextTrainConfig, load_train_data, train_text

WIDTHS = (0.25, 0.5, 1.0)
TEXTS = ["the cat sits on the mat", "a dog runs in the park", "what is the risk",
         "protein cell gene study shows results", "man plays guitar"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-elastic")
    return {"root": root, "model": make_tiny_model(root / "model"), "beir": make_tiny_beir(root / "beir")}


@pytest.fixture(scope="module")
def data(tiny):
    return load_train_data(beir=[tiny["beir"]])


def _cfg(**kw) -> TextTrainConfig:
    base = dict(recipe="finetune", dims=(8, 32), steps=3, batch_size=8, lr=1e-3, device="cpu",
                hard_negatives=False, distill_weight=0.0)
    return TextTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tiny, data):
    """An elastic tiny model trained with widths and saved; returns (folder, in-memory encoder
    before saving's encode at 0.25, info)."""
    enc, info = train_text(data, _cfg(widths=WIDTHS, steps=30), base=tiny["model"], model_id="elastic")
    before = enc.encode(TEXTS, width=0.25)
    out = tiny["root"] / "elastic"
    save_text_model(enc, out, enc.manifest)
    return out, before, info


def _reference(enc, texts, g):
    """The model at width ``g`` computed independently: a fresh Hugging Face BERT whose config
    has the sliced intermediate size, loaded with the state dict's sliced feed-forward weights,
    then mean pooling (the tiny model's pooling)."""
    from transformers import BertModel

    hf = enc.model[0].auto_model
    full = hf.config.intermediate_size
    n = int(np.ceil(g * full))
    sd = {}
    for k, v in hf.state_dict().items():
        if re.search(r"\.intermediate\.dense\.(weight|bias)$", k):
            v = v[:n]
        elif re.search(r"\.output\.dense\.weight$", k) and "attention" not in k:
            v = v[:, :n]
        sd[k] = v.clone()
    cfg = dataclasses.replace(hf.config) if dataclasses.is_dataclass(hf.config) else type(hf.config)(**hf.config.to_dict())
    cfg.intermediate_size = n
    ref = BertModel(cfg, add_pooling_layer=hf.pooler is not None).eval()
    ref.load_state_dict(sd)
    feats = enc.model.tokenize(list(texts))
    with torch.no_grad():
        h = ref(input_ids=feats["input_ids"], attention_mask=feats["attention_mask"],
                token_type_ids=feats.get("token_type_ids")).last_hidden_state
    mask = feats["attention_mask"].unsqueeze(-1).float()
    return ((h * mask).sum(1) / mask.sum(1)).numpy()


def _patched(model) -> bool:
    return any("forward" in vars(layer) for block in ffn_blocks(model) for layer in block)


# --- the width primitive ----------------------------------------------------------------------


def test_width_one_is_the_model_bit_for_bit(tiny):
    enc = load_text_model(tiny["model"])
    full = enc.encode(TEXTS)
    assert np.array_equal(enc.encode(TEXTS, width=1.0), full)
    assert np.array_equal(enc.encode(TEXTS, width=None), full)
    with ffn_width(enc.model, 1.0):
        assert not _patched(enc.model)  # nothing is patched when every unit is kept


@pytest.mark.parametrize("g", [0.125, 0.25, 0.5, 0.3])
def test_width_equals_sliced_weights(tiny, g):
    enc = load_text_model(tiny["model"])
    got = enc.encode(TEXTS, width=g)
    ref = _reference(enc, TEXTS, g)
    # encode batches by length (padding), the reference pads to the longest: float tolerance
    assert np.allclose(got, ref, atol=1e-5), np.abs(got - ref).max()
    assert np.abs(got - enc.encode(TEXTS)).max() > 1e-3  # a real change


def test_patch_removed_after_the_block_even_on_error(tiny):
    enc = load_text_model(tiny["model"])
    with pytest.raises(RuntimeError):
        with ffn_width(enc.model, 0.25):
            assert _patched(enc.model)
            raise RuntimeError("boom")
    assert not _patched(enc.model)
    with ffn_width(enc.model, 0.25), ffn_width(enc.model, 0.5):  # blocks nest, the inner wins
        inner = enc.encode(TEXTS)
    assert not _patched(enc.model)
    assert np.array_equal(inner, enc.encode(TEXTS, width=0.5))


def test_other_threads_run_the_full_model_meanwhile(tiny):
    enc = load_text_model(tiny["model"])
    full = enc.encode(TEXTS)
    seen = {}
    with ffn_width(enc.model, 0.25):
        t = threading.Thread(target=lambda: seen.update(full=enc.encode(TEXTS)))
        t.start()
        t.join()
        mine = enc.encode(TEXTS)
    assert np.array_equal(seen["full"], full)
    assert np.array_equal(mine, enc.encode(TEXTS, width=0.25))


def test_training_at_a_width_trains_its_slice_only(tiny):
    enc = load_text_model(tiny["model"])
    enc.model.train()
    from nestemb.text.encoder import forward_exits

    with ffn_width(enc.model, 0.25):
        out = forward_exits(enc.model, TEXTS)
    out[enc.n_layers].pow(2).sum().backward()  # backward after the block: the graph holds views
    up, down = ffn_blocks(enc.model)[0]
    n = 16  # units(0.25, 64)
    assert up.weight.grad[:n].abs().sum() > 0 and up.weight.grad[n:].abs().sum() == 0
    assert down.weight.grad[:, :n].abs().sum() > 0 and down.weight.grad[:, n:].abs().sum() == 0


def test_multiply_adds_of_minilm_sizes(tiny):
    enc = load_text_model(tiny["model"])
    full = multiply_adds(enc.model)
    assert [multiply_adds(enc.model, g) / full for g in (0.25, 0.5, 1.0)] == [0.625, 0.75, 1.0]


# --- training ---------------------------------------------------------------------------------


def _pair_loss(enc, data, g) -> float:
    """InfoNCE of every training pair against the others at width ``g`` (held fixed)."""
    a = torch.from_numpy(enc.encode([r[0] for r in data.pair_sources[0]], width=g))
    b = torch.from_numpy(enc.encode([r[1] for r in data.pair_sources[0]], width=g))
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    return float(torch.nn.functional.cross_entropy(a @ b.T / 0.05, torch.arange(len(a))))


def test_training_with_widths_lowers_the_loss_at_every_width(tiny, data, trained):
    folder, _before, info = trained
    base = load_text_model(tiny["model"])
    enc = load_text_model(folder)
    for g in WIDTHS:
        assert _pair_loss(enc, data, g) < _pair_loss(base, data, g) - 0.1, g
    assert info["recipe"] == "finetune" and info["widths"] == list(WIDTHS)
    assert sorted(info["width_final_loss"]) == ["0.25", "0.5", "1"]  # the sandwich saw all three
    assert info["config"]["widths"] == list(WIDTHS)
    # every weight the embedding depends on moved (the unused BERT pooler gets no gradient)
    still = [n for (n, p), q in zip(base.model.named_parameters(), enc.model.parameters())
             if torch.equal(p, q)]
    assert still and all(".pooler." in n for n in still), still


def test_training_is_seeded(tiny, data):
    a, _ = train_text(data, _cfg(widths=WIDTHS), base=tiny["model"])
    b, _ = train_text(data, _cfg(widths=WIDTHS), base=tiny["model"])
    assert weights_version(a.model.state_dict()) == weights_version(b.model.state_dict())


def test_one_width_trains_exactly_like_no_widths(tiny, data):
    """widths=(1,) runs the full model once per step: the same weights as an ordinary run
    (whose code path, widths=None, is the one from before widths existed)."""
    a, info_a = train_text(data, _cfg(distill_weight=20.0), base=tiny["model"])
    b, _ = train_text(data, _cfg(distill_weight=20.0, widths=(1,)), base=tiny["model"])
    assert weights_version(a.model.state_dict()) == weights_version(b.model.state_dict())
    assert "widths" not in a.manifest.extra and "widths" not in info_a["config"]
    assert "widths" not in info_a


def test_reload_keeps_widths(trained):
    folder, before, _info = trained
    man = json.loads((folder / "manifest.json").read_text())
    assert man["extra"]["widths"] == list(WIDTHS)
    enc = load_text_model(folder)
    assert enc.widths == WIDTHS
    assert np.allclose(enc.encode(TEXTS, width=0.25), before, atol=1e-6)
    with pytest.raises(NestembError, match=r"width 0.125 is not a trained granularity") as e:
        enc.encode(TEXTS, width=0.125)
    assert e.value.param == "width"


# --- extract ----------------------------------------------------------------------------------


def test_extract_save_load_equals_parent_at_width(trained, tmp_path):
    folder, _before, _info = trained
    parent = load_text_model(folder)
    for g in (0.25, 0.5):
        sub = extract(parent, g)
        out = tmp_path / f"w{g}"
        man = save_text_model(sub, out, sub.manifest)
        loaded = load_text_model(out)
        assert np.allclose(loaded.encode(TEXTS), parent.encode(TEXTS, width=g), atol=1e-5)
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["intermediate_size"] == int(np.ceil(g * 64))
        assert loaded.manifest.model_id == f"elastic-w{g:g}" and loaded.widths is None
        assert man.model_version == weights_version(weight_files(out)) != parent.manifest.model_version
        assert loaded.manifest.extra["parent"] == {"model_id": "elastic",
                                                   "model_version": parent.manifest.model_version}
        sl = loaded.manifest.extra["slice"]
        assert (sl["width"], sl["parent_intermediate_size"], sl["parent_widths"]) == (g, 64, list(WIDTHS))
        assert sl["cost"] == multiply_adds(loaded.model) / multiply_adds(parent.model)
        assert loaded.manifest.nesting == parent.manifest.nesting
        # its embeddings search the parent's gallery; not another model's
        check_compatible(loaded.manifest, parent.manifest)
        other = Manifest(model_id="elastic", model_version="0" * 16, nesting=parent.manifest.nesting,
                         dim=parent.dim)
        with pytest.raises(NestembError, match="different parents"):
            check_compatible(loaded.manifest, other)
    # the full width is the parent's weights again, under its own name
    assert np.allclose(load_text_model(folder).encode(TEXTS), extract(parent, 1).encode(TEXTS), atol=1e-6)


def test_extract_refuses(tiny, data, trained):
    folder, _before, _info = trained
    parent = load_text_model(folder)
    with pytest.raises(NestembError, match="not a trained granularity") as e:
        extract(parent, 0.3)
    assert e.value.param == "width"
    with pytest.raises(NestembError, match="no nested widths") as e:
        extract(load_text_model(tiny["model"]), 0.5)
    assert e.value.param == "width"
    with pytest.raises(NestembError, match="must be a TextEncoder") as e:
        extract(parent.model, 0.5)
    assert e.value.param == "encoder"
    with pytest.raises(NestembError, match="model_id must be a non-empty string"):
        extract(parent, 0.5, model_id=" ")
    unsaved, _ = train_text(data, _cfg(widths=WIDTHS, steps=1), base=tiny["model"])
    with pytest.raises(NestembError, match="save it with save_text_model first") as e:
        extract(unsaved, 0.5)
    assert e.value.param == "encoder"


# --- bad inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [0, 1.5, -0.5, float("nan"), True, "0.5", [0.5]])
def test_bad_widths_are_refused(tiny, width):
    enc = load_text_model(tiny["model"])
    for texts in (TEXTS, []):
        with pytest.raises(NestembError, match="fraction in") as e:
            enc.encode(texts, width=width)
        assert e.value.param == "width"


def test_check_width():
    assert check_width(0.25 + 1e-12, WIDTHS) == 0.25
    assert check_width(1, None) == 1.0


def test_a_model_without_blocks_cannot_run_at_a_width():
    with pytest.raises(NestembError, match="no BERT-style feed-forward blocks") as e:
        with ffn_width(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.5):
            pass
    assert e.value.param == "width"


@pytest.mark.parametrize("kw, match", [
    ({"widths": (0.5, 0.25, 1)}, "widths must be strictly ascending"),
    ({"widths": (0.25, 0.5)}, "widths must end with 1"),
    ({"widths": "0.5,1"}, "widths must be a list of fractions"),
    ({"widths": (0.5, 1), "recipe": "projection"}, "need recipe='finetune'"),
])
def test_config_refuses_bad_widths(kw, match):
    with pytest.raises(NestembError, match=match) as e:
        TextTrainConfig(**kw)
    assert e.value.param == "widths"


def test_manifest_with_bad_widths_is_refused(trained, tmp_path):
    import shutil

    folder, _before, _info = trained
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    man = json.loads((copy / "manifest.json").read_text())
    man["extra"]["widths"] = [0.5, 0.25]
    (copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(NestembError, match=r"manifest.json: extra.widths must be strictly ascending"):
        load_text_model(copy)


# --- CLI --------------------------------------------------------------------------------------


def test_cli_train_and_extract(cli, tiny, tmp_path):
    out = tmp_path / "m"
    r = cli("text", "train", "--base", tiny["model"], "--beir", tiny["beir"], "--out", out,
            "--nesting", "8,32", "--widths", "0.25,0.5,1", "--steps", "2", "--batch-size", "8",
            "--device", "cpu")
    assert r.code == 0, r
    assert "finetune recipe" in r.out and "at widths 0.25, 0.5, 1" in r.out
    parent = load_text_model(out)
    assert parent.widths == WIDTHS
    sub_dir = tmp_path / "sub"
    r = cli("text", "extract", "--model", out, "--width", "0.5", "--out", sub_dir)
    assert r.code == 0, r
    assert "feed-forward 32 of 64 units" in r.out and "0.750 of the full model's" in r.out
    sub = load_text_model(sub_dir)
    assert np.allclose(sub.encode(TEXTS), parent.encode(TEXTS, width=0.5), atol=1e-5)
    assert sub.manifest.extra["parent"]["model_version"] == parent.manifest.model_version
    # refused: an existing output, a width not trained, a model without widths
    r = cli("text", "extract", "--model", out, "--width", "0.5", "--out", sub_dir)
    assert r.code == 2 and "already exists" in r.err, r
    r = cli("text", "extract", "--model", out, "--width", "0.3", "--out", tmp_path / "x")
    assert r.code == 2 and "--width 0.3 is not a trained granularity" in r.err, r
    r = cli("text", "extract", "--model", tiny["model"], "--width", "0.5", "--out", tmp_path / "y")
    assert r.code == 2 and "--model" in r.err and "has no nested widths" in r.err, r
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("args, match", [
    (["--widths", "0.5,0.25,1"], "--widths must be strictly ascending"),
    (["--widths", "half,1"], "--widths must be comma-separated numbers"),
    (["--widths", "0.5,1", "--recipe", "projection"], "--widths (nested feed-forward widths) need recipe='finetune'"),
])
def test_cli_train_refuses_bad_widths(cli, tiny, tmp_path, args, match):
    r = cli("text", "train", "--base", tiny["model"], "--beir", tiny["beir"], "--out",
            tmp_path / "m", "--device", "cpu", *args)
    assert r.code == 2, r
    assert match in r.err.replace("\n", " ") and "Traceback" not in r.err
    assert not (tmp_path / "m").exists()


# --- the bundled MiniLM -----------------------------------------------------------------------


def test_minilm_runs_at_a_quarter_width():
    """MiniLM-L6 (FFN 1536 -> 384 at 1/4), untrained for widths: the slice runs, is finite
    and differs from the full model; width 1 is the full model."""
    enc = load_text_model("minilm")
    texts = ["A man is playing a guitar.", "A woman is slicing an onion.", "A dog runs."]
    full, quarter = enc.encode(texts), enc.encode(texts, width=0.25)
    assert quarter.shape == (3, 384) and np.isfinite(quarter).all()
    assert np.abs(quarter - full).max() > 1e-2
    assert np.array_equal(enc.encode(texts, width=1), full)
    assert [up.out_features for up, _ in ffn_blocks(enc.model)] == [1536] * 6
    assert multiply_adds(enc.model, 0.25) / multiply_adds(enc.model) == 0.5
