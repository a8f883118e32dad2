"""CAMs → pseudo labels: background score, upsampling, PAR, argmax over each image's classes.

Stack ``[bg; M'_c for the present classes]``, upsample to the label size, refine with PAR and take
the argmax; channel ``j`` maps to a class id (0 = background, ``c + 1`` = class ``c``). Where the
background is taken is an option, because the baselines differ:

* ``background_at="image"`` (WeCLIP, CLIP-ES's evaluation, default): the refined maps are
  upsampled first and the background is computed at label resolution;
* ``background_at="patch"``: the background is computed on the patch grid and upsampled with the
  maps (cdclip before 0.2).

The background is ``(1 − max_c M_c)^α``, or a constant ``bg_threshold`` (CLIP-ES's
``cam_eval_thres``: a pixel is background unless some class map exceeds it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdclip._checks import check_choice, check_floating, check_rank
from cdclip.cam.multiscale import check_labels
from cdclip.cam.slots import ClassSlots, class_slots, gather_slots
from cdclip.choices import BACKGROUND_AT, BackgroundAt

__all__ = ["BACKGROUND_AT", "background_score", "cams_to_labels", "slot_argmax"]


def background_score(cams: Tensor, alpha: float = 1.0, threshold: float | None = None) -> Tensor:
    """Background map ``bg = (1 − max_c M_c)^α`` (1 where no class is active), or a constant.

    Args:
        cams: class maps in [0, 1].
        alpha: exponent α (> 0).
        threshold: if given, the background is this constant everywhere (CLIP-ES's evaluation).

    Shape:
        - cams: (B, C, h, w) in [0, 1]
        - output: (B, 1, h, w)
    """
    check_rank(cams, "cams", "B C h w")
    if alpha <= 0:
        raise ValueError(f"alpha: expected a positive exponent, got {alpha}")
    if threshold is not None:
        return cams.new_full((cams.shape[0], 1, *cams.shape[2:]), float(threshold), dtype=torch.float32)
    if cams.shape[1] == 0:
        return cams.new_ones(cams.shape[0], 1, *cams.shape[2:])
    peak = cams.float().amax(dim=1, keepdim=True).clamp(0.0, 1.0)
    return (1.0 - peak) ** alpha


def slot_argmax(stack: Tensor, slots: ClassSlots) -> Tensor:
    """Argmax over ``[bg; slots]`` restricted to each image's valid slots, as class ids.

    Shape:
        - stack: (B, 1 + S, H, W)
        - output: (B, H, W) int64, 0 = background, c + 1 = class c
    """
    b = stack.shape[0]
    valid = torch.cat([slots.valid.new_ones(b, 1), slots.valid], dim=1).to(stack.device)
    # max(dim).indices is argmax (the first maximum wins ties) but about 20x faster on the CPU for a
    # reduction over a non-innermost dimension (92 ms -> 4.7 ms at 4 x 3 x 320 x 320)
    channel = stack.masked_fill(~valid[:, :, None, None], float("-inf")).max(dim=1).indices
    ids = torch.cat([slots.index.new_full((b, 1), -1), slots.index], dim=1).to(stack.device) + 1
    return ids.gather(1, channel.flatten(1)).reshape(channel.shape)


def _par(stack: Tensor, image: Tensor | None, par: nn.Module, size: tuple[int, int], par_scale: float) -> Tensor:
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
    return stack


def cams_to_labels(
    cams: Tensor,
    labels: Tensor,
    size: tuple[int, int],
    image: Tensor | None = None,
    par: nn.Module | None = None,
    bg_alpha: float = 1.0,
    par_scale: float = 1.0,
    background_at: BackgroundAt = "image",
    bg_threshold: float | None = None,
) -> Tensor:
    """Pseudo labels from (refined) CAMs: ``[bg; present CAMs]`` → upsample → PAR → argmax → ids.

    Args:
        cams: CAMs in [0, 1] on the patch grid; absent classes are ignored whatever their values.
        labels: image-level multi-hot labels.
        size: output size ``(H, W)``.
        image: the image for PAR (normalised or not, any resolution); needed when ``par`` is set.
        par: a :class:`~cdclip.refine.par.PAR` (or any ``(image, masks) -> masks`` module); None skips.
        bg_alpha: exponent α of the background score.
        par_scale: resolution of the PAR step relative to ``size`` (1.0: full resolution, as in
            WeCLIP's training; 0.5 is 4x cheaper); the result is upsampled to ``size`` bilinearly.
        background_at: ``"image"`` (upsample, then background) or ``"patch"`` (background, then upsample).
        bg_threshold: a constant background score instead of ``(1 − max)^α`` (CLIP-ES's evaluation).

    Shape:
        - cams: (B, C, h, w)
        - labels: (B, C)
        - image: (B, 3, H', W')
        - output: (B, H, W) int64, 0 = background, c + 1 = class c
    """
    check_rank(cams, "cams", "B C h w")
    check_floating(cams, "cams")
    check_choice(background_at, "background_at", BACKGROUND_AT)
    b, c = cams.shape[:2]
    present = check_labels(labels, b).to(cams.device)
    if present.shape[1] != c:
        raise ValueError(f"labels: expected (B, C={c}) for cams {tuple(cams.shape)}, got {tuple(labels.shape)}")
    slots = class_slots(present)
    if slots.count == 0:  # no image of the batch has a class: all background
        return torch.zeros(b, *size, dtype=torch.int64, device=cams.device)
    fg = gather_slots(cams.float(), slots)  # (B, S, h, w)
    if background_at == "image":
        fg = F.interpolate(fg, size=tuple(size), mode="bilinear", align_corners=False)
        stack = torch.cat([background_score(fg, bg_alpha, bg_threshold), fg], dim=1)
    else:
        stack = torch.cat([background_score(fg, bg_alpha, bg_threshold), fg], dim=1)
        stack = F.interpolate(stack, size=tuple(size), mode="bilinear", align_corners=False)
    if par is not None and slots.count > 0:
        stack = _par(stack, image, par, tuple(size), par_scale)
    return slot_argmax(stack, slots)
