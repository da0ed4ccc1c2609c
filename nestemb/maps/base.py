"""The base of every map fitted on frozen vectors, and the one identity record.

:class:`FittedMap` has the shape of scikit-learn's ``_BasePCA``: ``__init__`` stores keyword
parameters only, ``fit`` validates them and dispatches on the strategy parameter ``kind``,
learned state ends in ``_``, and the transform, the content version, the artefact directory
(``manifest.json`` + ``weights.npz`` with its checksum) and the identity check live here once.
Subclasses (:class:`~nestemb.maps.adapter.Adapter`, :class:`~nestemb.maps.retrofit.Retrofit`)
say how to fit and what their manifest records.

Every map is ``y = unscale(x' @ W + b + gelu(x' @ W1 + b1) @ W2 + b2)`` with
``x' = (x - x_mean) / x_scale``: each part is present only when its arrays are
(:func:`forward`); the torch module that trains the same arrays is
:func:`nestemb.maps.nn.make_module`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Mapping, Self, overload

import numpy as np

from nestemb.errors import NestembError
from nestemb.nesting import (Manifest, check_vectors, default_nesting, prefix_view,
                             validate_nesting, weights_version)

UNKNOWN_VERSION = "unknown"
"""The ``model_version`` of vectors whose weights nestemb never saw (the Manifest default)."""

WEIGHTS_NAME = "weights.npz"
"""The weights file of a saved map directory."""


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """Who produced a set of embeddings: model id, weights version, width.

    Example:
        >>> m = Manifest(model_id="minilm", model_version="ab12", nesting=(8, 16), dim=16)
        >>> ModelRef.of(m, "source_ref")
        ModelRef(model_id='minilm', model_version='ab12', dim=16)
        >>> ModelRef.from_dict(ModelRef.of(m).to_dict()) == ModelRef.of(m)
        True
        >>> ModelRef.of("minilm", "source_ref")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: source_ref must be a ModelRef or a Manifest, got str
    """

    model_id: str
    model_version: str
    dim: int

    def __post_init__(self) -> None:
        for name in ("model_id", "model_version"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise NestembError(f"{{param}} must be a non-empty string, got {v!r}", param=name)
        if (isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer))
                or self.dim < 1):
            raise NestembError(f"{{param}} must be a positive integer, got {self.dim!r}",
                               param="dim")

    @overload
    @classmethod
    def of(cls, ref: "ModelRef | Manifest", param: str = ...) -> "ModelRef": ...

    @overload
    @classmethod
    def of(cls, ref: None, param: str = ...) -> None: ...

    @overload
    @classmethod
    def of(cls, ref: "ModelRef | Manifest | None", param: str = ...) -> "ModelRef | None": ...

    @classmethod
    def of(cls, ref: "ModelRef | Manifest | None", param: str = "ref") -> "ModelRef | None":
        """``ref`` as a ModelRef: a ModelRef, the reference of the model that wrote a
        :class:`~nestemb.nesting.Manifest`, or ``None``; anything else is an error about
        ``param``."""
        if ref is None or isinstance(ref, ModelRef):
            return ref
        if isinstance(ref, Manifest):
            return cls(ref.model_id, ref.model_version, int(ref.dim))
        raise NestembError(f"{{param}} must be a ModelRef or a Manifest, got "
                           f"{type(ref).__name__}", param=param)

    @property
    def unknown(self) -> bool:
        """True when the weights version is unknown (vectors from outside nestemb)."""
        return self.model_version == UNKNOWN_VERSION

    def same(self, other: "ModelRef", trust_unknown: bool = False) -> bool:
        """Same model: same id and width, and same version (or either unknown, when
        ``trust_unknown``)."""
        if self.model_id != other.model_id or self.dim != other.dim:
            return False
        return self.model_version == other.model_version or (
            trust_unknown and (self.unknown or other.unknown))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelRef":
        try:
            return cls(d["model_id"], d["model_version"], int(d["dim"]))
        except (KeyError, TypeError, ValueError):
            raise NestembError(f"not a model reference: {d!r}") from None

    def __str__(self) -> str:
        return f"{self.model_id!r} (version {self.model_version!r}, {self.dim} dims)"


def resolve_nesting(nesting: Any, dim: int) -> tuple[int, ...]:
    """The nesting a map fits: ``nesting`` checked against the output width ``dim``, or by
    default doubling prefixes from 8 (just ``(dim,)`` up to 8 dims). Errors name ``nesting``.

    Example:
        >>> resolve_nesting(None, 24), resolve_nesting(None, 6), resolve_nesting([4, 6], 6)
        ((8, 16, 24), (6,), (4, 6))
    """
    if nesting is None:
        return default_nesting(dim, start=8) if dim > 8 else (dim,)
    try:
        return validate_nesting(nesting, full_dim=dim)
    except NestembError as e:  # the parameter at fault is nesting, whatever validated it
        raise NestembError(e.template if e.param == "nesting" else str(e),
                           param="nesting") from None


def gelu(x: np.ndarray, approximate: str = "tanh") -> np.ndarray:
    """GELU as ``torch.nn.GELU(approximate=...)``, in numpy: ``"tanh"`` (the one MLP's) or
    ``"none"`` (the exact erf form, which nesting adaptors saved before the merge used).

    Example:
        >>> import torch
        >>> x = np.linspace(-3, 3, 7)
        >>> np.allclose(gelu(x), torch.nn.GELU("tanh")(torch.from_numpy(x)).numpy())
        True
        >>> np.allclose(gelu(x, "none"), torch.nn.GELU()(torch.from_numpy(x)).numpy())
        True
    """
    if approximate == "none":
        from scipy.special import erf

        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def forward(weights: Mapping[str, np.ndarray], x: np.ndarray,
            approximate: str = "tanh") -> np.ndarray:
    """The map of ``weights`` (see the module docstring) on rows ``x``, as float32.

    Example:
        >>> w = {"W": np.eye(2), "b": np.ones(2), "y_mean": np.zeros(2), "y_scale": 2 * np.ones(2)}
        >>> forward(w, np.array([[1.0, 2.0]])).tolist()
        [[4.0, 6.0]]
    """
    if "x_mean" in weights:
        x = (x - weights["x_mean"]) / weights["x_scale"]
    out = x @ weights["W"]
    if "b" in weights:
        out = out + weights["b"]
    if "W1" in weights:
        out = out + gelu(x @ weights["W1"] + weights["b1"], approximate) @ weights["W2"] \
            + weights["b2"]
    if "y_mean" in weights:
        out = out * weights["y_scale"] + weights["y_mean"]
    return np.ascontiguousarray(out, dtype=np.float32)


class FittedMap:
    """Base of the maps fitted on frozen vectors (see the module docstring).

    Subclasses set :attr:`KINDS` (values of the strategy parameter ``kind``), :attr:`NOUN`
    (how errors name the map), :attr:`ARTEFACT_KIND` (the manifest ``kind`` of a saved
    directory) and :attr:`NORMALIZE` (whether rows are L2-normalized before the map), and
    implement ``fit`` (ending with :meth:`_fitted`), :meth:`check_manifest` and
    :meth:`manifest`.

    Learned state every fitted map has: ``weights_`` (arrays by name), ``in_dim_``,
    ``out_dim_``, ``nesting_``, ``version_`` (content hash), ``fit_info_``.
    """

    KINDS: tuple[str, ...] = ()
    NOUN = "map"
    ARTEFACT_KIND = "map"
    NORMALIZE = False
    gelu_ = "tanh"

    # set by subclasses' __init__ (kind) and by fit / _read (the learned state); declared
    # here without values so ``hasattr(self, "weights_")`` still tells fitted from not
    kind: str
    weights_: dict[str, np.ndarray]
    in_dim_: int
    out_dim_: int
    nesting_: tuple[int, ...]
    version_: str
    fit_info_: dict[str, Any]

    def _check_kind(self) -> None:
        if self.kind not in self.KINDS:
            raise NestembError(
                f"{{param}} must be one of {', '.join(self.KINDS)}; got {self.kind!r}",
                param="kind")

    def _version_key(self) -> str:
        """What besides the weights changes the map's output (hashed into ``version_``)."""
        return self.kind

    def _hash(self) -> str:
        w = dict(self.weights_)
        w["_kind"] = np.frombuffer(self._version_key().encode(), dtype=np.uint8)
        return weights_version(w)

    def _fitted(self, weights: dict[str, np.ndarray], in_dim: int, out_dim: int,
                info: dict[str, Any]) -> None:
        """Record the learned state at the end of ``fit``."""
        self.weights_ = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.in_dim_, self.out_dim_, self.fit_info_ = in_dim, out_dim, info
        self.version_ = self._hash()

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise NestembError(f"the {self.NOUN} is not fitted: call fit first")

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """The map on rows already prepared (normalized when :attr:`NORMALIZE`)."""
        return forward(self.weights_, x, self.gelu_)

    def check_manifest(self, manifest: Manifest, trust_unknown: bool = False) -> None:
        raise NotImplementedError

    def manifest(self) -> Manifest:
        raise NotImplementedError

    def transform(self, X: Any, manifest: Manifest | None = None, *,
                  trust_unknown: bool = False, batch: int = 65536) -> np.ndarray:
        """Map rows ``X`` (``(n, in_dim)``) to ``(n, out_dim)`` float32 rows, ``batch`` rows at
        a time. With the vectors' ``manifest``, their model is checked first
        (:meth:`check_manifest`); without one only the width is."""
        self._check_fitted()
        if manifest is not None:
            self.check_manifest(manifest, trust_unknown=trust_unknown)
        X = check_vectors(X, what="X")
        if X.shape[1] != self.in_dim_:
            raise NestembError(
                f"X has {X.shape[1]} dims, but the {self.NOUN} maps {self.in_dim_}-dim vectors "
                f"(into {self.out_dim_} dims)")
        out = np.empty((len(X), self.out_dim_), dtype=np.float32)
        for a in range(0, len(X), batch):
            x = X[a:a + batch]
            out[a:a + batch] = self._forward(prefix_view(x, x.shape[1]) if self.NORMALIZE else x)
        return out

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the map directory (:meth:`manifest` + ``weights.npz`` with its checksum),
        atomically. Returns the path."""
        from nestemb.io import atomic_dir, sha256_file

        man = self.manifest()
        with atomic_dir(path, kind=self.ARTEFACT_KIND, overwrite=overwrite) as tmp:
            with open(tmp / WEIGHTS_NAME, "wb") as f:
                # as dict[str, Any]: numpy's stub types **kwds against its bool allow_pickle
                arrays: dict[str, Any] = self.weights_
                np.savez(f, **arrays)
            man.sha256 = {WEIGHTS_NAME: sha256_file(tmp / WEIGHTS_NAME)}
            man.save(tmp)
        return Path(path)

    @classmethod
    def _read(cls, path: Path, man: Manifest, weights: dict[str, np.ndarray],
              params: dict[str, Any], check_version: bool = True) -> Self:
        """A map rebuilt from a saved directory: ``params`` go to ``__init__`` (errors name
        the damaged record), ``weights`` and (unless not ``check_version``) the manifest's
        version are checked."""
        where = f"{path / 'manifest.json'}: extra"
        try:
            m = cls(**params)
            m._check_kind()
        except (TypeError, NestembError) as e:  # a damaged record
            raise NestembError(f"{where} is not a valid {cls.NOUN} description: {e}") from None
        m.weights_ = weights
        if weights.get("W") is None or weights["W"].ndim != 2:
            raise NestembError(f"{path / WEIGHTS_NAME} does not hold a {cls.NOUN}")
        m.in_dim_, m.out_dim_ = weights["W"].shape
        m.nesting_ = man.nesting
        m.version_ = m._hash()
        if check_version and m.version_ != man.model_version:
            raise NestembError(f"{path}: the weights do not match the manifest's version")
        return m
