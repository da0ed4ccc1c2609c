"""eval/image.py through the library (no CLI): metrics per prefix and the calibration split."""

import numpy as np
import pytest

from nestemb.data.idx import load_idx, write_synthetic_idx
from nestemb.data.split import split_holdout
from nestemb.errors import NestembError
from nestemb.eval.cascade import cascade_report
from nestemb.eval.image import evaluate_image_model
from nestemb.models.image import ImageModel, ImageModelConfig, build_manifest, make_model_config
from nestemb.train.image import ImageTrainConfig, train_image


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = write_synthetic_idx(tmp_path_factory.mktemp("d"), n_train=200, n_test=40)
    train, test = load_idx(folder, "train"), load_idx(folder, "t10k")
    cfg = make_model_config("mrl", dim=8, width=4, images=train[0])
    tcfg = ImageTrainConfig(steps=4, batch_size=32, device="cpu", seed=1)
    model, info = train_image(cfg, *train, tcfg, progress=False)
    model.manifest = build_manifest(model, "t", {"split": info["split"]})
    return model, info, train, test


def test_metrics_per_prefix_match_the_model(trained):
    model, _, train, test = trained
    r = evaluate_image_model(model, train, test)
    assert r["dims"] == [2, 4, 8]
    probs = model.predict_proba(test[0])
    expected = [(probs[:, i].argmax(1) == test[1]).mean() for i in range(3)]
    np.testing.assert_allclose(r["linear_top1"], expected)
    # 1-NN at the full size, by hand: cosine on normalized embeddings, gallery = all train images
    g, q = model.encode(train[0]), model.encode(test[0])
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    nn = (q @ g.T).argmax(1)
    assert r["knn_top1"][-1] == pytest.approx((train[1][nn] == test[1]).mean())


def test_cascade_uses_the_recorded_split(trained):
    model, info, train, test = trained
    r = evaluate_image_model(model, train, test, drops=(0.0,))
    assert r["calibration"] == {"source": "manifest", **info["split"]}
    _, ho = split_holdout(len(train[0]), info["split"]["holdout"], info["split"]["seed"])
    ref = cascade_report(model.predict_proba(train[0][ho]), train[1][ho],
                         model.predict_proba(test[0]), test[1], (2, 4, 8), (0.0,))  # fmt: skip
    assert r["cascade"] == ref
    # an explicit split wins and is said to
    r2 = evaluate_image_model(model, train, test, holdout=50, seed=9, drops=(0.0,))
    assert r2["calibration"] == {"source": "argument", "n": 200, "holdout": 50, "seed": 9}


def test_no_split_means_no_cascade_and_says_why(trained):
    model, _, train, test = trained
    bare = ImageModel(model.config)
    bare.load_state_dict(model.state_dict())
    r = evaluate_image_model(bare, train, test)
    assert r["cascade"] == [] and r["calibration"]["source"] is None
    assert "records no hold-out split" in r["calibration"]["reason"]


def test_split_drawn_from_other_data_is_refused(trained):
    model, _, train, test = trained
    with pytest.raises(NestembError, match="drawn from 200 training images but train holds 150"):
        evaluate_image_model(model, (train[0][:150], train[1][:150]), test)
    with pytest.raises(NestembError, match="holdout must lie in 1..199"):
        evaluate_image_model(model, train, test, holdout=200)


def test_ff_model_has_no_cascade():
    x = np.random.default_rng(0).integers(0, 255, (30, 28, 28), dtype=np.uint8)
    y = np.arange(30) % 10
    m = ImageModel(ImageModelConfig(dim=4, nesting=(4,), head="ff", width=4))
    r = evaluate_image_model(m, (x, y), (x[:5], y[:5]), holdout=10)
    assert r["cascade"] == [] and "single-prefix" in r["calibration"]["reason"]


def test_evaluation_reports_progress_with_totals():
    # issue 9: `image eval` (about 100 s on Fashion-MNIST) showed nothing while it ran
    from nestemb.eval.image import evaluate_image_model
    from nestemb.models.image import ImageModel, ImageModelConfig

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 28, 28), dtype=np.uint8)
    y = np.arange(40) % 10
    m = ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=4))
    seen = []
    evaluate_image_model(m, (x, y), (x[:10], y[:10]), holdout=20, seed=0, batch_size=8,
                         progress=lambda *a: seen.append(a))  # fmt: skip
    enc = [a for a in seen if a[0] == "encoding images"]
    knn = [a for a in seen if a[0] == "1-NN and mAP@10 per prefix"]
    assert enc[0] == ("encoding images", 0, 80) and enc[-1] == ("encoding images", 80, 80)
    assert len(enc) > 5 and all(t == 80 for _, _, t in enc)  # per batch, the total known up front
    assert knn == [("1-NN and mAP@10 per prefix", d, 2) for d in (0, 1, 2)]
