"""`nestemb backend export|search`: a round trip through Qdrant Edge, qdrant-client local mode
and milvus-lite equals `nestemb index search` on the same index and brute force on the same
vectors; bad inputs exit 2 with a one-line message."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from nestemb.index import FunnelIndex, exact_search, synthetic_matryoshka
from nestemb.nesting import Manifest
from nestemb.folders import save_embeddings

N, D, NQ, K = 400, 32, 12, 10
DIMS, SHORTLIST = (8, 32), (60,)
_MODULE = {"qdrant-edge": "qdrant_edge", "qdrant": "qdrant_client", "milvus": "milvus_lite"}


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (optional extra: pip install 'nestemb[backends]')")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backend-cli")
    X = synthetic_matryoshka(N + NQ, D, seed=3)
    man = Manifest(model_id="demo", nesting=(8, 16, 32), dim=D)
    ids = [f"doc{i}" for i in range(N)]
    save_embeddings(tmp / "emb", X[:N], man, ids=ids)
    save_embeddings(tmp / "queries", X[N:], man, ids=[f"q{i}" for i in range(NQ)])
    index = FunnelIndex(dims=DIMS, shortlist=SHORTLIST, nesting=man.nesting,
                        model_id="demo").add(X[:N], ids=ids)
    index.save(tmp / "index")
    return tmp, X[:N], X[N:], ids


def _target(tmp, engine: str, tag: str) -> str:
    return str(tmp / f"{tag}-{engine}" / ("m.db" if engine == "milvus" else "store"))


@pytest.mark.parametrize("engine,source", [("qdrant-edge", "index"), ("qdrant-edge", "emb"),
                                           ("qdrant", "index"), ("milvus", "emb")])
def test_round_trip_equals_index_search_and_brute_force(cli, files, engine, source):
    _need(_MODULE[engine])
    tmp, X, Q, ids = files
    target = _target(tmp, engine, source)
    if engine == "milvus":
        (tmp / f"{source}-{engine}").mkdir(exist_ok=True)
    stages = [] if source == "index" else ["--stages", "8,32", "--shortlist", "60"]
    r = cli("backend", "export", str(tmp / source), "--engine", engine, "--engine-url", target,
            "--collection", "docs", "--quantize", "none", *stages)
    assert r.code == 0, r.err
    assert f"exported {N} points" in r.out
    out = tmp / f"{source}-{engine}.json"
    exact = ["--exact"] if engine != "milvus" else []
    r = cli("backend", "search", "--engine", engine, "--engine-url", target, "--collection", "docs",
            "--queries", str(tmp / "queries"), "-k", str(K), "--out", str(out), *exact)
    assert r.code == 0, r.err
    got = json.loads(out.read_text())
    ref_out = tmp / f"ref-{source}-{engine}.json"
    r = cli("index", "search", str(tmp / "index"), "--queries", str(tmp / "queries"), "-k",
            str(K), "--out", str(ref_out))
    assert r.code == 0, r.err
    ref = json.loads(ref_out.read_text())
    assert got.keys() == ref.keys()
    same = np.mean([len(set(got[q]["ids"]) & set(ref[q]["ids"])) / K for q in ref])
    assert same == 1.0
    # the funnel re-ranks with the full vector: its scores are the exact cosines of its hits
    for q, qv in zip(ref, Q):
        rows = [ids.index(i) for i in got[q]["ids"]]
        Xn = X[rows] / np.linalg.norm(X[rows], axis=1, keepdims=True)
        np.testing.assert_allclose(got[q]["scores"], Xn @ (qv / np.linalg.norm(qv)), atol=1e-5)
    # a full-vector (single stage) search is brute force
    out1 = tmp / f"{source}-{engine}-full.npz"
    r = cli("backend", "search", "--engine", engine, "--engine-url", target, "--collection", "docs",
            "--queries", str(tmp / "queries"), "-k", str(K), "--stages", "32", "--out", str(out1),
            *exact)
    assert r.code == 0, r.err
    res = np.load(out1)
    _, truth = exact_search(X, Q, K)
    assert [[ids[j] for j in row] for row in truth.tolist()] == res["ids"].tolist()


def test_bad_inputs_exit_2(cli, files, tmp_path):
    _need("qdrant_edge")
    tmp, *_ = files
    cases = [
        (["backend", "export", str(tmp / "emb"), "--engine", "qdrant-edge", "--engine-url",
          str(tmp_path / "e"), "--collection", "c"], "--stages and --shortlist are required"),
        (["backend", "export", str(tmp_path / "nothing"), "--engine", "qdrant-edge",
          "--engine-url", str(tmp_path / "e"), "--collection", "c"], "SOURCE must be"),
        (["backend", "export", str(tmp / "index"), "--engine", "qdrant-edge", "--engine-url",
          str(tmp_path / "e"), "--collection", "c", "--stages", "8,x"], "--stages must be"),
        (["backend", "search", "--engine", "qdrant-edge", "--engine-url", str(tmp_path / "e"),
          "--collection", "nope", "--queries", str(tmp / "queries")], "does not exist"),
        (["backend", "search", "--engine", "qdrant", "--engine-url", "http://127.0.0.1:9",
          "--collection", "c", "--queries", str(tmp / "queries")],
         "cannot reach Qdrant at 'http://127.0.0.1:9'"),
        (["backend", "search", "--engine", "qdrant-edge", "--engine-url", str(tmp_path / "e"),
          "--collection", "c", "--queries", str(tmp / "queries"), "--out",
          str(tmp_path / "r.txt")], "--out must end in .json or .npz"),
        (["backend", "export", str(tmp / "index"), "--engine", "qdrant-edge", "--engine-url",
          str(tmp_path / "e"), "--collection", "../up"], "--collection: invalid name '../up'"),
    ]
    for args, message in cases:
        r = cli(*args)
        assert r.code == 2, (args, r.out, r.err)
        assert message in r.err, (args, r.err)
        assert "Traceback" not in r.err


def test_search_refuses_other_model_and_missing_prefix(cli, files, tmp_path):
    _need("qdrant_edge")
    tmp, X, Q, _ = files
    target = str(tmp_path / "edge")
    r = cli("backend", "export", str(tmp / "index"), "--engine", "qdrant-edge", "--engine-url",
            target, "--collection", "docs")
    assert r.code == 0, r.err
    save_embeddings(tmp_path / "other", Q, Manifest(model_id="other", nesting=(8, 16, 32), dim=D))
    r = cli("backend", "search", "--engine", "qdrant-edge", "--engine-url", target, "--collection",
            "docs", "--queries", str(tmp_path / "other"))
    assert r.code == 2 and "different models: 'other'" in r.err and "'demo'" in r.err
    r = cli("backend", "search", "--engine", "qdrant-edge", "--engine-url", target, "--collection",
            "docs", "--queries", str(tmp / "queries"), "--stages", "16,32", "--shortlist", "50")
    assert r.code == 2 and "stage dims [16] are not stored" in r.err
