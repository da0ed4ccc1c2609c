"""Compatibility matrix, criterion, AC, AM, update gain and partial backfill against
hand-computed values and a brute-force reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nestemb.compat.matrix import (
    BackfillCurve,
    CompatibilityMatrix,
    ac,
    am,
    compatibility_matrix,
    criterion_matrix,
    cross_metric,
    is_compatible,
    partial_backfill,
    plot_compatibility,
    update_gain,
)
from nestemb.errors import NestembError

# rows: query model, columns: gallery model; models old -> new
C3 = np.array([
    [0.50, 0.10, 0.20],
    [0.60, 0.70, 0.30],
    [0.50, 0.80, 0.90],
])


# ------------------------------------------------------------------ criterion, AC, AM, G


def test_criterion_by_hand():
    # (1, 0): .6 > .5 and .7 >= .6 -> pass
    assert is_compatible(C3, new=1, old=0) is True
    # (2, 0): .5 > .5 fails: the first inequality is strict
    assert is_compatible(C3, new=2, old=0) is False
    # (2, 1): .8 > .7 and .9 >= .8 -> pass
    assert is_compatible(C3, new=2, old=1) is True
    assert criterion_matrix(C3).tolist() == [
        [False, False, False],
        [True, False, False],
        [False, True, False],
    ]
    assert ac(C3) == pytest.approx(2 / 3)
    assert am(C3) == pytest.approx((0.5 + 0.6 + 0.7 + 0.5 + 0.8 + 0.9) / 6)


def test_second_inequality_is_non_strict():
    C = C3.copy()
    C[2, 2] = 0.80  # C[new,new] == C[new,old]: still compatible
    assert is_compatible(C, new=2, old=1) is True
    C[2, 2] = 0.79  # re-indexing would hurt: fails
    assert is_compatible(C, new=2, old=1) is False
    assert ac(C) == pytest.approx(1 / 3)


def test_first_inequality_tie_and_just_above():
    C = C3.copy()
    C[2, 0] = 0.5000001
    assert is_compatible(C, new=2, old=0) is True
    assert ac(C) == 1.0


def test_nan_entries():
    C = C3.copy()
    C[2, 0] = np.nan
    assert is_compatible(C, new=2, old=0) is False
    assert ac(C) == 1.0  # the pair (2, 0) cannot be evaluated: left out, the 2 others pass
    C[1, 1] = np.nan  # now only pairs through model 1: none can be evaluated
    assert math.isnan(ac(C))
    C[1, 1] = 0.7
    assert am(C) == pytest.approx((0.5 + 0.6 + 0.7 + 0.8 + 0.9) / 5)
    assert math.isnan(am(np.full((2, 2), np.nan)))


def test_update_gain_by_hand():
    assert update_gain(0.6, 0.5, 0.9) == pytest.approx(0.25)
    # BT2's CIFAR-100 figures: (38.7 - 33.6) / (62.7 - 33.6); BCT's: negative
    assert update_gain(38.7, 33.6, 62.7) == pytest.approx(5.1 / 29.1)
    assert update_gain(25.0, 33.6, 60.0) == pytest.approx(-8.6 / 26.4)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ac(np.ones((1, 1))), "at least 2 models"),
        (lambda: ac(np.ones((2, 3))), "square"),
        (lambda: is_compatible(C3, 1, 1), "different models"),
        (lambda: is_compatible(C3, 3, 0), "new must be a model index"),
        (lambda: update_gain(0.6, 0.5, 0.5), "undefined"),
        (lambda: update_gain(float("nan"), 0.5, 0.9), "new_old must be finite"),
    ],
)
def test_criterion_errors(call, match):
    with pytest.raises(NestembError, match=match):
        call()


# ------------------------------------------------------------------ cross_metric


def _brute(queries, gallery, dim, metric, ql=None, gl=None, qrels=None, k=None):
    """Reference: explicit loops over cosine similarities of the dim-prefixes."""
    def unit(x):
        x = np.asarray(x, dtype=np.float64)[:, :dim]
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    sims = unit(queries) @ unit(gallery).T
    out = []
    for i, s in enumerate(sims):
        order = sorted(range(len(s)), key=lambda j: -s[j])
        if metric == "top1":
            out.append(float(gl[order[0]] == ql[i]))
        elif metric == "map":
            hits, total = 0, 0.0
            for rank, j in enumerate(order[:k], start=1):
                if gl[j] == ql[i]:
                    hits += 1
                    total += hits / rank
            out.append(total / k)
        else:
            if not qrels[i]:
                continue
            dcg = sum(qrels[i].get(j, 0) / math.log2(r + 2) for r, j in enumerate(order[:k]))
            ideal = sorted(qrels[i].values(), reverse=True)[:k]
            out.append(dcg / sum(v / math.log2(r + 2) for r, v in enumerate(ideal)))
    return float(np.mean(out))


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    gl = rng.integers(0, 4, 60)
    centres = rng.normal(size=(4, 16))
    gallery = centres[gl] + 0.9 * rng.normal(size=(60, 16))
    ql = rng.integers(0, 4, 25)
    queries = centres[ql] + 0.9 * rng.normal(size=(25, 16))
    qrels = [{int(j): int(rng.integers(1, 3)) for j in rng.choice(60, 3, replace=False)}
             for _ in range(25)]
    qrels[4] = {}  # an unjudged query is skipped
    return queries, gallery, ql, gl, qrels


@pytest.mark.parametrize("dim", [2, 5, 16])
def test_cross_metric_matches_brute_force(data, dim):
    q, g, ql, gl, qrels = data
    for metric, k in (("top1", None), ("map", 10), ("map", None), ("ndcg", None), ("ndcg", 5)):
        kw = {"qrels": qrels} if metric == "ndcg" else {"query_labels": ql, "gallery_labels": gl}
        got = cross_metric(q, g, dim=dim, metric=metric, k=k, **kw)
        kk = k or {"top1": 1, "map": 100, "ndcg": 10}[metric]
        want = _brute(q, g, dim, metric, ql, gl, qrels, min(kk, len(g)) if metric == "map" else kk)
        assert got == pytest.approx(want, abs=1e-6), (metric, k)


def test_cross_metric_different_widths(data):
    q, g, ql, gl, _ = data
    wide_q = np.concatenate([q, np.ones((len(q), 8))], axis=1)  # extra dims beyond the prefix
    got = cross_metric(wide_q, g, dim=8, metric="top1", query_labels=ql, gallery_labels=gl)
    assert got == pytest.approx(_brute(q, g, 8, "top1", ql, gl))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(dim=17, metric="top1"), "dim 17 is wider than the queries"),
        (dict(dim=0, metric="top1"), "dim must be a positive integer"),
        (dict(dim=4, metric="recall"), "metric must be one of"),
        (dict(dim=4, metric="top1", k=5), "k does not apply"),
        (dict(dim=4, metric="map", k=0), "k must be a positive integer"),
        (dict(dim=4, metric="ndcg"), "needs qrels"),
        (dict(dim=4, metric="top1", qrels=[{}] * 25), "not qrels"),
    ],
)
def test_cross_metric_errors(data, kw, match):
    q, g, ql, gl, _ = data
    if "qrels" not in kw and kw.get("metric") != "ndcg":
        kw = {**kw, "query_labels": ql, "gallery_labels": gl}
    with pytest.raises(NestembError, match=match):
        cross_metric(q, g, **kw)


def test_cross_metric_label_and_qrels_errors(data):
    q, g, ql, gl, qrels = data
    with pytest.raises(NestembError, match="needs gallery_labels"):
        cross_metric(q, g, dim=4, metric="top1", query_labels=ql)
    with pytest.raises(NestembError, match="query_labels must be one label per row"):
        cross_metric(q, g, dim=4, metric="map", query_labels=ql[:3], gallery_labels=gl)
    with pytest.raises(NestembError, match="not of the same type"):
        cross_metric(q, g, dim=4, metric="top1", query_labels=ql.astype(str), gallery_labels=gl)
    with pytest.raises(NestembError, match="qrels has 3 entries for 25 queries"):
        cross_metric(q, g, dim=4, metric="ndcg", qrels=qrels[:3])
    with pytest.raises(NestembError, match="gallery row 60, outside 0..59"):
        cross_metric(q, g, dim=4, metric="ndcg", qrels=[{60: 1}] * 25)
    with pytest.raises(NestembError, match="judge no query"):
        cross_metric(q, g, dim=4, metric="ndcg", qrels=[{}] * 25)
    with pytest.raises(NestembError, match="NaN or inf"):
        cross_metric(np.full((2, 16), np.nan), g, dim=4, metric="ndcg", qrels=[{0: 1}] * 2)


# ------------------------------------------------------------------ the matrix


def test_compatibility_matrix_entries_and_nan(data):
    q, g, ql, gl, _ = data
    rng = np.random.default_rng(0)
    R = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    narrow_q, narrow_g = q[:, :8], g[:, :8]          # model 0: 8 dims
    qs, gs = [narrow_q, q, q @ R], [narrow_g, g, g @ R]
    cm = compatibility_matrix(qs, gs, models=("a", "b", "c"), dims=(4, 8, 16),
                              query_labels=ql, gallery_labels=gl, progress=False)
    assert cm.values.shape == (3, 3, 3)
    for i in range(3):
        for j in range(3):
            for p, d in enumerate(cm.dims):
                if d > min(qs[i].shape[1], gs[j].shape[1]):
                    assert math.isnan(cm.values[i, j, p])
                else:
                    assert cm.values[i, j, p] == pytest.approx(cross_metric(
                        qs[i], gs[j], dim=d, metric="top1", query_labels=ql, gallery_labels=gl))
    # models a and b share their 8-d prefix, so they are interchangeable there
    assert cm.at(8)[0, 1] == cm.at(8)[1, 1] == cm.at(8)[0, 0]
    d = json.loads(json.dumps(cm.to_dict()))
    back = CompatibilityMatrix.from_dict(d)
    assert back.models == cm.models and back.dims == cm.dims
    np.testing.assert_array_equal(back.values, cm.values)
    assert d["summary"]["16"]["am"] == pytest.approx(am(cm.at(16)))
    assert d["values"][0][0][2] is None


def test_compatibility_matrix_default_dims(data):
    q, g, ql, gl, _ = data
    cm = compatibility_matrix([q[:, :12], q], [g[:, :12], g], query_labels=ql,
                              gallery_labels=gl, progress=False)
    assert cm.dims == (2, 4, 8, 12, 16) and cm.models == ("m0", "m1")


def test_compatibility_matrix_refuses_different_items(data):
    q, g, ql, gl, _ = data
    kw = dict(query_labels=ql, gallery_labels=gl, progress=False, models=("old", "new"))
    with pytest.raises(NestembError, match="queries of model 'new' have 24 rows, model 'old' 25"):
        compatibility_matrix([q, q[:24]], [g, g], **kw)
    with pytest.raises(NestembError, match="gallery of model 'new' has 59 rows"):
        compatibility_matrix([q, q], [g, g[:59]], **kw)
    with pytest.raises(NestembError, match="model 'new': queries have 16 dims, gallery 8"):
        compatibility_matrix([q, q], [g, g[:, :8]], **kw)
    with pytest.raises(NestembError, match="one query array and one gallery array per model"):
        compatibility_matrix([q, q], [g], **kw)
    with pytest.raises(NestembError, match="models names 2 models, but 1"):
        compatibility_matrix([q], [g], **kw)
    with pytest.raises(NestembError, match="dim 12 is not one of"):
        compatibility_matrix([q], [g], dims=(8,), query_labels=ql, gallery_labels=gl,
                             progress=False).at(12)


def test_plot(tmp_path, data):
    cm = CompatibilityMatrix(("a", "b", "c"), (4, 8), "top1",
                             np.stack([C3, np.where(np.eye(3) > 0, C3, np.nan)], axis=-1))
    plot_compatibility(cm, tmp_path / "h.png", title="demo")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(NestembError, match="dim 16 is not one of"):
        plot_compatibility(cm, tmp_path / "x.png", dims=(16,))


# ------------------------------------------------------------------ partial backfill


def test_partial_backfill_by_hand():
    # 4 items; the old gallery is useless for the new queries, the new one perfect
    old, new, q = np.eye(4), -np.eye(4), -np.eye(4)
    labels = np.arange(4)
    c = partial_backfill(q, old, new, fractions=(0, 0.25, 0.5, 1), dim=4, order="sequential",
                         query_labels=labels, gallery_labels=labels)
    assert c.values == (0.0, 0.25, 0.5, 1.0)
    # trapezoid: .25*(0+.25)/2 + .25*(.25+.5)/2 + .5*(.5+1)/2
    assert c.auc == pytest.approx(0.03125 + 0.09375 + 0.375)
    c = partial_backfill(q, old, new, fractions=(0, 0.5, 1), dim=4, order=[3, 2, 1, 0],
                         query_labels=labels, gallery_labels=labels)
    assert c.values == (0.0, 0.5, 1.0)
    assert isinstance(c, BackfillCurve) and c.to_dict()["auc"] == c.auc


def test_partial_backfill_random_is_seeded(data):
    q, g, ql, gl, _ = data
    rng = np.random.default_rng(1)
    old = g @ np.linalg.qr(rng.normal(size=(16, 16)))[0]  # an incompatible old space
    kw = dict(dim=16, metric="map", k=10, query_labels=ql, gallery_labels=gl)
    a = partial_backfill(q, old, g, seed=5, **kw)
    assert a == partial_backfill(q, old, g, seed=5, **kw)
    assert a.values[-1] == pytest.approx(cross_metric(q, g, dim=16, metric="map", k=10,
                                                      query_labels=ql, gallery_labels=gl))
    assert len(a.fractions) == 11


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(fractions=(0.1, 1)), "from 0 to 1"),
        (dict(fractions=(0, 0.5, 0.5, 1)), "strictly ascending"),
        (dict(order="newest"), "order must be"),
        (dict(order=[0, 0, 1, 2]), "permutation of the 4 gallery rows"),
        (dict(dim=5), "dim 5 is wider than the new_queries"),
    ],
)
def test_partial_backfill_errors(kw, match):
    labels = np.arange(4)
    args = {"dim": 4, "query_labels": labels, "gallery_labels": labels, **kw}
    with pytest.raises(NestembError, match=match):
        partial_backfill(np.eye(4), np.eye(4), np.eye(4), **args)


def test_partial_backfill_rows_must_pair():
    labels = np.arange(4)
    with pytest.raises(NestembError, match="old_gallery has 4 rows and new_gallery 3"):
        partial_backfill(np.eye(4), np.eye(4), np.eye(4)[:3], dim=4, query_labels=labels,
                         gallery_labels=labels)
