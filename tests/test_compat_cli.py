"""``nestemb compat matrix`` and ``nestemb adapter fit|apply`` end to end, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nestemb.compat import compatibility_matrix
from nestemb.data.idx import write_idx
from nestemb.nesting import Manifest, check_compatible
from nestemb.folders import load_embeddings, save_embeddings

N_G, N_Q = 120, 30
OLD = Manifest(model_id="old-net", model_version="aaaa", nesting=(4, 8), dim=8)
NEW = Manifest(model_id="new-net", model_version="bbbb", nesting=(4, 8, 16), dim=16)


def _one_line_error(r, match):
    assert r.code == 2, r
    assert "Traceback" not in r.err
    assert r.err.strip().count("\n") == 0, r.err
    assert match in r.err, r.err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two models over the same queries and gallery (the new one's 8-d prefix is the old
    space, plus noise), labels as files and as an IDX folder, and a BEIR folder."""
    d = tmp_path_factory.mktemp("compat")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    gl, ql = rng.integers(0, 5, N_G), rng.integers(0, 5, N_Q)
    g_new = centres[gl] + 0.8 * rng.normal(size=(N_G, 16))
    q_new = centres[ql] + 0.8 * rng.normal(size=(N_Q, 16))
    g_old = g_new[:, :8] + 0.3 * rng.normal(size=(N_G, 8))
    q_old = q_new[:, :8] + 0.3 * rng.normal(size=(N_Q, 8))
    gids, qids = list(range(N_G)), list(range(N_Q))
    for name, X, man, ids in (("g_old", g_old, OLD, gids), ("q_old", q_old, OLD, qids),
                              ("g_new", g_new, NEW, gids), ("q_new", q_new, NEW, qids)):
        save_embeddings(d / name, X, man, ids=ids)
    # text-style ids for nDCG
    save_embeddings(d / "tg_old", g_old, OLD, ids=[f"d{i}" for i in gids])
    save_embeddings(d / "tq_old", q_old, OLD, ids=[f"q{i}" for i in qids])
    save_embeddings(d / "tg_new", g_new, NEW, ids=[f"d{i}" for i in gids])
    save_embeddings(d / "tq_new", q_new, NEW, ids=[f"q{i}" for i in qids])
    np.save(d / "ql.npy", ql)
    (d / "gl.txt").write_text("\n".join(str(v) for v in gl) + "\n")
    idx = d / "idx"
    idx.mkdir()
    write_idx(idx / "t10k-labels-idx1-ubyte.gz", ql.astype(np.uint8))
    write_idx(idx / "train-labels-idx1-ubyte.gz", gl.astype(np.uint8))
    beir = d / "beir"
    (beir / "qrels").mkdir(parents=True)
    lines = ["query-id\tcorpus-id\tscore"]
    qrels = []
    for i in range(N_Q):
        rel = {int(j): 1 for j in np.flatnonzero(gl == ql[i])[:4]} if i % 5 else {}
        qrels.append(rel)
        lines += [f"q{i}\td{j}\t1" for j in rel]
    (beir / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return {"dir": d, "gl": gl, "ql": ql, "qrels": qrels, "X": (q_old, q_new, g_old, g_new)}


def _pairs(d, prefix=""):
    return ["--queries", d / f"{prefix}q_old", "--gallery", d / f"{prefix}g_old",
            "--queries", d / f"{prefix}q_new", "--gallery", d / f"{prefix}g_new"]


def test_matrix_with_label_files(cli, world, tmp_path):
    d = world["dir"]
    out = tmp_path / "m"
    r = cli("compat", *_pairs(d), "--query-labels", d / "ql.npy",
            "--gallery-labels", d / "gl.txt", "--out", out)
    assert r.code == 0, r
    assert "top1 at 8 dims" in r.out and "AC " in r.out and "old-net" in r.out
    res = json.loads((out / "matrix.json").read_text())
    assert res["models"] == ["old-net", "new-net"] and res["dims"] == [4, 8, 16]
    q_old, q_new, g_old, g_new = world["X"]
    want = compatibility_matrix([q_old, q_new], [g_old, g_new], dims=(4, 8, 16),
                                query_labels=world["ql"], gallery_labels=world["gl"],
                                progress=False)
    np.testing.assert_allclose(
        np.array([[[np.nan if v is None else v for v in c] for c in row] for row in res["values"]]),
        want.values)
    assert res["values"][0][1][2] is None  # the old model has no 16-d prefix
    for name in ("heatmap.png", "heatmap-4.png", "heatmap-8.png", "heatmap-16.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    _one_line_error(cli("compat", *_pairs(d), "--query-labels", d / "ql.npy",
                        "--gallery-labels", d / "gl.txt", "--out", out), "--overwrite")


def test_matrix_with_idx_labels_and_map(cli, world, tmp_path):
    d = world["dir"]
    r = cli("compat", *_pairs(d), "--data", d / "idx", "--metric", "map", "-k", "10",
            "--dims", "8", "--names", "M0,M1", "--out", tmp_path / "m")
    assert r.code == 0, r
    res = json.loads((tmp_path / "m" / "matrix.json").read_text())
    assert res["models"] == ["M0", "M1"] and res["metric"] == "map" and res["dims"] == [8]
    q_old, q_new, g_old, g_new = world["X"]
    want = compatibility_matrix([q_old, q_new], [g_old, g_new], dims=(8,), metric="map", k=10,
                                query_labels=world["ql"], gallery_labels=world["gl"],
                                progress=False)
    np.testing.assert_allclose(np.array(res["values"])[:, :, 0], want.at(8))


def test_matrix_ndcg_with_beir(cli, world, tmp_path):
    d = world["dir"]
    r = cli("compat", *_pairs(d, "t"), "--metric", "ndcg", "--beir", d / "beir",
            "--out", tmp_path / "m")
    assert r.code == 0, r
    res = json.loads((tmp_path / "m" / "matrix.json").read_text())
    q_old, q_new, g_old, g_new = world["X"]
    want = compatibility_matrix([q_old, q_new], [g_old, g_new], dims=(4, 8, 16), metric="ndcg",
                                qrels=world["qrels"], progress=False)
    np.testing.assert_allclose(res["values"][1][1][2], want.values[1, 1, 2])


def test_matrix_errors(cli, world, tmp_path):
    d = world["dir"]
    labels = ["--query-labels", d / "ql.npy", "--gallery-labels", d / "gl.txt"]
    out = ["--out", tmp_path / "m"]
    # files that do not hold the same items
    save_embeddings(tmp_path / "short", world["X"][3][:-1], NEW, ids=list(range(N_G - 1)))
    r = cli("compat", "--queries", d / "q_old", "--gallery", d / "g_old",
            "--queries", d / "q_new", "--gallery", tmp_path / "short", *labels, *out)
    _one_line_error(r, f"--gallery files do not hold the same items: {tmp_path / 'short'} has "
                       f"{N_G - 1} rows, {d / 'g_old'} {N_G}")
    save_embeddings(tmp_path / "shuffled", world["X"][3], NEW,
                    ids=[1, 0] + list(range(2, N_G)))
    r = cli("compat", "--queries", d / "q_old", "--gallery", d / "g_old",
            "--queries", d / "q_new", "--gallery", tmp_path / "shuffled", *labels, *out)
    _one_line_error(r, "the ids of")
    assert "(row 0: 1 vs 0)" in r.err
    # a query/gallery pair from two models
    r = cli("compat", "--queries", d / "q_old", "--gallery", d / "g_new", *labels, *out)
    _one_line_error(r, "come from different models")
    (tmp_path / "beir2" / "qrels").mkdir(parents=True)
    (tmp_path / "beir2" / "qrels" / "test.tsv").write_text("q1\td999\t1\n")
    r = cli("compat", "--queries", d / "q_old", *labels, *out)
    assert r.code == 2 and "Missing option '--gallery'" in r.err  # click's own usage error
    for args, match in [
        ([*_pairs(d)[:6], *labels, *out], "give one --gallery per --queries"),
        ([*_pairs(d), *out], "--metric top1 needs labels"),
        ([*_pairs(d), *labels, "--beir", d / "beir", *out], "--beir applies to --metric ndcg"),
        ([*_pairs(d), *labels, "--data", d / "idx", *out], "not both"),
        ([*_pairs(d, "t"), "--metric", "ndcg", *labels, *out], "apply to --metric top1/map"),
        ([*_pairs(d, "t"), "--metric", "ndcg", *out], "needs --beir"),
        ([*_pairs(d), "--query-labels", d / "gl.txt", "--gallery-labels", d / "gl.txt", *out],
         f"holds {N_G} labels for {N_Q} embeddings"),
        ([*_pairs(d), "--query-labels", d / "nope.npy", "--gallery-labels", d / "gl.txt", *out],
         "--query-labels file not found"),
        ([*_pairs(d), *labels, "--names", "a", *out], "--names gives 1 names for 2 models"),
        ([*_pairs(d), *labels, "--dims", "8,4", *out], "strictly ascending"),
        ([*_pairs(d), *labels, "--dims", "32", *out], "--dims asks for prefix 32, wider than every model"),
        ([*_pairs(d), *labels, "-k", "5", *out], "k does not apply to metric 'top1'"),
        ([*_pairs(d), "--metric", "ndcg", "--beir", d / "beir", *out],
         "no query of the query embeddings is judged"),  # integer ids: nothing matches
        ([*_pairs(d, "t"), "--metric", "ndcg", "--beir", tmp_path / "beir2", *out],
         "judges corpus id 'd999' for query 'q1', which is not in the gallery embeddings"),
        ([*_pairs(d, "t"), "--data", d / "idx", *out], "not row numbers"),
        ([*_pairs(d, "t"), "--metric", "ndcg", "--beir", d / "beir", "--split", "dev", *out],
         "splits present: ['test']"),
        (["--queries", d / "missing", "--gallery", d / "g_old", *labels, *out],
         "--queries embedding directory not found"),
    ]:
        _one_line_error(cli("compat", *args), match)


def test_adapter_fit_apply(cli, world, tmp_path):
    d = world["dir"]
    ad = tmp_path / "ad"
    r = cli("adapter", "fit", "--source", d / "g_old", "--target", d / "g_new", "--kind",
            "affine", "--sample", "60", "--out", ad)
    assert r.code == 0, r
    assert "on 60 pairs" in r.out and "old-net (8 dims) -> new-net (16 dims)" in r.out
    man = json.loads((ad / "manifest.json").read_text())
    assert man["kind"] == "adapter" and man["nesting"] == [4, 8, 16]
    assert man["extra"]["adapter"]["source"]["model_version"] == "aaaa"
    r = cli("adapter", "apply", "--adapter", ad, "--embeddings", d / "q_old", "--out",
            tmp_path / "mapped")
    assert r.code == 0, r
    Y, m, ids = load_embeddings(tmp_path / "mapped", with_ids=True)
    check_compatible(m, NEW)  # an index of the new model accepts these
    assert Y.shape == (N_Q, 16) and ids == list(range(N_Q))
    assert m.extra["adapted"]["adapter_path"] == str(ad)
    # the mapped old queries search the new gallery through the usual path
    r = cli("compat", "--queries", tmp_path / "mapped", "--gallery", d / "g_new",
            "--names", "old->new", "--query-labels", d / "ql.npy", "--gallery-labels",
            d / "gl.txt", "--out", tmp_path / "m")
    assert r.code == 0, r


def test_adapter_mlp_and_orthogonal(cli, world, tmp_path):
    d = world["dir"]
    r = cli("adapter", "fit", "--source", d / "g_new", "--target", d / "g_old", "--kind", "mlp",
            "--epochs", "2", "--hidden", "8", "--threads", "1", "--out", tmp_path / "mlp")
    assert r.code == 0, r
    r = cli("adapter", "fit", "--source", d / "g_new", "--target", d / "g_old",
            "--out", tmp_path / "orth")
    assert r.code == 0, r
    r = cli("adapter", "apply", "--adapter", tmp_path / "orth", "--embeddings", d / "q_new",
            "--out", tmp_path / "q_in_old")
    assert r.code == 0, r
    assert load_embeddings(tmp_path / "q_in_old")[1].model_id == "old-net"


def test_adapter_errors(cli, world, tmp_path):
    d = world["dir"]
    fit = ["adapter", "fit", "--out", tmp_path / "ad"]
    r = cli(*fit, "--source", d / "g_old", "--target", d / "q_new")
    _one_line_error(r, f"--source and --target files do not hold the same items: {d / 'q_new'} "
                       f"has {N_Q} rows")
    save_embeddings(tmp_path / "shuffled", world["X"][3], NEW, ids=[1, 0] + list(range(2, N_G)))
    _one_line_error(cli(*fit, "--source", d / "g_old", "--target", tmp_path / "shuffled"),
                    "the ids of")
    for extra, match in [
        (["--ridge", "0.1"], "--ridge applies to kinds 'affine' and 'mlp'"),
        (["--kind", "affine", "--epochs", "3"], "--epochs applies to kind 'mlp' or 'lowrank'"),
        (["--slerp", "0.5"], "--slerp needs equal source and target widths"),
        (["--kind", "mlp", "--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--sample", "500"], f"--sample 500 is larger than the {N_G} paired rows"),
        (["--sample", "5"], "needs at least 8 paired rows, got 5"),
        (["--sample", "0"], "--sample must be a positive integer"),
    ]:
        _one_line_error(cli(*fit, "--source", d / "g_old", "--target", d / "g_new", *extra), match)
    # unknown identity: refused unless trusted
    unknown = Manifest(model_id="api-model", nesting=(8,), dim=8)
    save_embeddings(tmp_path / "unk", world["X"][2], unknown, ids=list(range(N_G)))
    _one_line_error(cli(*fit, "--source", tmp_path / "unk", "--target", d / "g_new"),
                    "set --trust-unknown")
    r = cli(*fit, "--source", tmp_path / "unk", "--target", d / "g_new", "--trust-unknown")
    assert r.code == 0, r
    apply = ["adapter", "apply", "--adapter", tmp_path / "ad"]
    _one_line_error(cli(*apply, "--embeddings", tmp_path / "unk", "--out", tmp_path / "o1"),
                    "set --trust-unknown")
    assert cli(*apply, "--embeddings", tmp_path / "unk", "--out", tmp_path / "o1",
               "--trust-unknown").code == 0
    # wrong direction and wrong model
    _one_line_error(cli(*apply, "--embeddings", d / "g_new", "--out", tmp_path / "o2"),
                    "wrong direction")
    _one_line_error(cli(*apply, "--embeddings", d / "g_old", "--out", tmp_path / "o2"),
                    "wrong model: these vectors come from 'old-net'")
    _one_line_error(cli("adapter", "apply", "--adapter", d / "g_old", "--embeddings", d / "g_old",
                        "--out", tmp_path / "o2"), "not an adapter")
    _one_line_error(cli(*apply, "--embeddings", d / "g_old", "--out", tmp_path / "o1"),
                    "--overwrite")


def test_index_search_through_an_adapter(cli, world, tmp_path):
    """An index built from the old model's gallery answers new-model queries only through the
    new -> old adapter, and then as the brute-force search of the mapped queries does."""
    from nestemb.maps import load_adapter
    from nestemb.exact import exact_search

    d = world["dir"]
    assert cli("index", "build", "--embeddings", d / "g_old", "--out", tmp_path / "idx", "--stages", "4,8",
               "--shortlist", str(N_G)).code == 0
    r = cli("index", "search", tmp_path / "idx", "--queries", d / "q_new")
    _one_line_error(r, "different models")
    assert "--adapter" in r.err
    assert cli("adapter", "fit", "--source", d / "g_new", "--target", d / "g_old",
               "--out", tmp_path / "to_old").code == 0
    assert cli("adapter", "fit", "--source", d / "g_old", "--target", d / "g_new",
               "--out", tmp_path / "to_new").code == 0
    r = cli("index", "search", tmp_path / "idx", "--queries", d / "q_new", "--adapter",
            tmp_path / "to_old", "-k", "5", "--out", tmp_path / "res.json")
    assert r.code == 0, r
    got = json.loads((tmp_path / "res.json").read_text())
    Q, _ = load_embeddings(d / "q_new")
    G, _ = load_embeddings(d / "g_old")
    mapped = load_adapter(tmp_path / "to_old").transform(Q)
    truth = exact_search(G, mapped, 5)[1]
    assert [got[str(i)]["ids"] for i in range(N_Q)] == truth.tolist()
    # the other direction's adapter expects old vectors: refused, naming the direction
    r = cli("index", "search", tmp_path / "idx", "--queries", d / "q_new", "--adapter",
            tmp_path / "to_new")
    _one_line_error(r, "wrong direction")
    r = cli("index", "search", tmp_path / "idx", "--queries", d / "q_old", "--trust-unknown")
    _one_line_error(r, "--trust-unknown applies only with --adapter")
