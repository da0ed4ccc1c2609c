import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.eval.metrics import average_precision_at_k, retrieval_metrics, top1



def test_map_at_10_hand_computed():
    # hits at ranks 1, 3, 10: precisions 1, 2/3, 3/10 -> (1 + 0.6667 + 0.3) / 10
    rel = np.zeros((3, 10), bool)
    rel[0, [0, 2, 9]] = True
    rel[1, :] = True  # perfect list: 1.0
    # rel[2] has no hit: 0
    ap = average_precision_at_k(rel, 10)
    np.testing.assert_allclose(ap, [(1 + 2 / 3 + 0.3) / 10, 1.0, 0.0])
    # the corrected definition divides by k: one early hit is not a perfect score
    one = np.zeros((1, 10), bool)
    one[0, 0] = True
    assert average_precision_at_k(one)[0] == pytest.approx(0.1)


def test_map_bad_shape():
    with pytest.raises(NestembError, match="relevance matrix"):
        average_precision_at_k(np.ones((2, 3), bool), 10)


def test_knn_and_map_on_prefixes_hand_computed():
    # gallery: first coordinate separates classes, second is noise; at m=1 the views are +-1
    gallery = np.array([[2.0, 0.0], [1.0, 5.0], [-1.0, 0.1], [-3.0, -4.0]])
    g_lab = np.array([0, 0, 1, 1])
    queries = np.array([[1.0, -5.0], [-1.0, 5.0]])
    q_lab = np.array([0, 1])
    r = retrieval_metrics(queries, q_lab, gallery, g_lab, dims=(1, 2), k=2)
    # m=1: query 0 -> +1 -> items 0,1 (both relevant); query 1 -> -1 -> items 2,3 (relevant)
    assert r["knn_top1"][0] == 1.0 and r["map2"][0] == 1.0
    # m=2 (cosine): q0=(1,-5) is closest to item 3 (-3,-4)/5 then item 0 -> ranks: miss, hit
    # q1=(-1,5) is closest to item 1 (1,5) (wrong class), then item 2 -> miss, hit
    assert r["knn_top1"][1] == 0.0
    assert r["map2"][1] == pytest.approx((0.5 / 2 + 0.5 / 2) / 2)


def test_top1():
    assert top1(np.eye(3), np.array([0, 1, 0])) == pytest.approx(2 / 3)
    with pytest.raises(NestembError, match="do not match"):
        top1(np.eye(3), np.array([0, 1]))
