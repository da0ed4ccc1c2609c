"""``nestemb embed`` and ``nestemb index build|search|tune`` end to end, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nestemb.index import synthetic_matryoshka
from nestemb.nesting import Manifest, save_embeddings

D = 32
NEST = (8, 16, 32)


@pytest.fixture
def emb(tmp_path):
    X = synthetic_matryoshka(800, D, seed=0)
    Q = synthetic_matryoshka(40, D, seed=1)
    man = Manifest(model_id="demo", nesting=NEST, dim=D)
    g = save_embeddings(tmp_path / "gallery", X, man, ids=[f"doc{i}" for i in range(len(X))])
    q = save_embeddings(tmp_path / "queries", Q, man)
    return tmp_path, g, q


@pytest.mark.parametrize(
    "args",
    [
        ["--type", "funnel", "--dims", "8,16,32", "--shortlist", "200,50", "--prefix-dtype", "int8"],
        ["--type", "funnel", "--first-stage", "hnsw"],
        ["--type", "ivf", "--nlist", "16", "--nprobe", "16", "--rerank", "800", "--codec", "sq8"],
        ["--type", "opq", "--d-search", "16", "--code-bytes", "4", "--nlist", "1", "--rerank", "800"],
    ],
)
def test_build_search_tune(cli, emb, args):
    tmp, g, q = emb
    r = cli("index", "build", g, "--out", tmp / "idx", *args)
    assert r.code == 0, r
    r = cli("index", "search", tmp / "idx", "--queries", q, "-k", "5", "--out", tmp / "res.json")
    assert r.code == 0, r
    res = json.loads((tmp / "res.json").read_text())
    assert len(res) == 40 and all(len(v["ids"]) == 5 for v in res.values())
    assert res["0"]["ids"][0].startswith("doc")
    r = cli("index", "tune", tmp / "idx", "--queries", q, "--recall", "0.9", "-k", "5",
            "--max-queries", "20")
    assert r.code == 0, r
    assert "met" in r.out
    man = json.loads((tmp / "idx" / "manifest.json").read_text())
    assert man["extra"]["tuning"]["target"] == 0.9


def test_cli_errors(cli, emb):
    tmp, g, q = emb
    r = cli("index", "build", g, "--out", tmp / "idx", "--dims", "8,12,32", "--shortlist", "100,50")
    assert r.code == 2 and "not in the nesting" in r.err
    assert not (tmp / "idx").exists()
    r = cli("index", "build", g, "--out", tmp / "idx", "--dims", "16,8,32", "--shortlist", "100,50")
    assert r.code == 2 and "ascending" in r.err
    r = cli("index", "build", tmp / "missing", "--out", tmp / "idx")
    assert r.code == 2 and "not found" in r.err
    r = cli("index", "build", g, "--out", tmp / "idx", "--type", "lsh")
    assert r.code == 2 and "--type" in r.err
    assert cli("index", "build", g, "--out", tmp / "idx", "--dims", "8,32", "--shortlist", "20").code == 0
    r = cli("index", "build", g, "--out", tmp / "idx")
    assert r.code == 2 and "already exists" in r.err
    r = cli("index", "search", tmp / "idx", "--queries", q, "-k", "0")
    assert r.code == 2 and "k must be positive" in r.err
    r = cli("index", "search", tmp / "idx", "--queries", q, "-k", "900")
    assert r.code == 2 and "larger than the index" in r.err
    r = cli("index", "search", tmp / "idx", "--queries", q, "-k", "50")
    assert r.code == 2 and "smaller than k=50" in r.err
    other = save_embeddings(tmp / "q2", synthetic_matryoshka(3, D), Manifest(model_id="x", nesting=NEST, dim=D))
    r = cli("index", "search", tmp / "idx", "--queries", other)
    assert r.code == 2 and "different models" in r.err
    r = cli("index", "tune", tmp / "idx", "--queries", other)
    assert r.code == 2 and "different models" in r.err
    vec = tmp / "idx" / "vectors.npy"
    vec.write_bytes(vec.read_bytes()[:-8])
    r = cli("index", "search", tmp / "idx", "--queries", q)
    assert r.code == 2 and "checksum mismatch" in r.err


def test_embed_text_then_index(cli, tmp_path):
    from nestemb.text.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) for i, t in
                              enumerate(["the cat sits", "a dog runs", "red car drives fast",
                                         "protein cell gene", "man plays guitar"])))
    r = cli("embed", "--model", model, "--input", docs, "--out", tmp_path / "emb")
    assert r.code == 0, r
    qs = tmp_path / "q.txt"
    qs.write_text("the cat sits\nman plays guitar\n")
    assert cli("embed", "--model", model, "--input", qs, "--out", tmp_path / "qemb").code == 0
    assert cli("index", "build", tmp_path / "emb", "--out", tmp_path / "idx", "--dims", "32",
               "--shortlist", "").code == 0
    r = cli("index", "search", tmp_path / "idx", "--queries", tmp_path / "qemb", "-k", "1",
            "--out", tmp_path / "r.json")
    assert r.code == 0, r
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["0"]["ids"] == ["d0"] and res["1"]["ids"] == ["d4"]


def test_embed_images(cli, tmp_path):
    pytest.importorskip("nestemb.models.image")
    from nestemb.models.image import ImageModel, ImageModelConfig, save_image_model

    save_image_model(ImageModel(ImageModelConfig(dim=8, nesting=(2, 8), width=4)), tmp_path / "m")
    imgs = np.random.default_rng(0).integers(0, 255, size=(20, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "imgs.npy", imgs)
    r = cli("embed", "--model", tmp_path / "m", "--input", tmp_path / "imgs.npy", "--out", tmp_path / "e")
    assert r.code == 0, r
    man = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert man["nesting"] == [2, 8] and man["model_id"] == "nestemb-cnn"


def test_embed_errors(cli, tmp_path):
    r = cli("embed", "--model", tmp_path / "nomodel", "--input", tmp_path / "x.txt", "--out", tmp_path / "e")
    assert r.code == 2 and "model not found" in r.err
    g = save_embeddings(tmp_path / "g", synthetic_matryoshka(3, D), Manifest(model_id="x", nesting=NEST, dim=D))
    r = cli("embed", "--model", g, "--input", tmp_path / "x.txt", "--out", tmp_path / "e")
    assert r.code == 2 and "embed needs an image-model or text-model" in r.err
