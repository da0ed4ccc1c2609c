"""Matryoshka adaptors: make every prefix of a frozen embedding a good embedding.

A nesting adaptor (Matryoshka-Adaptor, Yoon et al. 2024) is a light map ``f`` on top of a frozen
encoder, fitted on that encoder's embeddings alone, so that every prefix view of ``f(x)``
(:func:`~nestemb.nesting.prefix_view`, slice then L2-normalize) keeps the similarity structure of
the full input ``x``. It needs no access to the encoder: vectors computed elsewhere (an API, any
library) work the same way.

The map is ``f(x) = x @ W + b`` (``kind="linear"``) or that plus a small residual MLP
(``kind="mlp"``). ``W`` starts as the PCA rotation of the training embeddings, so training starts
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

The output of an adaptor is an ordinary nestemb embedding (:func:`adapted_embeddings`,
:func:`save_adapted_embeddings`): its manifest names the source model plus the adaptor and takes
as version the content hash of the adaptor's weights, so indexes built on it refuse raw vectors
of the source model and vectors of any other adaptor.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.io import read_npz
from nestemb.nesting import (
    Manifest,
    check_vectors,
    default_nesting,
    prefix_view,
    save_embeddings,
    validate_nesting,
    weights_version,
)

ADAPTOR_KIND = "nesting-adaptor"
"""The ``kind`` in the manifest of a saved adaptor directory."""
WEIGHTS_NAME = "adaptor.npz"
KINDS = ("linear", "mlp")
MIN_ROWS = 16
"""Fewest rows of ``X`` a fit accepts (the losses compare rows within a batch)."""
MIN_PAIRS = 8
"""Fewest ``pairs`` a supervised fit accepts (the contrastive loss needs in-batch negatives)."""


@dataclasses.dataclass(frozen=True)
class SourceRef:
    """Identity of the embeddings an adaptor was fitted on: model id, weights version, width.

    Example:
        >>> SourceRef.from_any(Manifest(model_id="m", model_version="v", nesting=(4,), dim=4))
        SourceRef(model_id='m', model_version='v', dim=4)
    """

    model_id: str
    model_version: str
    dim: int

    @classmethod
    def from_any(cls, ref: Any) -> "SourceRef":
        """From a :class:`~nestemb.nesting.Manifest`, a ``ModelRef`` or anything with
        ``model_id``, ``model_version`` and ``dim`` attributes (or a dict with those keys)."""
        if isinstance(ref, SourceRef):
            return ref
        get = ref.get if isinstance(ref, dict) else (lambda k: getattr(ref, k, None))
        if get("model_id") is None or get("dim") is None:
            raise NestembError(
                "source_ref must name the source model: a Manifest or ModelRef with model_id, "
                f"model_version and dim, got {ref!r}"
            )
        return cls(str(get("model_id")), str(get("model_version") or "unknown"), int(get("dim")))


@dataclasses.dataclass
class _Weights:
    """Loss weights of the fit (positive floats; 0 switches a term off)."""

    pairwise: float = 1.0
    topk: float = 1.0
    rank: float = 1.0
    recon: float = 0.1
    contrastive: float = 1.0


def _n_steps(n: int, batch: int, steps: int | None) -> int:
    """Default schedule: about 30 passes over ``n`` rows, kept within 300..3000 steps."""
    if steps is not None:
        return int(steps)
    return int(min(3000, max(300, 30 * math.ceil(n / batch))))


class NestingAdaptor:
    """A learned map on frozen embeddings whose every prefix is a good embedding.

    Use :func:`fit_nesting_adaptor` (or ``NestingAdaptor(...).fit(X)``) to fit one.

    Parameters:
        kind: ``"linear"`` (``x @ W + b``) or ``"mlp"`` (the linear map plus a residual MLP
            with ``hidden`` units whose output layer starts at zero).
        nesting: prefix sizes the losses look at; default doubling from 8 to the width.
        source_ref: identity of the input model (a Manifest or ``ModelRef``); the output
            manifest names it, and :meth:`transform` refuses vectors of another model.
        center: start from centered PCA (``b = -mean @ W``) instead of the uncentered rotation.
        k: neighbours per row for the top-k loss.
        steps, batch_size: default scale with the number of rows (about 30 passes, 300..3000
            steps; batches of up to 512).
        lr: Adam learning rate. ``temperature``: of the rank and contrastive losses.
        weights: loss weights (``pairwise``, ``topk``, ``rank``, ``recon``, ``contrastive``).
        max_rows: rows used for training at most (a seeded sample of larger inputs).
        threads: torch threads during the fit (restored afterwards); default 1 unless a batch
            holds at least 2**20 values (batch x width): the per-step tensors are small, and on
            a busy 2-core CPU a second thread made a MiniLM fit 8 times slower, not faster.
        seed: seeds the sample, the batches and the MLP initialisation.
        progress: show a progress bar.

    Attributes:
        weight_: ``(d, d)`` linear map; ``bias_``: ``(d,)`` offset.
        mlp_: dict of the MLP's arrays (``w1``, ``b1``, ``w2``, ``b2``) or ``None``.
        nesting_: the prefixes fitted; ``dim_``: the width.
        source_: :class:`SourceRef` of the input (``model_id="unknown"`` without ``source_ref``).
        version_: content hash of the adaptor's weights (:func:`~nestemb.nesting.weights_version`).
        fit_info_: dict with the rows, steps, batch size, seconds and final losses of the fit.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 16)) * np.linspace(0.2, 2.0, 16)   # energy at the end
        >>> ad = NestingAdaptor(nesting=(4, 8, 16), steps=50, progress=False).fit(X)
        >>> Y = ad.transform(X); Y.shape, ad.nesting_
        ((200, 16), (4, 8, 16))
        >>> # the 4-d prefix now holds the high-variance directions truncation would drop
        >>> bool(np.var(Y[:, :4]) > np.var(X[:, :4]))
        True
    """

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
    def _check_params(self, d: int) -> tuple[tuple[int, ...], _Weights]:
        if self.kind not in KINDS:
            raise NestembError(f"{{param}} must be one of {KINDS}, got {self.kind!r}", param="kind")
        for name in ("k", "anchors", "hidden", "max_rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise NestembError(f"{{param}} must be a positive integer, got {v!r}",
                                   param=name)
        for name in ("steps", "batch_size", "threads"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                  or v < 1):
                raise NestembError(f"{{param}} must be a positive integer, got {v!r}",
                                   param=name)
        for name in ("lr", "temperature"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise NestembError(f"{{param}} must be a positive number, got {v!r}",
                                   param=name)
        if self.batch_size is not None and self.batch_size < 2:
            raise NestembError(f"{{param}} must be at least 2, got {self.batch_size}",
                               param="batch_size")
        w = _Weights()
        for key, value in (self.weights or {}).items():
            if not hasattr(w, key):
                raise NestembError(
                    f"weights has an unknown loss {key!r}; known: "
                    f"{[f.name for f in dataclasses.fields(_Weights)]}"
                )
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise NestembError(f"weights[{key!r}] must be a number >= 0, got {value!r}")
            setattr(w, key, float(value))
        nesting = (default_nesting(d, start=8) if d > 8 else (d,)) if self.nesting is None \
            else self.nesting
        try:
            nesting = validate_nesting(nesting, full_dim=d)
        except NestembError as e:  # the parameter at fault is nesting, whatever validated it
            raise NestembError(e.template if e.param == "nesting" else str(e),
                               param="nesting") from None
        return nesting, w

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, pairs: tuple[Any, Any] | None = None) -> "NestingAdaptor":
        """Fit on the ``(n, d)`` embeddings ``X`` (unsupervised), or with ``pairs`` =
        ``(queries, positives)`` of paired rows (supervised, ``X`` as regulariser). Returns self.
        """
        import torch

        t_start = time.perf_counter()
        X = check_vectors(X, what="X")
        n, d = X.shape
        nesting, w = self._check_params(d)
        if n < max(MIN_ROWS, self.k + 2):
            raise NestembError(
                f"{{param}} has {n} rows; fitting a nesting adaptor needs at least "
                f"{max(MIN_ROWS, self.k + 2)} (at least {MIN_ROWS}, and k + 2 = {self.k + 2} for "
                "the neighbour loss)", param="X")
        P = None
        if pairs is not None:
            P = _check_pairs(pairs, d)
        if self.source_ref is not None:
            source = SourceRef.from_any(self.source_ref)
            if source.dim != d:
                raise NestembError(
                    f"source_ref says dim {source.dim}, but X has dimension {d}"
                )
        else:
            source = SourceRef("unknown", "unknown", d)

        rng = np.random.default_rng(self.seed)
        if n > self.max_rows:  # the losses need a sample of the structure, not every row
            X = X[np.sort(rng.choice(n, self.max_rows, replace=False))]
        n_used = len(X)
        batch = int(min(self.batch_size or 512, n_used))
        steps = _n_steps(n_used, batch, self.steps)
        W0, b0 = _pca_init(X, self.center)
        from nestemb.exact import exact_search

        # neighbours in the full input space, self excluded (the row itself ranks first)
        k = int(self.k)
        nbr_sim, nbr = exact_search(X, X, k + 1)
        nbr_sim, nbr = np.ascontiguousarray(nbr_sim[:, 1:]), np.ascontiguousarray(nbr[:, 1:])

        threads = self.threads or (1 if batch * d < 1 << 20 else torch.get_num_threads())
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            state, last = self._train(X, P, nbr, nbr_sim, W0, b0, nesting, w, batch,
                                               steps)
        finally:
            torch.set_num_threads(before)
        self.weight_, self.bias_ = state["weight"], state["bias"]
        self.mlp_ = {k_: state[k_] for k_ in ("w1", "b1", "w2", "b2")} if self.kind == "mlp" \
            else None
        self.nesting_, self.dim_, self.source_ = nesting, d, source
        self.kind_ = self.kind
        self.version_ = weights_version(self._state())
        self.fit_info_ = {
            "rows": int(n), "rows_used": int(n_used), "pairs": 0 if P is None else len(P[0]),
            "steps": steps, "batch_size": batch, "k": k, "center": bool(self.center),
            "seconds": round(time.perf_counter() - t_start, 2), "threads": threads, "final_losses": last,
            "lr": self.lr, "temperature": self.temperature,
            "weights": dataclasses.asdict(w), "seed": self.seed,
        }
        return self

    def _train(self, X, P, nbr, nbr_sim, W0, b0, nesting, w, batch, steps):
        """The optimisation loop; returns the weights (numpy) and the last losses."""
        import torch

        n_used, d = X.shape
        torch.manual_seed(self.seed)
        model = _Map(d, self.kind, self.hidden, W0, b0)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(steps))
        Xt = torch.from_numpy(X)
        Xn = torch.nn.functional.normalize(Xt, dim=-1)
        W0t, b0t = torch.from_numpy(W0), torch.from_numpy(b0)
        nbr_t, nbr_sim_t = torch.from_numpy(nbr), torch.from_numpy(nbr_sim)
        Pq = Pd = None
        if P is not None:
            Pq, Pd = torch.from_numpy(P[0]), torch.from_numpy(P[1])
            pair_batch = int(min(self.batch_size or 128, len(Pq)))
        from nestemb.progress import progress_bar

        last: dict[str, float] = {}
        with progress_bar(self.progress, info=True) as bar:
            task = bar.add_task("fitting nesting adaptor", total=steps, info="")
            gen = torch.Generator().manual_seed(self.seed)
            for step in range(steps):
                idx = torch.randperm(n_used, generator=gen)[:batch]
                terms = _unsupervised_terms(model, Xt, Xn, idx, nbr_t, nbr_sim_t, W0t, b0t,
                                            nesting, w, self.temperature, self.anchors)
                if Pq is not None:
                    j = torch.randperm(len(Pq), generator=gen)[:pair_batch]
                    terms["contrastive"] = _contrastive(model(Pq[j]), model(Pd[j]), nesting,
                                                        self.temperature)
                loss = sum(getattr(w, name) * value for name, value in terms.items())
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                if step % 20 == 0 or step == steps - 1:
                    last = {name: round(float(v.detach()), 5) for name, v in terms.items()}
                    bar.update(task, completed=step + 1, info=f"loss {float(loss.detach()):.4f}")
            bar.update(task, completed=steps)

        return model.export(), last

    # ------------------------------------------------------------------ use
    def _state(self) -> dict[str, np.ndarray]:
        state = {"weight": self.weight_, "bias": self.bias_}
        if self.mlp_ is not None:
            state.update(self.mlp_)
        return state

    def _check_fitted(self) -> None:
        if not hasattr(self, "weight_"):
            raise NestembError("this NestingAdaptor is not fitted: call fit() first")

    @property
    def output_model_id(self) -> str:
        """The model id of the adaptor's output: source id + ``nesting-adaptor-<kind>``."""
        self._check_fitted()
        return f"{self.source_.model_id}+nesting-adaptor-{self.kind_}"

    def transform(self, X: Any, manifest: Manifest | None = None, *,
                  batch: int = 65536) -> np.ndarray:
        """Map ``(n, d)`` source embeddings to the nested output (raw, not normalized: take
        prefixes with :func:`~nestemb.nesting.prefix_view`). With ``manifest``, refuse vectors
        of a model other than the one fitted on (id and version)."""
        self._check_fitted()
        if manifest is not None:
            check_source(manifest, self)
        X = check_vectors(X, dim=self.dim_, what="X")
        out = np.empty_like(X)
        for a in range(0, len(X), batch):
            out[a:a + batch] = _apply(self._state(), X[a:a + batch])
        return out

    def output_manifest(self, source_manifest: Manifest | None = None) -> Manifest:
        """The manifest of the adaptor's output embeddings (id naming source + adaptor, version
        = adaptor weights hash, the fitted nesting); ``extra`` carries the source identity."""
        self._check_fitted()
        extra = {"source_model_id": self.source_.model_id,
                 "source_model_version": self.source_.model_version,
                 "adaptor_kind": self.kind_, "adaptor_version": self.version_}
        if source_manifest is not None:
            extra["source_extra"] = dict(source_manifest.extra)
        return Manifest(model_id=self.output_model_id, model_version=self.version_,
                        nesting=self.nesting_, dim=self.dim_, extra=extra)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the adaptor as a directory (``manifest.json`` with ``kind="nesting-adaptor"``
        and the weights' checksum, ``adaptor.npz``), atomically; load with
        :func:`load_nesting_adaptor`.

        Example:
            >>> import numpy as np, tempfile, pathlib
            >>> X = np.random.default_rng(0).normal(size=(64, 8))
            >>> ad = fit_nesting_adaptor(X, steps=5, progress=False)
            >>> out = ad.save(pathlib.Path(tempfile.mkdtemp()) / "ad")
            >>> back = load_nesting_adaptor(out)
            >>> bool(np.allclose(back.transform(X), ad.transform(X))), back.version_ == ad.version_
            (True, True)
        """
        from nestemb.io import atomic_dir, sha256_file

        self._check_fitted()
        manifest = self.output_manifest()
        with atomic_dir(path, kind="nesting-adaptor", overwrite=overwrite) as tmp:
            with open(tmp / WEIGHTS_NAME, "wb") as f:
                np.savez(f, **self._state())
            manifest = dataclasses.replace(
                manifest, kind=ADAPTOR_KIND, sha256={WEIGHTS_NAME: sha256_file(tmp / WEIGHTS_NAME)},
                extra={**manifest.extra,
                       "source": dataclasses.asdict(self.source_),
                       "fit": self.fit_info_,
                       "params": {"kind": self.kind_, "center": bool(self.center),
                                  "nesting": list(self.nesting_)}},
            )
            manifest.save(tmp)
        return Path(path)


def fit_nesting_adaptor(
    X: Any, pairs: tuple[Any, Any] | None = None, *, kind: str = "linear",
    nesting: Sequence[int] | None = None, source_ref: Any = None, seed: int = 0,
    progress: bool = True, **params: Any,
) -> NestingAdaptor:
    """Fit a :class:`NestingAdaptor` on the frozen embeddings ``X`` (unsupervised), or with
    ``pairs = (query embeddings, positive document embeddings)`` (supervised). Other keyword
    parameters are those of :class:`NestingAdaptor`.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(100, 32))
        >>> ad = fit_nesting_adaptor(X, kind="mlp", steps=10, progress=False)
        >>> ad.nesting_, ad.transform(X[:3]).shape
        ((8, 16, 32), (3, 32))
        >>> fit_nesting_adaptor(X[:5], progress=False)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: X has 5 rows; fitting a nesting adaptor needs at least 16 ...
    """
    try:
        ad = NestingAdaptor(kind=kind, nesting=nesting, source_ref=source_ref, seed=seed,
                            progress=progress, **params)
    except TypeError as e:
        raise NestembError(f"fit_nesting_adaptor: {e}") from None
    return ad.fit(X, pairs)


def load_nesting_adaptor(path: str | os.PathLike) -> NestingAdaptor:
    """Read an adaptor written by :meth:`NestingAdaptor.save`, verifying its checksum and that
    the weights still hash to the recorded version.

    Example: see :meth:`NestingAdaptor.save`.
    """
    path = Path(path)
    manifest = Manifest.open(path, ADAPTOR_KIND, "nesting adaptor directory")
    try:
        state = {k: np.asarray(v, dtype=np.float32)
                 for k, v in read_npz(path / WEIGHTS_NAME).items()}
    except ValueError as e:  # an array that is not numeric
        raise NestembError(f"cannot read {path / WEIGHTS_NAME}: {e}") from None
    d = manifest.dim
    if state.get("weight") is None or state["weight"].shape != (d, d) or \
            state.get("bias", np.zeros(0)).shape != (d,):
        raise NestembError(f"nesting adaptor {path}: weights do not match dim {d}")
    try:
        params = manifest.extra["params"]
        source = SourceRef(**manifest.extra["source"])
        ad = NestingAdaptor(kind=params["kind"], nesting=params["nesting"],
                            center=params["center"], source_ref=source, progress=False)
        mlp = ({k: state[k] for k in ("w1", "b1", "w2", "b2")} if params["kind"] == "mlp"
               else None)
    except (KeyError, TypeError, AttributeError, NestembError) as e:  # a damaged record
        raise NestembError(f"{path / 'manifest.json'}: extra is not a valid nesting adaptor "
                           f"description: {e!r}") from None
    ad.weight_, ad.bias_ = state["weight"], state["bias"]
    ad.mlp_ = mlp
    ad.nesting_, ad.dim_, ad.source_, ad.kind_ = manifest.nesting, d, source, params["kind"]
    ad.fit_info_ = manifest.extra.get("fit", {})
    ad.version_ = weights_version(ad._state())
    if ad.version_ != manifest.model_version:
        raise NestembError(
            f"nesting adaptor {path}: weights hash {ad.version_} differs from the manifest's "
            f"version {manifest.model_version}"
        )
    return ad


def check_source(manifest: Manifest, adaptor: NestingAdaptor) -> None:
    """Refuse embeddings (by their manifest) that do not come from the model the adaptor was
    fitted on: another model id or weights version, another width, or the adaptor's own output.

    Example:
        >>> import numpy as np
        >>> src = Manifest(model_id="m", model_version="v1", nesting=(8,), dim=8)
        >>> ad = fit_nesting_adaptor(np.random.default_rng(0).normal(size=(32, 8)),
        ...                          source_ref=src, steps=2, progress=False)
        >>> check_source(src, ad)
        >>> check_source(Manifest(model_id="m", model_version="v2", nesting=(8,), dim=8), ad)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: embeddings come from model 'm' version 'v2', but the adaptor was fitted on 'm' version 'v1'
    """
    src = adaptor.source_
    if manifest.model_id == adaptor.output_model_id and manifest.model_version == adaptor.version_:
        raise NestembError("these embeddings are already this adaptor's output: apply the "
                           "adaptor to the source model's embeddings")
    if (manifest.model_id, manifest.model_version) != (src.model_id, src.model_version):
        raise NestembError(
            f"embeddings come from model {manifest.model_id!r} version "
            f"{manifest.model_version!r}, but the adaptor was fitted on {src.model_id!r} version "
            f"{src.model_version!r}"
        )
    if manifest.dim != src.dim:
        raise NestembError(f"embeddings have dim {manifest.dim}, the adaptor expects {src.dim}")


def adapted_embeddings(vectors: Any, manifest: Manifest,
                       adaptor: NestingAdaptor) -> tuple[np.ndarray, Manifest]:
    """Apply ``adaptor`` to source-model ``vectors`` described by ``manifest`` (checked with
    :func:`check_source`); returns the output rows and their manifest (an ordinary embedding
    manifest: indexes accept it, and refuse to mix it with raw source vectors).

    Example:
        >>> import numpy as np
        >>> src = Manifest(model_id="enc", model_version="v1", nesting=(16,), dim=16)
        >>> X = np.random.default_rng(0).normal(size=(40, 16))
        >>> ad = fit_nesting_adaptor(X, source_ref=src, steps=5, progress=False)
        >>> Y, man = adapted_embeddings(X, src, ad)
        >>> man.model_id, man.nesting, man.model_version == ad.version_
        ('enc+nesting-adaptor-linear', (8, 16), True)
    """
    check_source(manifest, adaptor)
    return adaptor.transform(vectors), adaptor.output_manifest(manifest)


def save_adapted_embeddings(directory: str | os.PathLike, vectors: Any, manifest: Manifest,
                            adaptor: NestingAdaptor, ids: Sequence[Any] | None = None,
                            overwrite: bool = False) -> Path:
    """Write ``adaptor``'s output for ``vectors`` as an embedding directory
    (:func:`~nestemb.nesting.save_embeddings`, manifest from :func:`adapted_embeddings`).

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from nestemb.nesting import load_embeddings
        >>> src = Manifest(model_id="enc", model_version="v1", nesting=(16,), dim=16)
        >>> X = np.random.default_rng(0).normal(size=(40, 16))
        >>> ad = fit_nesting_adaptor(X, source_ref=src, steps=5, progress=False)
        >>> out = save_adapted_embeddings(pathlib.Path(tempfile.mkdtemp()) / "e", X, src, ad)
        >>> load_embeddings(out)[1].model_id
        'enc+nesting-adaptor-linear'
    """
    Y, man = adapted_embeddings(vectors, manifest, adaptor)
    return save_embeddings(directory, Y, man, ids=ids, overwrite=overwrite)


# ---------------------------------------------------------------------- internals
def _check_pairs(pairs: Any, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``pairs = (queries, positives)``: two finite (n, d) arrays of equal length."""
    try:
        q, p = pairs
    except (TypeError, ValueError):
        raise NestembError("pairs must be a tuple (queries, positives) of two arrays") from None
    q = check_vectors(q, what="pairs[0] (queries)")
    p = check_vectors(p, what="pairs[1] (positives)")
    if len(q) != len(p):
        raise NestembError(
            f"pairs have different lengths: {len(q)} queries vs {len(p)} positives (rows must "
            "be paired)"
        )
    for name, arr in (("pairs[0] (queries)", q), ("pairs[1] (positives)", p)):
        if arr.shape[1] != d:
            raise NestembError(f"{name} have dimension {arr.shape[1]}, but X has {d}")
    if len(q) < MIN_PAIRS:
        raise NestembError(
            f"pairs has {len(q)} rows; supervised fitting needs at least {MIN_PAIRS}"
        )
    return q, p


def _pca_init(X: np.ndarray, center: bool) -> tuple[np.ndarray, np.ndarray]:
    """PCA rotation of ``X`` (components by decreasing variance) and offset ``-mean @ W`` when
    centered. Signs fixed (largest loading positive) so the fit is reproducible."""
    X64 = X.astype(np.float64)
    mu = X64.mean(axis=0) if center else np.zeros(X.shape[1])
    cov = (X64 - mu).T @ (X64 - mu)
    vals, vecs = np.linalg.eigh(cov)
    W = vecs[:, np.argsort(vals)[::-1]]
    signs = np.sign(W[np.abs(W).argmax(axis=0), np.arange(W.shape[1])])
    W = W * np.where(signs == 0, 1.0, signs)
    return W.astype(np.float32), (-mu @ W).astype(np.float32)


def _warmup_cosine(steps: int):
    warm = max(1, steps // 20)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return f


def _apply(state: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """The adaptor's map in numpy (what :meth:`NestingAdaptor.transform` runs)."""
    y = X @ state["weight"] + state["bias"]
    if "w1" in state:
        h = X @ state["w1"] + state["b1"]
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))  # exact GELU, as torch's default
        y = y + h @ state["w2"] + state["b2"]
    return y.astype(np.float32)


def _erf(x: np.ndarray) -> np.ndarray:
    import torch

    return torch.erf(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def _make_map():
    import torch

    class Map(torch.nn.Module):
        def __init__(self, d: int, kind: str, hidden: int, W0: np.ndarray, b0: np.ndarray):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.from_numpy(W0.copy()))
            self.bias = torch.nn.Parameter(torch.from_numpy(b0.copy()))
            self.mlp = None
            if kind == "mlp":
                self.mlp = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.GELU(),
                                               torch.nn.Linear(hidden, d))
                torch.nn.init.zeros_(self.mlp[2].weight)  # starts as the linear map exactly
                torch.nn.init.zeros_(self.mlp[2].bias)

        def forward(self, x):
            y = x @ self.weight + self.bias
            return y if self.mlp is None else y + self.mlp(x)

        def export(self) -> dict[str, np.ndarray]:
            out = {"weight": self.weight, "bias": self.bias}
            if self.mlp is not None:
                out.update(w1=self.mlp[0].weight.T, b1=self.mlp[0].bias,
                           w2=self.mlp[2].weight.T, b2=self.mlp[2].bias)
            return {k: v.detach().contiguous().numpy().astype(np.float32).copy()
                    for k, v in out.items()}

    return Map


def _Map(*args):
    return _make_map()(*args)


def _unsupervised_terms(model, Xt, Xn, idx, nbr, nbr_sim, W0, b0, nesting, w: _Weights,
                        tau: float, anchors: int):
    """The pairwise, top-k (absolute and rank) and reconstruction losses on one batch.

    ``nbr``/``nbr_sim``: each row's ``k`` nearest neighbours in the full input space and their
    cosine similarities; only the first ``anchors`` batch rows bring their neighbours (the
    neighbours' forward pass is the costly part of a step)."""
    import torch

    B = len(idx)
    need_nb = w.topk > 0 or w.rank > 0
    a = min(anchors, B) if need_nb else 0
    nb = nbr[idx[:a]]  # (a, k)
    xb = Xt[idx]
    y = model(torch.cat([xb, Xt[nb.reshape(-1)]]) if a else xb)  # one forward for both
    yb, yn = y[:B], (y[B:].reshape(a, nb.shape[1], -1) if a else None)
    target = Xn[idx] @ Xn[idx].T  # the full input's cosine similarities
    if a:
        t_nb = nbr_sim[idx[:a]]  # (a, k)
        # ranking candidates: the k neighbours, then the other batch rows (self pushed out)
        self_out = torch.zeros(a, B)
        self_out[torch.arange(a), torch.arange(a)] = -1e4
        p_target = torch.softmax(torch.cat([t_nb, target[:a] + self_out], 1) / tau, dim=1)
        logp_target = torch.log(p_target + 1e-12)
    pair = topk = rank = yb.new_zeros(())
    for m in nesting:
        vb = prefix_view(yb, m)
        s = vb @ vb.T
        # the diagonal (self-similarity 1 on both sides) adds nothing; rescale the mean
        pair = pair + (s - target).abs().mean() * B / max(B - 1, 1)
        if a:
            s_nb = (vb[:a, None, :] * prefix_view(yn, m)).sum(-1)
            topk = topk + (s_nb - t_nb).abs().mean()
            logp = torch.log_softmax(torch.cat([s_nb, s[:a] + self_out], 1) / tau, dim=1)
            rank = rank + (p_target * (logp_target - logp)).sum(1).mean()
    L = len(nesting)
    recon = ((yb - (xb @ W0 + b0)) ** 2).sum(-1).mean()
    return {"pairwise": pair / L, "topk": topk / L, "rank": rank / L, "recon": recon}


def _contrastive(yq, yd, nesting, tau: float):
    """In-batch InfoNCE (query -> positive among the batch's positives) averaged over prefixes."""
    import torch

    labels = torch.arange(len(yq))
    loss = yq.new_zeros(())
    for m in nesting:
        logits = prefix_view(yq, m) @ prefix_view(yd, m).T / tau
        loss = loss + torch.nn.functional.cross_entropy(logits, labels)
    return loss / len(nesting)
