"""Chains of adapters: upgrades go v1 -> v2 -> v3, and a v1 gallery reaches the v3 space
through the v1 -> v2 and v2 -> v3 adapters, applied in turn.

:class:`AdapterChain` checks once, when it is built, that the adapters connect: each adapter's
target model is the next one's source model (same :class:`~nestemb.maps.base.ModelRef`), so a
chain with its middle model missing, or in the wrong order, is refused before any vector moves.
:func:`chain_embeddings` maps embeddings with their manifest through a chain, each hop through
:func:`~nestemb.maps.adapter.adapt_embeddings` (identity checked at every hop), and returns
them with a manifest naming the last target model.

**Sequential, not collapsed.** Every adapter L2-normalizes its input rows before its map (see
:mod:`nestemb.maps.adapter`), so a chain is *not* the product of its matrices:
:meth:`AdapterChain.transform` applies the adapters one after another, exactly as
:func:`chain_embeddings` does. :meth:`AdapterChain.collapse` multiplies linear adapters into a
single :class:`~nestemb.maps.adapter.Adapter` (one matrix product per query instead of one per
hop); it skips the intermediate normalization, so it equals the chain only when every hop but
the last maps unit rows to unit rows (orthogonal adapters without scaling, each no narrower
than its input) and otherwise differs by that normalization.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.maps.adapter import Adapter, adapt_embeddings
from nestemb.maps.base import ModelRef
from nestemb.maps.gate import check_quality
from nestemb.nesting import Manifest


def _links(adapters: Sequence[Adapter]) -> bool:
    """Whether the adapters connect in this order (exact model references)."""
    return all(a.target_ref_ == b.source_ref_ for a, b in zip(adapters, adapters[1:]))


def _order_hint(adapters: Sequence[Adapter]) -> str:
    """Why the adapters do not connect: another order would chain them, or a model is
    missing."""
    n = len(adapters)
    if n <= 6:  # a few adapters: try every order (at most 720)
        from itertools import permutations

        for order in permutations(range(n)):
            if _links([adapters[i] for i in order]):
                return ("the adapters are out of order: pass them as "
                        + ", ".join(str(i + 1) for i in order))
    return "the chain's middle model is missing (no adapter connects these two)"


class AdapterChain:
    """Adapters applied in turn: model A -> B -> C as one map from A's space into C's.

    ``adapters`` are fitted :class:`~nestemb.maps.adapter.Adapter` objects, each with source
    and target identities, each adapter's target the next one's source (checked here; errors
    name ``adapters``). A link whose model has an unknown weights version cannot be checked and
    is refused unless ``trust_unknown`` (then ``model_id`` and width suffice).

    Learned state (as a fitted map): ``adapters_``, ``source_ref_`` (the first source),
    ``target_ref_`` (the last target), ``nesting_`` (the last adapter's), ``in_dim_``,
    ``out_dim_``.

    Example (A -> B -> C, each a rotation):
        >>> from nestemb.maps.adapter import fit_adapter
        >>> from nestemb.nesting import prefix_view
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(50, 4))
        >>> R1, R2 = (np.linalg.qr(rng.normal(size=(4, 4)))[0] for _ in range(2))
        >>> A, B, C = (ModelRef(m, "v1", 4) for m in "ABC")
        >>> ab = fit_adapter(X, X @ R1, source_ref=A, target_ref=B)
        >>> bc = fit_adapter(X @ R1, X @ R1 @ R2, source_ref=B, target_ref=C)
        >>> chain = AdapterChain([ab, bc])
        >>> chain.target_ref_.model_id, np.allclose(chain.transform(X[:3]),
        ...     prefix_view(X[:3] @ R1 @ R2, 4), atol=1e-5)
        ('C', True)
        >>> AdapterChain([bc, ab])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: adapters: adapter 2 maps 'A' (version 'v1', 4 dims) -> ...
    """

    def __init__(self, adapters: Sequence[Adapter], *, trust_unknown: bool = False):
        if isinstance(adapters, AdapterChain):
            adapters = adapters.adapters_
        if isinstance(adapters, Adapter) or not isinstance(adapters, Sequence):
            raise NestembError(f"{{param}} must be a sequence of adapters, got "
                               f"{type(adapters).__name__}", param="adapters")
        if not adapters:
            raise NestembError("{param} is empty: a chain needs at least one adapter",
                               param="adapters")
        for n, a in enumerate(adapters, 1):
            if not isinstance(a, Adapter):
                raise NestembError(f"{{param}}: item {n} is a {type(a).__name__}, not an "
                                   "Adapter", param="adapters")
            a._check_fitted()
            if a.source_ref_ is None or a.target_ref_ is None:
                side = "source" if a.source_ref_ is None else "target"
                raise NestembError(
                    f"adapter {n} has no {side} model identity: a chain can only check that "
                    f"its adapters connect when each records both (fit it with {side}_ref)",
                    param="adapters")
            if (a.source_ref_.dim, a.target_ref_.dim) != (a.in_dim_, a.out_dim_):
                raise NestembError(
                    f"adapter {n} maps {a.in_dim_} -> {a.out_dim_} dims, but its identities "
                    f"say {a.source_ref_.dim} -> {a.target_ref_.dim}", param="adapters")
        for n, (a, b) in enumerate(zip(adapters, adapters[1:]), 1):
            made, wanted = a.target_ref_, b.source_ref_
            assert made is not None and wanted is not None
            if (made.unknown or wanted.unknown) and not trust_unknown:
                raise NestembError(
                    f"adapter {n} produces {made} and adapter {n + 1} reads {wanted}: an "
                    "unknown weights version cannot be checked (set {param} to rely on "
                    "model_id alone)", param="trust_unknown")
            if not made.same(wanted, trust_unknown):
                raise NestembError(
                    f"adapter {n + 1} maps {wanted} -> {b.target_ref_}, but adapter {n} "
                    f"produces {made}: {_order_hint(adapters)}", param="adapters")
        first, last = adapters[0].source_ref_, adapters[-1].target_ref_
        assert first is not None and last is not None
        self.adapters_: tuple[Adapter, ...] = tuple(adapters)
        self.trust_unknown = trust_unknown
        self.source_ref_: ModelRef = first
        self.target_ref_: ModelRef = last
        self.nesting_: tuple[int, ...] = adapters[-1].nesting_
        self.in_dim_: int = adapters[0].in_dim_
        self.out_dim_: int = adapters[-1].out_dim_

    def __len__(self) -> int:
        return len(self.adapters_)

    def __repr__(self) -> str:
        models = [self.source_ref_] + [a.target_ref_ for a in self.adapters_]
        return "AdapterChain(" + " -> ".join(str(m) for m in models) + ")"

    def transform(self, X: Any, manifest: Manifest | None = None) -> np.ndarray:
        """Map rows ``X`` of the first source model through every adapter in turn (each
        normalizes its input rows, exactly as :func:`chain_embeddings`). With the vectors'
        ``manifest``, their model is checked against the chain's source first."""
        out = self.adapters_[0].transform(X, manifest, trust_unknown=self.trust_unknown)
        for a in self.adapters_[1:]:
            out = a.transform(out)
        return out

    def collapse(self) -> Adapter:
        """One :class:`~nestemb.maps.adapter.Adapter` (kind ``"affine"``) whose matrix is the
        product of the chain's: ``W = W1 @ W2``, ``b = b1 @ W2 + b2`` (scalings folded in),
        source and target identities those of the chain. Linear adapters only (orthogonal
        without ``slerp``, affine); the intermediate normalization is skipped (see the module
        docstring).

        Example:
            >>> from nestemb.maps.adapter import fit_adapter
            >>> rng = np.random.default_rng(0)
            >>> X = rng.normal(size=(50, 4)); R = np.linalg.qr(rng.normal(size=(4, 4)))[0]
            >>> A, B, C = (ModelRef(m, "v1", 4) for m in "ABC")
            >>> chain = AdapterChain([fit_adapter(X, X @ R, source_ref=A, target_ref=B),
            ...                       fit_adapter(X @ R, X, source_ref=B, target_ref=C)])
            >>> np.allclose(chain.collapse().weights_["W"], np.eye(4), atol=1e-5)
            True
        """
        w: np.ndarray | None = None
        b: np.ndarray | None = None
        for n, a in enumerate(self.adapters_, 1):
            if a.kind == "mlp" or (a.kind == "orthogonal" and a.slerp):
                what = "an mlp" if a.kind == "mlp" else "a slerped orthogonal"
                raise NestembError(f"adapter {n} is {what} adapter: only linear adapters "
                                   "collapse into one matrix", param="adapters")
            wa, ba = _affine(a.weights_)
            w, b = (wa, ba) if w is None or b is None else (w @ wa, b @ wa + ba)
        assert w is not None and b is not None
        out = Adapter("affine", source_ref=self.source_ref_, target_ref=self.target_ref_,
                      nesting=self.nesting_, trust_unknown=True)
        out._check_params(self.in_dim_, self.out_dim_)
        out._fitted({"W": w, "b": b}, self.in_dim_, self.out_dim_, {
            "collapsed": [a.manifest().model_id for a in self.adapters_],
            "versions": [a.version_ for a in self.adapters_],
        })
        return out


def _affine(weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A linear adapter's map as ``x @ W + b``, its scalings folded in: with
    ``x' = (x - x_mean) / x_scale`` and ``y = (x' @ W + b) * y_scale + y_mean``."""
    w = weights["W"].astype(np.float64)
    b = weights["b"].astype(np.float64) if "b" in weights else np.zeros(w.shape[1])
    if "x_mean" in weights:
        xs = weights["x_scale"].astype(np.float64)
        b = b - (weights["x_mean"].astype(np.float64) / xs) @ w
        w = w / xs[:, None]
    if "y_mean" in weights:
        ys = weights["y_scale"].astype(np.float64)
        w, b = w * ys[None, :], b * ys + weights["y_mean"].astype(np.float64)
    return w, b


def chain_embeddings(
    vectors: Any, manifest: Manifest, adapters: Sequence[Adapter] | AdapterChain, *,
    trust_unknown: bool = False, min_quality: float | None = None, force: bool = False,
) -> tuple[np.ndarray, Manifest]:
    """Map embeddings with their ``manifest`` through ``adapters`` (a list, checked as by
    :class:`AdapterChain`, or a chain), each hop through
    :func:`~nestemb.maps.adapter.adapt_embeddings` (the vectors' model checked at every hop).
    Returns the vectors and a manifest naming the last target model; ``extra["adapted"]``
    holds the last hop's adapter id and version, ``source`` (the model the vectors came from)
    and ``chain`` (every hop's record, as ``adapt_embeddings`` writes it). ``min_quality`` and
    ``force`` gate every hop (:func:`~nestemb.maps.gate.check_quality`), all of them before any
    vector is mapped.

    Example:
        >>> from nestemb.maps.adapter import fit_adapter
        >>> rng = np.random.default_rng(0); X = rng.normal(size=(30, 4))
        >>> v1, v2, v3 = (Manifest(model_id="enc", model_version=v, nesting=(2, 4), dim=4)
        ...               for v in ("v1", "v2", "v3"))
        >>> hops = [fit_adapter(X, X, source_ref=v1, target_ref=v2),
        ...         fit_adapter(X, X, source_ref=v2, target_ref=v3)]
        >>> Y, m = chain_embeddings(X, v1, hops)
        >>> Y.shape, m.model_version, len(m.extra["adapted"]["chain"])
        ((30, 4), 'v3', 2)
    """
    chain = adapters if isinstance(adapters, AdapterChain) else AdapterChain(
        adapters, trust_unknown=trust_unknown)
    if min_quality is not None:  # every hop's gate first: a late refusal would waste the work
        for a in chain.adapters_:
            check_quality(a, min_quality, force=force)
    hops: list[dict[str, Any]] = []
    out, man = vectors, manifest
    for a in chain.adapters_:
        out, man = adapt_embeddings(out, man, a, trust_unknown=trust_unknown,
                                    min_quality=min_quality, force=force)
        hops.append(man.extra["adapted"])
    man.extra["adapted"] = {**hops[-1], "source": ModelRef.of(manifest).to_dict(),
                            "chain": hops}
    return np.asarray(out), man
