"""The one CAM head: backbone output → CAMs → refinement → background → PAR → pseudo labels.

Training (:class:`~cdclip.pipeline.model.CDCLIP`) and training-free pseudo labels
(:class:`~cdclip.pipeline.pseudo_labels.PseudoLabeler`, ``cdclip cams``) both call
:class:`CAMHead`, so the two paths cannot drift apart:

1. initial CAMs from the CAM method taken from the registry (``gradcam`` or ``patch_text``; its
   ``needs_grad`` says whether the backbone's last block must be differentiable), unless the
   caller passes CAMs it made itself (multi-scale);
2. refinement (``none``, the MHSA baseline ``attn``, or CDA ``mean``/``replace``/``product``), with
   WeCLIP's decoder-affinity attention when a decoder affinity is given;
3. pseudo labels: background, upsampling, PAR, argmax over each image's present classes
   (:func:`~cdclip.cam.labels.cams_to_labels`).

Every image of a batch carries its own classes; the work is done in per-image class slots
(:mod:`cdclip.cam.slots`), so a batch costs what its labels need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cdclip._checks import check_choice
from cdclip.backbones.output import CLIPOutput
from cdclip.cam.labels import BACKGROUND_AT, BackgroundAt, cams_to_labels
from cdclip.cam.refine import REFINE_METHODS, CAMRefiner, decoder_refined_attention

__all__ = ["CAMHead", "PseudoLabelOutput"]


@dataclass
class PseudoLabelOutput:
    """What the CAM head returns for a batch.

    Shape:
        - cams: (B, C, h, w)     initial CAMs on the patch grid (absent classes 0)
        - refined: (B, C, h, w)  refined CAMs
        - labels: (B, H, W)      pseudo labels, int64 (0 = bg, 1..C)
    """

    cams: Tensor
    refined: Tensor
    labels: Tensor


class CAMHead(nn.Module):
    """CAM method + refinement + label rule, shared by training and ``cdclip cams``.

    Args:
        cam: a registered CAM method name (``"gradcam"``, ``"patch_text"``) or a CAM module with
            ``cams_from_output(output, text, labels, logit_scale)`` and ``needs_grad``.
        cam_kwargs: constructor arguments of a named CAM method (e.g. ``{"target": "ln1_out"}``).
        refine: ``"none"``, ``"attn"``, ``"mean"`` (CDA, default), ``"replace"``, ``"product"``.
        attn_layers: last blocks averaged into the attention affinity (8).
        cd_logit_scale: ``1/τ_cd`` of the CDA class distributions (100).
        background_at: ``"image"`` (upsample, then background; WeCLIP) or ``"patch"``.
        bg_alpha: exponent of the background score ``(1 − max)^α``.
        bg_threshold: a constant background score instead (CLIP-ES's evaluation); None: off.
        par: PAR module; None skips PAR.
        par_scale: PAR resolution relative to the label size (1.0).
        seg_affinity_blocks: last blocks WeCLIP's decoder-affinity refinement chooses from (6 VOC,
            10 COCO).
        **cda_kwargs: :class:`~cdclip.affinity.cda.CDAModule` options (``box_threshold``,
            ``box_rule``, ``gamma``, ...).

    Shape:
        - text: (K, D)
        - labels: (B, C)
        - seg_affinity: (B, N, N)
        - output: :class:`PseudoLabelOutput` with labels (B, H, W)
    """

    def __init__(
        self,
        cam: str | nn.Module = "gradcam",
        cam_kwargs: dict[str, Any] | None = None,
        refine: str = "mean",
        attn_layers: int = 8,
        cd_logit_scale: float = 100.0,
        background_at: BackgroundAt = "image",
        bg_alpha: float = 1.0,
        bg_threshold: float | None = None,
        par: nn.Module | None = None,
        par_scale: float = 1.0,
        seg_affinity_blocks: int = 6,
        **cda_kwargs: Any,
    ) -> None:
        super().__init__()
        check_choice(refine, "refine", REFINE_METHODS)
        check_choice(background_at, "background_at", BACKGROUND_AT)
        if isinstance(cam, str):
            from cdclip.registry import create

            cam = create(cam, **(cam_kwargs or {}))
        self.cam = cam
        self.refiner = CAMRefiner(refine, attn_layers=attn_layers, logit_scale=cd_logit_scale, **cda_kwargs)
        self.background_at, self.bg_alpha, self.bg_threshold = background_at, float(bg_alpha), bg_threshold
        self.par, self.par_scale = par, float(par_scale)
        self.seg_affinity_blocks = int(seg_affinity_blocks)

    @property
    def needs_grad(self) -> bool:
        """Whether the CAM method differentiates through the backbone's last block."""
        return bool(getattr(self.cam, "needs_grad", False))

    def attn_blocks(self, with_seg_affinity: bool = False) -> int:
        """How many last blocks' attention the backbone must return (0: none needed)."""
        if self.refiner.method in ("none", "replace"):
            return 0
        return max(self.refiner.attn_layers, self.seg_affinity_blocks if with_seg_affinity else 0)

    def forward(
        self,
        output: CLIPOutput,
        text: Tensor,
        labels: Tensor,
        size: tuple[int, int],
        image: Tensor | None = None,
        cams: Tensor | None = None,
        seg_affinity: Tensor | None = None,
        logit_scale: float = 100.0,
    ) -> PseudoLabelOutput:
        """CAMs, refined CAMs and pseudo labels of one backbone output.

        Args:
            output: the backbone output (:class:`~cdclip.backbones.openclip.CLIPOutput`).
            text: the text classifier (foreground rows, then background words).
            labels: image-level multi-hot labels.
            size: label size ``(H, W)``.
            image: the image PAR reads (needed with PAR).
            cams: initial CAMs made by the caller (e.g. multi-scale); computed from ``output`` if None.
            seg_affinity: the decoder's ``sigmoid(FᵀF)``; given, WeCLIP's decoder-affinity refinement runs.
            logit_scale: CLIP's temperature for the CAM scores (the backbone's).
        """
        if cams is None:
            cams = self.cam.cams_from_output(output, text, labels, logit_scale)
        with torch.no_grad():
            cams = cams.detach()
            refined = self.refiner(cams, labels, output, text, self._attention(output, seg_affinity))
            pseudo = cams_to_labels(
                refined, labels, size, image=image, par=self.par, bg_alpha=self.bg_alpha,
                par_scale=self.par_scale, background_at=self.background_at, bg_threshold=self.bg_threshold,
            )
        return PseudoLabelOutput(cams=cams, refined=refined, labels=pseudo)

    def _attention(self, output: CLIPOutput, seg_affinity: Tensor | None) -> Tensor | None:
        if seg_affinity is None or self.refiner.method in ("none", "replace"):
            return None
        return decoder_refined_attention(output.attn, seg_affinity.detach(), self.seg_affinity_blocks)

    def extra_repr(self) -> str:
        return (
            f"background_at={self.background_at!r}, bg_alpha={self.bg_alpha}, bg_threshold={self.bg_threshold}, "
            f"par_scale={self.par_scale}, seg_affinity_blocks={self.seg_affinity_blocks}"
        )
