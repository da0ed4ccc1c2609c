"""``nestemb compare A B`` end to end, and its errors (exit 2, one line)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import nestemb.cli.compare  # noqa: F401  (registers the command until cli/__init__ imports it)
from nestemb.compare import compare_prefixes
from nestemb.index import synthetic_matryoshka
from nestemb.nesting import Manifest
from nestemb.folders import save_embeddings

N, D = 300, 32


@pytest.fixture
def pair(tmp_path):
    X = synthetic_matryoshka(N, D, seed=0)
    rng = np.random.default_rng(1)
    Y = (X @ np.linalg.qr(rng.normal(size=(D, D)))[0] + 0.05 * rng.normal(size=X.shape)).astype("float32")
    ids = [f"doc{i}" for i in range(N)]
    a = save_embeddings(tmp_path / "a", X, Manifest(model_id="m-a", nesting=(8, 16, 32), dim=D), ids=ids)
    b = save_embeddings(tmp_path / "b", Y[:, :16], Manifest(model_id="m-b", nesting=(4, 8, 16), dim=16), ids=ids)
    return tmp_path, a, b, X, Y[:, :16], ids


def test_compare_table_json_and_heatmaps(cli, pair):
    tmp, a, b, X, Y, _ = pair
    r = cli("compare", "--embeddings-a", a, "--embeddings-b", b, "--out", tmp / "cmp", "--permutations", "20", "--neighbours", "5")
    assert r.code == 0, r
    lines = r.out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("dim"))
    assert header.split() == ["dim", "cka", "cka-debiased", "procrustes", "mutual-knn",
                              "neuron-one-to-one", "neuron-semi", "knn-null", "knn-p"]
    rows = [line.split() for line in lines[lines.index(header) + 1:] if line.split()[0].isdigit()]
    assert [row[0] for row in rows] == ["8", "16"]  # the prefixes both nestings have
    result = json.loads((tmp / "cmp" / "compare.json").read_text())
    assert result["dims_x"] == [8, 16, 32] and result["dims_y"] == [4, 8, 16]
    assert result["a"]["model_id"] == "m-a" and result["b"]["nesting"] == [4, 8, 16]
    ref = compare_prefixes(X, Y, (8, 16, 32), (4, 8, 16), measure=("cka", "mutual_knn"), k=5)
    np.testing.assert_allclose(result["values"]["cka"], ref["cka"], atol=1e-9)
    np.testing.assert_allclose(result["values"]["mutual_knn"], ref["mutual_knn"])
    assert float(rows[1][1]) == pytest.approx(result["per_prefix"]["cka"]["16"], abs=1e-4)
    assert result["knn_tests"]["16"]["permutations"] == 20
    for name in ("cka", "cka-debiased", "procrustes", "mutual-knn", "neuron-one-to-one", "neuron-semi"):
        assert (tmp / "cmp" / f"{name}.png").stat().st_size > 0


def test_compare_dims_measures_and_sample(cli, pair):
    tmp, a, b, *_ = pair
    r = cli("compare", "--embeddings-a", a, "--embeddings-b", b, "--dims-a", "4,16", "--dims-b", "4,16", "--measures", "cka,mutual-knn",
            "--knn-sample", "100", "--permutations", "0")
    assert r.code == 0, r
    assert "mutual k-NN on 100 sampled items" in r.out
    header = next(line for line in r.out.splitlines() if line.lstrip().startswith("dim"))
    assert header.split() == ["dim", "cka", "mutual-knn"]
    r = cli("compare", "--embeddings-a", a, "--embeddings-b", b, "--dims-a", "32", "--dims-b", "16", "--measures", "cka")
    assert r.code == 0 and "share no prefix" in r.out


def _save(tmp, name, X, ids):
    return save_embeddings(tmp / name, X, Manifest(model_id=name, nesting=(8, 16), dim=16), ids=ids)


def test_compare_refuses_other_items(cli, pair):
    tmp, a, _, X, _, ids = pair
    X = X[:, :16]
    cases = {
        "fewer": (_save(tmp, "fewer", X[:-1], ids[:-1]), "holds 300 items but .* holds 299"),
        "other": (_save(tmp, "other", X, ids[:-1] + ["zzz"]), "hold different items: id 'doc299' is in A but not in B"),
        "order": (_save(tmp, "order", X[::-1], ids[::-1]), r"same items in another order \(row 0: 'doc0' vs 'doc299'\)"),
        "noids": (save_embeddings(tmp / "noids", X, Manifest(model_id="x", nesting=(16,), dim=16)), "has no ids.json"),
    }
    for name, (path, message) in cases.items():
        r = cli("compare", "--embeddings-a", a, "--embeddings-b", path)
        assert r.code == 2, (name, r)
        assert len(r.err.strip().splitlines()) == 1, (name, r.err)

        assert re.search(message, r.err), (name, r.err)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--measures", "cka,svcca"], "--measures must be a comma-separated list of cka, cka-debiased"),
        (["--dims-a", "8,64"], "--dims-a asks for prefix 64 but the file is 32 wide"),
        (["--dims-b", "8,4"], "--dims-b: nesting must be strictly ascending"),
        (["--dims-a", "8,x"], "--dims-a must be comma-separated integers"),
        (["--neighbours", "0"], "--neighbours must be a positive integer, got 0"),
        (["--neighbours", "50", "--knn-sample", "40"],
         "--neighbours must be smaller than the number of items compared"),
        (["--knn-sample", "1"], "--knn-sample must be 0 .* or at least 2"),
        (["--permutations", "-1"], "--permutations must be 0 or positive"),
        (["--threshold", "1.5"], r"--threshold must be a correlation in \[0, 1\]"),
        (["--threads", "-1"], r"--threads must be 0 \(all cores\) or positive"),
    ],
)
def test_compare_bad_flags(cli, pair, args, message):
    tmp, a, b, *_ = pair
    r = cli("compare", "--embeddings-a", a, "--embeddings-b", b, *args)
    assert r.code == 2, r

    assert re.search(message, r.err) and len(r.err.strip().splitlines()) == 1, r.err


def test_compare_bad_paths(cli, pair):
    tmp, a, b, *_ = pair
    r = cli("compare", "--embeddings-a", a, "--embeddings-b", tmp / "missing")
    assert r.code == 2 and "embedding directory not found" in r.err, r
    (tmp / "taken").mkdir()
    (tmp / "taken" / "x.txt").write_text("x")
    r = cli("compare", "--embeddings-a", a, "--embeddings-b", b, "--out", tmp / "taken")
    assert r.code == 2 and "already exists and is not empty" in r.err, r
    assert (tmp / "taken" / "x.txt").read_text() == "x"
