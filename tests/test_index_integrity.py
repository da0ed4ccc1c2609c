"""Issue 20, the index library: a tuning time budget, options that cannot lie, corrupted index
directories as clean errors, zero-norm prefixes refused, duplicate ids refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.index import (
    AdaptiveIVFIndex,
    AdaptiveOPQIndex,
    FunnelIndex,
    exact_search,
    knn_intersection,
    load_index,
    synthetic_matryoshka,
    tune,
)

D = 32
NEST = (8, 16, 32)


@pytest.fixture(scope="module")
def X():
    return synthetic_matryoshka(600, D, seed=3)


# ----------------------------------------------------------------------------- tune budget
def test_tune_reports_the_grid_total_and_an_estimate(X):
    idx = FunnelIndex(dims=(8, 32), shortlist=(50,), nesting=NEST).add(X)
    grid = idx.candidate_grid(5)
    seen = []
    res = tune(idx, X[:20], k=5, recall=0.99, max_queries=20,
               progress=lambda done, total, eta: seen.append((done, total, eta)))
    assert seen[0][1] == sum(map(len, grid)) == res["grid_size"]  # the whole grid, before any stop
    assert [d for d, _, _ in seen] == list(range(1, len(res["candidates"]) + 1))
    assert all(d <= t for d, t, _ in seen) and seen[-1][0] == seen[-1][1]  # ends at its total
    assert all(eta >= 0 and math.isfinite(eta) for _, _, eta in seen) and seen[-1][2] == 0
    assert res["complete"] is True and res["seconds"] >= 0


def test_tune_stops_at_its_time_budget_with_a_usable_result(X):
    idx = FunnelIndex(dims=(8, 32), shortlist=(50,), nesting=NEST).add(X)
    full = tune(FunnelIndex(dims=(8, 32), shortlist=(50,), nesting=NEST).add(X), X[:20], k=5,
                recall=0.999, max_queries=20, exhaustive=True)
    res = tune(idx, X[:20], k=5, recall=0.999, max_queries=20, exhaustive=True, max_seconds=1e-9)
    assert len(full["candidates"]) > 1
    assert len(res["candidates"]) == 1 and res["complete"] is False  # stopped after the first
    assert res["max_seconds"] == 1e-9 and res["grid_size"] == len(full["candidates"])
    # what was applied is what was measured, checked here against brute force
    found = idx.search(X[:20], k=5)[1]
    truth = exact_search(idx.vectors_, X[:20], 5)[1]
    assert knn_intersection(found, truth) == pytest.approx(res["recall"])
    assert idx.tuning_["complete"] is False


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "10", True])
def test_tune_refuses_a_bad_budget(X, bad):
    idx = FunnelIndex(dims=(8, 32), shortlist=(50,), nesting=NEST).add(X)
    with pytest.raises(NestembError, match="max_seconds must be a positive number") as e:
        tune(idx, X[:5], k=5, max_seconds=bad)
    assert e.value.param == "max_seconds"


# ----------------------------------------------------------------------------- options
def test_ivf_options_that_would_lie_are_refused():
    with pytest.raises(NestembError, match="code_bytes must be a positive integer, got 0") as e:
        AdaptiveOPQIndex(d_search=16, code_bytes=0)
    assert e.value.param == "code_bytes"
    with pytest.raises(NestembError) as e:
        AdaptiveIVFIndex(d_search=32, codec="pq", code_bytes=7)
    assert e.value.param == "code_bytes"
    assert e.value.render("--code-bytes") == "--code-bytes must divide the search dimension 32, got 7"
    with pytest.raises(NestembError, match="nprobe must be at most nlist") as e:
        AdaptiveIVFIndex(nlist=8, nprobe=9)
    assert e.value.param == "nprobe"
    # the default visits min(16, nlist) lists; set_params is checked the same way
    assert AdaptiveIVFIndex(nlist=8).nprobe == 8 and AdaptiveIVFIndex(nlist=64).nprobe == 16
    with pytest.raises(NestembError, match="nprobe must be at most nlist"):
        AdaptiveIVFIndex(nlist=8).set_params(nprobe=20)


# ----------------------------------------------------------------------------- corrupted files
def _saved(tmp_path, X, kind="funnel"):
    if kind == "funnel":
        idx = FunnelIndex(dims=(8, 32), shortlist=(50,), nesting=NEST)
    else:  # writes vectors.npy
        idx = AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=8, nesting=NEST)
    idx.add(X).save(tmp_path / "i")
    return tmp_path / "i"


def _edit_manifest(path, edit):
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


def _set(*keys, value=None, drop=False):
    def edit(m):
        d = m
        for k in keys[:-1]:
            d = d[k]
        if drop:
            del d[keys[-1]]
        else:
            d[keys[-1]] = value
    return edit


@pytest.mark.parametrize(
    "edit, field",
    [
        (_set("extra", value=[]), "extra"),
        (_set("extra", value="x"), "extra"),
        (_set("extra", "index_type", drop=True), "extra.index_type"),
        (_set("extra", "index_type", value=["FunnelIndex"]), "extra.index_type"),
        (_set("extra", "params", drop=True), "extra.params"),
        (_set("extra", "params", value=[]), "extra.params"),
        (_set("extra", "tuning", value={"recall": "high"}), "extra.tuning"),
        (_set("extra", "tuning", value=[]), "extra.tuning"),
        (_set("extra", "tuning", value={"params": {}, "recall": "high"}), "extra.tuning.recall"),
        (_set("extra", "tuning", value={"params": {}, "k": "ten"}), "extra.tuning.k"),
        (_set("extra", "tuning", value={"params": {}, "recall": 1.5}), "extra.tuning.recall"),
        (_set("extra", "tuning", value={"params": {}, "max_seconds": "x"}),
         "extra.tuning.max_seconds"),
        (_set("extra", "n_vectors", value="600"), "extra.n_vectors"),
        (_set("extra", "n_vectors", value=599), "extra.n_vectors"),
        (_set("extra", "n_deleted", value=-1), "extra.n_deleted"),
        (_set("extra", "n_deleted", value=3), "extra.n_deleted"),
        (_set("extra", "next_id", value="x"), "next_id"),
    ],
)
def test_corrupted_index_config_is_a_clean_error(tmp_path, X, edit, field):
    path = _saved(tmp_path, X)
    _edit_manifest(path, edit)
    with pytest.raises(NestembError) as e:
        load_index(path).search(X[:2], k=3)
    assert str(path / "manifest.json") in str(e.value) and field in str(e.value), str(e.value)


BAD_VALUES = [None, "x", [], {}, -1, 0, 2.5, True, 10**30, [8.5, 32], ["a"], {"a": 1}]


@pytest.mark.parametrize("kind", ["funnel", "ivf"])
def test_every_param_of_the_wrong_type_is_a_clean_error(tmp_path, X, kind):
    """Each saved parameter replaced by values of every wrong type: a NestembError naming the
    manifest, or (a value the parameter accepts) an index that still searches exactly as its
    index files say; never a TypeError, AttributeError or KeyError."""
    path = _saved(tmp_path, X, kind)
    original = (path / "manifest.json").read_text()
    names = list(json.loads(original)["extra"]["params"])
    for name in names:
        for value in BAD_VALUES:
            (path / "manifest.json").write_text(original)
            _edit_manifest(path, _set("extra", "params", name, value=value))
            try:
                idx = load_index(path, verify=False)
                idx.search(X[:2], k=3)
            except NestembError as e:
                assert "manifest.json" in str(e) or "index" in str(e), (name, value, str(e))


def _replace_data_file(path, name, array=None, raw=None):
    """Replace a data file of an index and fix its checksum, as a writer with a bug would."""
    from nestemb.io import sha256_file

    f = path / name
    if raw is not None:
        f.write_bytes(raw)
    else:
        np.save(f, array)
    _edit_manifest(path, _set("sha256", name, value=sha256_file(f)))


@pytest.mark.parametrize(
    "kind, name, make, words",
    [
        ("funnel", "ids.npy", lambda a: a.astype(np.float64), "ids.npy"),
        ("funnel", "ids.npy", lambda a: a.reshape(-1, 1), "ids.npy"),
        ("funnel", "ids.npy", lambda a: a[:-5], "ids"),
        ("funnel", "deleted.npy", lambda a: a.astype(np.int64) + 2, "deleted.npy"),
        ("funnel", "deleted.npy", lambda a: a.reshape(-1, 2), "deleted.npy"),
        ("ivf", "vectors.npy", lambda a: a.astype(np.float64), "vectors.npy"),
        ("ivf", "vectors.npy", lambda a: a[:, :16], "vectors"),
        ("ivf", "vectors.npy", lambda a: a[:-1], "vectors"),
        ("ivf", "vectors.npy", lambda a: a[:, 0], "vectors"),
    ],
)
def test_corrupted_index_data_files_are_a_clean_error(tmp_path, X, kind, name, make, words):
    path = _saved(tmp_path, X, kind)
    _replace_data_file(path, name, make(np.load(path / name)))
    with pytest.raises(NestembError, match=words):
        load_index(path).search(X[:2], k=3)


@pytest.mark.parametrize("name", ["ids.npy", "deleted.npy"])
def test_truncated_index_data_file_is_a_clean_error(tmp_path, X, name):
    path = _saved(tmp_path, X)
    _replace_data_file(path, name, raw=(path / name).read_bytes()[:-7])
    with pytest.raises(NestembError, match=f"cannot read .*{name}"):
        load_index(path)


def test_holds_names_the_index_type_with_its_article(tmp_path, X):
    path = _saved(tmp_path, X)
    with pytest.raises(NestembError, match="holds a FunnelIndex, not an AdaptiveIVFIndex"):
        AdaptiveIVFIndex.load(path)


# ----------------------------------------------------------------------------- zero-norm prefixes
def test_min_prefix_norm_is_the_service_threshold():
    from nestemb.index.base import MIN_PREFIX_NORM
    from nestemb.service import app  # part of the package: never a reason to skip

    assert MIN_PREFIX_NORM == app.MIN_PREFIX_NORM


MAKERS = [
    lambda: FunnelIndex(dims=(8, 32), shortlist=(50,), nesting=NEST),
    lambda: FunnelIndex(dims=(8, 32), shortlist=(50,), prefix_dtype="binary", first_stage="hnsw",
                        nesting=NEST),
    lambda: AdaptiveIVFIndex(d_cluster=8, d_search=16, nlist=8, nesting=NEST),
    lambda: AdaptiveOPQIndex(d_search=16, code_bytes=4, nesting=NEST),
]


@pytest.mark.parametrize("make", MAKERS)
def test_zero_norm_first_prefix_is_refused_on_add_and_search(X, make):
    bad = X.copy()
    bad[7, :8] = 0.0  # the rest of the vector is not zero: only its first prefix is
    with pytest.raises(NestembError, match=r"row 7: the first 8 dims are all zero or nearly \(norm < 1e-30\)"):
        make().add(bad)
    fresh = make()
    with pytest.raises(NestembError, match="row 7"):
        fresh.add(bad)
    assert not fresh.is_trained  # refused before training
    idx = make().add(X)
    with pytest.raises(NestembError, match="row 3"):
        idx.add(np.concatenate([X[:3] * 1.5, np.zeros((1, D), np.float32)]), ids=[900, 901, 902, 903])
    assert len(idx) == len(X) and len(idx.ids_) == len(X)  # nothing added
    Q = X[:5].copy()
    Q[2, :8] = 1e-32
    for search in (idx.search, idx.search_exact):
        with pytest.raises(NestembError, match=r"queries row 2: the first 8 dims"):
            search(Q, k=3)
        with pytest.raises(NestembError, match=r"queries row 0: the first 8 dims"):
            search(np.zeros(D, np.float32), k=3)
    # tiny but representable prefixes are vectors like any other, found by exact search too
    Q[2, :8] = X[2, :8] * 1e-20
    found = idx.search(Q, k=3)[1]
    assert found.shape == (5, 3)


def test_zero_norm_is_refused_in_a_streamed_gallery_before_anything_is_stored(X):
    big = np.tile(X, (220, 1))  # > 4M values: FunnelIndex streams it chunk by chunk
    big[len(big) - 2, :8] = 0.0
    idx = FunnelIndex(dims=(8, 32), shortlist=(50,), nesting=NEST).add(X)
    with pytest.raises(NestembError, match=f"row {len(big) - 2}: the first 8 dims"):
        idx.add(big, ids=np.arange(len(big)) + 10**6)
    assert len(idx) == len(X) and idx.full_.ntotal == len(X) and idx.stage_.ntotal == len(X)
    assert idx.search(X[:3], k=1)[1].ravel().tolist() == [0, 1, 2]


def test_duplicate_string_ids_are_refused(X):
    with pytest.raises(NestembError, match="duplicate ids"):
        FunnelIndex(dims=(8, 32), shortlist=(50,)).add(X[:3], ids=["a", "b", "a"])


def test_an_index_saved_with_nprobe_above_nlist_still_loads(tmp_path, X):
    """Before nprobe was bounded, nprobe 16 over 8 lists was saved (and searched 8 lists)."""
    path = _saved(tmp_path, X, "ivf")
    before = load_index(path).search(X[:10], k=5)[1]
    _edit_manifest(path, _set("extra", "params", "nprobe", value=16))
    loaded = load_index(path, verify=False)
    assert loaded.nprobe == 8 and (loaded.search(X[:10], k=5)[1] == before).all()
