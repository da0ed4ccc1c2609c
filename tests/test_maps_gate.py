"""The adapters' quality gate: the held-out estimate (neighbour agreement, label retention,
bootstrap intervals), its record through fit / save / load, and the gate with its errors."""

from __future__ import annotations

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.maps import Adapter, adapt_embeddings, fit_adapter, load_adapter
from nestemb.maps.gate import check_quality, estimate_quality
from nestemb.nesting import Manifest

OLD = Manifest(model_id="old-net", model_version="aaaa", nesting=(8, 16), dim=16)
NEW = Manifest(model_id="new-net", model_version="bbbb", nesting=(8, 16), dim=16)
N, D = 200, 16


@pytest.fixture(scope="module")
def data():
    """Paired rows: X, an exact rotation of it, a noisy rotation, an unrelated space, and
    class labels (5 well separated clusters)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, N)
    X = 3 * rng.normal(size=(5, D))[labels] + rng.normal(size=(N, D))
    R = np.linalg.qr(rng.normal(size=(D, D)))[0]
    return {"X": X, "rot": X @ R, "noisy": X @ R + 2.0 * rng.normal(size=(N, D)),
            "unrelated": rng.normal(size=(N, D)), "labels": labels}


def _ordered(est):
    return est["low"] <= est["mean"] <= est["high"]


def test_agreement_is_one_for_an_exact_rotation(data):
    q = estimate_quality(data["X"], data["rot"], Adapter("orthogonal"), holdout=0.2)
    assert q["agreement"]["mean"] > 0.99 and _ordered(q["agreement"])
    assert (q["n_fit"], q["n_holdout"], q["k"]) == (160, 40, 10)


def test_agreement_is_low_for_a_bad_map_and_in_between_for_a_noisy_one(data):
    bad = estimate_quality(data["X"], data["unrelated"], Adapter("orthogonal"))["agreement"]
    noisy = estimate_quality(data["X"], data["noisy"], Adapter("orthogonal"))["agreement"]
    assert bad["mean"] < 0.6 and _ordered(bad)
    assert bad["mean"] < noisy["mean"] < 0.99 and _ordered(noisy)
    # a real spread over held-out rows gives an interval of non-zero width around the mean
    assert noisy["low"] < noisy["mean"] < noisy["high"]


def test_label_retention_is_one_for_a_perfect_map(data):
    q = estimate_quality(data["X"], data["rot"], Adapter("orthogonal"), labels=data["labels"])
    lab = q["labels"]
    assert lab["mean"] == pytest.approx(1.0, abs=1e-6) and _ordered(lab)
    assert lab["mapped_top1"] == lab["target_top1"] > 0.9


def test_label_retention_drops_for_a_bad_map(data):
    # the target space carries the classes, the source does not: mapping loses them
    q = estimate_quality(data["unrelated"], data["X"], Adapter("affine"), labels=data["labels"])
    assert q["labels"]["mean"] < 0.6 and _ordered(q["labels"])


def test_estimate_leaves_the_model_unfitted_and_is_seeded(data):
    model = Adapter("orthogonal")
    a = estimate_quality(data["X"], data["noisy"], model, seed=1)
    assert not hasattr(model, "weights_")
    assert estimate_quality(data["X"], data["noisy"], model, seed=1) == a
    assert estimate_quality(data["X"], data["noisy"], model, seed=2) != a


def test_fit_adapter_with_holdout_fits_on_all_rows_and_records_the_estimate(data):
    plain = fit_adapter(data["X"], data["noisy"], "affine")
    gated = fit_adapter(data["X"], data["noisy"], "affine", holdout=0.25, labels=data["labels"])
    assert gated.fit_info_["rows"] == N
    np.testing.assert_array_equal(gated.weights_["W"], plain.weights_["W"])
    q = gated.fit_info_["quality"]
    assert q == estimate_quality(data["X"], data["noisy"], Adapter("affine"), holdout=0.25,
                                 labels=data["labels"])
    assert {"agreement", "labels"} <= set(q) and q["n_holdout"] == 50


def test_quality_survives_save_and_load(data, tmp_path):
    a = fit_adapter(data["X"], data["rot"], holdout=0.2, labels=data["labels"],
                    source_ref=OLD, target_ref=NEW)
    b = load_adapter(a.save(tmp_path / "ad"))
    assert b.fit_info_["quality"] == a.fit_info_["quality"]
    assert check_quality(b, 0.95)["passed"] and check_quality(b, 0.95, measure="labels")["passed"]


def test_gate_refuses_below_the_threshold_and_passes_above(data):
    bad = fit_adapter(data["X"], data["unrelated"], holdout=0.2)
    mean = bad.fit_info_["quality"]["agreement"]["mean"]
    with pytest.raises(NestembError) as e:
        check_quality(bad, 0.9)
    assert e.value.param == "min_quality"
    assert f"{mean:.3f}" in str(e.value) and "95% interval" in str(e.value)
    assert "below min_quality 0.9" in str(e.value)
    gate = check_quality(bad, round(mean - 0.05, 2))
    assert gate["passed"] and not gate["forced"] and gate["mean"] == mean
    assert check_quality(bad, None) is None


def test_force_overrides_the_gate(data):
    bad = fit_adapter(data["X"], data["unrelated"], holdout=0.2, source_ref=OLD, target_ref=NEW)
    gate = check_quality(bad, 0.9, force=True)
    assert gate["forced"] and not gate["passed"]
    Y, man = adapt_embeddings(data["X"], OLD, bad, min_quality=0.9, force=True)
    assert Y.shape == (N, D) and man.extra["adapted"]["gate"] == gate


def test_adapt_embeddings_gates_before_mapping(data):
    bad = fit_adapter(data["X"], data["unrelated"], holdout=0.2, source_ref=OLD, target_ref=NEW)
    # vectors of the wrong model: the gate answers first, nothing is mapped
    with pytest.raises(NestembError) as e:
        adapt_embeddings(data["X"], NEW, bad, min_quality=0.9)
    assert e.value.param == "min_quality"
    with pytest.raises(NestembError, match="wrong direction"):
        adapt_embeddings(data["X"], NEW, bad, min_quality=0.1)


def test_no_estimate_is_refused_unless_forced(data):
    plain = fit_adapter(data["X"], data["rot"])
    with pytest.raises(NestembError, match="without a held-out estimate") as e:
        check_quality(plain, 0.5)
    assert e.value.param == "force"
    assert check_quality(plain, 0.5, force=True) == {
        "measure": "agreement", "min_quality": 0.5, "mean": None, "low": None, "high": None,
        "forced": True, "passed": False}
    no_labels = fit_adapter(data["X"], data["rot"], holdout=0.2)
    with pytest.raises(NestembError, match="fitted without labels") as e:
        check_quality(no_labels, 0.5, measure="labels")
    assert e.value.param == "force"


@pytest.mark.parametrize("value", [-0.1, 1.5, "x", float("nan"), True])
def test_threshold_outside_0_1_is_refused(data, value):
    a = fit_adapter(data["X"], data["rot"], holdout=0.2)
    before = dict(a.fit_info_)
    with pytest.raises(NestembError, match="must be a number in \\[0, 1\\]") as e:
        check_quality(a, value)
    assert e.value.param == "min_quality" and a.fit_info_ == before


def test_gate_errors_name_their_parameter(data):
    a = fit_adapter(data["X"], data["rot"], holdout=0.2)
    for kwargs, param in [({"measure": "ndcg"}, "measure"), ({"force": "yes"}, "force")]:
        with pytest.raises(NestembError) as e:
            check_quality(a, 0.5, **kwargs)
        assert e.value.param == param
    a.fit_info_["quality"] = {"agreement": {"mean": "high"}}
    with pytest.raises(NestembError, match="damaged"):
        check_quality(a, 0.5)


@pytest.mark.parametrize("holdout, match", [
    (0, "strictly between 0 and 1"), (1, "strictly between 0 and 1"),
    (1.2, "strictly between 0 and 1"), ("0.2", "strictly between 0 and 1"),
    (True, "strictly between 0 and 1"), (0.04, "holds out 8 of the 200 pairs"),
    (0.95, "leaves 10 of the 200 pairs to fit"),
])
def test_bad_holdout_is_refused(data, holdout, match):
    with pytest.raises(NestembError, match=match) as e:
        fit_adapter(data["X"], data["rot"], holdout=holdout)
    assert e.value.param == "holdout"


def test_bad_labels_are_refused(data):
    with pytest.raises(NestembError, match="one label per paired row") as e:
        fit_adapter(data["X"], data["rot"], holdout=0.2, labels=data["labels"][:-1])
    assert e.value.param == "labels"
    with pytest.raises(NestembError, match="give a holdout share too") as e:
        fit_adapter(data["X"], data["rot"], labels=data["labels"])
    assert e.value.param == "labels"
