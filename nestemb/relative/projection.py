"""Relative representations (Moschella et al., ICLR 2023): each item described by how it relates
to a fixed set of anchor items, which removes the transformations between two spaces that the
chosen relation ignores.

Kinds and what each projection is invariant to (a transformation applied to the items *and* the
anchors alike; all checked in the tests):

=============  ==========================================  ======================================
kind           column ``j`` of row ``i``                   invariant to
=============  ==========================================  ======================================
``cosine``     ``cos(x_i, a_j)``                           orthogonal maps, isotropic scaling
                                                           (+ translations with ``center=True``)
``euclidean``  ``||x_i - a_j||_2 / s_2``                   orthogonal maps, translations,
                                                           isotropic scaling
``l1``         ``||x_i - a_j||_1 / s_1``                   signed permutations of coordinates,
                                                           translations, isotropic scaling
``linf``       ``||x_i - a_j||_inf / s_inf``               as ``l1``
``product``    ``[cosine | euclidean | l1 | linf]``        the intersection: signed permutations,
                                                           isotropic scaling (+ translations with
                                                           ``center=True``)
=============  ==========================================  ======================================

``s_p`` is the mean distance between two distinct anchors under the same norm: dividing by it
makes the distances scale-free (an encoder from another seed differs by scale too), and it moves
with the space because it is computed from the anchors. Distances are returned as they are
(larger = farther); a linear head does not care about the sign.

``product`` is the Bricks-to-Bridges aggregation (Cannistraci et al., ICLR 2024) as the product
space: the four projections concatenated, so its width is ``4 * len(anchors)`` (cosine columns
first, then Euclidean, L1, L-infinity). The cosine block lies in [-1, 1] and each distance block
has mean 1 over anchor pairs, so no block dominates by scale.

``center=True`` subtracts the anchors' mean from items and anchors before projecting: for cosine
this adds invariance to translations; distances are translation-invariant already.

One implementation serves numpy (:func:`relative_projection`, float64) and torch
(:class:`nestemb.relative.RelativeLayer`, differentiable).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nestemb.checks import check_matrix
from nestemb.errors import NestembError
from nestemb.nesting import finite_matrix

KINDS = ("cosine", "euclidean", "l1", "linf", "product")
"""Relative projection kinds; ``product`` concatenates the other four."""

_BLOCKS = ("cosine", "euclidean", "l1", "linf")
_EPS = 1e-12
_TINY = 1e-30  # sqrt is clamped here (float32-representable) so its gradient at 0 is 0, not NaN
_CHUNK = 1 << 22  # elements of an (items x anchors x dim) difference block held at once


def check_kind(kind: str) -> str:
    """Validate a relative projection ``kind``.

    Example:
        >>> check_kind("l2")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: kind must be one of cosine, euclidean, l1, linf, product, got 'l2'
    """
    if kind not in KINDS:
        raise NestembError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def output_width(kind: str, n_anchors: int) -> int:
    """Columns a projection of ``kind`` has for ``n_anchors`` anchors.

    Example:
        >>> output_width("cosine", 64), output_width("product", 64)
        (64, 256)
    """
    return n_anchors * (len(_BLOCKS) if check_kind(kind) == "product" else 1)


def _is_torch(t: Any) -> bool:
    return not isinstance(t, np.ndarray)


def _raw(X: Any, A: Any, kind: str) -> Any:
    """``(len(X), len(A))`` cosine similarities or unscaled distances; numpy or torch."""
    if kind == "cosine":
        nx = (X * X).sum(-1) ** 0.5
        na = (A * A).sum(-1) ** 0.5
        if _is_torch(X):
            return (X / nx.clamp_min(_EPS)[:, None]) @ (A / na.clamp_min(_EPS)[:, None]).T
        return (X / np.maximum(nx, _EPS)[:, None]) @ (A / np.maximum(na, _EPS)[:, None]).T
    diff = X[:, None, :] - A[None, :, :]
    if kind == "euclidean":
        sq = (diff * diff).sum(-1)
        if _is_torch(X):
            return sq.clamp_min(_TINY).sqrt() * (sq > 0)
        return np.sqrt(sq)
    if kind == "l1":
        return abs(diff).sum(-1)
    return abs(diff).amax(-1) if _is_torch(X) else abs(diff).max(-1)


def anchor_scales(anchors: Any, kind: str) -> dict[str, Any]:
    """For each distance block of ``kind``, the mean distance between two distinct anchors
    (the ``s_p`` that makes the distances scale-free). Needs at least 2 distinct anchors.

    Example:
        >>> scales = anchor_scales(np.array([[0.0, 0.0], [3.0, 4.0]]), "l1")
        >>> {b: float(s) for b, s in scales.items()}
        {'l1': 7.0}
    """
    A = anchors - anchors.mean(0)  # distances ignore translations; small coordinates round less
    a = A.shape[0]
    blocks = _BLOCKS if kind == "product" else (kind,)
    # a x a x d at most; anchors are few (<= a few thousand)
    return {b: _raw(A, A, b).sum() / (a * (a - 1)) for b in blocks if b != "cosine"}


def project(
    X: Any, anchors: Any, kind: str, center: bool, scales: dict[str, Any] | None = None
) -> Any:
    """The relative projection itself, on validated numpy arrays or torch tensors (the one
    implementation behind :func:`relative_projection` and ``RelativeLayer``); ``scales`` from
    :func:`anchor_scales`, computed when not given.

    Example:
        >>> A = np.array([[1.0, 0.0], [0.0, 2.0]])
        >>> project(np.array([[3.0, 0.0]]), A, "cosine", center=False).tolist()
        [[1.0, 0.0]]
    """
    if scales is None:
        scales = anchor_scales(anchors, kind)
    if center:
        mean = anchors.mean(0)
        X, anchors = X - mean, anchors - mean
    blocks = []
    for b in _BLOCKS if kind == "product" else (kind,):
        if b == "cosine":
            blocks.append(_raw(X, anchors, b))
        else:
            # distances ignore translations: measure them from the anchors' mean, where the
            # coordinates are small, to keep float32 rounding small too
            mean = anchors.mean(0)
            blocks.append(_raw(X - mean, anchors - mean, b) / scales[b])
    if len(blocks) == 1:
        return blocks[0]
    if _is_torch(X):
        import torch

        return torch.cat(blocks, dim=-1)
    return np.concatenate(blocks, axis=-1)


def check_anchors(anchors: object, name: str = "anchors") -> np.ndarray:
    """Validate anchors: a finite 2-D array of at least 2 distinct rows; float64.

    Example:
        >>> check_anchors([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: anchors rows 0 and 1 are the same vector: anchors must be distinct
        >>> check_anchors([[1.0, 2.0]])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: anchors has 1 row: a relative projection needs at least 2 anchors
    """
    A = check_matrix(anchors, name, dtype=np.float64)
    if len(A) < 2:
        raise NestembError(
            f"{name} has {len(A)} row{'s' * (len(A) != 1)}: a relative projection needs at least "
            "2 anchors"
        )
    _, first, inverse = np.unique(A, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    dup = np.flatnonzero(first[inverse] != np.arange(len(A)))
    if dup.size:
        i = int(dup[0])
        raise NestembError(
            f"{name} rows {int(first[inverse[i]])} and {i} are the same vector: anchors must be "
            "distinct"
        )
    return A


def relative_projection(
    X: object, anchors: object, kind: str = "cosine", center: bool = False
) -> np.ndarray:
    """Describe each row of ``X`` by its relation to each anchor: an array
    ``(len(X), len(anchors))`` (``(len(X), 4 * len(anchors))`` for ``kind="product"``), float64.

    ``anchors`` are rows of the same space as ``X`` (typically ``X[select_anchors(...)]``, or the
    anchor items encoded by the same encoder); at least 2, distinct, finite, as wide as ``X``.
    See the module docstring for each ``kind``, its formula and its invariances.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X, A = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
        >>> Q = np.linalg.qr(rng.normal(size=(3, 3)))[0]          # a rotation and a scale
        >>> np.allclose(relative_projection(X, A), relative_projection(2 * X @ Q, 2 * A @ Q))
        True
        >>> relative_projection(X, A, kind="product").shape
        (5, 16)
        >>> relative_projection(X, A[:, :2])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: X has width 3 but anchors have width 2: they must come from the same space
    """
    check_kind(kind)
    A = check_anchors(anchors)
    x = finite_matrix(X, "X")
    if x.shape[1] != A.shape[1]:
        raise NestembError(
            f"X has width {x.shape[1]} but anchors have width {A.shape[1]}: they must come from "
            "the same space"
        )
    if kind in ("cosine", "product"):
        Ac = A - A.mean(0) if center else A
        zero = np.flatnonzero(np.linalg.norm(Ac, axis=1) <= _EPS)
        if zero.size:
            where = "the anchors' mean (center=True)" if center else "zero"
            raise NestembError(
                f"anchors row {int(zero[0])} is {where}: its cosine to anything is undefined"
            )
    scales = anchor_scales(A, kind)
    rows = max(1, _CHUNK // (len(A) * A.shape[1]))
    out = np.empty((len(x), output_width(kind, len(A))))
    for s in range(0, len(x), rows):
        out[s : s + rows] = project(x[s : s + rows], A, kind, center, scales)
    return out
