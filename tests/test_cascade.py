import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.eval.cascade import (
    calibrate_thresholds,
    cascade_predict,
    cascade_report,
    expected_dim,
)


def _probs(maxp_and_pred):
    """(N, K, 2) probabilities from [(p, predicted class), ...] per sample and stage."""
    out = np.zeros((len(maxp_and_pred), len(maxp_and_pred[0]), 2))
    for i, row in enumerate(maxp_and_pred):
        for k, (p, c) in enumerate(row):
            out[i, k, c], out[i, k, 1 - c] = p, 1 - p
    return out


def test_expected_dim_arithmetic():
    dims = (2, 4, 8, 256)
    # 6 samples stop at 2, 2 at 4, 1 at 8, 1 at 256: (12 + 8 + 8 + 256) / 10 = 28.4
    stage = np.array([0] * 6 + [1] * 2 + [2] + [3])
    assert expected_dim(stage, dims) == pytest.approx(28.4)


def test_cascade_predict_stops_at_first_confident_stage():
    p = _probs(
        [
            [(0.95, 0), (0.9, 1), (0.9, 1)],  # stops at stage 0 -> class 0
            [(0.6, 0), (0.85, 1), (0.9, 0)],  # stage 1 -> class 1
            [(0.6, 0), (0.6, 1), (0.55, 0)],  # never confident -> last stage answers
        ]
    )
    pred, stage = cascade_predict(p, [0.9, 0.8])
    assert pred.tolist() == [0, 1, 0] and stage.tolist() == [0, 1, 2]
    assert expected_dim(stage, (2, 4, 8)) == pytest.approx((2 + 4 + 8) / 3)
    with pytest.raises(NestembError, match="need 2 thresholds"):
        cascade_predict(p, [0.9])


def test_calibration_reaches_target_with_fewest_dims():
    # labels all 0. stage 0 is right when confident (p >= 0.9), wrong otherwise; full is right.
    rows = [[(0.95, 0), (0.99, 0)]] * 6 + [[(0.7, 1), (0.99, 0)]] * 3 + [[(0.92, 1), (0.99, 0)]]
    p, y = _probs(rows), np.zeros(10, int)
    # exact target (1.0): only stop early above 0.92 -> 6 samples at dim 2, 4 at dim 8
    thr = calibrate_thresholds(p, y, (2, 8), target=1.0)
    pred, stage = cascade_predict(p, thr)
    assert (pred == y).mean() == 1.0
    assert expected_dim(stage, (2, 8)) == pytest.approx((6 * 2 + 4 * 8) / 10)
    # 0.9 allows the one confident mistake: 7 at dim 2
    thr = calibrate_thresholds(p, y, (2, 8), target=0.9)
    pred, stage = cascade_predict(p, thr)
    assert (pred == y).mean() == pytest.approx(0.9)
    assert expected_dim(stage, (2, 8)) == pytest.approx((7 * 2 + 3 * 8) / 10)


def test_report_fields():
    rows = [[(0.95, 0), (0.99, 0)]] * 4 + [[(0.7, 1), (0.99, 0)]] * 4
    p, y = _probs(rows), np.zeros(8, int)
    r = cascade_report(p, y, p, y, (2, 8), drops=(0.0, 0.5))
    assert [row["drop"] for row in r] == [0.0, 0.5]
    assert r[0]["accuracy"] == 1.0 and r[0]["expected_dim"] == pytest.approx(5.0)
    assert r[1]["expected_dim"] == pytest.approx(2.0) and r[1]["accuracy"] == 0.5
    assert set(r[0]) >= {"target", "accuracy", "expected_dim", "full_accuracy", "thresholds"}
