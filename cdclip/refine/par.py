"""PAR — pixel-adaptive refinement of soft masks by local colour affinity.

The refinement of ToCo (Ru et al., CVPR 2023) that WeCLIP reuses on its pseudo labels: every
pixel repeatedly takes a weighted average of the mask values of its neighbours, with weights that
are high for neighbours of similar colour. Activation therefore spreads inside regions of uniform
colour and stops at colour edges, pulling a mask that leaks over an edge back to it.

Neighbourhood: the 8 compass directions at each dilation ``d`` (default 1, 2, 4, 8, 12, 24), i.e.
``P = 8·len(dilations)`` neighbours at offsets ``d·(dy, dx)``; outside the image the border pixel
is repeated (replicate padding). The pixel itself is not a neighbour.

Weights, for pixel ``i`` and neighbour ``j`` (``c`` runs over image channels):

* colour: ``a_ij = −mean_c (|I_cj − I_ci| / (σ_ci · w_rgb))²``, with ``σ_ci`` the standard
  deviation of channel ``c`` over the ``P`` neighbours of ``i`` and ``w_rgb = 0.3``; normalising
  by the local spread makes the weight invariant to a per-channel affine change of the image, so
  the image may be given normalised or not;
* position: ``b_j = −(δ_j / (σ_δ · w_rgb))²`` with ``δ_j`` the neighbour's distance (``d`` or
  ``d·√2``), identical for every pixel;
* ``W_ij = softmax_j(a_ij) + w_pos · softmax_j(b_j)``, ``w_pos = 0.01``.

``num_iter`` times: ``m_i ← Σ_j W_ij m_j`` for every mask channel. As in ToCo the weights sum to
``1 + w_pos``, so masks grow by that factor per iteration; the argmax (what pseudo labels use) is
unaffected. Everything is computed in float32 (float64 stays float64, and an enclosing
``torch.autocast`` is turned off) and streamed over the neighbours, so memory stays
O(B·(C + P)·H·W) and never holds a (B, C, P, H, W) tensor.

Input contract: image and masks are finite and non-empty (every dimension ≥ 1), ``w_rgb > 0`` and
``w_pos ≥ 0`` are finite; anything else raises a ``ValueError`` naming the argument. Masks so large
that the ``(1 + w_pos)^num_iter`` growth overflows the compute dtype raise too (never a silent inf).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cdclip._checks import (
    check_finite,
    check_floating,
    check_int,
    check_nonempty,
    check_positive,
    check_rank,
    check_same,
    compute_dtype,
    full_precision,
)
from cdclip.registry import register

__all__ = ["PAR", "par", "par_affinity"]

# the 8 compass directions (row offset, column offset)
_DIRECTIONS: tuple[tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1),
    (0, -1), (0, 1),
    (1, -1), (1, 0), (1, 1),
)  # fmt: skip


def _offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    return [(d * dy, d * dx) for d in dilations for dy, dx in _DIRECTIONS]


def _validate_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    values = tuple(dilations)
    if not values or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in values):
        raise ValueError(f"dilations: expected a non-empty sequence of positive ints, got {dilations!r}")
    return values


def _check_weights(w_rgb: object, w_pos: object) -> None:
    check_positive(w_rgb, "w_rgb")
    check_positive(w_pos, "w_pos", allow_zero=True)


def _shifted(padded: torch.Tensor, pad: int, dy: int, dx: int, height: int, width: int) -> torch.Tensor:
    """View of ``x[..., y + dy, x + dx]`` (coordinates clamped) from a replicate-padded ``x``."""
    return padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width]


@full_precision
def par_affinity(
    image: torch.Tensor,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
    w_rgb: float = 0.3,
    w_pos: float = 0.01,
) -> torch.Tensor:
    """Neighbour weights ``W`` of PAR (see the module docstring), one plane per neighbour.

    Neighbour ``k`` is dilation ``dilations[k // 8]`` in direction ``k % 8`` (row-major compass
    order, the centre skipped).

    Shape:
        - image: (B, c, H, W) floating (or uint8), any normalisation
        - output: (B, P, H, W) float32 (float64 for float64 input), ``P = 8·len(dilations)``
    """
    dilations = _validate_dilations(dilations)
    _check_weights(w_rgb, w_pos)
    check_rank(image, "image", "B c H W")
    check_nonempty(image, "image", "B c H W")
    dtype = compute_dtype(image) if image.is_floating_point() else torch.float32
    img = image.to(dtype)
    check_finite(img, "image")
    height, width = img.shape[-2:]
    pad = max(dilations)
    offsets = _offsets(dilations)
    num = len(offsets)
    padded = F.pad(img, (pad, pad, pad, pad), mode="replicate")

    # spread of every channel over the neighbours, two passes for accuracy
    mean = torch.zeros_like(img)
    for dy, dx in offsets:
        mean += _shifted(padded, pad, dy, dx, height, width)
    mean /= num
    var = torch.zeros_like(img)
    for dy, dx in offsets:
        var += (_shifted(padded, pad, dy, dx, height, width) - mean).square()
    std = (var / (num - 1)).sqrt()  # unbiased, as torch.std
    scale = 1.0 / ((std + 1e-8) * w_rgb)

    logits = torch.stack(
        [
            -((_shifted(padded, pad, dy, dx, height, width) - img).abs() * scale).square().mean(dim=1)
            for dy, dx in offsets
        ],
        dim=1,
    )
    weights = logits.softmax(dim=1)

    # position term: same for every pixel, so one softmax over the P distances
    distance = torch.tensor([math.hypot(dy, dx) for dy, dx in offsets], dtype=dtype, device=img.device)
    pos_logits = -(distance / (distance.std() * w_rgb)).square()
    weights = weights + w_pos * pos_logits.softmax(dim=0).view(1, num, 1, 1)
    return weights


@full_precision
def par(
    image: torch.Tensor,
    masks: torch.Tensor,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
    num_iter: int = 20,
    w_rgb: float = 0.3,
    w_pos: float = 0.01,
) -> torch.Tensor:
    """Refine soft masks with PAR: ``num_iter`` rounds of colour-affinity neighbour averaging.

    The image is resized (bilinear) to the mask resolution when they differ. Differentiable;
    device-agnostic; computed in float32 (float64 stays float64) under any autocast; returned in
    the masks' dtype.

    Raises:
        ValueError: bad shapes or arguments, an empty dimension, NaN/inf in image or masks, or
            refined masks that overflow the masks' dtype.

    Args:
        image: the RGB image, normalised or not (the colour weights are scale-free per channel).
        masks: soft masks or scores per class, e.g. ``[bg; CAMs of the present classes]``.
        dilations: neighbour distances; 8 directions each.
        num_iter: number of averaging rounds (0 returns the masks unchanged).
        w_rgb: colour temperature (ToCo: 0.3).
        w_pos: weight of the position term (ToCo: 0.01).

    Shape:
        - image: (B, c, H', W')
        - masks: (B, C, H, W)
        - output: (B, C, H, W)
    """
    check_rank(masks, "masks", "B C H W")
    check_rank(image, "image", "B c H W")
    check_floating(masks, "masks")
    check_nonempty(masks, "masks", "B C H W")
    check_nonempty(image, "image", "B c H W")
    check_same([("image", image.shape[0]), ("masks", masks.shape[0])], "batch sizes (B)")
    if image.is_complex() or image.dtype == torch.bool:
        raise TypeError(f"image: expected a real (floating or integer) image, got dtype {image.dtype}")
    check_int(num_iter, "num_iter", minimum=0)
    dilations = _validate_dilations(dilations)
    _check_weights(w_rgb, w_pos)
    dtype = compute_dtype(masks)
    height, width = masks.shape[-2:]
    img = image if image.is_floating_point() else image.float()
    if img.shape[-2:] != masks.shape[-2:]:
        img = F.interpolate(img.to(dtype), size=(height, width), mode="bilinear", align_corners=False)
    weights = par_affinity(img.to(dtype), dilations, w_rgb=w_rgb, w_pos=w_pos)  # (B, P, H, W)

    out = masks.to(dtype)
    check_finite(out, "masks")
    pad = max(dilations)
    offsets = _offsets(dilations)
    for _ in range(num_iter):
        padded = F.pad(out, (pad, pad, pad, pad), mode="replicate")
        refined = torch.zeros_like(out)
        for k, (dy, dx) in enumerate(offsets):
            # in place on the fresh accumulator: autograd needs the factors, not its old value
            refined.addcmul_(weights[:, k : k + 1], _shifted(padded, pad, dy, dx, height, width))
        out = refined
    out = out.to(masks.dtype)
    if num_iter:
        _check_no_overflow(out)
    return out


def _check_no_overflow(out: torch.Tensor) -> None:
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            f"masks: the refined masks overflow {out.dtype} (masks grow by (1 + w_pos) per iteration); "
            "pass masks of a moderate scale (e.g. probabilities or min-max normalised CAMs)"
        )


@register("par", kind="refiner")
class PAR(nn.Module):
    """Pixel-adaptive refinement (ToCo/WeCLIP) as a module; see :func:`par`.

    Args:
        dilations: neighbour distances, 8 directions each (default 1, 2, 4, 8, 12, 24).
        num_iter: averaging rounds (default 20).
        w_rgb: colour temperature (0.3).
        w_pos: position-term weight (0.01).

    Shape:
        - image: (B, c, H', W') normalised or not
        - masks: (B, C, H, W)
        - output: (B, C, H, W)

    Examples:
        >>> import torch
        >>> image, masks = torch.rand(1, 3, 16, 16), torch.softmax(torch.randn(1, 2, 16, 16), dim=1)
        >>> PAR(dilations=(1, 2), num_iter=2)(image, masks).shape
        torch.Size([1, 2, 16, 16])
    """

    def __init__(
        self,
        dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        num_iter: int = 20,
        w_rgb: float = 0.3,
        w_pos: float = 0.01,
    ) -> None:
        super().__init__()
        self.dilations = _validate_dilations(dilations)
        self.num_iter = check_int(num_iter, "num_iter", minimum=0)
        _check_weights(w_rgb, w_pos)
        self.w_rgb = float(w_rgb)
        self.w_pos = float(w_pos)

    def forward(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return par(image, masks, self.dilations, self.num_iter, self.w_rgb, self.w_pos)

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, num_iter={self.num_iter}, w_rgb={self.w_rgb}, w_pos={self.w_pos}"
