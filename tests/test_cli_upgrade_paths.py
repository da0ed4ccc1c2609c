"""``adapter fit --unpaired`` (pair-free) and chains of adapters (``adapter apply --adapter A
--adapter B``, ``index search --adapter A --adapter B``) end to end, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nestemb.folders import load_embeddings, save_embeddings
from nestemb.nesting import Manifest, prefix_view

V1 = Manifest(model_id="enc", model_version="v1", nesting=(8, 16), dim=16)
V2 = Manifest(model_id="enc", model_version="v2", nesting=(8, 16, 24), dim=24)
V3 = Manifest(model_id="enc", model_version="v3", nesting=(8, 16), dim=16)


def _one_line_error(r, match):
    assert r.code == 2, r
    assert "Traceback" not in r.err and r.err.strip().count("\n") == 0, r.err
    assert match in r.err, r.err


@pytest.fixture(scope="module")
def spaces(tmp_path_factory):
    """One clustered cloud seen by three model versions through known isometries (v1 16-d,
    v2 24-d, v3 16-d); folders of paired items and of two disjoint halves."""
    d = tmp_path_factory.mktemp("upgrade")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16)) * rng.uniform(0.5, 2.0, size=16)
    z = centres[rng.integers(0, 20, 1200)] + 0.25 * rng.normal(size=(1200, 16))
    q12 = np.linalg.qr(rng.normal(size=(24, 16)))[0].T  # (16, 24): orthonormal rows
    rot = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    x1 = prefix_view(z, 16)
    x2, x3 = x1 @ q12, x1 @ rot
    ids = list(range(len(z)))
    for name, X, man in (("v1", x1, V1), ("v2", x2, V2), ("v3", x3, V3)):
        save_embeddings(d / name, X, man, ids=ids)
    save_embeddings(d / "v1_a", x1[:600], V1, ids=ids[:600])
    save_embeddings(d / "v2_b", x2[600:], V2, ids=ids[600:])
    return {"dir": d, "x": (x1, x2, x3)}


def test_unpaired_fit_maps_one_half_onto_the_other(cli, spaces, tmp_path):
    d, (_, x2, _) = spaces["dir"], spaces["x"]
    r = cli("adapter", "fit", "--unpaired", "--source", d / "v1_a", "--target", d / "v2_b",
            "--out", tmp_path / "free")
    assert r.code == 0, r
    assert "pair-free orthogonal adapter" in r.out and "600 rows" in r.out
    r = cli("adapter", "apply", "--adapter", tmp_path / "free", "--embeddings", d / "v1",
            "--out", tmp_path / "mapped")
    assert r.code == 0, r
    Y, m = load_embeddings(tmp_path / "mapped")
    assert m.model_version == "v2"
    # no item was in both halves, yet every vector lands on its own true image
    cos = np.einsum("ij,ij->i", prefix_view(Y, 24), x2)
    assert cos.mean() > 0.95, cos.mean()


def test_unpaired_refuses_pair_options_and_other_kinds(cli, spaces, tmp_path):
    d = spaces["dir"]
    base = ["adapter", "fit", "--unpaired", "--source", d / "v1_a", "--target", d / "v2_b",
            "--out", tmp_path / "x"]
    _one_line_error(cli(*base, "--kind", "affine"), "--unpaired fits an orthogonal map")
    _one_line_error(cli(*base, "--holdout", "0.2"), "--holdout needs pairs")
    _one_line_error(cli(*base, "--clusters", "5000"), "--clusters")
    _one_line_error(cli("adapter", "fit", "--unpaired", "--source", d / "v1_a", "--target",
                        d / "v1", "--out", tmp_path / "x"), "same model")
    assert not (tmp_path / "x").exists()


def test_chain_apply_and_search(cli, spaces, tmp_path):
    d, (_, _, x3) = spaces["dir"], spaces["x"]
    for a, b in (("v1", "v2"), ("v2", "v3")):
        r = cli("adapter", "fit", "--source", d / a, "--target", d / b, "--out",
                tmp_path / f"{a}{b}", "--holdout", "0.2")
        assert r.code == 0, r
    hops = ["--adapter", tmp_path / "v1v2", "--adapter", tmp_path / "v2v3"]
    r = cli("adapter", "apply", *hops, "--embeddings", d / "v1", "--out", tmp_path / "m",
            "--min-quality", "0.5")
    assert r.code == 0, r
    Y, m = load_embeddings(tmp_path / "m")
    assert m.model_version == "v3" and len(m.extra["adapted"]["chain"]) == 2
    np.testing.assert_allclose(prefix_view(Y, 16), x3, atol=1e-4)
    # the chain in the wrong order, or with its middle model missing: refused, nothing written
    r = cli("adapter", "apply", "--adapter", tmp_path / "v2v3", "--adapter",
            tmp_path / "v1v2", "--embeddings", d / "v1", "--out", tmp_path / "bad")
    _one_line_error(r, "out of order")
    r = cli("adapter", "apply", "--adapter", tmp_path / "v2v3", "--embeddings", d / "v1",
            "--out", tmp_path / "bad")
    assert r.code == 2 and "wrong model" in r.err, r
    assert not (tmp_path / "bad").exists()
    # an index of v3 searched by v1 queries through the chain finds each item itself
    r = cli("index", "build", d / "v3", "--out", tmp_path / "ix")
    assert r.code == 0, r
    r = cli("index", "search", tmp_path / "ix", "--queries", d / "v1", *hops, "--limit", "50",
            "--out", tmp_path / "hits.json", "--show", "0")
    assert r.code == 0, r
    hits = json.loads((tmp_path / "hits.json").read_text())
    # the same cloud, in rows of near-duplicates: each query's own item is among its top 10
    assert np.mean([int(q) in h["ids"] for q, h in hits.items()]) > 0.95
