"""Evaluate an image model at every prefix of its nesting.

- ``linear_top1``: top-1 of the model's own head for each prefix (for FF, its single head);
- ``knn_top1`` and ``map10``: cosine retrieval on prefix views, test images as queries and the
  whole training split as the gallery (same class = relevant);
- ``cascade``: the adaptive classifier (:mod:`nestemb.eval.cascade`), calibrated on the
  training images the model held out (its manifest records the split) and scored on the test set.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from nestemb.eval.cascade import DROPS, cascade_report
from nestemb.eval.metrics import retrieval_metrics, top1
from nestemb.models.image import ImageModel
from nestemb.train.image import split_holdout


def evaluate_image_model(
    model: ImageModel,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    holdout: int | None = None,
    seed: int | None = None,
    drops: Sequence[float] = DROPS,
    batch_size: int = 1024,
) -> dict:
    """Per-prefix metrics (lists aligned with ``dims``) and the cascade report.

    ``holdout``/``seed`` default to those in the model's manifest (the split it trained with).

    Example:
        >>> from nestemb.models.image import ImageModelConfig
        >>> rng = np.random.default_rng(0)
        >>> x = rng.integers(0, 255, (40, 28, 28), dtype=np.uint8); y = np.arange(40) % 10
        >>> m = ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=4))
        >>> r = evaluate_image_model(m, (x, y), (x[:10], y[:10]), holdout=20, seed=0)
        >>> r["dims"], len(r["linear_top1"]), len(r["cascade"])
        ([2, 4], 2, 6)
    """
    start = time.perf_counter()
    dims = list(model.nesting)
    train_x, train_y = train
    test_x, test_y = test
    extra = model.manifest.extra if model.manifest is not None else {}
    split = extra.get("split", {})
    holdout = split.get("holdout", 5000) if holdout is None else holdout
    seed = split.get("seed", 0) if seed is None else seed
    gallery = model.encode(train_x, batch_size)
    queries = model.encode(test_x, batch_size)
    test_probs = model.predict_proba(test_x, batch_size)
    out: dict = {"dims": dims}
    out["linear_top1"] = [top1(test_probs[:, i], test_y) for i in range(len(dims))]
    out.update(retrieval_metrics(queries, test_y, gallery, train_y, dims, k=10))
    out["cascade"] = []
    if len(dims) > 1 and 0 < holdout < len(train_x):
        _, hold_idx = split_holdout(len(train_x), holdout, seed)
        calib_probs = model.predict_proba(train_x[hold_idx], batch_size)
        out["cascade"] = cascade_report(calib_probs, train_y[hold_idx], test_probs, test_y, dims, drops)
    out["eval_seconds"] = round(time.perf_counter() - start, 2)
    return out
