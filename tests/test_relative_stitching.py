"""Zero-shot stitching helpers (issue 11): linear heads, stitched accuracy, relative retrieval."""

import numpy as np
import pytest

from nestemb.maps import fit_adapter
from nestemb.errors import NestembError
from nestemb.nesting import prefix_view
from nestemb.relative import relative_projection
from nestemb.relative.stitching import LinearHead, fit_head, stitch_accuracy, stitch_retrieval


def _runs(n=400, d=12, classes=4, seed=0):
    """Two "runs" of one encoder: run B = run A rotated, scaled and shifted."""
    rng = np.random.default_rng(seed)
    centers = 3 * rng.normal(size=(classes, d))
    y = np.arange(n) % classes
    A = centers[y] + rng.normal(size=(n, d))
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    return A, 2.5 * A @ Q + 1.0, y


def test_ridge_head_matches_closed_form():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    y = np.array([0, 1, 2] * 10)
    h = fit_head(X, y, alpha=0.1, standardize=False)
    T = np.eye(3)[y]
    Xc, Tc = X - X.mean(0), T - T.mean(0)
    W = np.linalg.solve(Xc.T @ Xc + 30 * 0.1 * np.eye(3), Xc.T @ Tc)
    np.testing.assert_allclose(h.coef_, W, atol=1e-10)
    np.testing.assert_allclose(h.intercept_, T.mean(0) - X.mean(0) @ W, atol=1e-10)


def test_ridge_dual_form_when_features_outnumber_rows():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(20, 50)), np.arange(20) % 2
    h = fit_head(X, y, alpha=0.5, standardize=False)
    Xc, T = X - X.mean(0), np.eye(2)[y]
    W = np.linalg.solve(Xc.T @ Xc + 20 * 0.5 * np.eye(50), Xc.T @ (T - T.mean(0)))
    np.testing.assert_allclose(h.coef_, W, atol=1e-8)


def test_logistic_head_is_deterministic_and_accurate():
    A, _, y = _runs()
    h1, h2 = fit_head(A, y, kind="logistic"), fit_head(A, y, kind="logistic")
    np.testing.assert_array_equal(h1.coef_, h2.coef_)
    assert h1.score(A, y) > 0.95


def test_head_keeps_string_labels():
    A, _, y = _runs()
    names = np.array(["a", "b", "c", "d"])[y]
    assert set(fit_head(A, names).predict(A[:8])) <= set(names)


def test_relative_stitching_reads_another_run():
    A, B, y = _runs()
    anchors = np.arange(32)
    head_abs = fit_head(B, y)
    assert stitch_accuracy(head_abs, A, y) < 0.9  # the raw spaces differ
    for kind, center in (("cosine", True), ("euclidean", False), ("product", True)):
        head = fit_head(relative_projection(B, B[anchors], kind, center), y)
        acc = stitch_accuracy(head, relative_projection(A, A[anchors], kind, center), y)
        assert acc > 0.95, kind


def test_translated_stitching_reads_another_run():
    A, B, y = _runs()
    # adapters map into the target's unit rows: the head reads prefix views
    head = fit_head(prefix_view(B, B.shape[1]), y)
    ad = fit_adapter(A[:32], B[:32], kind="affine", scaling="standard", underdetermined=True)
    assert stitch_accuracy(head, ad.transform(A), y) > 0.95


def test_stitch_retrieval_across_runs():
    A, B, y = _runs()
    assert stitch_retrieval(A, B, query_anchors=A[:32], gallery_anchors=B[:32], kind="euclidean",
                            query_labels=y, gallery_labels=y) > 0.95


@pytest.mark.parametrize("kw, match", [
    ({"kind": "svm"}, "kind must be one of ridge, logistic, got 'svm'"),
    ({"alpha": -1.0}, "alpha must be a finite number >= 0, got -1.0"),
    ({"standardize": 1}, "standardize must be True or False, got 1"),
    ({"max_iter": 0}, "max_iter must be a positive integer, got 0"),
])
def test_head_bad_params(kw, match):
    A, _, y = _runs(n=20)
    with pytest.raises(NestembError, match=match):
        fit_head(A, y, **kw)


def test_head_bad_inputs():
    A, _, y = _runs(n=20)
    with pytest.raises(NestembError, match=r"labels must have one entry per row \(20\)"):
        fit_head(A, y[:5])
    with pytest.raises(NestembError, match="labels must hold at least 2 classes, got 1"):
        fit_head(A, np.zeros(20))
    bad = A.copy()
    bad[3, 0] = np.nan
    with pytest.raises(NestembError, match=r"features contains NaN or inf values \(row 3\)"):
        fit_head(bad, y)
    h = fit_head(A, y)
    with pytest.raises(NestembError, match="features have width 5 but the head was trained on "
                                           "width 12"):
        stitch_accuracy(h, A[:, :5], y)
    with pytest.raises(NestembError, match="the head is not fitted"):
        LinearHead().predict(A)
    with pytest.raises(NestembError, match="head must be a LinearHead"):
        stitch_accuracy("head", A, y)


def test_stitch_retrieval_bad_anchors():
    A, B, y = _runs(n=40)
    with pytest.raises(NestembError, match="paired row by row: got 8 and 6 rows"):
        stitch_retrieval(A, B, query_anchors=A[:8], gallery_anchors=B[:6], query_labels=y,
                         gallery_labels=y)
    with pytest.raises(NestembError, match="query_anchors rows 0 and 1 are the same vector"):
        stitch_retrieval(A, B, query_anchors=np.vstack([A[:1], A[:7]]),
                         gallery_anchors=B[:8], query_labels=y, gallery_labels=y)


def test_reference_standardizes_with_the_stitched_runs_statistics():
    A, _, y = _runs()
    head = fit_head(A, y)
    rng = np.random.default_rng(9)
    # per-column shifts and scales: the head's statistics no longer fit
    shifted = A * rng.uniform(0.2, 5.0, A.shape[1]) + rng.normal(0, 20, A.shape[1])
    assert stitch_accuracy(head, shifted, y) < 0.8
    assert stitch_accuracy(head, shifted, y, reference=shifted[:200]) == stitch_accuracy(head, A, y)
    with pytest.raises(NestembError, match="reference needs a head fitted with standardize=True"):
        fit_head(A, y, standardize=False).predict(A, reference=A)
    with pytest.raises(NestembError, match="reference have width 3 but the head"):
        head.predict(A, reference=A[:, :3])
