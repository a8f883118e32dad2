"""Dense feature maps: row-major tokens ``(B, N, D)`` ↔ maps ``(B, D, h, w)``, their grid, resampling.

Backbones (:mod:`cdclip.backbones.dino`) and SBE (:mod:`cdclip.prototypes.superclass`) both read
patch features in either layout and resample them to another patch grid. The helpers live here, in
neither of them, so that the prototypes do not depend on a backbone module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cdclip._checks import check_floating, check_tensor

__all__ = ["check_grid", "map_to_tokens", "resample_features", "token_grid", "tokens_to_map"]


def check_grid(grid: object, name: str) -> tuple[int, int]:
    """``grid`` as ``(h, w)`` ints; ``ValueError`` naming ``name`` unless it is a pair of positive ints."""
    if (
        not isinstance(grid, (tuple, list))
        or len(grid) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid)
    ):
        raise ValueError(f"{name}: expected a pair of positive ints (h, w), got {grid!r}")
    return int(grid[0]), int(grid[1])


def token_grid(
    n: int, grid: tuple[int, int] | None, name: str, fallback: tuple[int, int] | None = None
) -> tuple[int, int] | None:
    """The ``(h, w)`` grid of ``N`` row-major tokens, or ``None`` when no candidate holds ``N``.

    Candidates in order: ``grid`` (when given it must hold ``N``, else a ``ValueError`` naming
    ``name``), ``fallback`` (when it holds ``N``), the square grid.
    """
    if grid is not None:
        h, w = grid
        if h * w != n:
            raise ValueError(f"{name}: {h}x{w} = {h * w} patches, but features have N = {n}")
        return h, w
    if fallback is not None and n == fallback[0] * fallback[1]:
        return fallback
    side = math.isqrt(n)
    return (side, side) if side * side == n else None


def tokens_to_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """Row-major tokens as a feature map.

    Shape:
        - tokens: (B, N, D) with N = h * w
        - output: (B, D, h, w)
    """
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def map_to_tokens(fmap: Tensor) -> Tensor:
    """A feature map as row-major tokens.

    Shape:
        - fmap: (B, D, h, w)
        - output: (B, h*w, D)
    """
    return fmap.flatten(2).transpose(1, 2)


def resample_features(
    features: Tensor,
    grid: tuple[int, int],
    src_grid: tuple[int, int] | None = None,
    normalize: bool = True,
) -> Tensor:
    """Bilinearly resample a dense feature map to another grid and L2-normalise it again.

    Args:
        features: ``(B, N, D)`` tokens on ``src_grid`` (row-major) or a ``(B, D, h', w')`` map.
        grid: the target ``(h, w)``.
        src_grid: the ``(h', w')`` of token input; inferred when ``N`` is a perfect square.
        normalize: L2-normalise every output vector (interpolation shrinks norms between patches).

    Returns:
        The same layout as the input, on the new grid; unchanged values when the grids match
        (apart from re-normalisation). Computed in float32 (float64 stays float64).

    Shape:
        - features: (B, N, D) or (B, D, h', w')
        - output: (B, h*w, D) or (B, D, h, w)
    """
    check_tensor(features, "features")
    check_floating(features, "features")
    h, w = check_grid(grid, "grid")
    tokens = features.dim() == 3
    if tokens:
        given = check_grid(src_grid, "src_grid") if src_grid is not None else None
        source = token_grid(features.shape[1], given, "src_grid")
        if source is None:
            raise ValueError(
                f"features: N = {features.shape[1]} is not a square number; pass src_grid=(h, w) or a (B, D, h, w) map"
            )
        fmap = tokens_to_map(features, source)
    elif features.dim() == 4:
        fmap = features
    else:
        raise ValueError(f"features: expected shape (B, N, D) or (B, D, h, w), got {tuple(features.shape)}")
    fmap = fmap.to(torch.float64 if fmap.dtype == torch.float64 else torch.float32)
    if tuple(fmap.shape[-2:]) != (h, w):
        fmap = F.interpolate(fmap, size=(h, w), mode="bilinear", align_corners=False)
    if normalize:
        fmap = F.normalize(fmap, dim=1, eps=1e-12)
    if tokens:
        return map_to_tokens(fmap)
    return fmap
