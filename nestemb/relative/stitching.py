"""Zero-shot stitching: an encoder from one run, a head trained on another run's space.

The head never sees the first encoder. Its inputs reach the head's space in one of two ways:

* **relative**: both runs describe items by their relation to the *same anchor items*, each
  encoded by its own encoder (:func:`nestemb.relative.relative_projection`); a head trained on
  run B's relative vectors reads run A's relative vectors;
* **translated**: run A's vectors are mapped into run B's space by an adapter fitted on the
  anchors' paired embeddings (:func:`nestemb.maps.fit_adapter`, e.g.
  ``kind="affine", scaling="standard", underdetermined=True``), then fed to B's head. Adapters
  fit and map L2-normalized rows, so train that head on B's prefix views
  (:func:`nestemb.nesting.prefix_view`), the vectors nestemb compares anyway.

:class:`LinearHead` / :func:`fit_head` is a deterministic linear classifier that trains in well
under a second on the CPU (closed-form ridge, or multinomial logistic regression by L-BFGS);
:func:`stitch_accuracy` scores a head on another encoder's features; :func:`stitch_retrieval`
searches one run's gallery with another run's queries through their relative projections.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from nestemb.checks import check_matrix
from nestemb.errors import NestembError
from nestemb.relative.projection import check_anchors, relative_projection

HEAD_KINDS = ("ridge", "logistic")
"""Linear head kinds of :func:`fit_head`."""


def _features(X: Any, name: str) -> np.ndarray:
    return check_matrix(X, name, dtype=np.float64)


def _labels(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise NestembError(f"{name} must have one entry per row ({n}), got shape {y.shape}")
    return y


class LinearHead:
    """A linear classifier on fixed features (scikit-learn style).

    ``kind="ridge"``: least squares on one-hot targets (``+1``/``0``) with ``alpha`` times the
    number of rows on ``||W||^2``, solved in closed form. ``kind="logistic"``: multinomial
    logistic regression with L2 penalty ``alpha / 2 * ||W||^2`` per row on average, by L-BFGS
    for at most ``max_iter`` iterations from zero (deterministic). ``standardize=True`` centres
    and scales each feature with the training rows' statistics (kept in the head: at stitching
    time the other encoder's features go through the same affine map, like any input).

    Learned state: ``classes_``, ``mean_``, ``scale_``, ``coef_`` ``(dim, classes)``,
    ``intercept_``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 5)); y = (X[:, 0] > 0).astype(int)
        >>> LinearHead("ridge", alpha=1e-3).fit(X, y).score(X, y) > 0.95
        True
        >>> LinearHead("logistic").fit(X, y).predict(X[:3]).tolist() == y[:3].tolist()
        True
    """

    def __init__(self, kind: str = "ridge", *, alpha: float = 1e-3, standardize: bool = True,
                 max_iter: int = 200):
        self.kind = kind
        self.alpha = alpha
        self.standardize = standardize
        self.max_iter = max_iter

    def _check_params(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise NestembError(f"kind must be one of {', '.join(HEAD_KINDS)}, got {self.kind!r}")
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not np.isfinite(a) or a < 0:
            raise NestembError(f"alpha must be a finite number >= 0, got {a!r}")
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise NestembError(f"standardize must be True or False, got {self.standardize!r}")
        m = self.max_iter
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise NestembError(f"max_iter must be a positive integer, got {m!r}")

    def fit(self, features: Any, labels: Any) -> "LinearHead":
        """Fit on ``features`` ``(n, dim)`` and one label per row (at least 2 classes)."""
        self._check_params()
        x = _features(features, "features")
        y = _labels(labels, len(x))
        self.classes_, yi = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise NestembError(f"labels must hold at least 2 classes, got {len(self.classes_)}")
        if self.standardize:
            self.mean_ = x.mean(axis=0)
            std = x.std(axis=0)
            self.scale_ = np.where(std > 1e-12, std, 1.0)
        else:
            self.mean_, self.scale_ = np.zeros(x.shape[1]), np.ones(x.shape[1])
        z = (x - self.mean_) / self.scale_
        onehot = np.eye(len(self.classes_))[yi.reshape(-1)]
        if self.kind == "ridge":
            self.coef_, self.intercept_ = self._ridge(z, onehot)
        else:
            self.coef_, self.intercept_ = self._logistic(z, onehot)
        return self

    def _ridge(self, z: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mz, mt = z.mean(axis=0), t.mean(axis=0)
        zc, tc = z - mz, t - mt
        n, d = zc.shape
        lam = n * float(self.alpha)
        if d <= n:
            w = np.linalg.solve(zc.T @ zc + lam * np.eye(d), zc.T @ tc)
        else:  # the dual form: an n x n system when features outnumber rows
            w = zc.T @ np.linalg.solve(zc @ zc.T + max(lam, 1e-9 * n) * np.eye(n), tc)
        return w, mt - mz @ w

    def _logistic(self, z: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from scipy.optimize import minimize

        n, d = z.shape
        c = t.shape[1]
        alpha = float(self.alpha)

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[: d * c].reshape(d, c), theta[d * c :]
            s = z @ w + b
            s -= s.max(axis=1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(axis=1, keepdims=True)
            nll = -np.log(np.maximum((p * t).sum(axis=1), 1e-300)).mean()
            g = (p - t) / n
            gw = z.T @ g + alpha * w
            return nll + 0.5 * alpha * float((w * w).sum()), np.concatenate([gw.ravel(), g.sum(0)])

        res = minimize(loss, np.zeros(d * c + c), jac=True, method="L-BFGS-B",
                       options={"maxiter": int(self.max_iter)})
        return res.x[: d * c].reshape(d, c), res.x[d * c :]

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NestembError("the head is not fitted: call fit first")

    def _width(self, x: np.ndarray, name: str) -> np.ndarray:
        if x.shape[1] != self.coef_.shape[0]:
            raise NestembError(
                f"{name} have width {x.shape[1]} but the head was trained on width "
                f"{self.coef_.shape[0]}: project or translate them into the head's space first"
            )
        return x

    def decision_function(self, features: Any, *, reference: Any = None) -> np.ndarray:
        """Class scores ``(n, classes)`` for ``features`` of the head's width. With
        ``reference`` (unlabeled rows of the *features'* space, e.g. the stitched encoder's
        projections of any unlabeled sample), each column is standardized with the reference's
        mean and standard deviation instead of the head's training statistics: per-encoder
        normalization, which removes per-column shifts and scales between two runs."""
        self._check_fitted()
        x = self._width(_features(features, "features"), "features")
        mean, scale = self.mean_, self.scale_
        if reference is not None:
            if not self.standardize:
                raise NestembError("reference needs a head fitted with standardize=True")
            r = self._width(_features(reference, "reference"), "reference")
            if len(r) < 2:
                raise NestembError(f"reference needs at least 2 rows, got {len(r)}")
            mean, std = r.mean(axis=0), r.std(axis=0)
            scale = np.where(std > 1e-12, std, 1.0)
        return ((x - mean) / scale) @ self.coef_ + self.intercept_

    def predict(self, features: Any, *, reference: Any = None) -> np.ndarray:
        """The predicted label of each row (``reference``: see :meth:`decision_function`)."""
        scores = self.decision_function(features, reference=reference)
        return self.classes_[np.argmax(scores, axis=1)]

    def score(self, features: Any, labels: Any, *, reference: Any = None) -> float:
        """Accuracy on ``features`` with true ``labels``."""
        return stitch_accuracy(self, features, labels, reference=reference)


def fit_head(features: Any, labels: Any, kind: str = "ridge", *, alpha: float = 1e-3,
             standardize: bool = True, max_iter: int = 200) -> LinearHead:
    """Fit a :class:`LinearHead` on ``features`` (one run's absolute, relative or translated
    space) and ``labels``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(100, 3)); y = np.where(X[:, 1] > 0, "a", "b")
        >>> fit_head(X, y).predict(X[:2]).tolist() == y[:2].tolist()
        True
    """
    return LinearHead(kind, alpha=alpha, standardize=standardize, max_iter=max_iter).fit(
        features, labels)


def stitch_accuracy(head: LinearHead, features: Any, labels: Any, *,
                    reference: Any = None) -> float:
    """Accuracy of ``head`` (trained on another run's space) on ``features`` from this run,
    already in the head's space (relative projections on the shared anchors, or translated).
    ``reference``: unlabeled rows of this run's space to standardize the columns with
    (see :meth:`LinearHead.decision_function`); ``None`` uses the head's training statistics.

    Example:
        >>> rng = np.random.default_rng(1)
        >>> A = rng.normal(size=(300, 4)); y = (A[:, 0] > 0).astype(int)
        >>> Q = np.linalg.qr(rng.normal(size=(4, 4)))[0]; B = 2 * A @ Q  # another "run"
        >>> from nestemb.relative.projection import relative_projection
        >>> anchors = np.arange(16)
        >>> head = fit_head(relative_projection(B, B[anchors]), y)
        >>> stitch_accuracy(head, relative_projection(A, A[anchors]), y) > 0.9
        True
    """
    if not isinstance(head, LinearHead):
        raise NestembError(f"head must be a LinearHead, got {type(head).__name__}")
    pred = head.predict(features, reference=reference)
    y = _labels(labels, len(pred))
    return float(np.mean(pred == y))


def stitch_retrieval(
    queries: Any,
    gallery: Any,
    *,
    query_anchors: Any,
    gallery_anchors: Any,
    kind: str = "cosine",
    center: bool = False,
    metric: str = "top1",
    query_labels: Sequence | np.ndarray | None = None,
    gallery_labels: Sequence | np.ndarray | None = None,
    qrels: Any = None,
    k: int | None = None,
) -> float:
    """Retrieval across two runs through relative representations: ``queries`` (run A) and
    ``gallery`` (run B) are each projected on the same anchor items encoded by their own run
    (``query_anchors`` by A, ``gallery_anchors`` by B, paired row by row), then searched with
    :func:`nestemb.compat.cross_metric` (``metric`` ``"top1"``/``"map"`` with labels, or
    ``"ndcg"`` with ``qrels``) on the full relative width. For translated retrieval, map the
    queries with an adapter and call ``cross_metric`` directly.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> G = rng.normal(size=(50, 8)); Q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
        >>> lab = np.arange(50)
        >>> stitch_retrieval(G @ Q, G, query_anchors=G[:10] @ Q, gallery_anchors=G[:10],
        ...                  query_labels=lab, gallery_labels=lab)
        1.0
    """
    from nestemb.compat import cross_metric

    qa = check_anchors(query_anchors, "query_anchors")
    ga = check_anchors(gallery_anchors, "gallery_anchors")
    if len(qa) != len(ga):
        raise NestembError(
            f"query_anchors and gallery_anchors must be the same items, paired row by row: got "
            f"{len(qa)} and {len(ga)} rows"
        )
    rq = relative_projection(queries, qa, kind, center)
    rg = relative_projection(gallery, ga, kind, center)
    return cross_metric(rq, rg, dim=rq.shape[1], metric=metric, query_labels=query_labels,
                        gallery_labels=gallery_labels, qrels=qrels, k=k)
