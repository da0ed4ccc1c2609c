"""Post-hoc adapters: a map fitted on paired embeddings of a sample, from one model's space
(the *source*) into another's (the *target*), so that an upgrade needs no re-indexing.

Both directions are the same object with the roles swapped: fit ``source=new, target=old`` to
send new queries into a stored old gallery, or ``source=old, target=new`` to move stored old
vectors into the new space without touching the raw data.

Kinds (:data:`KINDS`):

* ``orthogonal``: orthogonal Procrustes (:func:`~nestemb.maps.procrustes.orthogonal_procrustes`;
  widths may differ), optionally slerped towards the raw vector when both widths are equal;
* ``affine``: least squares with a ridge penalty on the matrix (not on the bias);
* ``affine`` with ``bias=False``: plain linear least squares ``x W`` (no intercept);
* ``mlp``: the affine solution plus a small residual MLP (zero-initialised output layer),
  trained in torch on the CPU with a Matryoshka-aware loss: ``1 - cos`` between the prefix views
  of the prediction and of the target, averaged over the target nesting, so that every prefix of
  the mapped vector speaks the target's prefix;
* ``affine`` with ``matryoshka=True``: the ridge solution fine-tuned (no hidden layer) on that
  same prefix-cosine loss, so that every prefix of the output, not the full width alone, is
  fitted;
* ``lowrank``: the Drift-Adapter shape (Vejendla, EMNLP 2025): a rank-``rank`` linear map
  ``x U V + b`` (started at the truncated SVD of the ridge solution, trained in factored form)
  plus a residual MLP, on the prefix-cosine loss; saved as the product ``W = U V``;
* ``cluster``: piecewise orthogonal: k-means on the source rows, one Procrustes map per cluster
  (shrunk towards the global Procrustes map when the cluster is small), each row mapped by the
  map of its nearest centroid; for drift that rotates different regions of the space
  differently.

**Translation between latent spaces** (relative representations, Maiorca et al. 2023) is the
same fit on paired *anchors*: ``scaling="center"`` or ``"standard"`` centres (and scales each
coordinate to unit variance) both sides with their own fit-row statistics before the map and
undoes the target's afterwards, which lets spaces of different scale and width meet;
``underdetermined=True`` accepts fewer anchors than coefficients (e.g. 64 anchors between
128-dim spaces): the ridge solution of ``affine`` is then close to the minimum-norm least
squares, and ``orthogonal`` maps the directions the anchors do not span arbitrarily.
Zero-padding the narrower side to a square Procrustes problem (a common recipe for different
widths) gives the same map as the thin solution used here, so it is not a separate option.

**Cosine spaces.** Adapters fit and transform *L2-normalized rows* (the full-width view): the
scale of a raw vector carries no meaning in a cosine space and would otherwise dominate the
least-squares fit. Outputs are not re-normalized; every consumer takes
:func:`~nestemb.nesting.prefix_view` views anyway.

**Identity.** An adapter records the source and target :class:`ModelRef` (id, weights version,
width). :meth:`Adapter.transform` given the vectors' manifest refuses vectors of the target
model ("wrong direction") and of any model other than the source ("wrong model"). A model
version ``"unknown"`` (vectors computed outside nestemb) cannot be told apart from another model
of the same name, so it is refused unless the caller passes ``trust_unknown=True``, which then
matches on ``model_id`` alone.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Self, Sequence

import numpy as np

from nestemb.checks import positive_float, positive_int
from nestemb.cluster import kmeans, nearest_centroid
from nestemb.errors import NestembError
from nestemb.io import read_npz
from nestemb.maps.base import WEIGHTS_NAME, FittedMap, ModelRef, resolve_nesting
from nestemb.maps.procrustes import orthogonal_procrustes
from nestemb.nesting import Manifest, check_vectors, prefix_view

KINDS = ("orthogonal", "affine", "mlp", "lowrank", "cluster")
"""The adapter kinds of :func:`fit_adapter`."""
AUTO_KINDS = ("orthogonal", "affine", "cluster")
"""The kinds ``fit_adapter(kind="auto")`` fits (fast closed forms; the trained kinds need
more pairs than a sample usually has to beat them)."""
FIT_KINDS = ("auto", *KINDS)
"""Values of ``kind`` in :func:`fit_adapter`: ``"auto"`` or one of :data:`KINDS`."""
AUTO_HOLDOUT = 0.2

_DEFAULT_RIDGE = 1e-4
_MLP_DEFAULTS = {"hidden": 512, "epochs": 30, "lr": 1e-3, "batch_size": 256}
_TRAINED = ("mlp", "lowrank")  # kinds trained in torch (and affine with matryoshka=True)
_DEFAULT_RANK = 64
_MAX_CLUSTERS = 8  # default cap: a few regions; more overfits the per-cluster maps
_KMEANS_ITERS = 20
SCALINGS = ("center", "standard")
"""Values of ``scaling`` (besides ``None``): per-side centring, or centring and unit variance."""


def _ridge_affine(
    x: np.ndarray, y: np.ndarray, ridge: float, bias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``W, b`` minimising ``mean ||x W + b - y||^2 + ridge ||W||_F^2`` (bias not penalised);
    ``bias=False`` fixes ``b = 0`` (plain linear least squares)."""
    mx = x.mean(axis=0) if bias else np.zeros(x.shape[1])
    my = y.mean(axis=0) if bias else np.zeros(y.shape[1])
    xc, yc = x - mx, y - my
    gram = xc.T @ xc + len(x) * ridge * np.eye(x.shape[1])
    w = np.linalg.solve(gram, xc.T @ yc)
    return w, my - mx @ w


def _scaler(z: np.ndarray, scaling: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate mean and scale of the fit rows (scale 1 for ``center`` and for constant
    coordinates, which carry nothing to scale)."""
    mean = z.mean(axis=0)
    if scaling == "center":
        return mean, np.ones(z.shape[1])
    std = z.std(axis=0)
    return mean, np.where(std > 1e-12, std, 1.0)


def _slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation between unit rows ``a`` (t=0) and ``b`` (t=1)."""
    a, b = prefix_view(a, a.shape[1]), prefix_view(b, b.shape[1])
    cos = np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)
    theta = np.arccos(cos)[:, None]
    sin = np.sin(theta)
    small = sin[:, 0] < 1e-6  # nearly parallel: the linear blend is exact to first order
    wa = np.where(small[:, None], 1.0 - t, np.sin((1.0 - t) * theta) / np.maximum(sin, 1e-12))
    wb = np.where(small[:, None], t, np.sin(t * theta) / np.maximum(sin, 1e-12))
    return wa * a + wb * b


class Adapter(FittedMap):
    """A map from a source model's embedding space into a target model's (see the module
    docstring). Build it with :func:`fit_adapter` or :meth:`fit`; read one with
    :func:`load_adapter`.

    Parameters are those of :func:`fit_adapter`. Learned state (:class:`FittedMap`):
    ``weights_`` (arrays by name), ``in_dim_`` (source width), ``out_dim_`` (target width),
    ``nesting_``, ``source_ref_``, ``target_ref_``, ``version_``, ``fit_info_`` (rows,
    seconds, mean cosine on the fit data at every prefix of the nesting).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(100, 4)); R = np.linalg.qr(rng.normal(size=(4, 4)))[0]
        >>> a = Adapter("orthogonal").fit(X, X @ R)
        >>> np.allclose(a.transform(X[:2]), prefix_view(X[:2] @ R, 4))
        True
        >>> c = Adapter("cluster", clusters=3).fit(X, X @ R)  # one rotation: every cluster finds it
        >>> c.weights_["Ws"].shape, np.allclose(c.transform(X), a.transform(X), atol=1e-4)
        ((3, 4, 4), True)
    """

    def __init__(
        self,
        kind: str = "orthogonal",
        *,
        source_ref: ModelRef | Manifest | None = None,
        target_ref: ModelRef | Manifest | None = None,
        nesting: Sequence[int] | None = None,
        ridge: float | None = None,
        slerp: float | None = None,
        hidden: int | None = None,
        epochs: int | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        threads: int | None = None,
        trust_unknown: bool = False,
        progress: bool = False,
        scaling: str | None = None,
        bias: bool = True,
        underdetermined: bool = False,
        rank: int | None = None,
        clusters: int | None = None,
        matryoshka: bool = False,
    ):
        self.kind = kind
        self.rank = rank
        self.clusters = clusters
        self.matryoshka = matryoshka
        self.scaling = scaling
        self.bias = bias
        self.underdetermined = underdetermined
        self.source_ref = source_ref
        self.target_ref = target_ref
        self.nesting = nesting
        self.ridge = ridge
        self.slerp = slerp
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.threads = threads
        self.trust_unknown = trust_unknown
        self.progress = progress

    KINDS = KINDS
    NOUN = "adapter"
    ARTEFACT_KIND = "adapter"
    NORMALIZE = True

    source_ref_: ModelRef | None
    target_ref_: ModelRef | None

    # ---------------------------------------------------------------------------------- fit

    def _check_params(self, d_s: int, d_t: int) -> None:
        """Validate the parameters against the data widths; fills the resolved ``nesting``."""
        self._check_kind()
        if not isinstance(self.matryoshka, (bool, np.bool_)):
            raise NestembError(f"{{param}} must be True or False, got {self.matryoshka!r}",
                               param="matryoshka")
        if self.matryoshka and self.kind != "affine":
            raise NestembError(
                f"{{param}}=True applies to kind 'affine' only ('mlp' and 'lowrank' always "
                f"train on the prefix loss), not {self.kind!r}", param="matryoshka")
        # the kinds fitted in closed form on (optionally scaled) rows
        linear = self.kind in ("orthogonal", "affine") and not self.matryoshka
        if self.scaling is not None:
            if self.scaling not in SCALINGS:
                raise NestembError(
                    f"{{param}} must be None or one of {', '.join(SCALINGS)}, got "
                    f"{self.scaling!r}", param="scaling")
            if not linear:
                raise NestembError(
                    "{param} applies to kinds 'orthogonal' and 'affine' (without matryoshka), "
                    f"not {self._described()}", param="scaling")
        if not isinstance(self.bias, (bool, np.bool_)):
            raise NestembError(f"{{param}} must be True or False, got {self.bias!r}",
                               param="bias")
        if not self.bias and self.kind != "affine":
            raise NestembError(f"{{param}}=False applies to kind 'affine' only, not {self.kind!r}",
                               param="bias")
        if not isinstance(self.underdetermined, (bool, np.bool_)):
            raise NestembError(f"{{param}} must be True or False, got {self.underdetermined!r}",
                               param="underdetermined")
        if self.underdetermined:
            if not linear:
                raise NestembError(
                    "{param} applies to kinds 'orthogonal' and 'affine' (without matryoshka), "
                    f"not {self._described()}", param="underdetermined")
            if self.ridge is not None and self.ridge == 0:
                raise NestembError(
                    "{param} must be > 0 for an underdetermined fit: with fewer rows than "
                    "coefficients the unpenalised least squares has no unique solution",
                    param="ridge")
        if self.kind in ("orthogonal", "cluster") and self.ridge is not None:
            raise NestembError("{param} applies to kinds 'affine' and 'mlp' (and 'lowrank'), "
                               f"not {self.kind!r}", param="ridge")
        if self.ridge is not None and (not isinstance(self.ridge, (int, float)) or isinstance(
                self.ridge, bool) or not math.isfinite(self.ridge) or self.ridge < 0):
            raise NestembError(f"{{param}} must be a finite number >= 0, got {self.ridge!r}",
                               param="ridge")
        if self.slerp is not None:
            if self.kind != "orthogonal":
                raise NestembError(f"{{param}} applies to kind 'orthogonal' only, not "
                                   f"{self.kind!r}", param="slerp")
            if not isinstance(self.slerp, (int, float)) or not 0.0 <= self.slerp <= 1.0:
                raise NestembError(f"{{param}} must be a number in [0, 1], got {self.slerp!r}",
                                   param="slerp")
            if d_s != d_t:
                raise NestembError(
                    f"{{param}} needs equal source and target widths (towards the raw vector), "
                    f"got {d_s} and {d_t}", param="slerp")
        trained = self.kind in _TRAINED or self.matryoshka
        for name in (*_MLP_DEFAULTS, "threads"):
            v = getattr(self, name)
            if v is not None and name == "hidden" and self.kind not in _TRAINED:
                raise NestembError(f"{{param}} applies to kind 'mlp' or 'lowrank', not "
                                   f"{self._described()}", param=name)
            if v is not None and not trained:
                raise NestembError(f"{{param}} applies to kind 'mlp' or 'lowrank' (or 'affine' "
                                   f"with matryoshka=True), not {self.kind!r}", param=name)
            check = positive_float if name == "lr" else positive_int
            check(v, name, allow_none=True)
        for name, kind in (("rank", "lowrank"), ("clusters", "cluster")):
            v = getattr(self, name)
            if v is not None and self.kind != kind:
                raise NestembError(f"{{param}} applies to kind {kind!r} only, not "
                                   f"{self.kind!r}", param=name)
            positive_int(v, name, allow_none=True)
        refs = []
        for name, ref, d in (("source_ref", self.source_ref, d_s),
                             ("target_ref", self.target_ref, d_t)):
            ref = ModelRef.of(ref, name)
            if ref is not None:
                if ref.dim != d:
                    raise NestembError(f"{name} {ref} does not match the data's width {d}")
                if ref.unknown and not self.trust_unknown:
                    side = name.split("_")[0]
                    raise NestembError(
                        f"the {side} model {ref} has an unknown weights version: its identity "
                        "cannot be checked (set {param} to rely on model_id alone)",
                        param="trust_unknown")
            refs.append(ref)
        self.source_ref_, self.target_ref_ = refs
        if refs[0] is not None and refs[1] is not None and refs[0] == refs[1]:
            raise NestembError(
                f"source and target come from the same model {refs[0]}: an adapter maps one "
                "model's space into another's")
        nesting = self.nesting
        if nesting is None and isinstance(self.target_ref, Manifest):
            nesting = self.target_ref.nesting
        self.nesting_ = resolve_nesting(nesting, d_t)

    def _described(self) -> str:
        """The kind as errors name it."""
        return "'affine' with matryoshka=True" if self.matryoshka else repr(self.kind)

    def _min_rows(self, d_s: int, d_t: int) -> int:
        # orthogonal/cluster: the (global) cross-covariance must reach full rank; affine, mlp,
        # lowrank: one row per coefficient of an output coordinate (matrix row + bias), ridge
        # notwithstanding; underdetermined fits need two rows (a spread to centre and scale)
        if self.underdetermined:
            return 2
        if self.kind in ("orthogonal", "cluster"):
            return min(d_s, d_t)
        return d_s + int(self.bias)

    def fit(self, source: Any, target: Any) -> "Adapter":
        """Fit on paired rows: ``source[r]`` and ``target[r]`` embed the same item. Returns self."""
        source = check_vectors(source, what="source")
        target = check_vectors(target, what="target")
        if len(source) != len(target):
            raise NestembError(
                f"source and target must be paired rows of the same items: got {len(source)} "
                f"and {len(target)} rows"
            )
        d_s, d_t = source.shape[1], target.shape[1]
        self._check_params(d_s, d_t)
        need = self._min_rows(d_s, d_t)
        if len(source) < need:
            # an orthogonal, an affine, an mlp (em-el-pee); a lowrank, a cluster
            article = "a" if self.kind in ("lowrank", "cluster") else "an"
            if self.kind not in ("orthogonal", "affine") or self.matryoshka:
                # no fit from fewer rows than coefficients
                raise NestembError(
                    f"{article} {self.kind} adapter from {d_s} to {d_t} dims needs at least "
                    f"{need} paired rows, got {len(source)}")
            raise NestembError(
                f"an {self.kind} adapter from {d_s} to {d_t} dims needs at least {need} "
                f"paired rows, got {len(source)} (set {{param}} to fit it from fewer rows, "
                "e.g. anchors of a translation)", param="underdetermined")
        if self.clusters is not None and self.clusters > len(source):
            raise NestembError(f"{{param}} must be at most the number of paired rows "
                               f"({len(source)}), got {self.clusters}", param="clusters")
        start = time.perf_counter()
        x = prefix_view(source.astype(np.float64), d_s)
        y = prefix_view(target.astype(np.float64), d_t)
        scalers: dict[str, np.ndarray] = {}
        xs, ys = x, y
        if self.scaling is not None:
            (mx, sx), (my, sy) = _scaler(x, self.scaling), _scaler(y, self.scaling)
            xs, ys = (x - mx) / sx, (y - my) / sy
            scalers = {"x_mean": mx, "x_scale": sx, "y_mean": my, "y_scale": sy}
        info: dict[str, Any] = {}
        if self.kind == "orthogonal":
            weights = {"W": orthogonal_procrustes(xs, ys)}
        elif self.kind == "affine" and self.matryoshka:
            weights = self._fit_trained(x, y)
        elif self.kind == "affine":
            w, b = _ridge_affine(xs, ys, _DEFAULT_RIDGE if self.ridge is None else self.ridge,
                                 bias=bool(self.bias))
            weights = {"W": w, "b": b} if self.bias else {"W": w}
        elif self.kind == "cluster":
            weights, info = self._fit_cluster(x, y)
        elif self.kind == "lowrank":
            # a rank above min(d_s, d_t) adds nothing a full matrix lacks: clipped, not refused
            info["rank"] = min(_DEFAULT_RANK if self.rank is None else int(self.rank), d_s, d_t)
            weights = self._fit_trained(x, y, hidden=self._mlp_param("hidden"),
                                        rank=info["rank"])
        else:
            weights = self._fit_trained(x, y, hidden=self._mlp_param("hidden"))
        self._fitted({**weights, **scalers}, d_s, d_t, {})
        pred = self._forward(x.astype(np.float32))
        self.fit_info_ = {
            "rows": int(len(x)),
            "seconds": round(time.perf_counter() - start, 3),
            "fit_cosine": {
                int(m): round(float(np.einsum("ij,ij->i", prefix_view(pred, m),
                                              prefix_view(y, m)).mean()), 6)
                for m in self.nesting_
            },
            **info,
        }
        return self

    def _mlp_param(self, name: str) -> int | float:
        """A training parameter (``hidden``, ``epochs``, ``lr``, ``batch_size``) or its default."""
        v = getattr(self, name)
        return _MLP_DEFAULTS[name] if v is None else v

    def _fit_trained(self, x: np.ndarray, y: np.ndarray, hidden: int | float | None = None,
                     rank: int | None = None) -> dict[str, np.ndarray]:
        """The ridge solution fine-tuned in torch on the prefix-cosine loss
        (:class:`~nestemb.losses.PrefixLoss`): plus a residual MLP of ``hidden`` units (mlp,
        lowrank), with the matrix factored at ``rank`` (lowrank), or alone (affine with
        ``matryoshka``); the module is :func:`~nestemb.maps.nn.make_module`. The one training
        loop of the adapters."""
        import torch

        from nestemb.device import torch_threads
        from nestemb.losses import PrefixLoss, cosine_distance
        from nestemb.maps.nn import make_module, train_module

        w0, b0 = _ridge_affine(x, y, _DEFAULT_RIDGE if self.ridge is None else self.ridge,
                               bias=bool(self.bias))
        gen = torch.Generator().manual_seed(int(self.seed))
        torch.manual_seed(int(self.seed))
        # start at the affine solution: training only learns what least squares missed
        module = make_module(w0, b0 if self.bias else None,
                             hidden=None if hidden is None else int(hidden), rank=rank)
        xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
        # Matryoshka-aware: every prefix of the prediction against the target's
        loss = PrefixLoss(cosine_distance, self.nesting_)
        n, bs = len(xt), int(self._mlp_param("batch_size"))
        per_epoch = math.ceil(n / bs)
        perm: list[torch.Tensor] = []

        def step_loss(step: int):
            if step % per_epoch == 0:
                perm[:] = [torch.randperm(n, generator=gen)]
            idx = perm[0][(step % per_epoch) * bs:(step % per_epoch + 1) * bs]
            value = loss(module(xt[idx]), yt[idx])
            return value, {"cosine": value}

        with torch_threads(self.threads):
            train_module(module.parameters(), step_loss,
                         steps=int(self._mlp_param("epochs")) * per_epoch,
                         lr=float(self._mlp_param("lr")), progress=self.progress,
                         label=f"adapter {self.kind}")
        return module.export()

    def _fit_cluster(self, x: np.ndarray, y: np.ndarray
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Per-cluster Procrustes: k-means on the (unit) source rows, one map per cluster
        shrunk towards the global map. Returns the weights and the fit info."""
        d = min(x.shape[1], y.shape[1])
        k = (int(self.clusters) if self.clusters is not None
             else max(1, min(_MAX_CLUSTERS, len(x) // (2 * d))))
        clustering = kmeans(x, k, int(self.seed), iters=_KMEANS_ITERS)
        centroids, labels = clustering.centroids, clustering.labels
        cross = x.T @ y
        eye = np.eye(x.shape[1])  # Procrustes of a cross-covariance M: source I gives I'M = M
        w_global = orthogonal_procrustes(eye, cross)
        # Shrinkage as a pseudo-count prior: cluster j is fitted on its n_j rows plus d =
        # min(d_s, d_t) pseudo-rows (the rows a Procrustes fit needs to be determined) drawn
        # from its own distribution and labelled by the global map, i.e. on the cross-covariance
        # X_j'Y_j + d/n_j X_j'X_j W. In every direction the cluster's rows weigh
        # n_j / (n_j + d) against the global map: a large cluster keeps its own rotation, a
        # small one leans on the global map. A thousandth of a row's worth of the global
        # cross-covariance decides the directions a cluster's rows do not span at all (and
        # gives an empty cluster the global map).
        fallback = cross * (1e-3 / len(x))
        maps = []
        for j in range(k):
            xj, yj = x[labels == j], y[labels == j]
            own = xj.T @ yj + (d / max(len(xj), 1)) * ((xj.T @ xj) @ w_global)
            maps.append(orthogonal_procrustes(eye, own + fallback))
        weights = {"W": w_global, "C": centroids, "Ws": np.stack(maps)}
        return weights, {"clusters": k,
                         "cluster_rows": np.bincount(labels, minlength=k).tolist()}

    # ---------------------------------------------------------------------------- transform

    def _forward(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "cluster":  # each row through the map of its nearest centroid
            labels = nearest_centroid(x, self.weights_["C"])
            maps = self.weights_["Ws"]
            out = np.empty((len(x), maps.shape[2]), dtype=np.float32)
            for j in np.unique(labels):
                rows = labels == j
                out[rows] = x[rows] @ maps[j]
            return out
        out = super()._forward(x)
        if self.kind == "orthogonal" and self.slerp:
            out = _slerp(out, x, float(self.slerp)).astype(np.float32)
        return out

    def check_manifest(self, manifest: Manifest, trust_unknown: bool = False) -> None:
        """Refuse vectors whose ``manifest`` is not the adapter's source model: the target model
        (wrong direction), another model, or an unknown version unless ``trust_unknown``.

        Example:
            >>> src = ModelRef("old", "aa", 4); tgt = ModelRef("new", "bb", 4)
            >>> rng = np.random.default_rng(0); X = rng.normal(size=(20, 4))
            >>> a = fit_adapter(X, X, source_ref=src, target_ref=tgt)
            >>> a.check_manifest(Manifest(model_id="new", model_version="bb", nesting=(4,), dim=4))
            Traceback (most recent call last):
            ...
            nestemb.errors.NestembError: wrong direction: these vectors come from the adapter's ...
        """
        self._check_fitted()
        if not isinstance(manifest, Manifest):
            raise NestembError(f"manifest must be a Manifest, got {type(manifest).__name__}")
        got = ModelRef.of(manifest)
        if got.unknown and not trust_unknown:
            raise NestembError(
                f"the vectors' manifest names model {got.model_id!r} with an unknown weights "
                "version: their identity cannot be checked (set {param} to rely on model_id "
                "alone)", param="trust_unknown")
        if self.source_ref_ is None:
            raise NestembError(
                "this adapter was fitted without source_ref: it cannot check which model the "
                "vectors come from; fit it with source_ref, or transform without a manifest"
            )
        if got.same(self.source_ref_, trust_unknown):
            return
        arrow = f"{self.source_ref_} -> {self.target_ref_ or 'target'}"
        if self.target_ref_ is not None and got.same(self.target_ref_, trust_unknown):
            raise NestembError(
                f"wrong direction: these vectors come from the adapter's target model {got}; "
                f"it maps {arrow}"
            )
        raise NestembError(
            f"wrong model: these vectors come from {got}, but the adapter maps {arrow}"
        )

    # ----------------------------------------------------------------------------- storage

    def _version_key(self) -> str:
        # the new kinds' state (rank, clusters, matryoshka) is all in the weights they hash
        return f"{self.kind}|{self.slerp}"

    @classmethod
    def _read(cls, path: Path, man: Manifest, weights: dict[str, np.ndarray],
              params: dict[str, Any], check_version: bool = True) -> Self:
        m = super()._read(path, man, weights, params, check_version)
        if m.kind == "cluster":  # the arrays its own forward reads
            c, maps = weights.get("C"), weights.get("Ws")
            if (c is None or maps is None or c.ndim != 2 or c.shape[1] != m.in_dim_
                    or maps.shape != (len(c), m.in_dim_, m.out_dim_)):
                raise NestembError(f"{path / WEIGHTS_NAME} does not hold a cluster adapter's "
                                   "centroids and per-cluster maps")
        return m

    def manifest(self) -> Manifest:
        """The artefact manifest: ``kind="adapter"``, the target's nesting and width, the
        adapter's own id and version; source, target, direction and fit info under ``extra``."""
        self._check_fitted()
        src = self.source_ref_.model_id if self.source_ref_ else "source"
        tgt = self.target_ref_.model_id if self.target_ref_ else "target"
        return Manifest(
            model_id=f"adapter-{self.kind}:{src}->{tgt}",
            model_version=self.version_,
            nesting=self.nesting_,
            dim=self.out_dim_,
            kind="adapter",
            extra={"adapter": {
                "kind": self.kind,
                "direction": "source->target",
                "source": self.source_ref_.to_dict() if self.source_ref_ else None,
                "target": self.target_ref_.to_dict() if self.target_ref_ else None,
                "source_dim": self.in_dim_,
                "target_dim": self.out_dim_,
                "params": {k: getattr(self, k) for k in
                           ("ridge", "slerp", "hidden", "epochs", "lr", "batch_size", "seed",
                            "threads", "scaling", "bias", "underdetermined", "rank",
                            "clusters", "matryoshka")},
                "fit": self.fit_info_,
            }},
        )


def fit_adapter(source: Any, target: Any, kind: str = "orthogonal", *,
                holdout: float | None = None, labels: Any = None, **params: Any) -> Adapter:
    """Fit an adapter mapping ``source``-space rows into the ``target`` space on paired rows
    (row ``r`` of both embeds the same item; widths may differ). Rows are L2-normalized first.
    ``params`` are those of :class:`Adapter`.

    ``holdout`` (a share strictly between 0 and 1) first estimates the quality the adapter
    keeps on rows it was not fitted on (:func:`nestemb.maps.gate.estimate_quality`: neighbour
    agreement@10 and, with ``labels``, one per row, the 1-NN label accuracy retained, each with
    a 95% interval), then fits the adapter on *all* rows and records the estimate as
    ``fit_info_["quality"]`` (saved with it), which the gate of :func:`adapt_embeddings`
    (``min_quality``) reads.

    * ``kind="orthogonal"``: Procrustes; needs ``min(d_s, d_t)`` rows. ``slerp`` in ``[0, 1]``
      (equal widths only) moves the output from the rotated vector (0) towards the raw one (1).
    * ``kind="affine"``: ``x W + b`` by least squares, ``ridge`` (default 1e-4) times the number
      of rows on ``||W||^2``; needs ``d_s + 1`` rows. ``bias=False``: plain linear least
      squares ``x W`` (needs ``d_s`` rows).
    * ``kind="mlp"``: affine plus a residual GELU MLP of width ``hidden`` (512) trained for
      ``epochs`` (30) with Adam (``lr`` 1e-3, ``batch_size`` 256, seeded by ``seed``) on the
      prefix-cosine loss over ``nesting``, on ``threads`` torch CPU threads (default: torch's
      setting; 1 is often fastest for so small a net on a busy machine); needs ``d_s + 1`` rows.
    * ``kind="affine"`` with ``matryoshka=True``: the least-squares solution fine-tuned (no
      hidden layer) on that prefix-cosine loss, with the training options of ``mlp`` but
      ``hidden``; not with ``scaling`` or ``underdetermined``.
    * ``kind="lowrank"`` (Drift-Adapter): ``x U V + b`` of rank ``rank`` (64; clipped to
      ``min(d_s, d_t)``), started at the truncated SVD of the least-squares solution, plus the
      residual MLP, trained in factored form as ``mlp`` is (same options); saved as ``W = U V``;
      needs ``d_s + 1`` rows.
    * ``kind="auto"``: each of :data:`AUTO_KINDS` the pairs can fit, each with a held-out
      estimate (``holdout``, default 0.2); the highest mean agreement@10 is returned.
    * ``kind="cluster"``: k-means (seeded by ``seed``) into ``clusters`` regions of the source
      (default ``min(8, rows // (2 min(d_s, d_t)))``, at least 1; at most the rows), one
      Procrustes map per region, shrunk towards the global one for small regions; each row
      takes its nearest centroid's map. Needs ``min(d_s, d_t)`` rows.

    ``source_ref``/``target_ref`` (a :class:`ModelRef` or the embeddings' :class:`Manifest`)
    record who produced each side; a target ``Manifest`` also gives the default ``nesting``
    (else doubling prefixes from 8). Unknown weights versions are refused unless
    ``trust_unknown=True``. Options of other kinds are refused.

    Latent-space translation from paired anchors (orthogonal and affine only):
    ``scaling="center"`` / ``"standard"`` centres (and standardizes per coordinate) each side
    with its own fit-row statistics and maps back into the target's; ``underdetermined=True``
    accepts as few as 2 rows (fewer anchors than dims; ``ridge`` must then stay > 0).

    Example (translation with 20 anchors between 32-dim spaces):
        >>> rng = np.random.default_rng(0)
        >>> Y = rng.normal(size=(300, 32)); Q = np.linalg.qr(rng.normal(size=(32, 32)))[0]
        >>> t = fit_adapter(Y[:20], 3 * Y[:20] @ Q + 1, kind="affine", scaling="standard",
        ...                 underdetermined=True)
        >>> t.transform(Y[20:]).shape
        (280, 32)

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 6)); A = rng.normal(size=(6, 4))
        >>> a = fit_adapter(X, X @ A, kind="affine")   # linear, but fitted on unit rows
        >>> a.fit_info_["fit_cosine"][4] > 0.99
        True

    Example (a held-out estimate):
        >>> q = fit_adapter(X, X @ A, kind="affine", holdout=0.2).fit_info_["quality"]
        >>> q["agreement"]["mean"] > 0.9, q["n_fit"], q["n_holdout"]
        (True, 160, 40)
    """
    from nestemb.maps.gate import estimate_quality

    if kind == "auto":
        return _fit_best(source, target, AUTO_HOLDOUT if holdout is None else holdout, labels,
                         params)
    try:
        adapter = Adapter(kind, **params)
    except TypeError as e:  # an option no adapter has
        raise NestembError(f"fit_adapter: {e}") from None
    quality = None
    if holdout is not None:
        # on a copy fitted on part of the rows; the adapter returned sees them all
        quality = estimate_quality(source, target, adapter, holdout=holdout, labels=labels,
                                   seed=params.get("seed", 0))
    elif labels is not None:
        raise NestembError("{param} serve the held-out estimate only: give a holdout share too",
                           param="labels")
    adapter.fit(source, target)
    if quality is not None:
        adapter.fit_info_["quality"] = quality
    return adapter


def _fit_best(source: Any, target: Any, holdout: float, labels: Any, params: dict) -> Adapter:
    """``fit_adapter(kind="auto")``: each of :data:`AUTO_KINDS` that the pairs can fit, with a
    held-out estimate; the one of highest mean neighbour agreement@10."""
    best: Adapter | None = None
    errors = []
    for kind in AUTO_KINDS:
        try:
            m = fit_adapter(source, target, kind, holdout=holdout, labels=labels, **params)
        except NestembError as e:  # too few pairs for this kind
            errors.append(f"{kind}: {e}")
            continue
        if best is None or (m.fit_info_["quality"]["agreement"]["mean"]
                            > best.fit_info_["quality"]["agreement"]["mean"]):
            best = m
    if best is None:
        raise NestembError(f"no adapter kind can be fitted on these pairs ({'; '.join(errors)})")
    return best


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Read an adapter directory written by :meth:`Adapter.save`, verifying its checksum.
    ``fit_info_`` comes back as saved, with the held-out ``quality`` estimate of
    ``fit_adapter(..., holdout=...)`` that the gate of :func:`adapt_embeddings` reads.

    Example:
        >>> import tempfile, pathlib
        >>> X = np.random.default_rng(0).normal(size=(30, 4))
        >>> a = fit_adapter(X, X[:, :3], kind="affine")
        >>> out = a.save(pathlib.Path(tempfile.mkdtemp()) / "adapter")
        >>> np.allclose(load_adapter(out).transform(X), a.transform(X))
        True
    """
    path = Path(path)
    man = Manifest.open(path, "adapter", "adapter directory")
    info = man.extra.get("adapter")
    if not isinstance(info, dict) or info.get("kind") not in KINDS:
        raise NestembError(f"{path} has no valid adapter description in its manifest")
    where = f"{path / 'manifest.json'}: extra.adapter"
    params = info.get("params", {})
    if not isinstance(params, dict):
        raise NestembError(f"{where}.params must be an object, got {params!r}")
    for key in ("source_dim", "target_dim"):
        if not (isinstance(info.get(key), int) and info[key] > 0):
            raise NestembError(f"{where}.{key} must be a positive integer, got {info.get(key)!r}")
    src = ModelRef.from_dict(info["source"]) if info.get("source") else None
    tgt = ModelRef.from_dict(info["target"]) if info.get("target") else None
    weights = read_npz(path / WEIGHTS_NAME)
    W = weights.get("W")
    if W is None or W.shape != (info["source_dim"], info["target_dim"]):
        raise NestembError(f"{path / WEIGHTS_NAME} does not hold a {info['source_dim']} x "
                           f"{info['target_dim']} adapter")
    a = Adapter._read(path, man, weights, {
        **params, "kind": info["kind"], "source_ref": src, "target_ref": tgt,
        "nesting": man.nesting, "trust_unknown": True})
    a.source_ref_, a.target_ref_, a.fit_info_ = src, tgt, info.get("fit", {})
    return a


def adapt_embeddings(
    vectors: Any, manifest: Manifest, adapter: Adapter, *, trust_unknown: bool = False,
    min_quality: float | None = None, force: bool = False,
) -> tuple[np.ndarray, Manifest]:
    """Map embeddings with their ``manifest`` through ``adapter`` (identity checked) and return
    them with a manifest naming the adapter's *target* model (id, version, nesting), so that
    indexes built from the target model accept them; ``extra["adapted"]`` records the adapter
    and the source. What ``index search --adapter`` and ``adapter apply`` call.

    ``min_quality`` (in [0, 1]) is the quality gate (:func:`nestemb.maps.gate.check_quality`),
    checked before anything is mapped: an adapter whose recorded held-out neighbour agreement
    (mean) is below it, or that was fitted without ``holdout``, is refused unless ``force``;
    the outcome is recorded as ``extra["adapted"]["gate"]``.

    Example:
        >>> src = Manifest(model_id="old", model_version="aa", nesting=(4,), dim=4)
        >>> tgt = Manifest(model_id="new", model_version="bb", nesting=(2, 4), dim=4)
        >>> X = np.random.default_rng(0).normal(size=(20, 4))
        >>> a = fit_adapter(X, X, source_ref=src, target_ref=tgt)
        >>> Y, m = adapt_embeddings(X, src, a)
        >>> m.model_id, m.model_version, m.nesting
        ('new', 'bb', (2, 4))
        >>> adapt_embeddings(X, src, a, min_quality=0.9)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: the adapter was fitted without a held-out estimate: ...
    """
    from nestemb.maps.gate import check_quality

    adapter._check_fitted()
    gate = check_quality(adapter, min_quality, force=force)
    if adapter.target_ref_ is None:
        raise NestembError(
            "the adapter has no target model identity: fit it with target_ref to produce "
            "embeddings that an index accepts"
        )
    out = adapter.transform(vectors, manifest, trust_unknown=trust_unknown)
    tgt = adapter.target_ref_
    man = Manifest(
        model_id=tgt.model_id,
        model_version=tgt.model_version,
        nesting=adapter.nesting_,
        dim=tgt.dim,
        extra={"adapted": {
            "adapter_id": adapter.manifest().model_id,
            "adapter_version": adapter.version_,
            "source": ModelRef.of(manifest).to_dict(),
            **({"gate": gate} if gate is not None else {}),
        }},
    )
    return out, man
