"""Issue 20 for ``compat``, ``adapter``, ``retrofit`` and ``compare``: no silent wrong answer
(labels looked up in another split, a prefix no model has, duplicate ids) and messages in the
user's terms (flags on the CLI, parameters in Python)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nestemb.maps import ModelRef, fit_adapter
from nestemb.data.idx import write_idx
from nestemb.errors import NestembError
from nestemb.nesting import Manifest
from nestemb.folders import save_embeddings

N_TRAIN, N_TEST = 90, 30


def _err(r, *parts):
    assert r.code == 2, r
    assert "Traceback" not in r.err and r.err.strip().count("\n") == 0, r.err
    for p in parts:
        assert p in r.err, r.err


def _man(model_id, version, dim, **extra):
    nesting = tuple(d for d in (4, 8, 16, 32, 64) if d <= dim)
    return Manifest(model_id=model_id, model_version=version, nesting=nesting, dim=dim,
                    extra=dict(extra))


@pytest.fixture(scope="module")
def idx_world(tmp_path_factory):
    """An IDX folder (train: 90 labels, t10k: 30) and two models' embeddings of its splits,
    each manifest recording the split it was embedded from, as ``nestemb embed --data`` does."""
    d = tmp_path_factory.mktemp("idx_world")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    train_l, test_l = rng.integers(0, 3, N_TRAIN), rng.integers(0, 3, N_TEST)
    idx = d / "idx"
    idx.mkdir()
    write_idx(idx / "train-labels-idx1-ubyte.gz", train_l.astype(np.uint8))
    write_idx(idx / "t10k-labels-idx1-ubyte.gz", test_l.astype(np.uint8))
    for name, labels, split in (("g", train_l, "train"), ("q", test_l, "t10k")):
        X = centres[labels] + 0.5 * rng.normal(size=(len(labels), 16))
        for model, ver, dim in (("old-net", "aaaa", 8), ("new-net", "bbbb", 16)):
            save_embeddings(d / f"{name}_{model}", X[:, :dim],
                            _man(model, ver, dim, split=split, source=str(idx)),
                            ids=list(range(len(labels))))
    return d


def _matrix(d, *extra, q="q", g="g"):
    return ["compat", "--queries", d / f"{q}_old-net", "--gallery", d / f"{g}_old-net",
            "--queries", d / f"{q}_new-net", "--gallery", d / f"{g}_new-net",
            "--data", d / "idx", *extra]


# ------------------------------------------------------------------ 1. labels of another split


def test_matrix_refuses_labels_of_another_split(cli, idx_world, tmp_path):
    d = idx_world
    r = cli(*_matrix(d, "--out", tmp_path / "ok"))  # defaults: queries t10k, gallery train
    assert r.code == 0, r
    # queries embedded from t10k looked up in train: every id is a valid train row, so this
    # printed chance-level numbers before
    r = cli(*_matrix(d, "--query-split", "train", "--out", tmp_path / "m"))
    _err(r, "--query-split", "t10k", "train")
    assert not (tmp_path / "m").exists()
    r = cli(*_matrix(d, "--gallery-split", "t10k", "--out", tmp_path / "m"))
    _err(r, "--gallery-split", "train", "t10k")


def test_matrix_refuses_one_model_of_another_split(cli, idx_world, tmp_path):
    """Every model's file is checked, not only the first one's ids."""
    d = idx_world
    X = np.random.default_rng(1).normal(size=(N_TEST, 16))
    save_embeddings(tmp_path / "q_new-net", X, _man("new-net", "bbbb", 16, split="train"),
                    ids=list(range(N_TEST)))
    r = cli("compat", "--queries", d / "q_old-net", "--gallery", d / "g_old-net",
            "--queries", tmp_path / "q_new-net", "--gallery", d / "g_new-net",
            "--data", d / "idx", "--out", tmp_path / "m")
    _err(r, str(tmp_path / "q_new-net"), "train", "--query-split", "t10k")


def test_matrix_refuses_unrecorded_split_of_another_size(cli, idx_world, tmp_path):
    """Embeddings without a recorded split: a row count that is not the split's is refused."""
    X = np.random.default_rng(2).normal(size=(N_TEST, 8))
    for name in ("q", "g"):
        save_embeddings(tmp_path / f"{name}_old-net", X if name == "q" else
                        np.random.default_rng(3).normal(size=(N_TRAIN, 8)),
                        _man("old-net", "aaaa", 8), ids=list(range(N_TEST if name == "q" else N_TRAIN)))
    base = ["compat", "--queries", tmp_path / "q_old-net", "--gallery",
            tmp_path / "g_old-net", "--data", idx_world / "idx", "--out", tmp_path / "m"]
    assert cli(*base).code == 0
    _err(cli(*base, "--query-split", "train", "--overwrite"), "--query-split", f"{N_TEST} rows",
         f"{N_TRAIN} labels")


# ------------------------------------------------------------------ 2. prefixes no model has


def test_matrix_dims_wider_than_every_model_refused_alike(cli, idx_world, tmp_path):
    d = idx_world
    for dims, bad in (("4,32", "32"), ("1000", "1000"), ("4,8,16,32", "32")):
        r = cli(*_matrix(d, "--dims", dims, "--out", tmp_path / "m"))
        _err(r, "--dims", bad, "old-net", "new-net")
    # a prefix one model has and the other lacks: the table says why a cell is empty
    r = cli(*_matrix(d, "--dims", "16", "--out", tmp_path / "m"))
    assert r.code == 0, r
    assert " - " in r.out + " " and "narrower than the prefix" in r.out
    # library errors about a parameter name the command's flag
    _err(cli(*_matrix(d, "--names", "a,a", "--out", tmp_path / "m2")),
         "--names must have distinct names")
    _err(cli(*_matrix(d, "-k", "5", "--out", tmp_path / "m2")), "--k does not apply to metric")


# ------------------------------------------------------------------ 4. messages


def test_adapter_messages_python_terms():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 256))
    with pytest.raises(NestembError) as e:
        fit_adapter(X, X @ np.linalg.qr(rng.normal(size=(256, 256)))[0])
    assert "needs at least 256 paired rows, got 64" in str(e.value)
    assert "underdetermined" in str(e.value) and e.value.param == "underdetermined"
    ref = ModelRef("m", "v1", 256)
    with pytest.raises(NestembError) as e:
        fit_adapter(X, X, source_ref=ref, target_ref=ref, underdetermined=True)
    assert "same model" in str(e.value) and "source_ref" not in str(e.value)
    unknown = ModelRef("api", "unknown", 256)
    with pytest.raises(NestembError) as e:
        fit_adapter(X, X, source_ref=unknown, underdetermined=True)
    assert "trust_unknown" in str(e.value) and e.value.param == "trust_unknown"


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 16))
    save_embeddings(d / "src", X, _man("src-net", "aaaa", 16), ids=list(range(40)))
    save_embeddings(d / "tgt", X @ np.linalg.qr(rng.normal(size=(16, 16)))[0],
                    _man("tgt-net", "bbbb", 16), ids=list(range(40)))
    return d


def test_adapter_cli_messages(cli, pairs_dir, tmp_path):
    d = pairs_dir
    fit = ["adapter", "fit", "--source", d / "src", "--target", d / "tgt"]
    r = cli(*fit, "--out", tmp_path / "a1")
    assert r.code == 0, r
    assert "fitted an orthogonal adapter" in r.out
    # too few rows: the message names the flag that allows it, and the flag exists
    _err(cli(*fit, "--sample", "8", "--out", tmp_path / "a2"), "needs at least 16 paired rows",
         "--underdetermined")
    r = cli(*fit, "--sample", "8", "--underdetermined", "--out", tmp_path / "a2")
    assert r.code == 0, r
    _err(cli(*fit, "--kind", "mlp", "--underdetermined", "--out", tmp_path / "a3"),
         "--underdetermined applies to")
    _err(cli(*fit, "--ridge", "-1", "--kind", "affine", "--out", tmp_path / "a3"),
         "--ridge must be")
    _err(cli(*fit, "--epochs", "0", "--kind", "mlp", "--out", tmp_path / "a3"),
         "--epochs must be")


def test_retrofit_cli_messages(cli, pairs_dir, tmp_path):
    r = cli("retrofit", "fit", "--embeddings", pairs_dir / "src", "--out", tmp_path / "ad",
            "--kind", "mlp", "--steps", "1", "--neighbours", "2")
    assert r.code == 0, r
    assert "fitted an mlp nesting retrofit" in r.out and "(1 step)" in r.out
    _err(cli("retrofit", "fit", "--embeddings", pairs_dir / "src", "--out", tmp_path / "ad2",
             "--neighbours", "50"), "--embeddings has 40 rows")


# ------------------------------------------------------------------ 5. duplicate ids


def _with_ids(path, ids):
    """Rewrite an embedding directory's ids (and their checksum): a file written elsewhere."""
    (path / "ids.json").write_text(json.dumps(ids))
    man = json.loads((path / "manifest.json").read_text())
    import hashlib

    man["sha256"]["ids.json"] = hashlib.sha256((path / "ids.json").read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(man))


def test_compare_duplicate_ids_named(cli, tmp_path):
    X = np.random.default_rng(0).normal(size=(20, 8))
    ids = [f"doc{i}" for i in range(20)]
    for name in ("a", "b"):
        save_embeddings(tmp_path / name, X, _man("m", "v", 8), ids=ids)
    dup = ids[:5] + ["doc3"] + ids[6:]
    _with_ids(tmp_path / "a", dup)
    _with_ids(tmp_path / "b", dup)
    r = cli("compare", "--embeddings-a", tmp_path / "a", "--embeddings-b", tmp_path / "b", "--measures", "cka")
    _err(r, "'doc3'")
    assert "another order" not in r.err


def test_matrix_ndcg_duplicate_gallery_ids_refused(cli, tmp_path):
    rng = np.random.default_rng(0)
    man = _man("m", "v", 8)
    save_embeddings(tmp_path / "q", rng.normal(size=(4, 8)), man, ids=[f"q{i}" for i in range(4)])
    save_embeddings(tmp_path / "g", rng.normal(size=(6, 8)), man, ids=[f"d{i}" for i in range(6)])
    _with_ids(tmp_path / "g", ["d0", "d1", "d2", "d1", "d4", "d5"])
    (tmp_path / "beir" / "qrels").mkdir(parents=True)
    (tmp_path / "beir" / "qrels" / "test.tsv").write_text("q0\td1\t1\nq1\td2\t1\n")
    r = cli("compat", "--queries", tmp_path / "q", "--gallery", tmp_path / "g",
            "--metric", "ndcg", "--beir", tmp_path / "beir", "--out", tmp_path / "m")
    _err(r, "'d1'")


def test_beir_duplicate_corpus_id_refused(tmp_path):
    from nestemb.data.beir import load_beir

    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n{"_id": "d1", "text": "c"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(NestembError, match=r"corpus.jsonl:3 \(_id 'd1'\): duplicate _id \(first on line 1\)"):
        load_beir(tmp_path, "test")


def test_evaluate_retrieval_duplicate_ids_refused():
    from nestemb.eval.retrieval import evaluate_retrieval

    q = np.eye(2, 4)
    d = np.eye(3, 4)
    with pytest.raises(NestembError, match="'d1'"):
        evaluate_retrieval(q, d, ["q0", "q1"], ["d0", "d1", "d1"], {"q0": {"d0": 1}}, (4,))
