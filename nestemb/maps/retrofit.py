"""Nesting retrofits: make every prefix of a frozen embedding a good embedding.

A nesting retrofit (Matryoshka-Adaptor, Yoon et al. 2024; "nesting adaptor" in nestemb until it
was renamed, so as not to differ from "adapter" by one letter) is a light map ``f`` on top of a
frozen encoder, fitted on that encoder's embeddings alone, so that every prefix view of ``f(x)``
(:func:`~nestemb.nesting.prefix_view`, slice then L2-normalize) keeps the similarity structure of
the full input ``x``. It needs no access to the encoder: vectors computed elsewhere (an API, any
library) work the same way.

The map is ``f(x) = x @ W + b`` (``kind="linear"``) or that plus a small residual MLP
(``kind="mlp"``), or a rotation ``f(x) = x @ R`` (``kind="rotation"``: the linear map is trained,
then replaced by the rotation that best reproduces it on the training rows, so every full-width
cosine of the output is exactly the input's: an index that re-ranks on the full output returns
exactly the raw vectors' neighbours, and only its shorter prefixes change). ``W`` starts as the PCA rotation of the training embeddings, so training starts
from the PCA baseline (already far better than truncation) and the losses only improve on it.
The default start is the *uncentered* rotation (``center=False``): a rotation keeps every
full-width cosine exactly, so the full view starts with the input's quality (centering changes
the full-width cosines; on SciFact it cost MiniLM .007 nDCG@10 at 384 dims), and at the short
prefixes the two starts end within noise of each other after training (SciFact *train* queries:
.459 vs .469 at 32 dims, .576 vs .571 at 64). Losses:

- *pairwise*: for in-batch pairs, ``|cos(x_i, x_j) - cos(f_m(x_i), f_m(x_j))|`` at every prefix
  ``m`` of the nesting;
- *top-k*: each anchor's ``k`` nearest neighbours in the full input space (found once with
  :func:`nestemb.exact.exact_search`) must keep their similarities and their ranking among the
  in-batch candidates at every prefix (absolute error plus a listwise KL term);
- *reconstruction*: the full output stays close to the initial rotated input, so the full-width
  view keeps the input's quality.

With ``pairs`` (query and positive-document embeddings, paired rows) the fit is *supervised*: an
in-batch contrastive loss (InfoNCE) per prefix on the pairs, with the unsupervised terms on ``X``
as a regulariser.

The output of a retrofit is an ordinary nestemb embedding (:func:`retrofit_embeddings`,
:func:`save_retrofit_embeddings`): its manifest names the source model plus the retrofit and
takes as version the content hash of the retrofit's weights, so indexes built on it refuse raw
vectors of the source model and vectors of any other retrofit. Directories saved with the old
artefact kind ``"nesting-adaptor"`` still load, and keep their output model id and version.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nestemb.checks import positive_float, positive_int
from nestemb.errors import NestembError
from nestemb.io import read_npz
from nestemb.maps.base import WEIGHTS_NAME, FittedMap, ModelRef, resolve_nesting
from nestemb.nesting import Manifest, check_vectors, weights_version
from nestemb.folders import save_embeddings

ARTEFACT_KIND = "nesting-retrofit"
"""The ``kind`` in the manifest of a saved retrofit directory."""
LEGACY_KIND = "nesting-adaptor"
"""The ``kind`` retrofits were saved with before the rename (still loaded)."""
RETROFIT_KINDS = ("linear", "mlp", "rotation")
"""Values of :class:`Retrofit`'s ``kind``."""
MIN_ROWS = 16
"""Fewest rows of ``X`` a fit accepts (the losses compare rows within a batch)."""
MIN_PAIRS = 8
"""Fewest ``pairs`` a supervised fit accepts (the contrastive loss needs in-batch negatives)."""
LOSS_WEIGHTS = {"pairwise": 1.0, "topk": 1.0, "rank": 1.0, "recon": 0.1, "contrastive": 1.0}
"""Default loss weights of the fit (0 switches a term off)."""


def _n_steps(n: int, batch: int, steps: int | None) -> int:
    """Default schedule: about 30 passes over ``n`` rows, kept within 300..3000 steps."""
    if steps is not None:
        return int(steps)
    return int(min(3000, max(300, 30 * math.ceil(n / batch))))


class Retrofit(FittedMap):
    """A learned map on frozen embeddings whose every prefix is a good embedding.

    Use :func:`fit_retrofit` (or ``Retrofit(...).fit(X)``) to fit one.

    Parameters:
        kind: ``"linear"`` (``x @ W + b``), ``"mlp"`` (the linear map plus a residual MLP
            with ``hidden`` units whose output layer starts at zero) or ``"rotation"`` (the
            trained linear map replaced by its closest rotation on the training rows, no
            offset: full-width cosines are kept exactly; ``center`` must stay False).
        nesting: prefix sizes the losses look at; default doubling from 8 to the width.
        source_ref: identity of the input model (a Manifest or :class:`ModelRef`); the output
            manifest names it, and :meth:`transform` refuses vectors of another model.
        center: start from centered PCA (``b = -mean @ W``) instead of the uncentered rotation.
        k: neighbours per row for the top-k loss.
        anchors: batch rows per step that bring their ``k`` neighbours to the top-k losses.
        steps, batch_size: default scale with the number of rows (about 30 passes, 300..3000
            steps; batches of up to 512).
        lr: Adam learning rate. ``temperature``: of the rank and contrastive losses.
        weights: loss weights (``pairwise``, ``topk``, ``rank``, ``recon``, ``contrastive``;
            defaults :data:`LOSS_WEIGHTS`).
        max_rows: rows used for training at most (a seeded sample of larger inputs).
        threads: torch threads during the fit (restored afterwards); default 1 unless a batch
            holds at least 2**20 values (batch x width): the per-step tensors are small, and on
            a busy 2-core CPU a second thread made a MiniLM fit 8 times slower, not faster.
        seed: seeds the sample, the batches and the MLP initialisation.
        progress: show a progress bar.

    Attributes:
        weights_: the map's arrays (``W`` ``(d, d)``, ``b``; with ``kind="mlp"`` also ``W1``,
            ``b1``, ``W2``, ``b2``; see :func:`nestemb.maps.base.forward`).
        nesting_: the prefixes fitted; ``in_dim_`` = ``out_dim_``: the width.
        source_ref_: :class:`ModelRef` of the input (``model_id="unknown"`` without
            ``source_ref``).
        version_: content hash of the retrofit's weights (:func:`~nestemb.nesting.weights_version`).
        fit_info_: dict with the rows, steps, batch size, seconds and final losses of the fit.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 16)) * np.linspace(0.2, 2.0, 16)   # energy at the end
        >>> ad = Retrofit(nesting=(4, 8, 16), steps=50, progress=False).fit(X)
        >>> Y = ad.transform(X); Y.shape, ad.nesting_
        ((200, 16), (4, 8, 16))
        >>> # the 4-d prefix now holds the high-variance directions truncation would drop
        >>> bool(np.var(Y[:, :4]) > np.var(X[:, :4]))
        True
    """

    KINDS = RETROFIT_KINDS
    NOUN = "retrofit"
    ARTEFACT_KIND = ARTEFACT_KIND
    label_ = ARTEFACT_KIND  # names the output model; "nesting-adaptor" for legacy directories

    def __init__(
        self,
        *,
        kind: str = "linear",
        nesting: Sequence[int] | None = None,
        source_ref: Any = None,
        center: bool = False,
        k: int = 10,
        anchors: int = 128,
        steps: int | None = None,
        batch_size: int | None = None,
        lr: float = 1e-3,
        temperature: float = 0.05,
        weights: dict[str, float] | None = None,
        hidden: int = 256,
        max_rows: int = 20000,
        threads: int | None = None,
        seed: int = 0,
        progress: bool = True,
    ):
        self.kind = kind
        self.nesting = nesting
        self.source_ref = source_ref
        self.center = center
        self.k = k
        self.anchors = anchors
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.temperature = temperature
        self.weights = weights
        self.hidden = hidden
        self.max_rows = max_rows
        self.threads = threads
        self.seed = seed
        self.progress = progress

    # ------------------------------------------------------------------ validation
    def _check_params(self, d: int) -> tuple[tuple[int, ...], dict[str, float]]:
        self._check_kind()
        for name in ("k", "anchors", "hidden", "max_rows", "steps", "batch_size", "threads"):
            positive_int(getattr(self, name), name,
                         allow_none=name in ("steps", "batch_size", "threads"))
        for name in ("lr", "temperature"):
            positive_float(getattr(self, name), name)
        if self.batch_size is not None and self.batch_size < 2:
            raise NestembError(f"{{param}} must be at least 2, got {self.batch_size}",
                               param="batch_size")
        w = dict(LOSS_WEIGHTS)
        for key, value in (self.weights or {}).items():
            if key not in w:
                raise NestembError(f"{{param}} has an unknown loss {key!r}; known: "
                                   f"{list(LOSS_WEIGHTS)}", param="weights")
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise NestembError(f"{{param}}[{key!r}] must be a number >= 0, got {value!r}",
                                   param="weights")
            w[key] = float(value)
        if self.kind == "rotation" and self.center:
            raise NestembError("{param}=True shifts the vectors, which a rotation cannot: "
                               "leave center off with kind='rotation'", param="center")
        return resolve_nesting(self.nesting, d), w

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, pairs: tuple[Any, Any] | None = None) -> "Retrofit":
        """Fit on the ``(n, d)`` embeddings ``X`` (unsupervised), or with ``pairs`` =
        ``(queries, positives)`` of paired rows (supervised, ``X`` as regulariser). Returns self.
        """
        from nestemb.device import torch_threads
        from nestemb.exact import exact_search
        from nestemb.maps.nn import pca_init

        t_start = time.perf_counter()
        X = check_vectors(X, what="X")
        n, d = X.shape
        nesting, w = self._check_params(d)
        if n < max(MIN_ROWS, self.k + 2):
            raise NestembError(
                f"{{param}} has {n} rows; fitting a nesting retrofit needs at least "
                f"{max(MIN_ROWS, self.k + 2)} (at least {MIN_ROWS}, and k + 2 = {self.k + 2} for "
                "the neighbour loss)", param="X")
        P = None if pairs is None else _check_pairs(pairs, d)
        source = ModelRef.of(self.source_ref, "source_ref") or ModelRef("unknown", "unknown", d)
        if source.dim != d:
            raise NestembError(f"{{param}} says dim {source.dim}, but X has dimension {d}",
                               param="source_ref")

        rng = np.random.default_rng(self.seed)
        if n > self.max_rows:  # the losses need a sample of the structure, not every row
            X = X[np.sort(rng.choice(n, self.max_rows, replace=False))]
        n_used = len(X)
        batch = int(min(self.batch_size or 512, n_used))
        steps = _n_steps(n_used, batch, self.steps)
        W0, b0 = pca_init(X, self.center)
        # neighbours in the full input space, self excluded (the row itself ranks first)
        k = int(self.k)
        nbr_sim, nbr = exact_search(X, X, k + 1)
        nbr_sim, nbr = np.ascontiguousarray(nbr_sim[:, 1:]), np.ascontiguousarray(nbr[:, 1:])
        threads = self.threads or (1 if batch * d < 1 << 20 else None)
        with torch_threads(threads):
            state, last = self._train(X, P, nbr, nbr_sim, W0, b0, nesting, w, batch, steps)
        if self.kind == "rotation":
            from nestemb.maps.base import forward
            from nestemb.maps.procrustes import orthogonal_procrustes

            # the rotation that best reproduces the trained map on the training rows
            R = orthogonal_procrustes(X, forward(state, X))
            state = {"W": R.astype(np.float32), "b": np.zeros(d, dtype=np.float32)}
        self.nesting_, self.source_ref_ = nesting, source
        self._fitted(state, d, d, {
            "rows": int(n), "rows_used": int(n_used), "pairs": 0 if P is None else len(P[0]),
            "steps": steps, "batch_size": batch, "k": k, "center": bool(self.center),
            "seconds": round(time.perf_counter() - t_start, 2), "threads": threads,
            "final_losses": last, "lr": self.lr, "temperature": self.temperature,
            "weights": w, "seed": self.seed,
        })
        return self

    def _train(self, X, P, nbr, nbr_sim, W0, b0, nesting, w, batch, steps):
        """The optimisation loop; returns the weights (numpy) and the last losses."""
        import torch

        from nestemb.losses import PrefixLoss, info_nce
        from nestemb.maps.nn import make_module, train_module

        n_used = len(X)
        torch.manual_seed(self.seed)
        model = make_module(W0, b0, hidden=self.hidden if self.kind == "mlp" else None)
        Xt = torch.from_numpy(X)
        Xn = torch.nn.functional.normalize(Xt, dim=-1)
        W0t, b0t = torch.from_numpy(W0), torch.from_numpy(b0)
        nbr_t, nbr_sim_t = torch.from_numpy(nbr), torch.from_numpy(nbr_sim)
        contrastive = PrefixLoss(info_nce, nesting)
        if P is not None:
            Pq, Pd = torch.from_numpy(P[0]), torch.from_numpy(P[1])
            pair_batch = int(min(self.batch_size or 128, len(Pq)))
        need_nb = w["topk"] > 0 or w["rank"] > 0
        gen = torch.Generator().manual_seed(self.seed)

        def step_loss(step: int):
            idx = torch.randperm(n_used, generator=gen)[:batch]
            B = len(idx)
            # only the first `anchors` rows bring their neighbours (their forward pass is the
            # costly part of a step); one forward for both
            a = min(self.anchors, B) if need_nb else 0
            nb = nbr_t[idx[:a]]
            xb = Xt[idx]
            y = model(torch.cat([xb, Xt[nb.reshape(-1)]]) if a else xb)
            terms = retrofit_losses(
                y[:B], Xn[idx] @ Xn[idx].T, nesting, tau=self.temperature, y0=xb @ W0t + b0t,
                y_nb=y[B:].reshape(a, nb.shape[1], -1) if a else None,
                nb_sim=nbr_sim_t[idx[:a]] if a else None)
            if P is not None:
                j = torch.randperm(len(Pq), generator=gen)[:pair_batch]
                terms["contrastive"] = contrastive(model(Pq[j]), model(Pd[j]),
                                                   temperature=self.temperature)
            return sum(w[name] * value for name, value in terms.items()), terms

        _, last = train_module(model.parameters(), step_loss, steps=steps, lr=self.lr,
                               warmup=0.05, shape="cosine", progress=self.progress,
                               label="fitting nesting retrofit")
        return model.export(), last

    # ------------------------------------------------------------------ use
    @property
    def output_model_id(self) -> str:
        """The model id of the retrofit's output: source id + ``nesting-retrofit-<kind>``."""
        self._check_fitted()
        return f"{self.source_ref_.model_id}+{self.label_}-{self.kind}"

    def check_manifest(self, manifest: Manifest, trust_unknown: bool = False) -> None:
        """Refuse vectors of a model other than the one fitted on (:func:`check_source`)."""
        check_source(manifest, self)

    def output_manifest(self, source_manifest: Manifest | None = None) -> Manifest:
        """The manifest of the retrofit's output embeddings (id naming source + retrofit,
        version = retrofit weights hash, the fitted nesting); ``extra`` carries the source
        identity."""
        self._check_fitted()
        extra = {"source_model_id": self.source_ref_.model_id,
                 "source_model_version": self.source_ref_.model_version,
                 "retrofit_kind": self.kind, "retrofit_version": self.version_}
        if source_manifest is not None:
            extra["source_extra"] = dict(source_manifest.extra)
        return Manifest(model_id=self.output_model_id, model_version=self.version_,
                        nesting=self.nesting_, dim=self.out_dim_, extra=extra)

    def manifest(self) -> Manifest:
        """The artefact manifest (``kind="nesting-retrofit"``): the output manifest plus the
        source, the fit info and the parameters under ``extra``.

        Example:
            >>> import numpy as np, tempfile, pathlib
            >>> X = np.random.default_rng(0).normal(size=(64, 8))
            >>> ad = fit_retrofit(X, steps=5, progress=False)
            >>> out = ad.save(pathlib.Path(tempfile.mkdtemp()) / "ad")
            >>> back = load_retrofit(out)
            >>> bool(np.allclose(back.transform(X), ad.transform(X))), back.version_ == ad.version_
            (True, True)
        """
        man = self.output_manifest()
        return dataclasses.replace(man, kind=self.ARTEFACT_KIND, extra={
            **man.extra, "source": self.source_ref_.to_dict(), "fit": self.fit_info_,
            "params": {"kind": self.kind, "center": bool(self.center),
                       "nesting": list(self.nesting_)}})


def fit_retrofit(
    X: Any, pairs: tuple[Any, Any] | None = None, *, kind: str = "linear",
    nesting: Sequence[int] | None = None, source_ref: Any = None, seed: int = 0,
    progress: bool = True, **params: Any,
) -> Retrofit:
    """Fit a :class:`Retrofit` on the frozen embeddings ``X`` (unsupervised), or with
    ``pairs = (query embeddings, positive document embeddings)`` (supervised). Other keyword
    parameters are those of :class:`Retrofit`.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(100, 32))
        >>> ad = fit_retrofit(X, kind="mlp", steps=10, progress=False)
        >>> ad.nesting_, ad.transform(X[:3]).shape
        ((8, 16, 32), (3, 32))
        >>> fit_retrofit(X[:5], progress=False)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: X has 5 rows; fitting a nesting retrofit needs at least 16 ...
    """
    try:
        ad = Retrofit(kind=kind, nesting=nesting, source_ref=source_ref, seed=seed,
                      progress=progress, **params)
    except TypeError as e:
        raise NestembError(f"fit_retrofit: {e}") from None
    return ad.fit(X, pairs)


def load_retrofit(path: str | os.PathLike) -> Retrofit:
    """Read a retrofit written by :meth:`Retrofit.save` (or a nesting adaptor saved before the
    rename), verifying its checksum and that the weights still hash to the recorded version.

    Example: see :meth:`Retrofit.manifest`.
    """
    path = Path(path)
    kind, weights_name = ARTEFACT_KIND, WEIGHTS_NAME
    try:
        if Manifest.load(path).kind == LEGACY_KIND:
            kind, weights_name = LEGACY_KIND, "adaptor.npz"
    except (NestembError, OSError):
        pass  # Manifest.open below names the problem
    manifest = Manifest.open(path, kind, "nesting retrofit directory")
    try:
        state = {k: np.asarray(v, dtype=np.float32)
                 for k, v in read_npz(path / weights_name).items()}
    except ValueError as e:  # an array that is not numeric
        raise NestembError(f"cannot read {path / weights_name}: {e}") from None
    try:
        params = manifest.extra["params"]
        source = ModelRef.from_dict(manifest.extra["source"])
        params = {"kind": params["kind"], "nesting": params["nesting"],
                  "center": params["center"], "source_ref": source, "progress": False}
    except (KeyError, TypeError, AttributeError, NestembError) as e:  # a damaged record
        raise NestembError(f"{path / 'manifest.json'}: extra is not a valid nesting retrofit "
                           f"description: {e!r}") from None
    d = manifest.dim
    legacy = kind == LEGACY_KIND
    if legacy:  # the old array names; the old version names its outputs in existing indexes
        if weights_version(state) != manifest.model_version:
            raise NestembError(f"{path}: the weights do not match the manifest's version")
        old = {"weight": "W", "bias": "b", "w1": "W1", "b1": "b1", "w2": "W2", "b2": "b2"}
        state = {old[k]: v for k, v in state.items() if k in old}
    if state.get("W") is None or state["W"].shape != (d, d) or \
            state.get("b", np.zeros(0)).shape != (d,):
        raise NestembError(f"nesting retrofit {path}: weights do not match dim {d}")
    ad = Retrofit._read(path, manifest, state, params, check_version=not legacy)
    ad.source_ref_, ad.fit_info_ = source, manifest.extra.get("fit", {})
    if legacy:  # and the exact GELU the old MLP used
        ad.label_, ad.gelu_, ad.version_ = LEGACY_KIND, "none", manifest.model_version
    return ad


def check_source(manifest: Manifest, retrofit: Retrofit) -> None:
    """Refuse embeddings (by their manifest) that do not come from the model the retrofit was
    fitted on: another model id or weights version, another width, or the retrofit's own
    output.

    Example:
        >>> import numpy as np
        >>> src = Manifest(model_id="m", model_version="v1", nesting=(8,), dim=8)
        >>> ad = fit_retrofit(np.random.default_rng(0).normal(size=(32, 8)),
        ...                   source_ref=src, steps=2, progress=False)
        >>> check_source(src, ad)
        >>> check_source(Manifest(model_id="m", model_version="v2", nesting=(8,), dim=8), ad)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: embeddings come from model 'm' version 'v2', but the retrofit was fitted on 'm' version 'v1'
    """
    retrofit._check_fitted()
    src = retrofit.source_ref_
    if (manifest.model_id == retrofit.output_model_id
            and manifest.model_version == retrofit.version_):
        raise NestembError("these embeddings are already this retrofit's output: apply the "
                           "retrofit to the source model's embeddings")
    if (manifest.model_id, manifest.model_version) != (src.model_id, src.model_version):
        raise NestembError(
            f"embeddings come from model {manifest.model_id!r} version "
            f"{manifest.model_version!r}, but the retrofit was fitted on {src.model_id!r} "
            f"version {src.model_version!r}"
        )
    if manifest.dim != src.dim:
        raise NestembError(f"embeddings have dim {manifest.dim}, the retrofit expects {src.dim}")


def retrofit_embeddings(vectors: Any, manifest: Manifest,
                        retrofit: Retrofit) -> tuple[np.ndarray, Manifest]:
    """Apply ``retrofit`` to source-model ``vectors`` described by ``manifest`` (checked with
    :func:`check_source`); returns the output rows and their manifest (an ordinary embedding
    manifest: indexes accept it, and refuse to mix it with raw source vectors).

    Example:
        >>> import numpy as np
        >>> src = Manifest(model_id="enc", model_version="v1", nesting=(16,), dim=16)
        >>> X = np.random.default_rng(0).normal(size=(40, 16))
        >>> ad = fit_retrofit(X, source_ref=src, steps=5, progress=False)
        >>> Y, man = retrofit_embeddings(X, src, ad)
        >>> man.model_id, man.nesting, man.model_version == ad.version_
        ('enc+nesting-retrofit-linear', (8, 16), True)
    """
    return retrofit.transform(vectors, manifest), retrofit.output_manifest(manifest)


def save_retrofit_embeddings(directory: str | os.PathLike, vectors: Any, manifest: Manifest,
                             retrofit: Retrofit, ids: Sequence[Any] | None = None,
                             overwrite: bool = False) -> Path:
    """Write ``retrofit``'s output for ``vectors`` as an embedding directory
    (:func:`~nestemb.folders.save_embeddings`, manifest from :func:`retrofit_embeddings`).

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from nestemb.folders import load_embeddings
        >>> src = Manifest(model_id="enc", model_version="v1", nesting=(16,), dim=16)
        >>> X = np.random.default_rng(0).normal(size=(40, 16))
        >>> ad = fit_retrofit(X, source_ref=src, steps=5, progress=False)
        >>> out = save_retrofit_embeddings(pathlib.Path(tempfile.mkdtemp()) / "e", X, src, ad)
        >>> load_embeddings(out)[1].model_id
        'enc+nesting-retrofit-linear'
    """
    Y, man = retrofit_embeddings(vectors, manifest, retrofit)
    return save_embeddings(directory, Y, man, ids=ids, overwrite=overwrite)


def retrofit_losses(y, target_sim, nesting: Sequence[int], *, tau: float = 0.05, y0=None,
                    y_nb=None, nb_sim=None) -> dict:
    """The unsupervised losses of a retrofit on one batch, each averaged over the prefixes of
    ``nesting`` (:class:`~nestemb.losses.PrefixLoss`).

    ``y``: ``(B, d)`` outputs of the batch rows; ``target_sim``: ``(B, B)`` cosine similarities
    of their full inputs; ``y0``: outputs of the initial map (the ``recon`` target);
    ``y_nb``: ``(a, k, d)`` outputs of the ``k`` full-input neighbours of the first ``a`` batch
    rows, ``nb_sim``: ``(a, k)`` their full-input similarities. Returns ``pairwise``,
    ``topk``, ``rank`` (zero without neighbours) and ``recon`` (zero without ``y0``).

    Example:
        >>> import torch
        >>> x = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
        >>> t = retrofit_losses(x, x @ x.T, (4,), y0=x)   # the identity map at full width
        >>> [round(float(v), 6) for v in t.values()]
        [0.0, 0.0, 0.0, 0.0]
    """
    import torch

    from nestemb.losses import PrefixLoss

    B = len(y)
    zero = y.new_zeros(())
    # the diagonal (self-similarity 1 on both sides) adds nothing; rescale the mean
    out = {"pairwise": PrefixLoss(
        lambda v: (v @ v.T - target_sim).abs().mean() * B / max(B - 1, 1), nesting)(y),
        "topk": zero, "rank": zero, "recon": zero}
    if y_nb is not None:
        a = len(y_nb)
        # ranking candidates: the k neighbours, then the other batch rows (self pushed out)
        self_out = torch.zeros(a, B)
        self_out[torch.arange(a), torch.arange(a)] = -1e4
        p_target = torch.softmax(torch.cat([nb_sim, target_sim[:a] + self_out], 1) / tau, dim=1)
        logp_target = torch.log(p_target + 1e-12)

        def rank(v, vn):
            logits = torch.cat([(v[:a, None, :] * vn).sum(-1), v[:a] @ v.T + self_out], 1)
            return (p_target * (logp_target - torch.log_softmax(logits / tau, 1))).sum(1).mean()

        out["topk"] = PrefixLoss(
            lambda v, vn: ((v[:a, None, :] * vn).sum(-1) - nb_sim).abs().mean(), nesting)(y, y_nb)
        out["rank"] = PrefixLoss(rank, nesting)(y, y_nb)
    if y0 is not None:
        out["recon"] = ((y - y0) ** 2).sum(-1).mean()
    return out


# ---------------------------------------------------------------------- internals
def _check_pairs(pairs: Any, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``pairs = (queries, positives)``: two finite (n, d) arrays of equal length."""
    try:
        q, p = pairs
    except (TypeError, ValueError):
        raise NestembError("{param} must be a tuple (queries, positives) of two arrays",
                           param="pairs") from None
    q = check_vectors(q, what="pairs[0] (queries)")
    p = check_vectors(p, what="pairs[1] (positives)")
    if len(q) != len(p):
        raise NestembError(
            f"{{param}} have different lengths: {len(q)} queries vs {len(p)} positives (rows "
            "must be paired)", param="pairs")
    for name, arr in (("pairs[0] (queries)", q), ("pairs[1] (positives)", p)):
        if arr.shape[1] != d:
            raise NestembError(f"{name} have dimension {arr.shape[1]}, but X has {d}",
                               param="pairs")
    if len(q) < MIN_PAIRS:
        raise NestembError(
            f"{{param}} has {len(q)} rows; supervised fitting needs at least {MIN_PAIRS}",
            param="pairs")
    return q, p
