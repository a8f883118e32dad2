"""Patch–text CAMs: cosine similarity of CLIP's dense features with the class embeddings.

``M_c(i) = ReLU(cos(x_i, t_c))``, min–max normalised per map (docs/baselines.md, registry option
``patch_text``). Needs no gradient, so it is the cheapest CAM and fully differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from cdclip._checks import check_finite, check_floating, check_nonempty, check_rank
from cdclip.backbones.output import CLIPOutput
from cdclip.cam.multiscale import CAMResult, check_labels, multiscale_cams
from cdclip.minmax import minmax_normalize
from cdclip.registry import register

__all__ = ["PatchTextCAM", "patch_text_cam"]


def patch_text_cam(features: Tensor, text: Tensor, labels: Tensor, grid: tuple[int, int]) -> Tensor:
    """CAMs from the cosine similarity of dense patch features and class embeddings.

    Args:
        features: dense patch features (last block after ``ln_post``/``proj``), any scale.
        text: text classifier; the first C rows (C = ``labels.shape[1]``) are used.
        labels: image-level multi-hot labels; absent classes give all-zero maps.
        grid: the patch grid ``(h, w)`` with ``h * w = N``.

    Raises:
        ValueError: bad or empty shapes (any dimension 0), NaN/inf features, text or labels.
        TypeError: non-floating features or text.

    Shape:
        - features: (B, N, D)
        - text: (K, D) with K >= C
        - labels: (B, C)
        - output: (B, C, h, w) in [0, 1]
    """
    check_rank(features, "features", "B N D")
    check_floating(features, "features")
    check_rank(text, "text", "K D")
    check_floating(text, "text")
    check_nonempty(features, "features", "B N D")
    check_nonempty(text, "text", "K D")
    check_finite(features, "features")
    check_finite(text, "text")
    b, n, d = features.shape
    present = check_labels(labels, b)
    c = present.shape[1]
    if c == 0:
        raise ValueError(f"labels: expected a non-empty tensor of shape (B, C), got C=0 in {tuple(labels.shape)}")
    if len(grid) != 2:
        raise ValueError(f"grid: expected a pair (h, w), got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    if h * w != n:
        raise ValueError(f"grid: expected h * w = N = {n}, got {grid}")
    if text.shape[0] < c or text.shape[1] != d:
        raise ValueError(f"text: expected (K >= C={c}, D={d}), got {tuple(text.shape)}")
    sim = F.normalize(features.float(), dim=-1) @ F.normalize(text[:c].float(), dim=-1).T  # (B, N, C)
    cams = minmax_normalize(F.relu(sim).transpose(1, 2).reshape(b, c, h, w))
    return cams * present.to(cams)[:, :, None, None]


@register("patch_text", kind="cam")
class PatchTextCAM(nn.Module):
    """Patch–text CAM method (Module twin of :func:`patch_text_cam`).

    Args:
        scales, flip: the multi-scale and flip averaging, as for :class:`~cdclip.cam.gradcam.CLIPGradCAM`.

    Shape:
        - images: (B, 3, H, W) normalised (sides: multiples of the patch size)
        - labels: (B, C), text: (K, D)
        - output.cams: (B, C, H / p, W / p)

    Examples:
        >>> import torch
        >>> from cdclip.testing import tiny_clip_backbone
        >>> backbone = tiny_clip_backbone()
        >>> text = backbone.encode_text(["a cat.", "a dog."])
        >>> result = PatchTextCAM()(backbone, torch.randn(1, 3, 64, 48), torch.tensor([[1.0, 1.0]]), text)
        >>> result.cams.shape, bool(result.cams.max() <= 1.0)
        (torch.Size([1, 2, 4, 3]), True)
    """

    needs_grad = False

    def __init__(self, scales: Sequence[float] = (1.0,), flip: bool = False) -> None:
        super().__init__()
        self.scales, self.flip = tuple(float(s) for s in scales), bool(flip)

    def cams_from_output(self, output: CLIPOutput, text: Tensor, labels: Tensor, logit_scale: float | None = None) -> Tensor:
        """Patch–text CAMs of one forward's dense features (``logit_scale`` is not used).

        Shape:
            - output: (B, C, h, w) for labels (B, C)
        """
        return patch_text_cam(output.dense, text, labels, output.grid)

    def forward(
        self, backbone: Any, images: Tensor, labels: Tensor, text: Tensor, attn_blocks: int | Sequence[int] = 8
    ) -> CAMResult:
        check_rank(images, "images", "B 3 H W")

        def fn(out: CLIPOutput) -> Tensor:
            return patch_text_cam(out.dense, text, labels, out.grid)

        return multiscale_cams(fn, backbone, images, self.scales, self.flip, attn_blocks, needs_grad=False)

    def extra_repr(self) -> str:
        return f"scales={self.scales}, flip={self.flip}"
