"""Background/foreground balanced cross-entropy: the segmentation loss ``L_seg`` (docs/training.md).

Pseudo labels of WSSS methods are dominated by background pixels. ToCo and WeCLIP therefore average
two cross-entropies, one over background pixels and one over foreground pixels::

    L = ½ · mean_{i: y_i = 0} CE_i + ½ · mean_{i: y_i ∉ {0, ignore}} CE_i

(pooled over the whole batch). Unlike a plain ``F.cross_entropy`` per part, an empty part (no
foreground in the batch, or only ignored pixels) contributes 0 instead of NaN, and the result
still back-propagates. Logits in float16/bfloat16 are computed in float32.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdclip._checks import check_choice, check_floating, check_integer_labels, check_rank, compute_dtype
from cdclip.distributed import mean_denominator
from cdclip.registry import register

__all__ = ["REDUCTIONS", "BalancedCrossEntropy", "balanced_cross_entropy", "check_logits_labels"]

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[str, ...] = get_args(Reduction)


def check_logits_labels(
    logits: Tensor, labels: Tensor, ignore_index: int, resize_logits: bool = False, what: str = "labels"
) -> Tensor:
    """Validate ``(B, K, H, W)`` logits against ``(B, H, W)`` labels; return logits, resized if asked.

    Raises:
        ValueError: rank, batch or spatial size mismatch (naming both sizes), or label ids out of
            ``0..K-1`` that are not ``ignore_index``.
        TypeError: non-floating logits or non-integer labels.

    Shape:
        - logits: (B, K, H', W')
        - labels: (B, H, W)
        - output: (B, K, H, W)
    """
    check_rank(logits, "logits", "B K H W")
    check_floating(logits, "logits")
    check_rank(labels, what, "B H W")
    check_integer_labels(labels, what)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{what}: expected batch size B = {logits.shape[0]} (from logits), got {labels.shape[0]}")
    if logits.shape[-2:] != labels.shape[-2:]:
        if not resize_logits:
            raise ValueError(
                f"logits: spatial size {tuple(logits.shape[-2:])} differs from {what} size "
                f"{tuple(labels.shape[-2:])}; upsample the logits or pass resize_logits=True"
            )
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    counted = labels != ignore_index
    k = logits.shape[1]
    bad = counted & ((labels < 0) | (labels >= k))
    if bool(bad.any()):
        values = torch.unique(labels[bad])[:8].tolist()
        raise ValueError(f"{what}: expected class ids in 0..{k - 1} or {ignore_index} (K = {k} logits), got {values}")
    return logits


def balanced_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    ignore_index: int = 255,
    reduction: Reduction = "mean",
    background_index: int = 0,
    resize_logits: bool = False,
) -> Tensor:
    """Mean of the background-pixel and foreground-pixel cross-entropies (WeCLIP/ToCo ``L_seg``).

    Args:
        logits: unnormalised class scores, background first.
        labels: class ids ``0..K-1``; ``ignore_index`` pixels are left out.
        ignore_index: label value to ignore.
        reduction: ``"mean"`` — the balanced mean ``½·mean_bg + ½·mean_fg`` (an empty part
            contributes 0); ``"sum"`` — plain sum of the per-pixel CE over counted pixels;
            ``"none"`` — the per-pixel CE map with 0 on ignored pixels.
        background_index: the background class id.
        resize_logits: bilinearly resize logits to the label size instead of raising.

    Shape:
        - logits: (B, K, H, W)
        - labels: (B, H, W)
        - output: () for "mean"/"sum", (B, H, W) for "none"
    """
    check_choice(reduction, "reduction", REDUCTIONS)
    logits = check_logits_labels(logits, labels, ignore_index, resize_logits)
    labels = labels.long()
    dtype = compute_dtype(logits)
    counted = labels != ignore_index
    # ignored pixels get target 0 and weight 0, so one CE call serves every reduction
    per_pixel = F.cross_entropy(logits.to(dtype), torch.where(counted, labels, 0), reduction="none")
    per_pixel = per_pixel * counted.to(dtype)
    if reduction == "none":
        return per_pixel
    if reduction == "sum":
        return per_pixel.sum()
    background = counted & (labels == background_index)
    foreground = counted & (labels != background_index)
    # clamp(min=1): an empty part sums to exactly 0 and contributes 0, never 0/0
    bg_mean = (per_pixel * background.to(dtype)).sum() / mean_denominator(background.sum()).to(dtype)
    fg_mean = (per_pixel * foreground.to(dtype)).sum() / mean_denominator(foreground.sum()).to(dtype)
    return 0.5 * (bg_mean + fg_mean)


@register("balanced_ce", kind="loss")
class BalancedCrossEntropy(nn.Module):
    """Background/foreground balanced cross-entropy (``L_seg`` of WeCLIP/ToCo).

    Args:
        ignore_index: label value to ignore (255).
        reduction: ``"mean"`` (balanced), ``"sum"`` or ``"none"``.
        background_index: background class id (0).
        resize_logits: resize logits to the label size instead of raising on a size mismatch.

    Shape:
        - logits: (B, K, H, W)
        - labels: (B, H, W)
        - output: () or (B, H, W) for reduction="none"

    Examples:
        >>> import torch
        >>> loss = BalancedCrossEntropy()(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)
    """

    def __init__(
        self, ignore_index: int = 255, reduction: Reduction = "mean", background_index: int = 0, resize_logits: bool = False
    ) -> None:
        super().__init__()
        check_choice(reduction, "reduction", REDUCTIONS)
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.background_index = int(background_index)
        self.resize_logits = bool(resize_logits)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return balanced_cross_entropy(
            logits,
            labels,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            background_index=self.background_index,
            resize_logits=self.resize_logits,
        )

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, resize_logits={self.resize_logits}"
