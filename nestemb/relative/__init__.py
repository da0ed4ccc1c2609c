"""Relative representations: anchor selection, relative projections (cosine, Euclidean, L1,
L-infinity and their Bricks-to-Bridges product) and a torch layer for heads on relative inputs.

``RelativeLayer`` needs torch and is imported on first use, so numpy-only users do not pay for it.
"""

from typing import Any

from nestemb.relative.anchors import METHODS, select_anchors
from nestemb.relative.projection import KINDS, output_width, relative_projection

__all__ = [
    "KINDS",
    "METHODS",
    "RelativeLayer",
    "output_width",
    "relative_projection",
    "select_anchors",
]


def __getattr__(name: str) -> Any:
    if name == "RelativeLayer":
        from nestemb.relative.layer import RelativeLayer

        return RelativeLayer
    raise AttributeError(f"module 'nestemb.relative' has no attribute {name!r}")
