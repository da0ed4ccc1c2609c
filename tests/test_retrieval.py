"""nDCG@10, recall@100 and Spearman against hand-computed values and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.eval.retrieval import evaluate_retrieval, ndcg_at_k, recall_at_k
from nestemb.eval.sts import evaluate_sts, rankdata, spearman
from nestemb.nesting import prefix_view


def test_ndcg_hand_computed():
    # ranked: d3 (rel 2), d1 (0), d2 (1); ideal: 2, 1
    qrel = {"d3": 2, "d2": 1, "d1": 0}
    dcg = 2 / math.log2(2) + 0 + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(["d3", "d1", "d2"], qrel) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["d3", "d2"], qrel) == pytest.approx(1.0)
    assert ndcg_at_k(["x"] * 10 + ["d3"], qrel, k=10) == 0.0  # beyond the cut-off
    assert ndcg_at_k(["a"], {}) == 0.0


def test_recall_hand_computed():
    qrel = {"a": 1, "b": 1, "c": 0, "d": 2}
    assert recall_at_k(["a", "c", "x"], qrel) == pytest.approx(1 / 3)
    assert recall_at_k(["x", "a"], qrel, k=1) == 0.0
    assert recall_at_k(["d", "b", "a"], qrel, k=100) == 1.0


def test_evaluate_retrieval_against_brute_force():
    rng = np.random.default_rng(1)
    q, d = rng.normal(size=(20, 16)), rng.normal(size=(150, 16))
    qids, dids = [f"q{i}" for i in range(20)], [f"d{j}" for j in range(150)]
    qrels = {f"q{i}": {f"d{j}": int(rng.integers(1, 3)) for j in rng.choice(150, 3, replace=False)}
             for i in range(20)}
    res = evaluate_retrieval(q, d, qids, dids, qrels, [4, 16])
    for k, m in enumerate([4, 16]):
        s = prefix_view(q, m) @ prefix_view(d, m).T
        nd, rc = [], []
        for i in range(20):
            order = [dids[j] for j in np.argsort(-s[i])]
            rel = qrels[qids[i]]
            dcg = sum(rel.get(x, 0) / math.log2(r + 2) for r, x in enumerate(order[:10]))
            ideal = sorted(rel.values(), reverse=True)
            idcg = sum(v / math.log2(r + 2) for r, v in enumerate(ideal[:10]))
            nd.append(dcg / idcg)
            rc.append(len(set(order[:100]) & set(rel)) / len(rel))
        assert res["ndcg10"][k] == pytest.approx(np.mean(nd))
        assert res["recall100"][k] == pytest.approx(np.mean(rc))


def test_evaluate_retrieval_errors():
    with pytest.raises(NestembError, match="no judged query"):
        evaluate_retrieval(np.ones((1, 2)), np.ones((1, 2)), ["q"], ["d"], {"x": {"d": 1}}, [2])
    with pytest.raises(NestembError, match="differ in length"):
        evaluate_retrieval(np.ones((1, 2)), np.ones((1, 2)), ["q", "r"], ["d"], {"q": {"d": 1}}, [2])


def test_spearman_hand_computed_with_ties():
    a, b = [1.0, 2.0, 2.0, 4.0], [3.0, 1.0, 2.0, 4.0]
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([3, 1, 2, 4.0])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    expected = (ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum())
    assert spearman(a, b) == pytest.approx(expected)
    assert rankdata([3, 1, 3, 3]).tolist() == [3.0, 1.0, 3.0, 3.0]
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_matches_scipy():
    from scipy import stats  # a core dependency
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 50), rng.normal(size=50)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)


def test_evaluate_sts_uses_prefix_views():
    e1 = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    e2 = np.array([[1.0, 0.0, -5.0], [1.0, 0.0, 0.0], [1.0, 0.5, 0.0]])
    res = evaluate_sts(e1, e2, [3.0, 1.0, 2.0], [2, 3])
    # at 2 dims: cos = 1, 0, 0.949 -> ranks agree with gold; at 3 dims pair 0 is anti-aligned
    assert res["spearman"][0] == pytest.approx(1.0)
    assert res["spearman"][1] == pytest.approx(-0.5)
    with pytest.raises(NestembError, match="differ in length"):
        evaluate_sts(e1, e2, [1.0], [2])


def test_index_search_refuses_negative_show(cli, tmp_path):
    # issue 9: `--show -1` was accepted (checked before the index is opened)
    r = cli("index", "search", tmp_path / "idx", "--queries", tmp_path / "q", "--show", "-1")
    assert r.code == 2 and "Traceback" not in r.err, r
    assert "--show must be >= 0, got -1" in r.err
