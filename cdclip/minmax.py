"""Per-map min–max normalisation, the one used by every CAM and refinement step.

``(x − min) / (eps + (max − min))`` with ``eps = 1e-7``: pytorch-grad-cam's ``scale_cam_image``,
which CLIP-ES and WeCLIP apply to the initial and the refined CAMs. The maximum therefore lands
just below 1 (``1 − eps / range``), which matters where a later step quantises the map, as
CLIP-ES's box threshold does (``uint8(255·m)`` is 254 at the peak, not 255). A constant map becomes
0, never NaN.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["minmax_normalize"]


def minmax_normalize(x: Tensor, eps: float = 1e-7) -> Tensor:
    """Min–max normalise each map over its trailing dimensions to [0, 1).

    Shape:
        - x: (B, C, *)
        - output: (B, C, *)
    """
    flat = x.flatten(2)
    shifted = flat - flat.amin(dim=-1, keepdim=True)
    return (shifted / (shifted.amax(dim=-1, keepdim=True) + eps)).reshape(x.shape)
