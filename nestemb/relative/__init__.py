"""Relative representations: anchor selection, relative projections (cosine, Euclidean, L1,
L-infinity and their Bricks-to-Bridges product), a torch layer for heads on relative inputs, and
zero-shot stitching helpers (linear heads, stitched accuracy and retrieval). Translation between
spaces is :func:`nestemb.maps.fit_adapter` (one implementation, two uses).

``RelativeLayer`` needs torch and is imported on first use, so numpy-only users do not pay for it.
"""

from typing import Any

from nestemb.relative.anchors import METHODS, select_anchors
from nestemb.relative.projection import KINDS, output_width, relative_projection
from nestemb.relative.stitching import (HEAD_KINDS, LinearHead, fit_head, stitch_accuracy,
                                        stitch_retrieval)

__all__ = [
    "HEAD_KINDS",
    "KINDS",
    "LinearHead",
    "METHODS",
    "RelativeLayer",
    "output_width",
    "relative_projection",
    "select_anchors",
    "fit_head",
    "stitch_accuracy",
    "stitch_retrieval",
]


def __getattr__(name: str) -> Any:
    if name == "RelativeLayer":
        from nestemb.relative.layer import RelativeLayer

        return RelativeLayer
    raise AttributeError(f"module 'nestemb.relative' has no attribute {name!r}")
