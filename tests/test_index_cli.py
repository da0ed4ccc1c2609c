"""``nestemb embed`` and ``nestemb index build|search|tune`` end to end, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nestemb.index import exact_search, knn_intersection, load_index, synthetic_matryoshka
from nestemb.nesting import Manifest
from nestemb.folders import load_embeddings, save_embeddings

D = 32
NEST = (8, 16, 32)


@pytest.fixture
def emb(tmp_path):
    X = synthetic_matryoshka(800, D, seed=0)
    Q = synthetic_matryoshka(40, D, seed=1)
    man = Manifest(model_id="demo", model_version="v1", nesting=NEST, dim=D)
    g = save_embeddings(tmp_path / "gallery", X, man, ids=[f"doc{i}" for i in range(len(X))])
    q = save_embeddings(tmp_path / "queries", Q, man)
    return tmp_path, g, q


@pytest.mark.parametrize(
    "args",
    [
        ["--index-type", "funnel", "--stages", "8,16,32", "--shortlist", "200,50", "--prefix-dtype", "int8"],
        ["--index-type", "funnel", "--first-stage", "hnsw"],
        ["--index-type", "ivf", "--nlist", "16", "--nprobe", "16", "--rerank", "800", "--codec", "sq8"],
        ["--index-type", "opq", "--d-search", "16", "--code-bytes", "4", "--nlist", "1", "--rerank", "800"],
    ],
)
def test_build_search_tune(cli, emb, args):
    tmp, g, q = emb
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "idx", *args)
    assert r.code == 0, r
    man = json.loads((tmp / "idx" / "manifest.json").read_text())
    assert (man["model_id"], man["model_version"], man["nesting"]) == ("demo", "v1", list(NEST))
    r = cli("index", "search", tmp / "idx", "--queries", q, "-k", "5", "--out", tmp / "res.json")
    assert r.code == 0, r
    res = json.loads((tmp / "res.json").read_text())
    assert len(res) == 40 and all(len(v["ids"]) == 5 for v in res.values())
    assert res["0"]["ids"][0].startswith("doc")
    r = cli("index", "tune", tmp / "idx", "--queries", q, "--recall", "0.9", "-k", "5",
            "--max-queries", "20")
    assert r.code == 0, r
    assert r.out.startswith("target met: recall@5 "), r.out
    tuning = json.loads((tmp / "idx" / "manifest.json").read_text())["extra"]["tuning"]
    assert tuning["target"] == 0.9 and tuning["met"] is True
    # what the saved index does, measured here against brute force, not taken from tune
    X, _, ids = load_embeddings(g, with_ids=True)
    Q = load_embeddings(q)[0][:20]
    found = load_index(tmp / "idx").search(Q, k=5)[1]
    truth = np.asarray(ids)[exact_search(X, Q, 5)[1]]
    measured = knn_intersection(found, truth)
    assert measured >= 0.9 and measured == pytest.approx(tuning["recall"])


def test_tune_reports_an_unreachable_target(cli, emb):
    tmp, g, q = emb
    assert cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--stages", "8,32", "--shortlist", "20").code == 0
    # shortlists of at most k=5 candidates from an 8-d prefix cannot return the exact top-5
    r = cli("index", "tune", tmp / "idx", "--queries", q, "--recall", "1.0", "-k", "5",
            "--max-queries", "20", "--max-candidates", "5", "--out", tmp / "tuned")
    assert r.code == 0, r
    assert r.out.startswith("target NOT met: recall@5 "), r.out
    tuning = load_index(tmp / "tuned").tuning_
    assert tuning["met"] is False and tuning["recall"] < 1.0
    assert load_index(tmp / "idx").tuning_ is None  # --out left the source index alone


def test_cli_errors(cli, emb):
    tmp, g, q = emb
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--stages", "8,12,32", "--shortlist", "100,50")
    assert r.code == 2 and "not in the nesting" in r.err
    assert not (tmp / "idx").exists()
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--stages", "16,8,32", "--shortlist", "100,50")
    assert r.code == 2 and "ascending" in r.err
    r = cli("index", "build", "--embeddings", tmp / "missing", "--out", tmp / "idx")
    assert r.code == 2 and "not found" in r.err
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--index-type", "lsh")
    assert r.code == 2 and "--index-type" in r.err
    assert cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--stages", "8,32", "--shortlist", "20").code == 0
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "idx")
    assert r.code == 2 and "already exists and is not empty" in r.err and "--overwrite" in r.err
    assert cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--overwrite", "--stages", "8,32",
               "--shortlist", "20").code == 0
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "queries", "--overwrite")
    assert r.code == 2 and ("is not a nestemb index directory" in r.err or "not an index" in r.err), r
    assert load_embeddings(tmp / "queries")[0].shape == (40, D)  # untouched
    r = cli("index", "search", tmp / "idx", "--queries", q, "-k", "0")
    assert r.code == 2 and "k must be positive" in r.err
    r = cli("index", "search", tmp / "idx", "--queries", q, "-k", "900")
    assert r.code == 2 and "larger than the index" in r.err
    r = cli("index", "search", tmp / "idx", "--queries", q, "-k", "50")
    assert r.code == 2 and "smaller than k=50" in r.err
    (tmp / "res.json").write_text("{}")
    r = cli("index", "search", tmp / "idx", "--queries", q, "--out", tmp / "res.json")
    assert r.code == 2 and "already exists" in r.err and (tmp / "res.json").read_text() == "{}"
    assert cli("index", "search", tmp / "idx", "--queries", q, "--out", tmp / "res.json",
               "--overwrite").code == 0
    other = save_embeddings(tmp / "q2", synthetic_matryoshka(3, D),
                            Manifest(model_id="x", model_version="v1", nesting=NEST, dim=D))
    r = cli("index", "search", tmp / "idx", "--queries", other)
    assert r.code == 2 and "different models" in r.err
    r = cli("index", "tune", tmp / "idx", "--queries", other)
    assert r.code == 2 and "different models" in r.err
    vec = tmp / "idx" / "full.faiss"  # FunnelIndex keeps its full vectors there
    vec.write_bytes(vec.read_bytes()[:-8])
    r = cli("index", "search", tmp / "idx", "--queries", q)
    assert r.code == 2 and "checksum mismatch" in r.err


def test_model_version_mismatch_exits_2(cli, emb):
    tmp, g, q = emb
    assert cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--stages", "8,32", "--shortlist", "20").code == 0
    before = (tmp / "idx" / "manifest.json").read_text()
    newer = save_embeddings(tmp / "q2", synthetic_matryoshka(3, D),
                            Manifest(model_id="demo", model_version="v2", nesting=NEST, dim=D))
    msg = "queries and index come from different weights of model 'demo': version 'v2' vs 'v1'"
    for verb in ("search", "tune"):
        r = cli("index", verb, tmp / "idx", "--queries", newer)
        assert r.code == 2 and msg in r.err, r
    assert (tmp / "idx" / "manifest.json").read_text() == before


def test_embed_text_then_index(cli, tmp_path):
    from nestemb.text.encoder import load_text_model
    from nestemb.text._tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) for i, t in
                              enumerate(["the cat sits", "a dog runs", "red car drives fast",
                                         "protein cell gene", "man plays guitar"])))
    r = cli("embed", "--model", model, "--texts", docs, "--out", tmp_path / "emb", "--device", "cpu")
    assert r.code == 0, r
    own = load_text_model(model).manifest
    man = load_embeddings(tmp_path / "emb")[1]
    assert (man.model_id, man.model_version) == (own.model_id, own.model_version)
    qs = tmp_path / "q.txt"
    qs.write_text("the cat sits\nman plays guitar\n")
    assert cli("embed", "--model", model, "--texts", qs, "--out", tmp_path / "qemb").code == 0
    assert cli("index", "build", "--embeddings", tmp_path / "emb", "--out", tmp_path / "idx", "--stages", "32",
               "--shortlist", "").code == 0
    r = cli("index", "search", tmp_path / "idx", "--queries", tmp_path / "qemb", "-k", "1",
            "--out", tmp_path / "r.json")
    assert r.code == 0, r
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["0"]["ids"] == ["d0"] and res["1"]["ids"] == ["d4"]
    r = cli("embed", "--model", model, "--texts", qs, "--out", tmp_path / "qemb")
    assert r.code == 2 and "already exists" in r.err and "--overwrite" in r.err


def test_embed_images(cli, tmp_path):
    from nestemb.data.idx import write_synthetic_idx
    from nestemb.models.image import ImageModel, ImageModelConfig, load_image_model, save_image_model

    save_image_model(ImageModel(ImageModelConfig(dim=8, nesting=(2, 8), width=4)), tmp_path / "m")
    version = load_image_model(tmp_path / "m").manifest.model_version
    imgs = np.random.default_rng(0).integers(0, 255, size=(20, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "imgs.npy", imgs)
    r = cli("embed", "--model", tmp_path / "m", "--images", tmp_path / "imgs.npy", "--out", tmp_path / "e")
    assert r.code == 0, r
    man = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert man["nesting"] == [2, 8] and man["model_version"] == version
    assert man["model_id"] == load_image_model(tmp_path / "m").manifest.model_id
    write_synthetic_idx(tmp_path / "idx", n_train=12, n_test=6)
    r = cli("embed", "--model", tmp_path / "m", "--data", tmp_path / "idx", "--split", "t10k",
            "--out", tmp_path / "e2")
    assert r.code == 0, r
    X, man2 = load_embeddings(tmp_path / "e2")
    assert X.shape == (6, 8) and man2.model_version == version


def test_embed_errors(cli, tmp_path):
    txt = tmp_path / "x.txt"
    txt.write_text("a text\n")
    r = cli("embed", "--model", tmp_path / "nomodel", "--texts", txt, "--out", tmp_path / "e")
    assert r.code == 2 and "model not found" in r.err
    g = save_embeddings(tmp_path / "g", synthetic_matryoshka(3, D), Manifest(model_id="x", nesting=NEST, dim=D))
    r = cli("embed", "--model", g, "--texts", txt, "--out", tmp_path / "e")
    assert r.code == 2 and "a model is an image-model or a text-model" in r.err
    r = cli("embed", "--model", "minilm", "--out", tmp_path / "e")
    assert r.code == 2 and "give exactly one of --data, --images or --texts" in r.err
    r = cli("embed", "--model", "minilm", "--texts", txt, "--data", tmp_path, "--out", tmp_path / "e")
    assert r.code == 2 and "exactly one of" in r.err
    r = cli("embed", "--model", "minilm", "--data", tmp_path, "--out", tmp_path / "e")
    assert r.code == 2 and "is a text model: it embeds texts (--texts .jsonl or .txt), not images (--data)" in r.err
    r = cli("embed", "--model", "minilm", "--texts", txt, "--out", tmp_path / "e", "--limit", "0")
    assert r.code == 2 and "--limit must be a positive integer" in r.err
    assert not (tmp_path / "e").exists()


# --------------------------------------------------------------------------- issue 9 hardening
@pytest.mark.parametrize(
    "args, named",
    [
        (["--index-type", "funnel", "--nlist", "8"], "--nlist does not apply to --index-type funnel"),
        (["--index-type", "funnel", "--codec", "sq8", "--rerank", "50"], "--codec, --rerank do not apply"),
        (["--stages", "8,32", "--nprobe", "4"], "--nprobe does not apply to --index-type funnel"),
        (["--index-type", "ivf", "--stages", "8,32"], "--stages does not apply to --index-type ivf"),
        (["--index-type", "opq", "--shortlist", "20", "--first-stage", "hnsw"],
         "--shortlist, --first-stage do not apply to --index-type opq"),
        (["--index-type", "ivf", "--code-bytes", "4"], "--code-bytes applies only with --codec pq or opq"),
    ],
)
def test_build_refuses_options_of_another_index_type(cli, emb, args, named):
    tmp, g, _ = emb
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "idx", *args)
    assert r.code == 2 and named in r.err and "Traceback" not in r.err, r
    assert not (tmp / "idx").exists()


def test_build_reports_recall_and_warns_when_low(cli, emb):
    tmp, g, _ = emb
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "good", "--stages", "8,32", "--shortlist", "800")
    assert r.code == 0, r
    assert "recall@10 against exact search: 1.000 (200 gallery vectors as queries)" in r.out
    assert "warning" not in r.err
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "bad", "--stages", "8,32", "--shortlist", "10")
    assert r.code == 0, r
    assert "warning: this configuration reaches recall@10 = " in r.err and "nestemb index tune" in r.err


def test_tune_prints_changes_stores_k_and_search_warns_above_it(cli, emb, caplog):
    tmp, g, q = emb
    assert cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--stages", "8,32", "--shortlist", "400").code == 0
    r = cli("index", "tune", tmp / "idx", "--queries", q, "--recall", "0.9", "-k", "5",
            "--max-queries", "20")
    assert r.code == 0, r
    assert "changed: " in r.out and "shortlist [400] -> [" in r.out and "tuned for k=5" in r.out
    assert load_index(tmp / "idx").tuning_["k"] == 5
    r = cli("index", "search", tmp / "idx", "--queries", q, "-k", "5")
    assert r.code == 0 and "warning" not in r.err
    assert load_index(tmp / "idx").shortlist[0] >= 8  # the tuned shortlist (k=5, 96% recall)
    r = cli("index", "search", tmp / "idx", "--queries", q, "-k", "8")
    assert r.code == 0, r
    assert "warning: -k 8 is above the k=5 this index was tuned for" in r.err
    idx = load_index(tmp / "idx")
    with caplog.at_level("WARNING", logger="nestemb.index"):
        idx.search(load_embeddings(q)[0][:2], k=6)
    assert "searching with k=6 above the k=5 it was tuned for" in caplog.text


def test_tune_screens_on_a_few_queries_and_settles_close_calls_on_more(cli, emb):
    tmp, g, q = emb
    assert cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--stages", "8,32",
               "--shortlist", "400").code == 0
    r = cli("index", "tune", tmp / "idx", "--queries", q, "--recall", "0.95",
            "--max-queries", "40", "--screen-queries", "10")
    assert r.code == 0, r
    rec = load_index(tmp / "idx").tuning_
    assert rec["screen_queries"] == 10 and rec["n_queries"] == 40
    settled = [c for c in rec["candidates"] if c["n_queries"] == 40]
    assert {c["n_queries"] for c in rec["candidates"]} <= {10, 40} and settled
    assert f"on 10 queries, {len(settled)} of them too close to the target" in r.out
    r = cli("index", "tune", tmp / "idx", "--queries", q, "--screen-queries", "0")
    assert r.code == 2 and "--screen-queries" in r.err and "Traceback" not in r.err


def test_search_out_existing_directory_exits_2(cli, emb):
    tmp, g, q = emb
    assert cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--stages", "8,32", "--shortlist", "20").code == 0
    (tmp / "resdir").mkdir()
    r = cli("index", "search", tmp / "idx", "--queries", q, "--out", tmp / "resdir", "--overwrite")
    assert r.code == 2 and "is a directory" in r.err and "Traceback" not in r.err


def _tiny_text_model(tmp_path):
    from nestemb.text._tiny import make_tiny_model

    return make_tiny_model(tmp_path / "tiny")


def test_embed_refuses_duplicate_ids(cli, tmp_path):
    model = _tiny_text_model(tmp_path)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"_id": i, "text": t}) for i, t in
                              [("a", "one"), ("b", "two"), ("a", "three")]))
    r = cli("embed", "--model", model, "--texts", docs, "--out", tmp_path / "e")
    assert r.code == 2 and "docs.jsonl:3 (_id 'a'): duplicate _id (first on line 1)" in r.err, r
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_embed_refuses_non_utf8_text(cli, tmp_path, suffix):
    model = _tiny_text_model(tmp_path)
    f = tmp_path / f"latin{suffix}"
    line2 = '{"_id": "x", "text": "caf\u00e9"}' if suffix == ".jsonl" else "caf\u00e9"
    f.write_bytes(("ok\n" if suffix == ".txt" else '{"_id": "y", "text": "ok"}\n').encode()
                  + line2.encode("latin-1"))
    r = cli("embed", "--model", model, "--texts", f, "--out", tmp_path / "e")
    assert r.code == 2 and f"{f.name}:2: not UTF-8 text (byte 0xe9 at column" in r.err, r
    assert "Traceback" not in r.err


@pytest.mark.parametrize(
    "array, match",
    [
        (np.array(["a", "b"]), "must hold uint8 images .* got dtype <U1 and shape \\(2,\\)"),
        (np.zeros((3, 28, 28), dtype=np.float64), "got dtype float64"),
        (np.array(5, dtype=np.uint8), "shape \\(\\)"),
        (np.array([{"a": 1}], dtype=object), "cannot read .*allow_pickle"),
    ],
)
def test_embed_refuses_npy_that_is_not_an_image_array(cli, tmp_path, array, match):
    import re

    from nestemb.models.image import ImageModel, ImageModelConfig, save_image_model

    save_image_model(ImageModel(ImageModelConfig(dim=8, nesting=(2, 8), width=4)), tmp_path / "m")
    np.save(tmp_path / "bad.npy", array, allow_pickle=True)
    r = cli("embed", "--model", tmp_path / "m", "--images", tmp_path / "bad.npy", "--out", tmp_path / "e")
    assert r.code == 2 and re.search(match, r.err) and "Traceback" not in r.err, r


def test_embed_idx_without_labels_and_model_input_mismatch(cli, tmp_path):
    from nestemb.data.idx import write_synthetic_idx
    from nestemb.models.image import ImageModel, ImageModelConfig, save_image_model

    save_image_model(ImageModel(ImageModelConfig(dim=8, nesting=(2, 8), width=4)), tmp_path / "m")
    write_synthetic_idx(tmp_path / "idx", n_train=12, n_test=6)
    for f in (tmp_path / "idx").glob("*labels*"):
        f.unlink()
    r = cli("embed", "--model", tmp_path / "m", "--data", tmp_path / "idx", "--out", tmp_path / "e")
    assert r.code == 0, r
    assert load_embeddings(tmp_path / "e")[0].shape == (12, 8)
    r = cli("embed", "--model", "minilm", "--data", tmp_path / "idx", "--out", tmp_path / "e2")
    assert r.code == 2 and "minilm is a text model: it embeds texts (--texts" in r.err
    txt = tmp_path / "t.txt"
    txt.write_text("hello\n")
    r = cli("embed", "--model", tmp_path / "m", "--texts", txt, "--out", tmp_path / "e3")
    assert r.code == 2 and "is an image model: it embeds images (--data IDX folder" in r.err


def test_embed_and_tune_report_progress_off_a_terminal(cli, tmp_path):
    """issue 9: embed and index tune ran silently; off a terminal they now print plain lines."""
    from nestemb.index.synthetic import synthetic_matryoshka
    from nestemb.nesting import Manifest
    from nestemb.folders import save_embeddings

    emb = tmp_path / "emb"
    save_embeddings(emb, synthetic_matryoshka(400, 16),
                    Manifest(model_id="m", model_version="v", nesting=(4, 16), dim=16))
    r = cli("index", "build", "--embeddings", emb, "--out", tmp_path / "idx", "--stages", "4,16", "--shortlist", "50")
    assert r.code == 0, r
    r = cli("index", "tune", tmp_path / "idx", "--queries", emb, "--recall", "0.9")
    assert r.code == 0, r
    assert "configurations measured: 1" in r.err, r.err
    model = _tiny_text_model(tmp_path)
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(f"sentence number {i}" for i in range(30)))
    r = cli("embed", "--model", model, "--texts", texts, "--out", tmp_path / "e")
    assert r.code == 0, r
    assert "encoding: 0/30" in r.err and "encoding: 30/30" in r.err, r.err


@pytest.mark.parametrize(
    "args",
    [
        ["--first-stage", "hnsw", "--full-dtype", "float16", "--hnsw-m", "8", "--ef-search", "400",
         "--stages", "16,32", "--shortlist", "400"],
        ["--prefix-dtype", "binary", "--rescore-dtype", "int8", "--stages", "32,32,32",
         "--shortlist", "800,400"],
        ["--prefix-dtype", "int8", "--int8-trim", "0.001", "--stages", "16,32", "--shortlist", "800"],
        ["--prefix-dtype", "rabitq", "--stages", "16,32", "--shortlist", "800"],
    ],
)
def test_build_options_of_the_native_funnel(cli, emb, args):
    """Every funnel option reaches the index; with shortlists covering the gallery, the saved
    index returns the exact top-5 (fp16 full vectors: up to rounding near ties)."""
    tmp, g, q = emb
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "idx", *args)
    assert r.code == 0, r
    params = json.loads((tmp / "idx" / "manifest.json").read_text())["extra"]["params"]
    ints = lambda v: [int(x) for x in v.split(",")]  # noqa: E731
    parse = {"dims": ints, "shortlist": ints, "hnsw_m": int, "ef_search": int, "int8_trim": float}
    for flag, value in zip(args[::2], args[1::2]):
        name = {"--stages": "dims"}.get(flag, flag[2:].replace("-", "_"))  # FunnelIndex(dims=)
        assert params[name] == parse.get(name, str)(value), (name, params[name], value)
    X, _, ids = load_embeddings(g, with_ids=True)
    Q = load_embeddings(q)[0]
    r = cli("index", "search", tmp / "idx", "--queries", q, "-k", "5", "--out", tmp / "res.json",
            "--threads", "1")
    assert r.code == 0, r
    res = json.loads((tmp / "res.json").read_text())
    found = np.array([res[str(i)]["ids"] for i in range(len(Q))])
    truth = np.asarray(ids)[exact_search(X, Q, 5)[1]]
    assert knn_intersection(found, truth) >= (0.99 if "float16" in args else 1.0)


def test_search_threads_above_the_cores_are_clamped_with_a_warning(cli, emb):
    import os

    tmp, g, q = emb
    assert cli("index", "build", "--embeddings", g, "--out", tmp / "idx").code == 0
    r = cli("index", "search", tmp / "idx", "--queries", q, "--threads", str(10 * (os.cpu_count() or 1)))
    assert r.code == 0, r
    assert "more than the" in r.err and "cores" in r.err
    r = cli("index", "search", tmp / "idx", "--queries", q, "--threads", "0")
    assert r.code == 2 and "--threads must be a positive integer" in r.err


def test_funnel_options_are_refused_for_ivf(cli, emb):
    tmp, g, q = emb
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--index-type", "ivf", "--full-dtype", "float16")
    assert r.code == 2 and "--full-dtype" in r.err and "does not apply" in r.err
    assert not (tmp / "idx").exists()


# --------------------------------------------------------------------------- issue 20
def test_tune_has_a_time_budget_and_reports_a_total(cli, emb):
    tmp, g, q = emb
    assert cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--stages", "8,32", "--shortlist", "20").code == 0
    r = cli("index", "tune", tmp / "idx", "--queries", q, "--recall", "1.0", "-k", "5",
            "--max-queries", "20", "--max-seconds", "0.000001", "--out", tmp / "tuned")
    assert r.code == 0, r
    # one configuration measured, then the budget stopped the walk: said so, with the total
    import re

    m = re.search(r"configurations measured: 1/(\d+)", r.err)
    assert m and int(m.group(1)) > 1, r.err
    assert "time budget of 1e-06 s spent after 1 of " + m.group(1) + " configurations" in r.out, r.out
    tuning = load_index(tmp / "tuned").tuning_
    assert tuning["complete"] is False and len(tuning["candidates"]) == 1
    # the tuned index is valid and does what its record says, measured against brute force
    X, _, ids = load_embeddings(g, with_ids=True)
    Q = load_embeddings(q)[0][:20]
    found = load_index(tmp / "tuned").search(Q, k=5)[1]
    truth = np.asarray(ids)[exact_search(X, Q, 5)[1]]
    assert knn_intersection(found, truth) == pytest.approx(tuning["recall"])
    r = cli("index", "tune", tmp / "idx", "--queries", q, "--max-seconds", "0")
    assert r.code == 2 and "--max-seconds must be a positive number" in r.err, r
    r = cli("index", "tune", "--help")
    assert "--max-seconds" in r.out and "600" in r.out


@pytest.mark.parametrize(
    "args, named",
    [
        (["--index-type", "opq", "--d-search", "16", "--code-bytes", "0"],
         "--code-bytes must be a positive integer, got 0"),
        (["--index-type", "ivf", "--codec", "pq", "--d-search", "16", "--code-bytes", "7"],
         "--code-bytes must divide the search dimension 16, got 7"),
        (["--index-type", "opq", "--rerank", "0"], "--rerank must be a positive integer, got 0"),
        (["--index-type", "ivf", "--d-cluster", "0"], "--d-cluster must be a positive integer, got 0"),
        (["--index-type", "ivf", "--nlist", "16", "--nprobe", "32"], "--nprobe 32 is above --nlist 16"),
        (["--index-type", "ivf", "--nprobe", "300"], "--nprobe 300 is above --nlist 256"),
    ],
)
def test_build_refuses_options_that_would_lie(cli, emb, args, named):
    tmp, g, _ = emb
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "idx", *args)
    assert r.code == 2 and named in r.err and "Traceback" not in r.err, r
    assert not (tmp / "idx").exists()


def test_build_default_nprobe_fits_nlist(cli, emb):
    tmp, g, q = emb
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--index-type", "ivf", "--nlist", "8")
    assert r.code == 0, r
    assert json.loads((tmp / "idx" / "manifest.json").read_text())["extra"]["params"]["nprobe"] == 8


def test_corrupted_tuning_record_is_one_line_exit_2(cli, emb):
    tmp, g, q = emb
    assert cli("index", "build", "--embeddings", g, "--out", tmp / "idx", "--stages", "8,32", "--shortlist", "20").code == 0
    m = json.loads((tmp / "idx" / "manifest.json").read_text())
    m["extra"]["tuning"] = {"recall": "high", "k": 5, "params": {}}
    (tmp / "idx" / "manifest.json").write_text(json.dumps(m))
    r = cli("index", "search", tmp / "idx", "--queries", q, "-k", "8")
    assert r.code == 2 and "extra.tuning.recall" in r.err and "manifest.json" in r.err, r
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    m["extra"] = []
    (tmp / "idx" / "manifest.json").write_text(json.dumps(m))
    r = cli("index", "search", tmp / "idx", "--queries", q)
    assert r.code == 2 and "extra" in r.err and "Traceback" not in r.err, r


def test_zero_norm_gallery_and_queries_are_refused(cli, emb):
    tmp, g, q = emb
    man = Manifest(model_id="demo", model_version="v1", nesting=NEST, dim=D)
    zeros = synthetic_matryoshka(50, D, seed=5)
    zeros[:, :8] = 0.0
    z = save_embeddings(tmp / "zeros", zeros, man)
    r = cli("index", "build", "--embeddings", z, "--out", tmp / "zidx")
    assert r.code == 2 and "row 0: the first 8 dims" in r.err, r
    assert not (tmp / "zidx").exists()
    assert cli("index", "build", "--embeddings", g, "--out", tmp / "idx").code == 0
    r = cli("index", "search", tmp / "idx", "--queries", z, "-k", "3")
    assert r.code == 2 and "queries row 0: the first 8 dims" in r.err, r


def _with_ids(path, ids):
    """Give an embedding directory these ids (bypassing save_embeddings, as an old writer)."""
    from nestemb.io import sha256_file

    (path / "ids.json").write_text(json.dumps(ids))
    m = json.loads((path / "manifest.json").read_text())
    m["sha256"]["ids.json"] = sha256_file(path / "ids.json")
    (path / "manifest.json").write_text(json.dumps(m))


def test_duplicate_ids_refused_by_build_and_search(cli, emb):
    tmp, g, q = emb
    X = load_embeddings(g)[0]
    _with_ids(q, [f"q{i}" for i in range(39)] + ["q3"])
    assert cli("index", "build", "--embeddings", g, "--out", tmp / "idx").code == 0
    r = cli("index", "search", tmp / "idx", "--queries", q, "--out", tmp / "r.json")
    assert r.code == 2 and "'q3' appears" in r.err and "unique" in r.err, r
    assert not (tmp / "r.json").exists()
    _with_ids(q, list(range(39)) + ["5"])  # 5 and "5": the same key in the results file
    r = cli("index", "search", tmp / "idx", "--queries", q, "--out", tmp / "r.json")
    assert r.code == 2 and "'5' appears at rows 5 and 39" in r.err, r
    _with_ids(q, [f"q{i}" for i in range(40)])
    r = cli("index", "search", tmp / "idx", "--queries", q, "--out", tmp / "r.json", "--limit", "30")
    assert r.code == 0 and "wrote results for 30 queries" in r.out, r
    assert len(json.loads((tmp / "r.json").read_text())) == 30
    g2 = save_embeddings(tmp / "g2", X, Manifest(model_id="demo", model_version="v1", nesting=NEST,
                                                   dim=D))
    _with_ids(g2, [f"doc{i}" for i in range(len(X) - 1)] + ["doc0"])
    r = cli("index", "build", "--embeddings", g2, "--out", tmp / "idx2")
    assert r.code == 2 and "'doc0' appears" in r.err and "unique" in r.err, r
    assert not (tmp / "idx2").exists()


def test_embed_parquet_refuses_duplicate_ids(cli, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = _tiny_text_model(tmp_path)
    pq.write_table(pa.table({"_id": ["a", "b", "a"], "text": ["one", "two", "three"]}),
                   tmp_path / "c.parquet")
    r = cli("embed", "--model", model, "--texts", tmp_path / "c.parquet", "--out", tmp_path / "e")
    assert r.code == 2 and "'a' appears more than once" in r.err and "c.parquet" in r.err, r
    assert not (tmp_path / "e").exists()


def test_embed_records_the_split_and_rows(cli, tmp_path):
    from nestemb.data.idx import write_synthetic_idx
    from nestemb.models.image import ImageModel, ImageModelConfig, save_image_model

    save_image_model(ImageModel(ImageModelConfig(dim=8, nesting=(2, 8), width=4)), tmp_path / "m")
    write_synthetic_idx(tmp_path / "idx", n_train=12, n_test=6)
    for split, n in (("t10k", 6), ("train", 12)):
        r = cli("embed", "--model", tmp_path / "m", "--data", tmp_path / "idx", "--split", split,
                "--out", tmp_path / split)
        assert r.code == 0, r
        X, man = load_embeddings(tmp_path / split)
        assert man.extra["split"] == split and man.extra["rows"] == n == len(X)
        assert man.extra["source"] == str(tmp_path / "idx") and "limit" not in man.extra
    r = cli("embed", "--model", tmp_path / "m", "--data", tmp_path / "idx", "--limit", "4",
            "--out", tmp_path / "lim")
    assert r.code == 0, r
    man = load_embeddings(tmp_path / "lim")[1]
    assert (man.extra["split"], man.extra["rows"], man.extra["limit"]) == ("train", 4, 4)
    np.save(tmp_path / "imgs.npy", np.zeros((3, 28, 28), np.uint8))
    r = cli("embed", "--model", tmp_path / "m", "--images", tmp_path / "imgs.npy", "--out", tmp_path / "n")
    assert r.code == 0, r
    extra = load_embeddings(tmp_path / "n")[1].extra
    assert "split" not in extra and extra["rows"] == 3 and extra["source"] == str(tmp_path / "imgs.npy")


def test_embed_names_what_a_non_model_folder_holds(cli, emb):
    tmp, g, _ = emb
    txt = tmp / "x.txt"
    txt.write_text("a text\n")
    assert cli("index", "build", "--embeddings", g, "--out", tmp / "idx").code == 0
    r = cli("embed", "--model", tmp / "idx", "--texts", txt, "--out", tmp / "e")
    assert r.code == 2 and "holds an index; a model is an image-model or a text-model" in r.err, r
