"""Network input sizes: an image size scaled and rounded to a multiple of the ViT patch.

Two roundings are in use, each named for what it does:

* :func:`ceil_scaled_size` — ``(H, W) · scale`` rounded **up** to the multiple (CLIP-ES's rule, used
  by the CAM paths: the multi-scale CAMs and the training-free CLIP input);
* :func:`nearest_scaled_size` — long side ``long_side · scale``, sides rounded to the **nearest**
  multiple (WeCLIP's evaluation protocol, used by the multi-scale evaluator).

Both never return a side below one multiple.
"""

from __future__ import annotations

import math

__all__ = ["ceil_scaled_size", "nearest_scaled_size"]


def ceil_scaled_size(height: int, width: int, scale: float, multiple: int) -> tuple[int, int]:
    """``(H, W)`` scaled and rounded up to a multiple of the patch size (CLIP-ES rounding); at least ``multiple``."""
    return (
        max(multiple, math.ceil(height * scale / multiple) * multiple),
        max(multiple, math.ceil(width * scale / multiple) * multiple),
    )


def nearest_scaled_size(
    size: tuple[int, int], scale: float = 1.0, long_side: int | None = 512, multiple: int = 16
) -> tuple[int, int]:
    """Network input size for one scale: long side ``long_side · scale``, sides rounded to ``multiple``.

    ``size`` is ``(H, W)``; ``long_side=None`` scales the image's own size. Both returned sides are
    multiples of ``multiple``, at least one multiple.
    """
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ValueError(f"size: expected positive (H, W), got {size!r}")
    if not scale > 0:
        raise ValueError(f"scale: expected a positive number, got {scale!r}")
    if not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple: expected a positive int, got {multiple!r}")
    ratio = scale * (long_side / max(height, width) if long_side is not None else 1.0)
    return tuple(max(multiple, round(side * ratio / multiple) * multiple) for side in (height, width))  # type: ignore[return-value]
