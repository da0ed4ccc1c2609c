"""The one orthogonal Procrustes of nestemb: the rotation (or, between spaces of different
widths, the partial isometry) that best maps one set of paired rows onto another.

Adapters (:mod:`nestemb.maps.adapter`) and the space-comparison tools
(:mod:`nestemb.compare.measures`) reuse it; nothing else solves Procrustes.
"""

from __future__ import annotations

import numpy as np

from nestemb.errors import NestembError
from nestemb.nesting import finite_matrix


def _paired(source: object, target: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate two paired float matrices (same rows, finite) and return them as float64."""
    out = [finite_matrix(source, "source"), finite_matrix(target, "target")]
    if len(out[0]) != len(out[1]):
        raise NestembError(
            f"source and target must be paired rows: got {len(out[0])} and {len(out[1])} rows"
        )
    return out[0], out[1]


def orthogonal_procrustes(source: object, target: object) -> np.ndarray:
    """The ``(d_s, d_t)`` matrix ``W`` with orthonormal rows (``d_s <= d_t``) or columns
    (``d_s >= d_t``) that best maps ``source`` onto ``target`` over paired rows.

    Solved by the thin SVD ``source.T @ target = U S Vt``, ``W = U @ Vt`` (Schönemann, 1966):
    ``W`` maximises ``trace(W.T @ source.T @ target)``. For ``d_s <= d_t`` (``W`` embeds the
    source isometrically in the wider target space; a rotation when equal) ``||source @ W||`` is
    fixed, so this is exactly the minimiser of ``||source @ W - target||_F``. For ``d_s > d_t``
    (``W`` projects onto ``d_t`` directions) it is the usual closed-form projection Procrustes,
    the least-squares minimiser when the source rows are isotropic (``source.T @ source``
    proportional to the identity); the exact least-squares projection has no closed form. No
    scaling and no translation: centre or normalize the rows first if that is wanted. Computed
    in float64, returned as float64.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(50, 3))
        >>> R = np.linalg.qr(rng.normal(size=(3, 3)))[0]        # a random rotation
        >>> np.allclose(orthogonal_procrustes(X, X @ R), R)
        True
        >>> W = orthogonal_procrustes(X, rng.normal(size=(50, 5)))   # 3 -> 5 dims
        >>> W.shape, np.allclose(W @ W.T, np.eye(3))
        ((3, 5), True)
    """
    source, target = _paired(source, target)
    u, _, vt = np.linalg.svd(source.T @ target, full_matrices=False)
    return u @ vt
