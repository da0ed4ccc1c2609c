"""Nesting retrofits (``nestemb.maps.retrofit``) and ``nestemb retrofit fit|apply`` (and its
hidden alias ``nestemb adaptor``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.losses import PrefixLoss, info_nce
from nestemb.maps import (
    Retrofit,
    check_source,
    fit_retrofit,
    load_retrofit,
    retrofit_embeddings,
    retrofit_losses,
    save_retrofit_embeddings,
)
from nestemb.maps.nn import make_module, pca_init
from nestemb.exact import exact_search, knn_intersection
from nestemb.nesting import Manifest, prefix_view
from nestemb.folders import load_embeddings, save_embeddings

D = 32
SRC = Manifest(model_id="frozen-enc", model_version="v1", nesting=(D,), dim=D)


def _data(n=300, d=D, seed=0):
    """Rows whose energy sits in the *last* coordinates: truncation keeps the noise, a good
    adaptor moves the structure to the front."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.1, 2.0, d)
    centers = rng.normal(size=(12, d)) * scale
    X = centers[rng.integers(0, 12, n)] + 0.3 * rng.normal(size=(n, d)) * scale
    return X.astype(np.float32)


def _agreement(Y, X, m, k=10):
    """Overlap of the top-k neighbours at prefix m of Y with the full-input neighbours of X."""
    truth = exact_search(X, X, k + 1)[1][:, 1:]
    found = exact_search(Y, Y, k + 1, dim=m)[1][:, 1:]
    return knn_intersection(found, truth)


@pytest.fixture(scope="module")
def fitted():
    X = _data()
    return X, fit_retrofit(X, nesting=(4, 8, 16, 32), source_ref=SRC, steps=60,
                                  progress=False)


# ------------------------------------------------------------------ the map
def test_pca_init_is_the_pca_rotation():
    X = _data()
    W, b = pca_init(X, center=False)
    assert np.allclose(W.T @ W, np.eye(D), atol=1e-4) and not b.any()
    # the uncentered rotation keeps every full-width cosine
    assert np.allclose(prefix_view(X @ W, D) @ prefix_view(X @ W, D).T,
                       prefix_view(X, D) @ prefix_view(X, D).T, atol=1e-4)
    # components by decreasing energy
    energy = ((X @ W) ** 2).sum(0)
    assert (np.diff(energy) <= 1e-3 * energy[0]).all()
    Wc, bc = pca_init(X, center=True)
    assert np.allclose(bc, -X.mean(0) @ Wc, atol=1e-5)
    assert np.allclose((X @ Wc + bc).mean(0), 0, atol=1e-4)


def test_adaptor_beats_truncation_and_keeps_full_width(fitted):
    X, ad = fitted
    Y = ad.transform(X)
    assert Y.shape == X.shape and Y.dtype == np.float32
    assert _agreement(Y, X, 4) > _agreement(X, X, 4) + 0.2
    # at least as good as the PCA start it was initialised from (minus noise)
    W, _ = pca_init(X, center=False)
    assert _agreement(Y, X, 4) >= _agreement(X @ W, X, 4) - 0.02
    # the reconstruction term keeps the full-width neighbours
    assert _agreement(Y, X, D) > 0.9


def test_a_rotation_keeps_every_full_width_cosine_and_improves_the_prefixes(fitted, tmp_path):
    X, linear = fitted
    rot = fit_retrofit(X, kind="rotation", nesting=(4, 8, 16, 32), source_ref=SRC, steps=60,
                       progress=False)
    W = rot.weights_["W"]
    assert np.allclose(W.T @ W, np.eye(D), atol=1e-5) and not rot.weights_["b"].any()
    Y = rot.transform(X)
    np.testing.assert_allclose(prefix_view(Y, D) @ prefix_view(Y, D).T,
                               prefix_view(X, D) @ prefix_view(X, D).T, atol=1e-5)
    assert _agreement(Y, X, D) == 1.0  # a linear map only comes close (the test above: > .9)
    # the rotation that best reproduces the trained map, by hand: Procrustes of X onto x W + b
    u, _, vt = np.linalg.svd(X.astype(np.float64).T @ linear.transform(X), full_matrices=False)
    assert np.allclose(W, u @ vt, atol=1e-3)  # (same seed and steps: the same trained map)
    # the short prefixes keep most of what training bought over truncation and over PCA
    P, _ = pca_init(X, center=False)
    assert _agreement(Y, X, 4) > _agreement(X, X, 4) + 0.2
    assert _agreement(Y, X, 4) >= _agreement(X @ P, X, 4) - 0.02
    back = load_retrofit(rot.save(tmp_path / "rot"))
    assert back.kind == "rotation" and np.array_equal(back.transform(X), Y)
    with pytest.raises(NestembError, match="center=True shifts the vectors") as e:
        fit_retrofit(X, kind="rotation", center=True, progress=False)
    assert e.value.param == "center"


def test_steps_are_the_optimisation_steps():
    """Measured, not reported: one step moves the map off its PCA start, and the fit is a
    pure function of (data, steps, seed)."""
    X = _data(n=100)
    W, b = pca_init(X, center=False)
    one = fit_retrofit(X, nesting=(8, 32), steps=1, progress=False)
    assert not np.allclose(one.weights_["W"], W) and one.weights_["W"].shape == (D, D)
    again = fit_retrofit(X, nesting=(8, 32), steps=1, progress=False)
    assert np.array_equal(one.transform(X), again.transform(X))
    more = fit_retrofit(X, nesting=(8, 32), steps=3, progress=False)
    assert not np.allclose(more.transform(X), one.transform(X))


def test_mlp_kind_round_trip(tmp_path):
    X = _data(n=120)
    ad = fit_retrofit(X, kind="mlp", hidden=16, steps=20, progress=False)
    w = ad.weights_
    assert set(w) == {"W", "b", "W1", "b1", "W2", "b2"} and w["W1"].shape == (D, 16)
    back = load_retrofit(ad.save(tmp_path / "ad"))
    assert back.kind == "mlp" and back.version_ == ad.version_
    assert np.allclose(back.transform(X), ad.transform(X), atol=1e-5)
    # the numpy transform is the torch forward pass
    import torch

    m = make_module(w["W"], w["b"], hidden=16)
    with torch.no_grad():
        m.up.weight.copy_(torch.from_numpy(w["W1"].T))
        m.up.bias.copy_(torch.from_numpy(w["b1"]))
        m.down.weight.copy_(torch.from_numpy(w["W2"].T))
        m.down.bias.copy_(torch.from_numpy(w["b2"]))
        assert np.allclose(m(torch.from_numpy(X)).numpy(), ad.transform(X), atol=1e-5)
    # and by hand: x W + b + gelu_tanh(x W1 + b1) W2 + b2
    h = X @ w["W1"] + w["b1"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
    assert np.allclose(X @ w["W"] + w["b"] + h @ w["W2"] + w["b2"], ad.transform(X), atol=1e-4)


def test_default_nesting_and_other_widths():
    for d, nest in ((16, (8, 16)), (24, (8, 16, 24)), (6, (6,))):
        X = np.random.default_rng(0).normal(size=(40, d))
        assert fit_retrofit(X, steps=2, progress=False).nesting_ == nest


def test_supervised_pairs_align_queries_with_their_documents():
    rng = np.random.default_rng(1)
    X = _data(n=200)
    docs = X[:64]
    # queries: their document in a scrambled basis plus noise; truncation cannot match them
    R = np.linalg.qr(rng.normal(size=(D, D)))[0]
    queries = (docs @ R * 0.3 + docs * 0.7 + 0.1 * rng.normal(size=docs.shape)).astype(np.float32)
    unsup = fit_retrofit(X, nesting=(8, 16, 32), steps=80, progress=False)
    sup = fit_retrofit(X, (queries, docs), nesting=(8, 16, 32), steps=80, progress=False)

    def top1(ad):
        hits = exact_search(ad.transform(docs), ad.transform(queries), 1, dim=8)[1][:, 0]
        return float(np.mean(hits == np.arange(len(docs))))

    assert sup.fit_info_["pairs"] == 64
    assert top1(sup) > top1(unsup)


# ------------------------------------------------------------------ losses, by hand
def test_loss_terms_by_hand():
    import torch

    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    Xt = torch.from_numpy(X)
    Xn = torch.nn.functional.normalize(Xt, dim=-1)
    nbr = torch.tensor([[2], [2], [0]])
    nbr_sim = (Xn * Xn[nbr[:, 0]]).sum(-1, keepdim=True)
    # the identity map: outputs are the inputs, the neighbours' outputs their inputs
    kw = dict(tau=0.05, y0=Xt, y_nb=Xt[nbr], nb_sim=nbr_sim)
    # identity map at the full width: every term is zero
    t = retrofit_losses(Xt, Xn @ Xn.T, (2,), **kw)
    assert all(abs(float(v.detach())) < 1e-6 for v in t.values())
    # prefix 1: the views are 1, 0 (a zero vector stays zero), 1; full cosines:
    # (0,1)=0, (0,2)=(1,2)=1/sqrt2; prefix cosines: (0,1)=0, (0,2)=1, (1,2)=0
    t = retrofit_losses(Xt, Xn @ Xn.T, (1,), **kw)
    r = 1 / np.sqrt(2)
    # off-diagonal errors |0-0|, |1-r|, |0-r| twice each, over 6 pairs (diagonal: 1 vs 1
    # for rows 0 and 2, 0 vs 1 for the zero view of row 1, which counts: 1/9 * 9/6)
    expected_pair = (2 * (1 - r) + 2 * r + 1) / 6
    assert float(t["pairwise"].detach()) == pytest.approx(expected_pair, abs=1e-5)
    # neighbour terms: rows 0,1,2 -> 2,2,0; prefix cosines 1, 0, 1 vs full r, r, r
    assert float(t["topk"].detach()) == pytest.approx(((1 - r) + r + (1 - r)) / 3, abs=1e-5)


def test_contrastive_by_hand():
    import torch

    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    # logits 2 on the diagonal, 0 off: -log(e^2 / (e^2 + 1))
    expected = -np.log(np.exp(2) / (np.exp(2) + 1))
    assert float(PrefixLoss(info_nce, (2,))(q, d, temperature=tau)) == pytest.approx(expected,
                                                                                    abs=1e-6)


# ------------------------------------------------------------------ artefacts and identity
def test_save_load_and_tamper(fitted, tmp_path):
    X, ad = fitted
    path = ad.save(tmp_path / "ad")
    man = json.loads((path / "manifest.json").read_text())
    assert man["kind"] == "nesting-retrofit" and man["model_version"] == ad.version_
    assert man["extra"]["source"] == {"model_id": "frozen-enc", "model_version": "v1", "dim": D}
    back = load_retrofit(path)
    assert np.array_equal(back.transform(X), ad.transform(X))
    with pytest.raises(NestembError, match="already exists"):
        ad.save(path)
    (path / "weights.npz").write_bytes(b"broken")
    with pytest.raises(NestembError, match="checksum mismatch"):
        load_retrofit(path)
    with pytest.raises(NestembError, match="not found"):
        load_retrofit(tmp_path / "nothing")


def test_output_is_an_embedding_file_indexes_accept(fitted, tmp_path):
    X, ad = fitted
    Y, man = retrofit_embeddings(X, SRC, ad)
    assert man.model_id == "frozen-enc+nesting-retrofit-linear"
    assert man.model_version == ad.version_ and man.nesting == (4, 8, 16, 32)
    assert man.extra["source_model_version"] == "v1"
    out = save_retrofit_embeddings(tmp_path / "emb", X, SRC, ad, ids=[str(i) for i in range(len(X))])
    Z, zman = load_embeddings(out)
    assert np.array_equal(Z, Y) and zman.model_id == man.model_id
    from nestemb.index import FunnelIndex

    index = FunnelIndex(dims=(4, 32), shortlist=(50,), nesting=zman.nesting,
                        model_id=zman.model_id, model_version=zman.model_version)
    index.add(Z)
    assert index.search(Z[:3], k=1)[1][:, 0].tolist() == [0, 1, 2]


def test_transform_refuses_other_models(fitted):
    X, ad = fitted
    ad.transform(X[:2], manifest=SRC)
    other = Manifest(model_id="another", model_version="v1", nesting=(D,), dim=D)
    with pytest.raises(NestembError, match="fitted on 'frozen-enc' version 'v1'"):
        ad.transform(X[:2], manifest=other)
    newer = Manifest(model_id="frozen-enc", model_version="v2", nesting=(D,), dim=D)
    with pytest.raises(NestembError, match="version 'v2'"):
        check_source(newer, ad)
    with pytest.raises(NestembError, match="already this retrofit's output"):
        check_source(ad.output_manifest(), ad)
    with pytest.raises(NestembError, match="X has 16 dims, but the retrofit maps 32-dim"):
        ad.transform(X[:, :16])
    with pytest.raises(NestembError, match="not fitted"):
        Retrofit().transform(X)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_refuses_nan_and_inf(bad):
    X = _data(n=40)
    X[3, 5] = bad
    with pytest.raises(NestembError, match=r"X contains NaN or inf values \(row 3\)"):
        fit_retrofit(X, progress=False)
    Q = _data(n=20, seed=1)
    Q[2, 0] = bad
    with pytest.raises(NestembError, match=r"pairs\[0\] \(queries\) contains NaN or inf"):
        fit_retrofit(_data(n=40), (Q, _data(n=20)), progress=False)


def test_refuses_too_few_rows():
    with pytest.raises(NestembError, match="X has 10 rows; .* needs at least 16"):
        fit_retrofit(_data(n=10), progress=False)
    with pytest.raises(NestembError, match="X has 20 rows; .* needs at least 32"):
        fit_retrofit(_data(n=20), k=30, progress=False)
    with pytest.raises(NestembError, match="pairs has 4 rows; supervised fitting needs at least 8"):
        fit_retrofit(_data(n=40), (_data(n=4), _data(n=4, seed=1)), progress=False)


def test_refuses_bad_pairs():
    X = _data(n=40)
    with pytest.raises(NestembError, match="pairs have different lengths: 20 queries vs 19"):
        fit_retrofit(X, (_data(n=20), _data(n=19)), progress=False)
    with pytest.raises(NestembError, match=r"pairs\[1\] \(positives\) have dimension 16, but X has 32"):
        fit_retrofit(X, (_data(n=20), _data(n=20, d=16)), progress=False)
    with pytest.raises(NestembError, match="pairs must be a tuple"):
        fit_retrofit(X, _data(n=20), progress=False)


def test_refuses_bad_parameters():
    X = _data(n=40)
    with pytest.raises(NestembError, match="nesting: the last nesting dimension must be the full dimension 32, got 16"):
        fit_retrofit(X, nesting=(8, 16), progress=False)
    with pytest.raises(NestembError, match="nesting: nesting must be strictly ascending"):
        fit_retrofit(X, nesting=(16, 8, 32), progress=False)
    with pytest.raises(NestembError, match="kind must be one of"):
        fit_retrofit(X, kind="quadratic", progress=False)
    with pytest.raises(NestembError, match="k must be a positive integer"):
        fit_retrofit(X, k=0, progress=False)
    with pytest.raises(NestembError, match="weights has an unknown loss 'ranking'"):
        fit_retrofit(X, weights={"ranking": 1.0}, progress=False)
    with pytest.raises(NestembError, match="source_ref says dim 16, but X has dimension 32"):
        fit_retrofit(X, source_ref=Manifest(model_id="m", nesting=(16,), dim=16),
                            progress=False)
    with pytest.raises(NestembError, match="unexpected keyword argument 'epochs'"):
        fit_retrofit(X, epochs=3, progress=False)


# ------------------------------------------------------------------ CLI
@pytest.fixture
def emb_dirs(tmp_path):
    X = _data(n=200)
    rng = np.random.default_rng(3)
    q = (X[:40] + 0.2 * rng.normal(size=(40, D))).astype(np.float32)
    save_embeddings(tmp_path / "corpus", X, SRC, ids=[f"d{i}" for i in range(len(X))])
    save_embeddings(tmp_path / "pq", q, SRC)
    save_embeddings(tmp_path / "pd", X[:40], SRC)
    save_embeddings(tmp_path / "pd_short", X[:39], SRC)
    other = Manifest(model_id="other-enc", model_version="v9", nesting=(D,), dim=D)
    save_embeddings(tmp_path / "other", X, other)
    return tmp_path


def test_cli_fit_apply_and_index(cli, emb_dirs):
    t = emb_dirs
    r = cli("retrofit", "fit", "--embeddings", t / "corpus", "--out", t / "ad", "--steps", "20",
            "--nesting", "8,16,32")
    assert r.code == 0, r
    assert "fitted a linear nesting retrofit (unsupervised) on 200 rows" in r.out
    r = cli("retrofit", "apply", "--retrofit", t / "ad", "--embeddings", t / "corpus",
            "--out", t / "adapted")
    assert r.code == 0, r
    Y, man, ids = load_embeddings(t / "adapted", with_ids=True)
    ad = load_retrofit(t / "ad")
    assert man.model_id == "frozen-enc+nesting-retrofit-linear" and man.model_version == ad.version_
    assert man.nesting == (8, 16, 32) and ids[:2] == ["d0", "d1"]
    assert np.allclose(Y, ad.transform(load_embeddings(t / "corpus")[0]))
    r = cli("index", "build", "--embeddings", t / "adapted", "--out", t / "idx", "--stages", "8,32")
    assert r.code == 0, r
    # raw source vectors do not search the adapted index
    r = cli("index", "search", t / "idx", "--queries", t / "corpus")
    assert r.code == 2 and "different models" in r.err


def test_cli_supervised(cli, emb_dirs):
    t = emb_dirs
    r = cli("retrofit", "fit", "--embeddings", t / "corpus", "--pair-queries", t / "pq",
            "--pair-docs", t / "pd", "--kind", "mlp", "--steps", "10", "--out", t / "ad")
    assert r.code == 0, r
    assert "mlp nesting retrofit (supervised on 40 pairs)" in r.out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--embeddings", "{t}/missing", "--out", "{t}/ad"], "--embeddings embedding directory not found"),
        (["--embeddings", "{t}/corpus", "--out", "{t}/ad", "--pair-queries", "{t}/pq"],
         "give both --pair-queries and --pair-docs"),
        (["--embeddings", "{t}/corpus", "--out", "{t}/ad", "--pair-queries", "{t}/pq",
          "--pair-docs", "{t}/pd_short"], "--pair-queries has 40 rows but --pair-docs has 39"),
        (["--embeddings", "{t}/corpus", "--out", "{t}/ad", "--pair-queries", "{t}/pq",
          "--pair-docs", "{t}/other"], "--pair-docs come from model 'other-enc'"),
        (["--embeddings", "{t}/corpus", "--out", "{t}/ad", "--nesting", "8,16"],
         "--nesting: the last nesting dimension must be the full dimension 32"),
        (["--embeddings", "{t}/corpus", "--out", "{t}/ad", "--neighbours", "0"], "--neighbours must be a positive integer"),
        (["--embeddings", "{t}/corpus", "--out", "{t}/corpus"], "output directory already exists"),
        (["--embeddings", "{t}/corpus", "--out", "{t}/ad", "--kind", "cubic"], "Invalid value"),
    ],
)
def test_cli_fit_errors(cli, emb_dirs, args, message):
    r = cli("retrofit", "fit", *[a.format(t=emb_dirs) for a in args])
    assert r.code == 2, r
    assert message in r.err
    assert not (emb_dirs / "ad").exists()


def test_cli_apply_errors(cli, emb_dirs):
    t = emb_dirs
    assert cli("retrofit", "fit", "--embeddings", t / "corpus", "--out", t / "ad",
               "--steps", "5").code == 0
    r = cli("retrofit", "apply", "--retrofit", t / "ad", "--embeddings", t / "other",
            "--out", t / "x")
    assert r.code == 2 and "fitted on 'frozen-enc' version 'v1'" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert cli("retrofit", "apply", "--retrofit", t / "ad", "--embeddings", t / "corpus",
               "--out", t / "y").code == 0
    r = cli("retrofit", "apply", "--retrofit", t / "ad", "--embeddings", t / "y", "--out", t / "z")
    assert r.code == 2 and "already this retrofit's output" in r.err
    r = cli("retrofit", "apply", "--retrofit", t / "nope", "--embeddings", t / "corpus",
            "--out", t / "z")
    assert r.code == 2 and "--retrofit directory not found" in r.err
    r = cli("retrofit", "apply", "--retrofit", t / "corpus", "--embeddings", t / "corpus",
            "--out", t / "z")
    assert r.code == 2 and "not a nesting-retrofit" in r.err
    assert not (t / "x").exists() and not (t / "z").exists()


# ------------------------------------------------------------------ the old name
def _legacy_dir(path, kind):
    """A nesting adaptor directory as nestemb wrote it before the rename: kind
    "nesting-adaptor", ``adaptor.npz`` with the old array names, version = their hash."""
    import math

    from nestemb.io import sha256_file
    from nestemb.nesting import weights_version

    rng = np.random.default_rng(9)
    state = {"weight": rng.normal(size=(D, D)).astype(np.float32),
             "bias": rng.normal(size=D).astype(np.float32)}
    if kind == "mlp":
        state.update(w1=rng.normal(size=(D, 8)).astype(np.float32),
                     b1=rng.normal(size=8).astype(np.float32),
                     w2=rng.normal(size=(8, D)).astype(np.float32),
                     b2=rng.normal(size=D).astype(np.float32))
    version = weights_version(state)
    path.mkdir()
    np.savez(path / "adaptor.npz", **state)
    man = Manifest(model_id=f"frozen-enc+nesting-adaptor-{kind}", model_version=version,
                   nesting=(8, D), dim=D, kind="nesting-adaptor",
                   sha256={"adaptor.npz": sha256_file(path / "adaptor.npz")},
                   extra={"source": {"model_id": "frozen-enc", "model_version": "v1", "dim": D},
                          "params": {"kind": kind, "center": False, "nesting": [8, D]}})
    man.save(path)
    X = _data(n=20)
    want = X @ state["weight"] + state["bias"]
    if kind == "mlp":  # the exact (erf) GELU the old MLP used
        h = X @ state["w1"] + state["b1"]
        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
        want = want + h @ state["w2"] + state["b2"]
    return X, want, version


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_loads_directories_of_the_old_kind(tmp_path, kind):
    X, want, version = _legacy_dir(tmp_path / "old", kind)
    ad = load_retrofit(tmp_path / "old")
    assert np.allclose(ad.transform(X), want, atol=1e-3)
    # its outputs keep the old id and version, so indexes built on them still accept them
    Y, man = retrofit_embeddings(X, SRC, ad)
    assert man.model_id == f"frozen-enc+nesting-adaptor-{kind}" and man.model_version == version
    with pytest.raises(NestembError, match="already this retrofit's output"):
        check_source(man, ad)


def test_cli_old_name_still_works(cli, emb_dirs):
    t = emb_dirs
    r = cli("adaptor", "fit", "--embeddings", t / "corpus", "--out", t / "ad", "--steps", "5")
    assert r.code == 0, r
    assert "`nestemb adaptor` is now `nestemb retrofit`" in r.err
    r = cli("adaptor", "apply", "--adaptor", t / "ad", "--embeddings", t / "corpus",
            "--out", t / "adapted")
    assert r.code == 0, r
    assert "nestemb retrofit" in r.err
    assert np.allclose(load_embeddings(t / "adapted")[0],
                       load_retrofit(t / "ad").transform(load_embeddings(t / "corpus")[0]))
    r = cli("retrofit", "apply", "--retrofit", t / "ad", "--embeddings", t / "corpus",
            "--out", t / "again")
    assert r.code == 0 and "adaptor" not in r.err
    r = cli("--help")
    assert "retrofit" in r.out and "adaptor" not in r.out
