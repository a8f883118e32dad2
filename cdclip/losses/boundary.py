"""Boundary-enhanced loss ``L_be`` (SBE, docs/method.md, SBE step 8).

Cross-entropy restricted to the super-class boundary band found by
:class:`~cdclip.prototypes.superclass.SuperClassPrototypes`, against the band-corrected pseudo
labels, balanced between background and foreground pixels exactly like ``L_seg``
(:func:`~cdclip.losses.segmentation.balanced_cross_entropy`). It adds weight where CDA tends to
over-activate — on the edges between neighbouring target classes — and corrects the labels there.

An empty band (no super-class boundary in the batch) gives a loss of exactly zero that still
back-propagates (zero gradients, never NaN). Logits must match the label size; pass
``resize_logits=True`` to upsample decoder logits (e.g. at 1/16) bilinearly instead.

Non-finite inputs raise. NaN or infinite logits — anywhere, also outside the band — and finite
logits so large that the cross-entropy overflows raise ``ValueError: logits: ...`` instead of
returning NaN/inf (checked on the logits and the result together: one host sync). Empty
tensors (any dimension 0) raise ``ValueError`` too. Computed in float32 or higher under any autocast.

Usage::

    sbe = SuperClassPrototypes("voc")
    out = sbe(cams, image_labels, dino_features, pseudo_labels)
    loss_be = BoundaryEnhancedLoss()(logits, out)          # or (logits, out.corrected_labels, out.band)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cdclip._checks import (
    check_choice,
    check_finite,
    check_nonempty,
    check_rank,
    compute_dtype,
    full_precision,
)
from cdclip.distributed import mean_denominator
from cdclip.losses.segmentation import REDUCTIONS, Reduction, balanced_cross_entropy, check_logits_labels
from cdclip.prototypes.superclass import SBEOutput
from cdclip.registry import register

__all__ = ["BoundaryEnhancedLoss", "boundary_enhanced_loss"]


def _check_loss_finite(loss: Tensor, logits: Tensor) -> Tensor:
    """Raise ``ValueError`` unless ``loss`` is finite (NaN/inf logits, or logits so large that CE overflows)."""
    # one host sync for both: -inf logits of a non-target class leave the loss finite
    if not bool(torch.isfinite(loss).all() & torch.isfinite(logits).all()):
        check_finite(logits, "logits")  # names the NaN/inf input when there is one
        raise ValueError("logits: the cross-entropy overflowed; the logits are too large for the compute dtype")
    return loss


@full_precision
def boundary_enhanced_loss(
    logits: Tensor,
    labels: Tensor,
    band: Tensor | None,
    ignore_index: int = 255,
    reduction: Reduction = "mean",
    balanced: bool = True,
    resize_logits: bool = False,
) -> Tensor:
    """Cross-entropy on the boundary band against the corrected labels.

    Args:
        logits: segmentation logits, background first.
        labels: corrected pseudo labels (class ids ``0..K-1``, ``ignore_index`` ignored).
        band: boolean boundary band; ``None`` when ``labels`` are already ``ignore_index``
            outside the band.
        ignore_index: label value to ignore (255).
        reduction: ``"mean"`` — balanced mean over band pixels (``½·mean_bg + ½·mean_fg``; plain
            mean with ``balanced=False``); ``"sum"`` — sum of the per-pixel CE over band pixels;
            ``"none"`` — per-pixel CE map, 0 outside the band and on ignored pixels.
        balanced: background/foreground balancing as in ``L_seg`` (WeCLIP/ToCo).
        resize_logits: bilinearly resize logits to the label size instead of raising.

    Raises:
        ValueError: the band, label and logit sizes differ (both sizes named), bad reduction,
            label ids outside ``0..K-1``, an empty dimension, or NaN/inf logits (or logits so
            large that the loss would be inf).

    Shape:
        - logits: (B, K, H, W)
        - labels: (B, H, W)
        - band: (B, H, W)
        - output: () for "mean"/"sum", (B, H, W) for "none"
    """
    check_choice(reduction, "reduction", REDUCTIONS)
    check_rank(labels, "labels", "B H W")
    check_nonempty(labels, "labels", "B H W")
    check_rank(logits, "logits", "B K H W")
    check_nonempty(logits, "logits", "B K H W")
    if band is not None:
        check_rank(band, "band", "B H W")
        if band.dtype != torch.bool:
            raise TypeError(f"band: expected a bool mask, got dtype {band.dtype}")
        if band.shape != labels.shape:
            raise ValueError(f"band: shape {tuple(band.shape)} differs from labels shape {tuple(labels.shape)}")
        if not resize_logits and logits.dim() == 4 and logits.shape[-2:] != band.shape[-2:]:
            raise ValueError(
                f"band: spatial size {tuple(band.shape[-2:])} differs from logits size {tuple(logits.shape[-2:])}; "
                "upsample the logits to label resolution or pass resize_logits=True"
            )
        labels = torch.where(band, labels, torch.full_like(labels, ignore_index))
    if balanced or reduction != "mean":
        loss = balanced_cross_entropy(
            logits, labels, ignore_index=ignore_index, reduction=reduction, resize_logits=resize_logits
        )
        return _check_loss_finite(loss, logits)
    logits = check_logits_labels(logits, labels, ignore_index, resize_logits)
    per_pixel = balanced_cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    counted = labels != ignore_index
    return _check_loss_finite(per_pixel.sum() / mean_denominator(counted.sum()).to(compute_dtype(logits)), logits)


@register("boundary_enhanced_loss", kind="loss")
class BoundaryEnhancedLoss(nn.Module):
    """SBE boundary-enhanced loss: balanced cross-entropy on the super-class boundary band.

    Args:
        ignore_index: label value to ignore (255).
        reduction: ``"mean"`` (balanced), ``"sum"`` or ``"none"``.
        balanced: background/foreground balancing like ``L_seg`` (True).
        resize_logits: upsample logits to the label size instead of raising on a mismatch.

    ``forward(logits, labels, band)`` or ``forward(logits, sbe_output)`` with the
    :class:`~cdclip.prototypes.superclass.SBEOutput` of ``SuperClassPrototypes``.

    Shape:
        - logits: (B, K, H, W)
        - labels: (B, H, W)
        - band: (B, H, W)
        - output: () or (B, H, W) for reduction="none"

    Examples:
        >>> import torch
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> band = torch.zeros(2, 8, 8, dtype=torch.bool)
        >>> band[:, 3:5] = True
        >>> loss = BoundaryEnhancedLoss()(logits, labels, band)
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)
    """

    def __init__(
        self, ignore_index: int = 255, reduction: Reduction = "mean", balanced: bool = True, resize_logits: bool = False
    ) -> None:
        super().__init__()
        check_choice(reduction, "reduction", REDUCTIONS)
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.balanced = bool(balanced)
        self.resize_logits = bool(resize_logits)

    def forward(self, logits: Tensor, labels: Tensor | SBEOutput, band: Tensor | None = None) -> Tensor:
        if isinstance(labels, SBEOutput):
            if band is not None:
                raise ValueError("band: pass either an SBEOutput or (labels, band), not both")
            labels, band = labels.corrected_labels, labels.band
        return boundary_enhanced_loss(
            logits,
            labels,
            band,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            balanced=self.balanced,
            resize_logits=self.resize_logits,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, balanced={self.balanced}, "
            f"resize_logits={self.resize_logits}"
        )
