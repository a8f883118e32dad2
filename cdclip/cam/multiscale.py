"""Shared CAM plumbing: label checks and multi-scale / flip averaging.

Every CAM method computes ``(B, C, h, w)`` maps from one backbone forward; :func:`multiscale_cams`
runs the backbone at several scales (and flipped), brings each CAM back to the scale-1.0 grid and
averages. The scale-1.0 forward is kept (detached) for refinement: its attention and dense
features are what the MHSA / CDA affinities use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cdclip._checks import check_rank, check_tensor
from cdclip.backbones.output import CLIPOutput
from cdclip.minmax import minmax_normalize
from cdclip.sizes import ceil_scaled_size

__all__ = ["CAMResult", "check_labels", "minmax_per_map", "multiscale_cams", "scaled_size"]


class CAMResult(NamedTuple):
    """CAMs on the scale-1.0 patch grid and that scale's (detached) backbone output.

    Shape:
        - cams: (B, C, h, w)
    """

    cams: Tensor
    output: CLIPOutput


def check_labels(labels: Tensor, batch: int) -> Tensor:
    """Validate multi-hot image labels and return them as a bool tensor.

    Shape:
        - labels: (B, C) multi-hot
        - output: (B, C) bool
    """
    check_tensor(labels, "labels")
    check_rank(labels, "labels", "B C")
    if labels.shape[0] != batch:
        raise ValueError(f"labels: expected batch size {batch}, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
        raise ValueError("labels: expected multi-hot 0/1 values, got NaN or inf (a NaN would read as 'absent')")
    return labels > 0


# the earlier names, kept for callers
minmax_per_map = minmax_normalize
scaled_size = ceil_scaled_size


def multiscale_cams(
    cam_fn: Callable[[CLIPOutput], Tensor],
    backbone: Any,
    images: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    attn_blocks: int | Sequence[int] = 8,
    needs_grad: bool = False,
) -> CAMResult:
    """Average ``cam_fn(backbone(x))`` over scales and flips on the scale-1.0 grid.

    Args:
        cam_fn: backbone output → CAMs ``(B, C, h_s, w_s)`` in [0, 1].
        backbone: callable as ``backbone(images, attn_blocks=, grad_last_block=)`` with a
            ``patch_size`` attribute.
        images: normalised images whose sides are multiples of the patch size.
        scales: scales to average; the scale-1.0 forward always runs (refinement needs it).
        flip: add horizontally flipped inputs (CAMs flipped back).
        attn_blocks: attention blocks requested from the scale-1.0 forward.
        needs_grad: run the last block with autograd (GradCAM).

    Shape:
        - images: (B, 3, H, W)
        - output.cams: (B, C, H / p, W / p)
    """
    if not scales:
        raise ValueError("scales: expected at least one scale, got an empty sequence")
    if any(s <= 0 for s in scales):
        raise ValueError(f"scales: expected positive scales, got {tuple(scales)}")
    p = int(backbone.patch_size)
    _, _, height, width = images.shape
    if height % p or width % p:
        raise ValueError(f"images: sides must be multiples of the patch size {p}, got {height}x{width}")
    grid = (height // p, width // p)

    base = backbone(images, attn_blocks=attn_blocks, grad_last_block=needs_grad)
    total: Tensor | None = None
    count = 0
    for scale in scales:
        for flipped in (False, True) if flip else (False,):
            if scale == 1.0 and not flipped:
                out = base
            else:
                size = ceil_scaled_size(height, width, scale, p)
                x = images if size == (height, width) else F.interpolate(
                    images, size=size, mode="bilinear", align_corners=False
                )
                out = backbone(x.flip(-1) if flipped else x, attn_blocks=0, grad_last_block=needs_grad)
            cams = cam_fn(out).float()
            if flipped:
                cams = cams.flip(-1)
            if cams.shape[-2:] != grid:
                cams = F.interpolate(cams, size=grid, mode="bilinear", align_corners=False)
            total = cams if total is None else total + cams
            count += 1
            del out
    assert total is not None
    cams = total if count == 1 else minmax_normalize(total / count)
    return CAMResult(cams, base.detached())
