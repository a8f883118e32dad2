"""Box masks that restrict CAM propagation to the neighbourhood of each activation.

For each class map, the union of the bounding boxes of the connected regions (8-connectivity)
where ``M_c > θ · max M_c``. CLIP-ES derives the boxes from OpenCV contours and then slices
``[y0:y1, x0:x1]`` with an exclusive end, which drops the last row and column of every box; here
the boxes are inclusive.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from cdclip._checks import check_floating, check_rank

__all__ = ["box_mask"]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def box_mask(cams: Tensor, threshold: float = 0.4) -> Tensor:
    """Union of the bounding boxes of the regions above ``threshold · max`` of each map.

    Args:
        cams: class activation maps (any non-negative scale).
        threshold: fraction of each map's maximum; regions above it get a box.

    Returns:
        A boolean mask; all ``False`` for a map whose maximum is not positive.

    Shape:
        - cams: (B, C, h, w)
        - output: (B, C, h, w)
    """
    check_rank(cams, "cams", "B C h w")
    check_floating(cams, "cams")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: expected a fraction in [0, 1], got {threshold}")
    b, c, h, w = cams.shape
    flat = cams.detach().float().reshape(b * c, h * w)
    peak = flat.amax(dim=1, keepdim=True)
    above = ((flat > threshold * peak) & (peak > 0)).reshape(b * c, h, w).cpu().numpy()
    out = np.zeros_like(above)
    # connected components are cheap at patch resolution (h, w ~ 20-40), and scipy's labelling is
    # exact; there is no batched torch equivalent worth its complexity here
    for i in np.flatnonzero(above.reshape(b * c, -1).any(axis=1)):
        labels, _ = ndimage.label(above[i], structure=_EIGHT_CONNECTED)
        for region in ndimage.find_objects(labels):
            if region is not None:
                out[i][region] = True
    return torch.from_numpy(out).reshape(b, c, h, w).to(cams.device)
