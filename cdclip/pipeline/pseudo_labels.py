"""Training-free pseudo labels: CLIP → initial CAMs → MHSA/CDA refinement → PAR → class ids.

DESIGN §3.4: stack ``[bg; M'_c for the present classes]`` with ``bg = (1 − max_c M'_c)^α``,
upsample to the image, refine with PAR, take the argmax and map channel ``j`` to class id
(0 = background, ``1..C`` = foreground in label order).

:class:`PseudoLabeler` chains every stage for one image (or a batch of equally sized images) and
accepts any backbone object with the same duck-typed interface as
:class:`~cdclip.backbones.openclip.OpenCLIPBackbone`: ``patch_size``, ``logit_scale``,
``preprocess(uint8 images)``, ``encode_text(list[str])`` and
``__call__(images, attn_blocks=, grad_last_block=)`` returning an object with ``dense``, ``attn``,
``global_embedding``, ``grid`` (and ``last_block_input`` for GradCAM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdclip._checks import check_floating, check_rank
from cdclip.backbones.text import TextClassifier, build_text_classifier
from cdclip.cam.multiscale import check_labels, scaled_size
from cdclip.cam.refine import REFINE_METHODS, CAMRefiner
from cdclip.data.prompts import DEFAULT_TEMPLATES

__all__ = [
    "PseudoLabelOutput",
    "PseudoLabeler",
    "background_score",
    "cams_to_labels",
    "resize_for_clip",
]


def background_score(cams: Tensor, alpha: float = 1.0) -> Tensor:
    """Background map ``bg = (1 − max_c M_c)^α`` (1 where no class is active).

    Shape:
        - cams: (B, C, h, w) in [0, 1]
        - output: (B, 1, h, w)
    """
    check_rank(cams, "cams", "B C h w")
    if alpha <= 0:
        raise ValueError(f"alpha: expected a positive exponent, got {alpha}")
    if cams.shape[1] == 0:
        return cams.new_ones(cams.shape[0], 1, *cams.shape[2:])
    peak = cams.float().amax(dim=1, keepdim=True).clamp(0.0, 1.0)
    return (1.0 - peak) ** alpha


def cams_to_labels(
    cams: Tensor,
    labels: Tensor,
    size: tuple[int, int],
    image: Tensor | None = None,
    par: nn.Module | None = None,
    bg_alpha: float = 1.0,
    par_scale: float = 1.0,
) -> Tensor:
    """Pseudo labels from (refined) CAMs: ``[bg; present CAMs]`` → upsample → PAR → argmax → ids.

    Args:
        cams: CAMs in [0, 1] on the patch grid; absent classes are ignored whatever their values.
        labels: image-level multi-hot labels.
        size: output size ``(H, W)``.
        image: the image for PAR (normalised or not, any resolution); needed when ``par`` is set.
        par: a :class:`~cdclip.refine.par.PAR` (or any ``(image, masks) -> masks`` module); None skips.
        bg_alpha: exponent α of the background score.
        par_scale: resolution of the PAR step relative to ``size`` (ToCo and WeCLIP refine at 0.5,
            which also makes PAR 4x cheaper); the result is upsampled to ``size`` bilinearly.

    Shape:
        - cams: (B, C, h, w)
        - labels: (B, C)
        - image: (B, 3, H', W')
        - output: (B, H, W) int64, 0 = background, c + 1 = class c
    """
    check_rank(cams, "cams", "B C h w")
    check_floating(cams, "cams")
    b, c = cams.shape[:2]
    present = check_labels(labels, b).to(cams.device)
    if present.shape[1] != c:
        raise ValueError(f"labels: expected (B, C={c}) for cams {tuple(cams.shape)}, got {tuple(labels.shape)}")
    idx = torch.nonzero(present.any(dim=0)).flatten()  # classes present somewhere in the batch
    fg = cams[:, idx].float() * present[:, idx, None, None]
    stack = torch.cat([background_score(fg, bg_alpha), fg], dim=1)  # (B, 1 + P, h, w)
    stack = F.interpolate(stack, size=tuple(size), mode="bilinear", align_corners=False)
    if par is not None and idx.numel() > 0:
        if image is None:
            raise ValueError("image: PAR needs the image; pass image= or par=None")
        if not 0.0 < par_scale <= 1.0:
            raise ValueError(f"par_scale: expected a fraction in (0, 1], got {par_scale}")
        if par_scale < 1.0:
            small = (max(1, round(size[0] * par_scale)), max(1, round(size[1] * par_scale)))
            stack = F.interpolate(stack, size=small, mode="bilinear", align_corners=False)
        stack = par(image.to(stack.device).float(), stack)
        if par_scale < 1.0:
            stack = F.interpolate(stack, size=tuple(size), mode="bilinear", align_corners=False)
    # a class absent from this image can never win, even if PAR moved mass into its channel
    absent = torch.cat([present.new_zeros(b, 1), ~present[:, idx]], dim=1)
    stack = stack.masked_fill(absent[:, :, None, None], float("-inf"))
    channel = stack.argmax(dim=1)
    ids = torch.cat([idx.new_zeros(1), idx + 1]).to(channel.device)
    return ids[channel]


def resize_for_clip(images: Tensor, long_side: int | None, multiple: int) -> Tensor:
    """Resize so the long side is ``long_side`` (None: keep), each side rounded up to ``multiple``.

    Shape:
        - images: (B, 3, H, W) float
        - output: (B, 3, H', W') with H', W' multiples of ``multiple``
    """
    _, _, h, w = images.shape
    scale = 1.0 if not long_side else long_side / max(h, w)
    size = scaled_size(h, w, scale, multiple)
    if size == (h, w):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)


@dataclass
class PseudoLabelOutput:
    """What :class:`PseudoLabeler` returns for a batch.

    Shape:
        - cams: (B, C, h, w)     initial CAMs on the patch grid (absent classes 0)
        - refined: (B, C, h, w)  refined CAMs
        - labels: (B, H, W)      pseudo labels at image size, int64 (0 = bg, 1..C)
    """

    cams: Tensor
    refined: Tensor
    labels: Tensor


class PseudoLabeler(nn.Module):
    """The whole training-free pseudo-label pipeline behind ``cdclip cams``.

    Args:
        backbone: an :class:`~cdclip.backbones.openclip.OpenCLIPBackbone` or any object with the
            same interface (see the module docstring).
        class_names: foreground class names in label order.
        background_words: background words appended to the text classifier (CLIP-ES lists in
            :mod:`cdclip.data.prompts`).
        templates: prompt templates.
        cam: ``"gradcam"``, ``"patch_text"`` or a CAM module with ``forward(backbone, images,
            labels, text, attn_blocks)``.
        refine: ``"none"``, ``"attn"``, ``"mean"`` (CDA, default), ``"replace"``, ``"product"``.
        par: PAR module for the final labels; ``None`` skips PAR.
        long_side: the image is resized so that its long side is this (None: native size), sides
            rounded up to the patch size.
        bg_alpha: exponent of the background score.
        attn_layers: attention blocks averaged for the MHSA affinity (8).
        cd_logit_scale: ``1/τ_cd`` of the CDA class distributions (100).
        prompt_style: how class names become phrases (``"clip_es"``, ``"plain"``, ``"raw"``).
        **cda_kwargs: :class:`~cdclip.affinity.cda.CDAModule` options (``box_threshold``, ``gamma``...).

    Shape:
        - images: (B, 3, H, W) uint8 (or 0–255 float)
        - labels: (B, C)
        - output: :class:`PseudoLabelOutput`
    """

    def __init__(
        self,
        backbone: Any,
        class_names: Sequence[str],
        background_words: Sequence[str] = (),
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        cam: str | nn.Module = "gradcam",
        refine: str = "mean",
        par: nn.Module | None = None,
        long_side: int | None = 512,
        bg_alpha: float = 1.0,
        par_scale: float = 1.0,
        attn_layers: int = 8,
        cd_logit_scale: float = 100.0,
        prompt_style: str = "clip_es",
        **cda_kwargs: Any,
    ) -> None:
        super().__init__()
        if refine not in REFINE_METHODS:
            raise ValueError(f"refine: expected one of {REFINE_METHODS}, got {refine!r}")
        if isinstance(cam, str):
            from cdclip.registry import create

            cam = create(cam)
        self.backbone = backbone
        self.cam = cam
        self.refiner = CAMRefiner(refine, attn_layers=attn_layers, logit_scale=cd_logit_scale, **cda_kwargs)
        self.par = par
        self.long_side = long_side
        self.bg_alpha = float(bg_alpha)
        self.par_scale = float(par_scale)
        self.attn_layers = int(attn_layers)
        self.classifier: TextClassifier = build_text_classifier(
            backbone, class_names, background_words, templates, style=prompt_style
        )

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def forward(self, images: Tensor, labels: Tensor) -> PseudoLabelOutput:
        check_rank(images, "images", "B 3 H W")
        b, _, h, w = images.shape
        present = check_labels(labels, b)
        if present.shape[1] != self.num_classes:
            raise ValueError(
                f"labels: expected (B, C={self.num_classes}) for classes {self.classifier.class_names[:3]}..., "
                f"got {tuple(labels.shape)}"
            )
        device = getattr(self.backbone, "device", torch.device("cpu"))
        pixels = images.to(device).float()
        x = self.backbone.preprocess(resize_for_clip(pixels, self.long_side, int(self.backbone.patch_size)))
        text = self.classifier.embeddings.to(device)
        present = present.to(device)
        result = self.cam(self.backbone, x, present, text, attn_blocks=self.attn_layers)
        with torch.no_grad():
            cams = result.cams.detach()
            refined = self.refiner(cams, present, result.output, text)
            pseudo = cams_to_labels(
                refined, present, (h, w), image=pixels, par=self.par, bg_alpha=self.bg_alpha, par_scale=self.par_scale
            )
        return PseudoLabelOutput(cams=cams, refined=refined, labels=pseudo)
