"""Evaluate an image model at every prefix of its nesting.

- ``linear_top1``: top-1 of the model's own head for each prefix (for FF, its single head);
- ``knn_top1`` and ``map10``: cosine retrieval on prefix views, test images as queries and the
  whole training split as the gallery (same class = relevant);
- ``cascade``: the adaptive classifier (:mod:`nestemb.eval.cascade`), calibrated on training
  images held out from training and scored on the test set.

The calibration split is never guessed: it is the one given (``holdout``, ``seed``), else the
one the model's manifest records (``extra["split"]``, written by the trainer). The result's
``calibration`` field says which was used (``source``: ``"argument"``, ``"manifest"`` or
``None`` with a ``reason`` when no cascade was run).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from nestemb.data.split import split_holdout
from nestemb.errors import NestembError
from nestemb.eval.cascade import DROPS, cascade_report
from nestemb.eval.metrics import retrieval_metrics, top1
from nestemb.models.image import ImageModel
from nestemb.progress import counter


def calibration_split(
    model: ImageModel, n_train: int, holdout: int | None = None, seed: int | None = None
) -> dict:
    """Which training images calibrate the cascade: ``{"source", "holdout", "seed", ...}``.

    ``holdout`` (with ``seed``, default 0) wins; else the manifest's recorded split, which must
    have been drawn from ``n_train`` images; else ``source=None`` with the ``reason``.

    Example:
        >>> from nestemb.models.image import ImageModelConfig
        >>> m = ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=4))
        >>> calibration_split(m, 100)["reason"]
        'the model records no hold-out split; pass holdout= to calibrate the cascade'
        >>> calibration_split(m, 100, holdout=20)
        {'source': 'argument', 'n': 100, 'holdout': 20, 'seed': 0}
    """
    if holdout is not None:
        return {"source": "argument", "n": n_train, "holdout": int(holdout), "seed": int(seed or 0)}
    extra = model.manifest.extra if model.manifest is not None else {}
    split = extra.get("split")
    if not split:
        return {"source": None,
                "reason": "the model records no hold-out split; pass holdout= to calibrate the cascade"}  # fmt: skip
    if "n" in split and int(split["n"]) != n_train:
        raise NestembError(
            f"the model's hold-out was drawn from {split['n']} training images but train holds "
            f"{n_train}: evaluate on the training set it was trained on, or pass holdout= and seed="
        )
    return {"source": "manifest", "n": n_train, "holdout": int(split["holdout"]),
            "seed": int(split.get("seed", 0) if seed is None else seed)}  # fmt: skip


def evaluate_image_model(
    model: ImageModel,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    holdout: int | None = None,
    seed: int | None = None,
    drops: Sequence[float] = DROPS,
    batch_size: int = 1024,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Per-prefix metrics (lists aligned with ``dims``), the cascade report and the
    ``calibration`` split it used (see :func:`calibration_split`). ``progress(stage, done,
    total)`` reports two stages with their totals known up front: ``"encoding images"``
    (every forward pass) and ``"1-NN and mAP@10 per prefix"``.

    Example:
        >>> from nestemb.models.image import ImageModelConfig
        >>> rng = np.random.default_rng(0)
        >>> x = rng.integers(0, 255, (40, 28, 28), dtype=np.uint8); y = np.arange(40) % 10
        >>> m = ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=4))
        >>> r = evaluate_image_model(m, (x, y), (x[:10], y[:10]), holdout=20, seed=0)
        >>> r["dims"], len(r["linear_top1"]), len(r["cascade"]), r["calibration"]["source"]
        ([2, 4], 2, 6, 'argument')
    """
    start = time.perf_counter()
    dims = list(model.nesting)
    train_x, train_y = train
    test_x, test_y = test
    calib = calibration_split(model, len(train_x), holdout, seed)
    if len(dims) == 1:
        calib = {"source": None, "reason": "a single-prefix (FF) model has no cascade"}
    elif calib["source"] is not None and not 0 < calib["holdout"] < len(train_x):
        raise NestembError(
            f"holdout must lie in 1..{len(train_x) - 1} for {len(train_x)} training images, "
            f"got {calib['holdout']}"
        )
    n_calib = calib["holdout"] if calib["source"] is not None else 0
    enc_cb = counter(progress, "encoding images", len(train_x) + 2 * len(test_x) + n_calib)
    gallery = model.encode(train_x, batch_size, enc_cb)
    queries = model.encode(test_x, batch_size, enc_cb)
    test_probs = model.predict_proba(test_x, batch_size, enc_cb)
    if n_calib:
        _, hold_idx = split_holdout(len(train_x), calib["holdout"], calib["seed"])
        calib_probs = model.predict_proba(train_x[hold_idx], batch_size, enc_cb)
    out: dict = {"dims": dims}
    out["linear_top1"] = [top1(test_probs[:, i], test_y) for i in range(len(dims))]
    knn_cb = counter(progress, "1-NN and mAP@10 per prefix", len(dims))
    out.update(retrieval_metrics(queries, test_y, gallery, train_y, dims, k=10, progress=knn_cb))
    out["cascade"] = []
    if n_calib:
        out["cascade"] = cascade_report(calib_probs, train_y[hold_idx], test_probs, test_y, dims, drops)
    out["calibration"] = calib
    out["eval_seconds"] = round(time.perf_counter() - start, 2)
    return out
