"""The image CLI end to end on a tiny synthetic IDX data set, and every bad input."""

import json

import numpy as np
import pytest

from nestemb.data.idx import write_synthetic_idx


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_idx(tmp_path_factory.mktemp("idx"), n_train=150, n_test=40)


def _one_line_error(r, match):
    assert r.code == 2, r
    assert "Traceback" not in r.err
    assert r.err.strip().count("\n") == 0, r.err
    assert match in r.err, r.err


def test_train_eval_roundtrip(cli, data, tmp_path):
    out = tmp_path / "model"
    r = cli("train-image", "--data", data, "--out", out, "--epochs", "1", "--dim", "16",
            "--dims", "2,4,16", "--seed", "1")  # fmt: skip
    assert r.code == 0, r
    man = json.loads((out / "manifest.json").read_text())
    assert man["kind"] == "image-model" and man["nesting"] == [2, 4, 16] and man["dim"] == 16
    assert set(man["sha256"]) == {"weights"} and man["extra"]["config"]["head"] == "mrl"
    assert (out / "checkpoints" / "epoch-1" / "manifest.json").is_file()
    from nestemb.models.image import load_image_model

    emb = load_image_model(out).encode(np.zeros((3, 28, 28), np.uint8))
    assert emb.shape == (3, 16) and emb.dtype == np.float32
    res_path = tmp_path / "eval.json"
    r = cli("eval-image", "--model", out, "--data", data, "--out", res_path)
    assert r.code == 0, r
    res = json.loads(res_path.read_text())
    assert res["dims"] == [2, 4, 16]
    for key in ("linear_top1", "knn_top1", "map10"):
        assert len(res["mrl"][key]) == 3 and all(0 <= v <= 1 for v in res["mrl"][key])
    assert res["cascade"] and {"target", "accuracy", "expected_dim"} <= set(res["cascade"][0])
    # the output directory is not overwritten without --overwrite
    r = cli("train-image", "--data", data, "--out", out, "--epochs", "1", "--dim", "16",
            "--dims", "2,4,16")  # fmt: skip
    _one_line_error(r, "already exists")


def test_ff_and_mrl_e_heads(cli, data, tmp_path):
    r = cli("train-image", "--data", data, "--out", tmp_path / "ff", "--epochs", "1",
            "--head", "ff", "--dims", "4", "--no-checkpoints")  # fmt: skip
    assert r.code == 0, r
    man = json.loads((tmp_path / "ff" / "manifest.json").read_text())
    assert man["nesting"] == [4] and man["dim"] == 4
    r = cli("train-image", "--data", data, "--out", tmp_path / "e", "--epochs", "1",
            "--head", "mrl-e", "--dim", "8", "--weights", "1,1,1")  # fmt: skip
    assert r.code == 0, r
    r = cli("eval-image", "--model", tmp_path / "ff", "--data", data, "--out", tmp_path / "f.json")
    assert r.code == 0, r
    assert json.loads((tmp_path / "f.json").read_text())["cascade"] == []


def test_quickstart_writes_results(cli, data, tmp_path):
    out = tmp_path / "qs"
    r = cli("quickstart", "--data", data, "--out", out, "--epochs", "1")
    assert r.code == 0, r
    res = json.loads((out / "results.json").read_text())
    assert res["dims"] == [2, 4, 8, 16, 32, 64, 128, 256]
    assert {"linear_top1", "knn_top1", "map10"} <= set(res["mrl"])
    assert res["cascade"] and res["train_seconds"] > 0
    assert (out / "accuracy_vs_dim.png").stat().st_size > 0
    assert (out / "model" / "manifest.json").is_file() and (out / "model" / "weights").is_file()
    assert "linear top-1" in r.out
    _one_line_error(cli("quickstart", "--data", data, "--out", out, "--epochs", "1"), "--overwrite")


@pytest.mark.parametrize(
    "args, match",
    [
        (["--dims", "8,4,256"], "strictly ascending"),
        (["--dims", "2,2,256"], "duplicate"),
        (["--dims", "0,4,256"], "positive"),
        (["--dims", "2,4,512"], "larger than the embedding dimension 256"),
        (["--dims", "2,x"], "comma-separated integers"),
        (["--weights", "1,2"], "got 2 prefix weights for a nesting of 8 dimensions"),
        (["--weights", "1,a"], "weights must be comma-separated numbers"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--head", "ff", "--dims", "2,4"], "one fixed size"),
        (["--head", "xl"], "--head must be"),
    ],
)
def test_train_bad_options(cli, data, tmp_path, args, match):
    out = tmp_path / "out"
    r = cli("train-image", "--data", data, "--out", out, *args)
    _one_line_error(r, match)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary directory left either


def _bad_data(kind, src, tmp_path):
    d = tmp_path / "bad"
    if kind == "missing":
        return d
    d.mkdir()
    if kind == "empty":
        (d / "readme.txt").write_text("no data")
        return d
    for p in src.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    target = d / "train-images-idx3-ubyte.gz"
    raw = target.read_bytes()
    if kind == "truncated":
        target.write_bytes(raw[: len(raw) // 2])
    else:  # corrupt
        target.write_bytes(raw[:20] + bytes(b ^ 0x5A for b in raw[20:60]) + raw[60:])
    return d


@pytest.mark.parametrize(
    "kind, match",
    [
        ("missing", "data folder not found"),
        ("empty", "holds no IDX pair"),
        ("truncated", "train-images-idx3-ubyte.gz"),
        ("corrupt", "train-images-idx3-ubyte.gz"),
    ],
)
@pytest.mark.parametrize("command", ["train-image", "quickstart"])
def test_bad_data(cli, data, tmp_path, kind, match, command):
    d = _bad_data(kind, data, tmp_path)
    out = tmp_path / "out"
    args = ["--epochs", "1"]
    r = cli(command, "--data", d, "--out", out, *args)
    _one_line_error(r, match)
    assert not out.exists()


def test_eval_bad_model(cli, data, tmp_path):
    _one_line_error(
        cli("eval-image", "--model", tmp_path / "none", "--data", data, "--out", tmp_path / "r.json"),
        "model directory not found",
    )
    assert not (tmp_path / "r.json").exists()
