"""Box masks that restrict CAM propagation to the neighbourhood of each activation.

For each class map, the union of the bounding boxes of the connected regions (8-connectivity)
where the map is above a fraction θ of its maximum. Two rules (``rule=``):

* ``"inclusive"`` (cdclip's default): regions where ``M_c > θ · max M_c`` in floating point, every
  box covers its region's first and last row and column;
* ``"clip-es"``: CLIP-ES's and WeCLIP's ``scoremap2bbox``. The map is quantised to uint8
  (``⌊255·M_c⌋``) and compared with ``⌊θ · max⌋`` of the quantised map; each OpenCV bounding box
  ``[x0, x0 + w)`` has its end clamped to ``w − 1`` (``h − 1``) and is sliced with an exclusive end.
  So a box loses its last column (row) only where it touches the right (bottom) edge of the map,
  and a region confined to the last column or row gets no box at all. Boxes elsewhere are whole.

cdclip keeps the inclusive rule by default: the clamp is an off-by-one at the image border only,
which makes the propagation depend on where an object sits in the picture.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from cdclip._checks import (
    check_choice,
    check_finite,
    check_floating,
    check_fraction,
    check_nonempty,
    check_rank,
)
from cdclip.choices import BOX_RULES, BoxRule

__all__ = ["BOX_RULES", "BoxRule", "box_mask"]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def box_mask(cams: Tensor, threshold: float = 0.4, rule: BoxRule = "inclusive") -> Tensor:
    """Union of the bounding boxes of the regions above ``threshold · max`` of each map.

    Args:
        cams: class activation maps (any non-negative scale; ``"clip-es"`` expects [0, 1]).
        threshold: fraction of each map's maximum; regions above it get a box.
        rule: ``"inclusive"`` or ``"clip-es"`` (see the module docstring).

    Returns:
        A boolean mask; all ``False`` for a map whose maximum is not positive.

    Raises:
        ValueError: an empty dimension, NaN or infinity, a threshold outside [0, 1], an unknown rule.

    Shape:
        - cams: (B, C, h, w)
        - output: (B, C, h, w)
    """
    check_rank(cams, "cams", "B C h w")
    check_floating(cams, "cams")
    check_fraction(threshold, "threshold", "a fraction")
    check_choice(rule, "rule", BOX_RULES)
    check_nonempty(cams, "cams", "B C h w")
    check_finite(cams, "cams")
    b, c, h, w = cams.shape
    flat = cams.detach().float().reshape(b * c, h * w)
    if rule == "clip-es":
        # numpy's float32 -> uint8 cast truncates like CLIP-ES's (m * 255).astype(np.uint8)
        quant = (flat.cpu().numpy() * 255).astype(np.uint8)
        limit = (threshold * quant.max(axis=1, keepdims=True)).astype(np.int64)
        above = (quant > limit).reshape(b * c, h, w)
    else:
        peak = flat.amax(dim=1, keepdim=True)
        above = ((flat > threshold * peak) & (peak > 0)).reshape(b * c, h, w).cpu().numpy()
    out = np.zeros_like(above)
    # connected components are cheap at patch resolution (h, w ~ 20-40), and scipy's labelling is
    # exact; there is no batched torch equivalent worth its complexity here
    for i in np.flatnonzero(above.reshape(b * c, -1).any(axis=1)):
        labels, _ = ndimage.label(above[i], structure=_EIGHT_CONNECTED)
        for region in ndimage.find_objects(labels):
            if region is None:
                continue
            if rule == "clip-es":  # end clamped to the last index, then sliced exclusively
                rows, cols = region
                region = (slice(rows.start, min(rows.stop, h - 1)), slice(cols.start, min(cols.stop, w - 1)))
            out[i][region] = True
    return torch.from_numpy(out).reshape(b, c, h, w).to(cams.device)
