"""Joint image/mask transforms for training and evaluation, built from ``torchvision.transforms.v2``.

Samples are the dataset dicts ``{"image": tv_tensors.Image, "mask": tv_tensors.Mask, "labels":
tensor, "name": str}``; v2 transforms the image and the mask together (bilinear for the image,
nearest for the mask) and passes ``labels`` and ``name`` through untouched.

* :func:`train_transform` — the WeCLIP/ToCo recipe: random rescale by a factor in [0.5, 2.0],
  horizontal flip, random 320×320 crop (padding the image with the mean colour, so that it
  becomes 0 after normalisation as in ToCo, and the mask with void 255), CLIP normalisation.
* :func:`eval_transform` — deterministic: the image is resized so that its long side is 512 and
  normalised; the mask keeps its original size by default, because mIoU is computed at the
  ground-truth resolution (upsample predictions to ``mask.shape``).

Shape:
    - input image: (3, H, W) uint8; input mask: (H, W) int64
    - train output: image (3, crop, crop) float32, mask (crop, crop) int64
    - eval output: image (3, H', W') float32 with max(H', W') = long_side; mask (H, W) int64
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cdclip.choices import PAD_FILLS, PadFill, check_choice
from cdclip.constants import CLIP_MEAN, CLIP_STD, VOID

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageOnly",
    "RandomRescale",
    "denormalize",
    "eval_transform",
    "normalization_stats",
    "normalize",
    "train_transform",
]

# ImageNet statistics on the 0–1 scale; WeCLIP applies them on the 0–255 scale (123.675, ...),
# which is the same normalisation
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Normalization = Literal["clip", "imagenet"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)


def normalization_stats(name: Normalization) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` of ``"clip"`` (OpenAI CLIP) or ``"imagenet"`` (WeCLIP) on the 0–1 scale."""
    check_choice(name, "normalize", NORMALIZATIONS)
    return (CLIP_MEAN, CLIP_STD) if name == "clip" else (IMAGENET_MEAN, IMAGENET_STD)


class RandomRescale(v2.Transform):
    """Resize by a random factor ``s ~ U(scale_range)`` of the input's own size.

    v2 offers jitter around a fixed *target* size (``ScaleJitter``) or a random *short side*
    (``RandomResize``); WSSS recipes scale each image relative to itself, so only the sampling is
    written here and the resizing is v2's (bilinear + antialias for images, nearest for masks).
    """

    def __init__(self, scale_range: Sequence[float] = (0.5, 2.0), antialias: bool = True) -> None:
        super().__init__()
        low, high = (float(v) for v in scale_range)
        if not 0.0 < low <= high:
            raise ValueError(f"scale_range: expected 0 < low <= high, got {tuple(scale_range)}")
        self.scale_range = (low, high)
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand(()))
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            TF.resize, inpt, size=params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=self.antialias
        )


class ImageOnly(nn.Module):
    """Apply a v2 transform to ``sample["image"]`` only (the mask keeps its size)."""

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        out["image"] = self.transform(sample["image"])
        return out


def normalize(mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> v2.Compose:
    """uint8 → float32 in [0, 1] → ``(x − mean) / std`` for images; masks become int64.

    Shape:
        - image: (3, H, W) uint8 → (3, H, W) float32
    """
    return v2.Compose(
        [
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def _mean_colour(mean: Sequence[float]) -> list[int]:
    return [round(255.0 * m) for m in mean]


def train_transform(
    crop_size: int = 320,
    scale_range: Sequence[float] = (0.5, 2.0),
    flip_prob: float = 0.5,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    pure_tensors: bool = True,
    pad_fill: PadFill = "mean",
) -> v2.Compose:
    """Training augmentation: rescale, flip, crop (mask padded with 255), normalise.

    Args:
        crop_size: side of the square crop; smaller images are padded (image: mean colour,
            mask: void 255).
        scale_range: random rescale factor range.
        flip_prob: probability of a horizontal flip.
        mean, std: normalisation statistics (CLIP's by default).
        pure_tensors: return plain tensors (drop the tv_tensors wrappers) at the end.
        pad_fill: image padding colour, ``"mean"`` (0 after normalisation) or ``"black"`` (WeCLIP).

    Shape:
        - image: (3, H, W) uint8 → (3, crop_size, crop_size) float32
        - mask: (H, W) int64 → (crop_size, crop_size) int64
    """
    if not isinstance(crop_size, int) or crop_size < 1:
        raise ValueError(f"crop_size: expected a positive int, got {crop_size!r}")
    check_choice(pad_fill, "pad_fill", PAD_FILLS)
    fill = _mean_colour(mean) if pad_fill == "mean" else [0, 0, 0]
    steps: list[Any] = [
        RandomRescale(scale_range),
        v2.RandomHorizontalFlip(p=flip_prob),
        v2.RandomCrop(
            crop_size, pad_if_needed=True, fill={tv_tensors.Image: fill, tv_tensors.Mask: VOID}
        ),
        normalize(mean, std),
    ]
    if pure_tensors:
        steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


def eval_transform(
    long_side: int | None = 512,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    resize_mask: bool = False,
    pure_tensors: bool = True,
) -> v2.Compose:
    """Deterministic evaluation transform: long side to ``long_side`` (None keeps the size), normalise.

    The mask is left at its original resolution unless ``resize_mask`` (mIoU is measured there).

    Shape:
        - image: (3, H, W) uint8 → (3, H', W') float32, max(H', W') = long_side
        - mask: (H, W) int64 → (H, W) int64 (or (H', W') with ``resize_mask``)
    """
    steps: list[Any] = []
    if long_side is not None:
        if not isinstance(long_side, int) or long_side < 1:
            raise ValueError(f"long_side: expected a positive int or None, got {long_side!r}")
        resize = v2.Resize(size=None, max_size=long_side, antialias=True)
        steps.append(resize if resize_mask else ImageOnly(resize))
    steps.append(normalize(mean, std))
    if pure_tensors:
        steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """Undo :func:`normalize`: back to uint8 RGB, rounded and clamped (never wrapped).

    Shape:
        - image: (*, 3, H, W) float
        - output: (*, 3, H, W) uint8
    """
    if not image.is_floating_point():
        raise TypeError(f"image: expected a normalised floating-point tensor, got dtype {image.dtype}")
    if image.dim() < 3 or image.shape[-3] != 3:
        raise ValueError(f"image: expected shape (*, 3, H, W), got {tuple(image.shape)}")
    m = torch.tensor(mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    return (image.float() * s + m).mul(255.0).round().clamp(0, 255).to(torch.uint8)
