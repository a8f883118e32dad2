"""Affinity loss ``L_aff`` on decoder features (WeCLIP, docs/training.md).

WeCLIP regularises its decoder with the pairwise structure of the pseudo labels: two patches within
a local radius should have a high feature affinity when their pseudo labels agree and a low one when
they differ. With decoder features ``f_i`` on the ``h × w`` grid::

    A_ij = sigmoid(f_i · f_j)                         (similarity="sigmoid", WeCLIP)
    y_ij = 1 if Y_i = Y_j, 0 otherwise;  ignored if either label is ignored or
           max(|Δrow|, |Δcol|) > radius (radius 8 patches)
    L = ½ · Σ_{y=1} (1 − A_ij) / n_pos + ½ · Σ_{y=0} A_ij / n_neg

The pseudo labels are brought to the feature grid by nearest-neighbour sampling, as in WeCLIP. An
empty positive or negative set contributes 0 (never NaN). ``similarity="cosine"`` uses
``max(cos, 0)`` instead of the sigmoid of the raw dot product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdclip._checks import (
    check_choice,
    check_floating,
    check_integer_labels,
    check_rank,
    check_tensor,
    compute_dtype,
)
from cdclip.choices import SIMILARITIES, Similarity
from cdclip.distributed import mean_denominator
from cdclip.registry import register

__all__ = ["SIMILARITIES", "AffinityLoss", "affinity_labels", "affinity_loss", "radius_mask"]


def radius_mask(grid: tuple[int, int], radius: int, device: torch.device | str | None = None) -> Tensor:
    """Pairs of patches within Chebyshev distance ``radius`` on a row-major ``h × w`` grid.

    Shape:
        - output: (h*w, h*w) bool
    """
    h, w = grid
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= radius
    near_cols = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_rows & near_cols


def affinity_labels(
    labels: Tensor, grid: tuple[int, int], radius: int = 8, ignore_index: int = 255
) -> Tensor:
    """Pairwise targets from a label map: 1 same label, 0 different, ``ignore_index`` otherwise.

    Args:
        labels: pseudo labels at any resolution; sampled onto ``grid`` by nearest neighbour.
        grid: the ``(h, w)`` patch grid.
        radius: pairs farther apart than this (Chebyshev, in patches) are ignored.
        ignore_index: ignored label value.

    Shape:
        - labels: (B, H, W)
        - output: (B, h*w, h*w) int64
    """
    check_rank(labels, "labels", "B H W")
    check_integer_labels(labels, "labels")
    if not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius: expected a non-negative int, got {radius!r}")
    h, w = int(grid[0]), int(grid[1])
    small = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long().flatten(1)
    same = (small[:, :, None] == small[:, None, :]).long()
    known = (small != ignore_index)[:, :, None] & (small != ignore_index)[:, None, :]
    known &= radius_mask((h, w), radius, labels.device)[None]
    return torch.where(known, same, torch.full_like(same, ignore_index))


def affinity_loss(
    features: Tensor,
    labels: Tensor,
    radius: int = 8,
    ignore_index: int = 255,
    similarity: Similarity = "sigmoid",
) -> Tensor:
    """WeCLIP affinity loss between decoder-feature affinities and pseudo-label pairs.

    Args:
        features: decoder features on the patch grid.
        labels: pseudo labels (class ids, ``ignore_index`` ignored) at any resolution.
        radius: only pairs within this Chebyshev distance (patches) are supervised (8).
        ignore_index: ignored label value (255).
        similarity: ``"sigmoid"`` — ``sigmoid(f_i·f_j)`` (WeCLIP); ``"cosine"`` — ``max(cos, 0)``.

    Returns:
        A scalar in ``[0, 1]``; float32 (float64 for float64 features).

    Shape:
        - features: (B, D, h, w)
        - labels: (B, H, W)
        - output: ()
    """
    check_tensor(features, "features")
    check_rank(features, "features", "B D h w")
    check_floating(features, "features")
    check_choice(similarity, "similarity", SIMILARITIES)
    check_rank(labels, "labels", "B H W")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels: expected batch size B = {features.shape[0]} (from features), got {labels.shape[0]}")
    h, w = features.shape[-2:]
    dtype = compute_dtype(features)
    flat = features.to(dtype).flatten(2)  # (B, D, N)
    if similarity == "sigmoid":
        affinity = torch.sigmoid(flat.transpose(1, 2) @ flat)
    else:
        unit = F.normalize(flat, dim=1, eps=1e-12)
        affinity = (unit.transpose(1, 2) @ unit).clamp_min(0.0)
    target = affinity_labels(labels, (h, w), radius, ignore_index)
    positive = (target == 1).to(dtype)
    negative = (target == 0).to(dtype)
    pos_loss = (positive * (1.0 - affinity)).sum() / mean_denominator(positive.sum())
    neg_loss = (negative * affinity).sum() / mean_denominator(negative.sum())
    return 0.5 * pos_loss + 0.5 * neg_loss


@register("affinity_loss", kind="loss")
class AffinityLoss(nn.Module):
    """WeCLIP ``L_aff``: decoder-feature affinity against pseudo-label pairs within a radius.

    Args:
        radius: supervised pairs lie within this Chebyshev distance on the patch grid (8).
        ignore_index: ignored label value (255).
        similarity: ``"sigmoid"`` (WeCLIP) or ``"cosine"``.

    Shape:
        - features: (B, D, h, w)
        - labels: (B, H, W)
        - output: ()

    Examples:
        >>> import torch
        >>> loss = AffinityLoss(radius=2)(torch.randn(1, 16, 4, 4), torch.randint(0, 3, (1, 16, 16)))
        >>> loss.shape, 0.0 <= loss.item() <= 1.0
        (torch.Size([]), True)
    """

    def __init__(self, radius: int = 8, ignore_index: int = 255, similarity: Similarity = "sigmoid") -> None:
        super().__init__()
        if not isinstance(radius, int) or radius < 0:
            raise ValueError(f"radius: expected a non-negative int, got {radius!r}")
        check_choice(similarity, "similarity", SIMILARITIES)
        self.radius = radius
        self.ignore_index = int(ignore_index)
        self.similarity = similarity

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return affinity_loss(features, labels, self.radius, self.ignore_index, self.similarity)

    def extra_repr(self) -> str:
        return f"radius={self.radius}, ignore_index={self.ignore_index}, similarity={self.similarity!r}"

