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
    r = cli("image", "train", "--data", data, "--out", out, "--steps", "2", "--dim", "16",
            "--nesting", "2,4,16", "--seed", "1", "--model-id", "shop-cnn", "--device", "cpu")  # fmt: skip
    assert r.code == 0, r
    man = json.loads((out / "manifest.json").read_text())
    assert man["kind"] == "image-model" and man["nesting"] == [2, 4, 16] and man["dim"] == 16
    assert set(man["sha256"]) == {"weights"} and man["extra"]["config"]["head"] == "mrl"
    assert man["model_id"] == "shop-cnn"
    # the hold-out scales with the data (150 images: a fifth) and is recorded in the manifest
    assert man["extra"]["split"] == {"n": 150, "holdout": 30, "seed": 1}
    assert man["extra"]["training"]["steps"] == 2
    assert (out / "checkpoints" / "epoch-1" / "manifest.json").is_file()
    from nestemb.models.image import load_image_model
    from nestemb.nesting import weights_version

    loaded = load_image_model(out)
    assert man["model_version"] == weights_version(loaded.state_dict())
    emb = loaded.encode(np.zeros((3, 28, 28), np.uint8))
    assert emb.shape == (3, 16) and emb.dtype == np.float32
    res_path = tmp_path / "eval.json"
    r = cli("image", "eval", "--model", out, "--data", data, "--out", res_path)
    assert r.code == 0, r
    assert "30 of the 150 training images held out (seed 1; split from the manifest)" in r.out
    res = json.loads(res_path.read_text())
    assert res["dims"] == [2, 4, 16] and res["calibration"]["source"] == "manifest"
    assert res["model_version"] == man["model_version"]
    for key in ("linear_top1", "knn_top1", "map10"):
        assert len(res["mrl"][key]) == 3 and all(0 <= v <= 1 for v in res["mrl"][key])
    assert res["cascade"] and {"target", "accuracy", "expected_dim"} <= set(res["cascade"][0])
    # the output directory is not overwritten without --overwrite
    r = cli("image", "train", "--data", data, "--out", out, "--steps", "1", "--dim", "16",
            "--nesting", "2,4,16")  # fmt: skip
    _one_line_error(r, "already exists")
    _one_line_error(cli("image", "eval", "--model", out, "--data", data, "--out", res_path),
                    "already exists")  # fmt: skip


def test_ff_and_mrl_e_heads(cli, data, tmp_path):
    r = cli("image", "train", "--data", data, "--out", tmp_path / "ff", "--steps", "1",
            "--head", "ff", "--nesting", "4", "--no-checkpoints")  # fmt: skip
    assert r.code == 0, r
    man = json.loads((tmp_path / "ff" / "manifest.json").read_text())
    assert man["nesting"] == [4] and man["dim"] == 4
    assert not (tmp_path / "ff" / "checkpoints").exists()
    r = cli("image", "train", "--data", data, "--out", tmp_path / "e", "--steps", "1",
            "--head", "mrl-e", "--dim", "8", "--weights", "1,1,1", "--augment", "shift,flip")  # fmt: skip
    assert r.code == 0, r
    train = json.loads((tmp_path / "e" / "train.json").read_text())["train"]
    assert train["augment"] == ["shift", "flip"] and train["weights"] == [1.0, 1.0, 1.0]
    r = cli("image", "eval", "--model", tmp_path / "ff", "--data", data, "--out", tmp_path / "f.json")
    assert r.code == 0, r
    assert json.loads((tmp_path / "f.json").read_text())["cascade"] == []
    assert "no cascade" in r.out


def test_quickstart_writes_results(cli, data, tmp_path):
    out = tmp_path / "qs"
    r = cli("quickstart", "--data", data, "--out", out, "--steps", "1")
    assert r.code == 0, r
    res = json.loads((out / "results.json").read_text())
    assert res["dims"] == [2, 4, 8, 16, 32, 64, 128, 256] and res["steps"] == 1
    man = json.loads((out / "model" / "manifest.json").read_text())
    assert res["calibration"] == {"source": "manifest", **man["extra"]["split"]}
    assert res["model_version"] == man["model_version"]
    assert {"linear_top1", "knn_top1", "map10"} <= set(res["mrl"])
    assert res["cascade"] and res["train_seconds"] > 0
    assert (out / "accuracy_vs_dim.png").stat().st_size > 0
    assert (out / "model" / "manifest.json").is_file() and (out / "model" / "weights").is_file()
    assert "linear top-1" in r.out
    _one_line_error(cli("quickstart", "--data", data, "--out", out, "--steps", "1"), "--overwrite")


@pytest.mark.parametrize(
    "args, match",
    [
        (["--nesting", "8,4,256"], "strictly ascending"),
        (["--nesting", "2,2,256"], "duplicate"),
        (["--nesting", "0,4,256"], "positive"),
        (["--nesting", "2,4,512"], "larger than the embedding dimension 256"),
        (["--nesting", "2,x"], "comma-separated integers"),
        (["--weights", "1,2"], "got 2 prefix weights for a nesting of 8 dimensions"),
        (["--weights", "1,a"], "weights must be comma-separated numbers"),
        (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (["--epochs", "2", "--steps", "3"], "give --epochs or --steps, not both"),
        (["--holdout", "-1"], "--holdout must be >= 0"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--head", "ff", "--nesting", "2,4"], "a fixed-size head (ff) trains one size: give one dimension in --nesting"),
        (["--augment", "shift,rotate"], "--augment takes shift, flip or none, got 'rotate'"),
        (["--model-id", " "], "--model-id must be a non-empty string"),
        (["--holdout", "150"], "holdout of 150 images leaves none of 150 for training"),
    ],
)
def test_train_bad_options(cli, data, tmp_path, args, match):
    out = tmp_path / "out"
    r = cli("image", "train", "--data", data, "--out", out, "--steps", "1", *args) if "--epochs" not in args \
        else cli("image", "train", "--data", data, "--out", out, *args)  # fmt: skip
    _one_line_error(r, match)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary directory left either


@pytest.mark.parametrize(
    "args, match",
    [
        (["--head", "xl"], "Invalid value for '--head'"),
        (["--device", "tpu"], "Invalid value for '--device'"),
        (["--classifier", "knn"], "Invalid value for '--classifier'"),
    ],
)
def test_enum_options_are_checked_by_the_cli(cli, data, tmp_path, args, match):
    r = cli("image", "train", "--data", data, "--out", tmp_path / "out", *args)
    assert r.code == 2 and match in r.err and "Traceback" not in r.err
    assert not (tmp_path / "out").exists()


def test_unavailable_cuda_is_refused(cli, data, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = cli("image", "train", "--data", data, "--out", tmp_path / "out", "--device", "cuda")
    _one_line_error(r, "device 'cuda' is not available")
    assert not (tmp_path / "out").exists()


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
@pytest.mark.parametrize("command", [("image", "train"), ("quickstart",)])
def test_bad_data(cli, data, tmp_path, kind, match, command):
    d = _bad_data(kind, data, tmp_path)
    out = tmp_path / "out"
    r = cli(*command, "--data", d, "--out", out, "--steps", "1")
    _one_line_error(r, match)
    assert not out.exists()


def test_eval_bad_model(cli, data, tmp_path):
    _one_line_error(
        cli("image", "eval", "--model", tmp_path / "none", "--data", data, "--out", tmp_path / "r.json"),
        "model directory not found",
    )
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("command", ["train", "eval"])
def test_threads_zero_is_refused_first(cli, tmp_path, command):
    # issue 9: `image train --threads 0` and `image eval --threads 0` answer alike, before any work
    # (the model and the data below do not exist: the option error comes first)
    args = ("--model", tmp_path / "none") if command == "eval" else ()
    r = cli("image", command, "--data", tmp_path / "no-data", "--out", tmp_path / "out", *args,
            "--threads", "0")  # fmt: skip
    _one_line_error(r, "--threads must be a positive integer, got 0")
    assert not (tmp_path / "out").exists()


def test_train_checks_out_before_loading_data(cli, tmp_path):
    # issue 9: an existing --out was refused only after the whole data set was loaded
    out = tmp_path / "model"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    r = cli("image", "train", "--data", tmp_path / "no-data", "--out", out, "--steps", "1")
    _one_line_error(r, "already exists")
    assert "--overwrite" in r.err
    assert [p.name for p in out.iterdir()] == ["manifest.json"]


def test_eval_shows_progress(cli, data, tmp_path):
    out = tmp_path / "m"
    assert cli("image", "train", "--data", data, "--out", out, "--steps", "1", "--dim", "8",
               "--no-checkpoints").code == 0  # fmt: skip
    r = cli("image", "eval", "--model", out, "--data", data, "--out", tmp_path / "r.json")
    assert r.code == 0, r
    both = r.out + r.err
    assert "encoding images" in both and "260/260" in both  # 150 + 2 x 40 + hold-out 30
    assert "1-NN and mAP@10 per prefix" in both and "3/3" in both


def test_train_compatible_with_an_old_model(cli, data, tmp_path):
    """`--compatible-with` trains against the old model and records it in the manifest;
    setups that cannot be compatible are refused before any training, leaving nothing."""
    common = ("--data", data, "--steps", "2", "--device", "cpu", "--no-checkpoints")
    old = tmp_path / "old"
    assert cli("image", "train", "--out", old, "--dim", "8", "--nesting", "4,8", *common).code == 0
    old_man = json.loads((old / "manifest.json").read_text())
    for method in ("prefix", "bct"):
        new = tmp_path / f"new-{method}"
        r = cli("image", "train", "--out", new, "--dim", "16", "--nesting", "4,8,16",
                "--compatible-with", old, "--compat", method, *common)
        assert r.code == 0, r
        compat = json.loads((new / "manifest.json").read_text())["extra"]["compat"]
        assert compat["method"] == method
        assert compat["old_model"]["model_version"] == old_man["model_version"]
    r = cli("image", "train", "--out", tmp_path / "s", "--dim", "8", "--nesting", "4,8",
            "--compat", "simplex", *common)
    assert r.code == 0, r
    bad = [
        (("--dim", "4", "--nesting", "2,4", "--compatible-with", old), "--compatible-with"),
        (("--dim", "16", "--nesting", "2,16", "--compatible-with", old), "--compatible-with"),
        (("--dim", "16", "--compat", "bct"), "--compat bct needs --compatible-with"),
        (("--dim", "16", "--compat", "simplex", "--compatible-with", old), "drop --compatible-with"),
        (("--dim", "16", "--compatible-with", tmp_path / "nope"), "model directory not found"),
    ]
    for args, match in bad:
        r = cli("image", "train", "--out", tmp_path / "x", *args, *common)
        _one_line_error(r, match)
        assert not (tmp_path / "x").exists()
