"""text/train.py without the CLI: config validation, hard-negative mining, every distillation
source, the projection recipe, identity after training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.text._tiny import make_tiny_beir, make_tiny_model, make_tiny_sts
from nestemb.text.train import (BaseEmbeddings, TextTrainConfig, TrainData, fit_projection,
                                load_train_data, mine_hard_negatives, train_text)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"model": make_tiny_model(root / "model"), "beir": make_tiny_beir(root / "beir"),
            "sts": make_tiny_sts(root / "sts.csv")}


@pytest.mark.parametrize("kw, match", [
    ({"batch_size": 1}, "batch_size must be at least 2, got 1"),
    ({"lr": -1.0}, "lr must be positive"),
    ({"recipe": "magic"}, "recipe must be one of auto, projection, finetune; got 'magic'"),
    ({"distill_source": "all"}, "distill_source must be one of batch, pool, both"),
    ({"device": "tpu"}, "device must be one of cpu, cuda, auto; got 'tpu'"),
    ({"dims": (32, 16)}, "nesting must be strictly ascending"),
    ({"dims": (16, 32), "weights": (1.0,)}, "weights has 1 entries for 2 dims"),
    ({"hard_negative_ranks": (5, 5)}, "hard_negative_ranks must be"),
    ({"distill_weight": -1.0}, "distill_weight must be >= 0"),
])
def test_config_validates_itself(kw, match):
    with pytest.raises(NestembError, match=match):
        TextTrainConfig(**kw)


def test_recipe_defaults_by_device():
    assert TextTrainConfig().resolve("cpu").recipe == "projection"
    gpu = TextTrainConfig().resolve("cuda")
    assert (gpu.recipe, gpu.steps, gpu.lr) == ("finetune", 300, 5e-5)
    assert TextTrainConfig(steps=7).resolve("cpu").steps == 7  # explicit values win


class _FakeEncoder:
    dim = 2


def test_hard_negative_mining_ranks_and_judgments():
    """Docs at angles from the query: the negative must come from ranks [1, 3) and never be a
    judged document, even one judged 0."""
    angles = {"rel": 0.0, "judged0": 0.1, "n1": 0.2, "n2": 0.3, "far1": 2.0, "far2": 2.5}
    corpus = {k: f"doc {k}" for k in angles}
    base = BaseEmbeddings(_FakeEncoder())
    for k, a in angles.items():
        base.vectors[corpus[k]] = np.array([np.cos(a), np.sin(a)], dtype=np.float32)
    base.vectors["query"] = np.array([1.0, 0.0], dtype=np.float32)
    data = TrainData(pair_sources=[[("query", "doc rel")]],
                     beir=[(0, corpus, {"q": "query"}, {"q": {"rel": 1, "judged0": 0}})])
    seen = {mine_hard_negatives(data, base, ranks=(1, 4), seed=s).pair_sources[0][0][2]
            for s in range(20)}
    assert seen == {"doc n1", "doc n2"}  # rank 1 is judged0 (excluded), rank 3 is n2
    assert data.pair_sources[0] == [("query", "doc rel")]  # the input is not modified


@pytest.mark.parametrize("source, expect", [
    ("batch", {24}), ("pool", {6}), ("both", {24, 6}),
])
def test_each_distillation_source_is_used(tiny, monkeypatch, source, expect):
    """Finetune recipe: 'batch' distills on the 3 x 8 texts of the contrastive batch, 'pool' on
    6 unlabeled texts, 'both' on both; the teacher is the untouched base at full size."""
    from nestemb.text import losses

    sizes, teachers = [], []
    orig = losses.MatryoshkaTextLoss.distill

    def spy(self, student, teacher_full):
        sizes.append(len(next(iter(student.values()))))
        teachers.append(teacher_full.detach().clone())
        return orig(self, student, teacher_full)

    monkeypatch.setattr(losses.MatryoshkaTextLoss, "distill", spy)
    data = load_train_data(beir=[tiny["beir"]])
    cfg = TextTrainConfig(recipe="finetune", dims=(8, 32), steps=2, batch_size=8, lr=1e-3,
                          distill_source=source, distill_batch_size=6, device="cpu")
    base = BaseEmbeddings(__import__("nestemb.text.encoder", fromlist=["x"]).load_text_model(tiny["model"]))
    enc, info = train_text(data, cfg, base=tiny["model"], base_embeddings=base)
    assert set(sizes) == expect and len(sizes) == 2 * len(expect)
    assert info["recipe"] == "finetune" and info["steps"] == 2
    # teachers are the base embeddings of those texts, not the (changing) student's
    known = np.stack(list(base.vectors.values()))
    for t in teachers:
        assert all(np.isclose(known, row.numpy(), atol=1e-6).all(1).any() for row in t)


def test_distill_weight_zero_skips_distillation(tiny, monkeypatch):
    from nestemb.text import losses

    monkeypatch.setattr(losses.MatryoshkaTextLoss, "distill",
                        lambda *a: (_ for _ in ()).throw(AssertionError("distill called")))
    cfg = TextTrainConfig(recipe="finetune", dims=(8, 32), steps=1, batch_size=4,
                          distill_weight=0.0, distill_source="both", device="cpu")
    train_text(load_train_data(beir=[tiny["beir"]]), cfg, base=tiny["model"])


def test_projection_recipe_identity_and_sts(tiny):
    """CPU recipe with graded pairs: a Dense projection is appended, the in-memory identity
    differs from the base's, and the manifest names the base."""
    from nestemb.text.encoder import load_text_model

    base = load_text_model(tiny["model"])
    data = load_train_data(beir=[tiny["beir"]], sts=[tiny["sts"]])
    enc, info = train_text(data, TextTrainConfig(dims=(8, 32), steps=20, device="cpu"),
                           base=tiny["model"], model_id="demo")
    assert info["recipe"] == "projection" and type(enc.model[-1]).__name__ == "Dense"
    assert enc.manifest.model_id == "demo" and enc.manifest.nesting == (8, 32)
    assert enc.manifest.model_version != base.manifest.model_version
    assert enc.manifest.extra["base"]["model_version"] == base.manifest.model_version


def test_fit_projection_learns_pairs_and_keeps_full_view():
    """Pairs that PCA prefixes score near chance become retrievable at a small prefix; the
    orthogonality and the distillation term each keep full-view similarities near the base's."""
    from nestemb.maps.nn import pca_init
    from nestemb.nesting import prefix_view
    from nestemb.text.losses import matryoshka_exits

    rng = np.random.default_rng(0)
    d, n = 16, 256
    pool = prefix_view(rng.normal(size=(2000, d)).astype(np.float32), d)
    anchors = rng.normal(size=(n, d)).astype(np.float32)
    positives = rng.normal(size=(n, d)).astype(np.float32)
    positives[:, -4:] = anchors[:, -4:]  # pairs share only their last 4 coordinates
    anchors, positives = prefix_view(anchors, d), prefix_view(positives, d)
    cfg = TextTrainConfig(recipe="projection", steps=300, batch_size=32, lr=1e-2,
                          distill_weight=0.1, hard_negatives=False, device="cpu").resolve("cpu")
    W, losses = fit_projection([(anchors, positives)], pool, cfg, matryoshka_exits([4, d], 1))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])

    def top1(a, p, m):
        return float((np.argmax(prefix_view(a, m) @ prefix_view(p, m).T, 1) == np.arange(len(a))).mean())

    axes = pca_init(pool, center=True)[0]
    before = top1(anchors @ axes, positives @ axes, 4)
    after = top1(anchors @ W, positives @ W, 4)
    assert after > before + 0.2
    free = dataclasses.replace(cfg, distill_weight=0.0, orthogonal_weight=0.0)
    W_free, _ = fit_projection([(anchors, positives)], pool, free, matryoshka_exits([4, d], 1))

    def drift(w):  # full-view similarity change on unlabeled vectors
        x = prefix_view(pool[:200] @ w, d)
        return float(np.abs(x @ x.T - pool[:200] @ pool[:200].T).mean())

    for reg in ({"orthogonal_weight": 100.0}, {"distill_weight": 100.0}):  # each term alone
        W_reg, _ = fit_projection([(anchors, positives)], pool, dataclasses.replace(free, **reg),
                                  matryoshka_exits([4, d], 1))
        assert drift(W_reg) < 0.5 * drift(W_free), reg
