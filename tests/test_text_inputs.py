"""Issue 20 for the text commands: every input (files, flags, prefixes and layers against the
model's shape) is checked before the model is loaded, and messages name the CLI's flags."""

from __future__ import annotations

import pytest

from nestemb.text._tiny import make_tiny_beir, make_tiny_model, make_tiny_sts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_inputs")
    return {
        "model": make_tiny_model(root / "model", hidden=32, layers=2),
        "beir": make_tiny_beir(root / "beir"),
        "sts": make_tiny_sts(root / "sts.csv"),
    }


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model is loaded (a bad input must be refused before)."""
    import sentence_transformers

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", refuse)


@pytest.mark.parametrize("cmd, args, match", [
    ("eval-sts", ["--dims", "8,64"], "dimension 64 is beyond the model's width 32"),
    ("eval-sts", ["--layers", "3"], "layer 3 is beyond the model's depth: it has 2 layers"),
    ("eval-retrieval", ["--dims", "8,64"], "dimension 64 is beyond the model's width 32"),
    ("eval-retrieval", ["--dims", "8", "--layers", "1,3"], "layer 3 is beyond the model's depth"),
    ("train", ["--nesting", "8,16,64"], "beyond the model's width 32"),
    ("train", ["--nesting", "8,16", "--recipe", "finetune"], "the last of --nesting must be the model width 32"),
    ("train", ["--dims", "8,32", "--layers", "5", "--recipe", "finetune"],
     "beyond the model's depth"),
])
def test_shape_errors_before_model_load(cli, tiny, tmp_path, no_model_load, cmd, args, match):
    data = {"eval-sts": ["--sts", tiny["sts"], "--out", tmp_path / "r.json"],
            "eval-retrieval": ["--beir", tiny["beir"], "--out", tmp_path / "r.json"],
            "train": ["--beir", tiny["beir"], "--out", tmp_path / "m"]}[cmd]
    flag = "--base" if cmd == "train" else "--model"
    r = cli("text", cmd, *data, flag, tiny["model"], *args)
    assert r.code == 2, r
    assert match in r.err.replace("\n", " ") and "Traceback" not in r.err
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "m").exists()


def test_bundled_minilm_shape_checked_before_load(cli, tiny, tmp_path, no_model_load):
    r = cli("text", "eval-sts", "--sts", tiny["sts"], "--out", tmp_path / "r.json",
            "--dims", "8,1000")
    assert r.code == 2 and "dimension 1000 is beyond the model's width 384" in r.err, r


def test_train_no_data_names_flags(cli, tiny, tmp_path, no_model_load):
    r = cli("text", "train", "--base", tiny["model"], "--out", tmp_path / "m")
    assert r.code == 2, r
    assert "--beir" in r.err and "--sts" in r.err and "--nli" in r.err and "--pairs" in r.err


def test_library_names_parameters(tiny):
    from nestemb.errors import NestembError
    from nestemb.text.evaluate import run_eval_sts
    from nestemb.text.train import TextTrainConfig

    with pytest.raises(NestembError) as e:
        run_eval_sts(tiny["sts"], tiny["model"], [8], batch_size=0)
    assert e.value.param == "batch_size" and str(e.value).startswith("batch_size ")
    with pytest.raises(NestembError) as e:
        TextTrainConfig(steps=0)
    assert e.value.param == "steps" and str(e.value) == "steps must be at least 1, got 0"
