"""Training-free pseudo labels: CLIP → initial CAMs → MHSA/CDA refinement → PAR → class ids.

:class:`PseudoLabeler` resizes and normalises the images for CLIP, runs the backbone and hands its
output to the one :class:`~cdclip.cam.head.CAMHead` that training uses as well (CAMs, refinement,
background, PAR, argmax). It accepts any backbone object with the same duck-typed interface as
:class:`~cdclip.backbones.openclip.OpenCLIPBackbone`: ``patch_size``, ``logit_scale``,
``preprocess(uint8 images)``, ``encode_text(list[str])`` and
``__call__(images, attn_blocks=, grad_last_block=)`` returning a
:class:`~cdclip.backbones.openclip.CLIPOutput`.

Input resize (``resize=``): ``"pil_bicubic"`` resizes the uint8 image with PIL's bicubic filter to
``(⌈H·s/16⌉·16, ⌈W·s/16⌉·16)`` as CLIP-ES does (the aspect ratio is kept up to the rounding);
``"bilinear"`` resizes the float tensor (antialiased when shrinking).

Working-resolution cap (``max_side=``, ``model.cam_max_side``, default 1024): an image whose long
side exceeds it is first shrunk (antialiased bilinear, aspect kept) so that its long side is
``max_side``; CLIP, the CAMs, the refinement, the background and PAR all run at that working size,
and only the final label map is brought back to the image's size by nearest-neighbour
upsampling. The CLIP input long side is capped too (``long_side <= max_side``; a native-size
preset gets at most ``max_side`` + 15 px). Memory is thus bounded by the cap, not by the image:
what still grows with the input is its decoded pixels and the full-size label map (3 + 8 bytes a
pixel). Images within the cap (every VOC and COCO image: <= 640 px) are not touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdclip._checks import check_choice, check_rank
from cdclip.backbones.text import TextClassifier, build_text_classifier
from cdclip.cam.head import CAMHead, PseudoLabelOutput
from cdclip.cam.labels import background_score, cams_to_labels
from cdclip.cam.multiscale import check_labels
from cdclip.choices import RESIZE_MODES, ResizeMode
from cdclip.data.prompts import DEFAULT_TEMPLATES
from cdclip.sizes import ceil_scaled_size

__all__ = [
    "DEFAULT_MAX_SIDE",
    "RESIZE_MODES",
    "PseudoLabelOutput",
    "PseudoLabeler",
    "background_score",
    "build_cam_head",
    "cams_to_labels",
    "capped_size",
    "resize_for_clip",
    "shrink_to",
    "upsample_labels",
]

# working-resolution cap of the training-free path (long side, pixels); see the module docstring
DEFAULT_MAX_SIDE = 1024


def capped_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """``(H, W)`` shrunk so the long side is ``max_side`` (aspect kept, rounded), or as is within it."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink_to(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bilinear downscaling to ``size``, in the input's dtype.

    uint8 on the CPU is resized as uint8 (no float copy of the full-size image); elsewhere the
    values go through float32 and are rounded back.

    Shape:
        - images: (B, 3, H, W) uint8 or floating, 0–255
        - output: (B, 3, H', W'), the input's dtype
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if images.is_floating_point() or (images.dtype == torch.uint8 and images.device.type == "cpu"):
        return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    small = F.interpolate(images.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return small.round().clamp(0, 255).to(images.dtype)


def upsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour upsampling of a label map (pixel centres, as ``"nearest-exact"``).

    Shape:
        - labels: (B, h, w) integer
        - output: (B, H, W), the input's dtype
    """
    check_rank(labels, "labels", "B h w")
    h, w = labels.shape[-2:]
    if (h, w) == tuple(size):
        return labels
    rows = ((torch.arange(size[0], device=labels.device) + 0.5) * (h / size[0])).long().clamp_max(h - 1)
    cols = ((torch.arange(size[1], device=labels.device) + 0.5) * (w / size[1])).long().clamp_max(w - 1)
    return labels[:, rows[:, None], cols[None, :]]


def _check_max_side(max_side: int | None, long_side: int | None) -> None:
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"max_side: expected a positive int (pixels) or None, got {max_side!r}")
    if max_side is not None and long_side and long_side > max_side:
        raise ValueError(
            f"long_side: expected at most max_side={max_side} (the working-resolution cap), got {long_side}; "
            "raise max_side (or set it to None) for a larger CLIP input"
        )


def _pil_bicubic(images: Tensor, size: tuple[int, int]) -> Tensor:
    from PIL import Image

    out = []
    for image in images:
        array = image.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        resized = Image.fromarray(array).resize((size[1], size[0]), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1))
    return torch.stack(out).to(device=images.device, dtype=torch.float32)


def resize_for_clip(
    images: Tensor, long_side: int | None, multiple: int, mode: ResizeMode = "bilinear"
) -> Tensor:
    """Resize so the long side is ``long_side`` (None: keep), each side rounded up to ``multiple``.

    Shape:
        - images: (B, 3, H, W) 0–255 values (uint8 or float)
        - output: (B, 3, H', W') float32 with H', W' multiples of ``multiple``
    """
    check_choice(mode, "mode", RESIZE_MODES)
    _, _, h, w = images.shape
    scale = 1.0 if not long_side else long_side / max(h, w)
    size = ceil_scaled_size(h, w, scale, multiple)
    if size == (h, w):
        return images.float()
    if mode == "pil_bicubic":
        return _pil_bicubic(images.float(), size)
    return F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)


def build_cam_head(config: Any, box_threshold: float | None = None) -> CAMHead:
    """The :class:`~cdclip.cam.head.CAMHead` a :class:`~cdclip.pipeline.config.ModelConfig` describes."""
    from cdclip.refine.par import PAR

    cam_kwargs: dict[str, Any] = {"target": config.cam_target} if config.cam == "gradcam" else {}
    if config.cam_scales != (1.0,) or config.cam_flip:
        cam_kwargs.update(scales=config.cam_scales, flip=config.cam_flip)
    par = PAR(dilations=config.par_dilations, num_iter=config.par_iters) if config.par_iters > 0 else None
    return CAMHead(
        config.cam, cam_kwargs=cam_kwargs, refine=config.refine, attn_layers=config.attn_layers,
        cd_logit_scale=config.cd_logit_scale, background_at=config.background_at, bg_alpha=config.bg_alpha,
        bg_threshold=config.bg_threshold, par=par, par_scale=config.par_scale,
        seg_affinity_blocks=config.seg_affinity_blocks, gamma=config.gamma,
        box_threshold=config.box_threshold if box_threshold is None else box_threshold, box_rule=config.box_rule,
        affinity=config.cda_affinity, sigma=config.cda_sigma, beta=config.cda_beta,
    )  # fmt: skip


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
            labels, text, attn_blocks)`` and ``cams_from_output``.
        refine: ``"none"``, ``"attn"``, ``"mean"`` (CDA, default), ``"replace"``, ``"product"``.
        par: PAR module for the final labels; ``None`` skips PAR.
        long_side: the image is resized so that its long side is this (None: native size), sides
            rounded up to the patch size; at most ``max_side``.
        max_side: working-resolution cap (long side, pixels; None: no cap): larger images are
            shrunk to it for all the work and their label maps upsampled back (see the module
            docstring).
        resize: ``"bilinear"`` or ``"pil_bicubic"`` (CLIP-ES).
        bg_alpha: exponent of the background score.
        bg_threshold: constant background score (CLIP-ES's evaluation threshold); None: ``(1 − max)^α``.
        background_at: ``"image"`` (upsample, then background) or ``"patch"``.
        attn_layers: attention blocks averaged for the MHSA affinity (8).
        cd_logit_scale: ``1/τ_cd`` of the CDA class distributions (100).
        prompt_style: how class names become phrases (``"clip_es"``, ``"plain"``, ``"raw"``).
        **cda_kwargs: :class:`~cdclip.affinity.cda.CDAModule` options (``box_threshold``, ``box_rule``...).

    Shape:
        - images: (B, 3, H, W) uint8 (or 0–255 float)
        - labels: (B, C)
        - output: :class:`PseudoLabelOutput`

    Examples:
        >>> import torch
        >>> from cdclip.testing import tiny_clip_backbone
        >>> labeler = PseudoLabeler(tiny_clip_backbone(), ["cat", "dog"], long_side=64)
        >>> image = torch.randint(0, 256, (1, 3, 48, 64), dtype=torch.uint8)
        >>> out = labeler(image, torch.tensor([[1.0, 0.0]]))      # the image shows a cat
        >>> out.labels.shape, set(out.labels.unique().tolist()) <= {0, 1}
        (torch.Size([1, 48, 64]), True)
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
        resize: ResizeMode = "bilinear",
        bg_threshold: float | None = None,
        background_at: str = "image",
        pixel_stats: tuple[Sequence[float], Sequence[float]] | None = None,
        head: CAMHead | None = None,
        max_side: int | None = DEFAULT_MAX_SIDE,
        **cda_kwargs: Any,
    ) -> None:
        super().__init__()
        check_choice(resize, "resize", RESIZE_MODES)
        _check_max_side(max_side, long_side)
        self.backbone = backbone
        self.head = head if head is not None else CAMHead(
            cam, refine=refine, attn_layers=attn_layers, cd_logit_scale=cd_logit_scale,
            background_at=background_at, bg_alpha=bg_alpha, bg_threshold=bg_threshold, par=par,
            par_scale=par_scale, **cda_kwargs,
        )
        self.long_side, self.resize, self.max_side = long_side, resize, max_side
        self.pixel_stats = pixel_stats
        self.classifier: TextClassifier = build_text_classifier(
            backbone, class_names, background_words, templates, style=prompt_style
        )

    @classmethod
    def from_config(
        cls, config: Any, class_names: Sequence[str], background_words: Sequence[str], backbone: Any
    ) -> PseudoLabeler:
        """The labeler a :class:`~cdclip.pipeline.config.TrainConfig` (a preset) describes."""
        from cdclip.data.transforms import normalization_stats

        model = config.model
        stats = None if config.data.normalize == "clip" else normalization_stats(config.data.normalize)
        return cls(
            backbone, class_names, background_words, templates=model.templates, long_side=model.cam_long_side,
            prompt_style=model.prompt_style, resize=model.cam_resize, pixel_stats=stats, head=build_cam_head(model),
            max_side=model.cam_max_side,
        )

    @classmethod
    def from_preset(
        cls,
        name: str = "cdclip-voc",
        weights: str | None = None,
        class_names: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        overrides: Mapping[str, Any] | None = None,
    ) -> PseudoLabeler:
        """The labeler of ``cdclip cams --preset NAME``: the same configuration, backbone and head.

        Args:
            name: a shipped preset (:func:`cdclip.presets.list_presets`), e.g. ``"clip-es"``.
            weights: CLIP checkpoint path or open_clip tag; ``"none"`` for random weights; ``None``
                for the preset's (the open_clip tag).
            class_names: the foreground classes (default: the preset dataset's 20 or 80).
            device: where the backbone runs.
            seed: seeds every RNG before the backbone is built (random weights are reproducible).
            overrides: dotted config overrides, e.g. ``{"model.refine": "attn"}``.

        Example::

            labeler = PseudoLabeler.from_preset("cdclip-voc", weights="/path/ViT-B-16.pt")
            out = labeler(image[None], labels[None])      # uint8 (1, 3, H, W), multi-hot (1, 20)
            out.cams, out.refined, out.labels
        """
        from cdclip.data.classnames import class_names as dataset_class_names
        from cdclip.data.prompts import background_words
        from cdclip.pipeline.clip_backbone import build_clip_backbone
        from cdclip.pipeline.config import apply_overrides, preset
        from cdclip.seeding import seed_everything

        config = apply_overrides(preset(name), dict(overrides or {}))
        names = tuple(class_names) if class_names is not None else dataset_class_names(config.data.dataset)
        seed_everything(seed)
        backbone = build_clip_backbone(config.model, device, weights)
        return cls.from_config(config, names, background_words(config.model.background), backbone)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def _normalize(self, images: Tensor) -> Tensor:
        if self.pixel_stats is None:
            return self.backbone.preprocess(images)
        mean = torch.tensor(self.pixel_stats[0], device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_stats[1], device=images.device).view(1, 3, 1, 1)
        return (images / 255.0 - mean) / std

    @property
    def cam(self) -> nn.Module:
        return self.head.cam

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
        work = capped_size(h, w, self.max_side)
        pixels = shrink_to(images, work).to(device).float()  # shrunk where the image is (CPU: as uint8)
        resized = resize_for_clip(pixels, self.long_side, int(self.backbone.patch_size), self.resize)
        x = self._normalize(resized)
        text = self.classifier.embeddings.to(device)
        present = present.to(device)
        result = self.cam(self.backbone, x, present, text, attn_blocks=self.head.attn_blocks())
        out = self.head(result.output, text, present, work, image=pixels, cams=result.cams)
        if work != (h, w):
            out = PseudoLabelOutput(cams=out.cams, refined=out.refined, labels=upsample_labels(out.labels, (h, w)))
        return out
